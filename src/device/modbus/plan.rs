//! Pure request planning: a device's points → the fewest read requests that cover them, within
//! the protocol limits (125 registers / 2000 bits per request, or the device's lower caps) and
//! the device's `max_gap` (registers read and thrown away to merge two nearby blocks).

use crate::config::spec::modbus::Table;
use crate::config::{PlanLimits, Point};

/// One read request and the points it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// Index into the device's points, and the offset of the point's first register (or bit)
    /// inside this request's answer.
    pub points: Vec<(usize, u16)>,
}

impl PlanLimits {
    fn cap(&self, table: Table) -> u16 {
        let own = if table.is_bits() {
            self.max_bits
        } else {
            self.max_registers
        };
        own.min(table.max_per_request())
    }
}

pub fn plan(points: &[Point], limits: &PlanLimits) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].table, points[i].address));
    let mut out: Vec<ReadRequest> = Vec::new();
    for i in order {
        let p = &points[i];
        let start = u32::from(p.address);
        let end = start + u32::from(p.width()); // exclusive
        if let Some(cur) = out.last_mut() {
            let cur_start = u32::from(cur.start);
            let cur_end = cur_start + u32::from(cur.count);
            // A point wider than the cap (a long string under a low cap) still gets a request
            // of its own rather than being unreadable.
            let fits = !limits.one_request_per_point
                && cur.table == p.table
                && start <= cur_end + u32::from(limits.max_gap)
                && end.max(cur_end) - cur_start <= u32::from(limits.cap(p.table));
            if fits {
                cur.count = (end.max(cur_end) - cur_start) as u16;
                cur.points.push((i, (start - cur_start) as u16));
                continue;
            }
        }
        out.push(ReadRequest {
            table: p.table,
            start: p.address,
            count: p.width(),
            points: vec![(i, 0)],
        });
    }
    out
}

