//! Device profiles: the register map of a real device (`hardware/profiles/<name>.toml`), named by
//! a device with `profile = "<name>"` and merged under the device's own keys and points.
//!
//! Lookup order for a name: `<config dir>/profiles/<name>.toml` (so a site can add or fix a
//! profile without rebuilding), then the profiles built into the binary (the shipped ones, so a
//! config works the same wherever the package put its files). A value with a `/` or ending in
//! `.toml` is a path relative to the config file. This module only finds and reads profile
//! files; `config::load` parses and validates them and locates their problems in their own file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::raw::{RawConfig, RawProfile};

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
    pub fn insert(&mut self, name: String, loaded: Result<RawProfile, String>) {
        self.map.insert(name, loaded);
    }

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

/// The text of one profile and the file it came from (a made-up name for a built-in one).
#[derive(Debug)]
pub struct ProfileText {
    pub file: PathBuf,
    pub text: String,
}

/// Reads the text of every profile `raw` names, once per name, or the reason it could not be
/// read. Parsing and validation are `config::load`'s job.
pub fn read_all(
    raw: &RawConfig,
    base: Option<&Path>,
) -> Vec<(String, Result<ProfileText, String>)> {
    let mut out: Vec<(String, Result<ProfileText, String>)> = Vec::new();
    for d in &raw.devices {
        let Some(name) = d.profile.as_deref() else {
            continue;
        };
        if out.iter().any(|(n, _)| n == name) {
            continue;
        }
        let read = match find(name, base) {
            None => Err(format!(
                "no profile named {name:?}: none in {}, and none built in (built-in: {})",
                base.unwrap_or(Path::new(".")).join("profiles").display(),
                builtin_names()
            )),
            Some(Source::Builtin(text)) => Ok(ProfileText {
                file: PathBuf::from(format!("<built-in profile {name}>")),
                text: text.to_string(),
            }),
            Some(Source::File(path)) => match std::fs::read_to_string(&path) {
                Ok(text) => Ok(ProfileText { file: path, text }),
                Err(e) => Err(format!("cannot read profile {}: {e}", path.display())),
            },
        };
        out.push((name.to_string(), read));
    }
    out
}

#[cfg(test)]
mod tests {

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
