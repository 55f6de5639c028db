//! Logging setup: structured entries in the systemd journal when stderr is connected to it
//! (`JOURNAL_STREAM`, set by systemd), readable lines on stderr otherwise.
//!
//! In the journal every tracing field of an event becomes a journal field of its own, upper-cased
//! (`device = %name` → `DEVICE=plc`, `event = "device_offline"` → `EVENT=device_offline`,
//! `error`, `point`, `unit_id` …), so `journalctl -u fieldbridge EVENT=device_offline` works.
//! tracing's own `log` bridge would fold the fields into the message text; `JournalLayer` instead
//! hands each event to systemd-journal-logger as a `log::Record` whose key-values are the fields.
//!
//! The level comes from `RUST_LOG` when set, else from the config (`set_default_level`), else
//! `info`. rumqttd's per-connection noise (it logs every peer-closed socket at error level) is
//! turned down in every case unless `RUST_LOG` names rumqttd itself.
//!
//! What rumqttd still reports at warn or error level is mostly about one client (an unsolicited
//! ack, a duplicate client id): a client could write ERROR lines at will. Such events never reach
//! the journal as they are: `BrokerNoise` passes each kind on as one WARN line
//! (`event=broker_internal`) at most every 10 s, with how many were held back, so no client can
//! flood the log or raise an alarm keyed on ERROR. `RUST_LOG` naming rumqttd shows them raw.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::ops::stats::BrokerCounters;
use systemd_journal_logger::JournalLog;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::Registry;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer};

/// Dependencies' levels, appended to whatever base level is chosen. tokio-modbus logs every
/// byte its RTU decoder skips (several lines per bad reply, without the device): the bus names
/// those faults itself (`device::modbus::fault`, `EVENT=modbus_bad_crc` …), once per unit and
/// kind per period, so tokio-modbus's own lines are off.
const NOISE: &str = "rumqttd=warn,rumqttd::server::broker=off,rumqttc=warn,tokio_modbus=off";

type FilterHandle = reload::Handle<EnvFilter, Registry>;

static FILTER: OnceLock<FilterHandle> = OnceLock::new();

fn filter_for(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(format!("{level},{NOISE}")).map_err(|e| e.to_string())
}

/// Decides when a log line about something repeated may be written: the first at once, then
/// at most one line per `every`, saying how many were held back. Pure (time is passed in), so it is tested without waiting.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log now, `n` earlier rejects were not logged individually.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Whether it let a line through within `every` before `now`.
    fn recent(&self, now: Instant, every: Duration) -> bool {
        self.last
            .is_some_and(|t| now.saturating_duration_since(t) < every)
    }
}

/// One `LogLimiter` per key (a client address, a call site), for at most `cap` keys: past that,
/// keys not seen for `every` are forgotten, and if all are recent the rest share one limiter,
/// so a flood from many addresses costs bounded memory and still bounded log lines.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    every: Duration,
    cap: usize,
    keys: HashMap<K, LogLimiter>,
    overflow: LogLimiter,
}

impl<K: std::hash::Hash + Eq> KeyedLimiter<K> {
    pub fn new(every: Duration, cap: usize) -> Self {
        KeyedLimiter {
            every,
            cap,
            keys: HashMap::new(),
            overflow: LogLimiter::new(every),
        }
    }

    /// `Some(n)`: log now for `key`, `n` earlier ones were held back.
    pub fn allow(&mut self, key: K, now: Instant) -> Option<u64> {
        if !self.keys.contains_key(&key) && self.keys.len() >= self.cap {
            let every = self.every;
            self.keys.retain(|_, l| l.recent(now, every));
            if self.keys.len() >= self.cap {
                return self.overflow.allow(now);
            }
        }
        self.keys
            .entry(key)
            .or_insert_with(|| LogLimiter::new(self.every))
            .allow(now)
    }
}

/// How often one kind of rumqttd message may be passed on.
const BROKER_NOISE_EVERY: Duration = Duration::from_secs(10);

fn is_rumqttd(meta: &tracing::Metadata<'_>) -> bool {
    meta.target().starts_with("rumqttd")
}

/// rumqttd errors that describe normal operation: a client that sends DISCONNECT and then closes
/// its socket is disconnected twice in rumqttd's router, and the second time is logged at error
/// level ("no-connection id 1 is already gone"), at every shutdown with a local client.
fn is_benign(message: &str) -> bool {
    message.starts_with("no-connection id ") && message.ends_with(" is already gone")
}

/// Passes rumqttd's own warn/error events on as rate-limited WARN lines of ours (see above),
/// and counts what rumqttd skipped for lagging subscribers.
struct BrokerNoise {
    /// One limiter per call site (rumqttd has a few dozen).
    seen: Mutex<KeyedLimiter<tracing::callsite::Identifier>>,
    counters: Arc<BrokerCounters>,
    /// `RUST_LOG` asked for rumqttd's events as they are: count, but write nothing of ours.
    raw: bool,
}

