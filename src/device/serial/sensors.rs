//! Built-in drivers for popular serial sensors, chosen by name in the config: Nova SDS011
//! (PM2.5/PM10), Winsen MH-Z19B (CO2, command/response) and NMEA 0183 GPS (GGA and RMC).
//!
//! Each driver is data (its framing, its request, its points) plus a pure decode of one frame.
//! Checksums of binary frames are verified by the framer from the spec given here; NMEA's is
//! verified in `decode`, because it lives inside the text line. Nothing here does I/O or panics
//! on any input; tested as tables with frames built from the datasheets.

use crate::config::spec::serial::Sensor;
use crate::config::spec::serial::{BinarySpec, Checksum, ChecksumSpec, FrameLength, FramingSpec};

use super::checksum::nmea_body;

use crate::flow::Value;

/// The MH-Z19B "read gas concentration" command (datasheet §"Commands": 0x86).
pub const MHZ19B_READ: [u8; 9] = [0xFF, 0x01, 0x86, 0x00, 0x00, 0x00, 0x00, 0x00, 0x79];

/// Why a frame the framer accepted still yields no values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad checksum")]
    BadChecksum,
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl Sensor {
    pub const NAMES: &'static str = "sds011, mhz19b, nmea";

    pub fn framing(self) -> FramingSpec {
        match self {
            // AA C0 PM25L PM25H PM10L PM10H ID1 ID2 CS AB; CS = sum of bytes 2..=7.
            Sensor::Sds011 => FramingSpec::Binary(BinarySpec {
                start: vec![0xAA, 0xC0],
                length: FrameLength::Fixed(10),
                end: vec![0xAB],
                checksum: Some(ChecksumSpec {
                    kind: Checksum::Sum8,
                    from: 2,
                    to: 8,
                    at: 8,
                }),
            }),
            // FF 86 HIGH LOW TEMP+40 S U1 U2 CS; bytes 1..=8 sum to 0 mod 256.
            Sensor::Mhz19b => FramingSpec::Binary(BinarySpec {
                start: vec![0xFF, 0x86],
                length: FrameLength::Fixed(9),
                end: vec![],
                checksum: Some(ChecksumSpec {
                    kind: Checksum::Sum8Neg,
                    from: 1,
                    to: 8,
                    at: 8,
                }),
            }),
            // NMEA 0183 limits a sentence to 82 characters; some receivers exceed it a little.
            Sensor::Nmea => FramingSpec::Line {
                delimiter: b"\n".to_vec(),
                max_length: 120,
            },
        }
    }

    /// Bytes that can only start a line of this sensor: the framer resynchronises on them, so
    /// noise or a cut-off sentence on the same line does not cost the sentence behind it.
    pub fn line_starts(self) -> &'static [u8] {
        match self {
            // NMEA 0183 reserves `$` and `!` as sentence starts; neither occurs inside one.
            Sensor::Nmea => b"$!",
            Sensor::Sds011 | Sensor::Mhz19b => &[],
        }
    }

    /// The request a polled sensor needs; `None` for sensors that stream by themselves.
    pub fn request(self) -> Option<Vec<u8>> {
        match self {
            Sensor::Mhz19b => Some(MHZ19B_READ.to_vec()),
            Sensor::Sds011 | Sensor::Nmea => None,
        }
    }

    /// Every point this sensor can produce, with its unit.
    pub fn points(self) -> &'static [(&'static str, Option<&'static str>)] {
        match self {
            Sensor::Sds011 => &[("pm2_5", Some("µg/m³")), ("pm10", Some("µg/m³"))],
            Sensor::Mhz19b => &[("co2", Some("ppm"))],
            Sensor::Nmea => &[
                ("latitude", Some("°")),
                ("longitude", Some("°")),
                ("altitude", Some("m")),
                ("fix", None),
                ("satellites", None),
                ("speed", Some("kn")),
                ("course", Some("°")),
            ],
        }
    }

    pub fn unit(self, point: &str) -> Option<&'static str> {
        self.points()
            .iter()
            .find(|(p, _)| *p == point)
            .and_then(|(_, u)| *u)
    }

    /// Values of one frame. `Ok(vec![])` is a valid frame without values for us (an NMEA
    /// sentence type we do not read, or RMC without a fix): the sensor is alive.
    pub fn decode(self, frame: &[u8]) -> Result<Vec<(&'static str, Value)>, DecodeError> {
        match self {
            Sensor::Sds011 => {
                let b = exact::<10>(frame)?;
                let le = |i: usize| f64::from(u16::from_le_bytes([b[i], b[i + 1]])) / 10.0;
                Ok(vec![
                    ("pm2_5", Value::Float(le(2))),
                    ("pm10", Value::Float(le(4))),
                ])
            }
            Sensor::Mhz19b => {
                let b = exact::<9>(frame)?;
                Ok(vec![(
                    "co2",
                    Value::UInt(u64::from(u16::from_be_bytes([b[2], b[3]]))),
                )])
            }
            Sensor::Nmea => nmea(frame),
        }
    }
}

