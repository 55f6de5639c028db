//! The outbox reader's read-ahead pages: which fetch the rows in memory can answer, and when to
//! read the next page in the background so that a drain never waits for SQLite with an empty
//! window. Pure bookkeeping; the queries are `Outbox`'s.
//!
//! A page holds every row with an id in `(after, upto]` as of its read, oldest first. Ids only
//! grow, so no later commit can add a row inside that interval, and rows read later for
//! `(upto, covered]` extend it without a gap. Evictions (limits, age) and a new upstream
//! session make pages stale; the caller passes the eviction count and `clear` forgets them.
//!
//! Why the background read: a page read inline hands the uplink's turn to the SQLite thread,
//! which on a busy 2-core board waits for a core while the upstream broker works through what
//! is in flight and then idles. Reading the next page while half of this one is left keeps
//! that wait off the path.

use std::collections::VecDeque;

use super::row::Row;

/// Rows one read fetches: one query serves many small fetches.
pub const READ_AHEAD: usize = 512;
/// A page with fewer rows left than this, and more rows wanted beyond it, is extended in the
/// background.
pub const REFILL_AT: usize = READ_AHEAD / 2;
/// Pages kept at once: one per stream of fetches (backlog and live).
const STREAMS: usize = 2;

#[derive(Debug)]
struct Page {
    after: i64,
    upto: i64,
    rows: VecDeque<Row>,
    /// The eviction count when read: evictions since make the page stale.
    evictions: u64,
    /// A background read for `(upto, …]` is under way.
    refilling: bool,
}

/// A background read to start: rows with `after < id ≤ upto`, at most `READ_AHEAD`, to extend
/// the page that ends at `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    pub after: i64,
    pub upto: i64,
    generation: u64,
    evictions: u64,
}

#[derive(Debug, Default)]
pub struct Pages {
    list: Vec<Page>,
    /// Bumped by `clear`: a background read started before it is thrown away.
    generation: u64,
}

impl Pages {
    /// Rows `after < id ≤ upto`, at most `limit`, if a page can answer completely: up to the
    /// limit, or every row of the range. `None` means read them from the database. A page that
    /// cannot answer is kept while its background read may still complete it, unless `settled`
    /// (the caller holds the connection, so no background read is under way). Also returns a
    /// background read to start, if the page served runs low.
    pub fn serve(
        &mut self,
        (after, upto, limit): (i64, i64, usize),
        evictions: u64,
        settled: bool,
    ) -> (Option<Vec<Row>>, Option<Refill>) {
        // A used-up page stays only while its background read may extend it.
        self.list.retain(|p| {
            p.evictions == evictions && (p.refilling || !p.rows.is_empty() || p.after < p.upto)
        });
        let Some(i) = self
            .list
            .iter()
            .position(|p| p.after <= after && after < p.upto)
        else {
            return (None, None);
        };
        let page = &mut self.list[i];
        while page.rows.front().is_some_and(|r| r.id <= after) {
            page.rows.pop_front();
        }
        let take = page
            .rows
            .iter()
            .take(limit)
            .take_while(|r| r.id <= upto)
            .count();
        let complete = take == limit || upto <= page.upto || take < page.rows.len();
        if !complete {
            if !page.refilling || settled {
                self.list.remove(i);
            }
            return (None, None);
        }
        let rows: Vec<Row> = page.rows.drain(..take).collect();
        page.after = rows.last().map_or(after, |r| r.id);
        let refill =
            (page.rows.len() < REFILL_AT && !page.refilling && page.upto < upto).then(|| {
                page.refilling = true;
                Refill {
                    after: page.upto,
                    upto,
                    generation: self.generation,
                    evictions,
                }
            });
        (Some(rows), refill)
    }

    /// Keeps the rows an inline read fetched beyond what it returned: `(after, upto]`.
    pub fn keep(&mut self, after: i64, upto: i64, rows: VecDeque<Row>, evictions: u64) {
        if rows.is_empty() {
            return;
        }
        // Two streams read at once (backlog and live); keep the newer pages.
        if self.list.len() >= STREAMS {
            self.list.remove(0);
        }
        self.list.push(Page {
            after,
            upto,
            rows,
            evictions,
            refilling: false,
        });
    }

    /// A background read finished: `rows` are every row in `(refill.after, covered]`. They
    /// extend the page that ends at `refill.after`, unless pages were cleared or rows evicted
    /// since it started (then they are dropped; a later fetch reads them again).
    pub fn extend(&mut self, refill: &Refill, rows: Vec<Row>, covered: i64) {
        if refill.generation != self.generation {
            return;
        }
        let Some(page) = self
            .list
            .iter_mut()
            .find(|p| p.upto == refill.after && p.evictions == refill.evictions)
        else {
            return;
        };
        page.rows.extend(rows);
        page.upto = covered.max(page.upto);
        page.refilling = false;
    }

    /// A background read failed: the next fetch past the page reads inline (and reports the
    /// error if it persists).
    pub fn refill_failed(&mut self, refill: &Refill) {
        if refill.generation != self.generation {
            return;
        }
        if let Some(page) = self.list.iter_mut().find(|p| p.upto == refill.after) {
            page.refilling = false;
        }
    }

    /// Forgets every page, and every background read under way.
    pub fn clear(&mut self) {
        self.list.clear();
        self.generation += 1;
    }
}

