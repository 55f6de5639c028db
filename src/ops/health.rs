//! Liveness of the gateway's long-running loops.
//!
//! Every watched loop (each device poller or serial task, the pipeline, the outbox writer, the
//! uplink, the embedded broker's link thread) holds a `Beat`. On each turn it promises when it will beat next:
//! - `busy()`: it has work in hand and beats again within the registry's `Pace::soon`;
//! - `promise(within)`: it sleeps until a time of its own choosing (the next poll, a reconnect
//!   delay) and beats again within `within`, which the caller computes as that sleep plus `soon`;
//! - `waiting(limit)`: it waits for something that has its own deadline (a device timeout, a
//!   commit by the outbox writer, which is watched itself) for at most `limit`;
//! - `idle()`: it waits for input that another watched loop produces and has nothing in hand.
//!
//! `Health::stalled` names the loops past their promise; the watchdog (`ops::watchdog`) withholds
//! `WATCHDOG=1` while any is, so a wedged loop (a call that never returns, a lock never
//! released) gets the service restarted instead of a timer task keeping a dead gateway
//! "healthy". `Pace` derives `soon` from the systemd watchdog interval so that a loop hung with
//! work in hand stops the pings within half that interval (see `Pace::for_watchdog`).
//!
//! There is no process-wide registry: `app.rs` creates one `Health` and hands each loop its
//! `Beat`. This module does not decide what progress means for a loop: each loop does, at its
//! call site. Device reachability is not tracked here (see `ops::stats::Board`).
//!
//! Test hook: when `FIELDBRIDGE_DEBUG_HANG_FILE` names a file and that file contains a loop's
//! name on a line of its own (`poller:plc`, `pipeline`, `outbox writer`, `uplink`,
//! `broker link`), that loop
//! hangs for good at its next `busy()` or `promise()`: the moment it has work in hand or has
//! just promised a beat, which is when a real hang hurts. It exists so tests can show that a
//! really hung loop stops the watchdog and cannot hold up shutdown. It costs one branch per beat
//! when the variable is unset; when set, the file is read at most every `HOOK_EVERY` per loop.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::outbox::Liveness;

/// The environment variable of the test hook described above.
pub const HANG_FILE_ENV: &str = "FIELDBRIDGE_DEBUG_HANG_FILE";

/// `due_ms` value of a loop that waits for input and has promised nothing.
const IDLE: u64 = u64::MAX;

/// `soon` when systemd asked for no watchdog: stalls then only show in `STATUS=` and the stats.
const UNWATCHED_SOON: Duration = Duration::from_secs(15);

/// The test hook reads its file at most this often per loop.
const HOOK_EVERY: Duration = Duration::from_millis(50);

/// How soon loops with work in hand must beat, and how often waiting loops and the watchdog
/// come round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// A loop with work in hand beats again within this.
    pub soon: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace::for_watchdog(None)
    }
}

impl Pace {
    /// The pace for the systemd watchdog interval `watchdog` (`WATCHDOG_USEC`). A loop that hangs
    /// right after a beat is past its promise at most `soon` = `watchdog`/4 later; the watchdog
    /// looks every `tick` = `watchdog`/8, so its last ping comes at most `watchdog`/4 after the
    /// hang (within the `watchdog`/2 the issue allows, with room for a late tick on a busy
    /// machine), and systemd still gets a ping at least every `watchdog`/8 while all is well. A
    /// loop that is merely slow once (a long fsync) costs a missed ping or two, not a restart:
    /// systemd acts only after a whole interval without one.
    pub fn for_watchdog(watchdog: Option<Duration>) -> Pace {
        Pace {
            soon: watchdog.map_or(UNWATCHED_SOON, |w| w / 4),
        }
    }

    /// How often a loop that waits on something without its own wake-up comes round to beat,
    /// and how often the watchdog looks.
    pub fn tick(&self) -> Duration {
        self.soon / 2
    }
}

struct LoopState {
    name: String,
    /// Milliseconds since `Inner::start` by which the loop promised to beat again.
    due_ms: AtomicU64,
    /// Milliseconds since `Inner::start` of its last beat.
    beat_ms: AtomicU64,
    finished: AtomicBool,
}

struct Inner {
    start: Instant,
    pace: Pace,
    loops: Mutex<Vec<Arc<LoopState>>>,
    /// Read once when the registry is made; see the test hook above.
    hang_file: Option<PathBuf>,
}

/// The registry of watched loops. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

/// A loop's handle for reporting progress. Dropping it (the loop ended) stops the supervisor
/// from watching that loop.
pub struct Beat {
    state: Arc<LoopState>,
    start: Instant,
    pace: Pace,
    hang_file: Option<PathBuf>,
    /// When the test hook last read its file (ms since `start`).
    hook_checked_ms: AtomicU64,
}

