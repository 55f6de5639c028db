//! Pure validation: `RawConfig` → `Config`, collecting every issue with its key path.

mod broker;
mod modbus;
mod serial;

pub(super) use modbus::profile;

use crate::config::spec::topic::topic_level_problem;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::locate::KeyPath;
use super::profile::Profiles;
use super::raw::{RawBridgeRule, RawConfig, RawUpstream};
use super::{BridgeRule, Config, Gateway, Issue, OutboxSettings, Overflow, Tls, Upstream};

struct Check {
    issues: Vec<Issue>,
}

impl Check {
    fn push(&mut self, path: KeyPath, message: impl Into<String>) {
        self.issues.push(Issue {
            path,
            message: message.into(),
        });
    }

    fn duration(&mut self, path: KeyPath, s: &str, min: Duration, max: Duration) -> Duration {
        match humantime::parse_duration(s) {
            Ok(d) if d < min || d > max => {
                self.push(
                    path,
                    format!(
                        "{s:?} is out of range; valid: {} to {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
                min
            }
            Ok(d) => d,
            Err(e) => {
                self.push(
                    path,
                    format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"2m\""),
                );
                min
            }
        }
    }

    fn int<T: TryFrom<i64> + Default>(&mut self, path: KeyPath, v: i64, lo: i64, hi: i64) -> T {
        if v < lo || v > hi {
            self.push(path, format!("{v} is out of range; valid: {lo} to {hi}"));
            return T::default();
        }
        T::try_from(v).unwrap_or_default()
    }

    fn parsed<T: std::str::FromStr + Copy>(
        &mut self,
        path: KeyPath,
        s: &str,
        what: &str,
        valid: &str,
        fallback: T,
    ) -> T {
        match s.parse() {
            Ok(v) => v,
            Err(_) => {
                self.push(path, format!("unknown {what} {s:?}; valid: {valid}"));
                fallback
            }
        }
    }

    /// Keys that belong to another kind of device or point: each one set is named.
    fn not_used(&mut self, p: &KeyPath, keys: &[(&str, bool)], why: &str) {
        for (k, set) in keys {
            if *set {
                self.push(p.key(k), why);
            }
        }
    }

    /// Rules every point's name and value transform follow, whatever the device kind.
    fn point_common(&mut self, p: &KeyPath, name: &str, scale: f64, offset: f64) {
        self.topic_level(p.key("name"), name);
        if name == crate::config::spec::topic::RESERVED_POINT {
            self.push(
                p.key("name"),
                "\"status\" is reserved for the device status topic; choose another name",
            );
        }
        if !scale.is_finite() || scale == 0.0 {
            self.push(p.key("scale"), "must be a finite, non-zero number");
        }
        if !offset.is_finite() {
            self.push(p.key("offset"), "must be a finite number");
        }
    }

    fn topic_level(&mut self, path: KeyPath, s: &str) {
        if let Some(p) = topic_level_problem(s) {
            self.push(path, format!("{s:?} {p} (it becomes a topic level)"));
        }
    }
}

pub fn validate(raw: &RawConfig, profiles: &Profiles) -> Result<Config, Vec<Issue>> {
    let mut c = Check { issues: Vec::new() };
    let root = KeyPath::root();

    let g = root.key("gateway");
    c.topic_level(g.key("id"), &raw.gateway.id);
    let prefix = &raw.gateway.topic_prefix;
    if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') {
        c.push(
            g.key("topic_prefix"),
            format!("{prefix:?} must be non-empty without a leading or trailing '/'"),
        );
    } else {
        for level in prefix.split('/') {
            if let Some(p) = topic_level_problem(level) {
                c.push(
                    g.key("topic_prefix"),
                    format!("{prefix:?}: level {level:?} {p}"),
                );
            }
        }
    }
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    if !LEVELS.contains(&raw.gateway.log_level.as_str()) {
        c.push(
            g.key("log_level"),
            format!(
                "{:?} is not a log level; use one of {}",
                raw.gateway.log_level,
                LEVELS.join(", ")
            ),
        );
    }
    if raw.gateway.data_dir.is_empty() {
        c.push(g.key("data_dir"), "must not be empty");
    }
    let gateway = Gateway {
        id: raw.gateway.id.clone(),
        data_dir: PathBuf::from(&raw.gateway.data_dir),
        topic_prefix: prefix.clone(),
        shutdown_timeout: c.duration(
            g.key("shutdown_timeout"),
            &raw.gateway.shutdown_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        ),
        stats_interval: c.duration(
            g.key("stats_interval"),
            &raw.gateway.stats_interval,
            Duration::from_millis(100),
            Duration::from_secs(86_400),
        ),
        log_level: raw.gateway.log_level.clone(),
    };

