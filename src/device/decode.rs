//! Pure Modbus data model: register tables, data types, word/byte order, and the decoding of raw
//! registers or bits into values with scale and offset. No I/O here; tested as tables.

use std::fmt;
use std::str::FromStr;

use crate::reading::Value;

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
}

impl DataType {
    pub const NAMES: &'static str = "bool, u16, i16, u32, i32, f32, u64, i64, f64";

    /// Registers (or bits, for bit tables) one value occupies.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
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
            _ => return Err(()),
        })
    }
}

/// Byte order of a multi-register value, named by where the big-endian bytes A B C D land.
/// `ABCD`: big-endian words, high word first. `CDAB`: low word first. `BADC`: bytes swapped in
/// each word. `DCBA`: both. For 64-bit values the same rule applies to all four words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordOrder {
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl WordOrder {
    pub const NAMES: &'static str = "ABCD, CDAB, BADC, DCBA";

    fn swaps(self) -> (bool, bool) {
        // (reverse the words, swap the bytes inside each word)
        match self {
            WordOrder::Abcd => (false, false),
            WordOrder::Cdab => (true, false),
            WordOrder::Badc => (false, true),
            WordOrder::Dcba => (true, true),
        }
    }
}

impl FromStr for WordOrder {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "ABCD" => WordOrder::Abcd,
            "CDAB" => WordOrder::Cdab,
            "BADC" => WordOrder::Badc,
            "DCBA" => WordOrder::Dcba,
            _ => return Err(()),
        })
    }
}

/// Turns `regs` (exactly `ty.width()` registers as the device sent them) into big-endian bytes.
fn ordered_bytes(regs: &[u16], order: WordOrder) -> Vec<u8> {
    let (reverse_words, swap_bytes) = order.swaps();
    let mut words: Vec<u16> = regs.to_vec();
    if reverse_words {
        words.reverse();
    }
    let mut out = Vec::with_capacity(words.len() * 2);
    for w in words {
        let w = if swap_bytes { w.swap_bytes() } else { w };
        out.extend_from_slice(&w.to_be_bytes());
    }
    out
}

/// Decodes one register-table value. `regs.len()` must equal `ty.width()`; the planner guarantees
/// it, and a short slice (a device answering with fewer registers) yields `None`, not a panic.
pub fn decode_registers(regs: &[u16], ty: DataType, order: WordOrder) -> Option<Raw> {
    if regs.len() != ty.width() as usize {
        return None;
    }
    let b = ordered_bytes(regs, order);
    Some(match ty {
        DataType::Bool => Raw::Bool(regs[0] != 0),
        DataType::U16 => Raw::Unsigned(u16::from_be_bytes([b[0], b[1]]) as u64),
        DataType::I16 => Raw::Signed(i16::from_be_bytes([b[0], b[1]]) as i64),
        DataType::U32 => Raw::Unsigned(u32::from_be_bytes(b[..4].try_into().ok()?) as u64),
        DataType::I32 => Raw::Signed(i32::from_be_bytes(b[..4].try_into().ok()?) as i64),
        DataType::F32 => Raw::Float(widen(f32::from_be_bytes(b[..4].try_into().ok()?))),
        DataType::U64 => Raw::Unsigned(u64::from_be_bytes(b[..8].try_into().ok()?)),
        DataType::I64 => Raw::Signed(i64::from_be_bytes(b[..8].try_into().ok()?)),
        DataType::F64 => Raw::Float(f64::from_be_bytes(b[..8].try_into().ok()?)),
    })
}

/// f32 → f64 through the shortest decimal that round-trips, so 21.1f32 is published as 21.1 and
/// not as 21.100000381469727: the device meant the decimal.
fn widen(f: f32) -> f64 {
    if f.is_finite() {
        f.to_string().parse().unwrap_or(f as f64)
    } else {
        f as f64
    }
}

/// A decoded value before scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Raw {
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

