//! Polling: one task per device that owns its schedule, backoff and reachability status.
//!
//! A device that fails to answer is reported offline once (with the reason), then retried with
//! capped exponential backoff; the first successful poll reports it online and returns it to its
//! normal interval. The poller never sees the outbox or MQTT: it only sends `DeviceEvent`s.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::device::Driver;
use crate::reading::DeviceEvent;

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

pub async fn run<D: Driver>(
    name: Arc<str>,
    mut driver: D,
    schedule: Schedule,
    tx: mpsc::Sender<DeviceEvent>,
    stop: CancellationToken,
) {
    let mut online: Option<bool> = None;
    let mut failures: u32 = 0;
    let mut next = Instant::now();
    let beat = crate::health::global().register_device(&name, driver.max_poll_time());
    loop {
        beat.progress(next.saturating_duration_since(Instant::now()) + driver.max_poll_time())
            .await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = sleep_until(next) => {}
        }
        let started = Instant::now();
        let result = tokio::select! {
            _ = stop.cancelled() => break,
            r = driver.poll() => r,
        };
        beat.set_online(result.is_ok());
        let events = match result {
            Ok(readings) => {
                failures = 0;
                next = started + schedule.interval;
                let mut ev = Vec::new();
                if online != Some(true) {
                    tracing::info!(event = "device_online", device = %name, "device is answering");
                    ev.push(DeviceEvent::Status {
                        device: name.clone(),
                        online: true,
                        reason: None,
                    });
                }
                online = Some(true);
                ev.push(DeviceEvent::Readings(readings));
                ev
            }
            Err(e) => {
                failures += 1;
                let delay = backoff(&schedule, failures);
                next = Instant::now() + delay;
                if online != Some(false) {
                    tracing::warn!(
                        event = "device_offline",
                        device = %name,
                        error = %e,
                        retry_in = %humantime::format_duration(delay),
                        "device is offline"
                    );
                    online = Some(false);
                    vec![DeviceEvent::Status {
                        device: name.clone(),
                        online: false,
                        reason: Some(e.to_string()),
                    }]
                } else {
                    tracing::debug!(device = %name, error = %e, failures, "device still offline");
                    Vec::new()
                }
            }
        };
        for ev in events {
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
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
}
