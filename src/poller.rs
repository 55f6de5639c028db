//! Polling: one task per device that owns its schedule, backoff and reachability status.
//!
//! A device that fails to answer is reported offline once (with the reason), then retried by
//! its schedule's rule (`backoff::Retry`: capped exponential backoff on a line of its own, a
//! flat probe every few seconds on a shared RTU line); the first successful poll reports it online and returns it to its
//! normal interval. Which outcomes are status changes (and how they are logged) is decided by
//! `device::status::Status`, shared with the serial task; this loop owns only timing (sleep,
//! backoff, the watchdog beat). The poller never sees the outbox or MQTT: it only sends
//! `DeviceEvent`s.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::backoff::{retry_delay, Schedule};
use crate::device::status::Status;
use crate::device::Driver;
use crate::flow::DeviceEvent;
use crate::ops::health::Beat;
use crate::ops::stats::PollCounters;

pub async fn run<D: Driver>(
    name: Arc<str>,
    mut driver: D,
    schedule: Schedule,
    tx: mpsc::Sender<DeviceEvent>,
    stop: CancellationToken,
    beat: Beat,
    counters: Arc<PollCounters>,
) {
    let mut status = Status::new(name.clone());
    let mut failures: u32 = 0;
    let mut next = Instant::now();
    loop {
        // Asleep until the next poll: the promise covers the sleep.
        beat.promise(next.saturating_duration_since(Instant::now()) + beat.soon())
            .await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = sleep_until(next) => {}
        }
        let due = next;
        let started = Instant::now();
        // The poll waits on the line's owner task, every exchange under its own timeout.
        beat.waiting(driver.max_poll_time());
        let result = tokio::select! {
            _ = stop.cancelled() => break,
            r = driver.poll() => r,
        };
        counters.observe(started.elapsed(), result.as_ref().err().map(|e| e.kind()));
        let events = match result {
            Ok(readings) => {
                // Ended after the next poll was due: the line (or the device) cannot keep up.
                if Instant::now() > due + schedule.interval {
                    driver.missed_interval();
                }
                failures = 0;
                next = started + schedule.interval;
                let mut ev = Vec::new();
                if let Some(change) = status.answered() {
                    ev.push(status.report(change, None));
                }
                ev.push(DeviceEvent::Readings(readings));
                ev
            }
            Err(e) => {
                failures += 1;
                let delay = retry_delay(&schedule, failures);
                next = Instant::now() + delay;
                match status.failed(e.to_string()) {
                    Some(change) => vec![status.report(change, Some(delay))],
                    None => {
                        tracing::debug!(device = %name, error = %e, failures, "device still offline");
                        Vec::new()
                    }
                }
            }
        };
        beat.busy().await;
        for ev in events {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}
