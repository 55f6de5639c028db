//! What the service manager is told: `READY=1` once the gateway runs, `WATCHDOG=1` every
//! `Pace::tick` (an eighth of the watchdog interval) only while no loop is past its promise
//! (`ops::health`), and a `STATUS=` line (devices online, outbox depth, upstream; first the
//! stalled loops, if any) whenever it changes. All of it is a no-op when systemd did not start us
//! (`NOTIFY_SOCKET` unset).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ops::health::{Pace, Stall};
use crate::ops::stats::{status_line, Sources, Stats};

/// The pace of this process's loops: from `WATCHDOG_USEC` when systemd asked for a watchdog.
pub fn pace() -> Pace {
    Pace::for_watchdog(sd_notify::watchdog_enabled())
}

/// `STALLED: pipeline (no beat for 3.1 s), uplink (no beat for 1.2 s)`.
pub fn stall_line(stalls: &[Stall]) -> String {
    let names: Vec<String> = stalls
        .iter()
        .map(|s| format!("{} (no beat for {:.1} s)", s.name, s.silent.as_secs_f64()))
        .collect();
    format!("STALLED: {}", names.join(", "))
}

/// Tells systemd the gateway is ready, then watches the loops until `stop` is cancelled.
pub async fn supervise(sources: Sources, stop: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    let health = sources.health.clone();
    let tick = health.pace().tick();

    let mut stats = snapshot(&sources, tick).await;
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(&stats.as_ref().map(status_line).unwrap_or_default()),
    ]);
    let mut reported: Vec<String> = Vec::new();
    let mut last_status = String::new();
    let mut next = Instant::now();
    loop {
        // The verdict comes from the beats alone, before anything that could wait (the stats
        // read the outbox): a watchdog that waits on a hung loop would ping late, not never.
        let stalls = health.stalled(Duration::ZERO);
        if stalls.is_empty() {
            if watchdog.is_some() {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
            reported.clear();
        } else {
            let names: Vec<String> = stalls.iter().map(|s| s.name.clone()).collect();
            if names != reported {
                tracing::error!(
                    event = "watchdog_withheld",
                    stalled = %names.join(","),
                    "{}; not confirming liveness to the watchdog",
                    stall_line(&stalls)
                );
                reported = names;
            }
        }
        if let Some(s) = snapshot(&sources, tick).await {
            stats = Some(s);
        }
        let line = match (&stats, stalls.is_empty()) {
            (Some(s), true) => status_line(s),
            (Some(s), false) => format!("{}; {}", stall_line(&stalls), status_line(s)),
            (None, _) => stall_line(&stalls),
        };
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

/// The stats without their own stall list (the watchdog names stalls itself, at zero slack),
/// or `None` if reading them took longer than `wait`.
async fn snapshot(sources: &Sources, wait: Duration) -> Option<Stats> {
    let mut s = tokio::time::timeout(wait, sources.collect(Duration::MAX))
        .await
        .ok()?;
    s.stalled.clear();
    Some(s)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_line_names_each_stalled_loop_and_how_long_it_has_been_silent() {
        let table = [
            (
                vec![("pipeline", 3100)],
                "STALLED: pipeline (no beat for 3.1 s)",
            ),
            (
                vec![("outbox writer", 1260), ("poller:plc", 40)],
                "STALLED: outbox writer (no beat for 1.3 s), poller:plc (no beat for 0.0 s)",
            ),
        ];
        for (stalls, want) in table {
            let stalls: Vec<Stall> = stalls
                .into_iter()
                .map(|(n, ms)| Stall {
                    name: n.into(),
                    overdue: Duration::ZERO,
                    silent: Duration::from_millis(ms),
                })
                .collect();
            assert_eq!(stall_line(&stalls), want);
        }
    }
}
