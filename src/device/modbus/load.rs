//! How busy a Modbus line is, pure: the share of wall time it spends on exchanges, each unit's
//! part of that and its response times, over windows of a few seconds; and whether the line is
//! overrun. Time is passed in; the bus owner (`bus`) feeds it and logs what it decides.
//!
//! Overrun: a line cannot keep its devices' intervals when polls end after the next one was
//! due (the pollers report those, `late`), or when it is busy nearly the whole window (it never
//! waits for a poll to come due). The units that take most of the line are the ones to look at
//! (a slow unit, a short timeout, too many requests).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::ops::stats::{LineLoad, ResponseTimes};

/// Length of one load window.
pub const WINDOW: Duration = Duration::from_secs(5);

/// Busy share from which a line counts as overrun.
pub const OVERRUN_BUSY: f64 = 0.9;

/// Late polls in one window from which a line counts as overrun (one can be a retry).
pub const OVERRUN_LATE: u64 = 2;

/// How many of the busiest units an overrun names.
const NAMED: usize = 3;

#[derive(Debug, Default, Clone, Copy)]
struct Acc {
    busy: Duration,
    answers: u32,
    response: Duration,
    max: Duration,
}

/// The window being measured.
#[derive(Debug)]
pub struct Load {
    window: Duration,
    started: Instant,
    busy: Duration,
    units: BTreeMap<u8, Acc>,
}

/// One unit's part in a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub unit: u8,
    /// Percent of the window the line spent on this unit.
    pub busy_pct: f64,
    /// Mean response time in ms (`None`: no answer in the window).
    pub mean_ms: Option<f64>,
}

