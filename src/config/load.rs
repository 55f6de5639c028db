//! Loading a config: read the file, parse (`raw`), read the device profiles it names
//! (`profile`), validate everything at once (`validate`), locate each problem by file, line and
//! key (`locate`), then read the files the config points at (passwords, certificates). The only
//! part of config/ that touches the file system besides `profile`.

use std::path::{Path, PathBuf};

use crate::config::locate::{locate_all, locate_serde, Issue, KeyPath, Located};
use crate::config::model::{Broker, BrokerUser, Config};
use crate::config::profile::{self, Profiles};
use crate::config::raw::{self, RawProfile};
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
        let f = i.file.as_deref().unwrap_or(file);
        match i.line {
            Some(l) => out.push_str(&format!("{}:{l}: ", f.display())),
            None => out.push_str(&format!("{}: ", f.display())),
        }
        if !i.key.is_empty() {
            out.push_str(&format!("key '{}': ", i.key));
        }
        out.push_str(&i.message);
    }
    out
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
            issues: locate_all(&src, issues),
        })
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
    let raw: raw::RawConfig = match toml::from_str(src) {
        Ok(r) => r,
        Err(e) => return Err(vec![locate_serde(src, &e)]),
    };
    let (profiles, problems) = load_profiles(&raw, base);
    match validate::validate(&raw, &profiles) {
        Ok(cfg) if problems.is_empty() => Ok(cfg),
        Ok(_) => Err(problems),
        Err(issues) => {
            let mut all = locate_all(src, issues);
            all.extend(problems);
            Err(all)
        }
    }
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
    let located = match toml::from_str::<RawProfile>(text) {
        Ok(raw) => match validate::profile(&raw) {
            Ok(()) => return Ok(raw),
            Err(issues) => locate_all(text, issues),
        },
        Err(e) => vec![locate_serde(text, &e)],
    };
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
