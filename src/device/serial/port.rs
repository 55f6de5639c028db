//! The only place that touches a serial device node: open with the configured line settings,
//! read, write, discard stale input, and turn OS errors into messages a field engineer can act on
//! (a missing device, `dialout` for permission denied, a port someone else holds).
//!
//! Invariants: every open sets the line discipline from scratch (raw mode, VMIN=1: termios state
//! survives between openers of the same tty) and discards bytes that were queued before we
//! opened; the port is opened exclusively, so exactly one task owns it. No modem-control or
//! RS-485 ioctls are issued, so pseudo-terminals (ENOTTY for those) work like real ports.

use crate::config::spec::serial::{Parity, PortSettings};
use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{ClearBuffer, SerialPort, SerialPortBuilderExt, SerialStream};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("{path}: no such device; is the device or its USB adapter plugged in? Stable names: /dev/serial/by-id/ or a udev rule (hardware/udev/)")]
    NotFound { path: String },
    #[error("{path}: permission denied; add the user fieldbridge runs as to the `dialout` group (`sudo usermod -aG dialout <user>`, then restart the service or log in again)")]
    PermissionDenied { path: String },
    #[error("{path}: busy; another program holds the port (the serial console on a Raspberry Pi UART, ModemManager, or a second device entry using the same path)")]
    Busy { path: String },
    #[error("{path}: cannot open: {reason}")]
    Open { path: String, reason: String },
    #[error("{path}: the port closed (adapter unplugged?)")]
    Closed { path: String },
    #[error("{path}: read failed (adapter unplugged?): {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: write failed (adapter unplugged?): {reason}")]
    Write { path: String, reason: String },
}

impl PortError {
    /// Maps an open error of the serialport crate to the message a user can act on.
    pub fn from_open(path: &str, e: &tokio_serial::Error) -> PortError {
        let path = path.to_string();
        match e.kind() {
            tokio_serial::ErrorKind::Io(io::ErrorKind::NotFound) => PortError::NotFound { path },
            tokio_serial::ErrorKind::Io(io::ErrorKind::PermissionDenied) => {
                PortError::PermissionDenied { path }
            }
            // serialport maps EBUSY (TIOCEXCL held by another opener) to NoDevice.
            tokio_serial::ErrorKind::NoDevice => PortError::Busy { path },
            _ => PortError::Open {
                path,
                reason: e.to_string(),
            },
        }
    }
}

pub struct Port {
    stream: SerialStream,
    path: String,
}

impl Port {
    /// Opens and configures the port. Must run inside a tokio runtime (the stream registers with
    /// its reactor).
    pub fn open(s: &PortSettings) -> Result<Port, PortError> {
        // A missing path gives a clearer message than whatever the tty layer would say.
        if let Err(e) = std::fs::metadata(&s.path) {
            return Err(match e.kind() {
                io::ErrorKind::PermissionDenied => PortError::PermissionDenied {
                    path: s.path.clone(),
                },
                _ => PortError::NotFound {
                    path: s.path.clone(),
                },
            });
        }
        let data_bits = match s.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let parity = match s.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let stop_bits = if s.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        let stream = tokio_serial::new(&s.path, s.baud)
            .data_bits(data_bits)
            .parity(parity)
            .stop_bits(stop_bits)
            .flow_control(tokio_serial::FlowControl::None)
            .exclusive(true)
            .open_native_async()
            .map_err(|e| PortError::from_open(&s.path, &e))?;
        let mut port = Port {
            stream,
            path: s.path.clone(),
        };
        port.discard_input();
        Ok(port)
    }

    /// The configured stream, for a protocol stack that does its own framing (Modbus RTU).
    pub fn into_stream(self) -> SerialStream {
        self.stream
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Drops bytes received but not yet read: stale data from before the open, or a late answer
    /// to an earlier request that must not be taken for the next one.
    pub fn discard_input(&mut self) {
        if let Err(e) = self.stream.clear(ClearBuffer::Input) {
            tracing::debug!(path = %self.path, error = %e, "could not discard serial input");
        }
    }

    /// Reads what is available (at least one byte). End of file is an error: on a tty it means
    /// the other side is gone.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, PortError> {
        match self.stream.read(buf).await {
            Ok(0) => Err(PortError::Closed {
                path: self.path.clone(),
            }),
            Ok(n) => Ok(n),
            Err(e) => Err(PortError::Read {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
        }
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), PortError> {
        let r = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        }
        .await;
        r.map_err(|e| PortError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_errors_name_the_cause_and_the_fix() {
        use tokio_serial::{Error, ErrorKind};
        let cases = [
            (ErrorKind::Io(io::ErrorKind::NotFound), "no such device"),
            (
                ErrorKind::Io(io::ErrorKind::PermissionDenied),
                "`dialout` group",
            ),
            (ErrorKind::NoDevice, "busy"),
            (ErrorKind::InvalidInput, "cannot open"),
        ];
        for (kind, want) in cases {
            let msg = PortError::from_open("/dev/ttyUSB0", &Error::new(kind, "x")).to_string();
            assert!(msg.starts_with("/dev/ttyUSB0: "), "{msg}");
            assert!(msg.contains(want), "{kind:?}: {msg}");
        }
    }

    #[tokio::test]
    async fn opening_a_missing_device_says_it_is_not_there() {
        let s = PortSettings {
            path: "/dev/fieldbridge-test-no-such-port".into(),
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        };
        let e = Port::open(&s)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no such device"), "{e}");
    }
}
