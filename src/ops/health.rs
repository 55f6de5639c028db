//! Liveness of the gateway's long-running loops.
//!
//! Every loop (one per device poller or serial task, the uplink, the pipeline) holds a `Beat`
//! and reports progress on each turn together with a promise of when it will next report
//! (`progress(within)`), or says it is waiting for input that another watched loop produces
//! (`idle()`). `Health::stalled` names the loops that broke their promise by more than a slack;
//! the watchdog (`ops::watchdog`) withholds `WATCHDOG=1` while any did, so a wedged loop (a call
//! that never returns, a lock never released) gets the service restarted instead of a timer task
//! keeping a dead gateway "healthy".
//!
//! There is no process-wide registry: `app.rs` creates one `Health` and hands each loop its
//! `Beat`. This module does not decide what progress means for a loop: each loop does, at its
//! call site. Device reachability is not tracked here (see `ops::stats::Board`).
//!
//! Test hook: when `FIELDBRIDGE_DEBUG_HANG_FILE` names a file and that file contains a loop's
//! name (e.g. `poller:plc`, `uplink`, `pipeline`), that loop hangs for good at its next beat. It
//! exists so tests can show that a really hung loop stops the watchdog; it costs nothing when the
//! variable is unset.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The environment variable of the test hook described above.
pub const HANG_FILE_ENV: &str = "FIELDBRIDGE_DEBUG_HANG_FILE";

/// `due_ms` value of a loop that waits for input and has promised nothing.
const IDLE: u64 = u64::MAX;

struct LoopState {
    name: String,
    /// Milliseconds since `Inner::start` by which the loop promised to beat again.
    due_ms: AtomicU64,
    finished: AtomicBool,
}

struct Inner {
    start: Instant,
    loops: Mutex<Vec<Arc<LoopState>>>,
    /// Read once when the registry is made; see the test hook above.
    hang_file: Option<PathBuf>,
}

/// The registry of watched loops. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

/// A loop's handle for reporting progress. Dropping it (the loop ended on purpose) stops the
/// supervisor from watching that loop.
pub struct Beat {
    state: Arc<LoopState>,
    start: Instant,
    hang_file: Option<PathBuf>,
}

/// A loop that broke its promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub name: String,
    pub overdue: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            inner: Arc::new(Inner {
                start: Instant::now(),
                loops: Mutex::new(Vec::new()),
                hang_file: std::env::var_os(HANG_FILE_ENV).map(PathBuf::from),
            }),
        }
    }

    /// Registers a loop that must make its first beat within `within`.
    pub fn register(&self, name: impl Into<String>, within: Duration) -> Beat {
        let state = Arc::new(LoopState {
            name: name.into(),
            due_ms: AtomicU64::new(due_after(self.inner.start, within)),
            finished: AtomicBool::new(false),
        });
        let mut loops = self.inner.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops.retain(|l| !l.finished.load(Ordering::Relaxed));
        loops.push(state.clone());
        Beat {
            state,
            start: self.inner.start,
            hang_file: self.inner.hang_file.clone(),
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
                (due != IDLE && now > due.saturating_add(slack)).then(|| Stall {
                    name: l.name.clone(),
                    overdue: Duration::from_millis(now - due),
                })
            })
            .collect()
    }
}

fn ms_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
}

fn due_after(start: Instant, within: Duration) -> u64 {
    let w = u64::try_from(within.as_millis()).unwrap_or(u64::MAX - 1);
    ms_since(start).saturating_add(w).min(IDLE - 1)
}

impl Beat {
    /// The loop made progress and promises to beat again within `within`.
    pub async fn progress(&self, within: Duration) {
        self.state
            .due_ms
            .store(due_after(self.start, within), Ordering::Relaxed);
        self.hang_if_asked().await;
    }

    /// The loop waits for input that another watched loop produces, with no deadline of its own.
    pub async fn idle(&self) {
        self.state.due_ms.store(IDLE, Ordering::Relaxed);
        self.hang_if_asked().await;
    }

    async fn hang_if_asked(&self) {
        let Some(path) = &self.hang_file else {
            return;
        };
        let asked = std::fs::read_to_string(path)
            .map(|s| s.lines().any(|l| l.trim() == self.state.name))
            .unwrap_or(false);
        if asked {
            tracing::warn!(event = "debug_hang", loop_name = %self.state.name, "loop hangs on purpose ({HANG_FILE_ENV})");
            std::future::pending::<()>().await;
        }
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
        a.progress(Duration::from_secs(1)).await;
        b.idle().await;
        assert!(h.stalled(slack).is_empty(), "both beat again");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_finished_loops_are_never_stalled() {
        let h = Health::new();
        let a = h.register("a", Duration::from_secs(1));
        a.idle().await;
        let b = h.register("b", Duration::from_secs(1));
        drop(b);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(h.stalled(Duration::ZERO).is_empty());
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
