//! Validation of `[broker]`: listeners, limits, anonymous access, users and their topic ACLs.
//! Pure, like the rest of `validate`: every problem is pushed with its key path and a hint, and
//! validation goes on. The password file and the TLS files are read later, by `config::load`.
//!
//! The safety rule: a listener that is not on loopback needs authentication (users or a
//! password file) unless the file says `allow_anonymous = true` in so many words.

use crate::config::spec::access::{hash_problem, user_name_problem, Access};
use crate::config::spec::topic::filter_problem;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::super::locate::KeyPath;
use super::super::raw::RawBroker;
use super::super::{Broker, BrokerTls, BrokerUser, BrokerWebSocket};
use super::check::Check;

pub(super) fn broker(c: &mut Check, b: KeyPath, raw: &RawBroker) -> Option<Broker> {
    if !raw.enabled {
        return None;
    }
    let listen = addr(c, b.key("listen"), &raw.listen, "127.0.0.1:1883");
    let tls = raw.tls.as_ref().map(|t| {
        let p = b.key("tls");
        for (key, v) in [("cert_file", &t.cert_file), ("key_file", &t.key_file)] {
            if v.trim().is_empty() {
                c.push(p.key(key), "must name a PEM file");
            }
        }
        BrokerTls {
            listen: addr(c, p.key("listen"), &t.listen, "0.0.0.0:8883"),
            cert_file: PathBuf::from(&t.cert_file),
            key_file: PathBuf::from(&t.key_file),
            handshake_timeout: c.duration(
                p.key("handshake_timeout"),
                &t.handshake_timeout,
                Duration::from_millis(100),
                Duration::from_secs(60),
            ),
        }
    });
    let websocket = raw.websocket.as_ref().map(|w| {
        let p = b.key("websocket");
        BrokerWebSocket {
            listen: addr(c, p.key("listen"), &w.listen, "0.0.0.0:8083"),
            handshake_timeout: c.duration(
                p.key("handshake_timeout"),
                &w.handshake_timeout,
                Duration::from_millis(100),
                Duration::from_secs(60),
            ),
        }
    });

    let keep_alive_min = c.duration(
        b.key("keep_alive_min"),
        &raw.keep_alive_min,
        Duration::from_secs(1),
        Duration::from_secs(65_535),
    );
    let keep_alive_max = c.duration(
        b.key("keep_alive_max"),
        &raw.keep_alive_max,
        Duration::from_secs(1),
        Duration::from_secs(65_535),
    );
    if keep_alive_min > keep_alive_max {
        c.push(
            b.key("keep_alive_max"),
            format!(
                "{:?} is below keep_alive_min {:?}",
                raw.keep_alive_max, raw.keep_alive_min
            ),
        );
    }

    let mut names = HashSet::new();
    let mut users = Vec::new();
    for (i, u) in raw.users.iter().enumerate() {
        let p = b.key("users").index(i);
        if let Some(problem) = user_name_problem(&u.name) {
            c.push(p.key("name"), format!("{:?} {problem}", u.name));
        }
        if !names.insert(u.name.as_str()) {
            c.push(p.key("name"), format!("duplicate user {:?}", u.name));
        }
        if u.password.is_some() {
            c.push(
                p.key("password"),
                format!(
                    "plain-text passwords are not accepted; run `fieldbridge passwd {}` and put the hash it prints in password_hash (or use password_file)",
                    u.name
                ),
            );
        }
        match &u.password_hash {
            Some(h) => {
                if let Some(problem) = hash_problem(h) {
                    c.push(p.key("password_hash"), problem);
                }
            }
            None if raw.password_file.is_none() && u.password.is_none() => c.push(
                p.key("password_hash"),
                format!(
                    "missing: run `fieldbridge passwd {}` and paste the hash here, or set [broker] password_file",
                    u.name
                ),
            ),
            None => {}
        }
        let publish = u.publish.clone().unwrap_or_else(|| vec!["#".into()]);
        let subscribe = u.subscribe.clone().unwrap_or_else(|| vec!["#".into()]);
        filters(c, p.key("publish"), &publish);
        filters(c, p.key("subscribe"), &subscribe);
        users.push(BrokerUser {
            name: u.name.clone(),
            password_hash: u.password_hash.clone(),
            access: Access {
                publish,
                subscribe,
                commands: u.commands,
            },
        });
    }
    filters(c, b.key("anonymous_publish"), &raw.anonymous_publish);
    filters(c, b.key("anonymous_subscribe"), &raw.anonymous_subscribe);
    if let Some(pf) = &raw.password_file {
        if pf.trim().is_empty() {
            c.push(b.key("password_file"), "must name a file");
        }
    }

    let authenticated = !raw.users.is_empty() || raw.password_file.is_some();
    let broker = Broker {
        listen,
        tls,
        websocket,
        max_connections: c.int(b.key("max_connections"), raw.max_connections, 1, 10_000),
        max_connections_per_address: raw
            .max_connections_per_address
            .map(|n| c.int(b.key("max_connections_per_address"), n, 1, 10_000)),
        max_payload_bytes: c.int(
            b.key("max_payload_bytes"),
            raw.max_payload_bytes,
            128,
            256 * 1024 * 1024,
        ),
        keep_alive_min,
        keep_alive_max,
        allow_keep_alive_zero: raw.allow_keep_alive_zero,
        connect_timeout: c.duration(
            b.key("connect_timeout"),
            &raw.connect_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        ),
        allow_anonymous: raw.allow_anonymous,
        anonymous: Access {
            publish: raw.anonymous_publish.clone(),
            subscribe: raw.anonymous_subscribe.clone(),
            commands: false,
        },
        users,
        password_file: raw.password_file.as_ref().map(PathBuf::from),
    };

    let mut seen = HashSet::new();
    for (name, a) in broker.listeners() {
        let key = match name {
            "plain" => b.key("listen"),
            other => b.key(other).key("listen"),
        };
        if !seen.insert(a) {
            c.push(
                key.clone(),
                format!("{a} is used by another broker listener"),
            );
        }
        if !a.ip().is_loopback() && !authenticated && raw.allow_anonymous != Some(true) {
            c.push(
                key,
                format!(
                    "{a} is reachable from the network but the broker has no users: add [[broker.users]] (hashes from `fieldbridge passwd`) or password_file, listen on 127.0.0.1, or set allow_anonymous = true to accept anonymous clients on purpose"
                ),
            );
        }
    }
    if raw.allow_anonymous == Some(false) && !authenticated {
        c.push(
            b.key("allow_anonymous"),
            "false with no users and no password_file: no client could ever connect",
        );
    }
    Some(broker)
}

