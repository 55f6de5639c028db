//! The write handle of one Modbus device: what commands (and `fieldbridge write`) hold instead
//! of the bus task's internals. It owns the device's config and the handle of its line, and
//! does one write end to end: finds the point, validates and encodes the value (`write`, pure,
//! so a refused value never causes bus traffic), runs the exchange on the line (the bus
//! serialises it with the polls) and checks the answer (`check`, pure).
//!
//! A write counts as done only when the device confirmed it with the echo the spec prescribes
//! (the bus checks the echo); an exception, a timeout or any other answer is a `WriteFailure`
//! that says which function code was sent and what came back. `WriteFailure`'s `Display` is the
//! text a command's result carries; it does not retry beyond the device's `retries`.

use super::bus::{Answer, BusHandle};
use super::exception::ModbusException;
use super::write::{prepare, Input, WriteError};
use crate::config::Device;
use crate::device::DeviceError;

/// A device that can be written, with the line it is on.
#[derive(Clone)]
pub struct Writer {
    device: Device,
    bus: BusHandle,
}

/// A write the device confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The function code(s) sent, e.g. `FC06` or `FC03+FC16`.
    pub function: &'static str,
}

/// Why a write was not done.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailure {
    /// Refused before any bus traffic: bad payload, unknown device or point, read-only point,
    /// value out of range or not representable.
    #[error(transparent)]
    Refused(#[from] WriteError),
    /// The device answered the write with an exception: it did not execute it.
    #[error("device answered with Modbus exception {exception} to {function}")]
    Exception {
        function: &'static str,
        exception: ModbusException,
    },
    /// No confirmation: no answer in time, a bad answer, or the line is down. The write may or
    /// may not have been executed.
    #[error("device did not confirm the write ({function}): {error}")]
    NotConfirmed {
        function: &'static str,
        error: DeviceError,
    },
    /// An answer that is neither a confirmation nor an exception.
    #[error("unexpected answer to {function}: {answer:?}")]
    Unexpected {
        function: &'static str,
        answer: Answer,
    },
}

impl Writer {
    pub fn new(device: Device, bus: BusHandle) -> Self {
        Writer { device, bus }
    }

    /// Writes `input` to `point`, and returns only once the device confirmed it or it failed.
    pub async fn write(&self, point: &str, input: &Input) -> Result<Written, WriteFailure> {
        let d = &self.device;
        let Some(p) = d.points.iter().find(|p| *p.name == *point) else {
            return Err(WriteError::UnknownPoint {
                device: d.name.to_string(),
                point: crate::flow::excerpt(point).into_owned(),
            }
            .into());
        };
        let exchange = prepare(p, input, d.force_multiple_write)?;
        let function = exchange.function();
        let answer = self
            .bus
            .call(d.unit_id, exchange, d.timeout, d.retries)
            .await;
        check(function, answer)
    }
}

/// What the bus's outcome of a write exchange means for the write. Pure.
pub fn check(
    function: &'static str,
    answer: Result<Answer, DeviceError>,
) -> Result<Written, WriteFailure> {
    match answer {
        Ok(Answer::Written) => Ok(Written { function }),
        Ok(Answer::Exception(exception)) => Err(WriteFailure::Exception {
            function,
            exception,
        }),
        Ok(answer) => Err(WriteFailure::Unexpected { function, answer }),
        Err(error) => Err(WriteFailure::NotConfirmed { function, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// What the bus answered, and what the write handle makes of it.
    type Case = (Result<Answer, DeviceError>, Result<Written, &'static str>);

    #[test]
    fn only_the_confirming_echo_makes_a_write_done_and_every_failure_says_what_came_back() {
        let cases: Vec<Case> = vec![
            (Ok(Answer::Written), Ok(Written { function: "FC06" })),
            (
                Ok(Answer::Exception(ModbusException::new(2))),
                Err("device answered with Modbus exception 02 (IllegalDataAddress) to FC06"),
            ),
            (
                Ok(Answer::Words(vec![7])),
                Err("unexpected answer to FC06: Words([7])"),
            ),
            (
                Ok(Answer::Bits(vec![true])),
                Err("unexpected answer to FC06: Bits([true])"),
            ),
            (
                Err(DeviceError::Timeout(Duration::from_millis(300))),
                Err("device did not confirm the write (FC06): no answer within 300ms"),
            ),
            (
                Err(DeviceError::BusGone {
                    line: Arc::from("rs485"),
                }),
                Err("device did not confirm the write (FC06): connection lost: bus rs485 is not running"),
            ),
        ];
        for (answer, want) in cases {
            let shown = format!("{answer:?}");
            let got = check("FC06", answer).map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(String::from), "{shown}");
        }
    }

    #[test]
    fn a_refused_write_reads_as_the_validation_error() {
        let e = WriteFailure::from(WriteError::ReadOnly("x".into()));
        assert_eq!(e.to_string(), WriteError::ReadOnly("x".into()).to_string());
    }
}
