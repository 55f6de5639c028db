//! The configuration file as serde sees it: plain data, every table `deny_unknown_fields`.
//!
//! Enumerations (device kind, register table, data type, word order) and durations stay strings
//! here on purpose: serde stops at the first error, while `validate` checks them all and reports
//! every mistake of a file in one run.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub gateway: RawGateway,
    #[serde(default)]
    pub broker: RawBroker,
    pub upstream: Option<RawUpstream>,
    #[serde(default)]
    pub outbox: RawOutbox,
    #[serde(default)]
    pub buses: Vec<RawBus>,
    #[serde(default)]
    pub devices: Vec<RawDevice>,
    #[serde(default)]
    pub forward: Vec<RawBridgeRule>,
    #[serde(default)]
    pub subscribe: Vec<RawBridgeRule>,
    /// Home Assistant MQTT discovery (issue 16); validated in validate/homeassistant.rs.
    pub homeassistant: Option<RawHomeAssistant>,
    /// The HTTP listener (`/metrics`, `/`, `/healthz`); absent: none.
    pub http: Option<RawHttp>,
}

/// `[http]`: checked in validate/http.rs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    #[serde(default = "default_http_listen")]
    pub listen: String,
}

fn default_http_listen() -> String {
    "127.0.0.1:8080".into()
}

/// `[homeassistant]`: MQTT discovery of every device and point.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHomeAssistant {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
}

fn default_discovery_prefix() -> String {
    "homeassistant".into()
}

/// `homeassistant = { … }` on a point: overrides of what its type and unit imply.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPointHints {
    pub discover: Option<bool>,
    pub component: Option<String>,
    pub device_class: Option<String>,
    pub state_class: Option<String>,
    pub unit_of_measurement: Option<String>,
    pub name: Option<String>,
}

/// `[[forward]]` (local → upstream) and `[[subscribe]]` (upstream → local).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBridgeRule {
    pub filter: String,
    pub local_prefix: Option<String>,
    pub remote_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub id: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: String,
    #[serde(default = "default_stats_interval")]
    pub stats_interval: String,
    #[serde(default = "default_log_level")]
    pub log_level: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: i64,
    /// Unset: only `max_connections` bounds one address.
    pub max_connections_per_address: Option<i64>,
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: i64,
    // Issue 7: authentication, ACLs, TLS and WebSocket listeners; checked in
    // validate/broker.rs.
    #[serde(default = "default_broker_keep_alive_min")]
    pub keep_alive_min: String,
    #[serde(default = "default_broker_keep_alive_max")]
    pub keep_alive_max: String,
    #[serde(default = "yes")]
    pub allow_keep_alive_zero: bool,
    #[serde(default = "default_broker_connect_timeout")]
    pub connect_timeout: String,
    pub allow_anonymous: Option<bool>,
    #[serde(default = "everything")]
    pub anonymous_publish: Vec<String>,
    #[serde(default = "everything")]
    pub anonymous_subscribe: Vec<String>,
    pub password_file: Option<String>,
    #[serde(default)]
    pub users: Vec<RawBrokerUser>,
    pub tls: Option<RawBrokerTls>,
    pub websocket: Option<RawBrokerWebSocket>,
}

impl Default for RawBroker {
    fn default() -> Self {
        RawBroker {
            enabled: true,
            listen: default_listen(),
            max_connections: default_max_connections(),
            max_connections_per_address: None,
            max_payload_bytes: default_max_payload(),
            keep_alive_min: default_broker_keep_alive_min(),
            keep_alive_max: default_broker_keep_alive_max(),
            allow_keep_alive_zero: true,
            connect_timeout: default_broker_connect_timeout(),
            allow_anonymous: None,
            anonymous_publish: everything(),
            anonymous_subscribe: everything(),
            password_file: None,
            users: Vec::new(),
            tls: None,
            websocket: None,
        }
    }
}

/// `[[broker.users]]`: credentials (or only the ACL of a password-file user) and topic ACLs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBrokerUser {
    pub name: String,
    pub password_hash: Option<String>,
    /// Accepted by serde only to be refused with a hint (validate/broker.rs).
    pub password: Option<String>,
    pub publish: Option<Vec<String>>,
    pub subscribe: Option<Vec<String>>,
    #[serde(default)]
    pub commands: bool,
}

/// `[broker.tls]`: a TLS listener terminated by fieldbridge.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBrokerTls {
    #[serde(default = "default_tls_listen")]
    pub listen: String,
    pub cert_file: String,
    pub key_file: String,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: String,
}

/// `[broker.websocket]`: MQTT over WebSocket (subprotocol `mqtt`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBrokerWebSocket {
    #[serde(default = "default_ws_listen")]
    pub listen: String,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: String,
}

