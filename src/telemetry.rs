//! Logging setup. Today: readable lines on stderr, level from `RUST_LOG` (default `info`), with
//! rumqttd's per-connection noise (it logs every peer-closed socket at error level) turned down.

use tracing_subscriber::EnvFilter;

const DEFAULT_FILTER: &str = "info,rumqttd=warn,rumqttd::server::broker=off,rumqttc=warn";

pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
