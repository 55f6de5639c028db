//! Pure request planning: a device's points → the fewest read requests that cover them, within
//! the protocol limits (125 registers / 2000 bits per request) and the device's `max_gap`
//! (registers read and thrown away to merge two nearby blocks).

use crate::config::Point;
use crate::device::decode::Table;

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

pub fn plan(points: &[Point], max_gap: u16) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].table, points[i].address));
    let mut out: Vec<ReadRequest> = Vec::new();
    for i in order {
        let p = &points[i];
        let start = u32::from(p.address);
        let end = start + u32::from(p.data_type.width()); // exclusive
        if let Some(cur) = out.last_mut() {
            let cur_start = u32::from(cur.start);
            let cur_end = cur_start + u32::from(cur.count);
            let fits = cur.table == p.table
                && start <= cur_end + u32::from(max_gap)
                && end.max(cur_end) - cur_start <= u32::from(p.table.max_per_request());
            if fits {
                cur.count = (end.max(cur_end) - cur_start) as u16;
                cur.points.push((i, (start - cur_start) as u16));
                continue;
            }
        }
        out.push(ReadRequest {
            table: p.table,
            start: p.address,
            count: p.data_type.width(),
            points: vec![(i, 0)],
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::decode::{DataType, WordOrder};

    fn pt(table: Table, address: u16, ty: DataType) -> Point {
        Point {
            name: format!("{table}{address}").into(),
            table,
            address,
            data_type: ty,
            unit: None,
            scale: 1.0,
            offset: 0.0,
            word_order: WordOrder::Abcd,
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
        for (points, gap, want) in cases {
            assert_eq!(spans(&plan(&points, gap)), want, "{points:?}");
        }
    }

    #[test]
    fn each_point_gets_its_offset_inside_the_request() {
        let points = vec![
            pt(Table::Holding, 10, DataType::U16),
            pt(Table::Holding, 12, DataType::F32),
        ];
        let reqs = plan(&points, 1);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].points, vec![(0, 0), (1, 2)]);
    }
}