fn everything() -> Vec<String> {
    vec!["#".into()]
}
fn default_broker_keep_alive_min() -> String {
    "5s".into()
}
fn default_broker_keep_alive_max() -> String {
    "1h".into()
}
fn default_broker_connect_timeout() -> String {
    "10s".into()
}
fn default_tls_listen() -> String {
    "0.0.0.0:8883".into()
}
fn default_ws_listen() -> String {
    "0.0.0.0:8083".into()
}
fn default_handshake_timeout() -> String {
    "5s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub host: String,
    pub port: Option<i64>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: String,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    #[serde(default = "default_inflight")]
    pub inflight: i64,
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: String,
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min: String,
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max: String,
    pub replay_rate: Option<f64>,
    #[serde(default = "default_command_max_age")]
    pub command_max_age: String,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_file: String,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    #[serde(default = "default_max_rows")]
    pub max_rows: i64,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: i64,
    #[serde(default = "default_commit_interval")]
    pub commit_interval: String,
    pub max_age: Option<String>,
    #[serde(default = "default_overflow")]
    pub overflow: String,
}

impl Default for RawOutbox {
    fn default() -> Self {
        RawOutbox {
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            commit_interval: default_commit_interval(),
            max_age: None,
            overflow: default_overflow(),
        }
    }
}

/// `[[buses]]`: one Modbus RTU line (a serial port, or a serial device server speaking RTU over
/// TCP) shared by the `modbus_rtu` devices that name it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    pub name: String,
    pub kind: String,
    pub path: Option<String>,
    pub baud: Option<i64>,
    pub data_bits: Option<i64>,
    pub parity: Option<String>,
    pub stop_bits: Option<i64>,
    #[serde(default)]
    pub rs485: bool,
    pub host: Option<String>,
    pub port: Option<i64>,
    #[serde(default = "default_request_gap")]
    pub request_gap: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub name: String,
    pub kind: String,
    pub host: Option<String>,
    #[serde(default = "default_modbus_port")]
    pub port: i64,
    /// Default 1, or the profile's.
    pub unit_id: Option<i64>,
    #[serde(default = "default_interval")]
    pub interval: String,
    /// Default 1s for Modbus (or the profile's); the serial kind has its own defaults
    /// (validate/serial.rs).
    pub timeout: Option<String>,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: String,
    /// The keys below default to the profile's `[defaults]`, then to the built-in default.
    pub word_order: Option<String>,
    pub max_gap: Option<i64>,
    pub max_registers: Option<i64>,
    pub max_bits: Option<i64>,
    pub one_request_per_point: Option<bool>,
    pub force_multiple_write: Option<bool>,
    pub retries: Option<i64>,
    /// `modbus_rtu`: the `[[buses]]` entry the device is wired to.
    pub bus: Option<String>,
    /// A device profile (`hardware/profiles/<name>.toml`) supplying points and defaults.
    pub profile: Option<String>,
    /// Profile points this device does not want.
    #[serde(default)]
    pub skip_points: Vec<String>,
    #[serde(default)]
    pub points: Vec<RawPoint>,
    // kind = "serial_line" (issue 4); validated in validate/serial.rs.
    pub path: Option<String>,
    pub baud: Option<i64>,
    pub data_bits: Option<i64>,
    pub parity: Option<String>,
    pub stop_bits: Option<i64>,
    pub driver: Option<String>,
    pub mode: Option<String>,
    pub request: Option<String>,
    pub request_hex: Option<String>,
    pub framing: Option<RawFraming>,
    pub parse: Option<RawParse>,
    /// `point` (one message per point, the default) or `device` (one message per poll).
    pub payload: Option<String>,
    /// The default of the device's points.
    /// Report strategy (issue 12): `every_poll` or `on_change`, with `deadband` or
    /// `deadband_percent`, `min_interval`, `max_interval`; validated in validate/report.rs.
    pub report: Option<String>,
    pub deadband: Option<f64>,
    pub deadband_percent: Option<f64>,
    pub min_interval: Option<String>,
    pub max_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    pub name: String,
    /// Required for Modbus points; serial points use field/column/byte_offset instead.
    pub table: Option<String>,
    pub address: Option<i64>,
    #[serde(rename = "type")]
    pub data_type: String,
    pub unit: Option<String>,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// At most this many decimal places after scale and offset (numeric points).
    pub decimals: Option<i64>,
    pub word_order: Option<String>,
    /// A bool point from one bit (0 = least significant) of a holding or input register.
    pub bit: Option<i64>,
    /// Registers of a `string` point.
    pub length: Option<i64>,
    #[serde(default)]
    pub writable: bool,
    /// Accepted write range, in engineering units (after scale and offset).
    pub min: Option<f64>,
    pub max: Option<f64>,
    // serial_line points (issue 4)
    pub field: Option<String>,
    pub column: Option<i64>,
    pub byte_offset: Option<i64>,
    pub byte_order: Option<String>,
    /// Report strategy (issue 12): `every_poll` or `on_change`, with `deadband` or
    /// `deadband_percent`, `min_interval`, `max_interval`; validated in validate/report.rs.
    pub report: Option<String>,
    pub deadband: Option<f64>,
    pub deadband_percent: Option<f64>,
    pub min_interval: Option<String>,
    pub max_interval: Option<String>,
    /// Home Assistant discovery hints; validated in validate/homeassistant.rs.
    pub homeassistant: Option<RawPointHints>,
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
pub(super) fn default_data_dir() -> String {
    "/var/lib/fieldbridge".into()
}
fn default_prefix() -> String {
    "fieldbridge".into()
}
fn default_log_level() -> String {
    "info".into()
}