/// A loop that broke its promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub name: String,
    /// How far past its promise it is.
    pub overdue: Duration,
    /// How long since it last beat.
    pub silent: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A registry with the pace of an unwatched process (no systemd watchdog).
    pub fn new() -> Health {
        Health::with_pace(Pace::default())
    }

    pub fn with_pace(pace: Pace) -> Health {
        Health {
            inner: Arc::new(Inner {
                start: Instant::now(),
                pace,
                loops: Mutex::new(Vec::new()),
                hang_file: std::env::var_os(HANG_FILE_ENV).map(PathBuf::from),
            }),
        }
    }

    pub fn pace(&self) -> Pace {
        self.inner.pace
    }

    /// Registers a loop that must make its first beat within `within`.
    pub fn register(&self, name: impl Into<String>, within: Duration) -> Beat {
        let now = ms_since(self.inner.start);
        let state = Arc::new(LoopState {
            name: name.into(),
            due_ms: AtomicU64::new(due_after(now, within)),
            beat_ms: AtomicU64::new(now),
            finished: AtomicBool::new(false),
        });
        let mut loops = self.inner.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops.retain(|l| !l.finished.load(Ordering::Relaxed));
        loops.push(state.clone());
        Beat {
            state,
            start: self.inner.start,
            pace: self.inner.pace,
            hang_file: self.inner.hang_file.clone(),
            hook_checked_ms: AtomicU64::new(0),
        }
    }

    /// Registers the loop that reads device `device` (its loop name is `poller:<device>`,
    /// whether a poller or a serial task).
    pub fn register_device(&self, device: &str, within: Duration) -> Beat {
        self.register(format!("poller:{device}"), within)
    }

    /// The loops that are more than `slack` past their promise.
    pub fn stalled(&self, slack: Duration) -> Vec<Stall> {
        let now = ms_since(self.inner.start);
        let slack = u64::try_from(slack.as_millis()).unwrap_or(u64::MAX);
        let loops = self.inner.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops
            .iter()
            .filter(|l| !l.finished.load(Ordering::Relaxed))
            .filter_map(|l| {
                let due = l.due_ms.load(Ordering::Relaxed);
                let beat = l.beat_ms.load(Ordering::Relaxed);
                (due != IDLE && now > due.saturating_add(slack)).then(|| Stall {
                    name: l.name.clone(),
                    overdue: Duration::from_millis(now - due),
                    silent: Duration::from_millis(now.saturating_sub(beat)),
                })
            })
            .collect()
    }

    /// The loops whose `Beat` still exists: at shutdown, the ones that have not ended.
    pub fn unfinished(&self) -> Vec<String> {
        let loops = self.inner.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops
            .iter()
            .filter(|l| !l.finished.load(Ordering::Relaxed))
            .map(|l| l.name.clone())
            .collect()
    }
}

fn ms_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
}

/// `now`: milliseconds since the registry's start.
fn due_after(now: u64, within: Duration) -> u64 {
    let w = u64::try_from(within.as_millis()).unwrap_or(u64::MAX - 1);
    now.saturating_add(w).min(IDLE - 1)
}

impl Beat {
    /// The registry's `Pace::soon`: how soon a loop with work in hand beats again.
    pub fn soon(&self) -> Duration {
        self.pace.soon
    }

    /// How often a loop waiting on something without a wake-up of its own comes round to beat.
    pub fn tick(&self) -> Duration {
        self.pace.tick()
    }

    /// The loop has work in hand and beats again within `soon`.
    pub async fn busy(&self) {
        self.promise(self.pace.soon).await;
    }

    /// The loop made progress and promises to beat again within `within` (a sleep of its own
    /// choosing plus `soon`).
    pub async fn promise(&self, within: Duration) {
        self.set(within);
        self.hang_if_asked().await;
    }

    /// The loop waits, for at most `limit`, for something with a deadline of its own (a device
    /// timeout, a commit by the outbox writer, which is watched itself); it beats within `soon`
    /// of that.
    pub fn waiting(&self, limit: Duration) {
        self.set(limit.saturating_add(self.pace.soon));
    }

    /// The loop waits for input that another watched loop produces, with no deadline of its own
    /// and nothing in hand.
    pub fn idle(&self) {
        self.state
            .beat_ms
            .store(ms_since(self.start), Ordering::Relaxed);
        self.state.due_ms.store(IDLE, Ordering::Relaxed);
    }

    fn set(&self, within: Duration) {
        // One clock read: busy loops call this on every turn.
        let now = ms_since(self.start);
        self.state.beat_ms.store(now, Ordering::Relaxed);
        self.state
            .due_ms
            .store(due_after(now, within), Ordering::Relaxed);
    }

