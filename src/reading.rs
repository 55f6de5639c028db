//! The one type that flows from devices to the pipeline: a `Reading` (a decoded value of one
//! point), plus device status changes. Drivers produce them; nothing downstream knows which
//! driver made them.

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

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
