//! Loading a config: read the file, parse (`raw`), read the device profiles it names
//! (`profile`), validate everything at once (`validate`), locate each problem by file, line and
//! key (`locate`), then read the files the config points at (passwords, certificates). The only
//! part of config/ that touches the file system besides `profile`.

use std::path::{Path, PathBuf};

use crate::config::locate::{in_line_order, locate_all, Issue, KeyPath, Located};
use crate::config::model::{Broker, BrokerUser, Config};
use crate::config::profile::{self, Profiles};
use crate::config::raw::{self, RawProfile};
use crate::config::recover;
use crate::config::spec::access::{parse_password_file, Access};
use crate::config::validate;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the config file: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(file, issues))]
    Invalid { file: PathBuf, issues: Vec<Located> },
}

fn render(file: &Path, issues: &[Located]) -> String {
    let mut out = format!(
        "{}: {} problem{} in the configuration:",
        file.display(),
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for i in issues {
        out.push_str("\n  ");
        out.push_str(&render_one(file, i));
    }
    out
}

/// `file:line: key 'k': message`, as `check` prints each problem.
fn render_one(file: &Path, i: &Located) -> String {
    let mut out = String::new();
    let f = i.file.as_deref().unwrap_or(file);
    match i.line {
        Some(l) => out.push_str(&format!("{}:{l}: ", f.display())),
        None => out.push_str(&format!("{}: ", f.display())),
    }
    if !i.key.is_empty() {
        out.push_str(&format!("key '{}': ", i.key));
    }
    out.push_str(&i.message);
    out
}

impl ConfigError {
    /// Each problem on a line of its own (`file:line: key '…': …`), for the log.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Read { .. } => vec![self.to_string()],
            ConfigError::Invalid { file, issues } => {
                issues.iter().map(|i| render_one(file, i)).collect()
            }
        }
    }
}

/// `issues` found in `file` by a later check (a reload's refusals), located by line and key as
/// `check` locates its own.
pub fn located(file: &Path, issues: Vec<Issue>) -> ConfigError {
    let src = std::fs::read_to_string(file).unwrap_or_default();
    ConfigError::Invalid {
        file: file.to_path_buf(),
        issues: in_line_order(locate_all(&src, issues)),
    }
}

/// Reads, parses, validates a config file, and loads the files it names.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    // Relative paths inside the config are relative to the config file, not to the cwd of
    // whoever started the daemon.
    let base = file.parent().unwrap_or(Path::new("."));
    let mut cfg = parse_in(&src, Some(base)).map_err(|issues| ConfigError::Invalid {
        file: file.to_path_buf(),
        issues,
    })?;
    let mut issues = Vec::new();
    if let Some(up) = cfg.upstream.as_mut() {
        if let Some(pf) = up.password_file.clone() {
            let pf = base.join(pf);
            match std::fs::read_to_string(&pf) {
                Ok(s) => up.password = Some(s.trim_end_matches(['\n', '\r']).to_string()),
                Err(e) => issues.push(Issue {
                    path: KeyPath::root().key("upstream").key("password_file"),
                    message: format!("cannot read {}: {e}", pf.display()),
                }),
            }
        }
        if let Some(tls) = up.tls.as_mut() {
            tls.ca_file = base.join(&tls.ca_file);
            if let Some((cert, key)) = tls.client.as_mut() {
                *cert = base.join(&*cert);
                *key = base.join(&*key);
            }
            let mut files = vec![("ca_file", tls.ca_file.clone())];
            if let Some((cert, key)) = &tls.client {
                files.push(("cert_file", cert.clone()));
                files.push(("key_file", key.clone()));
            }
            for (key, file) in files {
                if let Err(e) = std::fs::File::open(&file) {
                    issues.push(Issue {
                        path: KeyPath::root().key("upstream").key("tls").key(key),
                        message: format!("cannot read {}: {e}", file.display()),
                    });
                }
            }
        }
    }
    if let Some(b) = cfg.broker.as_mut() {
        load_broker_files(base, b, &mut issues);
    }
    cfg.gateway.data_dir = base.join(&cfg.gateway.data_dir);
    if issues.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid {
            file: file.to_path_buf(),
            issues: in_line_order(locate_all(&src, issues)),
        })
    }
}

/// `load`, and the data directory must be usable by this process: what `fieldbridge run` calls,
/// so the outbox's directory is refused with the other config problems (exit 2) rather than
/// failing later. `check` uses `load_to_check`. (Other commands only read the config and may
/// run as another user.)
pub fn load_to_run(file: &Path) -> Result<Config, ConfigError> {
    load_with_data_dir(file, true)
}

