//! Devices: the `Driver` trait every device kind implements, and the drivers themselves.
//!
//! A driver's `poll()` does one complete read of the device's points and returns readings or a
//! typed error. It never sleeps or retries: timing, backoff and status belong to the poller.

pub mod modbus;
pub mod serial;
pub mod value;

use std::future::Future;
use std::time::Duration;

use crate::flow::Reading;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot resolve {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("connection lost: {0}")]
    Transport(String),
    #[error("{0}")]
    Port(String),
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
}
