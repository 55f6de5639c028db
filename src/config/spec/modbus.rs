//! The Modbus vocabulary of the config file: register tables, data types and word orders, with
//! their names as written in TOML. Shared by validation (`config::validate`) and the driver
//! (`device::modbus`); the decoding itself lives in `device::modbus::decode`.

use std::fmt;
use std::str::FromStr;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Coil,
    Discrete,
    Holding,
    Input,
}

impl Table {
    pub const NAMES: &'static str = "holding, input, coil, discrete";

    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
    /// Largest quantity one read request may carry (Modbus application protocol spec §6).
    pub fn max_per_request(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }
}

impl FromStr for Table {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "holding" => Table::Holding,
            "input" => Table::Input,
            "coil" => Table::Coil,
            "discrete" => Table::Discrete,
            _ => return Err(()),
        })
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::Discrete => "discrete",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
    /// Text in `length` registers, two bytes per register.
    String,
}

impl DataType {
    pub const NAMES: &'static str = "bool, u16, i16, u32, i32, f32, u64, i64, f64, string";

    /// Registers (or bits, for bit tables) one value occupies; a string's width is its
    /// configured length, so 0 here.
    pub fn width(self) -> u16 {
        match self {
            DataType::String => 0,
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// The raw integer range of an integer type, as f64 (exact for all but the 64-bit ends,
    /// which only matter for range checks of absurd values).
    pub fn integer_range(self) -> Option<(f64, f64)> {
        Some(match self {
            DataType::U16 => (0.0, u16::MAX as f64),
            DataType::I16 => (i16::MIN as f64, i16::MAX as f64),
            DataType::U32 => (0.0, u32::MAX as f64),
            DataType::I32 => (i32::MIN as f64, i32::MAX as f64),
            DataType::U64 => (0.0, u64::MAX as f64),
            DataType::I64 => (i64::MIN as f64, i64::MAX as f64),
            _ => return None,
        })
    }
}

impl FromStr for DataType {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "bool" => DataType::Bool,
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "f32" => DataType::F32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f64" => DataType::F64,
            "string" => DataType::String,
            _ => return Err(()),
        })
    }
}

/// Byte order of a multi-register value, named by where the big-endian bytes A B C D land.
/// `ABCD`: big-endian words, high word first. `CDAB`: low word first. `BADC`: bytes swapped in
/// each word. `DCBA`: both. For 64-bit values the same rule applies to all four words, and the
/// 8-byte names (ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA) are accepted as the same four orders.
/// For strings only the byte swap matters in practice (BADC: low byte first in each register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordOrder {
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl WordOrder {
    pub const NAMES: &'static str =
        "ABCD, CDAB, BADC, DCBA (or for 64-bit: ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA)";
}

impl FromStr for WordOrder {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "ABCD" => WordOrder::Abcd,
            "CDAB" => WordOrder::Cdab,
            "BADC" => WordOrder::Badc,
            "DCBA" => WordOrder::Dcba,
            "ABCDEFGH" => WordOrder::Abcd,
            "GHEFCDAB" => WordOrder::Cdab,
            "BADCFEHG" => WordOrder::Badc,
            "HGFEDCBA" => WordOrder::Dcba,
            _ => return Err(()),
        })
    }
}
