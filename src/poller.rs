//! Polling: one task per device that owns its schedule, backoff and reachability status.
//!
//! A device that fails to answer is reported offline once (with the reason), then retried with
//! capped exponential backoff; the first successful poll reports it online and returns it to its
//! normal interval. The poller never sees the outbox or MQTT: it only sends `DeviceEvent`s.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::backoff::{backoff, Schedule};
use crate::device::Driver;
use crate::flow::DeviceEvent;
use crate::ops::health::Beat;

pub async fn run<D: Driver>(
    name: Arc<str>,
    mut driver: D,
    schedule: Schedule,
    tx: mpsc::Sender<DeviceEvent>,
    stop: CancellationToken,
    beat: Beat,
) {
    let mut online: Option<bool> = None;
    let mut failures: u32 = 0;
    let mut next = Instant::now();
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
