//! Passwords of broker users: Argon2id hashes in PHC strings (`$argon2id$v=19$m=…`), the
//! password file format, and verification.
//!
//! Parameters: m = 19 MiB, t = 2, p = 1 (the OWASP baseline for Argon2id). Measured about 25 ms
//! per verification on the x86 build machine; a Raspberry Pi 4 is roughly 4× slower, so about
//! 0.1 s, paid once per CONNECT and never on the data path. Verification reads the parameters
//! from each hash, so stronger hashes made elsewhere work too. Nothing is cached: a successful
//! verification is not remembered, and no plain password is kept after the CONNECT is checked.
//!
//! Password file: one `user:hash` per line; blank lines and lines starting with `#` are
//! ignored. `fieldbridge passwd --file F USER` creates or updates a line.

use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
}

const M_COST_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

fn hasher() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// A PHC string for `password` with a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    hasher()?
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches `hash`. A malformed hash never matches.
pub fn verify(hash: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    Argon2::default().verify_password(password, &parsed).is_ok()
}

/// Writes `user:hash` into the password file, replacing that user's line if present. The file
/// is replaced atomically and created readable by its owner only.
pub fn update_password_file(path: &Path, user: &str, hash: &str) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| AuthError::Io {
        file: path.display().to_string(),
        source,
    };
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let mut lines: Vec<String> = Vec::new();
    let mut replaced = false;
    for line in old.lines() {
        if line.trim().split_once(':').map(|(u, _)| u) == Some(user) {
            lines.push(format!("{user}:{hash}"));
            replaced = true;
        } else {
            lines.push(line.to_string());
        }
    }
    if !replaced {
        lines.push(format!("{user}:{hash}"));
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all((lines.join("\n") + "\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::access::{hash_problem, parse_password_file};

    #[test]
    fn a_hash_verifies_its_password_and_nothing_else() {
        let h = hash_password(b"s3cret").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(hash_problem(&h).is_none());
        assert!(verify(&h, b"s3cret"));
        assert!(!verify(&h, b"s3cret "));
        assert!(!verify(&h, b""));
        assert!(!verify("garbage", b"s3cret"));
        assert_ne!(h, hash_password(b"s3cret").unwrap(), "fresh salt each time");
    }

    #[test]
    fn password_file_lines_are_parsed_and_bad_ones_named_by_line() {
        let h = hash_password(b"x").unwrap();
        let good = format!("# comment\n\nalice:{h}\n  bob:{h}  \n");
        let users = parse_password_file("pw", &good).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[1].0, "bob");
        let bad =
            format!("alice:{h}\nnocolon\n:{h}\ncarol:plaintext\nalice:{h}\ndave:$5$abc$def\n");
        let errs: Vec<String> = parse_password_file("pw", &bad)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errs.len(), 5, "{errs:#?}");
        assert!(
            errs[0].starts_with("pw:2: expected `user:hash`"),
            "{errs:#?}"
        );
        assert!(errs[1].starts_with("pw:3: empty user"), "{errs:#?}");
        assert!(errs[2].starts_with("pw:4: user \"carol\""), "{errs:#?}");
        assert!(errs[3].contains("appears twice"), "{errs:#?}");
        assert!(errs[4].starts_with("pw:6:"), "{errs:#?}");
    }

    #[test]
    fn updating_the_password_file_replaces_one_user_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("passwd");
        update_password_file(&f, "alice", "H1").unwrap();
        update_password_file(&f, "bob", "H2").unwrap();
        update_password_file(&f, "alice", "H3").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "alice:H3\nbob:H2\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
