//! What the service manager is told: `READY=1` once the gateway runs, `WATCHDOG=1` at half the
//! watchdog interval only while no loop has broken its progress promise (`ops::health`), and a
//! `STATUS=` line (devices online, outbox depth, upstream) whenever it changes. All of it is a
//! no-op when systemd did not start us (`NOTIFY_SOCKET` unset).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ops::stats::{status_line, Sources};

/// How often the supervisor looks at the loops when systemd asked for no watchdog.
const DEFAULT_TICK: Duration = Duration::from_secs(5);

/// Tells systemd the gateway is ready, then watches the loops until `stop` is cancelled:
/// `WATCHDOG=1` at half the watchdog interval while every loop keeps its promise, and `STATUS=`
/// updates.
pub async fn supervise(sources: Sources, stop: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    // A loop is declared stuck once it is a whole watchdog interval past its promise: its
    // promise already covers its slowest legitimate turn, so this is margin, not tuning.
    let slack = watchdog.unwrap_or(Duration::from_secs(30));
    let tick = watchdog.map(|w| w / 2).unwrap_or(DEFAULT_TICK);

    let first = sources.collect(slack).await;
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(&first)),
    ]);
    let mut reported_stall = false;
    let mut last_status = String::new();
    let mut next = Instant::now();
    loop {
        let s = sources.collect(slack).await;
        if s.stalled.is_empty() {
            if watchdog.is_some() {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
            reported_stall = false;
        } else if !reported_stall {
            reported_stall = true;
            tracing::error!(
                event = "watchdog_withheld",
                stalled = %s.stalled.join(","),
                "loops made no progress; not confirming liveness to the watchdog"
            );
        }
        let line = status_line(&s);
        if line != last_status {
            let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
            last_status = line;
        }
        next += tick;
        if next < Instant::now() {
            next = Instant::now() + tick;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// A reload begins: `RELOADING=1` with `MONOTONIC_USEC=` (sd_notify(3) asks for both, so that
/// `systemctl reload` under `Type=notify-reload` knows this answer is for its request).
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    let _ = sd_notify::notify(&states);
}

/// A reload ended (applied or refused: the gateway runs either way): `READY=1` and why.
pub fn reloaded(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}
