//! Configuration: one TOML file → `Config`, or every problem of the file at once.
//!
//! Two stages: `raw` (serde, `deny_unknown_fields`) then `validate` (pure: no files, no network),
//! which collects every issue with its key path. `load` adds the file name and line to each issue
//! (`locate`) and reads the files the config points at (profiles, password file, CA file).
//! `model` is what the rest of the gateway reads; `spec` is the vocabulary shared with `device/`
//! and `guard/`. Nothing else in the crate sees raw config.

pub mod load;
pub mod locate;
pub mod model;
pub mod profile;
pub mod raw;
mod recover;
pub mod serial;
pub mod spec;
mod validate;

pub use load::{load, load_to_check, load_to_run, parse_in, parse_str, ConfigError};
pub use locate::{Issue, Located};
pub use model::*;
