//! Pure Modbus decoding: registers or bits → raw values by data type and word/byte order, and the
//! exact inverse for writes. The vocabulary (tables, types, orders) is `config::spec::modbus`;
//! scaling is `device::value`. No I/O here; tested as tables.

use crate::config::spec::modbus::{DataType, WordOrder};
use crate::device::value::Raw;

impl WordOrder {
    /// Text is a byte sequence, not a number: only the byte swap inside each register applies.
    /// (A device whose floats are CDAB still stores its strings first register first.)
    fn for_text(self) -> WordOrder {
        if self.swaps().1 {
            WordOrder::Badc
        } else {
            WordOrder::Abcd
        }
    }

    /// (reverse the words, swap the bytes inside each word)
    fn swaps(self) -> (bool, bool) {
        match self {
            WordOrder::Abcd => (false, false),
            WordOrder::Cdab => (true, false),
            WordOrder::Badc => (false, true),
            WordOrder::Dcba => (true, true),
        }
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

/// The inverse of `ordered_bytes`: big-endian bytes (even length) → registers as the device
/// stores them.
fn registers_from_bytes(bytes: &[u8], order: WordOrder) -> Vec<u16> {
    let (reverse_words, swap_bytes) = order.swaps();
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let w = u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]);
            if swap_bytes {
                w.swap_bytes()
            } else {
                w
            }
        })
        .collect();
    if reverse_words {
        words.reverse();
    }
    words
}