/// A completed window.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub load: LineLoad,
    /// Millisecond the line was busy in it.
    pub busy_ms: u64,
    /// Polls that ended after their next one was due.
    pub late: u64,
    pub overrun: bool,
    /// The units that took most of the line, busiest first (at most three).
    pub busiest: Vec<Share>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Load {
    pub fn new(window: Duration, now: Instant) -> Self {
        Load {
            window,
            started: now,
            busy: Duration::ZERO,
            units: BTreeMap::new(),
        }
    }

    /// When the current window is due to close.
    pub fn ends(&self) -> Instant {
        self.started + self.window
    }

    /// The line spent `d` on a job of `unit` (every attempt, silence and waits included).
    pub fn busy(&mut self, unit: u8, d: Duration) {
        self.busy += d;
        self.units.entry(unit).or_default().busy += d;
    }

    /// `unit` answered `d` after its request went out.
    pub fn answered(&mut self, unit: u8, d: Duration) {
        let a = self.units.entry(unit).or_default();
        a.answers += 1;
        a.response += d;
        a.max = a.max.max(d);
    }

    /// Closes the window if it is over at `now` and starts the next one; `late` polls of the
    /// line's devices ended in it after their next poll was due.
    pub fn close(&mut self, now: Instant, late: u64) -> Option<Window> {
        if now < self.ends() {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.started).max(self.window);
        let share = |d: Duration| (d.as_secs_f64() / elapsed.as_secs_f64()).min(1.0);
        let busy = share(self.busy);
        let mut busiest: Vec<Share> = self
            .units
            .iter()
            .filter(|(_, a)| !a.busy.is_zero())
            .map(|(unit, a)| Share {
                unit: *unit,
                busy_pct: round1(share(a.busy) * 100.0),
                mean_ms: (a.answers > 0).then(|| round1(ms(a.response) / f64::from(a.answers))),
            })
            .collect();
        busiest.sort_by(|a, b| b.busy_pct.total_cmp(&a.busy_pct).then(a.unit.cmp(&b.unit)));
        busiest.truncate(NAMED);
        let response = self
            .units
            .iter()
            .filter(|(_, a)| a.answers > 0)
            .map(|(unit, a)| {
                (
                    *unit,
                    ResponseTimes {
                        mean_ms: round1(ms(a.response) / f64::from(a.answers)),
                        max_ms: round1(ms(a.max)),
                    },
                )
            })
            .collect();
        let w = Window {
            load: LineLoad {
                busy_pct: round1(busy * 100.0),
                response,
            },
            busy_ms: u64::try_from(self.busy.as_millis()).unwrap_or(u64::MAX),
            late,
            overrun: busy >= OVERRUN_BUSY || late >= OVERRUN_LATE,
            busiest,
        };
        *self = Load::new(self.window, now);
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// (what, per unit: (busy ms, response times in ms), late polls, busy %, overrun, busiest
    /// units)
    type Case = (
        &'static str,
        Vec<(u8, u64, Vec<u64>)>,
        u64,
        f64,
        bool,
        Vec<u8>,
    );

    #[test]
    fn a_window_reports_busy_share_response_times_and_overrun_naming_the_busiest_units() {
        let cases: Vec<Case> = vec![
            ("an idle line", vec![], 0, 0.0, false, vec![]),
            (
                "four fast units keep up",
                vec![
                    (1, 300, vec![15; 20]),
                    (2, 300, vec![15; 20]),
                    (3, 300, vec![15; 20]),
                    (4, 300, vec![15; 20]),
                ],
                0,
                24.0,
                false,
                vec![1, 2, 3],
            ),
            (
                "one slow unit fills the line",
                vec![
                    (1, 400, vec![15; 25]),
                    (2, 400, vec![15; 25]),
                    (3, 3800, vec![250; 15]),
                    (4, 400, vec![15; 25]),
                ],
                0,
                100.0,
                true,
                vec![3, 1, 2],
            ),
            (
                "a dead unit's timeouts count as busy time, without a response time",
                vec![(1, 200, vec![10; 20]), (9, 4400, vec![])],
                0,
                92.0,
                true,
                vec![9, 1],
            ),
            (
                "just below the mark",
                vec![(1, 4450, vec![100; 44])],
                0,
                89.0,
                false,
                vec![1],
            ),
            (
                "polls ending after their next one was due",
                vec![(1, 2000, vec![100; 20]), (2, 2200, vec![550; 4])],
                3,
                84.0,
                true,
                vec![2, 1],
            ),
            (
                "one late poll is not yet an overrun",
                vec![(1, 2000, vec![100; 20])],
                1,
                40.0,
                false,
                vec![1],
            ),
        ];
        for (what, units, late, busy_pct, overrun, busiest) in cases {
            let t0 = Instant::now();
            let mut l = Load::new(WINDOW, t0);
            for (unit, busy, responses) in &units {
                l.busy(*unit, ms(*busy));
                for r in responses {
                    l.answered(*unit, ms(*r));
                }
            }
            assert_eq!(l.close(t0 + ms(4999), late), None, "{what}: not over yet");
            let w = l.close(t0 + WINDOW, late).expect("window over");
            assert_eq!(w.load.busy_pct, busy_pct, "{what}");
            assert_eq!(w.overrun, overrun, "{what}");
            assert_eq!(
                w.busiest.iter().map(|s| s.unit).collect::<Vec<_>>(),
                busiest,
                "{what}"
            );
            for (unit, _, responses) in &units {
                let got = w.load.response.get(unit);
                match responses.first() {
                    Some(r) => {
                        let got = got.expect("response times");
                        assert_eq!(got.mean_ms, *r as f64, "{what}: unit {unit}");
                        assert_eq!(got.max_ms, *r as f64, "{what}: unit {unit}");
                    }
                    None => assert_eq!(got, None, "{what}: unit {unit}"),
                }
            }
            // The next window starts empty.
            let next = l.close(t0 + WINDOW * 2, 0).expect("second window");
            assert_eq!(next.load.busy_pct, 0.0, "{what}");
        }
    }

    #[test]
    fn a_late_close_measures_against_the_time_that_really_passed() {
        let t0 = Instant::now();
        let mut l = Load::new(WINDOW, t0);
        l.busy(1, Duration::from_secs(5));
        let w = l.close(t0 + Duration::from_secs(10), 0).expect("over");
        assert_eq!(w.load.busy_pct, 50.0);
        assert_eq!(w.busy_ms, 5000);
        assert!(!w.overrun);
    }
}
