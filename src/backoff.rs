//! Retry timing, pure: the poll schedule with its capped exponential backoff (pollers, serial
//! tasks) and the jittered reconnect delay (uplink). A leaf: no I/O, no clock, no imports from
//! the crate; callers pass the attempt count and the random draw, so every rule is a table test.

use std::time::Duration;

/// A loop's normal period and the longest it waits between attempts while failing.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub interval: Duration,
    pub backoff_max: Duration,
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
    fn backoff_doubles_from_the_interval_and_is_capped() {
        let s = Schedule {
            interval: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
        };
        let got: Vec<u64> = (1..=6).map(|f| backoff(&s, f).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(&s, u32::MAX), Duration::from_secs(10));
        let slow = Schedule {
            interval: Duration::from_secs(30),
            backoff_max: Duration::from_secs(10),
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
