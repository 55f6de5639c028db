//! A device's reachability, the same for every device kind: the Modbus poller and the serial
//! task both keep one `Status` and tell it each outcome (answered, or failed with a reason).
//!
//! Invariants: it reports a change only — the first outcome ever (so the status topic is set
//! at start), then online → offline → online; repeated failures (and repeated successes) are
//! silent, so one dead device logs one warning and publishes one `offline`, however long it
//! stays away, and the reason reported is the one of the first failure. It decides the events
//! and the wording of the `device_online` / `device_offline` log lines; the loops only log and
//! send what it returns. Pure apart from those two log lines: no clock, no channel.

use std::sync::Arc;
use std::time::Duration;

use crate::flow::DeviceEvent;

/// A change of a device's reachability, to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It answers (for the first time, or again).
    Online,
    /// It stopped answering, and why.
    Offline { reason: String },
}

/// The last reported reachability of one device.
#[derive(Debug, Clone)]
pub struct Status {
    device: Arc<str>,
    /// `None` until the first outcome.
    online: Option<bool>,
}

impl Status {
    pub fn new(device: Arc<str>) -> Self {
        Status {
            device,
            online: None,
        }
    }

    /// Whether the last reported status is offline (not merely "not known yet").
    pub fn is_offline(&self) -> bool {
        self.online == Some(false)
    }

    /// The device answered (a poll succeeded, a valid frame arrived): `Some` if that is news.
    pub fn answered(&mut self) -> Option<Change> {
        self.set(true).then_some(Change::Online)
    }

    /// The device did not answer, because of `reason`: `Some` if that is news.
    pub fn failed(&mut self, reason: String) -> Option<Change> {
        self.set(false).then_some(Change::Offline { reason })
    }

    fn set(&mut self, online: bool) -> bool {
        let changed = self.online != Some(online);
        self.online = Some(online);
        changed
    }

    /// Logs `change` (`device_online` at info, `device_offline` at warn with the reason and,
    /// from a poller, when it tries again) and turns it into the event for the pipeline.
    pub fn report(&self, change: Change, retry_in: Option<Duration>) -> DeviceEvent {
        match (&change, retry_in) {
            (Change::Online, _) => {
                tracing::info!(event = "device_online", device = %self.device, "device is answering")
            }
            (Change::Offline { reason }, Some(delay)) => tracing::warn!(
                event = "device_offline",
                device = %self.device,
                error = %reason,
                retry_in = %humantime::format_duration(delay),
                "device is offline"
            ),
            (Change::Offline { reason }, None) => tracing::warn!(
                event = "device_offline",
                device = %self.device,
                error = reason.as_str(),
                "device is offline"
            ),
        }
        self.event(change)
    }

    /// The event that reports `change` (pure).
    pub fn event(&self, change: Change) -> DeviceEvent {
        let (online, reason) = match change {
            Change::Online => (true, None),
            Change::Offline { reason } => (false, Some(reason)),
        };
        DeviceEvent::Status {
            device: self.device.clone(),
            online,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outcome fed to the status: `Ok` answered, `Err(reason)` failed.
    type Outcome = Result<(), &'static str>;

    fn run(outcomes: &[Outcome]) -> Vec<Option<Change>> {
        let mut s = Status::new(Arc::from("meter"));
        outcomes
            .iter()
            .map(|o| match o {
                Ok(()) => s.answered(),
                Err(r) => s.failed((*r).to_string()),
            })
            .collect()
    }

    fn off(reason: &str) -> Option<Change> {
        Some(Change::Offline {
            reason: reason.into(),
        })
    }

    /// A name, what the device did poll after poll, and the change reported after each.
    type Case = (&'static str, Vec<Outcome>, Vec<Option<Change>>);

    #[test]
    fn only_changes_of_reachability_are_reported_and_repeats_are_silent() {
        let on = Some(Change::Online);
        let cases: Vec<Case> = vec![
            (
                "first success reports online",
                vec![Ok(())],
                vec![on.clone()],
            ),
            (
                "first failure reports offline, with its reason",
                vec![Err("timeout")],
                vec![off("timeout")],
            ),
            (
                "successes after the first are silent",
                vec![Ok(()), Ok(()), Ok(())],
                vec![on.clone(), None, None],
            ),
            (
                "repeated failures are silent and keep the first reason",
                vec![Ok(()), Err("timeout"), Err("refused"), Err("timeout")],
                vec![on.clone(), off("timeout"), None, None],
            ),
            (
                "answering again reports online once",
                vec![Err("a"), Err("b"), Ok(()), Ok(()), Err("c")],
                vec![off("a"), None, on.clone(), None, off("c")],
            ),
        ];
        for (what, outcomes, want) in cases {
            assert_eq!(run(&outcomes), want, "{what}");
        }
    }

    #[test]
    fn offline_means_reported_offline_not_unknown() {
        let mut s = Status::new(Arc::from("meter"));
        assert!(!s.is_offline(), "unknown at start");
        s.failed("x".into());
        assert!(s.is_offline());
        s.answered();
        assert!(!s.is_offline());
    }

    #[test]
    fn a_change_becomes_the_status_event_of_its_device() {
        let s = Status::new(Arc::from("meter"));
        let cases = [
            (Change::Online, true, None),
            (
                Change::Offline {
                    reason: "no answer within 1s".into(),
                },
                false,
                Some("no answer within 1s".to_string()),
            ),
        ];
        for (change, online, reason) in cases {
            let want = DeviceEvent::Status {
                device: Arc::from("meter"),
                online,
                reason,
            };
            assert_eq!(s.event(change), want);
        }
    }
}
