//! Liveness of the gateway's long-running loops, and what the service manager is told about it.
//!
//! Every loop (one per device poller, the uplink, the pipeline) holds a `Beat` and reports
//! progress on each turn together with a promise of when it will next report (`progress(within)`),
//! or says it is waiting for input that another watched loop produces (`idle()`). The supervisor
//! (`supervise`) sends `WATCHDOG=1` to systemd only while no loop has broken its promise by more
//! than the allowed slack, so a wedged loop (a call that never returns, a lock never released)
//! stops the pings and systemd restarts the service, instead of a timer task keeping a dead
//! gateway "healthy". It also sends `STATUS=` lines (devices online, outbox depth). `collect`
//! builds the stats snapshot that `stats.rs` publishes on `<prefix>/<gateway>/stats` and
//! `fieldbridge status` reads.
//!
//! This module does not decide what progress means for a loop: each loop does, at its call site.
//!
//! Test hook: when `FIELDBRIDGE_DEBUG_HANG_FILE` names a file and that file contains a loop's
//! name (e.g. `poller:plc`, `uplink`, `pipeline`), that loop hangs for good at its next beat. It
//! exists so tests can show that a really hung loop stops the watchdog; it costs nothing when the
//! variable is unset.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sd_notify::NotifyState;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app::Running;

/// The environment variable of the test hook described above.
pub const HANG_FILE_ENV: &str = "FIELDBRIDGE_DEBUG_HANG_FILE";

/// `due_ms` value of a loop that waits for input and has promised nothing.
const IDLE: u64 = u64::MAX;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

struct LoopState {
    name: String,
    /// Milliseconds since `Inner::start` by which the loop promised to beat again.
    due_ms: AtomicU64,
    /// Whether the device behind a poller answers (`UNKNOWN` for other loops).
    up: AtomicU8,
    is_device: bool,
    finished: AtomicBool,
}

struct Inner {
    start: Instant,
    loops: Mutex<Vec<Arc<LoopState>>>,
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
}

/// A loop that broke its promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub name: String,
    pub overdue: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub stalled: Vec<Stall>,
    /// Device name → `Some(online)`, or `None` before its first poll finished.
    pub devices: BTreeMap<String, Option<bool>>,
}

