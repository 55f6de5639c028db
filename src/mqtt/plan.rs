//! Send order after a reconnect (pure): the backlog is replayed oldest first while live readings
//! keep flowing, and the replay can be rate-limited.
//!
//! Policy: rows stored before the connection came up (ids ≤ `replay_end`) are the backlog; rows
//! committed after it are live. While a backlog remains, live rows may take at most half of the
//! free in-flight window each round and the backlog takes the rest, so a dashboard sees current
//! values within one round trip even while hours of backlog drain. Each stream is in id order;
//! between the two, consumers order by the payload's `ts`. The optional `upstream.replay_rate`
//! (messages/s, a token bucket with one second of burst) limits the backlog only.

use std::time::{Duration, Instant};

/// How many rows each stream may send this round.
pub fn quotas(room: usize, live_pending: bool, backlog_pending: bool) -> (usize, usize) {
    match (live_pending, backlog_pending) {
        (_, false) => (room, 0),
        (false, true) => (0, room),
        (true, true) => {
            let live = room.div_ceil(2);
            (live, room - live)
        }
    }
}

/// A token bucket; `None` rate means unlimited.
#[derive(Debug)]
pub struct Bucket {
    rate: Option<f64>,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: Option<f64>, now: Instant) -> Self {
        Bucket {
            rate,
            tokens: rate.unwrap_or(0.0),
            last: now,
        }
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now: Instant) -> usize {
        let Some(rate) = self.rate else {
            return usize::MAX;
        };
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(rate.max(1.0));
        self.tokens.floor() as usize
    }

    pub fn take(&mut self, n: usize) {
        if self.rate.is_some() {
            self.tokens -= n as f64;
        }
    }

    /// When the next token is due, if the bucket is empty.
    pub fn next_token(&self) -> Option<Duration> {
        let rate = self.rate?;
        if self.tokens >= 1.0 {
            return None;
        }
        Some(Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_rows_get_at_most_half_the_window_only_while_a_backlog_remains() {
        let cases = [
            // room, live pending, backlog pending → (live, backlog)
            (10, true, true, (5, 5)),
            (9, true, true, (5, 4)),
            (1, true, true, (1, 0)),
            (10, true, false, (10, 0)),
            (10, false, true, (0, 10)),
            (10, false, false, (10, 0)),
            (0, true, true, (0, 0)),
        ];
        for (room, live, backlog, want) in cases {
            assert_eq!(quotas(room, live, backlog), want, "{room} {live} {backlog}");
        }
    }

    #[test]
    fn the_bucket_refills_at_its_rate_with_one_second_of_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Some(100.0), t0);
        assert_eq!(b.available(t0), 100);
        b.take(100);
        assert_eq!(b.available(t0), 0);
        assert!(b.next_token().unwrap() <= Duration::from_millis(10));
        assert_eq!(b.available(t0 + Duration::from_millis(250)), 25);
        // never more than one second's worth
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 100);
        let mut unlimited = Bucket::new(None, t0);
        assert_eq!(unlimited.available(t0), usize::MAX);
        assert_eq!(unlimited.next_token(), None);
    }
}
