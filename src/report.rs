//! Which readings of a poll are published (report strategies: `every_poll`, `on_change` with a
//! deadband, `min_interval`, `max_interval`) and in which payload shape. Pure: the pipeline owns
//! one `ReportState` and feeds it each poll's readings in order; nothing here does I/O or reads a
//! clock (time is the readings' own `ts_ms`), so every rule is a table test.
//!
//! The comparison is always with the last *published* reading of the point, so a slow drift
//! under the deadband still publishes once it adds up, and a change held back by `min_interval`
//! is published when the interval is over. A quality change (good ↔ bad, or a new error)
//! publishes at once, whatever the strategy. After a device status change the device starts
//! over: its next poll publishes every point.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::serial::{Mode, Protocol};
use crate::config::spec::report::{Deadband, PayloadShape, ReportPolicy, Strategy};
use crate::config::Config;
use crate::flow::{Quality, Reading, Value};

/// What was last published for one point.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    value: Value,
    quality: Quality,
    error: Option<String>,
    ts_ms: i64,
}

impl Published {
    fn of(r: &Reading) -> Self {
        Published {
            value: r.value.clone(),
            quality: r.quality,
            error: r.error.clone(),
            ts_ms: r.ts_ms,
        }
    }
}

/// Whether reading `r` is published under `policy`, given what was published last. `slack_ms`
/// is how early an interval may count as over: polls come round on a schedule, so a
/// `max_interval` of 10 s on a 1 s poll is due at the poll nearest to 10 s, not the one after.
pub fn decide(policy: &ReportPolicy, last: Option<&Published>, r: &Reading, slack_ms: i64) -> bool {
    let Some(last) = last else {
        return true;
    };
    if r.quality != last.quality || r.error != last.error {
        return true;
    }
    let elapsed = r.ts_ms - last.ts_ms;
    // The wall clock went back (an RTC-less board setting its time): start over.
    if elapsed < 0 {
        return true;
    }
    let reached = |d: Duration| elapsed.saturating_add(slack_ms) >= millis(d);
    if let Some(min) = policy.min_interval {
        if !reached(min) {
            return false;
        }
    }
    match policy.strategy {
        Strategy::EveryPoll => true,
        Strategy::OnChange => {
            changed(policy.deadband, &last.value, &r.value)
                || policy.max_interval.is_some_and(reached)
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Numbers change by more than the deadband (strictly); anything else (booleans, strings, null,
/// a change of type) on any difference.
fn changed(deadband: Option<Deadband>, old: &Value, new: &Value) -> bool {
    let (Some(band), Some(a), Some(b)) = (deadband, number(old), number(new)) else {
        return old != new;
    };
    let moved = (b - a).abs();
    match band {
        Deadband::Absolute(d) => moved > d,
        Deadband::Percent(p) => moved > a.abs() * p / 100.0,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// A device's report settings: its payload shape and each point's policy.
#[derive(Debug, Clone, Default)]
pub struct DevicePlan {
    pub shape: PayloadShape,
    /// For points not named in `points` (a serial driver's built-in points).
    pub default: ReportPolicy,
    /// Only the points whose policy differs from `default`: most configs set a policy per
    /// device, and a map of thousands of copies of it is a quarter MiB for nothing.
    pub points: HashMap<Arc<str>, ReportPolicy>,
    /// Half the poll interval (see `decide`); 0 for a sensor that streams.
    pub slack: Duration,
}

impl DevicePlan {
    pub fn modbus(d: &crate::config::Device) -> Self {
        DevicePlan {
            shape: d.payload,
            default: d.report,
            points: d
                .points
                .iter()
                .filter(|p| p.report != d.report)
                .map(|p| (p.name.clone(), p.report))
                .collect(),
            slack: d.interval / 2,
        }
    }

    pub fn serial(d: &crate::config::serial::SerialDevice) -> Self {
        let points = match &d.protocol {
            Protocol::Custom { points, .. } => points
                .iter()
                .filter(|p| p.report != d.report)
                .map(|p| (p.name.clone(), p.report))
                .collect(),
            Protocol::Sensor(_) => HashMap::new(),
        };
        let slack = match &d.mode {
            Mode::Polled { interval, .. } => *interval / 2,
            Mode::Stream => Duration::ZERO,
        };
        DevicePlan {
            shape: d.payload,
            default: d.report,
            points,
            slack,
        }
    }

    fn policy(&self, point: &str) -> &ReportPolicy {
        self.points.get(point).unwrap_or(&self.default)
    }
}

#[derive(Default)]
struct DeviceState {
    plan: DevicePlan,
    last: HashMap<Arc<str>, Published>,
}

/// The report state of every device: held by the pipeline, fed one poll at a time.
#[derive(Default)]
pub struct ReportState {
    devices: HashMap<Arc<str>, DeviceState>,
}

impl ReportState {
    pub fn new(plans: impl IntoIterator<Item = (Arc<str>, DevicePlan)>) -> Self {
        ReportState {
            devices: plans
                .into_iter()
                .map(|(name, plan)| {
                    let state = DeviceState {
                        plan,
                        last: HashMap::new(),
                    };
                    (name, state)
                })
                .collect(),
        }
    }

    /// Every Modbus and serial device of the config.
    pub fn from_config(cfg: &Config) -> Self {
        let modbus = cfg
            .devices
            .iter()
            .map(|d| (d.name.clone(), DevicePlan::modbus(d)));
        let serial = cfg
            .serial_devices
            .iter()
            .map(|d| (d.name.clone(), DevicePlan::serial(d)));
        ReportState::new(modbus.chain(serial).collect::<Vec<_>>())
    }

    /// A reload changed (`Some`) or removed (`None`) `device`: its points start over.
    pub fn set_plan(&mut self, device: Arc<str>, plan: Option<DevicePlan>) {
        match plan {
            Some(plan) => {
                self.devices.insert(
                    device,
                    DeviceState {
                        plan,
                        last: HashMap::new(),
                    },
                );
            }
            None => {
                self.devices.remove(&device);
            }
        }
    }

    /// The payload shape of `device` (a device the config does not name: one per point).
    pub fn shape(&self, device: &str) -> PayloadShape {
        self.devices
            .get(device)
            .map(|d| d.plan.shape)
            .unwrap_or_default()
    }

    /// Whether each reading of one poll is published, in order; the published ones become the
    /// point's last published reading.
    pub fn select(&mut self, readings: &[Reading]) -> Vec<bool> {
        let Some(first) = readings.first() else {
            return Vec::new();
        };
        let Some(dev) = self.devices.get_mut(&first.device) else {
            return vec![true; readings.len()];
        };
        let slack_ms = millis(dev.plan.slack);
        readings
            .iter()
            .map(|r| {
                let policy = dev.plan.policy(&r.point);
                // The default needs no memory: every reading goes.
                if *policy == ReportPolicy::default() {
                    return true;
                }
                let publish = decide(policy, dev.last.get(&r.point), r, slack_ms);
                if publish {
                    match dev.last.get_mut(&r.point) {
                        Some(last) => *last = Published::of(r),
                        None => {
                            dev.last.insert(r.point.clone(), Published::of(r));
                        }
                    }
                }
                publish
            })
            .collect()
    }

    /// The device went online or offline: its next poll publishes every point.
    pub fn restart(&mut self, device: &str) {
        if let Some(d) = self.devices.get_mut(device) {
            d.last.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(value: Value, ts_ms: i64) -> Reading {
        Reading {
            device: "d".into(),
            point: "p".into(),
            value,
            unit: None,
            ts_ms,
            quality: Quality::Good,
            error: None,
        }
    }

    fn bad(error: &str, ts_ms: i64) -> Reading {
        Reading {
            quality: Quality::Bad,
            error: Some(error.into()),
            ..r(Value::Null, ts_ms)
        }
    }

    fn on_change(deadband: Option<Deadband>) -> ReportPolicy {
        ReportPolicy {
            strategy: Strategy::OnChange,
            deadband,
            ..ReportPolicy::default()
        }
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn each_strategy_publishes_exactly_the_readings_its_rules_select() {
        use Value::*;
        let every = ReportPolicy::default();
        let change = on_change(None);
        let abs = on_change(Some(Deadband::Absolute(0.5)));
        let pct = on_change(Some(Deadband::Percent(10.0)));
        let heartbeat = ReportPolicy {
            max_interval: secs(10),
            ..on_change(Some(Deadband::Absolute(5.0)))
        };
        let throttled = ReportPolicy {
            min_interval: secs(5),
            ..on_change(None)
        };
        let slow_every = ReportPolicy {
            min_interval: secs(5),
            ..every
        };
        // (what, policy, last published, reading, published?)
        let cases: Vec<(&str, ReportPolicy, Option<Reading>, Reading, bool)> = vec![
            ("first reading", change, None, r(Float(1.0), 0), true),
            (
                "every_poll, unchanged",
                every,
                Some(r(Float(1.0), 0)),
                r(Float(1.0), 1000),
                true,
            ),
            (
                "on_change, unchanged",
                change,
                Some(r(Float(1.0), 0)),
                r(Float(1.0), 1000),
                false,
            ),
            (
                "on_change, changed",
                change,
                Some(r(Float(1.0), 0)),
                r(Float(1.1), 1000),
                true,
            ),
            (
                "integer unchanged",
                change,
                Some(r(UInt(7), 0)),
                r(UInt(7), 1000),
                false,
            ),
            (
                "integer changed",
                change,
                Some(r(Int(7), 0)),
                r(Int(8), 1000),
                true,
            ),
            (
                "under the deadband",
                abs,
                Some(r(Float(20.0), 0)),
                r(Float(20.4), 1000),
                false,
            ),
            (
                "under the deadband, down",
                abs,
                Some(r(Float(20.0), 0)),
                r(Float(19.6), 1000),
                false,
            ),
            (
                "exactly the deadband",
                abs,
                Some(r(Float(20.0), 0)),
                r(Float(20.5), 1000),
                false,
            ),
            (
                "over the deadband",
                abs,
                Some(r(Float(20.0), 0)),
                r(Float(20.6), 1000),
                true,
            ),
            (
                "over the deadband, down",
                abs,
                Some(r(Float(20.0), 0)),
                r(Float(19.4), 1000),
                true,
            ),
            (
                "integer over the deadband",
                abs,
                Some(r(UInt(20), 0)),
                r(UInt(21), 1000),
                true,
            ),
            (
                "under 10 %",
                pct,
                Some(r(Float(200.0), 0)),
                r(Float(219.0), 1000),
                false,
            ),
            (
                "over 10 %",
                pct,
                Some(r(Float(200.0), 0)),
                r(Float(221.0), 1000),
                true,
            ),
            (
                "percent of zero",
                pct,
                Some(r(Float(0.0), 0)),
                r(Float(0.001), 1000),
                true,
            ),
            (
                "bool flips",
                abs,
                Some(r(Bool(false), 0)),
                r(Bool(true), 1000),
                true,
            ),
            (
                "bool same",
                abs,
                Some(r(Bool(true), 0)),
                r(Bool(true), 1000),
                false,
            ),
            (
                "text differs",
                abs,
                Some(r(Text("a".into()), 0)),
                r(Text("b".into()), 1000),
                true,
            ),
            (
                "text same",
                change,
                Some(r(Text("a".into()), 0)),
                r(Text("a".into()), 1000),
                false,
            ),
            (
                "number to null",
                abs,
                Some(r(Float(1.0), 0)),
                r(Null, 1000),
                true,
            ),
            (
                "good to bad",
                abs,
                Some(r(Float(1.0), 0)),
                bad("exception 2", 1000),
                true,
            ),
            (
                "bad to good",
                abs,
                Some(bad("exception 2", 0)),
                r(Float(1.0), 1000),
                true,
            ),
            (
                "a new error",
                change,
                Some(bad("exception 2", 0)),
                bad("exception 4", 1000),
                true,
            ),
            (
                "the same error",
                change,
                Some(bad("exception 2", 0)),
                bad("exception 2", 1000),
                false,
            ),
            (
                "quality change inside min_interval",
                throttled,
                Some(r(Float(1.0), 0)),
                bad("x", 1000),
                true,
            ),
            (
                "heartbeat not due",
                heartbeat,
                Some(r(Float(1.0), 0)),
                r(Float(1.0), 9000),
                false,
            ),
            (
                "heartbeat due",
                heartbeat,
                Some(r(Float(1.0), 0)),
                r(Float(1.0), 10_000),
                true,
            ),
            (
                "heartbeat due within slack",
                heartbeat,
                Some(r(Float(1.0), 0)),
                r(Float(1.0), 9_600),
                true,
            ),
            (
                "change inside min_interval",
                throttled,
                Some(r(Float(1.0), 0)),
                r(Float(2.0), 4000),
                false,
            ),
            (
                "change after min_interval",
                throttled,
                Some(r(Float(1.0), 0)),
                r(Float(2.0), 5000),
                true,
            ),
            (
                "no change after min_interval",
                throttled,
                Some(r(Float(1.0), 0)),
                r(Float(1.0), 9000),
                false,
            ),
            (
                "every_poll inside min_interval",
                slow_every,
                Some(r(Float(1.0), 0)),
                r(Float(1.0), 4000),
                false,
            ),
            (
                "every_poll after min_interval",
                slow_every,
                Some(r(Float(1.0), 0)),
                r(Float(1.0), 5000),
                true,
            ),
            (
                "clock went back",
                change,
                Some(r(Float(1.0), 5000)),
                r(Float(1.0), 1000),
                true,
            ),
        ];
        for (what, policy, last, reading, want) in cases {
            let last = last.as_ref().map(Published::of);
            assert_eq!(
                decide(&policy, last.as_ref(), &reading, 500),
                want,
                "{what}"
            );
        }
    }

    fn reporter(policy: ReportPolicy) -> ReportState {
        ReportState::new([(
            Arc::from("d"),
            DevicePlan {
                shape: PayloadShape::Device,
                default: policy,
                points: HashMap::new(),
                slack: Duration::ZERO,
            },
        )])
    }

    #[test]
    fn a_drift_under_the_deadband_publishes_once_it_adds_up_against_the_last_published_value() {
        let mut rep = reporter(on_change(Some(Deadband::Absolute(1.0))));
        let got: Vec<bool> = [10.0, 10.4, 10.8, 11.2, 11.5, 12.3]
            .iter()
            .enumerate()
            .map(|(i, v)| rep.select(&[r(Value::Float(*v), i as i64 * 1000)])[0])
            .collect();
        assert_eq!(got, [true, false, false, true, false, true]);
    }

    #[test]
    fn a_heartbeat_carries_the_value_of_its_own_poll_and_restarts_the_interval() {
        let policy = ReportPolicy {
            max_interval: secs(3),
            ..on_change(Some(Deadband::Absolute(100.0)))
        };
        let mut rep = reporter(policy);
        let published: Vec<f64> = (0..8)
            .map(|s| r(Value::Float(s as f64), s * 1000))
            .filter(|x| rep.select(std::slice::from_ref(x))[0])
            .map(|x| match x.value {
                Value::Float(f) => f,
                _ => f64::NAN,
            })
            .collect();
        assert_eq!(published, [0.0, 3.0, 6.0]);
    }

    #[test]
    fn after_a_status_change_the_next_poll_publishes_every_point() {
        let mut rep = reporter(on_change(None));
        assert_eq!(rep.select(&[r(Value::Int(1), 0)]), [true]);
        assert_eq!(rep.select(&[r(Value::Int(1), 1000)]), [false]);
        rep.restart("d");
        assert_eq!(rep.select(&[r(Value::Int(1), 2000)]), [true]);
    }

    #[test]
    fn a_device_the_config_does_not_name_publishes_every_reading_one_per_point() {
        let mut rep = ReportState::default();
        let x = r(Value::Int(1), 0);
        assert_eq!(rep.select(&[x.clone(), x]), [true, true]);
        assert_eq!(rep.shape("d"), PayloadShape::Point);
    }
}
