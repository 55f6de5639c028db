//! Device profiles: the register map of a real device (`hardware/profiles/<name>.toml`), named by
//! a device with `profile = "<name>"` and merged under the device's own keys and points.
//!
//! Lookup order for a name: `<config dir>/profiles/<name>.toml` (so a site can add or fix a
//! profile without rebuilding), then the profiles built into the binary (the shipped ones, so a
//! config works the same wherever the package put its files). A value with a `/` or ending in
//! `.toml` is a path relative to the config file. This is the only part of config loading
//! besides `load` that reads files; problems in a profile are located in the profile's file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::raw::{RawConfig, RawProfile};
use super::Located;

/// The profiles shipped in `hardware/profiles/`, compiled in.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "eastron-sdm120",
        include_str!("../../hardware/profiles/eastron-sdm120.toml"),
    ),
    (
        "eastron-sdm630",
        include_str!("../../hardware/profiles/eastron-sdm630.toml"),
    ),
    (
        "xy-md02",
        include_str!("../../hardware/profiles/xy-md02.toml"),
    ),
];

/// Every profile a config names, loaded (or the reason it could not be).
#[derive(Debug, Default)]
pub struct Profiles {
    map: HashMap<String, Result<RawProfile, String>>,
}

impl Profiles {
    pub fn get(&self, name: &str) -> Option<&Result<RawProfile, String>> {
        self.map.get(name)
    }
}

/// Where a profile name leads.
enum Source {
    File(PathBuf),
    Builtin(&'static str),
}

fn find(name: &str, base: Option<&Path>) -> Option<Source> {
    let base = base.unwrap_or(Path::new("."));
    if name.contains('/') || name.ends_with(".toml") {
        return Some(Source::File(base.join(name)));
    }
    let local = base.join("profiles").join(format!("{name}.toml"));
    if local.is_file() {
        return Some(Source::File(local));
    }
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| Source::Builtin(text))
}

pub fn builtin_names() -> String {
    BUILTIN
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads and checks every profile `raw` names. Problems inside a profile file come back located
/// in that file; the device that named it gets its own issue during validation.
pub fn load_all(raw: &RawConfig, base: Option<&Path>) -> (Profiles, Vec<Located>) {
    let mut profiles = Profiles::default();
    let mut problems = Vec::new();
    for d in &raw.devices {
        let Some(name) = d.profile.as_deref() else {
            continue;
        };
        if profiles.map.contains_key(name) {
            continue;
        }
        let loaded = match find(name, base) {
            None => Err(format!(
                "no profile named {name:?}: none in {}, and none built in (built-in: {})",
                base.unwrap_or(Path::new(".")).join("profiles").display(),
                builtin_names()
            )),
            Some(Source::Builtin(text)) => parse(
                text,
                Path::new(&format!("<built-in profile {name}>")),
                &mut problems,
            ),
            Some(Source::File(path)) => match std::fs::read_to_string(&path) {
                Ok(text) => parse(&text, &path, &mut problems),
                Err(e) => Err(format!("cannot read profile {}: {e}", path.display())),
            },
        };
        profiles.map.insert(name.to_string(), loaded);
    }
    (profiles, problems)
}

/// Parses and validates one profile text; `Err` carries the summary the naming device reports.
pub fn parse(text: &str, file: &Path, problems: &mut Vec<Located>) -> Result<RawProfile, String> {
    let located = match toml::from_str::<RawProfile>(text) {
        Ok(raw) => match super::validate::profile(&raw) {
            Ok(()) => return Ok(raw),
            Err(issues) => super::locate_all(text, issues),
        },
        Err(e) => vec![super::locate_serde(text, &e)],
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

    #[test]
    fn every_built_in_profile_parses_and_validates() {
        for (name, text) in BUILTIN {
            let mut problems = Vec::new();
            let r = parse(text, Path::new(name), &mut problems);
            assert!(r.is_ok(), "{name}: {problems:#?}");
            let raw = r.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(raw.profile.name, *name, "the file name is the profile name");
            assert!(!raw.points.is_empty(), "{name} has no points");
        }
    }

    #[test]
    fn the_sdm630_profile_is_read_in_12_requests_per_cycle_instead_of_91() {
        let src = |extra: &str| {
            format!(
                "[gateway]\nid = \"gw\"\n[[buses]]\nname = \"b\"\nkind = \"serial\"\npath = \"/dev/ttyUSB0\"\n\
                 [[devices]]\nname = \"m\"\nkind = \"modbus_rtu\"\nbus = \"b\"\nprofile = \"eastron-sdm630\"\n{extra}"
            )
        };
        let count = |extra: &str| {
            let cfg = crate::config::parse_str(&src(extra)).unwrap_or_else(|e| panic!("{e:?}"));
            let d = &cfg.devices[0];
            (
                d.points.len(),
                crate::device::modbus::plan::plan(&d.points, &d.limits).len(),
            )
        };
        // The profile caps requests at 80 registers (the meter's documented limit) and allows
        // gaps of 2; see hardware/profiles/eastron-sdm630.toml.
        assert_eq!(count(""), (91, 12));
        assert_eq!(count("one_request_per_point = true"), (91, 91));
        // Without the cap, the first 80-register block and its neighbour merge.
        assert_eq!(count("max_registers = 125"), (91, 11));
    }
}
