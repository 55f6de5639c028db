//! The pipeline: device events → messages → outbox (durable, step 1) → embedded broker (step 2).
//!
//! The order is the point: a local subscriber never sees a message that could still be lost
//! upstream. Events are taken in batches (whatever is queued), so one group commit carries many
//! readings. If the outbox cannot store a batch (disk full, I/O error) the local broker still
//! gets it and the loss is counted and logged: polling and local clients go on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::broker::LocalBroker;
use crate::outbox::{Message, Outbox};
use crate::reading::DeviceEvent;
use crate::topics::{self, Topics};

/// Makes message ids that are unique across restarts and stable across resends: a random boot
/// id chosen at start, and a sequence number.
pub struct MessageIds {
    boot: u32,
    seq: AtomicU64,
}

impl MessageIds {
    pub fn new() -> Self {
        MessageIds {
            boot: rand::random(),
            seq: AtomicU64::new(0),
        }
    }
    pub fn next(&self) -> String {
        format!(
            "{:08x}-{}",
            self.boot,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Default for MessageIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Turns device events into messages, in order.
pub fn to_messages(events: &[DeviceEvent], topics: &Topics, ids: &MessageIds) -> Vec<Message> {
    let mut out = Vec::new();
    for ev in events {
        match ev {
            DeviceEvent::Readings(readings) => {
                for r in readings {
                    out.push(Message {
                        topic: topics.reading(&r.device, &r.point),
                        payload: topics::reading_payload(r, &ids.next()),
                        retain: false,
                    });
                }
            }
            DeviceEvent::Status { device, online, .. } => out.push(Message {
                topic: topics.device_status(device),
                payload: if *online {
                    topics::ONLINE
                } else {
                    topics::OFFLINE
                }
                .as_bytes()
                .to_vec(),
                retain: true,
            }),
        }
    }
    out
}

const MAX_BATCH: usize = 5000;
/// How long storing and publishing one batch may take before the pipeline counts as hung:
/// far above any healthy group commit, even on a slow SD card.
const BATCH_BUDGET: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct PipelineStats {
    pub lost: AtomicU64,
}

/// Runs until every sender of `rx` is gone, then returns (with the broker handle) after the last
/// batch is committed.
pub async fn run(
    mut rx: mpsc::Receiver<DeviceEvent>,
    outbox: Outbox,
    mut local: Option<LocalBroker>,
    topics: Topics,
    stats: Arc<PipelineStats>,
) -> Option<LocalBroker> {
    let ids = MessageIds::new();
    let mut events = Vec::new();
    let beat = crate::health::global().register("pipeline", Duration::ZERO);
    loop {
        events.clear();
        beat.idle().await;
        if rx.recv_many(&mut events, MAX_BATCH).await == 0 {
            break;
        }
        beat.progress(BATCH_BUDGET).await;
        let messages = to_messages(&events, &topics, &ids);
        if let Err(e) = outbox.append(messages.clone()).await {
            let n = messages.len() as u64;
            let total = stats.lost.fetch_add(n, Ordering::Relaxed) + n;
            tracing::error!(
                event = "outbox_drop",
                error = %e,
                dropped = n,
                dropped_total = total,
                "could not store messages for upstream; they reach local subscribers only"
            );
        }
        if let Some(b) = local.as_mut() {
            for m in &messages {
                if let Err(e) = b.publish(&m.topic, &m.payload, m.retain).await {
                    tracing::warn!(error = %e, topic = %m.topic, "local publish failed");
                }
            }
        }
    }
    local
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Quality, Reading, Value};

    #[test]
    fn events_become_reading_and_retained_status_messages_in_order() {
        let topics = Topics::new("fb", "gw");
        let ids = MessageIds::new();
        let r = Reading {
            device: "d".into(),
            point: "p".into(),
            value: Value::Int(1),
            unit: None,
            ts_ms: 5,
            quality: Quality::Good,
            error: None,
        };
        let events = vec![
            DeviceEvent::Status {
                device: "d".into(),
                online: true,
                reason: None,
            },
            DeviceEvent::Readings(vec![r.clone(), r]),
        ];
        let m = to_messages(&events, &topics, &ids);
        let t: Vec<(&str, bool)> = m.iter().map(|m| (m.topic.as_str(), m.retain)).collect();
        assert_eq!(
            t,
            vec![
                ("fb/gw/d/status", true),
                ("fb/gw/d/p", false),
                ("fb/gw/d/p", false)
            ]
        );
        assert_eq!(m[0].payload, b"online");
        let a: serde_json::Value = serde_json::from_slice(&m[1].payload).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&m[2].payload).unwrap();
        assert_ne!(a["id"], b["id"], "message ids are unique");
    }
}
