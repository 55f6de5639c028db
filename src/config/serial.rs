//! The validated configuration of a `kind = "serial_line"` device: port settings, what runs on
//! the line (a built-in sensor driver, or framing + parsing + points), and how it is read (the
//! sensor streams, or it is polled with a request). Built by `validate` only; every value here
//! has been range-checked, so the serial task can rely on it.

use crate::config::spec::report::{PayloadShape, ReportPolicy};
use crate::config::spec::serial::{FieldPoint, FramingSpec, ParseSpec, PortSettings, Sensor};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct SerialDevice {
    pub name: Arc<str>,
    pub port: PortSettings,
    pub protocol: Protocol,
    pub mode: Mode,
    /// Streaming: offline when no valid frame arrived for this long. Polled: how long to wait
    /// for the answer to one request.
    pub timeout: Duration,
    /// Cap of the exponential backoff, for failed polls and for reopening a lost port.
    pub backoff_max: Duration,
    /// One message per point or one per frame (a poll of the sensor).
    pub payload: PayloadShape,
    /// The default of its points (a driver's built-in points use it as is).
    pub report: ReportPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Protocol {
    Sensor(Sensor),
    Custom {
        framing: FramingSpec,
        parse: ParseSpec,
        points: Vec<FieldPoint>,
    },
}

impl Protocol {
    pub fn framing(&self) -> FramingSpec {
        match self {
            Protocol::Sensor(s) => s.framing(),
            Protocol::Custom { framing, .. } => framing.clone(),
        }
    }

    /// Bytes a line can only start with (the framer resynchronises on them); none for custom
    /// framing, whose lines may contain anything.
    pub fn line_starts(&self) -> &'static [u8] {
        match self {
            Protocol::Sensor(s) => s.line_starts(),
            Protocol::Custom { .. } => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// The sensor sends by itself.
    Stream,
    /// Send `request` every `interval`, then wait up to `timeout` for a valid answer.
    Polled {
        request: Vec<u8>,
        interval: Duration,
    },
}
