//! Finds the stored message an upstream broker refuses by closing the connection each time it
//! receives it (mosquitto's `max_packet_size`, a broker-side size or ACL rule that disconnects):
//! without this, that one row would be sent again after every reconnect and block the queue
//! forever. Pure: the uplink reports acks and lost sessions, and asks whether to probe.
//!
//! A broker reads packets in order but may close before the acks of the packets ahead of the
//! refused one leave, so the first loss only names suspects: every row sent and unacknowledged.
//! The next sessions probe: one row in flight at a time until every suspect was acknowledged.
//! A probing session lost with one row in flight is a strike against that row; `STRIKES` in a
//! row set it aside (dead-letter table, reason `refused_by_upstream`). A session lost with
//! nothing in flight clears everything, so an outage never sets a row aside; a link that dies
//! twice in a row right after the same probed row left is the price (the row stays
//! inspectable in the dead-letter table).

use std::collections::BTreeSet;

/// Probing sessions in a row that must be lost on the same row before it is set aside.
pub const STRIKES: u32 = 2;

#[derive(Debug, Default)]
pub struct Strikes {
    suspects: BTreeSet<i64>,
    strike: Option<(i64, u32)>,
}

impl Strikes {
    /// Send one row at a time: some row in flight at the last loss is not acknowledged yet.
    pub fn probing(&self) -> bool {
        !self.suspects.is_empty()
    }

    pub fn acked(&mut self, row: i64) {
        if self.suspects.remove(&row) && self.suspects.is_empty() {
            self.strike = None;
        }
    }

    /// A connected session was lost with `unacked` rows sent and not acknowledged. Returns the
    /// row to set aside, once it has had `STRIKES` strikes.
    pub fn session_lost(&mut self, unacked: &[i64]) -> Option<i64> {
        match unacked {
            [] => {
                *self = Strikes::default();
                None
            }
            [row] if self.probing() => {
                let n = match self.strike {
                    Some((r, n)) if r == *row => n + 1,
                    _ => 1,
                };
                if n >= STRIKES {
                    *self = Strikes::default();
                    return Some(*row);
                }
                self.strike = Some((*row, n));
                self.suspects.insert(*row);
                None
            }
            rows => {
                self.suspects.extend(rows.iter().copied());
                self.strike = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Ev {
        Lost(&'static [i64]),
        Ack(i64),
    }
    use Ev::*;

    #[test]
    fn only_a_row_lost_alone_in_flight_twice_in_a_row_is_set_aside() {
        // (name, what happened, what is set aside, probing at the end)
        type Case = (&'static str, &'static [Ev], Option<i64>, bool);
        let cases: &[Case] = &[
            (
                "a loss with rows in flight names suspects",
                &[Lost(&[4, 5, 6])],
                None,
                true,
            ),
            (
                "then two probes lost on one row",
                &[Lost(&[4, 5, 6]), Ack(4), Lost(&[5]), Lost(&[5])],
                Some(5),
                false,
            ),
            (
                "one probe loss is not enough",
                &[Lost(&[4, 5, 6]), Lost(&[5])],
                None,
                true,
            ),
            (
                "another row in between starts afresh",
                &[Lost(&[4, 5]), Lost(&[5]), Lost(&[4]), Lost(&[5])],
                None,
                true,
            ),
            (
                "a loss with nothing in flight clears the strikes",
                &[Lost(&[4, 5]), Lost(&[5]), Lost(&[]), Lost(&[5]), Lost(&[5])],
                None,
                true,
            ),
            (
                "every suspect acknowledged ends probing",
                &[Lost(&[4, 5]), Ack(4), Ack(5)],
                None,
                false,
            ),
            (
                "a single row lost outside probing is only a suspect",
                &[Lost(&[9])],
                None,
                true,
            ),
        ];
        for (name, events, want, probing) in cases {
            let mut s = Strikes::default();
            let mut aside = None;
            for e in *events {
                match e {
                    Lost(rows) => aside = s.session_lost(rows).or(aside),
                    Ack(r) => s.acked(*r),
                }
            }
            assert_eq!(aside, *want, "{name}");
            assert_eq!(s.probing(), *probing, "{name}");
        }
    }
}