impl BrokerNoise {
    fn new(counters: Arc<BrokerCounters>, raw: bool) -> Self {
        BrokerNoise {
            seen: Mutex::new(KeyedLimiter::new(BROKER_NOISE_EVERY, 256)),
            counters,
            raw,
        }
    }
}

impl BrokerNoise {
    /// Whether a line of ours may be written for this rumqttd call site now (with how many
    /// were held back), or `None`: raw mode, or rate-limited.
    fn may_write(&self, meta: &tracing::Metadata<'_>) -> Option<u64> {
        if self.raw {
            return None;
        }
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(meta.callsite(), Instant::now())
    }
}

/// The second number of a rumqttd cursor, `(segment, offset)` in its Debug form: offsets are
/// absolute, so the distance between two cursors is the number of messages between them.
fn cursor_offset(debug: &str) -> Option<u64> {
    let inner = debug.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner.split(',').nth(1)?.trim().parse().ok()
}

/// Messages a cursor jump skipped, from the fields of rumqttd's "Read cursor start jumped"
/// warning (`request_cursor` → `start_cursor`).
fn skipped_by_jump(pairs: &[(String, String)]) -> Option<u64> {
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let from = cursor_offset(get("request_cursor")?)?;
    let to = cursor_offset(get("start_cursor")?)?;
    Some(to.saturating_sub(from))
}

impl<S: Subscriber> Layer<S> for BrokerNoise {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !is_rumqttd(meta) || *meta.level() > Level::WARN {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(skipped) = skipped_by_jump(&fields.pairs) {
            // rumqttd's own alert for this always says "lost: 0": count it ourselves.
            let jumps = self.counters.cursor_jumps.fetch_add(1, Ordering::Relaxed) + 1;
            let total = self
                .counters
                .subscriber_skipped
                .fetch_add(skipped, Ordering::Relaxed)
                + skipped;
            if let Some(suppressed) = self.may_write(meta) {
                let detail = fields
                    .pairs
                    .iter()
                    .find(|(k, _)| k == "error")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("");
                tracing::error!(
                    event = "broker_subscriber_skipped",
                    skipped,
                    skipped_total = total,
                    jumps_total = jumps,
                    detail = %detail,
                    suppressed,
                    "embedded broker: a local subscriber fell too far behind; {skipped} messages it had not read were dropped for it (it reads more slowly than the others publish)"
                );
            }
            return;
        }
        if is_benign(&fields.message) {
            return;
        }
        let Some(suppressed) = self.may_write(meta) else {
            return;
        };
        let detail = fields
            .pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::warn!(
            event = "broker_internal",
            rumqttd_level = %meta.level(),
            rumqttd_target = meta.target(),
            message_text = %fields.message,
            detail = %detail,
            suppressed,
            "embedded broker: {} (like messages held back for {} s)",
            fields.message,
            BROKER_NOISE_EVERY.as_secs()
        );
    }
}

/// An output layer that does not see rumqttd's events (`BrokerNoise` passes them on), unless
/// `RUST_LOG` asked for them raw. Span callbacks are forwarded so the inner layer keeps its
/// span state.
struct Skip<L> {
    inner: L,
    raw_rumqttd: bool,
}

impl<S, L> Layer<S> for Skip<L>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber)
    }
    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber)
    }
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        self.inner.on_new_span(attrs, id, ctx)
    }
    fn on_record(
        &self,
        span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        self.inner.on_record(span, values, ctx)
    }
    fn on_enter(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx)
    }
    fn on_exit(&self, id: &tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx)
    }
    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx)
    }
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if self.raw_rumqttd || !is_rumqttd(event.metadata()) {
            self.inner.on_event(event, ctx)
        }
    }
}

