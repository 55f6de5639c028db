//! The serial vocabulary of the config file: port settings, framing of binary frames and lines,
//! how fields are parsed out of a frame, built-in sensors and checksum kinds. Shared by
//! validation (`config::validate::serial`) and the serial task (`device::serial`), which owns
//! what these mean at run time (framing, parsing, decoding).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use regex::Regex;

/// Line settings of one port, as validated from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSettings {
    pub path: String,
    pub baud: u32,
    /// 5 to 8.
    pub data_bits: u8,
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl Parity {
    pub const NAMES: &'static str = "none, even, odd";
}

impl std::str::FromStr for Parity {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "none" => Parity::None,
            "even" => Parity::Even,
            "odd" => Parity::Odd,
            _ => return Err(()),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FramingSpec {
    Line {
        delimiter: Vec<u8>,
        max_length: usize,
    },
    Binary(BinarySpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BinarySpec {
    pub start: Vec<u8>,
    pub length: FrameLength,
    pub end: Vec<u8>,
    pub checksum: Option<ChecksumSpec>,
}

/// How long a binary frame is, start and end bytes included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameLength {
    Fixed(usize),
    /// The byte at offset `at` plus `add` is the total frame length.
    Field {
        at: usize,
        add: i64,
    },
}

/// Offsets are from the frame start when ≥ 0 and from the frame end when negative (so the
/// same spec works for variable-length frames). `to` is exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChecksumSpec {
    pub kind: Checksum,
    pub from: i64,
    pub to: i64,
    pub at: i64,
}

/// Frames longer than this are impossible with a one-byte length field and a small `add`; it
/// bounds memory when the length field says something absurd.
pub const MAX_BINARY_FRAME: usize = 4096;

impl BinarySpec {
    /// The largest frame this spec can describe.
    pub fn max_length(&self) -> usize {
        match self.length {
            FrameLength::Fixed(n) => n,
            FrameLength::Field { add, .. } => {
                (255 + add).clamp(0, MAX_BINARY_FRAME as i64) as usize
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum ParseSpec {
    /// Named captures are the fields.
    Regex(Regex),
    /// `key<assign>value` pairs separated by `separators` (any of these characters).
    KeyValue { separators: String, assign: String },
    /// One JSON object per frame; a field is a dotted path into it (`"env.temp"`, `"list.0"`).
    Json,
    /// Columns split at `separator`, each trimmed; a field is a 0-based column index.
    Csv { separator: String },
    /// Binary frames: a field is a byte offset, decoded by the point's type and byte order.
    Binary,
}

// By the pattern's text: two configs with the same regex parse alike (what a reload compares).
impl PartialEq for ParseSpec {
    fn eq(&self, other: &Self) -> bool {
        use ParseSpec::*;
        match (self, other) {
            (Regex(a), Regex(b)) => a.as_str() == b.as_str(),
            (
                KeyValue {
                    separators: s1,
                    assign: a1,
                },
                KeyValue {
                    separators: s2,
                    assign: a2,
                },
            ) => s1 == s2 && a1 == a2,
            (Json, Json) | (Binary, Binary) => true,
            (Csv { separator: a }, Csv { separator: b }) => a == b,
            _ => false,
        }
    }
}

impl ParseSpec {
    pub const NAMES: &'static str = "regex, kv, json, csv, binary";
}

/// Where a point's value sits in a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A regex capture name, a key, or a JSON path.
    Field(String),
    Column(usize),
    Bytes {
        offset: usize,
        little_endian: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl FieldType {
    pub const NAMES: &'static str = "bool, u8, i8, u16, i16, u32, i32, u64, i64, f32, f64";

    /// Bytes the value occupies in a binary frame.
    pub fn width(self) -> usize {
        match self {
            FieldType::Bool | FieldType::U8 | FieldType::I8 => 1,
            FieldType::U16 | FieldType::I16 => 2,
            FieldType::U32 | FieldType::I32 | FieldType::F32 => 4,
            FieldType::U64 | FieldType::I64 | FieldType::F64 => 8,
        }
    }
}

impl FromStr for FieldType {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "bool" => FieldType::Bool,
            "u8" => FieldType::U8,
            "i8" => FieldType::I8,
            "u16" => FieldType::U16,
            "i16" => FieldType::I16,
            "u32" => FieldType::U32,
            "i32" => FieldType::I32,
            "u64" => FieldType::U64,
            "i64" => FieldType::I64,
            "f32" => FieldType::F32,
            "f64" => FieldType::F64,
            _ => return Err(()),
        })
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FieldType::Bool => "bool",
            FieldType::U8 => "u8",
            FieldType::I8 => "i8",
            FieldType::U16 => "u16",
            FieldType::I16 => "i16",
            FieldType::U32 => "u32",
            FieldType::I32 => "i32",
            FieldType::U64 => "u64",
            FieldType::I64 => "i64",
            FieldType::F32 => "f32",
            FieldType::F64 => "f64",
        };
        f.write_str(s)
    }
}

/// A configured point of a generic serial device.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldPoint {
    pub name: Arc<str>,
    pub source: Source,
    pub field_type: FieldType,
    pub unit: Option<Arc<str>>,
    pub scale: f64,
    pub offset: f64,
    /// At most this many decimal places in the published value (after scale and offset).
    pub decimals: Option<u8>,
    /// Which readings are published.
    pub report: super::report::ReportPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensor {
    Sds011,
    Mhz19b,
    Nmea,
}

impl FromStr for Sensor {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "sds011" => Sensor::Sds011,
            "mhz19b" => Sensor::Mhz19b,
            "nmea" => Sensor::Nmea,
            _ => return Err(()),
        })
    }
}

impl fmt::Display for Sensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sensor::Sds011 => "sds011",
            Sensor::Mhz19b => "mhz19b",
            Sensor::Nmea => "nmea",
        })
    }
}

/// A one-byte checksum over a slice of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// Low byte of the sum of the covered bytes (Nova SDS011).
    Sum8,
    /// Two's complement of the low byte of the sum: covered bytes + checksum ≡ 0 (Winsen MH-Z19B).
    Sum8Neg,
    /// XOR of the covered bytes (NMEA 0183, many ad-hoc protocols).
    Xor8,
}

impl FromStr for Checksum {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "sum8" => Checksum::Sum8,
            "sum8_neg" => Checksum::Sum8Neg,
            "xor8" => Checksum::Xor8,
            _ => return Err(()),
        })
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Checksum::Sum8 => "sum8",
            Checksum::Sum8Neg => "sum8_neg",
            Checksum::Xor8 => "xor8",
        })
    }
}
