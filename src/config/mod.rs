//! Configuration: one TOML file → `Config`, or every problem of the file at once.
//!
//! Two stages: `raw` (serde, `deny_unknown_fields`) then `validate` (pure: no files, no network),
//! which collects every issue with its key path. `load` adds the file name and line to each issue
//! and reads the files the config points at (password file, CA file). Nothing else in the crate
//! sees raw config.

pub mod locate;
pub mod profile;
pub mod raw;
pub mod serial;
pub mod spec;
mod validate;

use crate::config::spec::access::Access;
use crate::config::spec::modbus::{DataType, Table, WordOrder};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use locate::{line_of_offset, line_of_path, path_at_offset, KeyPath};

pub use validate::validate;

#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: Gateway,
    /// `None` when the embedded broker is disabled.
    pub broker: Option<Broker>,
    pub upstream: Option<Upstream>,
    pub outbox: OutboxSettings,
    /// Modbus RTU lines (`[[buses]]`), each owned by one task.
    pub buses: Vec<Bus>,
    /// Modbus devices (TCP and RTU), in file order.
    pub devices: Vec<Device>,
    /// `kind = "serial_line"` devices (issue 4), in file order.
    pub serial_devices: Vec<serial::SerialDevice>,
    /// Local topics forwarded upstream through the outbox.
    pub forward: Vec<BridgeRule>,
    /// Upstream topics delivered into the local broker.
    pub subscribe: Vec<BridgeRule>,
}

/// A topic filter with an optional prefix remap between the local and the upstream side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRule {
    /// Matched on the side the message comes from.
    pub filter: String,
    /// (local prefix, remote prefix)
    pub remap: Option<(String, String)>,
}

