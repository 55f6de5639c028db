//! Slows password guessing from one address: after `FREE_FAILURES` failed logins in a row, the
//! address is locked out for a time that doubles with each further failure (1 s up to 60 s).
//! While locked, CONNECTs with a user name from it are refused without checking the password,
//! so guessing costs the attacker time, not us Argon2 work. A success clears the address.
//!
//! Pure (the caller passes the time) and bounded: at most `MAX_TRACKED` addresses are kept;
//! beyond that, entries that are no longer locked are dropped first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const FREE_FAILURES: u32 = 5;
const FIRST_LOCKOUT: Duration = Duration::from_secs(1);
const MAX_LOCKOUT: Duration = Duration::from_secs(60);
const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    locked_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Throttle {
    by_addr: HashMap<IpAddr, Entry>,
}

impl Throttle {
    /// `Some(remaining)` while `addr` is locked out.
    pub fn locked(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let until = self.by_addr.get(&addr)?.locked_until?;
        (until > now).then(|| until - now)
    }

    pub fn failed(&mut self, addr: IpAddr, now: Instant) {
        if self.by_addr.len() >= MAX_TRACKED && !self.by_addr.contains_key(&addr) {
            self.by_addr
                .retain(|_, e| e.locked_until.is_some_and(|u| u > now));
            if self.by_addr.len() >= MAX_TRACKED {
                // Every tracked address is locked: forgetting one is safer than growing.
                if let Some(k) = self.by_addr.keys().next().copied() {
                    self.by_addr.remove(&k);
                }
            }
        }
        let e = self.by_addr.entry(addr).or_insert(Entry {
            failures: 0,
            locked_until: None,
        });
        e.failures = e.failures.saturating_add(1);
        if e.failures >= FREE_FAILURES {
            let doublings = (e.failures - FREE_FAILURES).min(6);
            let lockout = (FIRST_LOCKOUT * 2u32.pow(doublings)).min(MAX_LOCKOUT);
            e.locked_until = Some(now + lockout);
        }
    }

    pub fn succeeded(&mut self, addr: IpAddr) {
        self.by_addr.remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_starts_after_five_failures_doubles_and_is_cleared_by_success() {
        let a: IpAddr = [192, 168, 1, 9].into();
        let b: IpAddr = [192, 168, 1, 10].into();
        let t0 = Instant::now();
        let mut t = Throttle::default();
        for _ in 0..4 {
            t.failed(a, t0);
            assert_eq!(t.locked(a, t0), None);
        }
        t.failed(a, t0);
        assert_eq!(t.locked(a, t0), Some(Duration::from_secs(1)));
        assert_eq!(t.locked(b, t0), None, "other addresses are not affected");
        assert_eq!(t.locked(a, t0 + Duration::from_secs(1)), None);
        t.failed(a, t0);
        assert_eq!(t.locked(a, t0), Some(Duration::from_secs(2)));
        for _ in 0..20 {
            t.failed(a, t0);
        }
        assert_eq!(t.locked(a, t0), Some(MAX_LOCKOUT));
        t.succeeded(a);
        assert_eq!(t.locked(a, t0), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        for i in 0..(MAX_TRACKED as u32 * 2) {
            t.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(t.by_addr.len() <= MAX_TRACKED);
    }
}