fn default_shutdown_timeout() -> String {
    "5s".into()
}
fn default_stats_interval() -> String {
    "10s".into()
}
fn default_listen() -> String {
    "127.0.0.1:1883".into()
}
fn default_max_connections() -> i64 {
    64
}
fn default_max_payload() -> i64 {
    65536
}
fn default_keep_alive() -> String {
    "30s".into()
}
fn default_connect_timeout() -> String {
    "10s".into()
}
/// `upstream.inflight` when the file does not set it. A window carries at most its size per
/// round trip: 512 over a 100 ms cellular link is 5,120 messages a second. From 256 in flight
/// the uplink reads PUBACKs on a 1 ms pace (`mqtt::plan::read_pace`), which cuts its CPU per
/// message; on the drain bench (broker, gateway and collector on 2 cores) 512 drained at
/// 0.98-1.05 times the mosquitto bridge's rate, 200 at 0.83-1.03 times (BENCHMARKS.md). A broker
/// that caps the window lower (AWS IoT Core: 100) is found by the ack-timeout guard, once per
/// installation: the halved window is kept in the data dir (`mqtt::learned`).
pub const DEFAULT_INFLIGHT: u16 = 512;

fn default_inflight() -> i64 {
    DEFAULT_INFLIGHT.into()
}
fn default_ack_timeout() -> String {
    "30s".into()
}
fn default_reconnect_min() -> String {
    "1s".into()
}
fn default_reconnect_max() -> String {
    "60s".into()
}
fn default_command_max_age() -> String {
    "5m".into()
}
/// As many rows as `max_bytes` holds of 128-byte messages (a reading, a forwarded JSON line), so
/// for typical traffic the byte bound, which is what the disk has, is the one that binds.
fn default_max_rows() -> i64 {
    2_000_000
}
fn default_max_bytes() -> i64 {
    256 * 1024 * 1024
}
fn default_overflow() -> String {
    "drop_oldest".into()
}
fn default_commit_interval() -> String {
    "100ms".into()
}
fn default_modbus_port() -> i64 {
    502
}
fn default_request_gap() -> String {
    "5ms".into()
}
fn default_interval() -> String {
    "5s".into()
}
pub(crate) const DEFAULT_MODBUS_TIMEOUT: &str = "1s";
fn default_backoff_max() -> String {
    "60s".into()
}

/// A device profile file (`hardware/profiles/*.toml`): a real device's register map and the
/// device-level defaults that go with it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub profile: RawProfileMeta,
    #[serde(default)]
    pub defaults: RawProfileDefaults,
    #[serde(default)]
    pub points: Vec<RawPoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfileMeta {
    pub name: String,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfileDefaults {
    pub word_order: Option<String>,
    pub unit_id: Option<i64>,
    pub timeout: Option<String>,
    pub max_gap: Option<i64>,
    pub max_registers: Option<i64>,
    pub max_bits: Option<i64>,
    pub one_request_per_point: Option<bool>,
    pub force_multiple_write: Option<bool>,
    // The device's factory line settings: documentation and `fieldbridge scan` hints only; the
    // bus owns the real settings.
    pub baud: Option<i64>,
    pub parity: Option<String>,
    pub data_bits: Option<i64>,
    pub stop_bits: Option<i64>,
}

/// `[devices.framing]` of a `serial_line` device (issue 4).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFraming {
    #[serde(rename = "type")]
    pub kind: String,
    pub delimiter: Option<String>,
    pub max_length: Option<i64>,
    pub start: Option<String>,
    pub length: Option<i64>,
    pub length_at: Option<i64>,
    pub length_add: Option<i64>,
    pub end: Option<String>,
    pub checksum: Option<String>,
    pub checksum_from: Option<i64>,
    pub checksum_to: Option<i64>,
    pub checksum_at: Option<i64>,
}

/// `[devices.parse]` of a `serial_line` device (issue 4).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParse {
    pub format: String,
    pub regex: Option<String>,
    pub separators: Option<String>,
    pub assign: Option<String>,
    pub separator: Option<String>,
}