    let broker = broker::broker(&mut c, root.key("broker"), &raw.broker);

    let upstream = raw
        .upstream
        .as_ref()
        .map(|u| upstream(&mut c, root.key("upstream"), u, &gateway.id));

    let o = root.key("outbox");
    let outbox = OutboxSettings {
        max_rows: c.int(o.key("max_rows"), raw.outbox.max_rows, 1, i64::MAX),
        max_bytes: c.int(o.key("max_bytes"), raw.outbox.max_bytes, 1024, i64::MAX),
        commit_interval: c.duration(
            o.key("commit_interval"),
            &raw.outbox.commit_interval,
            Duration::ZERO,
            Duration::from_secs(10),
        ),
        max_age: raw.outbox.max_age.as_ref().map(|a| {
            c.duration(
                o.key("max_age"),
                a,
                Duration::from_secs(1),
                Duration::from_secs(10 * 365 * 86_400),
            )
        }),
        overflow: c.parsed(
            o.key("overflow"),
            &raw.outbox.overflow,
            "overflow policy",
            "drop_oldest, drop_newest",
            Overflow::DropOldest,
        ),
    };

    let buses = modbus::buses(&mut c, root.key("buses"), &raw.buses);
    let mut names = HashSet::new();
    let mut devices = Vec::new();
    let mut serial_devices = Vec::new();
    for (i, d) in raw.devices.iter().enumerate() {
        let p = root.key("devices").index(i);
        if !names.insert(d.name.as_str()) {
            c.push(
                p.key("name"),
                format!(
                    "duplicate device name {:?}; device names must be unique",
                    d.name
                ),
            );
        }
        if d.kind == serial::KIND {
            serial_devices.push(serial::device(&mut c, p, d));
            continue;
        }
        devices.push(modbus::device(&mut c, p, d, profiles, &buses));
    }
    modbus::check_buses(&mut c, root.clone(), raw, &buses, &devices, &serial_devices);

    let forward = bridge_rules(&mut c, root.key("forward"), &raw.forward);
    let subscribe = bridge_rules(&mut c, root.key("subscribe"), &raw.subscribe);
    if !forward.is_empty() && broker.is_none() {
        c.push(
            root.key("forward"),
            "forwarding needs the embedded broker ([broker] enabled = true)",
        );
    }
    if !subscribe.is_empty() && upstream.is_none() {
        c.push(
            root.key("subscribe"),
            "subscribing needs an [upstream] section",
        );
    }

    if c.issues.is_empty() {
        Ok(Config {
            gateway,
            broker,
            upstream,
            outbox,
            buses,
            devices,
            forward,
            subscribe,
            serial_devices,
        })
    } else {
        Err(c.issues)
    }
}

