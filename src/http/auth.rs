//! Basic authentication for a listener off the loopback interface, against the broker's users
//! (their Argon2 hashes, from the config and the password file). The header parsing is pure;
//! `Users::check` runs the hash on a blocking thread and remembers a few accepted headers, so
//! a Prometheus scrape every 15 s or a reconnecting page costs one hash, not one each.

use std::sync::{Arc, Mutex};

use base64::Engine;

use crate::guard::auth::verify;

/// How many accepted `Authorization` values are remembered.
const REMEMBERED: usize = 8;

/// The users who may log in, and the header values already accepted.
#[derive(Debug)]
pub struct Users {
    /// (name, PHC hash)
    users: Vec<(String, String)>,
    accepted: Mutex<Vec<String>>,
}

/// (user, password) from an `Authorization: Basic …` value, or `None` for anything else.
pub fn basic(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl Users {
    pub fn new(users: Vec<(String, String)>) -> Arc<Users> {
        Arc::new(Users {
            users,
            accepted: Mutex::new(Vec::new()),
        })
    }

    /// Whether the `Authorization` header value names a user with the right password.
    pub async fn check(self: &Arc<Self>, header: Option<&str>) -> bool {
        let Some(header) = header else {
            return false;
        };
        if self
            .accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|h| h == header)
        {
            return true;
        }
        let Some((user, password)) = basic(header) else {
            return false;
        };
        let Some(hash) = self
            .users
            .iter()
            .find(|(n, _)| *n == user)
            .map(|(_, h)| h.clone())
        else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || verify(&hash, password.as_bytes()))
            .await
            .unwrap_or(false);
        if ok {
            let mut a = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
            if a.len() >= REMEMBERED {
                a.remove(0);
            }
            a.push(header.to_owned());
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_read_and_anything_else_is_refused() {
        let cases: [(&str, Option<(&str, &str)>); 6] = [
            ("Basic YWxpY2U6czNjcmV0", Some(("alice", "s3cret"))),
            ("basic YWxpY2U6czNjcmV0", Some(("alice", "s3cret"))),
            ("Basic YWxpY2U6", Some(("alice", ""))),
            ("Basic YWxpY2U=", None),
            ("Bearer YWxpY2U6czNjcmV0", None),
            ("Basic !!!", None),
        ];
        for (header, want) in cases {
            let want = want.map(|(u, p)| (u.to_string(), p.to_string()));
            assert_eq!(basic(header), want, "{header}");
        }
    }
}
