//! The uplink's in-flight window (pure): how many publishes may wait for their PUBACK at once,
//! and when the broker's silence about one of them means the PUBACK will never come.
//!
//! Why: a drain goes as fast as the window keeps the broker busy (rate × round trip in flight),
//! so the default window is wide. Some brokers cap the unacknowledged publishes they take from
//! one client (AWS IoT Core: 100) and do not take one beyond the cap: they neither acknowledge
//! it nor close the link. Such a publish would hold its place in the window until the next
//! reconnect, and a window full of them would stop the uplink for good while pings keep the link
//! up. So a publish is given up on when it has waited `ack_timeout` while the broker was heard
//! within the last half of that time (a later PUBACK or a PINGRESP: a broker acknowledges
//! QoS 1 publishes in the order it received them, so that PUBACK is not coming), or when the
//! broker acknowledged so many later publishes that its packet id came round again. The session
//! then ends, its rows go again from the outbox on the next connection, and the window halves
//! (down to 1). A link that went silent is not this: the keep-alive ends it and the window
//! stays as it was.
//!
//! The halved window is remembered across restarts (`Learned`, kept in the data dir by
//! `mqtt::learned`) for the broker and the `upstream.inflight` it was learned under, so a broker
//! that caps below the configured window costs its `ack_timeout`s once per installation, not on
//! every start.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    size: usize,
}

impl Window {
    /// The configured `upstream.inflight`.
    pub fn new(configured: usize) -> Self {
        Window {
            size: configured.max(1),
        }
    }

    /// The window of a process's first session: what was learned from this broker (`host:port`)
    /// under the same configured size, or the configured size. A learned window only ever
    /// narrows the configured one; a changed `upstream.inflight` or another broker starts afresh.
    pub fn resume(configured: usize, broker: &str, learned: Option<&Learned>) -> Self {
        match learned {
            Some(l)
                if l.broker == broker && l.configured == configured && l.window < configured =>
            {
                Window::new(l.window)
            }
            _ => Window::new(configured),
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// A publish was given up on: halve the window. The new size, or `None` when it is already
    /// one publish at a time (then only the dead-letter rule for refused rows can help).
    pub fn shrink(&mut self) -> Option<usize> {
        (self.size > 1).then(|| {
            self.size /= 2;
            self.size
        })
    }
}

/// A window the broker was found to need, remembered across restarts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Learned {
    /// `host:port` of the broker it was learned from.
    pub broker: String,
    /// The `upstream.inflight` it was learned under.
    pub configured: usize,
    /// The window after the last halving.
    pub window: usize,
}

/// Why a publish was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unacked {
    /// `given_up`: it waited `upstream.ack_timeout` while the broker answered other packets.
    #[error("the broker left a publish unacknowledged for {0:?} while answering others")]
    Waited(Duration),
    /// Its packet id came round again: the broker acknowledged every later publish the link's
    /// packet id range holds (several windows) and not this one, which a broker acknowledging in
    /// order does only for a publish it dropped. On a fast link this comes long before the
    /// timeout.
    #[error("the broker acknowledged later publishes until packet id {0} came round again")]
    Overtaken(u16),
}

/// Whether the publish sent at `oldest` (the longest-waiting one) will not be acknowledged: it
/// has waited `limit`, and the broker was `heard` within the last `limit / 2`, so it is alive
/// and has read past it.
pub fn given_up(
    oldest: Option<Instant>,
    heard: Option<Instant>,
    now: Instant,
    limit: Duration,
) -> bool {
    let waited = |t: Instant| now.saturating_duration_since(t);
    match (oldest, heard) {
        (Some(sent), Some(heard)) => waited(sent) >= limit && waited(heard) < limit / 2,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_is_given_up_on_only_when_old_and_the_broker_is_still_answering() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let limit = s(30);
        // (sent, heard, now, given up)
        let table: &[(Option<u64>, Option<u64>, u64, bool)] = &[
            // Nothing in flight.
            (None, Some(100), 100, false),
            // Waited less than the limit.
            (Some(0), Some(29), 29, false),
            // Waited the limit, the broker answered a moment ago: given up.
            (Some(0), Some(30), 30, true),
            (Some(0), Some(16), 30, true),
            // The broker has been silent for half the limit: a dead link, the keep-alive's job.
            (Some(0), Some(15), 30, false),
            (Some(0), Some(1), 300, false),
            // Never heard since connecting.
            (Some(0), None, 300, false),
        ];
        for &(sent, heard, now, want) in table {
            let at = |x: u64| t0 + s(x);
            assert_eq!(
                given_up(sent.map(at), heard.map(at), at(now), limit),
                want,
                "sent {sent:?}, heard {heard:?}, now {now}"
            );
        }
    }

    #[test]
    fn the_window_halves_down_to_one_publish_and_no_further() {
        let mut w = Window::new(256);
        let sizes: Vec<_> = std::iter::from_fn(|| w.shrink()).collect();
        assert_eq!(sizes, [128, 64, 32, 16, 8, 4, 2, 1]);
        assert_eq!(w.size(), 1);
        let mut odd = Window::new(100);
        assert_eq!(odd.shrink(), Some(50));
        assert_eq!(Window::new(0).size(), 1);
    }

    #[test]
    fn a_learned_window_narrows_only_the_same_broker_under_the_same_setting() {
        let learned = |broker: &str, configured, window| Learned {
            broker: broker.to_string(),
            configured,
            window,
        };
        // (configured now, broker now, learned, window of the first session)
        let table: &[(usize, &str, Option<Learned>, usize)] = &[
            (200, "aws:8883", None, 200),
            (200, "aws:8883", Some(learned("aws:8883", 200, 100)), 100),
            (200, "aws:8883", Some(learned("aws:8883", 200, 0)), 1),
            // Another broker, or a setting changed since: the configured window.
            (200, "hivemq:8883", Some(learned("aws:8883", 200, 100)), 200),
            (100, "aws:8883", Some(learned("aws:8883", 200, 50)), 100),
            (400, "aws:8883", Some(learned("aws:8883", 200, 50)), 400),
            // Never wider than configured, whatever the file says.
            (200, "aws:8883", Some(learned("aws:8883", 200, 300)), 200),
        ];
        for (configured, broker, learned, want) in table {
            assert_eq!(
                Window::resume(*configured, broker, learned.as_ref()).size(),
                *want,
                "{configured} {broker} {learned:?}"
            );
        }
    }
}
