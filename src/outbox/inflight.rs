//! Pure bookkeeping of what is in flight upstream: which outbox row (or control message) each
//! MQTT packet id carries.
//!
//! The link (`mqtt::link`) hands back the packet id of every PUBLISH it queues, so a tag is held
//! under its id from the moment it is sent; `on_puback` then names the row to delete. A packet id
//! is never held twice: the link ends the connection rather than reuse an unacknowledged one, and
//! a second `sent` under a held id is reported, never allowed to replace the row it holds.
//! Each entry also keeps when it went out, so the uplink can tell a publish the broker has sat
//! on for too long (`oldest_sent`); the caller passes the clock in.

use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An outbox row, deleted on PUBACK.
    Row(i64),
    /// A message that is not in the outbox (the gateway's own status).
    Control,
}

#[derive(Debug, Default)]
pub struct InFlight {
    by_pkid: HashMap<u16, (Tag, Instant)>,
    /// How many of the tags held are `Control`: `rows()` is asked on every turn of the uplink
    /// loop, so it must not walk the window.
    controls: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// A publish went out under a packet id that still carries an unacknowledged one.
    IdInUse(u16),
    /// A PUBACK for a packet id we are not waiting for.
    UnknownAck(u16),
}

impl InFlight {
    /// `tag` went out under `pkid` at `now`.
    pub fn sent(&mut self, pkid: u16, tag: Tag, now: Instant) -> Result<(), Mismatch> {
        if self.by_pkid.contains_key(&pkid) {
            return Err(Mismatch::IdInUse(pkid));
        }
        self.controls += usize::from(tag == Tag::Control);
        self.by_pkid.insert(pkid, (tag, now));
        Ok(())
    }

    pub fn on_puback(&mut self, pkid: u16) -> Result<Tag, Mismatch> {
        let (tag, _) = self
            .by_pkid
            .remove(&pkid)
            .ok_or(Mismatch::UnknownAck(pkid))?;
        self.controls -= usize::from(tag == Tag::Control);
        Ok(tag)
    }

    /// Everything sent and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.by_pkid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pkid.is_empty()
    }

    /// Outbox rows that went out and are not acknowledged, oldest first: what a broker that
    /// closed the connection may have refused.
    pub fn sent_rows(&self) -> Vec<i64> {
        let mut rows: Vec<i64> = self
            .by_pkid
            .values()
            .filter_map(|(t, _)| match t {
                Tag::Row(id) => Some(*id),
                Tag::Control => None,
            })
            .collect();
        rows.sort_unstable();
        rows
    }

    /// Outbox rows sent and not yet acknowledged.
    pub fn rows(&self) -> usize {
        self.len() - self.controls
    }

    /// When the longest-waiting publish went out. Walks the window: asked once per tick of the
    /// uplink loop, not per message.
    pub fn oldest_sent(&self) -> Option<Instant> {
        self.by_pkid.values().map(|(_, at)| *at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Step {
        Sent(u16, Tag, Result<(), Mismatch>),
        Ack(u16, Result<Tag, Mismatch>),
        /// (all, rows, sent_rows)
        Len(usize, usize, &'static [i64]),
    }

    fn run(steps: Vec<Step>) {
        let mut f = InFlight::default();
        let now = Instant::now();
        for (i, s) in steps.into_iter().enumerate() {
            match s {
                Step::Sent(p, t, want) => assert_eq!(f.sent(p, t, now), want, "step {i}"),
                Step::Ack(p, want) => assert_eq!(f.on_puback(p), want, "step {i}"),
                Step::Len(all, rows, sent) => {
                    assert_eq!((f.len(), f.rows()), (all, rows), "step {i}");
                    assert_eq!(f.sent_rows(), sent, "step {i}");
                }
            }
        }
    }

    #[test]
    fn acks_name_the_rows_their_packet_ids_carried_even_out_of_order() {
        use Step::*;
        run(vec![
            Sent(1, Tag::Control, Ok(())),
            Sent(2, Tag::Row(10), Ok(())),
            Sent(3, Tag::Row(11), Ok(())),
            Len(3, 2, &[10, 11]),
            Ack(3, Ok(Tag::Row(11))),
            Ack(1, Ok(Tag::Control)),
            Len(1, 1, &[10]),
            Ack(2, Ok(Tag::Row(10))),
            Len(0, 0, &[]),
            Ack(2, Err(Mismatch::UnknownAck(2))),
        ]);
    }

    #[test]
    fn a_packet_id_still_held_is_reported_and_keeps_its_row() {
        use Step::*;
        run(vec![
            Sent(1, Tag::Row(1), Ok(())),
            Sent(1, Tag::Row(2), Err(Mismatch::IdInUse(1))),
            Sent(1, Tag::Control, Err(Mismatch::IdInUse(1))),
            Len(1, 1, &[1]),
            Ack(1, Ok(Tag::Row(1))),
            Sent(1, Tag::Row(2), Ok(())),
            Ack(1, Ok(Tag::Row(2))),
            Len(0, 0, &[]),
        ]);
    }

    #[test]
    fn a_control_message_is_never_counted_as_a_row() {
        use Step::*;
        run(vec![
            Sent(5, Tag::Control, Ok(())),
            Sent(6, Tag::Row(2), Ok(())),
            Len(2, 1, &[2]),
            Ack(5, Ok(Tag::Control)),
            Len(1, 1, &[2]),
            Ack(6, Ok(Tag::Row(2))),
            Len(0, 0, &[]),
        ]);
    }

    #[test]
    fn the_oldest_sent_time_is_that_of_the_longest_unacknowledged_publish() {
        let t0 = Instant::now();
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        let mut f = InFlight::default();
        assert_eq!(f.oldest_sent(), None);
        f.sent(7, Tag::Row(1), at(10)).unwrap();
        f.sent(3, Tag::Row(2), at(20)).unwrap();
        f.sent(9, Tag::Control, at(30)).unwrap();
        assert_eq!(f.oldest_sent(), Some(at(10)));
        f.on_puback(7).unwrap();
        assert_eq!(f.oldest_sent(), Some(at(20)));
        f.on_puback(3).unwrap();
        f.on_puback(9).unwrap();
        assert_eq!(f.oldest_sent(), None);
    }
}