fn bridge_rules(c: &mut Check, p: KeyPath, raw: &[RawBridgeRule]) -> Vec<BridgeRule> {
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let rp = p.index(i);
        if let Some(problem) = crate::config::spec::topic::filter_problem(&r.filter) {
            c.push(rp.key("filter"), format!("{:?} {problem}", r.filter));
        }
        let remap = match (&r.local_prefix, &r.remote_prefix) {
            (Some(l), Some(rm)) => {
                for (key, v) in [("local_prefix", l), ("remote_prefix", rm)] {
                    if v.is_empty()
                        || v.contains(['+', '#'])
                        || v.starts_with('/')
                        || v.ends_with('/')
                    {
                        c.push(
                            rp.key(key),
                            format!("{v:?} must be topic levels without wildcards or a leading/trailing '/'"),
                        );
                    }
                }
                Some((l.clone(), rm.clone()))
            }
            (None, None) => None,
            (Some(_), None) => {
                c.push(rp.key("remote_prefix"), "local_prefix needs remote_prefix");
                None
            }
            (None, Some(_)) => {
                c.push(rp.key("local_prefix"), "remote_prefix needs local_prefix");
                None
            }
        };
        out.push(BridgeRule {
            filter: r.filter.clone(),
            remap,
        });
    }
    out
}

fn upstream(c: &mut Check, p: KeyPath, u: &RawUpstream, gateway_id: &str) -> Upstream {
    if u.host.trim().is_empty() {
        c.push(p.key("host"), "must not be empty");
    }
    let default_port = if u.tls.is_some() { 8883 } else { 1883 };
    let port = c.int(p.key("port"), u.port.unwrap_or(default_port), 1, 65535);
    let client_id = u
        .client_id
        .clone()
        .unwrap_or_else(|| format!("fieldbridge-{gateway_id}"));
    if client_id.is_empty() || client_id.len() > 256 {
        c.push(p.key("client_id"), "must be 1 to 256 bytes long");
    }
    if u.password.is_some() && u.password_file.is_some() {
        c.push(
            p.key("password_file"),
            "set either password or password_file, not both",
        );
    }
    if (u.password.is_some() || u.password_file.is_some()) && u.username.is_none() {
        c.push(p.key("username"), "a password needs a username");
    }
    // rumqttc asserts whole seconds ≥ 1; MQTT keep-alive is a u16 of seconds.
    let keep_alive = c.duration(
        p.key("keep_alive"),
        &u.keep_alive,
        Duration::from_secs(1),
        Duration::from_secs(65535),
    );
    let reconnect_min = c.duration(
        p.key("reconnect_min"),
        &u.reconnect_min,
        Duration::from_millis(10),
        Duration::from_secs(3600),
    );
    let reconnect_max = c.duration(
        p.key("reconnect_max"),
        &u.reconnect_max,
        Duration::from_millis(10),
        Duration::from_secs(3600),
    );
    if reconnect_max < reconnect_min {
        c.push(
            p.key("reconnect_max"),
            "must not be shorter than reconnect_min",
        );
    }
    if let Some(r) = u.replay_rate {
        if !(r.is_finite() && r >= 1.0) {
            c.push(
                p.key("replay_rate"),
                format!("{r} is not a rate; valid: messages per second, 1 or more"),
            );
        }
    }
    if let Some(t) = &u.tls {
        if t.cert_file.is_some() != t.key_file.is_some() {
            c.push(
                p.key("tls").key(if t.cert_file.is_some() {
                    "key_file"
                } else {
                    "cert_file"
                }),
                "mutual TLS needs both cert_file and key_file",
            );
        }
    }
    Upstream {
        host: u.host.clone(),
        port,
        client_id,
        username: u.username.clone(),
        password: u.password.clone(),
        password_file: u.password_file.as_ref().map(PathBuf::from),
        keep_alive: Duration::from_secs(keep_alive.as_secs().max(1)),
        connect_timeout: c.duration(
            p.key("connect_timeout"),
            &u.connect_timeout,
            Duration::from_secs(1),
            Duration::from_secs(300),
        ),
        inflight: c.int(p.key("inflight"), u.inflight, 1, 1000),
        reconnect_min,
        reconnect_max,
        replay_rate: u.replay_rate,
        tls: u.tls.as_ref().map(|t| Tls {
            ca_file: PathBuf::from(&t.ca_file),
            client: match (&t.cert_file, &t.key_file) {
                (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
                _ => None,
            },
        }),
    }
}
