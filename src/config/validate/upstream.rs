//! Validation of the upstream link (`[upstream]`: broker, credentials, TLS, timing) and of the
//! bridge rules that move messages between the brokers (`[[forward]]`, `[[subscribe]]`). Pure.

use std::path::PathBuf;
use std::time::Duration;

use super::check::Check;
use crate::config::locate::KeyPath;
use crate::config::raw::{RawBridgeRule, RawUpstream};
use crate::config::{BridgeRule, Tls, Upstream};

pub(super) fn bridge_rules(c: &mut Check, p: KeyPath, raw: &[RawBridgeRule]) -> Vec<BridgeRule> {
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

pub(super) fn upstream(c: &mut Check, p: KeyPath, u: &RawUpstream, gateway_id: &str) -> Upstream {
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
        ack_timeout: c.duration(
            p.key("ack_timeout"),
            &u.ack_timeout,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        ),
        reconnect_min,
        reconnect_max,
        replay_rate: u.replay_rate,
        command_max_age: c.duration(
            p.key("command_max_age"),
            &u.command_max_age,
            Duration::from_secs(1),
            Duration::from_secs(365 * 24 * 3600),
        ),
        tls: u.tls.as_ref().map(|t| Tls {
            ca_file: PathBuf::from(&t.ca_file),
            client: match (&t.cert_file, &t.key_file) {
                (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
                _ => None,
            },
        }),
    }
}
