//! Pure validation: `RawConfig` → `Config`, collecting every issue with its key path.

mod broker;
mod check;
mod homeassistant;
mod http;
mod modbus;
mod report;
mod serial;
mod upstream;

use check::Check;

pub(super) use modbus::profile;

use crate::config::spec::topic::topic_level_problem;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::locate::KeyPath;
use super::profile::Profiles;
use super::raw::RawConfig;
use super::{Config, Gateway, Issue, OutboxSettings, Overflow};

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
        .map(|u| upstream::upstream(&mut c, root.key("upstream"), u, &gateway.id));

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

    let forward = upstream::bridge_rules(&mut c, root.key("forward"), &raw.forward);
    let subscribe = upstream::bridge_rules(&mut c, root.key("subscribe"), &raw.subscribe);
    if !forward.is_empty() && broker.is_none() {
        c.push(
            root.key("forward"),
            "forwarding needs the embedded broker ([broker] enabled = true)",
        );
    }
    let http = raw
        .http
        .as_ref()
        .map(|h| http::http(&mut c, root.key("http"), h, &raw.broker));
    if !subscribe.is_empty() && upstream.is_none() {
        c.push(
            root.key("subscribe"),
            "subscribing needs an [upstream] section",
        );
    }

    let homeassistant = homeassistant::section(
        &mut c,
        root.key("homeassistant"),
        raw.homeassistant.as_ref(),
        &format!("{}/{}", gateway.topic_prefix, gateway.id),
    );

    if c.issues.is_empty() {
        Ok(Config {
            homeassistant,
            gateway,
            broker,
            upstream,
            outbox,
            buses,
            devices,
            forward,
            subscribe,
            serial_devices,
            http,
        })
    } else {
        Err(c.issues)
    }
}
