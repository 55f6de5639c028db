//! The pipeline: device events → messages → outbox (durable, step 1) → embedded broker (step 2).
//! Which readings become messages, and in which shape, is `report`'s decision on state the
//! pipeline owns (one `ReportState` for every device).
//!
//! The order is the point: a local subscriber never sees a message that could still be lost
//! upstream. Events are taken in batches (whatever is queued), so one group commit carries many
//! readings. If the outbox cannot store a batch (disk full, I/O error) the local broker still
//! gets it; the outbox counts and logs the loss, and polling and local clients go on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::spec::report::PayloadShape;
use crate::flow::{DeviceEvent, Message, Route, Routed};
use crate::mqtt::broker::LocalBroker;
use crate::mqtt::topics::{self, Topics};
use crate::ops::health::Beat;
use crate::ops::stats::Board;
use crate::outbox::Outbox;
use crate::report::{DevicePlan, ReportState};

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

/// Turns device events into messages, in order: the readings each device's report strategies
/// select, one message per point or one per poll as its payload shape says.
pub fn to_messages(
    events: &[DeviceEvent],
    topics: &Topics,
    ids: &MessageIds,
    report: &mut ReportState,
) -> Vec<Message> {
    let mut out = Vec::new();
    for ev in events {
        match ev {
            DeviceEvent::Readings(all) => {
                // One event is one poll of one device; a run per device keeps it right anyway.
                for readings in all.chunk_by(|a, b| a.device == b.device) {
                    let picked = report.select(readings);
                    let selected = readings
                        .iter()
                        .zip(&picked)
                        .filter_map(|(r, keep)| keep.then_some(r));
                    let Some(first) = readings.first() else {
                        continue;
                    };
                    match report.shape(&first.device) {
                        PayloadShape::Point => out.extend(selected.map(|r| Message {
                            topic: topics.reading(&r.device, &r.point),
                            payload: topics::reading_payload(r, &ids.next()),
                            retain: false,
                        })),
                        PayloadShape::Device => {
                            if picked.iter().any(|&k| k) {
                                out.push(Message {
                                    topic: topics.device(&first.device),
                                    payload: topics::device_payload(
                                        &ids.next(),
                                        first.ts_ms,
                                        selected,
                                    ),
                                    retain: false,
                                });
                            }
                        }
                    }
                }
            }
            DeviceEvent::Status { device, online, .. } => {
                report.restart(device);
                out.push(Message {
                    topic: topics.device_status(device),
                    payload: if *online {
                        topics::ONLINE
                    } else {
                        topics::OFFLINE
                    }
                    .as_bytes()
                    .to_vec(),
                    retain: true,
                })
            }
        }
    }
    out
}

const MAX_BATCH: usize = 5000;
/// How long the pipeline may wait for the outbox writer to commit one batch before it counts
/// as hung too: far above any healthy group commit, even on a slow SD card.
const APPEND_BUDGET: Duration = Duration::from_secs(60);

/// Splits one batch into what goes to the outbox and what goes to the local broker, keeping
/// the order within each.
pub fn split_routes(device: Vec<Message>, routed: Vec<Routed>) -> (Vec<Message>, Vec<Message>) {
    let mut up = device.clone();
    let mut local = device;
    for r in routed {
        match r.route {
            Route::Everywhere => {
                up.push(r.message.clone());
                local.push(r.message);
            }
            Route::LocalOnly => local.push(r.message),
        }
    }
    (up, local)
}

/// What the pipeline writes to and reports into.
pub struct Pipeline {
    pub outbox: Outbox,
    pub local: Option<LocalBroker>,
    pub topics: Topics,
    /// Device reachability, updated from the status events that pass through.
    pub board: Arc<Board>,
    pub beat: Beat,
    /// Which readings are published, and in which shape; the pipeline is its only owner.
    pub report: ReportState,
    /// A reload's new report plans (`None`: device removed), applied before the next batch.
    /// Sent before the changed device's task starts, so its first poll already meets it.
    pub plans: mpsc::UnboundedReceiver<Vec<(Arc<str>, Option<DevicePlan>)>>,
}

/// Runs until `stop`, then takes what is still queued on both channels, commits it and returns
/// the broker handle. `other` carries routed messages (stats, forwarding). The caller stops the
/// producers before cancelling `stop`, so nothing they sent is left behind.
pub async fn run(
    p: Pipeline,
    mut events: mpsc::Receiver<DeviceEvent>,
    mut other: mpsc::Receiver<Routed>,
    stop: CancellationToken,
) -> Option<LocalBroker> {
    let Pipeline {
        outbox,
        mut local,
        topics,
        board,
        beat,
        mut report,
        mut plans,
    } = p;
    let ids = MessageIds::new();
    let mut evs = Vec::new();
    let mut routed = Vec::new();
    let (mut events_open, mut other_open) = (true, true);
    let mut stopping = false;
    while !stopping {
        evs.clear();
        routed.clear();
        beat.idle();
        tokio::select! {
            n = events.recv_many(&mut evs, MAX_BATCH), if events_open => events_open = n > 0,
            n = other.recv_many(&mut routed, MAX_BATCH), if other_open => other_open = n > 0,
            Some(update) = plans.recv() => apply_plans(&mut report, update),
            _ = stop.cancelled() => stopping = true,
        }
        while let Ok(update) = plans.try_recv() {
            apply_plans(&mut report, update);
        }
        beat.busy().await;
        // Take whatever else is already queued on either side into the same group commit.
        while let Ok(e) = events.try_recv() {
            evs.push(e);
            if evs.len() >= MAX_BATCH && !stopping {
                break;
            }
        }
        while let Ok(r) = other.try_recv() {
            routed.push(r);
            if routed.len() >= MAX_BATCH && !stopping {
                break;
            }
        }
        board.observe(&evs);
        let (up, down) = split_routes(
            to_messages(&evs, &topics, &ids, &mut report),
            std::mem::take(&mut routed),
        );
        deliver(&outbox, local.as_mut(), up, down, &beat).await;
    }
    local
}

fn apply_plans(report: &mut ReportState, update: Vec<(Arc<str>, Option<DevicePlan>)>) {
    for (device, plan) in update {
        report.set_plan(device, plan);
    }
}

async fn deliver(
    outbox: &Outbox,
    local: Option<&mut LocalBroker>,
    up: Vec<Message>,
    down: Vec<Message>,
    beat: &Beat,
) {
    // The group commit is the outbox writer's work, and the writer is watched itself: a hung
    // writer is named as such, not as the pipeline waiting for it.
    beat.waiting(APPEND_BUDGET);
    // The outbox counts and logs a failed write as a drop; local subscribers still get the
    // messages.
    if let Err(e) = outbox.append(up).await {
        tracing::debug!(error = %e, "published locally only");
    }
    beat.busy().await;
    if let Some(b) = local {
        for m in &down {
            if let Err(e) = b.publish(&m.topic, &m.payload, m.retain).await {
                tracing::warn!(error = %e, topic = %m.topic, "local publish failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Quality, Reading, Value};

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
        let m = to_messages(&events, &topics, &ids, &mut ReportState::default());
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
