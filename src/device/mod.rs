//! Devices: the `Driver` trait every device kind implements, and the drivers themselves.
//!
//! A driver's `poll()` does one complete read of the device's points and returns readings or a
//! typed error. It never sleeps or retries: timing, backoff and status belong to the poller.
//! `status` is the pure online/offline bookkeeping the poller and the serial task share.

pub mod modbus;
pub mod serial;
pub mod status;
pub mod value;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::flow::Reading;

/// Why a device could not be read or written. The texts are what the offline reason, the
/// command results and the CLI show; `line` (a bus name, or a Modbus TCP device's name) is
/// carried for logs and callers, not printed, so the texts stay what they always were.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot resolve {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The task that owns the line has ended (shutdown): nothing can be asked on it any more.
    #[error("connection lost: bus {line} is not running")]
    BusGone { line: Arc<str> },
    /// The connection itself failed (unplugged adapter, reset socket, never connected).
    #[error("connection lost: {reason}")]
    Link { line: Arc<str>, reason: String },
    /// What arrived was not the answer to the request (another unit's reply, a wrong quantity
    /// or echo, bytes the decoder gave up on), also on the extra attempt.
    #[error("connection lost: bad answer: {reason}")]
    BadAnswer { line: Arc<str>, reason: String },
    /// The unit answers, but its replies fail the CRC: a wiring or line-settings fault.
    #[error("answers, but with bad CRCs (check baud, parity, termination)")]
    BadCrc { line: Arc<str> },
    /// A valid reply came from another unit id than the one asked.
    #[error("a reply came from unit {got} instead (two devices with one id, or a wrong unit_id)")]
    WrongUnit { line: Arc<str>, got: u8 },
    #[error("{0}")]
    Port(String),
}

impl DeviceError {
    /// A short, fixed name of the kind of failure (a metric label: never device data).
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceError::Resolve { .. } => "resolve",
            DeviceError::Connect { .. } => "connect",
            DeviceError::Timeout(_) => "timeout",
            DeviceError::BusGone { .. } => "bus_gone",
            DeviceError::Link { .. } => "link",
            DeviceError::BadAnswer { .. } => "bad_answer",
            DeviceError::BadCrc { .. } => "bad_crc",
            DeviceError::WrongUnit { .. } => "wrong_unit",
            DeviceError::Port(_) => "port",
        }
    }
}

pub trait Driver: Send {
    /// One complete read of every point. Per-point failures that the device reported (e.g. a
    /// Modbus exception) come back as readings with bad quality; an `Err` means the device did
    /// not answer at all.
    fn poll(&mut self) -> impl Future<Output = Result<Vec<Reading>, DeviceError>> + Send;

    /// The longest one `poll()` can legitimately take (its timeouts added up). A poll that runs
    /// longer is treated as a hung loop by the watchdog (see `ops::health`).
    fn max_poll_time(&self) -> std::time::Duration {
        std::time::Duration::from_secs(120)
    }

    /// A poll ended after the next one was due: the device is not kept at its interval. Only
    /// a driver on a shared line does something with it (its line's overrun check).
    fn missed_interval(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_errors_name_what_broke_without_changing_the_texts_users_know() {
        let line: Arc<str> = Arc::from("rs485");
        let cases: Vec<(DeviceError, &str)> = vec![
            (
                DeviceError::BusGone { line: line.clone() },
                "connection lost: bus rs485 is not running",
            ),
            (
                DeviceError::Link {
                    line: line.clone(),
                    reason: "broken pipe".into(),
                },
                "connection lost: broken pipe",
            ),
            (
                DeviceError::BadAnswer {
                    line,
                    reason: "3 registers for a request of 2".into(),
                },
                "connection lost: bad answer: 3 registers for a request of 2",
            ),
            (
                DeviceError::Timeout(Duration::from_millis(300)),
                "no answer within 300ms",
            ),
            (
                DeviceError::BadCrc {
                    line: Arc::from("rs485"),
                },
                "answers, but with bad CRCs (check baud, parity, termination)",
            ),
            (
                DeviceError::WrongUnit {
                    line: Arc::from("rs485"),
                    got: 7,
                },
                "a reply came from unit 7 instead (two devices with one id, or a wrong unit_id)",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want, "{e:?}");
        }
    }
}