/// `load` for `fieldbridge check`: as `load_to_run`, except that a data directory that does not
/// exist yet under a parent this user cannot write is accepted. The packaged unit's
/// `StateDirectory=` creates `/var/lib/fieldbridge` for the service user at start, so an
/// administrator checking a file before installing (or as another user) is not told otherwise.
pub fn load_to_check(file: &Path) -> Result<Config, ConfigError> {
    load_with_data_dir(file, false)
}

fn load_with_data_dir(file: &Path, must_create: bool) -> Result<Config, ConfigError> {
    let result = load(file);
    let Ok(src) = std::fs::read_to_string(file) else {
        return result;
    };
    let dir = match &result {
        Ok(cfg) => cfg.gateway.data_dir.clone(),
        Err(_) => match data_dir_written_in(&src) {
            Some(d) => file.parent().unwrap_or(Path::new(".")).join(d),
            None => return result,
        },
    };
    let Some(message) = data_dir_problem(&dir, must_create) else {
        return result;
    };
    let found = locate_all(
        &src,
        vec![Issue {
            path: KeyPath::root().key("gateway").key("data_dir"),
            message,
        }],
    );
    match result {
        Ok(_) => Err(ConfigError::Invalid {
            file: file.to_path_buf(),
            issues: found,
        }),
        Err(ConfigError::Invalid { file, mut issues }) => {
            issues.extend(found);
            Err(ConfigError::Invalid {
                file,
                issues: in_line_order(issues),
            })
        }
        Err(e) => Err(e),
    }
}

/// The data directory of a config that did not validate, if it says one (or the default).
fn data_dir_written_in(src: &str) -> Option<String> {
    let doc = toml::from_str::<toml::Table>(src).ok()?;
    match doc.get("gateway")?.get("data_dir") {
        None => Some(raw::default_data_dir()),
        Some(v) => v.as_str().filter(|s| !s.is_empty()).map(str::to_string),
    }
}

/// Why the outbox cannot live in `dir`: it must be a directory this process can write, or one
/// it can create (the nearest existing ancestor is such a directory).
fn data_dir_problem(dir: &Path, must_create: bool) -> Option<String> {
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(m) if !m.is_dir() => {
                return Some(format!(
                    "{} cannot hold the outbox: {} is not a directory",
                    dir.display(),
                    at.display()
                ))
            }
            Ok(_) => break,
            // Walk up to what exists: a missing directory, or a file where one is expected
            // (named at the next step up).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match at.parent() {
                    Some(p) if !p.as_os_str().is_empty() => at = p,
                    _ => return None,
                }
            }
            Err(e) => {
                return Some(format!(
                    "{} cannot hold the outbox: {}: {e}",
                    dir.display(),
                    at.display()
                ))
            }
        }
    }
    if at != dir && !must_create {
        return None;
    }
    if let Err(e) = writable(at) {
        let what = if at == dir {
            "cannot write in it"
        } else {
            "cannot create it"
        };
        return Some(format!(
            "{}: {what} ({}: {e}); the service needs it writable by the user it runs as",
            dir.display(),
            at.display()
        ));
    }
    None
}

/// Whether this process may create files in the directory `dir` (also false on a read-only
/// file system, which permission bits alone do not show).
fn writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let r = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads the broker's password file into its users and checks the TLS files are readable.
fn load_broker_files(base: &Path, b: &mut Broker, issues: &mut Vec<Issue>) {
    let bp = KeyPath::root().key("broker");
    if let Some(tls) = b.tls.as_mut() {
        tls.cert_file = base.join(&tls.cert_file);
        tls.key_file = base.join(&tls.key_file);
        for (key, file) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
            if let Err(e) = std::fs::File::open(file) {
                issues.push(Issue {
                    path: bp.key("tls").key(key),
                    message: format!("cannot read {}: {e}", file.display()),
                });
            }
        }
    }
    let Some(pf) = b.password_file.as_mut() else {
        return;
    };
    *pf = base.join(&*pf);
    let key = bp.key("password_file");
    let text = match std::fs::read_to_string(&*pf) {
        Ok(t) => t,
        Err(e) => {
            issues.push(Issue {
                path: key,
                message: format!("cannot read {}: {e}", pf.display()),
            });
            return;
        }
    };
    let entries = match parse_password_file(&pf.display().to_string(), &text) {
        Ok(entries) => entries,
        Err(errors) => {
            for e in errors {
                issues.push(Issue {
                    path: key.clone(),
                    message: e.to_string(),
                });
            }
            return;
        }
    };
    for (name, hash) in entries {
        match b.users.iter_mut().find(|u| u.name == name) {
            Some(u) if u.password_hash.is_some() => issues.push(Issue {
                path: key.clone(),
                message: format!(
                    "user {name:?} has a password_hash in the config and a line in {}; keep one",
                    pf.display()
                ),
            }),
            Some(u) => u.password_hash = Some(hash),
            None => b.users.push(BrokerUser {
                name,
                password_hash: Some(hash),
                access: Access::everything(),
            }),
        }
    }
    for (i, u) in b.users.iter().enumerate() {
        if u.password_hash.is_none() {
            issues.push(Issue {
                path: bp.key("users").index(i).key("name"),
                message: format!(
                    "user {:?} has no password: set password_hash, or add a line to {} with `fieldbridge passwd --file {} {}`",
                    u.name,
                    pf.display(),
                    pf.display(),
                    u.name
                ),
            });
        }
    }
}