/// Human-readable plan of one device, for `fieldbridge explain`: every request of a cycle with
/// its function code, span and the points it answers, and the request count without planning.
pub fn explain(points: &[Point], limits: &PlanLimits) -> String {
    let reqs = plan(points, limits);
    let mut out = String::new();
    let read: u32 = reqs.iter().map(|r| u32::from(r.count)).sum();
    let used: u32 = points.iter().map(|p| u32::from(p.width())).sum();
    out.push_str(&format!(
        "{} point{} -> {} request{} per cycle (one per point: {}); {} registers/bits read, {} of them for points\n",
        points.len(),
        if points.len() == 1 { "" } else { "s" },
        reqs.len(),
        if reqs.len() == 1 { "" } else { "s" },
        points.len(),
        read,
        used.min(read),
    ));
    for (i, r) in reqs.iter().enumerate() {
        let fc = match r.table {
            Table::Coil => "FC01",
            Table::Discrete => "FC02",
            Table::Holding => "FC03",
            Table::Input => "FC04",
        };
        let last = u32::from(r.start) + u32::from(r.count) - 1;
        let names: Vec<String> = r
            .points
            .iter()
            .filter_map(|&(idx, off)| points.get(idx).map(|p| format!("{}@+{off}", p.name)))
            .collect();
        out.push_str(&format!(
            "  {:>3}. {fc} {:<8} {:>5}..{:<5} ({:>3}): {}\n",
            i + 1,
            r.table.to_string(),
            r.start,
            last,
            r.count,
            names.join(", ")
        ));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::spec::modbus::{DataType, WordOrder};

    pub(crate) fn pt(table: Table, address: u16, ty: DataType) -> Point {
        Point {
            name: format!("{table}{address}").into(),
            table,
            address,
            data_type: ty,
            unit: None,
            scale: 1.0,
            offset: 0.0,
            decimals: None,
            word_order: WordOrder::Abcd,
            bit: None,
            length: ty.width(),
            write: None,
            report: Default::default(),
            homeassistant: Default::default(),
        }
    }

    fn gap(max_gap: u16) -> PlanLimits {
        PlanLimits {
            max_gap,
            ..PlanLimits::default()
        }
    }

    fn spans(reqs: &[ReadRequest]) -> Vec<(Table, u16, u16)> {
        reqs.iter().map(|r| (r.table, r.start, r.count)).collect()
    }

    #[test]
    fn points_merge_into_the_fewest_requests_within_limits() {
        use DataType::*;
        use Table::*;
        type Case = (Vec<Point>, u16, Vec<(Table, u16, u16)>);
        let cases: Vec<Case> = vec![
            // contiguous registers become one request
            (
                vec![
                    pt(Holding, 0, F32),
                    pt(Holding, 2, I32),
                    pt(Holding, 4, U16),
                ],
                0,
                vec![(Holding, 0, 5)],
            ),
            // a gap splits without max_gap, merges with it
            (
                vec![pt(Holding, 0, U16), pt(Holding, 3, U16)],
                0,
                vec![(Holding, 0, 1), (Holding, 3, 1)],
            ),
            (
                vec![pt(Holding, 0, U16), pt(Holding, 3, U16)],
                2,
                vec![(Holding, 0, 4)],
            ),
            // tables never merge; output sorted by table then address
            (
                vec![pt(Input, 0, U16), pt(Holding, 1, U16), pt(Coil, 0, Bool)],
                10,
                vec![(Coil, 0, 1), (Holding, 1, 1), (Input, 0, 1)],
            ),
            // the 125-register limit splits a long run
            (
                vec![
                    pt(Holding, 0, U16),
                    pt(Holding, 124, U16),
                    pt(Holding, 125, U16),
                ],
                124,
                vec![(Holding, 0, 125), (Holding, 125, 1)],
            ),
            // a value straddling the limit starts a new request instead of being cut
            (
                vec![pt(Holding, 0, U16), pt(Holding, 124, F32)],
                124,
                vec![(Holding, 0, 1), (Holding, 124, 2)],
            ),
            // bits allow 2000 per request
            (
                vec![
                    pt(Coil, 0, Bool),
                    pt(Coil, 1999, Bool),
                    pt(Coil, 2000, Bool),
                ],
                2000,
                vec![(Coil, 0, 2000), (Coil, 2000, 1)],
            ),
            // overlapping points share registers
            (
                vec![pt(Holding, 0, F32), pt(Holding, 1, U16)],
                0,
                vec![(Holding, 0, 2)],
            ),
            // the top of the address space does not overflow
            (vec![pt(Holding, 65532, U64)], 0, vec![(Holding, 65532, 4)]),
        ];
        for (points, g, want) in cases {
            assert_eq!(spans(&plan(&points, &gap(g))), want, "{points:?}");
        }
    }

    #[test]
    fn each_point_gets_its_offset_inside_the_request() {
        let points = vec![
            pt(Table::Holding, 10, DataType::U16),
            pt(Table::Holding, 12, DataType::F32),
        ];
        let reqs = plan(&points, &gap(1));
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].points, vec![(0, 0), (1, 2)]);
    }

    #[test]
    fn lower_caps_and_one_request_per_point_split_as_configured() {
        use DataType::*;
        use Table::*;
        let points = vec![
            pt(Holding, 0, F32),
            pt(Holding, 2, F32),
            pt(Holding, 4, F32),
            pt(Coil, 0, Bool),
            pt(Coil, 1, Bool),
            pt(Coil, 2, Bool),
        ];
        let capped = PlanLimits {
            max_registers: 4,
            max_bits: 2,
            ..PlanLimits::default()
        };
        assert_eq!(
            spans(&plan(&points, &capped)),
            vec![(Coil, 0, 2), (Coil, 2, 1), (Holding, 0, 4), (Holding, 4, 2)]
        );
        let single = PlanLimits {
            one_request_per_point: true,
            ..gap(10)
        };
        assert_eq!(plan(&points, &single).len(), points.len());
        // a string wider than the cap is still read, alone
        let mut s = pt(Holding, 10, String);
        s.length = 8;
        assert_eq!(
            spans(&plan(&[pt(Holding, 9, U16), s], &capped)),
            vec![(Holding, 9, 1), (Holding, 10, 8)]
        );
    }

    #[test]
    fn explain_lists_each_request_with_its_function_code_and_points() {
        use DataType::*;
        let points = vec![
            pt(Table::Input, 0, F32),
            pt(Table::Input, 2, F32),
            pt(Table::Coil, 5, Bool),
        ];
        let text = explain(&points, &gap(0));
        assert!(
            text.starts_with("3 points -> 2 requests per cycle (one per point: 3)"),
            "{text}"
        );
        assert!(
            text.contains("FC01 coil         5..5     (  1): coil5@+0"),
            "{text}"
        );
        assert!(
            text.contains("FC04 input        0..3     (  4): input0@+0, input2@+2"),
            "{text}"
        );
    }
}
