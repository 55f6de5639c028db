//! Waiting with a deadline, and small facts every part of the harness needs.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// The interval at which conditions are polled (not a synchronisation sleep).
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// A generous deadline for things that happen within seconds on an idle machine.
pub const LONG: Duration = Duration::from_secs(30);

pub const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A port that was free a moment ago. Prefer letting a program bind port 0 and report it; use
/// this only for programs that cannot (mosquitto, the gateway's listeners).
pub fn free_port() -> u16 {
    TcpListener::bind((LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The Python of the test venv, which has pymodbus 3.16.1 installed.
pub fn venv_python() -> PathBuf {
    let python = manifest_dir().join("target/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test once to create the test venv",
        python.display()
    );
    python
}

/// Polls `f` until it returns something; `None` once `deadline` has passed.
pub fn poll<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= end {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Whether `cond` became true within `deadline`, for callers that explain a failure
/// themselves.
pub fn eventually(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    poll(deadline, || cond().then_some(())).is_some()
}

/// Waits until `f` returns something and returns it; panics naming `what` after `deadline`.
/// Blocks the thread: don't call it where it would stall a runtime the code under test needs.
pub fn wait_for<T>(deadline: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll(deadline, f).unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}

/// Waits until `cond` holds; panics naming `what` after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(deadline, what, || cond().then_some(()));
}

/// [`wait_for`] for async tests: yields to the runtime between polls.
pub async fn wait_for_async<T>(
    deadline: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = f() {
            return value;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`wait_until`] for async tests.
pub async fn wait_until_async(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for_async(deadline, what, || cond().then_some(())).await;
}
