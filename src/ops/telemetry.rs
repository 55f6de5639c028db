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

use std::fmt::Write as _;
use std::sync::OnceLock;

use systemd_journal_logger::JournalLog;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::Registry;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer};

/// Dependencies' levels, appended to whatever base level is chosen.
const NOISE: &str = "rumqttd=warn,rumqttd::server::broker=off,rumqttc=warn";

type FilterHandle = reload::Handle<EnvFilter, Registry>;

static FILTER: OnceLock<FilterHandle> = OnceLock::new();

fn filter_for(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(format!("{level},{NOISE}")).map_err(|e| e.to_string())
}

/// Installs the global subscriber (once; later calls do nothing).
pub fn init() {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => {
            EnvFilter::try_new(&s).unwrap_or_else(|_| EnvFilter::new(format!("info,{NOISE}")))
        }
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
            .with(JournalLayer { journal })
            .try_init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
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
