//! The collector every validation step writes into: one `Issue` per problem, with its key path,
//! and typed helpers (durations, integers, names, topic levels) that record a problem and
//! return a usable default, so validation goes on and reports everything at once.

use std::time::Duration;

use crate::config::locate::{Issue, KeyPath};
use crate::config::spec::topic::topic_level_problem;

#[derive(Default)]
pub struct Check {
    pub(super) issues: Vec<Issue>,
}

impl Check {
    pub(super) fn push(&mut self, path: KeyPath, message: impl Into<String>) {
        self.issues.push(Issue {
            path,
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        path: KeyPath,
        s: &str,
        min: Duration,
        max: Duration,
    ) -> Duration {
        match humantime::parse_duration(s) {
            Ok(d) if d < min || d > max => {
                self.push(
                    path,
                    format!(
                        "{s:?} is out of range; valid: {} to {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
                min
            }
            Ok(d) => d,
            Err(e) => {
                self.push(
                    path,
                    format!("{s:?} is not a duration ({e}); write e.g. \"500ms\", \"5s\", \"2m\""),
                );
                min
            }
        }
    }

    pub(super) fn int<T: TryFrom<i64> + Default>(
        &mut self,
        path: KeyPath,
        v: i64,
        lo: i64,
        hi: i64,
    ) -> T {
        if v < lo || v > hi {
            self.push(path, format!("{v} is out of range; valid: {lo} to {hi}"));
            return T::default();
        }
        T::try_from(v).unwrap_or_default()
    }

    pub(super) fn parsed<T: std::str::FromStr + Copy>(
        &mut self,
        path: KeyPath,
        s: &str,
        what: &str,
        valid: &str,
        fallback: T,
    ) -> T {
        match s.parse() {
            Ok(v) => v,
            Err(_) => {
                self.push(path, format!("unknown {what} {s:?}; valid: {valid}"));
                fallback
            }
        }
    }

    /// Keys that belong to another kind of device or point: each one set is named.
    pub(super) fn not_used(&mut self, p: &KeyPath, keys: &[(&str, bool)], why: &str) {
        for (k, set) in keys {
            if *set {
                self.push(p.key(k), why);
            }
        }
    }

    /// Rules every point's name and value transform follow, whatever the device kind.
    pub(super) fn point_common(&mut self, p: &KeyPath, name: &str, scale: f64, offset: f64) {
        self.topic_level(p.key("name"), name);
        if name == crate::config::spec::topic::RESERVED_POINT {
            self.push(
                p.key("name"),
                "\"status\" is reserved for the device status topic; choose another name",
            );
        }
        if !scale.is_finite() || scale == 0.0 {
            self.push(p.key("scale"), "must be a finite, non-zero number");
        }
        if !offset.is_finite() {
            self.push(p.key("offset"), "must be a finite number");
        }
    }

    /// `decimals` of a point: places kept after scale and offset, on numbers only.
    pub(super) fn decimals(&mut self, p: &KeyPath, v: Option<i64>, numeric: bool) -> Option<u8> {
        let v = v?;
        if !numeric {
            self.push(
                p.key("decimals"),
                "only a numeric point is rounded; remove decimals",
            );
            return None;
        }
        Some(self.int(p.key("decimals"), v, 0, 15))
    }

    pub(super) fn topic_level(&mut self, path: KeyPath, s: &str) {
        if let Some(p) = topic_level_problem(s) {
            self.push(path, format!("{s:?} {p} (it becomes a topic level)"));
        }
    }
}
