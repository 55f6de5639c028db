//! Gateway statistics, defined once: the live counters every loop bumps (`LineCounters` for a
//! Modbus line, `SerialCounters` for a serial_line device, `UplinkCounters` for the upstream
//! link), the device board (last reported reachability of every device, Modbus or serial, the
//! one source of truth for "online"), and the `Stats` snapshot built from them.
//!
//! The snapshot is logged every `gateway.stats_interval`, and at once when a device goes online
//! or offline or upstream connects or disconnects, and published retained on the stats topic
//! through the normal path (outbox → upstream, and the local broker) by `Reporter`;
//! `fieldbridge status` reads it back, and the watchdog's `STATUS=` line is made from it.
//! Each counter set is declared once (`counter_set!`): its snapshot type has the same fields, so
//! the JSON schema cannot drift from what the loops count.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::flow::{now_ms, DeviceEvent, Message, Reading, Route, Routed};
use crate::ops::health::Health;
use crate::outbox::Outbox;

/// Adds one to a live counter.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Declares a set of live counters (atomics, bumped by a loop) and its snapshot (plain numbers,
/// serialised on the stats topic) from one list of fields.
/// `extra { … }` adds live fields that are not counters (they have their own snapshot).
macro_rules! counter_set {
    ($(#[$m:meta])* $live:ident => $snap:ident { $($(#[$fm:meta])* $field:ident),* $(,)? }
     $(extra { $($(#[$xm:meta])* $xfield:ident: $xty:ty),* $(,)? })?) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        pub struct $live {
            $($(#[$fm])* pub $field: AtomicU64,)*
            $($($(#[$xm])* $xfield: $xty,)*)?
        }

        /// Totals since start (the snapshot of the live counters of the same name). A counter
        /// missing from a snapshot (one from an older version) reads as 0.
        #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
        #[serde(default)]
        pub struct $snap {
            $(pub $field: u64,)*
        }

        impl $live {
            pub fn snapshot(&self) -> $snap {
                $snap { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counter_set! {
    /// Counters of one Modbus line (a bus, or a Modbus TCP device): what a field engineer looks
    /// at first on a flaky RS-485 line.
    LineCounters => LineTotals {
        /// Exchanges put on the wire (attempts, retries included).
        requests,
        /// Nothing came back in time.
        timeouts,
        /// Answers that were not the answer: the sum of the three kinds below, and on Modbus
        /// TCP, whatever the decoder refused.
        bad_answers,
        /// A reply shaped like the answer whose CRC does not match (baud, parity, termination).
        bad_crc,
        /// A valid frame from another unit id than the one asked.
        wrong_unit,
        /// Bytes that are no frame at all, or a frame of the right unit that is not the answer
        /// (wrong function, size or echo).
        garbage,
        /// Modbus exception answers.
        exceptions,
        /// The port or connection failed to open, or broke.
        link_errors,
        /// Milliseconds the line was busy with exchanges (silence and retries included).
        busy_ms,
        /// Polls of the line's devices that ended after the next poll was due.
        late_polls,
        /// Load windows in which the line could not keep its devices' intervals.
        overruns,
    }
    extra {
        /// Each unit id on the line: the devices that use it and its own counters.
        units: Mutex<BTreeMap<u8, UnitCell>>,
        /// The last completed load window.
        load: Mutex<Option<LineLoad>>,
    }
}

counter_set! {
    /// Counters of one unit id on a Modbus line (one device, usually).
    UnitCounters => UnitTotals {
        requests,
        /// Answers, exceptions included.
        answers,
        timeouts,
        bad_crc,
        wrong_unit,
        garbage,
        exceptions,
        /// Polls that ended after the next poll was due.
        late_polls,
    }
}

/// One unit id on a line: who uses it and what it did.
#[derive(Debug, Default)]
pub struct UnitCell {
    devices: Vec<Arc<str>>,
    pub counters: UnitCounters,
    /// Response times in the last completed load window.
    response: Option<ResponseTimes>,
}

/// Response times of one unit over a load window (answers only).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ResponseTimes {
    /// Mean time from request to the end of the answer, in ms.
    pub mean_ms: f64,
    pub max_ms: f64,
}

/// How busy a line was over its last load window (`device::modbus::load` measures it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineLoad {
    /// Share of wall time the line was busy, in percent.
    pub busy_pct: f64,
    /// Response times per unit id.
    pub response: BTreeMap<u8, ResponseTimes>,
}

impl LineCounters {
    /// `device` uses `unit` on this line (for the snapshot and the logs).
    pub fn add_device(&self, unit: u8, device: Arc<str>) {
        let mut u = self.units.lock().unwrap_or_else(|p| p.into_inner());
        u.entry(unit).or_default().devices.push(device);
    }

    /// Runs `f` on the counters of `unit` (created on first use: `scan` asks any id).
    pub fn unit<R>(&self, unit: u8, f: impl FnOnce(&UnitCounters) -> R) -> R {
        let mut u = self.units.lock().unwrap_or_else(|p| p.into_inner());
        f(&u.entry(unit).or_default().counters)
    }

    /// The devices configured with `unit` on this line, comma-separated ("" if none).
    pub fn devices_of(&self, unit: u8) -> String {
        let u = self.units.lock().unwrap_or_else(|p| p.into_inner());
        u.get(&unit)
            .map(|c| c.devices.iter().map(|d| &**d).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    }

    /// Stores the load of the window just completed.
    pub fn set_load(&self, load: LineLoad) {
        let mut u = self.units.lock().unwrap_or_else(|p| p.into_inner());
        for (unit, cell) in u.iter_mut() {
            cell.response = load.response.get(unit).copied();
        }
        drop(u);
        *self.load.lock().unwrap_or_else(|p| p.into_inner()) = Some(load);
    }

    /// Counters, load and units, for the stats topic.
    pub fn report(&self) -> LineReport {
        let units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        LineReport {
            totals: self.snapshot(),
            busy_pct: self
                .load
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|l| (l.busy_pct * 10.0).round() / 10.0),
            units: units
                .iter()
                .map(|(id, c)| {
                    (
                        id.to_string(),
                        UnitReport {
                            devices: c.devices.iter().map(|d| d.to_string()).collect(),
                            totals: c.counters.snapshot(),
                            response: c.response,
                        },
                    )
                })
                .collect(),
        }
    }
}

/// One line on the stats topic: its counters (at the top level, as before), how busy it was,
/// and each unit id.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LineReport {
    #[serde(flatten)]
    pub totals: LineTotals,
    /// Busy share of the last load window, in percent (`None` before the first window ends).
    #[serde(default)]
    pub busy_pct: Option<f64>,
    /// Unit ids (as strings: JSON keys) and what each did.
    #[serde(default)]
    pub units: BTreeMap<String, UnitReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UnitReport {
    pub devices: Vec<String>,
    #[serde(flatten)]
    pub totals: UnitTotals,
    /// Response times in the last load window (`None`: no answer in it).
    #[serde(default)]
    pub response: Option<ResponseTimes>,
}

counter_set! {
    /// Counters of one serial_line device: what its port delivered or rejected.
    SerialCounters => SerialTotals {
        /// Successful opens of the port.
        opens,
        /// Frames that decoded into values (or were valid but carried none we read).
        frames,
        noise_bytes,
        bad_checksums,
        overlong,
        /// Frames with the right framing whose content did not parse.
        unparsable,
        /// Polled requests that got no valid answer in time.
        timeouts,
    }
}
counter_set! {
    /// Counters of the embedded broker's forwarding path and of what rumqttd skipped.
    BrokerCounters => BrokerTotals {
        /// Local publishes matching a `[[forward]]` rule, committed to the outbox.
        forwarded,
        /// QoS 1/2 forwards whose commit failed: not acknowledged, the client's session closed
        /// (it sends them again after reconnecting).
        forward_refused,
        /// QoS 0 forwards whose commit failed: delivered locally, not upstream.
        forward_lost,
        /// Times rumqttd moved a lagging subscriber's read cursor past messages it had not read.
        cursor_jumps,
        /// Messages a lagging local subscriber never received because of those jumps.
        subscriber_skipped,
        /// Client connections the guard accepted (TCP, TLS, WebSocket), handshakes included.
        connections_accepted,
        /// Client connections closed at once: `max_connections` or the per-address share.
        connections_refused,
        /// Accepted client connections that have ended.
        connections_closed,
    }
}

/// Counters of the upstream link.
#[derive(Debug, Default)]
pub struct UplinkCounters {
    pub connected: AtomicBool,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub reconnects: AtomicU64,
    /// Publishes the broker kept unacknowledged past `upstream.ack_timeout` (see `mqtt::window`).
    pub ack_timeouts: AtomicU64,
    /// The in-flight window in use: `upstream.inflight` until an ack timeout halved it.
    pub window: AtomicU64,
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
    /// Modbus lines (a bus name, or a Modbus TCP device's name): counters, load, units.
    #[serde(default)]
    pub lines: BTreeMap<String, LineReport>,
    /// serial_line devices and what their ports delivered or rejected.
    #[serde(default)]
    pub serial: BTreeMap<String, SerialTotals>,
    /// The embedded broker's forwarding and lag counters (absent without `[broker]`).
    #[serde(default)]
    pub broker: Option<BrokerTotals>,
    /// Loops that broke their progress promise (empty when healthy).
    pub stalled: Vec<String>,
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
    /// Stored messages that can never be sent (invalid topic, too large), set aside in the
    /// dead-letter table so the queue goes on (`EVENT=outbox_dead_letter` names each).
    #[serde(default)]
    pub dead_letters: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UpstreamStats {
    pub configured: bool,
    pub connected: bool,
    pub sent: u64,
    pub acked: u64,
    pub reconnects: u64,
    #[serde(default)]
    pub ack_timeouts: u64,
    #[serde(default)]
    pub window: u64,
}

/// Reachability of every device, as last reported by its poller or serial task, with the reason
/// it went offline and the last reading of each point (for the status page).
#[derive(Debug, Default)]
pub struct Board {
    devices: Mutex<HashMap<Arc<str>, DeviceCell>>,
    /// Whether the last reading of each point is kept: only the status page shows them, and
    /// keeping them costs a copy and a map update per reading on the pipeline's path.
    keep_values: bool,
}

#[derive(Debug, Default)]
struct DeviceCell {
    online: Option<bool>,
    reason: Option<String>,
    values: BTreeMap<Arc<str>, Reading>,
}

/// One device on the board: reachability, why it is offline, last readings in point order.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    pub online: Option<bool>,
    pub reason: Option<String>,
    pub values: Vec<Reading>,
}

impl Board {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a Arc<str>>) -> Self {
        Board {
            devices: Mutex::new(
                names
                    .into_iter()
                    .map(|n| (n.clone(), DeviceCell::default()))
                    .collect(),
            ),
            keep_values: false,
        }
    }

    /// The board also keeps each point's last reading (for the status page).
    pub fn keeping_values(mut self) -> Self {
        self.keep_values = true;
        self
    }

    pub fn observe(&self, events: &[DeviceEvent]) {
        // A poisoned lock only means another thread panicked mid-update of a plain map; the
        // data is still usable.
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            match e {
                DeviceEvent::Status {
                    device,
                    online,
                    reason,
                } => {
                    // Only devices on the board: a device a reload removed may still have a
                    // last event in the pipeline's queue.
                    if let Some(cell) = d.get_mut(device) {
                        cell.online = Some(*online);
                        cell.reason = if *online { None } else { reason.clone() };
                    }
                }
                DeviceEvent::Readings(_) if !self.keep_values => {}
                DeviceEvent::Readings(readings) => {
                    for r in readings {
                        // Only configured devices: the board's keys are fixed at start.
                        if let Some(cell) = d.get_mut(&r.device) {
                            cell.values.insert(r.point.clone(), r.clone());
                        }
                    }
                }
            }
        }
    }

    /// A device a reload added (not yet reported).
    pub fn add(&self, name: &Arc<str>) {
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        d.entry(name.clone()).or_default();
    }

    /// A device a reload removed.
    pub fn remove(&self, name: &str) {
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        d.remove(name);
    }

    /// (online, total)
    pub fn counts(&self) -> (usize, usize) {
        let d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        (
            d.values().filter(|c| c.online == Some(true)).count(),
            d.len(),
        )
    }

    /// Every device with its last reported reachability (`None`: not reported yet).
    pub fn devices(&self) -> BTreeMap<String, Option<bool>> {
        let d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        d.iter().map(|(k, c)| (k.to_string(), c.online)).collect()
    }

    /// Every device with its reachability, offline reason and last readings.
    pub fn view(&self) -> BTreeMap<String, DeviceView> {
        let d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        d.iter()
            .map(|(k, c)| {
                (
                    k.to_string(),
                    DeviceView {
                        online: c.online,
                        reason: c.reason.clone(),
                        values: c.values.values().cloned().collect(),
                    },
                )
            })
            .collect()
    }
}

/// Upper bounds, in seconds, of the poll duration histogram: a Modbus TCP poll on a LAN takes
/// milliseconds, an RTU poll of a few requests at 9600 baud a few hundred, a timeout up to the
/// device's `timeout` per attempt.
pub const POLL_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// How one Modbus device's polls went: how long each took (answered or not) and why the failed
/// ones failed. Bumped by its poller only.
#[derive(Debug, Default)]
pub struct PollCounters {
    /// Polls per bucket of `POLL_BUCKETS` (not cumulative; the last cell is above every bound).
    buckets: [AtomicU64; POLL_BUCKETS.len() + 1],
    sum_us: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

/// A snapshot of `PollCounters`, in the shape of a Prometheus histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PollTotals {
    /// (upper bound in seconds, polls in this bucket and not in the one before), the last
    /// bound infinite: the shape prometheus-client's encoder sums into cumulative buckets.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_s: f64,
    /// Failed polls by reason (`DeviceError::kind`).
    pub errors: BTreeMap<&'static str, u64>,
}

impl PollCounters {
    /// One poll took `took`; `error` names why it failed, if it did.
    pub fn observe(&self, took: Duration, error: Option<&'static str>) {
        let s = took.as_secs_f64();
        let i = POLL_BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(POLL_BUCKETS.len());
        if let Some(cell) = self.buckets.get(i) {
            bump(cell);
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        if let Some(kind) = error {
            let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
            *e.entry(kind).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> PollTotals {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(POLL_BUCKETS.len() + 1);
        for (i, cell) in self.buckets.iter().enumerate() {
            let n = cell.load(Ordering::Relaxed);
            total += n;
            buckets.push((POLL_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        PollTotals {
            buckets,
            count: total,
            sum_s: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Commands by device and result (`ok`, `refused`, `stale`, `exception`, `not_confirmed`,
/// `unexpected`). A command for a device that is not configured counts under device `""`, so a
/// client cannot grow this table with names of its own.
#[derive(Debug, Default)]
pub struct CommandCounters {
    counts: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl CommandCounters {
    pub fn record(&self, device: &str, result: &'static str) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry((device.to_owned(), result)).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<(String, &'static str), u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Counters of things a reload may add or remove (Modbus lines, serial devices), by name.
pub type Named<T> = Arc<Mutex<Vec<(Arc<str>, Arc<T>)>>>;

/// Everything a snapshot is made from; `app.rs` fills it in at start (a reload updates the
/// `Named` lists and the board).
#[derive(Clone)]
pub struct Sources {
    pub health: Health,
    pub outbox: Outbox,
    pub uplink: Option<Arc<UplinkCounters>>,
    pub board: Arc<Board>,
    pub lines: Named<LineCounters>,
    pub serial: Named<SerialCounters>,
    pub broker: Option<Arc<BrokerCounters>>,
    /// Poll durations and failures of each Modbus device.
    pub polls: Named<PollCounters>,
    pub commands: Arc<CommandCounters>,
    pub started: Instant,
}

impl Sources {
    /// The snapshot: counters of the outbox, uplink and lines, device reachability, and the
    /// loops more than `slack` past their promise.
    pub async fn collect(&self, slack: Duration) -> Stats {
        let o = self.outbox.stats();
        // Running-time age (see outbox): a wall-clock jump after NTP sync does not distort it.
        let oldest_age_s = self
            .outbox
            .oldest_age()
            .await
            .ok()
            .flatten()
            .map(|a| a.as_secs());
        let upstream = match &self.uplink {
            Some(u) => UpstreamStats {
                configured: true,
                connected: u.connected.load(Ordering::Relaxed),
                sent: u.sent.load(Ordering::Relaxed),
                acked: u.acked.load(Ordering::Relaxed),
                reconnects: u.reconnects.load(Ordering::Relaxed),
                ack_timeouts: u.ack_timeouts.load(Ordering::Relaxed),
                window: u.window.load(Ordering::Relaxed),
            },
            None => UpstreamStats::default(),
        };
        Stats {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            ts: u64::try_from(now_ms()).unwrap_or(0),
            uptime_s: self.started.elapsed().as_secs(),
            devices: self.board.devices(),
            lines: self
                .lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(name, l)| (name.to_string(), l.report()))
                .collect(),
            serial: self
                .serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(name, s)| (name.to_string(), s.snapshot()))
                .collect(),
            outbox: OutboxStats {
                rows: o.rows.load(Ordering::Relaxed),
                bytes: o.bytes.load(Ordering::Relaxed),
                dropped: o.dropped.load(Ordering::Relaxed),
                commits: o.commits.load(Ordering::Relaxed),
                dead_letters: o.dead_letters.load(Ordering::Relaxed),
                oldest_age_s,
            },
            upstream,
            broker: self.broker.as_ref().map(|b| b.snapshot()),
            stalled: self
                .health
                .stalled(slack)
                .into_iter()
                .map(|s| s.name)
                .collect(),
        }
    }
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

/// How far past its promise a loop must be to show as stalled in the stats (the watchdog uses
/// the systemd watchdog interval; the stats use the same default).
const STALL_SLACK: Duration = Duration::from_secs(30);

/// The state a person reads first in `fieldbridge status`: which devices answer, and whether
/// upstream is connected. A change of it is published at once, not at the next interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    devices: BTreeMap<String, Option<bool>>,
    upstream_connected: bool,
}

impl Sources {
    /// The shown state now (cheap: one lock of the board, one atomic).
    pub fn shown(&self) -> Shown {
        Shown {
            devices: self.board.devices(),
            upstream_connected: self
                .uplink
                .as_ref()
                .is_some_and(|u| u.connected.load(Ordering::Relaxed)),
        }
    }
}

/// How often the reporter looks for a change of the shown state. The state lives in the
/// loops that own it (the board, the uplink's flag); comparing it this often catches every
/// change within a blink, without those loops knowing about the reporter, and it bounds how
/// many snapshots a flapping device can cause.
const CHANGE_CHECK: Duration = Duration::from_millis(250);

/// Logs and publishes the snapshot every `interval`, and at once after a change of the
/// shown state (a device online or offline, upstream connected or not), so `fieldbridge
/// status` is never older than the state it shows.
pub struct Reporter {
    pub interval: Duration,
    pub sources: Sources,
    /// The stats topic (`mqtt::topics::Topics::stats`).
    pub topic: String,
    pub tx: mpsc::Sender<Routed>,
}

impl Reporter {
    pub async fn run(self, stop: CancellationToken) {
        // The first snapshot goes out at once, so `fieldbridge status` works right after start.
        let mut due = Instant::now();
        let mut published: Option<Shown> = None;
        loop {
            let shown = self.sources.shown();
            let changed = published.as_ref().is_some_and(|p| *p != shown);
            if !changed && Instant::now() < due {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(due.min(Instant::now() + CHANGE_CHECK)) => {}
                }
                continue;
            }
            due = Instant::now() + self.interval;
            published = Some(shown);
            if !self.publish(changed).await {
                return;
            }
        }
    }

    /// Logs and sends one snapshot; false once the pipeline is gone.
    async fn publish(&self, on_change: bool) -> bool {
        let s = self.sources.collect(STALL_SLACK).await;
        let (online, total) = self.sources.board.counts();
        tracing::info!(
            event = "stats",
            on_change,
            outbox_rows = s.outbox.rows,
            oldest_age_s = s.outbox.oldest_age_s,
            dropped = s.outbox.dropped,
            sent = s.upstream.sent,
            acked = s.upstream.acked,
            reconnects = s.upstream.reconnects,
            ack_timeouts = s.upstream.ack_timeouts,
            upstream_connected = s.upstream.connected,
            devices_online = online,
            devices_total = total,
            "stats"
        );
        let Ok(payload) = serde_json::to_vec(&s) else {
            return true;
        };
        let m = Message {
            topic: self.topic.clone(),
            payload,
            retain: true,
        };
        self.tx
            .send(Routed {
                message: m,
                route: Route::Everywhere,
            })
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_counts_devices_by_their_last_status() {
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let board = Board::new([&a, &b]);
        assert_eq!(board.counts(), (0, 2));
        let st = |d: &Arc<str>, online| DeviceEvent::Status {
            device: d.clone(),
            online,
            reason: None,
        };
        board.observe(&[st(&a, true), st(&b, true), st(&b, false)]);
        assert_eq!(board.counts(), (1, 2));
        assert_eq!(board.devices().get("b"), Some(&Some(false)));
    }

    #[test]
    fn the_board_keeps_last_readings_only_when_a_status_page_shows_them() {
        let a: Arc<str> = "a".into();
        let reading = |v: i64| Reading {
            device: a.clone(),
            point: "p".into(),
            value: crate::flow::Value::Int(v),
            unit: None,
            ts_ms: v,
            quality: crate::flow::Quality::Good,
            error: None,
        };
        let evs = [
            DeviceEvent::Readings(vec![reading(1)]),
            DeviceEvent::Readings(vec![reading(2)]),
        ];
        for (keep, want) in [(false, vec![]), (true, vec![reading(2)])] {
            let board = Board::new([&a]);
            let board = if keep { board.keeping_values() } else { board };
            board.observe(&evs);
            assert_eq!(board.view()["a"].values, want, "keeping values: {keep}");
        }
    }

    #[test]
    fn a_counter_snapshot_carries_every_live_counter_under_its_own_name() {
        let c = LineCounters::default();
        bump(&c.requests);
        bump(&c.requests);
        bump(&c.link_errors);
        let json = serde_json::to_value(c.snapshot()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"requests": 2, "timeouts": 0, "bad_answers": 0, "bad_crc": 0,
                "wrong_unit": 0, "garbage": 0, "exceptions": 0, "link_errors": 1, "busy_ms": 0,
                "late_polls": 0, "overruns": 0})
        );
    }

    #[test]
    fn a_line_report_keeps_the_counters_at_the_top_and_adds_load_and_units() {
        let c = LineCounters::default();
        c.add_device(3, Arc::from("meter"));
        c.unit(3, |u| bump(&u.bad_crc));
        bump(&c.bad_crc);
        c.set_load(LineLoad {
            busy_pct: 42.04,
            response: BTreeMap::from([(
                3,
                ResponseTimes {
                    mean_ms: 12.5,
                    max_ms: 20.0,
                },
            )]),
        });
        let json = serde_json::to_value(c.report()).unwrap();
        assert_eq!(json["bad_crc"], 1);
        assert_eq!(json["busy_pct"], 42.0);
        assert_eq!(json["units"]["3"]["devices"], serde_json::json!(["meter"]));
        assert_eq!(json["units"]["3"]["bad_crc"], 1);
        assert_eq!(json["units"]["3"]["response"]["mean_ms"], 12.5);
        let back: LineReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, c.report());
        // A snapshot of an older version, without the new counters, still reads.
        let old: LineReport = serde_json::from_value(serde_json::json!({"requests": 5,
            "timeouts": 1, "bad_answers": 0, "exceptions": 0, "link_errors": 0}))
        .unwrap();
        assert_eq!(old.totals.requests, 5);
        assert_eq!(old.totals.bad_crc, 0);
        assert!(old.units.is_empty());
    }

    #[test]
    fn status_line_names_devices_outbox_upstream_and_stalls() {
        let mut s = Stats {
            broker: None,
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
                dead_letters: 0,
            },
            upstream: UpstreamStats {
                configured: true,
                connected: false,
                sent: 0,
                acked: 0,
                reconnects: 0,
                ack_timeouts: 0,
                window: 64,
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
