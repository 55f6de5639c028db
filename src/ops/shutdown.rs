//! The hard deadline on the stop sequence: a shutdown always finishes.
//!
//! `app.rs` stops the loops in order and waits for each. A loop that hangs would make that wait
//! forever, and systemd would end it with SIGKILL after `TimeoutStopSec` without a word of why.
//! So once the stop begins, a plain thread (not a tokio task: a hung loop may be blocking a
//! runtime worker) waits for the sequence to finish. Past the deadline it logs, at error level,
//! `event=shutdown_abandoned` naming the loops that had not ended (and which of them were past
//! their promise), then exits with status 1.
//!
//! Why `std::process::exit`: a hung loop may be a thread blocked in a system call (SQLite's
//! worker in an fsync on a failing SD card, a `spawn_blocking` call) that nothing can cancel or
//! join, and returning from `main` would drop the runtime, which waits for blocking tasks without
//! end. Exiting skips destructors, which loses nothing the durability contract promises: every
//! committed message is in the outbox (O1; the WAL is replayed at the next open, the high-water
//! mark was recorded after each commit) and is sent after the restart; what had not been
//! committed yet was never acknowledged to anyone. The log line is out before the exit: the
//! stderr and journald writers are unbuffered.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::ops::health::Health;

/// What the stop sequence may take beyond `shutdown_timeout` (the `Budget` of its waits for a
/// running write and for acknowledgements): the goodbye to upstream, the last commit and the WAL checkpoint.
pub const MARGIN: Duration = Duration::from_secs(5);

/// The exit status of an abandoned shutdown (a runtime failure, as in `main.rs`).
pub const ABANDONED_EXIT: i32 = 1;

/// The one time budget of a stop, `shutdown_timeout`: it starts when the stop begins, and each
/// wait in the sequence (a device write finishing, the uplink's wait for acknowledgements) gets
/// what is left of it, not a budget of its own. Two full budgets one after the other would run
/// past the hard deadline (`shutdown_timeout + MARGIN`) and turn a slow stop into an abandoned one.
#[derive(Clone, Debug, Default)]
pub struct Budget(Arc<OnceLock<Instant>>);

impl Budget {
    /// The stop begins at `now` and must be done waiting `within` after it; later calls change
    /// nothing.
    pub fn start(&self, now: Instant, within: Duration) {
        let _ = self.0.set(now + within);
    }

    /// What is left of the budget at `now`; `whole` while no stop has begun (an uplink replaced
    /// by a reload gets its whole grace).
    pub fn left(&self, now: Instant, whole: Duration) -> Duration {
        match self.0.get() {
            Some(end) => end.saturating_duration_since(now).min(whole),
            None => whole,
        }
    }
}

/// An armed deadline; dropping it (the stop sequence ended, one way or another) disarms it.
pub struct Deadline {
    _done: mpsc::Sender<()>,
    health: Health,
}

/// The stop finished, but a loop it does not wait for (the broker link thread) was hung.
#[derive(Debug, thiserror::Error)]
#[error("shutdown abandoned hung loops: {}", loops.join(", "))]
pub struct Abandoned {
    pub loops: Vec<String>,
}

impl Deadline {
    /// Starts the deadline: unless dropped within `after`, the process exits as described above.
    pub fn arm(after: Duration, health: Health) -> Deadline {
        let (done, rx) = mpsc::channel::<()>();
        let watched = health.clone();
        let spawned = std::thread::Builder::new()
            .name("shutdown-deadline".into())
            .spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(after) {
                    abandon(after, &health);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the shutdown deadline; a hung loop could hold up the stop");
        }
        Deadline {
            _done: done,
            health: watched,
        }
    }

    /// The stop sequence is over: disarms the deadline. Every loop it stopped has ended; one
    /// still past its promise is hung where the sequence does not wait (the broker link thread),
    /// and is reported like an abandoned one, so a hang never ends in a clean exit.
    pub fn finish(self) -> Result<(), Abandoned> {
        let loops: Vec<String> = self
            .health
            .stalled(Duration::ZERO)
            .into_iter()
            .map(|s| s.name)
            .collect();
        if loops.is_empty() {
            return Ok(());
        }
        tracing::error!(
            event = "shutdown_abandoned",
            loops = %loops.join(", "),
            stalled = %loops.join(", "),
            "shutdown finished but these loops were hung and are abandoned"
        );
        Err(Abandoned { loops })
    }
}

fn abandon(after: Duration, health: &Health) -> ! {
    let loops = health.unfinished();
    let stalled: Vec<String> = health
        .stalled(Duration::ZERO)
        .into_iter()
        .map(|s| s.name)
        .collect();
    tracing::error!(
        event = "shutdown_abandoned",
        loops = %loops.join(", "),
        stalled = %stalled.join(", "),
        deadline = %humantime::format_duration(after),
        "shutdown did not finish in time; exiting without these loops (committed messages stay in the outbox and are sent after restart)"
    );
    std::process::exit(ABANDONED_EXIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_wait_of_a_stop_gets_what_is_left_of_one_budget() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (budget started (after t0, length), asked at t0 + secs, whole, left)
        type Case = (Option<(u64, u64)>, u64, u64, u64);
        let table: &[Case] = &[
            (None, 0, 30, 30),
            (None, 100, 30, 30),
            (Some((0, 30)), 0, 30, 30),
            (Some((0, 30)), 12, 30, 18),
            (Some((0, 30)), 30, 30, 0),
            (Some((0, 30)), 45, 30, 0),
            (Some((5, 30)), 10, 30, 25),
            // A reload may have shortened the uplink's own grace below what is left.
            (Some((0, 30)), 10, 5, 5),
        ];
        for &(started, at, whole, want) in table {
            let b = Budget::default();
            if let Some((from, len)) = started {
                b.start(t0 + s(from), s(len));
            }
            assert_eq!(b.left(t0 + s(at), s(whole)), s(want), "{started:?} at {at}");
        }
    }

    #[test]
    fn only_the_first_start_of_a_stop_counts() {
        let t0 = Instant::now();
        let b = Budget::default();
        b.start(t0, Duration::from_secs(10));
        b.clone()
            .start(t0 + Duration::from_secs(8), Duration::from_secs(10));
        assert_eq!(
            b.left(t0 + Duration::from_secs(9), Duration::from_secs(60)),
            Duration::from_secs(1)
        );
    }
}