fn exact<const N: usize>(frame: &[u8]) -> Result<[u8; N], DecodeError> {
    frame
        .try_into()
        .map_err(|_| DecodeError::Malformed(format!("{} bytes, expected {N}", frame.len())))
}

fn nmea(frame: &[u8]) -> Result<Vec<(&'static str, Value)>, DecodeError> {
    let line = std::str::from_utf8(frame)
        .map_err(|_| DecodeError::Malformed("not ASCII text".into()))?
        .trim();
    if !line.starts_with(['$', '!']) {
        return Err(DecodeError::Malformed("does not start with '$'".into()));
    }
    let body = nmea_body(line).ok_or(DecodeError::BadChecksum)?;
    let f: Vec<&str> = body.split(',').collect();
    let kind = f.first().copied().unwrap_or_default();
    // The talker (GP, GN, GL, GA, BD…) does not matter; the sentence type does.
    let sentence = kind.get(2..).unwrap_or_default();
    let field = |i: usize| f.get(i).copied().unwrap_or_default();
    let mut out = Vec::new();
    match sentence {
        "GGA" => {
            let fix: u64 = field(6)
                .parse()
                .map_err(|_| DecodeError::Malformed(format!("GGA fix quality {:?}", field(6))))?;
            out.push(("fix", Value::UInt(fix)));
            if let Ok(n) = field(7).parse::<u64>() {
                out.push(("satellites", Value::UInt(n)));
            }
            if fix > 0 {
                push_position(&mut out, field(2), field(3), field(4), field(5))?;
                if !field(9).is_empty() {
                    let alt = number(field(9), "GGA altitude")?;
                    out.push(("altitude", Value::Float(alt)));
                }
            }
        }
        // Status V (void) means the receiver has no fix: the position fields are stale.
        "RMC" if field(2) == "A" => {
            push_position(&mut out, field(3), field(4), field(5), field(6))?;
            if !field(7).is_empty() {
                out.push(("speed", Value::Float(number(field(7), "RMC speed")?)));
            }
            if !field(8).is_empty() {
                out.push(("course", Value::Float(number(field(8), "RMC course")?)));
            }
        }
        _ => {}
    }
    Ok(out)
}

fn number(s: &str, what: &str) -> Result<f64, DecodeError> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(DecodeError::Malformed(format!("{what} {s:?}"))),
    }
}

