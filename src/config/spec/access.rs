//! Broker users as the config names them: what one client may do (`Access`), which user names
//! and password hashes are acceptable, and the password file's `user:hash` lines. The guard
//! enforces access (`guard::acl`) and verifies passwords (`guard::auth`); this is only what the
//! words in the files mean.

use argon2::PasswordHash;

/// A bad line of a password file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct PasswordFileError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// What one client (a user, or the anonymous client) may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May publish command topics (`<prefix>/<gw>/<device>/<point>/set`).
    pub commands: bool,
}

impl Access {
    pub fn everything() -> Access {
        Access {
            publish: vec!["#".into()],
            subscribe: vec!["#".into()],
            commands: false,
        }
    }
}

/// Why `s` is not a usable password hash, or `None`.
pub fn hash_problem(s: &str) -> Option<String> {
    match PasswordHash::new(s) {
        Ok(h) if h.algorithm.as_str().starts_with("argon2") && h.hash.is_some() => None,
        Ok(h) => Some(format!(
            "{} hashes are not supported; only Argon2 (`fieldbridge passwd` writes Argon2id)",
            h.algorithm
        )),
        Err(e) => Some(format!(
            "not a PHC hash string ({e}); run `fieldbridge passwd USER` to make one"
        )),
    }
}

/// Parses password-file text into (user, hash) pairs, or every bad line.
pub fn parse_password_file(
    file: &str,
    text: &str,
) -> Result<Vec<(String, String)>, Vec<PasswordFileError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| PasswordFileError {
            file: file.to_string(),
            line: i + 1,
            message,
        };
        let Some((user, hash)) = line.split_once(':') else {
            errors.push(err("expected `user:hash`".into()));
            continue;
        };
        if user.is_empty() {
            errors.push(err("empty user name".into()));
            continue;
        }
        if let Some(p) = hash_problem(hash) {
            errors.push(err(format!("user {user:?}: {p}")));
            continue;
        }
        if out.iter().any(|(u, _): &(String, String)| u == user) {
            errors.push(err(format!("user {user:?} appears twice")));
            continue;
        }
        out.push((user.to_string(), hash.to_string()));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Whether `name` can be a user name in the password file and in MQTT.
pub fn user_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.contains(':') {
        Some("must not contain ':' (it separates name and hash in the password file)")
    } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("must not contain spaces or control characters")
    } else {
        None
    }
}