/// The process-wide registry that the loops register with. A global keeps the loops' signatures
/// unchanged: a loop only needs one line to be watched.
pub fn global() -> &'static Health {
    static GLOBAL: OnceLock<Health> = OnceLock::new();
    GLOBAL.get_or_init(Health::new)
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
            }),
        }
    }

    /// Registers a loop that must make its first beat within `within`.
    pub fn register(&self, name: impl Into<String>, within: Duration) -> Beat {
        self.add(name.into(), within, false)
    }

    /// Registers the poller of device `device` (its loop name is `poller:<device>`).
    pub fn register_device(&self, device: &str, within: Duration) -> Beat {
        self.add(format!("poller:{device}"), within, true)
    }

    fn add(&self, name: String, within: Duration, is_device: bool) -> Beat {
        let state = Arc::new(LoopState {
            name,
            due_ms: AtomicU64::new(due_after(self.inner.start, within)),
            up: AtomicU8::new(UNKNOWN),
            is_device,
            finished: AtomicBool::new(false),
        });
        let mut loops = self.inner.loops.lock().unwrap_or_else(|p| p.into_inner());
        loops.retain(|l| !l.finished.load(Ordering::Relaxed));
        loops.push(state.clone());
        Beat {
            state,
            start: self.inner.start,
        }
    }

    /// Which loops are more than `slack` past their promise, and which devices answer.
    pub fn snapshot(&self, slack: Duration) -> Snapshot {
        let now = ms_since(self.inner.start);
        let slack = u64::try_from(slack.as_millis()).unwrap_or(u64::MAX);
        let loops = self.inner.loops.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = Snapshot::default();
        for l in loops.iter().filter(|l| !l.finished.load(Ordering::Relaxed)) {
            let due = l.due_ms.load(Ordering::Relaxed);
            if due != IDLE && now > due.saturating_add(slack) {
                s.stalled.push(Stall {
                    name: l.name.clone(),
                    overdue: Duration::from_millis(now - due),
                });
            }
            if l.is_device {
                let name = l.name.strip_prefix("poller:").unwrap_or(&l.name);
                let up = match l.up.load(Ordering::Relaxed) {
                    UP => Some(true),
                    DOWN => Some(false),
                    _ => None,
                };
                s.devices.insert(name.to_string(), up);
            }
        }
        s
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

    /// For a poller: whether its device answered the last poll.
    pub fn set_online(&self, online: bool) {
        self.state
            .up
            .store(if online { UP } else { DOWN }, Ordering::Relaxed);
    }

    async fn hang_if_asked(&self) {
        static HANG_FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
        let Some(path) =
            HANG_FILE.get_or_init(|| std::env::var_os(HANG_FILE_ENV).map(PathBuf::from))
        else {
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

/// The retained JSON snapshot on `<prefix>/<gateway>/stats`, read by `fieldbridge status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub version: String,
    pub pid: u32,
    /// Milliseconds since the Unix epoch when this snapshot was taken.
    pub ts: u64,
    pub uptime_s: u64,
    pub devices: BTreeMap<String, Option<bool>>,
    pub outbox: OutboxStats,
    pub upstream: UpstreamStats,
    /// Modbus lines (a bus name, or a Modbus TCP device's name) and their counters.
    #[serde(default)]
    pub lines: BTreeMap<String, LineCounters>,
    /// serial_line devices and what their ports delivered or rejected.
    #[serde(default)]
    pub serial: BTreeMap<String, SerialCounters>,
    /// Loops that broke their progress promise (empty when healthy).
    pub stalled: Vec<String>,
}

/// Totals since start of one serial_line device (see `device::serial::task::SerialStats`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SerialCounters {
    pub opens: u64,
    pub frames: u64,
    pub noise_bytes: u64,
    pub bad_checksums: u64,
    pub overlong: u64,
    pub unparsable: u64,
    pub timeouts: u64,
}

/// Totals since start of one Modbus line (see `device::bus::LineStats`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LineCounters {
    pub requests: u64,
    pub timeouts: u64,
    pub bad_answers: u64,
    pub exceptions: u64,
    pub link_errors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutboxStats {
    pub rows: u64,
    pub bytes: u64,
    pub dropped: u64,
    /// Age in seconds of the oldest stored reading, if any.
    pub oldest_age_s: Option<u64>,
    /// Group commits so far; with `synchronous=FULL` each one fsyncs the WAL once.
    #[serde(default)]
    pub commits: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UpstreamStats {
    pub configured: bool,
    pub connected: bool,
    pub sent: u64,
    pub acked: u64,
    pub reconnects: u64,
}

pub fn stats_topic(prefix: &str, gateway: &str) -> String {
    format!("{prefix}/{gateway}/stats")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `STATUS=` line systemd shows in `systemctl status`.
pub fn status_line(s: &Stats) -> String {
    let online = s.devices.values().filter(|v| **v == Some(true)).count();
    let upstream = match (s.upstream.configured, s.upstream.connected) {
        (false, _) => "not configured",
        (true, true) => "connected",
        (true, false) => "disconnected",
    };
    let mut line = format!(
        "{online}/{} devices online, outbox {} queued, upstream {upstream}",
        s.devices.len(),
        s.outbox.rows
    );
    if !s.stalled.is_empty() {
        line.push_str(&format!(
            "; no progress in {} (watchdog withheld)",
            s.stalled.join(", ")
        ));
    }
    line
}

/// The stats snapshot: counters of the outbox and uplink, device reachability, stalled loops.
pub async fn collect(
    health: &Health,
    running: &Running,
    slack: Duration,
    started: Instant,
) -> Stats {
    let snap = health.snapshot(slack);
    let o = running.outbox.stats();
    // Running-time age (see outbox): a wall-clock jump after NTP sync does not distort it.
    let oldest_age_s = running
        .outbox
        .oldest_age()
        .await
        .ok()
        .flatten()
        .map(|a| a.as_secs());
    let upstream = match &running.uplink {
        Some(u) => UpstreamStats {
            configured: true,
            connected: u.connected.load(Ordering::Relaxed),
            sent: u.sent.load(Ordering::Relaxed),
            acked: u.acked.load(Ordering::Relaxed),
            reconnects: u.reconnects.load(Ordering::Relaxed),
        },
        None => UpstreamStats {
            configured: false,
            connected: false,
            sent: 0,
            acked: 0,
            reconnects: 0,
        },
    };
    Stats {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        ts: now_ms(),
        uptime_s: started.elapsed().as_secs(),
        devices: running.board.devices(),
        lines: running
            .lines
            .iter()
            .map(|(name, l)| {
                let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                (
                    name.to_string(),
                    LineCounters {
                        requests: get(&l.requests),
                        timeouts: get(&l.timeouts),
                        bad_answers: get(&l.bad_answers),
                        exceptions: get(&l.exceptions),
                        link_errors: get(&l.link_errors),
                    },
                )
            })
            .collect(),
        serial: running
            .serial
            .iter()
            .map(|(name, s)| {
                let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                (
                    name.to_string(),
                    SerialCounters {
                        opens: get(&s.opens),
                        frames: get(&s.frames),
                        noise_bytes: get(&s.noise_bytes),
                        bad_checksums: get(&s.bad_checksums),
                        overlong: get(&s.overlong),
                        unparsable: get(&s.unparsable),
                        timeouts: get(&s.timeouts),
                    },
                )
            })
            .collect(),
        outbox: OutboxStats {
            rows: o.rows.load(Ordering::Relaxed),
            bytes: o.bytes.load(Ordering::Relaxed),
            dropped: o.dropped.load(Ordering::Relaxed),
            commits: o.commits.load(Ordering::Relaxed),
            oldest_age_s,
        },
        upstream,
        stalled: snap.stalled.into_iter().map(|s| s.name).collect(),
    }
}

/// How often the supervisor looks at the loops when systemd asked for no watchdog.
const DEFAULT_TICK: Duration = Duration::from_secs(5);

/// Tells systemd the gateway is ready, then watches the loops until `stop` is cancelled:
/// `WATCHDOG=1` at half the watchdog interval while every loop keeps its promise, and `STATUS=`
/// updates.
pub async fn supervise(health: Health, running: Running, stop: CancellationToken) {
    let started = Instant::now();
    let watchdog = sd_notify::watchdog_enabled();
    // A loop is declared stuck once it is a whole watchdog interval past its promise: its
    // promise already covers its slowest legitimate turn, so this is margin, not tuning.
    let slack = watchdog.unwrap_or(Duration::from_secs(30));
    let tick = watchdog.map(|w| w / 2).unwrap_or(DEFAULT_TICK);

    let first = collect(&health, &running, slack, started).await;
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(&first)),
    ]);
    let mut reported_stall = false;
    let mut last_status = String::new();
    let mut next = Instant::now();
    loop {
        let s = collect(&health, &running, slack, started).await;
        if s.stalled.is_empty() {
            if watchdog.is_some() {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
            reported_stall = false;
        } else if !reported_stall {
            reported_stall = true;
            tracing::error!(
                event = "watchdog_withheld",
                stalled = %s.stalled.join(","),
                "loops made no progress; not confirming liveness to the watchdog"
            );
        }
        let line = status_line(&s);
        if line != last_status {
            let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
            last_status = line;
        }
        next += tick;
        if next < Instant::now() {
            next = Instant::now() + tick;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn loop_past_its_promise_by_more_than_the_slack_is_reported_stalled() {
        let h = Health::new();
        let a = h.register("a", Duration::from_secs(1));
        let b = h.register_device("plc", Duration::from_secs(1));
        let slack = Duration::from_secs(2);
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert!(h.snapshot(slack).stalled.is_empty(), "within slack");
        tokio::time::advance(Duration::from_secs(1)).await;
        let names: Vec<String> = h
            .snapshot(slack)
            .stalled
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, vec!["a".to_string(), "poller:plc".to_string()]);
        a.progress(Duration::from_secs(1)).await;
        b.idle().await;
        assert!(h.snapshot(slack).stalled.is_empty(), "both beat again");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_finished_loops_are_never_stalled() {
        let h = Health::new();
        let a = h.register("a", Duration::from_secs(1));
        a.idle().await;
        let b = h.register("b", Duration::from_secs(1));
        drop(b);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(h.snapshot(Duration::ZERO).stalled.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn device_state_follows_the_poller() {
        let h = Health::new();
        let b = h.register_device("plc", Duration::from_secs(1));
        assert_eq!(h.snapshot(Duration::ZERO).devices["plc"], None);
        b.set_online(true);
        assert_eq!(h.snapshot(Duration::ZERO).devices["plc"], Some(true));
        b.set_online(false);
        assert_eq!(h.snapshot(Duration::ZERO).devices["plc"], Some(false));
    }

    #[test]
    fn status_line_names_devices_outbox_upstream_and_stalls() {
        let mut s = Stats {
            lines: BTreeMap::new(),
            serial: BTreeMap::new(),
            version: "0".into(),
            pid: 1,
            ts: 0,
            uptime_s: 0,
            devices: BTreeMap::from([("a".into(), Some(true)), ("b".into(), Some(false))]),
            outbox: OutboxStats {
                rows: 7,
                bytes: 0,
                dropped: 0,
                oldest_age_s: None,
                commits: 0,
            },
            upstream: UpstreamStats {
                configured: true,
                connected: false,
                sent: 0,
                acked: 0,
                reconnects: 0,
            },
            stalled: vec![],
        };
        assert_eq!(
            status_line(&s),
            "1/2 devices online, outbox 7 queued, upstream disconnected"
        );
        s.stalled.push("uplink".into());
        assert!(status_line(&s).ends_with("; no progress in uplink (watchdog withheld)"));
    }
}
