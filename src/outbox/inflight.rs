//! Pure bookkeeping of what is in flight upstream: which outbox row (or control message) each
//! MQTT packet id carries.
//!
//! rumqttc's `publish()` does not return the packet id. It reports
//! `Outgoing::Publish(pkid)` in the order it took the requests, so requests are matched to packet
//! ids first-in first-out; `Incoming::PubAck(pkid)` then names the row to delete. When rumqttc
//! finds a packet id still in use it reports `Outgoing::AwaitAck(pkid)` for the request it took and
//! later `Outgoing::Publish(pkid)` when it really sends it; no other request is taken meanwhile.

use std::collections::{HashMap, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An outbox row, deleted on PUBACK.
    Row(i64),
    /// A message that is not in the outbox (the gateway's own status).
    Control,
}

#[derive(Debug, Default)]
pub struct InFlight {
    requested: VecDeque<Tag>,
    by_pkid: HashMap<u16, Tag>,
    collided: Option<(u16, Tag)>,
    /// How many of the tags held are `Control`: `rows()` is asked on every turn of the uplink
    /// loop, so it must not walk the window.
    controls: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// rumqttc reported a publish we did not request: the FIFO matching is broken.
    UnexpectedPublish(u16),
    /// A PUBACK for a packet id we are not waiting for.
    UnknownAck(u16),
}

impl InFlight {
    /// A publish request was handed to the client.
    pub fn requested(&mut self, tag: Tag) {
        self.controls += usize::from(tag == Tag::Control);
        self.requested.push_back(tag);
    }

    /// Holds `tag` under `pkid`; a tag it replaces (rumqttc reusing an id we still hold) is gone.
    fn hold(&mut self, pkid: u16, tag: Tag) {
        if let Some(old) = self.by_pkid.insert(pkid, tag) {
            self.release(old);
        }
    }

    fn release(&mut self, tag: Tag) {
        self.controls -= usize::from(tag == Tag::Control);
    }

    pub fn on_outgoing_publish(&mut self, pkid: u16) -> Result<(), Mismatch> {
        if let Some((cp, tag)) = self.collided {
            if cp == pkid {
                self.collided = None;
                self.hold(pkid, tag);
                return Ok(());
            }
        }
        let tag = self
            .requested
            .pop_front()
            .ok_or(Mismatch::UnexpectedPublish(pkid))?;
        self.hold(pkid, tag);
        Ok(())
    }

    pub fn on_await_ack(&mut self, pkid: u16) -> Result<(), Mismatch> {
        let tag = self
            .requested
            .pop_front()
            .ok_or(Mismatch::UnexpectedPublish(pkid))?;
        if let Some((_, old)) = self.collided.replace((pkid, tag)) {
            self.release(old);
        }
        Ok(())
    }

    pub fn on_puback(&mut self, pkid: u16) -> Result<Tag, Mismatch> {
        let tag = self
            .by_pkid
            .remove(&pkid)
            .ok_or(Mismatch::UnknownAck(pkid))?;
        self.release(tag);
        Ok(tag)
    }

    /// Everything requested and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.requested.len() + self.by_pkid.len() + usize::from(self.collided.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Outbox rows that went out on the wire and are not acknowledged, oldest first: what a
    /// broker that closed the connection may have refused.
    pub fn sent_rows(&self) -> Vec<i64> {
        let mut rows: Vec<i64> = self
            .by_pkid
            .values()
            .chain(self.collided.iter().map(|(_, t)| t))
            .filter_map(|t| match t {
                Tag::Row(id) => Some(*id),
                Tag::Control => None,
            })
            .collect();
        rows.sort_unstable();
        rows
    }

    /// Outbox rows requested and not yet acknowledged.
    pub fn rows(&self) -> usize {
        self.len() - self.controls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Step {
        Req(Tag),
        Pub(u16),
        Await(u16),
        Ack(u16, Result<Tag, Mismatch>),
        Len(usize, usize),
    }

    fn run(steps: Vec<Step>) {
        let mut f = InFlight::default();
        for (i, s) in steps.into_iter().enumerate() {
            match s {
                Step::Req(t) => f.requested(t),
                Step::Pub(p) => f.on_outgoing_publish(p).unwrap(),
                Step::Await(p) => f.on_await_ack(p).unwrap(),
                Step::Ack(p, want) => assert_eq!(f.on_puback(p), want, "step {i}"),
                Step::Len(all, rows) => {
                    assert_eq!((f.len(), f.rows()), (all, rows), "step {i}")
                }
            }
        }
    }

    #[test]
    fn acks_name_the_rows_in_request_order_even_when_acked_out_of_order() {
        use Step::*;
        run(vec![
            Req(Tag::Control),
            Req(Tag::Row(10)),
            Req(Tag::Row(11)),
            Len(3, 2),
            Pub(1),
            Pub(2),
            Pub(3),
            Ack(3, Ok(Tag::Row(11))),
            Ack(1, Ok(Tag::Control)),
            Len(1, 1),
            Ack(2, Ok(Tag::Row(10))),
            Len(0, 0),
            Ack(2, Err(Mismatch::UnknownAck(2))),
        ]);
    }

    #[test]
    fn a_packet_id_collision_keeps_the_row_until_it_is_really_sent() {
        use Step::*;
        run(vec![
            Req(Tag::Row(1)),
            Pub(1),
            Req(Tag::Row(2)),
            Await(1), // pkid 1 still in use: the request for row 2 waits
            Len(2, 2),
            Ack(1, Ok(Tag::Row(1))),
            Pub(1), // now sent, carrying row 2
            Ack(1, Ok(Tag::Row(2))),
            Len(0, 0),
        ]);
    }

    #[test]
    fn a_control_message_is_never_counted_as_a_row_whichever_way_it_goes_out() {
        use Step::*;
        run(vec![
            Req(Tag::Row(1)),
            Pub(1),
            Req(Tag::Control),
            Await(1), // the status waits for pkid 1 like any publish
            Len(2, 1),
            Req(Tag::Row(2)),
            Len(3, 2),
            Ack(1, Ok(Tag::Row(1))),
            Pub(1),
            Pub(2),
            Len(2, 1),
            Ack(1, Ok(Tag::Control)),
            Len(1, 1),
            Ack(2, Ok(Tag::Row(2))),
            Len(0, 0),
        ]);
    }

    #[test]
    fn a_publish_nobody_requested_is_reported_not_guessed() {
        let mut f = InFlight::default();
        assert_eq!(
            f.on_outgoing_publish(7),
            Err(Mismatch::UnexpectedPublish(7))
        );
    }
}
