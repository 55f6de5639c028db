//! Validation of the report keys (`report`, `deadband`, `deadband_percent`, `min_interval`,
//! `max_interval`) on a device (its points' default) and on a point, and of a device's
//! `payload` shape. Shared by Modbus and serial devices. A point's policy starts from its
//! device's and replaces what it sets itself; a point that sets either deadband replaces both.

use std::time::Duration;

use super::super::locate::KeyPath;
use super::super::raw::{RawDevice, RawPoint};
use super::check::Check;
use crate::config::spec::report::{Deadband, PayloadShape, ReportPolicy, Strategy};

/// The report keys of one table (a `[[devices]]` or a `[[devices.points]]`), as written.
#[derive(Default, Clone, Copy)]
pub(super) struct Keys<'a> {
    pub report: Option<&'a str>,
    pub deadband: Option<f64>,
    pub deadband_percent: Option<f64>,
    pub min_interval: Option<&'a str>,
    pub max_interval: Option<&'a str>,
}

impl<'a> Keys<'a> {
    pub fn of_device(d: &'a RawDevice) -> Self {
        Keys {
            report: d.report.as_deref(),
            deadband: d.deadband,
            deadband_percent: d.deadband_percent,
            min_interval: d.min_interval.as_deref(),
            max_interval: d.max_interval.as_deref(),
        }
    }
    pub fn of_point(pt: &'a RawPoint) -> Self {
        Keys {
            report: pt.report.as_deref(),
            deadband: pt.deadband,
            deadband_percent: pt.deadband_percent,
            min_interval: pt.min_interval.as_deref(),
            max_interval: pt.max_interval.as_deref(),
        }
    }
}

const SHORTEST: Duration = Duration::from_millis(10);
const LONGEST: Duration = Duration::from_secs(7 * 86_400);

pub(super) fn payload(c: &mut Check, p: &KeyPath, raw: Option<&str>) -> PayloadShape {
    match raw {
        Some(s) => c.parsed(
            p.key("payload"),
            s,
            "payload shape",
            PayloadShape::NAMES,
            PayloadShape::Point,
        ),
        None => PayloadShape::Point,
    }
}

