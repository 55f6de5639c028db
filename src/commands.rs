//! Commands coming down: `<prefix>/<gw>/<device>/<point>/set` → a validated write on the
//! device's bus → the outcome on `…/set/result`.
//!
//! A command reaches its device only through the device's write handle
//! (`device::modbus::writer::Writer`): validation and encoding are pure, so a refused command is
//! answered without bus traffic; the handle also checks the device's answer. Commands run one
//! at a time in arrival order, so two writes to one point land in the order they were sent; a
//! write to a dead device costs its timeout. Results go through the outbox like readings (they
//! must not be lost either) and to the local broker. Nothing here sees the bus task or a
//! tokio-modbus type.
//!
//! Commands from upstream may have waited in the broker's session while the gateway was away
//! (`mqtt::uplink`); one whose payload `ts` is older than `command_max_age` is refused (`stale`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::device::modbus::write::{parse_payload, Input, Payload, WriteError};
use crate::device::modbus::writer::{WriteFailure, Writer};
use crate::flow::Message;
use crate::flow::{excerpt, now_ms, Command, Origin, MAX_ECHO};
use crate::flow::{Route, Routed};
use crate::mqtt::topics::Topics;
use crate::ops::stats::CommandCounters;

/// The write handle of every Modbus device, by device name; a reload replaces a restarted
/// device's handle (`app.rs`), so a command always reaches the device's current line.
pub type Targets = Arc<std::sync::RwLock<HashMap<Arc<str>, Writer>>>;

pub struct Commands {
    pub targets: Targets,
    pub topics: Topics,
    pub results: mpsc::Sender<Routed>,
    /// `[upstream] command_max_age`: an upstream command sent longer ago than this (by its
    /// payload's `ts`) is refused. `None`: no upstream.
    pub max_age: Option<Duration>,
    /// Commands by device and result (the `/metrics` page).
    pub counters: Arc<CommandCounters>,
}

/// Why a command was not done: refused by validation (payload, unknown device or point, the
/// point's rules: the `WriteError`), an exception from the device, a write the device did not
/// confirm (with the `DeviceError`), or an unexpected answer. It is the device write handle's
/// own error, so it is formatted in one place; its `Display` is the result's `error` text.
pub type CommandError = WriteFailure;

/// The outcome of one command: `Ok(value written)` or the reason.
pub type Outcome = Result<serde_json::Value, CommandError>;

impl Commands {
    pub async fn run(self, mut rx: mpsc::Receiver<Command>, stop: CancellationToken) {
        loop {
            let cmd = tokio::select! {
                // Stop wins over queued commands: none starts after shutdown began.
                biased;
                _ = stop.cancelled() => break,
                c = rx.recv() => match c { Some(c) => c, None => break },
            };
            let (outcome, id) = self.execute(&cmd).await;
            self.report(&cmd, outcome, id).await;
        }
    }

    /// Validates and runs one command.
    pub async fn execute(&self, cmd: &Command) -> (Outcome, Option<serde_json::Value>) {
        let Payload { input, id, sent_ms } = match parse_payload(&cmd.payload) {
            Ok(x) => x,
            Err(e) => return (Err(e.into()), None),
        };
        // The id is echoed whole (it is the sender's correlation key), so a long one is refused
        // rather than cut or sent back at any length.
        let id_len = id.as_ref().map_or(0, |v| v.to_string().len());
        if id_len > MAX_ECHO {
            let e = WriteError::BadPayload(format!(
                "an id of {id_len} bytes; at most {MAX_ECHO} are echoed"
            ));
            return (Err(e.into()), None);
        }
        if let (Origin::Upstream, Some(max_age), Some(sent)) = (cmd.origin, self.max_age, sent_ms) {
            if let Some(e) = stale(sent, now_ms(), max_age) {
                return (Err(e.into()), id);
            }
        }
        let writer = self
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(cmd.device.as_str())
            .cloned();
        let Some(writer) = writer else {
            return (
                Err(WriteError::UnknownDevice(excerpt(&cmd.device).into_owned()).into()),
                id,
            );
        };
        let outcome = writer
            .write(&cmd.point, &input)
            .await
            .map(|_| input_json(&input));
        (outcome, id)
    }