/// Installs the global subscriber (once; later calls do nothing). rumqttd reports what it
/// skipped for lagging subscribers only in its log, so that count goes to `broker`.
pub fn init(broker: Arc<BrokerCounters>) {
    let raw_rumqttd = std::env::var("RUST_LOG").is_ok_and(|s| s.contains("rumqttd"));
    let filter = match std::env::var("RUST_LOG") {
        // A RUST_LOG that names rumqttd is taken as it is; any other still gets the noise
        // directives, or a `RUST_LOG=debug` would bring every peer-closed socket back.
        Ok(s) if raw_rumqttd => {
            EnvFilter::try_new(&s).unwrap_or_else(|_| EnvFilter::new(format!("info,{NOISE}")))
        }
        Ok(s) if !s.trim().is_empty() => EnvFilter::try_new(format!("{s},{NOISE}"))
            .unwrap_or_else(|_| EnvFilter::new(format!("info,{NOISE}"))),
        _ => EnvFilter::new(format!("info,{NOISE}")),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let journal = if systemd_journal_logger::connected_to_journal() {
        JournalLog::new()
            .ok()
            .map(|j| j.with_syslog_identifier("fieldbridge".into()))
    } else {
        None
    };
    let installed = match journal {
        Some(journal) => tracing_subscriber::registry()
            .with(filter)
            .with(BrokerNoise::new(broker.clone(), raw_rumqttd))
            .with(Skip {
                inner: JournalLayer { journal },
                raw_rumqttd,
            })
            .try_init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(BrokerNoise::new(broker, raw_rumqttd))
            .with(Skip {
                inner: fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    // Colour codes are for a person at a terminal, not for a redirected file.
                    .with_ansi(
                        std::io::IsTerminal::is_terminal(&std::io::stderr())
                            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                    ),
                raw_rumqttd,
            })
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Sets the base level from the config (`error` … `trace`, or a full filter directive), unless
/// `RUST_LOG` is set, which always wins.
pub fn set_default_level(level: &str) -> Result<(), String> {
    if std::env::var("RUST_LOG").is_ok_and(|s| !s.trim().is_empty()) {
        return Ok(());
    }
    let f = filter_for(level)?;
    match FILTER.get() {
        Some(h) => h.reload(f).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Sends each event to the journal with its fields as journal fields.
pub struct JournalLayer {
    journal: JournalLog,
}

#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.pairs
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.pairs
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

struct Pairs<'a>(&'a [(String, String)]);

impl log::kv::Source for Pairs<'_> {
    fn visit<'kvs>(
        &'kvs self,
        visitor: &mut dyn log::kv::VisitSource<'kvs>,
    ) -> Result<(), log::kv::Error> {
        for (k, v) in self.0 {
            visitor.visit_pair(log::kv::Key::from_str(k), log::kv::Value::from(v.as_str()))?;
        }
        Ok(())
    }
}

/// systemd-journal-logger maps `log` levels one syslog priority down (Info → notice, Debug →
/// info, Trace → debug). Shifting here gives the usual priorities: error 3, warning 4, info 6,
/// debug and trace 7, so `journalctl -p info` shows what a terminal shows at `info`.
fn log_level(l: &Level) -> log::Level {
    match *l {
        Level::ERROR => log::Level::Error,
        Level::WARN => log::Level::Warn,
        Level::INFO => log::Level::Debug,
        Level::DEBUG | Level::TRACE => log::Level::Trace,
    }
}

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let pairs = Pairs(&fields.pairs);
        // A failed journal write cannot be reported anywhere better than the journal itself.
        let _ = self.journal.journal_send(
            &log::Record::builder()
                .args(format_args!("{}", fields.message))
                .level(log_level(meta.level()))
                .target(meta.target())
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .key_values(&pairs)
                .build(),
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cursor_jump_counts_the_messages_between_the_two_cursors() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        type Case<'a> = (&'a [(String, String)], Option<u64>);
        let cases: &[Case] = &[
            (
                &[
                    pair("request_cursor", "(0, 1871)"),
                    pair("start_cursor", "(1, 1957)"),
                ],
                Some(86),
            ),
            (
                &[
                    pair("request_cursor", "(3, 100)"),
                    pair("start_cursor", "(7, 9000)"),
                ],
                Some(8900),
            ),
            // A cursor that did not move back counts nothing.
            (
                &[
                    pair("request_cursor", "(1, 10)"),
                    pair("start_cursor", "(1, 10)"),
                ],
                Some(0),
            ),
            (&[pair("request_cursor", "(1, 10)")], None),
            (
                &[
                    pair("request_cursor", "garbage"),
                    pair("start_cursor", "(1, 2)"),
                ],
                None,
            ),
            (&[pair("error", "other warning")], None),
        ];
        for (pairs, want) in cases {
            assert_eq!(super::skipped_by_jump(pairs), *want, "{pairs:?}");
        }
    }

    use super::*;

    #[test]
    fn each_key_gets_one_line_per_period_and_a_crowd_of_keys_shares_one() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = KeyedLimiter::new(Duration::from_secs(10), 2);
        // (key, time, what the limiter says)
        let cases: &[(&str, u64, Option<u64>)] = &[
            ("a", 0, Some(0)),
            ("a", 1, None),
            ("a", 2, None),
            ("b", 3, Some(0)),
            ("a", 10_000, Some(2)),
            // A third key while both are recent: it shares the overflow limiter.
            ("c", 10_001, Some(0)),
            ("d", 10_002, None),
            // Once "b" is quiet for a period, its place is freed.
            ("e", 20_001, Some(0)),
        ];
        for (key, ms, want) in cases {
            assert_eq!(l.allow(*key, at(*ms)), *want, "{key} at {ms} ms");
        }
    }
}