fn push_position(
    out: &mut Vec<(&'static str, Value)>,
    lat: &str,
    ns: &str,
    lon: &str,
    ew: &str,
) -> Result<(), DecodeError> {
    let lat = degrees(lat, 2, 90.0, ns, "N", "S")?;
    let lon = degrees(lon, 3, 180.0, ew, "E", "W")?;
    out.push(("latitude", Value::Float(lat)));
    out.push(("longitude", Value::Float(lon)));
    Ok(())
}

/// NMEA `ddmm.mmmm` / `dddmm.mmmm` → signed decimal degrees.
fn degrees(
    s: &str,
    deg_digits: usize,
    max: f64,
    hemi: &str,
    pos: &str,
    neg: &str,
) -> Result<f64, DecodeError> {
    let bad = || DecodeError::Malformed(format!("coordinate {s:?} {hemi:?}"));
    let (d, m) = (
        s.get(..deg_digits).ok_or_else(bad)?,
        s.get(deg_digits..).ok_or_else(bad)?,
    );
    let d: f64 = d.parse().map_err(|_| bad())?;
    let m: f64 = m.parse().map_err(|_| bad())?;
    if !(0.0..60.0).contains(&m) {
        return Err(bad());
    }
    let v = d + m / 60.0;
    if v > max {
        return Err(bad());
    }
    if hemi == pos {
        Ok(v)
    } else if hemi == neg {
        Ok(-v)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::serial::{Checksum, FieldPoint, FieldType, ParseSpec, Source};
    use crate::device::serial::framing::{FrameEvent, Framer};

    #[test]
    fn sds011_frames_decode_to_exact_pm_values() {
        // datasheet example: PM2.5 = (0x04D4)/10 = 123.6, PM10 = 0x0A3A/10 = 261.8
        let frame = [0xAA, 0xC0, 0xD4, 0x04, 0x3A, 0x0A, 0xA1, 0x60, 0x1D, 0xAB];
        let mut fr = Framer::new(Sensor::Sds011.framing());
        let mut ev = Vec::new();
        fr.push(&frame, &mut ev);
        assert_eq!(ev, vec![FrameEvent::Frame(frame.to_vec())]);
        assert_eq!(
            Sensor::Sds011.decode(&frame),
            Ok(vec![
                ("pm2_5", Value::Float(123.6)),
                ("pm10", Value::Float(261.8))
            ])
        );
        assert!(Sensor::Sds011.decode(&frame[..9]).is_err());
    }

    #[test]
    fn mhz19b_request_and_response_follow_the_datasheet() {
        assert_eq!(
            Checksum::Sum8Neg.compute(&MHZ19B_READ[1..8]),
            MHZ19B_READ[8]
        );
        // 0x01F4 = 500 ppm, checksum = -(0x86+0x01+0xF4+0x47) mod 256
        let mut resp = [0xFF, 0x86, 0x01, 0xF4, 0x47, 0x00, 0x00, 0x00, 0x00];
        resp[8] = Checksum::Sum8Neg.compute(&resp[1..8]);
        let mut fr = Framer::new(Sensor::Mhz19b.framing());
        let mut ev = Vec::new();
        fr.push(&resp, &mut ev);
        assert_eq!(ev, vec![FrameEvent::Frame(resp.to_vec())]);
        assert_eq!(
            Sensor::Mhz19b.decode(&resp),
            Ok(vec![("co2", Value::UInt(500))])
        );
    }

    fn with_checksum(body: &str) -> String {
        format!("${body}*{:02X}", Checksum::Xor8.compute(body.as_bytes()))
    }

    #[test]
    fn nmea_gga_and_rmc_decode_position_fix_and_satellites() {
        let gga = with_checksum("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,");
        let lat = 48.0 + 7.038 / 60.0;
        let lon = 11.0 + 31.0 / 60.0;
        type Decoded = Result<Vec<(&'static str, Value)>, DecodeError>;
        let cases: Vec<(String, Decoded)> = vec![
            (
                gga.clone(),
                Ok(vec![
                    ("fix", Value::UInt(1)),
                    ("satellites", Value::UInt(8)),
                    ("latitude", Value::Float(lat)),
                    ("longitude", Value::Float(lon)),
                    ("altitude", Value::Float(545.4)),
                ]),
            ),
            (
                with_checksum("GNGGA,000000,3356.5000,S,15112.0000,W,2,12,0.8,-12.5,M,,M,,"),
                Ok(vec![
                    ("fix", Value::UInt(2)),
                    ("satellites", Value::UInt(12)),
                    ("latitude", Value::Float(-(33.0 + 56.5 / 60.0))),
                    ("longitude", Value::Float(-(151.0 + 12.0 / 60.0))),
                    ("altitude", Value::Float(-12.5)),
                ]),
            ),
            (
                with_checksum("GPGGA,123519,,,,,0,00,,,M,,M,,"),
                Ok(vec![
                    ("fix", Value::UInt(0)),
                    ("satellites", Value::UInt(0)),
                ]),
            ),
            (
                with_checksum("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"),
                Ok(vec![
                    ("latitude", Value::Float(lat)),
                    ("longitude", Value::Float(lon)),
                    ("speed", Value::Float(22.4)),
                    ("course", Value::Float(84.4)),
                ]),
            ),
            (
                with_checksum("GPRMC,123519,V,4807.038,N,01131.000,E,,,230394,,"),
                Ok(vec![]),
            ),
            (with_checksum("GPGSV,3,1,11,03,03,111,00"), Ok(vec![])),
            (gga.replace("*", "0*"), Err(DecodeError::BadChecksum)),
            (
                with_checksum("GPGGA,123519,48x7.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
                Err(DecodeError::Malformed(
                    "coordinate \"48x7.038\" \"N\"".into(),
                )),
            ),
            (
                with_checksum("GPGGA,123519,4807.038,Q,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"),
                Err(DecodeError::Malformed(
                    "coordinate \"4807.038\" \"Q\"".into(),
                )),
            ),
            (
                "garbage".into(),
                Err(DecodeError::Malformed("does not start with '$'".into())),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(Sensor::Nmea.decode(line.as_bytes()), want, "{line}");
        }
        // The classic example sentence carries the checksum the receivers print.
        assert!(gga.ends_with("*47"), "{gga}");
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_framer_decoder_or_parser() {
        use crate::device::serial::parse::parse_frame;
        use std::sync::Arc;
        // xorshift: reproducible noise without a dependency
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Bytes that matter to the protocols, so the noise often looks almost right.
        const ALPHABET: &[u8] = b"\xAA\xC0\xAB\xFF\x86$*,.\n\r0123456789ABCDEFNSEWGPGGARMC=:{}\"tx";
        let text_point = |f: &str, t| FieldPoint {
            name: Arc::from(f),
            source: Source::Field(f.into()),
            field_type: t,
            unit: None,
            scale: 1.0,
            offset: 0.0,
            decimals: None,
            report: Default::default(),
        };
        let points = [
            text_point("t", FieldType::F64),
            text_point("x", FieldType::I8),
            text_point("t.x", FieldType::Bool),
            FieldPoint {
                source: Source::Column(3),
                ..text_point("c", FieldType::U64)
            },
        ];
        let specs = [
            ParseSpec::Json,
            ParseSpec::KeyValue {
                separators: String::new(),
                assign: "=".into(),
            },
            ParseSpec::Csv {
                separator: ",".into(),
            },
            ParseSpec::Regex(regex::Regex::new(r"(?P<t>[0-9.]+)(?P<x>-?[0-9]*)").unwrap()),
        ];
        for sensor in [Sensor::Sds011, Sensor::Mhz19b, Sensor::Nmea] {
            let mut framer = Framer::new(sensor.framing());
            let mut events = Vec::new();
            for _ in 0..20_000 {
                let n = (next() % 40) as usize;
                let chunk: Vec<u8> = (0..n)
                    .map(|_| {
                        let r = next();
                        if r % 4 == 0 {
                            r as u8 >> 1
                        } else {
                            ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                        }
                    })
                    .collect();
                events.clear();
                framer.push(&chunk, &mut events);
                for ev in &events {
                    if let FrameEvent::Frame(f) = ev {
                        let _ = sensor.decode(f);
                        for spec in &specs {
                            let _ = parse_frame(spec, f, &points);
                        }
                    }
                }
            }
        }
    }
}
