//! What a reload (`systemctl reload`, SIGHUP) changes: the pure comparison of the running
//! config with a new, already validated one. It decides which devices and buses restart, start
//! or stop, whether the broker's users, ACLs and limits or the upstream connection change, and
//! refuses what cannot change while the gateway runs. Applying the plan is `app.rs`'s job.
//!
//! Refused (a restart applies them): every `[gateway]` key (`id` and `data_dir` name the
//! outbox and every topic), `[outbox]` (the outbox is never touched by a reload), `[[forward]]`,
//! adding or removing `[upstream]` as a whole (changing it restarts the connection),
//! turning the embedded broker on or off, its listeners (`listen`, `[broker.tls]`,
//! `[broker.websocket]`) and the two settings rumqttd takes at its start (`max_connections`,
//! `max_payload_bytes`), and whether any point is writable (the command subscriptions are made
//! at start).

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::locate::KeyPath;
use crate::config::{Broker, Config, Issue, Transport};

/// Names added, removed and changed, in the new file's order (removed: the old file's).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<Arc<str>>,
    pub removed: Vec<Arc<str>>,
    pub changed: Vec<Arc<str>>,
    pub unchanged: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// What a reload does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Modbus and serial devices together, by name. A device on a changed bus is changed.
    pub devices: Changes,
    /// `[[buses]]` entries, by name.
    pub buses: Changes,
    /// Broker users, ACLs (`anonymous`, each user's access), anonymous policy and the limits
    /// that apply per connection.
    pub broker_rights: bool,
    /// `[upstream]` or `[[subscribe]]`: the upstream connection restarts.
    pub upstream: bool,
}

/// The running config's `old`, the new file's `new`: the plan, or every reason the new file
/// cannot be applied without a restart (as config issues, so they name file, line and key).
pub fn plan(old: &Config, new: &Config) -> Result<Plan, Vec<Issue>> {
    let refusals = refusals(old, new);
    if !refusals.is_empty() {
        return Err(refusals);
    }
    let buses = changes(
        old.buses.iter().map(|b| (&b.name, b)),
        new.buses.iter().map(|b| (&b.name, b)),
        |_, a, b| a == b,
    );
    let restarted_bus = |t: &Transport| match t {
        Transport::Bus(name) => buses.changed.contains(name),
        Transport::Tcp { .. } => false,
    };
    let devices = changes(
        old.devices
            .iter()
            .map(|d| (&d.name, Kind::Modbus(d)))
            .chain(
                old.serial_devices
                    .iter()
                    .map(|d| (&d.name, Kind::Serial(d))),
            ),
        new.devices
            .iter()
            .map(|d| (&d.name, Kind::Modbus(d)))
            .chain(
                new.serial_devices
                    .iter()
                    .map(|d| (&d.name, Kind::Serial(d))),
            ),
        |_, a, b| match (a, b) {
            (Kind::Modbus(a), Kind::Modbus(b)) => a == b && !restarted_bus(&b.transport),
            (Kind::Serial(a), Kind::Serial(b)) => a == b,
            _ => false,
        },
    );
    Ok(Plan {
        devices,
        buses,
        broker_rights: match (&old.broker, &new.broker) {
            (Some(a), Some(b)) => rights_differ(a, b),
            _ => false,
        },
        upstream: old.upstream != new.upstream || old.subscribe != new.subscribe,
    })
}