    async fn report(&self, cmd: &Command, outcome: Outcome, id: Option<serde_json::Value>) {
        let known = self
            .targets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(cmd.device.as_str());
        let device = if known { cmd.device.as_str() } else { "" };
        self.counters.record(device, result_kind(&outcome));
        match &outcome {
            Ok(v) => tracing::info!(
                event = "write",
                origin = cmd.origin.as_str(),
                device = %excerpt(&cmd.device),
                point = %excerpt(&cmd.point),
                value = %v,
                "write confirmed by the device"
            ),
            Err(e) => tracing::warn!(
                event = "write_failed",
                origin = cmd.origin.as_str(),
                device = %excerpt(&cmd.device),
                point = %excerpt(&cmd.point),
                error = %e,
                "write not done"
            ),
        }
        let message = Message {
            topic: self.topics.command_result(&cmd.device, &cmd.point),
            payload: result_payload(&outcome, id, now_ms()),
            retain: false,
        };
        let routed = Routed {
            message,
            route: Route::Everywhere,
        };
        if self.results.send(routed).await.is_err() {
            tracing::debug!("pipeline stopped; write result not published");
        }
    }
}

/// The result label of an outcome on `/metrics`.
pub fn result_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(WriteFailure::Refused(WriteError::Stale(_))) => "stale",
        Err(WriteFailure::Refused(_)) => "refused",
        Err(WriteFailure::Exception { .. }) => "exception",
        Err(WriteFailure::NotConfirmed { .. }) => "not_confirmed",
        Err(WriteFailure::Unexpected { .. }) => "unexpected",
    }
}

/// Why a command sent at `sent_ms` is too old to run at `now_ms`, or `None`. Commands wait in
/// the upstream broker's session while the gateway is away; run hours later, a set-point would
/// overwrite what the operator has done since. A send time ahead of our clock (a sender whose
/// clock runs fast, a board without RTC before its clock is set) is not refused.
pub fn stale(sent_ms: i64, now_ms: i64, max_age: Duration) -> Option<WriteError> {
    let age = Duration::from_millis(u64::try_from(now_ms.saturating_sub(sent_ms)).ok()?);
    (age > max_age).then(|| {
        WriteError::Stale(format!(
            "sent {} ago, older than command_max_age {}; not executed",
            humantime::format_duration(Duration::from_secs(age.as_secs())),
            humantime::format_duration(max_age)
        ))
    })
}

fn input_json(i: &Input) -> serde_json::Value {
    match i {
        Input::Bool(b) => json!(b),
        Input::Int(v) => i64::try_from(*v)
            .map(|x| json!(x))
            .or_else(|_| u64::try_from(*v).map(|x| json!(x)))
            .unwrap_or(json!(v.to_string())),
        Input::Float(f) => json!(f),
        Input::Text(t) => json!(t),
    }
}

/// `{"ok": true, "value": …, "ts": …}` or `{"ok": false, "error": "…", "ts": …}`, with the
/// command's `id` when it had one.
pub fn result_payload(outcome: &Outcome, id: Option<serde_json::Value>, ts: i64) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    match outcome {
        Ok(v) => {
            m.insert("ok".into(), json!(true));
            m.insert("value".into(), v.clone());
        }
        Err(e) => {
            m.insert("ok".into(), json!(false));
            m.insert("error".into(), json!(e.to_string()));
        }
    }
    m.insert("ts".into(), json!(ts));
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    serde_json::Value::Object(m).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_older_than_max_age_is_stale_and_a_younger_or_future_one_is_not() {
        let max = Duration::from_secs(300);
        let now = 1_764_500_000_000;
        let cases: &[(i64, Option<&str>)] = &[
            (now, None),
            (now - 300_000, None),
            (
                now - 300_001,
                Some("sent 5m ago, older than command_max_age 5m; not executed"),
            ),
            (
                now - 3_600_000,
                Some("sent 1h ago, older than command_max_age 5m; not executed"),
            ),
            (now + 3_600_000, None),
        ];
        for (sent, want) in cases {
            assert_eq!(
                stale(*sent, now, max).map(|e| e.to_string()).as_deref(),
                *want,
                "sent {sent}"
            );
        }
    }

    #[test]
    fn result_payloads_carry_the_outcome_and_echo_the_id() {
        let ok = result_payload(&Ok(json!(21.5)), Some(json!("r1")), 7);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&ok).unwrap(),
            json!({"ok": true, "value": 21.5, "ts": 7, "id": "r1"})
        );
        let err = result_payload(&Err(WriteError::UnknownDevice("x".into()).into()), None, 8);
        assert_eq!(
            std::str::from_utf8(&err).unwrap(),
            r#"{"error":"no device \"x\" on this gateway","ok":false,"ts":8}"#
        );
    }
}