pub(super) fn addr(c: &mut Check, p: KeyPath, s: &str, example: &str) -> SocketAddr {
    match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            c.push(
                p,
                format!("{s:?} is not an IP address with a port; write e.g. \"{example}\""),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

fn filters(c: &mut Check, p: KeyPath, fs: &[String]) {
    for (i, f) in fs.iter().enumerate() {
        if let Some(problem) = filter_problem(f) {
            c.push(p.index(i), format!("{f:?} {problem}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$cGPdTv8lq9OGUxPZOW5rjXJhcG8U+zxeQ0BxvD0H+cI";

    fn check(broker: &str) -> Result<crate::config::Config, Vec<(Option<usize>, String, String)>> {
        let src = format!("[gateway]\nid = \"gw\"\n\n[broker]\n{broker}");
        parse_str(&src).map_err(|v| v.into_iter().map(|l| (l.line, l.key, l.message)).collect())
    }

    #[test]
    fn the_default_broker_is_loopback_with_anonymous_clients_allowed_there() {
        let cfg = check("").unwrap();
        let b = cfg.broker.unwrap();
        assert_eq!(b.listen.to_string(), "127.0.0.1:1883");
        assert!(b.anonymous_allowed_on(&b.listen));
        assert!(b.tls.is_none() && b.websocket.is_none() && b.users.is_empty());
    }

    #[test]
    fn broker_config_errors_name_line_and_key_with_a_hint() {
        let bad_filter = format!(
            "[[broker.users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\npublish = [\"a/#/b\"]\n"
        );
        let cases: Vec<(&str, &str, usize, &str)> = vec![
            (
                "listen = \"0.0.0.0:1883\"\n",
                "broker.listen",
                5,
                "no users",
            ),
            (
                "[broker.tls]\ncert_file = \"c\"\nkey_file = \"k\"\n",
                "broker.tls.listen",
                5,
                "allow_anonymous = true",
            ),
            (
                "[[broker.users]]\nname = \"a\"\npassword = \"pw\"\n",
                "broker.users[0].password",
                7,
                "fieldbridge passwd a",
            ),
            (
                "[[broker.users]]\nname = \"a\"\n",
                "broker.users[0].password_hash",
                5,
                "fieldbridge passwd a",
            ),
            (
                "[[broker.users]]\nname = \"a\"\npassword_hash = \"plain\"\n",
                "broker.users[0].password_hash",
                7,
                "PHC",
            ),
            (&bad_filter, "broker.users[0].publish[0]", 8, "'#'"),
            (
                "keep_alive_min = \"10s\"\nkeep_alive_max = \"5s\"\n",
                "broker.keep_alive_max",
                6,
                "below",
            ),
            (
                "allow_anonymous = false\n",
                "broker.allow_anonymous",
                5,
                "no client",
            ),
            (
                "[broker.websocket]\nlisten = \"192.168.1.2:8083\"\n",
                "broker.websocket.listen",
                6,
                "no users",
            ),
            (
                "[broker.tls]\ncert_file = \"c\"\n",
                "broker.tls.key_file",
                5,
                "missing field",
            ),
        ];
        for (body, key, line, hint) in cases {
            let errs = check(body).expect_err(body);
            let hit = errs.iter().find(|(_, k, _)| k == key);
            let Some((l, _, msg)) = hit else {
                panic!("{body}: no error at {key}: {errs:?}");
            };
            assert!(msg.contains(hint), "{body}: {msg}");
            assert_eq!(*l, Some(line), "{body}: {errs:?}");
        }
    }

    #[test]
    fn lan_listeners_are_accepted_with_users_or_explicit_anonymous_access() {
        let with_user = format!(
            "listen = \"0.0.0.0:1883\"\n[[broker.users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\ncommands = true\nsubscribe = [\"x/#\"]\n"
        );
        let b = check(&with_user).unwrap().broker.unwrap();
        assert!(!b.anonymous_allowed_on(&b.listen));
        assert!(b.users[0].access.commands);
        assert_eq!(b.users[0].access.publish, vec!["#".to_string()]);
        let anon = check("listen = \"0.0.0.0:1883\"\nallow_anonymous = true\n").unwrap();
        let b = anon.broker.unwrap();
        assert!(b.anonymous_allowed_on(&b.listen));
        assert!(check("listen = \"0.0.0.0:1883\"\npassword_file = \"p\"\n").is_ok());
    }
}
