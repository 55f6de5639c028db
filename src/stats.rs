//! Gateway statistics: outbox depth and oldest age, drops, sent/acked, reconnects, devices online,
//! stalled loops (the `health::Stats` schema that `fieldbridge status` reads). Logged every
//! `gateway.stats_interval` and published retained on `<prefix>/<gateway>/stats` through the
//! normal path (outbox → upstream, and the local broker). Also owns the device board: the last
//! reported reachability of every device, Modbus or serial.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::Running;
use crate::health;
use crate::outbox::Message;
use crate::pipeline::{Route, Routed};
use crate::reading::DeviceEvent;
use crate::topics::Topics;

/// How far past its promise a loop must be to show as stalled in the stats (the supervisor uses
/// the systemd watchdog interval; the stats use the same default).
const STALL_SLACK: Duration = Duration::from_secs(30);

/// Reachability of every device, as last reported by its poller.
#[derive(Debug, Default)]
pub struct Board {
    devices: Mutex<HashMap<Arc<str>, Option<bool>>>,
}

impl Board {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a Arc<str>>) -> Self {
        Board {
            devices: Mutex::new(names.into_iter().map(|n| (n.clone(), None)).collect()),
        }
    }

    pub fn observe(&self, events: &[DeviceEvent]) {
        // A poisoned lock only means another thread panicked mid-update of a bool map; the
        // data is still usable.
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if let DeviceEvent::Status { device, online, .. } = e {
                d.insert(device.clone(), Some(*online));
            }
        }
    }

    /// (online, total)
    pub fn counts(&self) -> (usize, usize) {
        let d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        (d.values().filter(|v| **v == Some(true)).count(), d.len())
    }

    /// Every device with its last reported reachability (`None`: not reported yet).
    pub fn devices(&self) -> BTreeMap<String, Option<bool>> {
        let d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        d.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }
}

pub struct Reporter {
    pub interval: Duration,
    pub running: Running,
    pub topics: Topics,
    pub tx: mpsc::Sender<Routed>,
}

impl Reporter {
    pub async fn run(self, stop: CancellationToken) {
        let started = tokio::time::Instant::now();
        let mut first = true;
        loop {
            // The first snapshot goes out at once, so `fieldbridge status` works right after start.
            if !std::mem::take(&mut first) {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(self.interval) => {}
                }
            }
            let health = crate::health::global();
            let s = health::collect(health, &self.running, STALL_SLACK, started).await;
            let (online, total) = self.running.board.counts();
            tracing::info!(
                event = "stats",
                outbox_rows = s.outbox.rows,
                oldest_age_s = s.outbox.oldest_age_s,
                dropped = s.outbox.dropped,
                sent = s.upstream.sent,
                acked = s.upstream.acked,
                reconnects = s.upstream.reconnects,
                upstream_connected = s.upstream.connected,
                devices_online = online,
                devices_total = total,
                "stats"
            );
            let Ok(payload) = serde_json::to_vec(&s) else {
                continue;
            };
            let m = Message {
                topic: self.topics.stats(),
                payload,
                retain: true,
            };
            if self
                .tx
                .send(Routed {
                    message: m,
                    route: Route::Everywhere,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_counts_devices_by_their_last_status() {
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let board = Board::new([&a, &b]);
        assert_eq!(board.counts(), (0, 2));
        let st = |d: &Arc<str>, online| DeviceEvent::Status {
            device: d.clone(),
            online,
            reason: None,
        };
        board.observe(&[st(&a, true), st(&b, true), st(&b, false)]);
        assert_eq!(board.counts(), (1, 2));
        assert_eq!(board.devices().get("b"), Some(&Some(false)));
    }
}
