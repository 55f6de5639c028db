//! Pure checksums used by serial sensor protocols. No I/O, no allocation; tested as a table.
//!
//! Each function takes exactly the bytes the protocol covers; which bytes those are is decided by
//! the framing spec (`framing.rs`) or the sensor driver (`sensors.rs`), never here.

use crate::config::spec::serial::Checksum;

pub fn sum8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

pub fn xor8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a ^ b)
}

/// Checks an NMEA 0183 sentence `$...*hh` (without the line ending) and returns the body between
/// `$`/`!` and `*`. `None` when the sentence has no checksum or it does not match.
pub fn nmea_body(sentence: &str) -> Option<&str> {
    let rest = sentence
        .strip_prefix('$')
        .or_else(|| sentence.strip_prefix('!'))?;
    let (body, hex) = rest.rsplit_once('*')?;
    if hex.len() != 2 {
        return None;
    }
    let want = u8::from_str_radix(hex, 16).ok()?;
    (xor8(body.as_bytes()) == want).then_some(body)
}

impl Checksum {
    pub const NAMES: &'static str = "none, sum8, sum8_neg, xor8";

    pub fn compute(self, bytes: &[u8]) -> u8 {
        match self {
            Checksum::Sum8 => sum8(bytes),
            Checksum::Sum8Neg => sum8(bytes).wrapping_neg(),
            Checksum::Xor8 => xor8(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_the_values_from_the_sensor_datasheets() {
        let cases: &[(Checksum, &[u8], u8)] = &[
            // SDS011 datasheet example: AA C0 D4 04 3A 0A A1 60 1D AB, sum of data bytes 2..=7
            (Checksum::Sum8, &[0xD4, 0x04, 0x3A, 0x0A, 0xA1, 0x60], 0x1D),
            // MH-Z19B "read CO2" command: FF 01 86 00 00 00 00 00 79, over bytes 1..=7
            (Checksum::Sum8Neg, &[0x01, 0x86, 0, 0, 0, 0, 0], 0x79),
            (Checksum::Sum8Neg, &[], 0x00),
            (Checksum::Xor8, b"GPGGA", b'G' ^ b'P' ^ b'G' ^ b'G' ^ b'A'),
            (Checksum::Sum8, &[0xFF, 0x02], 0x01),
        ];
        for (c, bytes, want) in cases {
            assert_eq!(c.compute(bytes), *want, "{c} over {bytes:02X?}");
        }
    }

    #[test]
    fn nmea_sentences_pass_only_with_their_exact_checksum() {
        let good = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47";
        let cases: &[(&str, bool)] = &[
            (good, true),
            (
                "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48",
                false,
            ),
            (
                "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
                false,
            ),
            ("GPGGA,123519*47", false),
            ("$GPGGA*4", false),
            ("$GPGGA*ZZ", false),
            ("", false),
        ];
        for (s, ok) in cases {
            assert_eq!(nmea_body(s).is_some(), *ok, "{s}");
        }
        assert_eq!(
            nmea_body(good),
            Some("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
        );
    }
}
