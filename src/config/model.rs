//! The validated configuration: what the rest of the gateway reads. Every value here passed
//! validation (`config::validate`), so users never re-check it; paths are absolute once `load`
//! has resolved them against the config file's directory.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::serial;
use crate::config::spec::access::Access;
use crate::config::spec::homeassistant::PointHints;
use crate::config::spec::modbus::{DataType, Table, WordOrder};
use crate::config::spec::report::{PayloadShape, ReportPolicy};
use crate::config::spec::topic::remap;

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
    /// `None` when Home Assistant discovery is off.
    pub homeassistant: Option<HomeAssistant>,
    /// `None` without `[http]`.
    pub http: Option<Http>,
}

/// `[http]`: the listener of `/metrics`, the status page and `/healthz`. Off the loopback
/// interface it asks for the broker's users (HTTP basic authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http {
    pub listen: std::net::SocketAddr,
}

/// Home Assistant MQTT discovery (`[homeassistant]`, issue 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAssistant {
    /// Discovery configs go below it; Home Assistant's birth message is `<prefix>/status`.
    pub discovery_prefix: String,
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
            Some((l, r)) => remap(local_topic, l, r),
            None => local_topic.to_string(),
        }
    }
    pub fn to_local(&self, remote_topic: &str) -> String {
        match &self.remap {
            Some((l, r)) => remap(remote_topic, r, l),
            None => remote_topic.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
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
    /// Keep-alive 0 (MQTT 3.1.1: the client never pings) accepted outside the min..max bounds.
    pub allow_keep_alive_zero: bool,
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

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerTls {
    pub listen: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BrokerWebSocket {
    pub listen: SocketAddr,
    pub handshake_timeout: Duration,
}

#[derive(Clone, PartialEq)]
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
    /// A publish left unacknowledged this long while the broker answers other packets is
    /// given up on (see `mqtt::window`).
    pub ack_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Messages per second for the backlog replay after a reconnect; `None` = unlimited.
    pub replay_rate: Option<f64>,
    /// A command from upstream whose payload `ts` is older than this is refused (it waited in
    /// the broker's session while the gateway was away).
    pub command_max_age: Duration,
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

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq)]
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

#[derive(Debug, Clone, PartialEq)]
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
    /// The profile's `manufacturer` and `model` (Home Assistant's device registry shows them).
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// Shared, not copied: the fleet, each device's driver and its command writer all hold the
    /// device, and a 50-device config carries thousands of points (~256 bytes each).
    pub points: Arc<[Point]>,
    /// One message per point or one per poll.
    pub payload: PayloadShape,
    /// The default of its points (each point's own is in `Point::report`).
    pub report: ReportPolicy,
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

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: Arc<str>,
    pub table: Table,
    pub address: u16,
    pub data_type: DataType,
    pub unit: Option<Arc<str>>,
    pub scale: f64,
    pub offset: f64,
    /// At most this many decimal places in the published value (after scale and offset).
    pub decimals: Option<u8>,
    pub word_order: WordOrder,
    /// A bool taken from one bit (0 = least significant) of a register.
    pub bit: Option<u8>,
    /// Registers a `string` point spans (other types: their natural width).
    pub length: u16,
    /// `Some` when upstream may write the point.
    pub write: Option<WriteLimits>,
    /// Which readings are published.
    pub report: ReportPolicy,
    /// How Home Assistant discovery presents it.
    pub homeassistant: PointHints,
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