/// The end of the interval a read of `(after, upto]` with limit `want` is known to cover: its
/// last row when it hit the limit, else everything up to `upto` that was committed before it
/// began (`committed`, read before the query).
pub fn covered(after: i64, upto: i64, want: usize, rows: &[Row], committed: i64) -> i64 {
    let last = rows.last().map_or(after, |r| r.id);
    if rows.len() == want {
        last
    } else {
        upto.min(committed.max(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Message;

    fn row(id: i64) -> Row {
        Row {
            id,
            message: Message {
                topic: "t".into(),
                payload: Vec::new(),
                retain: false,
            },
        }
    }

    fn rows(ids: std::ops::RangeInclusive<i64>) -> VecDeque<Row> {
        ids.map(row).collect()
    }

    fn ids(r: &Option<Vec<Row>>) -> Option<(i64, i64, usize)> {
        r.as_ref()
            .map(|v| (v[0].id, v.last().map_or(0, |r| r.id), v.len()))
    }

    #[test]
    fn a_page_serves_fetches_in_order_and_asks_for_the_next_page_once_half_is_gone() {
        let mut p = Pages::default();
        // An inline read returned rows 1..=64 and kept 65..=512 (everything up to 512).
        p.keep(64, 512, rows(65..=512), 0);
        let (r, refill) = p.serve((64, 10_000, 64), 0, false);
        assert_eq!(ids(&r), Some((65, 128, 64)));
        assert_eq!(refill, None, "384 rows left: no read yet");
        let (r, _) = p.serve((128, 10_000, 128), 0, false);
        assert_eq!(ids(&r), Some((129, 256, 128)));
        let (r, refill) = p.serve((256, 10_000, 1), 0, false);
        assert_eq!(ids(&r), Some((257, 257, 1)));
        let refill = refill.expect("255 rows left and more wanted: read the next page");
        assert_eq!((refill.after, refill.upto), (512, 10_000));
        // Only one read at a time.
        let (_, again) = p.serve((257, 10_000, 1), 0, false);
        assert_eq!(again, None);
        // It lands; the page now runs on without a gap.
        p.extend(&refill, rows(513..=1024).into(), 1024);
        let (r, refill) = p.serve((258, 10_000, 742), 0, false);
        assert_eq!(ids(&r), Some((259, 1000, 742)));
        let refill = refill.expect("24 rows left: the next page");
        assert_eq!(refill.after, 1024);
        // More than the page holds while its read is under way: read nothing yet, and keep
        // the page, so the fetch that waits for the connection finds it extended.
        assert_eq!(p.serve((1000, 10_000, 30), 0, false).0, None);
        p.extend(&refill, rows(1025..=1536).into(), 1536);
        assert_eq!(
            ids(&p.serve((1000, 10_000, 30), 0, true).0),
            Some((1001, 1030, 30))
        );
    }

    #[test]
    fn a_page_that_covers_the_whole_range_asks_for_nothing_more() {
        let mut p = Pages::default();
        p.keep(0, 300, rows(1..=300), 0);
        let (r, refill) = p.serve((0, 300, 200), 0, false);
        assert_eq!(ids(&r), Some((1, 200, 200)));
        assert_eq!(refill, None, "the backlog ends at 300");
        let (r, _) = p.serve((200, 300, 200), 0, false);
        assert_eq!(
            ids(&r),
            Some((201, 300, 100)),
            "the rest of the range, complete"
        );
        assert_eq!(p.serve((300, 301, 1), 0, false).0.map(|v| v.len()), None);
    }

    #[test]
    fn a_fetch_beyond_the_page_waits_for_the_background_read_then_reads_inline() {
        let mut p = Pages::default();
        p.keep(0, 100, rows(1..=100), 0);
        let (_, refill) = p.serve((0, 1000, 90), 0, false);
        let refill = refill.expect("10 rows left");
        // 10 rows left, 20 wanted: not complete while the read is under way.
        assert_eq!(p.serve((90, 1000, 20), 0, false).0.map(|v| v.len()), None);
        // Holding the connection, the read has finished or failed: the page gives way.
        p.refill_failed(&refill);
        assert_eq!(p.serve((90, 1000, 20), 0, true).0.map(|v| v.len()), None);
        assert_eq!(p.serve((90, 1000, 5), 0, false).0.map(|v| v.len()), None);
    }

    #[test]
    fn a_background_read_is_dropped_after_clear_or_an_eviction() {
        let mut p = Pages::default();
        p.keep(0, 100, rows(1..=100), 0);
        let (_, refill) = p.serve((0, 1000, 90), 0, false);
        let refill = refill.unwrap();
        p.clear();
        p.keep(0, 100, rows(1..=100), 0);
        p.extend(&refill, rows(101..=200).into(), 200);
        assert_eq!(
            ids(&p.serve((0, 1000, 150), 0, true).0),
            None,
            "rows read before clear() never join a page"
        );

        let mut p = Pages::default();
        p.keep(0, 100, rows(1..=100), 0);
        let (_, refill) = p.serve((0, 1000, 90), 0, false);
        p.extend(&refill.unwrap(), rows(101..=200).into(), 200);
        assert_eq!(
            ids(&p.serve((90, 1000, 50), 1, false).0),
            None,
            "an eviction since the read makes the page stale"
        );
    }

    #[test]
    fn the_covered_end_is_the_last_row_at_the_limit_else_what_was_committed() {
        let r: Vec<Row> = rows(11..=20).into();
        let cases = [
            // (after, upto, want, committed, covered)
            (10, 1000, 10, 500, 20),
            (10, 1000, 512, 500, 500),
            (10, 300, 512, 500, 300),
            (10, 1000, 512, 15, 20),
        ];
        for (after, upto, want, committed, c) in cases {
            assert_eq!(
                covered(after, upto, want, &r, committed),
                c,
                "{after} {upto} {want} {committed}"
            );
        }
        assert_eq!(covered(10, 1000, 512, &[], 5), 10);
    }
}
