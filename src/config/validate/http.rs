//! Validation of `[http]`: the listen address, and the rule that a listener off the loopback
//! interface needs the broker's users (the same rule the broker's own listeners follow; the
//! HTTP listener checks those users' passwords with basic authentication).

use super::broker::addr;
use super::check::Check;
use crate::config::locate::KeyPath;
use crate::config::model::Http;
use crate::config::raw::{RawBroker, RawHttp};

pub(super) fn http(c: &mut Check, p: KeyPath, raw: &RawHttp, broker: &RawBroker) -> Http {
    let listen = addr(c, p.key("listen"), &raw.listen, "127.0.0.1:8080");
    let has_users = broker.enabled && (!broker.users.is_empty() || broker.password_file.is_some());
    if !listen.ip().is_loopback() && !has_users {
        c.push(
            p.key("listen"),
            format!(
                "{listen} is reachable from the network but there are no users to log in with: add [[broker.users]] or [broker] password_file (the status page and /metrics then ask for one of them), or listen on 127.0.0.1"
            ),
        );
    }
    Http { listen }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;

    const HASH: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$cGPdTv8lq9OGUxPZOW5rjXJhcG8U+zxeQ0BxvD0H+cI";

    fn check(extra: &str) -> Result<crate::config::Config, Vec<(Option<usize>, String, String)>> {
        let src = format!("[gateway]\nid = \"gw\"\n\n{extra}");
        parse_str(&src).map_err(|v| v.into_iter().map(|l| (l.line, l.key, l.message)).collect())
    }

    #[test]
    fn http_is_off_unless_configured_and_defaults_to_loopback_port_8080() {
        assert_eq!(check("").unwrap().http, None);
        let h = check("[http]\n").unwrap().http.unwrap();
        assert_eq!(h.listen.to_string(), "127.0.0.1:8080");
        let h = check("[http]\nlisten = \"[::1]:9100\"\n")
            .unwrap()
            .http
            .unwrap();
        assert_eq!(h.listen.to_string(), "[::1]:9100");
    }

    #[test]
    fn http_errors_name_line_and_key() {
        let with_users = format!(
            "[broker]\n[[broker.users]]\nname = \"a\"\npassword_hash = \"{HASH}\"\n\n[http]\nlisten = \"0.0.0.0:8080\"\n"
        );
        assert!(check(&with_users).is_ok());
        let cases: [(&str, usize, &str); 4] = [
            ("[http]\nlisten = \"0.0.0.0:8080\"\n", 5, "no users"),
            (
                "[broker]\nenabled = false\npassword_file = \"x\"\n[http]\nlisten = \"192.168.1.5:80\"\n",
                8,
                "no users",
            ),
            ("[http]\nlisten = \"localhost:8080\"\n", 5, "not an IP address"),
            ("[http]\nport = 8080\n", 5, "unknown field"),
        ];
        for (src, line, words) in cases {
            let issues = check(src).unwrap_err();
            let (l, key, msg) = &issues[0];
            assert_eq!(*l, Some(line), "{src}: {issues:?}");
            assert!(key.starts_with("http"), "{src}: {issues:?}");
            assert!(msg.contains(words), "{src}: {msg}");
        }
    }
}