impl BridgeRule {
    pub fn to_remote(&self, local_topic: &str) -> String {
        match &self.remap {
            Some((l, r)) => crate::config::spec::topic::remap(local_topic, l, r),
            None => local_topic.to_string(),
        }
    }
    pub fn to_local(&self, remote_topic: &str) -> String {
        match &self.remap {
            Some((l, r)) => crate::config::spec::topic::remap(remote_topic, r, l),
            None => remote_topic.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Gateway {
    pub id: String,
    pub data_dir: PathBuf,
    pub topic_prefix: String,
    pub shutdown_timeout: Duration,
    pub stats_interval: Duration,
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub log_level: String,
}

/// The embedded broker and its public listeners (issue 7). Every listener is owned by
/// fieldbridge (`guard`); rumqttd itself listens on loopback only, behind it.
#[derive(Debug, Clone)]
pub struct Broker {
    /// Plain MQTT over TCP.
    pub listen: SocketAddr,
    pub tls: Option<BrokerTls>,
    pub websocket: Option<BrokerWebSocket>,
    /// Over all listeners together.
    pub max_connections: usize,
    /// Per client IP address, over all listeners; `None`: only `max_connections`.
    pub max_connections_per_address: Option<usize>,
    pub max_payload_bytes: usize,
    pub keep_alive_min: Duration,
    pub keep_alive_max: Duration,
    /// From TCP accept to a complete CONNECT (after the TLS/WebSocket handshake).
    pub connect_timeout: Duration,
    /// `None`: anonymous clients only on loopback listeners.
    pub allow_anonymous: Option<bool>,
    pub anonymous: Access,
    /// After `load`, every user has a hash (from the config or the password file).
    pub users: Vec<BrokerUser>,
    pub password_file: Option<PathBuf>,
}

impl Broker {
    /// Whether a client without credentials may connect on a listener bound to `addr`.
    pub fn anonymous_allowed_on(&self, addr: &SocketAddr) -> bool {
        match self.allow_anonymous {
            Some(allowed) => allowed,
            None => addr.ip().is_loopback(),
        }
    }
    /// Every listener address, with its name for messages.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut v = vec![("plain", self.listen)];
        if let Some(t) = &self.tls {
            v.push(("tls", t.listen));
        }
        if let Some(w) = &self.websocket {
            v.push(("websocket", w.listen));
        }
        v
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUser {
    pub name: String,
    pub password_hash: Option<String>,
    pub access: Access,
}

impl fmt::Debug for BrokerUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerUser")
            .field("name", &self.name)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct BrokerTls {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct BrokerWebSocket {
    pub listen: SocketAddr,
    pub handshake_timeout: Duration,
}

#[derive(Clone)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub inflight: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Messages per second for the backlog replay after a reconnect; `None` = unlimited.
    pub replay_rate: Option<f64>,
    pub tls: Option<Tls>,
}

// Hand-written so a password never reaches a log line through `{:?}`.
impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("keep_alive", &self.keep_alive)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct OutboxSettings {
    pub max_rows: u64,
    pub max_bytes: u64,
    pub commit_interval: Duration,
    /// Rows older than this (in gateway running time, see outbox) are dropped.
    pub max_age: Option<Duration>,
    pub overflow: Overflow,
}

/// What a full outbox gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    DropOldest,
    DropNewest,
}

impl std::str::FromStr for Overflow {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "drop_oldest" => Ok(Overflow::DropOldest),
            "drop_newest" => Ok(Overflow::DropNewest),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Device {
    pub name: Arc<str>,
    pub transport: Transport,
    pub unit_id: u8,
    pub interval: Duration,
    pub timeout: Duration,
    pub backoff_max: Duration,
    /// Extra attempts of a failed request while the device is online (never while offline, so a
    /// dead unit costs its bus one timeout per attempt).
    pub retries: u8,
    pub limits: PlanLimits,
    /// Write single values with FC 15/16 instead of FC 05/06 (devices that only implement the
    /// "multiple" functions).
    pub force_multiple_write: bool,
    /// The profile the points came from, for `explain` and logs.
    pub profile: Option<String>,
    pub points: Vec<Point>,
}

/// How the planner may group a device's points into requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Registers (or bits) read and thrown away to merge two nearby blocks.
    pub max_gap: u16,
    /// At most 125 (the protocol limit); lower for devices with smaller buffers.
    pub max_registers: u16,
    /// At most 2000.
    pub max_bits: u16,
    /// One request per point, for devices that refuse reads spanning several values.
    pub one_request_per_point: bool,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_gap: 0,
            max_registers: 125,
            max_bits: 2000,
            one_request_per_point: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        host: String,
        port: u16,
    },
    /// A `[[buses]]` entry, by name.
    Bus(Arc<str>),
}

/// A Modbus RTU line: exactly one task owns it and serializes every request on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bus {
    pub name: Arc<str>,
    pub link: BusLink,
    /// Silence kept on the wire between the end of one exchange and the next request.
    pub request_gap: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BusLink {
    Serial {
        port: crate::config::spec::serial::PortSettings,
        /// Ask the driver for RS-485 mode (TIOCSRS485); "not supported" is logged, not fatal.
        rs485: bool,
    },
    /// A serial device server passing RTU frames through a TCP socket.
    RtuOverTcp { host: String, port: u16 },
}

impl BusLink {
    pub fn describe(&self) -> String {
        match self {
            BusLink::Serial { port, .. } => port.path.clone(),
            BusLink::RtuOverTcp { host, port } => format!("rtu-over-tcp://{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Point {
    pub name: Arc<str>,
    pub table: Table,
    pub address: u16,
    pub data_type: DataType,
    pub unit: Option<Arc<str>>,
    pub scale: f64,
    pub offset: f64,
    pub word_order: WordOrder,
    /// A bool taken from one bit (0 = least significant) of a register.
    pub bit: Option<u8>,
    /// Registers a `string` point spans (other types: their natural width).
    pub length: u16,
    /// `Some` when upstream may write the point.
    pub write: Option<WriteLimits>,
}

impl Point {
    /// Registers (or bits) the point occupies.
    pub fn width(&self) -> u16 {
        if self.data_type == DataType::String {
            self.length
        } else {
            self.data_type.width()
        }
    }
}

/// The accepted range of a written value, in engineering units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteLimits {
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// One problem found in a config, before it is located in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub path: KeyPath,
    pub message: String,
}

/// A problem with its place in the file.
#[derive(Debug, Clone)]
pub struct Located {
    /// Set when the problem is in another file than the config (a device profile).
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(file, issues))]
    Invalid { file: PathBuf, issues: Vec<Located> },
}

fn render(file: &Path, issues: &[Located]) -> String {
    let mut out = format!(
        "{}: {} problem{} in the configuration:",
        file.display(),
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for i in issues {
        out.push_str("\n  ");
        let f = i.file.as_deref().unwrap_or(file);
        match i.line {
            Some(l) => out.push_str(&format!("{}:{l}: ", f.display())),
            None => out.push_str(&format!("{}: ", f.display())),
        }
        if !i.key.is_empty() {
            out.push_str(&format!("key '{}': ", i.key));
        }
        out.push_str(&i.message);
    }
    out
}

/// Reads, parses, validates a config file, and loads the files it names.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    // Relative paths inside the config are relative to the config file, not to the cwd of
    // whoever started the daemon.
    let base = file.parent().unwrap_or(Path::new("."));
    let mut cfg = parse_in(&src, Some(base)).map_err(|issues| ConfigError::Invalid {
        file: file.to_path_buf(),
        issues,
    })?;
    let mut issues = Vec::new();
    if let Some(up) = cfg.upstream.as_mut() {
        if let Some(pf) = up.password_file.clone() {
            let pf = base.join(pf);
            match std::fs::read_to_string(&pf) {
                Ok(s) => up.password = Some(s.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) => issues.push(Issue {
                    path: KeyPath::root().key("upstream").key("password_file"),
                    message: format!("cannot read {}: {e}", pf.display()),
                }),
            }
        }
        if let Some(tls) = up.tls.as_mut() {
            tls.ca_file = base.join(&tls.ca_file);
            if let Some((cert, key)) = tls.client.as_mut() {
                *cert = base.join(&*cert);
                *key = base.join(&*key);
            }
            let mut files = vec![("ca_file", tls.ca_file.clone())];
            if let Some((cert, key)) = &tls.client {
                files.push(("cert_file", cert.clone()));
                files.push(("key_file", key.clone()));
            }
            for (key, file) in files {
                if let Err(e) = std::fs::File::open(&file) {
                    issues.push(Issue {
                        path: KeyPath::root().key("upstream").key("tls").key(key),
                        message: format!("cannot read {}: {e}", file.display()),
                    });
                }
            }
        }
    }
    if let Some(b) = cfg.broker.as_mut() {
        load_broker_files(base, b, &mut issues);
    }
    cfg.gateway.data_dir = base.join(&cfg.gateway.data_dir);
    if issues.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid {
            file: file.to_path_buf(),
            issues: locate_all(&src, issues),
        })
    }
}

