//! Retry timing, pure: the poll schedule with its capped exponential backoff (pollers, serial
//! tasks), the flat probe of a unit on a shared line, and the jittered reconnect delay (uplink). A leaf: no I/O, no clock, no imports from
//! the crate; callers pass the attempt count and the random draw, so every rule is a table test.

use std::time::Duration;

/// A loop's normal period and the longest it waits between attempts while failing.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub interval: Duration,
    pub backoff_max: Duration,
    /// How a failing device is asked again.
    pub retry: Retry,
}

/// How a device that does not answer is asked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Exponential from the interval up to `backoff_max`: a device on a line of its own (Modbus
    /// TCP, a serial port), where a failed attempt costs nobody else anything.
    Backoff,
    /// A flat probe every `PROBE_EVERY` (see `probe_delay`): a unit on a shared RTU line, where
    /// every attempt at a dead unit holds up the others for one timeout, and a unit that
    /// answers again must not wait out a long backoff.
    Probe,
}

/// The period at which a unit on a shared line that does not answer is asked again: a unit
/// that answers again is back within about one period, a dead one costs its line at most one
/// timeout per period.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Delay before the next attempt after `failures` consecutive failed polls (≥ 1), by the
/// schedule's retry rule.
pub fn retry_delay(s: &Schedule, failures: u32) -> Duration {
    match s.retry {
        Retry::Backoff => backoff(s, failures),
        Retry::Probe => probe_delay(s),
    }
}

/// `PROBE_EVERY`, or `backoff_max` if the config asks for quicker probes, but never more often
/// than the device's interval (a slow-polled unit keeps its own pace).
pub fn probe_delay(s: &Schedule) -> Duration {
    PROBE_EVERY.min(s.backoff_max).max(s.interval)
}

/// Delay before the next attempt after `failures` consecutive failed polls (≥ 1): the interval,
/// doubled per further failure, capped at `backoff_max` (but never below the interval).
pub fn backoff(s: &Schedule, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let d = s.interval.saturating_mul(1u32 << exp);
    d.min(s.backoff_max.max(s.interval))
}

/// Reconnect delay after `attempt` consecutive failures (≥ 1): exponential from `min`, capped at
/// `max`, then "equal jitter" (between half and all of it) with `r` in [0, 1), so a fleet of
/// gateways does not reconnect in lockstep after a broker restart.
pub fn reconnect_delay(min: Duration, max: Duration, attempt: u32, r: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = min.saturating_mul(1u32 << exp.min(31)).min(max);
    base.mul_f64(0.5 + 0.5 * r.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_on_a_shared_line_is_probed_at_a_flat_pace_of_five_seconds() {
        let ms = Duration::from_millis;
        // (interval, backoff_max, delay after every failure)
        let cases: &[(u64, u64, u64)] = &[
            // Defaults (5 s interval, 60 s backoff_max): back within one probe, never slower.
            (5000, 60_000, 5000),
            // A fast interval does not make a dead unit cost more: one probe per 5 s.
            (500, 60_000, 5000),
            (1000, 60_000, 5000),
            // A config that asks for a shorter backoff_max gets quicker probes.
            (500, 2000, 2000),
            // Never more often than the interval.
            (30_000, 60_000, 30_000),
            (1000, 500, 1000),
        ];
        for &(interval, max, want) in cases {
            let s = Schedule {
                interval: ms(interval),
                backoff_max: ms(max),
                retry: Retry::Probe,
            };
            for failures in [1, 2, 5, 50, u32::MAX] {
                assert_eq!(
                    retry_delay(&s, failures),
                    ms(want),
                    "interval {interval} ms, backoff_max {max} ms, failure {failures}"
                );
            }
        }
    }

    #[test]
    fn backoff_doubles_from_the_interval_and_is_capped() {
        let s = Schedule {
            interval: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            retry: Retry::Backoff,
        };
        let got: Vec<u64> = (1..=6).map(|f| backoff(&s, f).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(&s, u32::MAX), Duration::from_secs(10));
        assert_eq!(retry_delay(&s, 3), Duration::from_secs(4));
        let slow = Schedule {
            interval: Duration::from_secs(30),
            backoff_max: Duration::from_secs(10),
            retry: Retry::Backoff,
        };
        assert_eq!(backoff(&slow, 3), Duration::from_secs(30));
    }

    #[test]
    fn reconnect_delay_grows_exponentially_is_capped_and_jittered() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let cases: &[(u32, f64, u64)] = &[
            (1, 0.999_999, 1000),
            (1, 0.0, 500),
            (2, 0.999_999, 2000),
            (4, 0.999_999, 8000),
            (7, 0.999_999, 60_000),
            (7, 0.0, 30_000),
            (u32::MAX, 0.5, 45_000),
        ];
        for &(attempt, r, ms) in cases {
            let d = reconnect_delay(min, max, attempt, r).as_millis() as u64;
            assert!(
                d.abs_diff(ms) <= 1,
                "attempt {attempt}, r {r}: {d} ms, want {ms}"
            );
        }
    }
}