/// Decodes one register-table value. `regs.len()` must equal `ty.width()` (a string's length);
/// the planner guarantees it, and a short slice (a device answering with fewer registers) yields
/// `None`, not a panic. `bit` picks one bit (0 = least significant) of a single register.
pub fn decode_registers(
    regs: &[u16],
    ty: DataType,
    order: WordOrder,
    bit: Option<u8>,
) -> Option<Raw> {
    if let Some(bit) = bit {
        let reg = regs.first()?;
        return Some(Raw::Bool(bit < 16 && (reg >> bit) & 1 == 1));
    }
    if ty == DataType::String {
        return Some(Raw::Text(decode_string(&ordered_bytes(
            regs,
            order.for_text(),
        ))));
    }
    if regs.len() != ty.width() as usize {
        return None;
    }
    let b = ordered_bytes(regs, order);
    Some(match ty {
        DataType::String => return None,
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

/// Device strings are NUL- or space-padded, often not UTF-8 clean: cut at the first NUL, trim
/// trailing blanks, and replace what isn't text rather than failing the point.
fn decode_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .trim_end()
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
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

/// Registers for one value as the device stores them: the inverse of `decode_registers` for an
/// already inverse-scaled raw value. `None` when the raw kind does not fit the type or a string
/// is longer than `length` registers hold (the write path checks both first, with messages).
pub fn encode_registers(
    raw: &Raw,
    ty: DataType,
    order: WordOrder,
    length: u16,
) -> Option<Vec<u16>> {
    let bytes: Vec<u8> = match (ty, raw) {
        (DataType::Bool, Raw::Bool(b)) => vec![0, u8::from(*b)],
        (DataType::U16, Raw::Unsigned(u)) => u16::try_from(*u).ok()?.to_be_bytes().to_vec(),
        (DataType::I16, Raw::Signed(i)) => i16::try_from(*i).ok()?.to_be_bytes().to_vec(),
        (DataType::U32, Raw::Unsigned(u)) => u32::try_from(*u).ok()?.to_be_bytes().to_vec(),
        (DataType::I32, Raw::Signed(i)) => i32::try_from(*i).ok()?.to_be_bytes().to_vec(),
        (DataType::U64, Raw::Unsigned(u)) => u.to_be_bytes().to_vec(),
        (DataType::I64, Raw::Signed(i)) => i.to_be_bytes().to_vec(),
        (DataType::F32, Raw::Float(f)) => (*f as f32).to_be_bytes().to_vec(),
        (DataType::F64, Raw::Float(f)) => f.to_be_bytes().to_vec(),
        (DataType::String, Raw::Text(t)) => {
            let cap = usize::from(length) * 2;
            if t.len() > cap {
                return None;
            }
            let mut b = t.as_bytes().to_vec();
            b.resize(cap, 0);
            b
        }
        _ => return None,
    };
    let order = if ty == DataType::String {
        order.for_text()
    } else {
        order
    };
    Some(registers_from_bytes(&bytes, order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::modbus::Table;

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
                decode_registers(regs, *ty, *order, None),
                Some(want.clone()),
                "{regs:04x?} as {ty:?} {order:?}"
            );
            // Every value encodes back to the registers it came from.
            let len = regs.len() as u16;
            if *ty != Bool {
                assert_eq!(
                    encode_registers(want, *ty, *order, len).as_deref(),
                    Some(*regs),
                    "encode {want:?} as {ty:?} {order:?}"
                );
            }
        }
    }

    #[test]
    fn strings_bits_and_eight_byte_orders_decode_as_documented() {
        use DataType::*;
        use WordOrder::*;
        let text = |s: &str| Some(Raw::Text(s.to_string()));
        // "SDM630" = 53 44 4D 36 33 30, NUL padded to 4 registers
        let sdm = [0x5344, 0x4D36, 0x3330, 0x0000];
        assert_eq!(decode_registers(&sdm, String, Abcd, None), text("SDM630"));
        let swapped = [0x4453, 0x364D, 0x3033, 0x0000];
        assert_eq!(
            decode_registers(&swapped, String, Badc, None),
            text("SDM630")
        );
        // space padding is trimmed, invalid bytes are replaced instead of failing the point
        assert_eq!(
            decode_registers(&[0x4F4B, 0x2020], String, Abcd, None),
            text("OK")
        );
        assert_eq!(
            decode_registers(&[0x41FF], String, Abcd, None),
            text("A\u{fffd}")
        );
        // bit 0 is the least significant bit of the register
        let cases: &[(u16, u8, bool)] = &[
            (0b0000_0001, 0, true),
            (0b0000_0001, 1, false),
            (0b1000_0000_0000_0000, 15, true),
            (0x00F0, 4, true),
            (0x00F0, 3, false),
        ];
        for (reg, bit, want) in cases {
            assert_eq!(
                decode_registers(&[*reg], Bool, Abcd, Some(*bit)),
                Some(Raw::Bool(*want)),
                "bit {bit} of {reg:#06x}"
            );
        }
        // the 8-byte order names are the same four orders
        for (name, order) in [
            ("ABCDEFGH", Abcd),
            ("GHEFCDAB", Cdab),
            ("BADCFEHG", Badc),
            ("hgfedcba", Dcba),
        ] {
            assert_eq!(name.parse::<WordOrder>(), Ok(order), "{name}");
        }
        // 0x0102030405060708 in each 8-byte order
        let v = Raw::Unsigned(0x0102_0304_0506_0708);
        let cases: &[(WordOrder, [u16; 4])] = &[
            (Abcd, [0x0102, 0x0304, 0x0506, 0x0708]),
            (Cdab, [0x0708, 0x0506, 0x0304, 0x0102]),
            (Badc, [0x0201, 0x0403, 0x0605, 0x0807]),
            (Dcba, [0x0807, 0x0605, 0x0403, 0x0201]),
        ];
        for (order, regs) in cases {
            assert_eq!(decode_registers(regs, U64, *order, None), Some(v.clone()));
            assert_eq!(
                encode_registers(&v, U64, *order, 4).as_deref(),
                Some(&regs[..])
            );
        }
    }

    #[test]
    fn encoding_refuses_values_that_do_not_fit_instead_of_truncating() {
        use DataType::*;
        use WordOrder::*;
        assert_eq!(encode_registers(&Raw::Unsigned(70_000), U16, Abcd, 1), None);
        assert_eq!(encode_registers(&Raw::Signed(-1), U16, Abcd, 1), None);
        assert_eq!(
            encode_registers(&Raw::Text("toolong".into()), String, Abcd, 2),
            None
        );
        assert_eq!(
            encode_registers(&Raw::Text("ab".into()), String, Abcd, 2).as_deref(),
            Some(&[0x6162, 0][..])
        );
        assert_eq!(
            encode_registers(&Raw::Bool(true), Bool, Abcd, 1).as_deref(),
            Some(&[1][..])
        );
    }

    #[test]
    fn a_short_register_slice_decodes_to_none_instead_of_panicking() {
        assert_eq!(
            decode_registers(&[1], DataType::F32, WordOrder::Abcd, None),
            None
        );
        assert_eq!(
            decode_registers(&[], DataType::U16, WordOrder::Abcd, None),
            None
        );
        assert_eq!(
            decode_registers(&[], DataType::Bool, WordOrder::Abcd, Some(3)),
            None
        );
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