    /// `busy()` for a loop on a thread of its own (the broker link): it blocks instead of
    /// awaiting when the test hook hangs it.
    pub fn busy_blocking(&self) {
        self.set(self.pace.soon);
        if self.hang_asked() {
            loop {
                std::thread::park();
            }
        }
    }

    async fn hang_if_asked(&self) {
        if self.hang_asked() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether the test hook asks this loop to hang now (logged once when it does).
    fn hang_asked(&self) -> bool {
        let Some(path) = &self.hang_file else {
            return false;
        };
        let now = ms_since(self.start);
        let last = self.hook_checked_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < HOOK_EVERY.as_millis() as u64 {
            return false;
        }
        self.hook_checked_ms.store(now.max(1), Ordering::Relaxed);
        let asked = std::fs::read_to_string(path)
            .map(|s| s.lines().any(|l| l.trim() == self.state.name))
            .unwrap_or(false);
        if asked {
            tracing::warn!(event = "debug_hang", loop_name = %self.state.name, "loop hangs on purpose ({HANG_FILE_ENV})");
        }
        asked
    }
}

/// The outbox writer beats through this (the outbox does not depend on `ops`).
impl Liveness for Beat {
    fn busy(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Beat::busy(self))
    }

    fn waiting(&self, limit: Duration) {
        Beat::waiting(self, limit)
    }

    fn tick(&self) -> Duration {
        Beat::tick(self)
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        self.state.finished.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(h: &Health, slack: Duration) -> Vec<String> {
        h.stalled(slack).into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn the_pace_is_a_quarter_of_the_watchdog_interval_and_the_tick_an_eighth() {
        let table = [
            (Some(Duration::from_secs(4)), 1000, 500),
            (Some(Duration::from_secs(30)), 7500, 3750),
            (Some(Duration::from_secs(1)), 250, 125),
            (None, 15_000, 7500),
        ];
        for (watchdog, soon_ms, tick_ms) in table {
            let p = Pace::for_watchdog(watchdog);
            assert_eq!(p.soon, Duration::from_millis(soon_ms), "{watchdog:?}");
            assert_eq!(p.tick(), Duration::from_millis(tick_ms), "{watchdog:?}");
            // Caught within half the interval: hang right after a beat, seen `soon` later.
            if let Some(w) = watchdog {
                assert!(p.soon + p.tick() <= w / 2, "{watchdog:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn loop_past_its_promise_by_more_than_the_slack_is_reported_stalled() {
        let h = Health::new();
        let a = h.register("a", Duration::from_secs(1));
        let b = h.register_device("plc", Duration::from_secs(1));
        let slack = Duration::from_secs(2);
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert!(h.stalled(slack).is_empty(), "within slack");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            names(&h, slack),
            vec!["a".to_string(), "poller:plc".to_string()]
        );
        a.promise(Duration::from_secs(1)).await;
        b.idle();
        assert!(h.stalled(slack).is_empty(), "both beat again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_loop_is_stalled_soon_after_its_last_beat_and_the_stall_says_how_long_ago() {
        let h = Health::with_pace(Pace::for_watchdog(Some(Duration::from_secs(4))));
        let a = h.register("pipeline", Duration::ZERO);
        a.busy().await;
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(h.stalled(Duration::ZERO).is_empty());
        tokio::time::advance(Duration::from_millis(300)).await;
        let s = h.stalled(Duration::ZERO);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "pipeline");
        assert_eq!(s[0].silent, Duration::from_millis(1200));
        assert_eq!(s[0].overdue, Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_waiting_on_a_bounded_call_is_stalled_only_after_the_bound() {
        let h = Health::with_pace(Pace::for_watchdog(Some(Duration::from_secs(4))));
        let a = h.register("poller:plc", Duration::ZERO);
        a.waiting(Duration::from_secs(3));
        tokio::time::advance(Duration::from_millis(3900)).await;
        assert!(h.stalled(Duration::ZERO).is_empty());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(names(&h, Duration::ZERO), vec!["poller:plc".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_finished_loops_are_never_stalled_and_only_the_living_are_unfinished() {
        let h = Health::new();
        let a = h.register("a", Duration::from_secs(1));
        a.idle();
        let b = h.register("b", Duration::from_secs(1));
        drop(b);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(h.stalled(Duration::ZERO).is_empty());
        assert_eq!(h.unfinished(), vec!["a".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn two_registries_do_not_see_each_others_loops() {
        let one = Health::new();
        let two = Health::new();
        let _a = one.register("a", Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(names(&one, Duration::ZERO), vec!["a".to_string()]);
        assert!(two.stalled(Duration::ZERO).is_empty());
    }
}
