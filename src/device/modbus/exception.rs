//! A Modbus exception as a device answered it: our own type, so no tokio-modbus type leaves
//! `device/`. The bus converts the crate's exception code into this at the one place it reads
//! answers; everything above (poll readings, command results, `scan`) formats it through its
//! one `Display`, `NN (Name)`: the code as two decimal digits and the standard name
//! (`02 (IllegalDataAddress)`), or `Custom(n)` for a code the spec does not name.
//!
//! Pure: no I/O, no dependency on the transport crate.

use std::fmt;

/// The exception code a device sent instead of an answer (function code with bit 7 set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModbusException {
    pub code: u8,
}

impl ModbusException {
    pub fn new(code: u8) -> Self {
        ModbusException { code }
    }

    /// The standard name of the code (Modbus Application Protocol v1.1b3, section 7), or
    /// `None` for a code the spec does not define.
    pub fn name(&self) -> Option<&'static str> {
        Some(match self.code {
            0x01 => "IllegalFunction",
            0x02 => "IllegalDataAddress",
            0x03 => "IllegalDataValue",
            0x04 => "ServerDeviceFailure",
            0x05 => "Acknowledge",
            0x06 => "ServerDeviceBusy",
            0x08 => "MemoryParityError",
            0x0A => "GatewayPathUnavailable",
            0x0B => "GatewayTargetDevice",
            _ => return None,
        })
    }
}

impl fmt::Display for ModbusException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{:02} ({name})", self.code),
            None => write!(f, "{:02} (Custom({}))", self.code, self.code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exception_shows_its_two_digit_code_and_its_standard_name() {
        let cases: &[(u8, &str)] = &[
            (1, "01 (IllegalFunction)"),
            (2, "02 (IllegalDataAddress)"),
            (3, "03 (IllegalDataValue)"),
            (4, "04 (ServerDeviceFailure)"),
            (5, "05 (Acknowledge)"),
            (6, "06 (ServerDeviceBusy)"),
            (7, "07 (Custom(7))"),
            (8, "08 (MemoryParityError)"),
            (10, "10 (GatewayPathUnavailable)"),
            (11, "11 (GatewayTargetDevice)"),
            (0, "00 (Custom(0))"),
            (200, "200 (Custom(200))"),
        ];
        for &(code, want) in cases {
            assert_eq!(ModbusException::new(code).to_string(), want, "code {code}");
        }
    }

    #[test]
    fn the_text_is_what_the_transport_crate_printed_before() {
        // Until this type existed the texts were `{:02} ({:?})` of tokio-modbus's ExceptionCode;
        // logs, results and tests grep them, so they must not change.
        for code in 0..=u8::MAX {
            let theirs = tokio_modbus::ExceptionCode::new(code);
            assert_eq!(
                ModbusException::new(code).to_string(),
                format!("{:02} ({theirs:?})", u8::from(theirs)),
                "code {code}"
            );
        }
    }
}
