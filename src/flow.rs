//! What travels on the gateway's channels, and nothing else: a `Reading` (a decoded value of one
//! point) and device status changes (`DeviceEvent`, drivers → pipeline), a `Message` bound for a
//! broker and where it goes (`Routed`, stats/commands/forwarding → pipeline), and a `Command`
//! coming down (brokers → command runner). A leaf: it imports no other module of the crate, so
//! every loop can speak it without knowing the loop at the other end.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A decoded value. Booleans and numbers stay typed all the way to the JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Text registers (a model name, a serial number).
    Text(String),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// The device answered and the value decoded.
    Good,
    /// The device answered with an error (e.g. a Modbus exception) for this point.
    Bad,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Bad => "bad",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: Arc<str>,
    pub point: Arc<str>,
    pub value: Value,
    pub unit: Option<Arc<str>>,
    /// Milliseconds since the Unix epoch, taken when the device answered.
    pub ts_ms: i64,
    pub quality: Quality,
    /// Why the quality is bad, in words a field engineer can act on.
    pub error: Option<String>,
}

/// What a poller reports: readings, or a change of a device's reachability.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceEvent {
    Readings(Vec<Reading>),
    Status {
        device: Arc<str>,
        online: bool,
        reason: Option<String>,
    },
}

/// A message bound for a broker (upstream through the outbox, or the local broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Message {
    /// What it costs the outbox's byte bound.
    pub fn size(&self) -> u64 {
        (self.topic.len() + self.payload.len()) as u64
    }
}

/// Where a message that is not a device event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Outbox (then upstream) and the local broker, like a reading.
    Everywhere,
    /// Local broker only: it came from upstream.
    LocalOnly,
}

#[derive(Debug, Clone)]
pub struct Routed {
    pub message: Message,
    pub route: Route,
}

/// Where a command came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Upstream,
    Local,
    CommandLine,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Upstream => "upstream",
            Origin::Local => "local",
            Origin::CommandLine => "cli",
        }
    }
}

/// One command as it arrived on `<prefix>/<gw>/<device>/<point>/set`.
#[derive(Debug, Clone)]
pub struct Command {
    pub device: String,
    pub point: String,
    pub payload: Vec<u8>,
    pub origin: Origin,
}

/// The most of a client's or a broker's input (payload text, topic levels) a result message or
/// a log line quotes: enough to recognise it, never a 300 kB echo of a bad command.
pub const MAX_ECHO: usize = 200;

/// `text` as a result or a log line may quote it: at most `MAX_ECHO` bytes (cut at a character
/// boundary), followed by how much was left out.
pub fn excerpt(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_ECHO {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = MAX_ECHO;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes in all)", &text[..end], text.len()))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_excerpt_quotes_at_most_two_hundred_bytes_and_says_how_much_there_was() {
        let cases: &[(String, &str)] = &[
            ("21.5".into(), "21.5"),
            ("x".repeat(MAX_ECHO), &"x".repeat(MAX_ECHO)),
            (
                "x".repeat(300_000),
                &format!("{}… (300000 bytes in all)", "x".repeat(MAX_ECHO)),
            ),
            // 'é' is two bytes: the cut never splits a character.
            (
                format!("a{}", "é".repeat(150)),
                &format!("a{}… (301 bytes in all)", "é".repeat(99)),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(excerpt(input), *want, "{} bytes", input.len());
        }
    }
}
