//! A watched birth topic: Home Assistant publishes `online` on `<discovery_prefix>/status`
//! when it starts, and expects every discovery config again. Both links (the uplink and the
//! embedded broker's own link) subscribe to it and report each birth here; who answers it
//! (`homeassistant`) is not their business.

use tokio::sync::mpsc;

/// The payload of a birth message.
pub const BIRTH: &[u8] = b"online";

#[derive(Debug, Clone)]
pub struct BirthWatch {
    pub topic: String,
    /// Capacity 1: births arriving while one is pending are the same request.
    pub tx: mpsc::Sender<()>,
}

impl BirthWatch {
    /// Reports the publish if it is a birth; says whether it was.
    pub fn offer(&self, topic: &str, payload: &[u8]) -> bool {
        let birth = is_birth(&self.topic, topic, payload);
        if birth {
            // Full: a birth is already pending, and one republish answers both.
            let _ = self.tx.try_send(());
        }
        birth
    }
}

/// Whether a publish on `topic` is a birth on `watched` (the last will's `offline` is not).
pub fn is_birth(watched: &str, topic: &str, payload: &[u8]) -> bool {
    topic == watched && payload == BIRTH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_online_on_the_watched_topic_is_a_birth() {
        let cases: &[(&str, &[u8], bool)] = &[
            ("homeassistant/status", b"online", true),
            ("homeassistant/status", b"offline", false),
            ("homeassistant/status", b"", false),
            ("homeassistant/status/x", b"online", false),
            ("other/status", b"online", false),
        ];
        for (topic, payload, want) in cases {
            assert_eq!(
                is_birth("homeassistant/status", topic, payload),
                *want,
                "{topic}"
            );
        }
    }
}
