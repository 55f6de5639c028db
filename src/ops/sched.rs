//! The gateway's CPU scheduling policy: its threads run as `SCHED_BATCH`, so a thread of ours
//! that wakes up does not preempt whatever else runs on that core; it gets the CPU at the next
//! scheduling point (at most a time slice, and only while every core is busy). Its share of
//! the CPU is unchanged: the policy only gives up preempting on wake-up.
//!
//! Why: a drain is a conversation with a broker, and on a small board the broker, a local
//! client or another service share the cores with us. Woken for every few PUBACKs, the
//! gateway preempted the upstream broker 41k times in a 100k-message drain on two cores, and
//! the broker paid for each wake-up; as a batch task the gateway waits for the broker to finish
//! its turn, then reads a larger batch in one go (BENCHMARKS.md, the 2-core Xeon block).
//!
//! Set once, on the main thread, before the runtime starts any thread (a thread inherits the
//! policy of the thread that creates it). A policy someone else chose (systemd's
//! `CPUSchedulingPolicy=`, `chrt`) is kept. The raw system calls are used because musl's
//! wrappers (the ARMv6 build) only return `ENOSYS`.

/// What `run_as_batch` found and did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The threads run as `SCHED_BATCH` (set here, or already by systemd's unit).
    Batch,
    /// Another policy was chosen before we started (its number, as `sched_getscheduler` says).
    Kept(i32),
    /// The policy could not be read or set (a seccomp filter, a kernel without the call).
    Failed(String),
}

/// The policy to switch to from `current`, or `None` to keep it: only the default is replaced.
pub fn wanted(current: i32) -> Option<i32> {
    (current == libc::SCHED_OTHER).then_some(libc::SCHED_BATCH)
}

/// Makes the calling thread, and every thread it starts later, `SCHED_BATCH` if it runs with the
/// default policy.
pub fn run_as_batch() -> Outcome {
    // SAFETY: sched_getscheduler takes a thread id (0: the caller) and no pointer.
    let current = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
    if current < 0 {
        return Outcome::Failed(std::io::Error::last_os_error().to_string());
    }
    let current = current as i32;
    if current == libc::SCHED_BATCH {
        return Outcome::Batch;
    }
    let Some(policy) = wanted(current) else {
        return Outcome::Kept(current);
    };
    // SAFETY: `sched_param` is plain integers (musl adds fields beyond `sched_priority`), for
    // which all zeros is a valid value; priority 0 is the only one `SCHED_BATCH` takes.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: `param` outlives the call, which only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            policy,
            &param as *const libc::sched_param,
        )
    };
    if rc < 0 {
        return Outcome::Failed(std::io::Error::last_os_error().to_string());
    }
    Outcome::Batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_default_policy_is_replaced_by_batch() {
        let cases = [
            (libc::SCHED_OTHER, Some(libc::SCHED_BATCH)),
            (libc::SCHED_BATCH, None),
            (libc::SCHED_IDLE, None),
            (libc::SCHED_FIFO, None),
            (libc::SCHED_RR, None),
        ];
        for (current, want) in cases {
            assert_eq!(wanted(current), want, "{current}");
        }
    }
}
