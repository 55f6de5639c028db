//! Gateway statistics: outbox depth and oldest age, drops, sent/acked, reconnects, devices online.
//! Logged every `gateway.stats_interval` and published retained on `<prefix>/<gateway>/stats`
//! through the normal path (outbox → upstream, and the local broker).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Message, Outbox};
use crate::pipeline::{Route, Routed};
use crate::reading::DeviceEvent;
use crate::topics::Topics;
use crate::uplink::UplinkStats;

/// Reachability of every device, as last reported by its poller.
#[derive(Debug, Default)]
pub struct Board {
    devices: Mutex<HashMap<Arc<str>, bool>>,
}

impl Board {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a Arc<str>>) -> Self {
        Board {
            devices: Mutex::new(names.into_iter().map(|n| (n.clone(), false)).collect()),
        }
    }

    pub fn observe(&self, events: &[DeviceEvent]) {
        // A poisoned lock only means another thread panicked mid-update of a bool map; the
        // data is still usable.
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        for e in events {
            if let DeviceEvent::Status { device, online, .. } = e {
                d.insert(device.clone(), *online);
            }
        }
    }

    /// (online, total)
    pub fn counts(&self) -> (usize, usize) {
        let d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        (d.values().filter(|v| **v).count(), d.len())
    }
}

/// One reading of every counter.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub ts_ms: i64,
    pub outbox_rows: u64,
    pub outbox_bytes: u64,
    pub oldest_age: Option<Duration>,
    pub appended: u64,
    pub acked: u64,
    pub dropped: u64,
    pub upstream_connected: Option<bool>,
    pub sent: u64,
    pub reconnects: u64,
    pub devices_online: usize,
    pub devices_total: usize,
}

impl Snapshot {
    pub fn to_json(&self) -> Vec<u8> {
        json!({
            "ts": self.ts_ms,
            "outbox": {
                "rows": self.outbox_rows,
                "bytes": self.outbox_bytes,
                "oldest_age_s": self.oldest_age.map(|a| a.as_secs_f64()),
                "appended": self.appended,
                "acked": self.acked,
                "dropped": self.dropped,
            },
            "upstream": {
                "configured": self.upstream_connected.is_some(),
                "connected": self.upstream_connected.unwrap_or(false),
                "sent": self.sent,
                "reconnects": self.reconnects,
            },
            "devices": { "online": self.devices_online, "total": self.devices_total },
        })
        .to_string()
        .into_bytes()
    }
}

pub async fn snapshot(outbox: &Outbox, uplink: Option<&UplinkStats>, board: &Board) -> Snapshot {
    let s = outbox.stats();
    let (online, total) = board.counts();
    Snapshot {
        ts_ms: crate::reading::now_ms(),
        outbox_rows: s.rows.load(Ordering::Relaxed),
        outbox_bytes: s.bytes.load(Ordering::Relaxed),
        oldest_age: outbox.oldest_age().await.ok().flatten(),
        appended: s.appended.load(Ordering::Relaxed),
        acked: s.acked.load(Ordering::Relaxed),
        dropped: s.dropped.load(Ordering::Relaxed),
        upstream_connected: uplink.map(|u| u.connected.load(Ordering::Relaxed)),
        sent: uplink.map_or(0, |u| u.sent.load(Ordering::Relaxed)),
        reconnects: uplink.map_or(0, |u| u.reconnects.load(Ordering::Relaxed)),
        devices_online: online,
        devices_total: total,
    }
}

pub struct Reporter {
    pub interval: Duration,
    pub outbox: Outbox,
    pub uplink: Option<Arc<UplinkStats>>,
    pub board: Arc<Board>,
    pub topics: Topics,
    pub tx: mpsc::Sender<Routed>,
}

impl Reporter {
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            let s = snapshot(&self.outbox, self.uplink.as_deref(), &self.board).await;
            tracing::info!(
                event = "stats",
                outbox_rows = s.outbox_rows,
                oldest_age_s = s.oldest_age.map(|a| a.as_secs()),
                dropped = s.dropped,
                sent = s.sent,
                acked = s.acked,
                reconnects = s.reconnects,
                upstream_connected = ?s.upstream_connected,
                devices_online = s.devices_online,
                devices_total = s.devices_total,
                "stats"
            );
            let m = Message {
                topic: self.topics.stats(),
                payload: s.to_json(),
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
    }

    #[test]
    fn the_stats_payload_names_every_counter() {
        let s = Snapshot {
            ts_ms: 1,
            outbox_rows: 2,
            outbox_bytes: 3,
            oldest_age: Some(Duration::from_millis(1500)),
            appended: 4,
            acked: 5,
            dropped: 6,
            upstream_connected: Some(true),
            sent: 7,
            reconnects: 8,
            devices_online: 1,
            devices_total: 2,
        };
        let v: serde_json::Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v["outbox"]["rows"], 2);
        assert_eq!(v["outbox"]["oldest_age_s"], 1.5);
        assert_eq!(v["outbox"]["dropped"], 6);
        assert_eq!(v["upstream"]["connected"], true);
        assert_eq!(v["upstream"]["reconnects"], 8);
        assert_eq!(v["devices"]["online"], 1);
    }
}
