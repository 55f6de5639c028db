//! Which job a bus owner runs next: the pure scheduling half of `bus`. It holds the jobs that
//! wait for the line, and the units that may not be asked yet.
//!
//! Rules (see `bus` for why): a unit that timed out or answered garbage is *tainted* until a
//! given instant (its own late reply could still arrive and pass for the answer to its next
//! request); its jobs wait, and the jobs of other units go ahead of them. Per unit, jobs run
//! in arrival order: the next job is always the oldest job of the first unit that may be asked,
//! and a job put back for another attempt goes to the front (it is the oldest of its unit).
//! A taint ends at its instant (`now >= until`). Pure: time is passed in, jobs are opaque.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

/// What the bus owner should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<J> {
    /// Run this job.
    Run(J),
    /// Every waiting job's unit is tainted: nothing to send before this instant (unless a new
    /// job arrives).
    WaitUntil(Instant),
    /// No job is waiting.
    Idle,
}

/// The jobs waiting for one line, with the unit each is for.
#[derive(Debug)]
pub struct Queue<J> {
    pending: VecDeque<(u8, J)>,
    /// Units that may not be asked before the instant.
    tainted: HashMap<u8, Instant>,
}

impl<J> Default for Queue<J> {
    fn default() -> Self {
        Queue {
            pending: VecDeque::new(),
            tainted: HashMap::new(),
        }
    }
}

impl<J> Queue<J> {
    /// A job arrived for `unit`: it runs after every earlier job of that unit.
    pub fn push(&mut self, unit: u8, job: J) {
        self.pending.push_back((unit, job));
    }

    /// A job taken with `next` needs another attempt: it goes back to the front.
    pub fn put_back(&mut self, unit: u8, job: J) {
        self.pending.push_front((unit, job));
    }

    /// Drops the jobs nobody waits for any more (their caller gave up).
    pub fn retain(&mut self, mut keep: impl FnMut(&J) -> bool) {
        self.pending.retain(|(_, j)| keep(j));
    }

    /// `unit` may not be asked before `until` (replaces an earlier taint of the unit).
    pub fn taint(&mut self, unit: u8, until: Instant) {
        self.tainted.insert(unit, until);
    }

    /// Takes the next job to run at `now`, or says how long to wait.
    pub fn next(&mut self, now: Instant) -> Next<J> {
        self.tainted.retain(|_, until| *until > now);
        let free = self
            .pending
            .iter()
            .position(|(unit, _)| !self.tainted.contains_key(unit));
        if let Some((_, job)) = free.and_then(|i| self.pending.remove(i)) {
            return Next::Run(job);
        }
        match self
            .pending
            .iter()
            .filter_map(|(unit, _)| self.tainted.get(unit))
            .min()
        {
            Some(until) => Next::WaitUntil(*until),
            None => Next::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One step of a scenario; times are ms from the start.
    enum Op {
        Push(u8, &'static str),
        PutBack(u8, &'static str),
        Taint(u8, u64),
        Drop(&'static str),
        /// `next` at this time runs this job.
        Run(u64, &'static str),
        /// `next` at this time says to wait until the second time.
        Wait(u64, u64),
        /// `next` at this time finds no job.
        Idle(u64),
    }
    use Op::*;

    fn run(ops: Vec<Op>) -> Result<(), String> {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut q = Queue::default();
        for (i, op) in ops.into_iter().enumerate() {
            let (now, want) = match op {
                Push(u, j) => {
                    q.push(u, j);
                    continue;
                }
                PutBack(u, j) => {
                    q.put_back(u, j);
                    continue;
                }
                Taint(u, ms) => {
                    q.taint(u, at(ms));
                    continue;
                }
                Drop(j) => {
                    q.retain(|x| *x != j);
                    continue;
                }
                Run(ms, j) => (ms, Next::Run(j)),
                Wait(ms, until) => (ms, Next::WaitUntil(at(until))),
                Idle(ms) => (ms, Next::Idle),
            };
            let got = q.next(at(now));
            if got != want {
                return Err(format!("step {i} at {now} ms: got {got:?}, want {want:?}"));
            }
        }
        Ok(())
    }

    #[test]
    fn tainted_units_wait_while_other_units_go_ahead_and_each_unit_keeps_its_order() {
        let cases: Vec<(&str, Vec<Op>)> = vec![
            ("nothing waiting", vec![Idle(0)]),
            (
                "one unit's jobs run in arrival order",
                vec![
                    Push(1, "a"),
                    Push(1, "b"),
                    Push(1, "c"),
                    Run(0, "a"),
                    Run(0, "b"),
                    Run(0, "c"),
                    Idle(0),
                ],
            ),
            (
                "a tainted unit's jobs wait, the others go ahead in their order",
                vec![
                    Push(1, "1a"),
                    Push(2, "2a"),
                    Push(1, "1b"),
                    Push(3, "3a"),
                    Push(2, "2b"),
                    Taint(1, 100),
                    Run(10, "2a"),
                    Run(10, "3a"),
                    Run(10, "2b"),
                    Wait(10, 100),
                    Wait(99, 100),
                    // The taint ends at its instant; the unit's order is kept.
                    Run(100, "1a"),
                    Run(100, "1b"),
                    Idle(100),
                ],
            ),
            (
                "with every waiting unit tainted, wait for the earliest of their taints",
                vec![
                    Push(1, "1a"),
                    Push(2, "2a"),
                    Taint(1, 300),
                    Taint(2, 200),
                    // A taint of a unit with no job does not wake the line.
                    Taint(9, 50),
                    Wait(0, 200),
                    Run(200, "2a"),
                    Wait(200, 300),
                    Run(300, "1a"),
                ],
            ),
            (
                "a new taint of a unit replaces the old one",
                vec![
                    Taint(1, 100),
                    Taint(1, 50),
                    Push(1, "1a"),
                    Wait(0, 50),
                    Run(50, "1a"),
                ],
            ),
            (
                "a job put back runs before its unit's later jobs, and before other units",
                vec![
                    Push(1, "1a"),
                    Push(2, "2a"),
                    Push(1, "1b"),
                    Run(0, "1a"),
                    PutBack(1, "1a"),
                    Run(0, "1a"),
                    // It timed out: its unit waits, the other unit goes ahead.
                    PutBack(1, "1a"),
                    Taint(1, 100),
                    Run(0, "2a"),
                    Wait(0, 100),
                    Run(100, "1a"),
                    Run(100, "1b"),
                ],
            ),
            (
                "jobs whose caller gave up are dropped",
                vec![
                    Push(1, "1a"),
                    Push(1, "1b"),
                    Drop("1a"),
                    Run(0, "1b"),
                    Idle(0),
                ],
            ),
        ];
        for (what, ops) in cases {
            if let Err(e) = run(ops) {
                panic!("{what}: {e}");
            }
        }
    }
}