/// The policy of a table with keys `k` under `inherited` (a device: the built-in default).
/// `numeric` is false for a bool or string point, which changes on any difference.
pub(super) fn policy(
    c: &mut Check,
    p: &KeyPath,
    k: Keys<'_>,
    inherited: &ReportPolicy,
    numeric: bool,
) -> ReportPolicy {
    let strategy = match k.report {
        Some(s) => c.parsed(
            p.key("report"),
            s,
            "report strategy",
            Strategy::NAMES,
            Strategy::EveryPoll,
        ),
        None => inherited.strategy,
    };
    let mut own_band = None;
    for (key, v) in [
        ("deadband", k.deadband.map(Deadband::Absolute)),
        (
            "deadband_percent",
            k.deadband_percent.map(Deadband::Percent),
        ),
    ] {
        let Some(band) = v else { continue };
        let (Deadband::Absolute(x) | Deadband::Percent(x)) = band;
        if !numeric {
            c.push(
                p.key(key),
                "a bool or string point changes on any difference; remove it",
            );
        } else if !x.is_finite() || x < 0.0 {
            c.push(p.key(key), "must be a finite number, 0 or more");
        } else if strategy != Strategy::OnChange {
            c.push(p.key(key), "a deadband applies to report = \"on_change\"");
        } else if own_band.is_some() {
            c.push(
                p.key(key),
                "set one of deadband (absolute, in the published unit) or deadband_percent, not both",
            );
        } else {
            own_band = Some(band);
        }
    }
    let set_band = k.deadband.is_some() || k.deadband_percent.is_some();
    let deadband = match (set_band, numeric, strategy) {
        (true, _, _) => own_band,
        (false, true, Strategy::OnChange) => inherited.deadband,
        _ => None,
    };
    let mut interval = |key: &str, own: Option<&str>, inherited: Option<Duration>| match own {
        Some(s) => Some(c.duration(p.key(key), s, SHORTEST, LONGEST)),
        None => inherited,
    };
    let min_interval = interval("min_interval", k.min_interval, inherited.min_interval);
    let max_interval = match strategy {
        Strategy::OnChange => interval("max_interval", k.max_interval, inherited.max_interval),
        Strategy::EveryPoll => {
            if k.max_interval.is_some() {
                c.push(
                    p.key("max_interval"),
                    "applies to report = \"on_change\" (every_poll already publishes every poll)",
                );
            }
            None
        }
    };
    if let (Some(lo), Some(hi)) = (min_interval, max_interval) {
        if lo > hi {
            let key = if k.min_interval.is_some() {
                "min_interval"
            } else {
                "max_interval"
            };
            c.push(
                p.key(key),
                format!(
                    "min_interval {} is longer than max_interval {}",
                    humantime::format_duration(lo),
                    humantime::format_duration(hi)
                ),
            );
        }
    }
    ReportPolicy {
        strategy,
        deadband,
        min_interval,
        max_interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(k: Keys<'_>, inherited: ReportPolicy, numeric: bool) -> (ReportPolicy, Vec<String>) {
        let mut c = Check::default();
        let got = policy(&mut c, &KeyPath::root().key("pt"), k, &inherited, numeric);
        let issues = c
            .issues
            .iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect();
        (got, issues)
    }

    const ON_CHANGE: Keys<'static> = Keys {
        report: Some("on_change"),
        deadband: None,
        deadband_percent: None,
        min_interval: None,
        max_interval: None,
    };

    #[test]
    fn each_invalid_combination_of_report_keys_names_its_key() {
        let none = ReportPolicy::default();
        let cases: Vec<(&str, Keys, bool, &str)> = vec![
            (
                "unknown",
                Keys {
                    report: Some("sometimes"),
                    ..Keys::default()
                },
                true,
                "pt.report: unknown report strategy",
            ),
            (
                "deadband on a bool",
                Keys {
                    deadband: Some(1.0),
                    ..ON_CHANGE
                },
                false,
                "pt.deadband: a bool or string point",
            ),
            (
                "negative deadband",
                Keys {
                    deadband: Some(-1.0),
                    ..ON_CHANGE
                },
                true,
                "pt.deadband: must be a finite number, 0 or more",
            ),
            (
                "negative percent",
                Keys {
                    deadband_percent: Some(-5.0),
                    ..ON_CHANGE
                },
                true,
                "pt.deadband_percent: must be",
            ),
            (
                "both kinds",
                Keys {
                    deadband: Some(1.0),
                    deadband_percent: Some(5.0),
                    ..ON_CHANGE
                },
                true,
                "pt.deadband_percent: set one of",
            ),
            (
                "deadband with every_poll",
                Keys {
                    deadband: Some(1.0),
                    ..Keys::default()
                },
                true,
                "pt.deadband: a deadband applies to report = \"on_change\"",
            ),
            (
                "max_interval with every_poll",
                Keys {
                    max_interval: Some("1m"),
                    ..Keys::default()
                },
                true,
                "pt.max_interval: applies to",
            ),
            (
                "min over max",
                Keys {
                    min_interval: Some("2m"),
                    max_interval: Some("1m"),
                    ..ON_CHANGE
                },
                true,
                "pt.min_interval: min_interval 2m is longer than max_interval 1m",
            ),
            (
                "bad duration",
                Keys {
                    min_interval: Some("soon"),
                    ..ON_CHANGE
                },
                true,
                "pt.min_interval: \"soon\" is not a duration",
            ),
        ];
        for (what, k, numeric, want) in cases {
            let (_, issues) = run(k, none, numeric);
            assert!(
                issues.len() == 1 && issues[0].starts_with(want),
                "{what}: {issues:?}"
            );
        }
    }

    #[test]
    fn a_point_inherits_the_device_policy_and_replaces_what_it_sets() {
        let device = ReportPolicy {
            strategy: Strategy::OnChange,
            deadband: Some(Deadband::Percent(2.0)),
            min_interval: None,
            max_interval: Some(Duration::from_secs(60)),
        };
        let (p, issues) = run(Keys::default(), device, true);
        assert_eq!((p, issues.len()), (device, 0));
        let (p, _) = run(
            Keys {
                deadband: Some(0.5),
                ..Keys::default()
            },
            device,
            true,
        );
        assert_eq!(p.deadband, Some(Deadband::Absolute(0.5)));
        assert_eq!(p.max_interval, device.max_interval);
        // A bool point under a device deadband changes on any difference.
        let (p, issues) = run(Keys::default(), device, false);
        assert_eq!((p.deadband, issues.len()), (None, 0));
        let (p, issues) = run(
            Keys {
                report: Some("every_poll"),
                ..Keys::default()
            },
            device,
            true,
        );
        assert_eq!((p, issues.len()), (ReportPolicy::default(), 0));
    }
}