/// Applies `value = raw * scale + offset`. Integers stay integers when the transform is the
/// identity, so a counter is published as `42`, not `42.0`. A non-finite float (NaN from an
/// uninitialised register) becomes `Value::Null` because JSON has no NaN.
pub fn scale(raw: Raw, scale: f64, offset: f64) -> Value {
    let identity = scale == 1.0 && offset == 0.0;
    let v = match raw {
        Raw::Bool(b) => return Value::Bool(b),
        Raw::Unsigned(u) if identity => return Value::UInt(u),
        Raw::Signed(i) if identity => return Value::Int(i),
        Raw::Unsigned(u) => u as f64 * scale + offset,
        Raw::Signed(i) => i as f64 * scale + offset,
        Raw::Float(f) => f * scale + offset,
    };
    if v.is_finite() {
        Value::Float(v)
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_decode_to_the_value_for_every_type_and_order() {
        use DataType::*;
        use WordOrder::*;
        // 21.5f32 = 0x41AC0000, -123456i32 = 0xFFFE1DC0
        let cases: &[(&[u16], DataType, WordOrder, Raw)] = &[
            (&[0x41AC, 0x0000], F32, Abcd, Raw::Float(21.5)),
            (&[0x0000, 0x41AC], F32, Cdab, Raw::Float(21.5)),
            (&[0xAC41, 0x0000], F32, Badc, Raw::Float(21.5)),
            (&[0x0000, 0xAC41], F32, Dcba, Raw::Float(21.5)),
            (&[0xFFFE, 0x1DC0], I32, Abcd, Raw::Signed(-123456)),
            (&[0x1DC0, 0xFFFE], I32, Cdab, Raw::Signed(-123456)),
            (&[0xEE6B, 0x2800], U32, Abcd, Raw::Unsigned(4_000_000_000)),
            (&[0xFFD6], I16, Abcd, Raw::Signed(-42)),
            // 21.1f32 = 0x41A8CCCD: published as the decimal the device meant
            (&[0x41A8, 0xCCCD], F32, Abcd, Raw::Float(21.1)),
            (&[0xD6FF], I16, Badc, Raw::Signed(-42)),
            (&[2345], U16, Abcd, Raw::Unsigned(2345)),
            (&[0], Bool, Abcd, Raw::Bool(false)),
            (&[7], Bool, Abcd, Raw::Bool(true)),
            // 1.5f64 = 0x3FF8000000000000
            (&[0x3FF8, 0, 0, 0], F64, Abcd, Raw::Float(1.5)),
            (&[0, 0, 0, 0x3FF8], F64, Cdab, Raw::Float(1.5)),
            (&[0, 0, 0, 0xF83F], F64, Dcba, Raw::Float(1.5)),
            (
                &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE],
                I64,
                Abcd,
                Raw::Signed(-2),
            ),
            (&[0x0001, 0, 0, 0], U64, Abcd, Raw::Unsigned(1 << 48)),
        ];
        for (regs, ty, order, want) in cases {
            assert_eq!(
                decode_registers(regs, *ty, *order),
                Some(*want),
                "{regs:04x?} as {ty:?} {order:?}"
            );
        }
    }

    #[test]
    fn a_short_register_slice_decodes_to_none_instead_of_panicking() {
        assert_eq!(decode_registers(&[1], DataType::F32, WordOrder::Abcd), None);
        assert_eq!(decode_registers(&[], DataType::U16, WordOrder::Abcd), None);
    }

    #[test]
    fn scale_and_offset_apply_and_identity_keeps_integers() {
        let cases: &[(Raw, f64, f64, Value)] = &[
            (Raw::Unsigned(2345), 0.1, 0.0, Value::Float(234.5)),
            (Raw::Unsigned(42), 1.0, 0.0, Value::UInt(42)),
            (Raw::Signed(-42), 1.0, 0.0, Value::Int(-42)),
            (Raw::Signed(100), 0.5, -10.0, Value::Float(40.0)),
            (Raw::Float(21.5), 2.0, 1.0, Value::Float(44.0)),
            (Raw::Bool(true), 10.0, 0.0, Value::Bool(true)),
            (Raw::Float(f64::NAN), 1.0, 0.0, Value::Null),
        ];
        for (raw, s, o, want) in cases {
            let got = scale(*raw, *s, *o);
            match (&got, want) {
                (Value::Float(a), Value::Float(b)) => assert!((a - b).abs() < 1e-9, "{raw:?}"),
                _ => assert_eq!(&got, want, "{raw:?}"),
            }
        }
    }

    #[test]
    fn names_parse_and_unknown_names_are_rejected() {
        assert_eq!("f32".parse::<DataType>(), Ok(DataType::F32));
        assert!("float".parse::<DataType>().is_err());
        assert_eq!("cdab".parse::<WordOrder>(), Ok(WordOrder::Cdab));
        assert!("ABDC".parse::<WordOrder>().is_err());
        assert_eq!("coil".parse::<Table>(), Ok(Table::Coil));
        assert!("holdings".parse::<Table>().is_err());
    }
}