/// Parses and validates config text; every problem comes back located by line and key.
/// Profiles resolve against the built-in ones only (see `parse_in`).
pub fn parse_str(src: &str) -> Result<Config, Vec<Located>> {
    parse_in(src, None)
}

/// Like `parse_str`, with `base` as the directory of the config file: relative profile paths
/// and `<base>/profiles/` are looked up there.
pub fn parse_in(src: &str, base: Option<&Path>) -> Result<Config, Vec<Located>> {
    let parsed = recover::parse::<raw::RawConfig>(src);
    let mut all = parsed.problems.clone();
    if let Some(raw) = &parsed.value {
        let (profiles, problems) = load_profiles(raw, base);
        match validate::validate(raw, &profiles) {
            Ok(cfg) if all.is_empty() && problems.is_empty() => return Ok(cfg),
            Ok(_) => {}
            Err(issues) => all.extend(locate_all(&parsed.text, parsed.keep_independent(issues))),
        }
        all.extend(problems);
    }
    Err(in_line_order(all))
}

/// Every profile `raw` names, parsed and validated; problems inside a profile file come back
/// located in that file, and the device that named it gets its own issue during validation.
fn load_profiles(raw: &raw::RawConfig, base: Option<&Path>) -> (Profiles, Vec<Located>) {
    let mut profiles = Profiles::default();
    let mut problems = Vec::new();
    for (name, read) in profile::read_all(raw, base) {
        let loaded = read.and_then(|p| parse_profile(&p.text, &p.file, &mut problems));
        profiles.insert(name, loaded);
    }
    (profiles, problems)
}

/// Parses and validates one profile text; `Err` carries the summary the naming device reports.
pub fn parse_profile(
    text: &str,
    file: &Path,
    problems: &mut Vec<Located>,
) -> Result<RawProfile, String> {
    let parsed = recover::parse::<RawProfile>(text);
    let mut located = parsed.problems.clone();
    if let Some(raw) = &parsed.value {
        match validate::profile(raw) {
            Ok(()) if located.is_empty() => {
                if let Some(raw) = parsed.value {
                    return Ok(raw);
                }
            }
            Ok(()) => {}
            Err(issues) => {
                located.extend(locate_all(&parsed.text, parsed.keep_independent(issues)))
            }
        }
    }
    let located = in_line_order(located);
    let n = located.len();
    problems.extend(located.into_iter().map(|mut l| {
        l.file = Some(file.to_path_buf());
        l
    }));
    Err(format!(
        "profile {} has {n} problem{} (listed with its file name)",
        file.display(),
        if n == 1 { "" } else { "s" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::profile::BUILTIN;

    #[test]
    fn check_accepts_a_data_dir_still_to_be_created_and_both_refuse_a_file_in_its_way() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(tmp.path().join("blocker"), "x").unwrap_or_else(|e| panic!("{e}"));
        let missing = tmp.path().join("new/deeper");
        let blocked = tmp.path().join("blocker/outbox");
        for must_create in [true, false] {
            assert_eq!(data_dir_problem(&missing, must_create), None);
            let p = data_dir_problem(&blocked, must_create).unwrap_or_default();
            assert!(p.contains("is not a directory"), "{p}");
        }
        // Only `run` looks at whether the missing directory can be created by this user.
        assert_eq!(
            data_dir_problem(Path::new("/proc/1/fb-missing/data"), false),
            None
        );
    }

    #[test]
    fn every_built_in_profile_parses_and_validates() {
        for (name, text) in BUILTIN {
            let mut problems = Vec::new();
            let r = parse_profile(text, Path::new(name), &mut problems);
            assert!(r.is_ok(), "{name}: {problems:#?}");
            let raw = r.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(raw.profile.name, *name, "the file name is the profile name");
            assert!(!raw.points.is_empty(), "{name} has no points");
        }
    }
}