#[derive(Clone, Copy)]
enum Kind<'a> {
    Modbus(&'a crate::config::Device),
    Serial(&'a crate::config::serial::SerialDevice),
}

fn changes<'a, T: Copy + 'a>(
    old: impl Iterator<Item = (&'a Arc<str>, T)>,
    new: impl Iterator<Item = (&'a Arc<str>, T)>,
    same: impl Fn(&str, T, T) -> bool,
) -> Changes {
    let old: Vec<(&Arc<str>, T)> = old.collect();
    let new: Vec<(&Arc<str>, T)> = new.collect();
    let mut c = Changes::default();
    for (name, n) in &new {
        match old.iter().find(|(o, _)| o == name) {
            None => c.added.push((*name).clone()),
            Some((_, o)) if same(name, *o, *n) => c.unchanged += 1,
            Some(_) => c.changed.push((*name).clone()),
        }
    }
    let kept: BTreeSet<&str> = new.iter().map(|(n, _)| &***n).collect();
    c.removed = old
        .iter()
        .filter(|(o, _)| !kept.contains(&***o))
        .map(|(o, _)| (*o).clone())
        .collect();
    c
}

fn rights_differ(a: &Broker, b: &Broker) -> bool {
    a.users != b.users
        || a.anonymous != b.anonymous
        || a.allow_anonymous != b.allow_anonymous
        || a.keep_alive_min != b.keep_alive_min
        || a.keep_alive_max != b.keep_alive_max
        || a.allow_keep_alive_zero != b.allow_keep_alive_zero
        || a.connect_timeout != b.connect_timeout
        || a.max_connections_per_address != b.max_connections_per_address
}

const RESTART: &str = "cannot change on a reload; restart the service to apply it";

fn refusals(old: &Config, new: &Config) -> Vec<Issue> {
    let mut out = Vec::new();
    let mut refuse = |path: KeyPath, what: &str| {
        out.push(Issue {
            path,
            message: format!("{what} {RESTART}"),
        })
    };
    let root = KeyPath::root();
    let g = root.key("gateway");
    let (o, n) = (&old.gateway, &new.gateway);
    if o.id != n.id {
        refuse(
            g.key("id"),
            &format!(
                "the gateway id (running: {:?}) names every topic and the upstream session; it",
                o.id
            ),
        );
    }
    if o.data_dir != n.data_dir {
        refuse(
            g.key("data_dir"),
            &format!(
                "the data directory (running: {}) holds the open outbox; it",
                o.data_dir.display()
            ),
        );
    }
    for (key, differs) in [
        ("topic_prefix", o.topic_prefix != n.topic_prefix),
        ("shutdown_timeout", o.shutdown_timeout != n.shutdown_timeout),
        ("stats_interval", o.stats_interval != n.stats_interval),
        ("log_level", o.log_level != n.log_level),
    ] {
        if differs {
            refuse(g.key(key), &format!("gateway.{key}"));
        }
    }
    let ob = (&old.outbox, &new.outbox);
    for (key, differs) in [
        ("max_rows", ob.0.max_rows != ob.1.max_rows),
        ("max_bytes", ob.0.max_bytes != ob.1.max_bytes),
        (
            "commit_interval",
            ob.0.commit_interval != ob.1.commit_interval,
        ),
        ("max_age", ob.0.max_age != ob.1.max_age),
        ("overflow", ob.0.overflow != ob.1.overflow),
    ] {
        if differs {
            refuse(
                root.key("outbox").key(key),
                &format!("outbox.{key} (a reload never touches the outbox)"),
            );
        }
    }
    if old.upstream.is_some() != new.upstream.is_some() {
        refuse(root.key("upstream"), "adding or removing [upstream]");
    }
    if old.forward != new.forward {
        refuse(root.key("forward"), "[[forward]]");
    }
    if old.homeassistant != new.homeassistant {
        refuse(
            root.key("homeassistant"),
            "[homeassistant] (its birth topic is subscribed at start)",
        );
    }
    if old.http != new.http {
        refuse(root.key("http"), "[http] (its listener is bound at start)");
    }
    match (&old.broker, &new.broker) {
        (Some(_), None) | (None, Some(_)) => {
            refuse(root.key("broker"), "turning the embedded broker on or off")
        }
        (Some(a), Some(b)) => {
            let br = root.key("broker");
            if a.listen != b.listen {
                refuse(br.key("listen"), "broker.listen");
            }
            if a.tls != b.tls {
                refuse(br.key("tls"), "[broker.tls]");
            }
            if a.websocket != b.websocket {
                refuse(br.key("websocket"), "[broker.websocket]");
            }
            if a.max_connections != b.max_connections {
                refuse(
                    br.key("max_connections"),
                    "broker.max_connections (fixed when the broker starts)",
                );
            }
            if a.max_payload_bytes != b.max_payload_bytes {
                refuse(
                    br.key("max_payload_bytes"),
                    "broker.max_payload_bytes (fixed when the broker starts)",
                );
            }
        }
        (None, None) => {}
    }
    let writable = |c: &Config| {
        c.devices
            .iter()
            .any(|d| d.points.iter().any(|p| p.write.is_some()))
    };
    if writable(old) != writable(new) {
        refuse(
            root.key("devices"),
            "whether any point is writable (commands are subscribed at start)",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[gateway]
id = "gw"
data_dir = "/tmp/fb-reload-test"

[broker]
listen = "127.0.0.1:1883"

[upstream]
host = "127.0.0.1"
port = 1883

[[buses]]
name = "line1"
kind = "serial"
path = "/dev/ttyUSB0"

[[devices]]
name = "a"
kind = "modbus_tcp"
host = "127.0.0.1"
port = 5020
unit_id = 1
interval = "1s"
[[devices.points]]
name = "p"
table = "holding"
address = 0
type = "u16"

[[devices]]
name = "b"
kind = "modbus_rtu"
bus = "line1"
unit_id = 2
interval = "1s"
[[devices.points]]
name = "p"
table = "holding"
address = 0
type = "u16"
"#;

    fn cfg(src: &str) -> Config {
        crate::config::parse_str(src).unwrap_or_else(|e| panic!("test config: {e:?}"))
    }

    fn names(v: &[Arc<str>]) -> Vec<&str> {
        v.iter().map(|s| &**s).collect()
    }

    fn keys(issues: &[Issue]) -> Vec<String> {
        issues.iter().map(|i| i.path.to_string()).collect()
    }

    #[test]
    fn each_edit_restarts_starts_or_stops_only_what_it_touches() {
        let extra_device = r#"
[[devices]]
name = "c"
kind = "modbus_tcp"
host = "127.0.0.1"
port = 5021
unit_id = 1
[[devices.points]]
name = "p"
table = "holding"
address = 0
type = "u16"
"#;
        // (edit of BASE, devices added, removed, changed, buses changed, rights, upstream)
        type Row = (
            String,
            Vec<&'static str>,
            Vec<&'static str>,
            Vec<&'static str>,
            Vec<&'static str>,
            bool,
            bool,
        );
        let cases: Vec<Row> = vec![
            (BASE.into(), vec![], vec![], vec![], vec![], false, false),
            (
                BASE.replacen("interval = \"1s\"", "interval = \"2s\"", 1),
                vec![],
                vec![],
                vec!["a"],
                vec![],
                false,
                false,
            ),
            (
                format!("{BASE}{extra_device}"),
                vec!["c"],
                vec![],
                vec![],
                vec![],
                false,
                false,
            ),
            (
                BASE.replace("/dev/ttyUSB0", "/dev/ttyUSB1"),
                vec![],
                vec![],
                vec!["b"],
                vec!["line1"],
                false,
                false,
            ),
            (
                BASE.replace("port = 1883\n", "port = 1884\n"),
                vec![],
                vec![],
                vec![],
                vec![],
                false,
                true,
            ),
            (
                BASE.replace(
                    "listen = \"127.0.0.1:1883\"",
                    "listen = \"127.0.0.1:1883\"\nkeep_alive_max = \"10m\"",
                ),
                vec![],
                vec![],
                vec![],
                vec![],
                true,
                false,
            ),
        ];
        let old = cfg(BASE);
        for (src, added, removed, changed, buses, rights, upstream) in cases {
            let p = plan(&old, &cfg(&src)).unwrap_or_else(|e| panic!("{src}: {e:?}"));
            assert_eq!(names(&p.devices.added), added, "{src}");
            assert_eq!(names(&p.devices.removed), removed, "{src}");
            assert_eq!(names(&p.devices.changed), changed, "{src}");
            assert_eq!(names(&p.buses.changed), buses, "{src}");
            assert_eq!(p.broker_rights, rights, "{src}");
            assert_eq!(p.upstream, upstream, "{src}");
        }
        // Removing device b (the last unit of line1) stops it; the line itself stays defined.
        let without_b = BASE.split("[[devices]]\nname = \"b\"").next().unwrap();
        let p = plan(&old, &cfg(without_b)).unwrap();
        assert_eq!(names(&p.devices.removed), vec!["b"]);
        assert_eq!(p.devices.unchanged, 1);
    }

    #[test]
    fn what_cannot_change_live_is_refused_naming_its_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("id = \"gw\"", "id = \"gw2\"", "gateway.id"),
            (
                "data_dir = \"/tmp/fb-reload-test\"",
                "data_dir = \"/tmp/elsewhere\"",
                "gateway.data_dir",
            ),
            (
                "listen = \"127.0.0.1:1883\"",
                "listen = \"127.0.0.1:1999\"",
                "broker.listen",
            ),
            (
                "listen = \"127.0.0.1:1883\"",
                "listen = \"127.0.0.1:1883\"\nmax_connections = 7",
                "broker.max_connections",
            ),
            (
                "[upstream]",
                "[outbox]\nmax_rows = 5000\n\n[upstream]",
                "outbox.max_rows",
            ),
            (
                "type = \"u16\"\n\n[[devices]]",
                "type = \"u16\"\nwritable = true\n\n[[devices]]",
                "devices",
            ),
        ];
        let old = cfg(BASE);
        for (from, to, key) in cases {
            let new = BASE.replacen(from, to, 1);
            assert_ne!(new, BASE, "the edit {to:?} applies");
            let refused = plan(&old, &cfg(&new)).expect_err(to);
            assert_eq!(keys(&refused), vec![key.to_string()], "{to}");
            assert!(
                refused[0].message.contains("restart"),
                "{}",
                refused[0].message
            );
        }
    }
}