/// Reads the broker's password file into its users and checks the TLS files are readable.
fn load_broker_files(base: &Path, b: &mut Broker, issues: &mut Vec<Issue>) {
    let bp = KeyPath::root().key("broker");
    if let Some(tls) = b.tls.as_mut() {
        tls.cert_file = base.join(&tls.cert_file);
        tls.key_file = base.join(&tls.key_file);
        for (key, file) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
            if let Err(e) = std::fs::File::open(file) {
                issues.push(Issue {
                    path: bp.key("tls").key(key),
                    message: format!("cannot read {}: {e}", file.display()),
                });
            }
        }
    }
    let Some(pf) = b.password_file.as_mut() else {
        return;
    };
    *pf = base.join(&*pf);
    let key = bp.key("password_file");
    let text = match std::fs::read_to_string(&*pf) {
        Ok(t) => t,
        Err(e) => {
            issues.push(Issue {
                path: key,
                message: format!("cannot read {}: {e}", pf.display()),
            });
            return;
        }
    };
    let entries =
        match crate::config::spec::access::parse_password_file(&pf.display().to_string(), &text) {
            Ok(entries) => entries,
            Err(errors) => {
                for e in errors {
                    issues.push(Issue {
                        path: key.clone(),
                        message: e.to_string(),
                    });
                }
                return;
            }
        };
    for (name, hash) in entries {
        match b.users.iter_mut().find(|u| u.name == name) {
            Some(u) if u.password_hash.is_some() => issues.push(Issue {
                path: key.clone(),
                message: format!(
                    "user {name:?} has a password_hash in the config and a line in {}; keep one",
                    pf.display()
                ),
            }),
            Some(u) => u.password_hash = Some(hash),
            None => b.users.push(BrokerUser {
                name,
                password_hash: Some(hash),
                access: Access::everything(),
            }),
        }
    }
    for (i, u) in b.users.iter().enumerate() {
        if u.password_hash.is_none() {
            issues.push(Issue {
                path: bp.key("users").index(i).key("name"),
                message: format!(
                    "user {:?} has no password: set password_hash, or add a line to {} with `fieldbridge passwd --file {} {}`",
                    u.name,
                    pf.display(),
                    pf.display(),
                    u.name
                ),
            });
        }
    }
}

/// Parses and validates config text; every problem comes back located by line and key.
/// Profiles resolve against the built-in ones only (see `parse_in`).
pub fn parse_str(src: &str) -> Result<Config, Vec<Located>> {
    parse_in(src, None)
}

/// Like `parse_str`, with `base` as the directory of the config file: relative profile paths
/// and `<base>/profiles/` are looked up there.
pub fn parse_in(src: &str, base: Option<&Path>) -> Result<Config, Vec<Located>> {
    let raw: raw::RawConfig = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => return Err(vec![locate_serde(src, &e)]),
    };
    let (profiles, problems) = profile::load_all(&raw, base);
    match validate(&raw, &profiles) {
        Ok(cfg) if problems.is_empty() => Ok(cfg),
        Ok(_) => Err(problems),
        Err(issues) => {
            let mut all = locate_all(src, issues);
            all.extend(problems);
            Err(all)
        }
    }
}

fn locate_all(src: &str, issues: Vec<Issue>) -> Vec<Located> {
    issues
        .into_iter()
        .map(|i| Located {
            file: None,
            line: line_of_path(src, &i.path),
            key: i.path.to_string(),
            message: i.message,
        })
        .collect()
}

fn locate_serde(src: &str, e: &toml::de::Error) -> Located {
    let message = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let mut key = path_at_offset(src, span.start).to_string();
            // "missing field `x`": the span covers the table that lacks it; name the full key.
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next())
            {
                key = if key.is_empty() {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
            }
            Located {
                file: None,
                line: Some(line_of_offset(src, span.start)),
                key,
                message,
            }
        }
        None => Located {
            file: None,
            line: None,
            key: String::new(),
            message,
        },
    }
}
