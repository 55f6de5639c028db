//! Modbus values both ways: registers a device answered → `decode_registers` (every type, word
//! order and bit), exception codes → `ModbusException`, and a command payload a client sent →
//! `parse_payload` → `prepare` for a point built from the input; and what came back on an RTU
//! line after a failed exchange → `fault::classify`.
//! Invariants: integer and float registers decode and re-encode to the same words; a write
//! that is prepared writes registers that decode (and scale) back to the commanded value,
//! inside the point's range. A failed exchange with bytes back is never called "no answer",
//! and a wrong-unit frame names another unit than the request's.

use std::sync::Arc;

use fieldbridge::config::spec::modbus::{DataType, Table, WordOrder};
use fieldbridge::config::{Point, WriteLimits};
use fieldbridge::device::modbus::bus::Exchange;
use fieldbridge::device::modbus::decode::{decode_registers, encode_registers};
use fieldbridge::device::modbus::exception::ModbusException;
use fieldbridge::device::modbus::fault::{classify, expected_len, is_bad_crc, Fault};
use fieldbridge::device::modbus::write::{parse_payload, prepare, Input};
use fieldbridge::device::value::{scale, Raw, Transform};
use fieldbridge::flow::Value;

const TYPES: [DataType; 10] = [
    DataType::Bool,
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::F32,
    DataType::U64,
    DataType::I64,
    DataType::F64,
    DataType::String,
];
const ORDERS: [WordOrder; 4] = [
    WordOrder::Abcd,
    WordOrder::Cdab,
    WordOrder::Badc,
    WordOrder::Dcba,
];
const SCALES: [(f64, f64); 6] = [
    (1.0, 0.0),
    (0.1, 0.0),
    (0.01, -40.0),
    (-1.0, 0.0),
    (10.0, 5.0),
    (0.5, 0.25),
];

pub fn run(data: &[u8]) {
    let [a, b, rest @ ..] = data else { return };
    let ty = TYPES[usize::from(a % 10)];
    let order = ORDERS[usize::from((a / 10) % 4)];
    let _ = ModbusException::new(*b).to_string();
    let words: Vec<u16> = rest
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect();
    answer(&words, ty, order, *b);
    command(rest, ty, order, *a, *b);
    fault(rest);
}

fn fault(bytes: &[u8]) {
    // Our requests are 8 bytes (unit, function, address, count or value, CRC).
    let (request, reply) = bytes.split_at(bytes.len().min(8));
    let _ = expected_len(request);
    let f = classify(request, reply);
    assert_eq!(reply.is_empty(), f == Fault::NoAnswer, "{reply:?} → {f:?}");
    if is_bad_crc(request, reply) {
        assert!(matches!(f, Fault::BadCrc | Fault::WrongUnit(_)), "{f:?}");
    }
    if let Fault::WrongUnit(u) = f {
        assert_ne!(Some(u), request.first().copied());
    }
}

fn answer(words: &[u16], ty: DataType, order: WordOrder, b: u8) {
    let bit = (b & 0x80 != 0).then_some(b & 0x1f);
    let Some(raw) = decode_registers(words, ty, order, bit) else {
        match bit {
            Some(_) => assert!(words.is_empty(), "a bit of {words:?} refused"),
            None => {
                assert_ne!(ty, DataType::String, "a string refused");
                assert_ne!(words.len(), usize::from(ty.width()), "right width refused");
            }
        }
        return;
    };
    if bit.is_some() || matches!(ty, DataType::Bool | DataType::String) {
        return;
    }
    if matches!(raw, Raw::Float(f) if f.is_nan()) {
        return;
    }
    let length = u16::try_from(words.len()).unwrap_or(u16::MAX);
    let again = encode_registers(&raw, ty, order, length);
    assert_eq!(again.as_deref(), Some(words), "{ty:?} {order:?} {raw:?}");
}

fn command(payload: &[u8], ty: DataType, order: WordOrder, a: u8, b: u8) {
    let Ok(parsed) = parse_payload(payload) else {
        return;
    };
    let input = parsed.input;
    let (s, o) = SCALES[usize::from(b % 6)];
    let limits = match (b / 6) % 3 {
        0 => WriteLimits {
            min: None,
            max: None,
        },
        1 => WriteLimits {
            min: Some(-100.0),
            max: Some(100.0),
        },
        _ => WriteLimits {
            min: Some(0.0),
            max: None,
        },
    };
    let table = if ty == DataType::Bool && a & 0x80 != 0 {
        Table::Coil
    } else {
        Table::Holding
    };
    let p = Point {
        name: Arc::from("p"),
        table,
        address: u16::from(b),
        data_type: ty,
        unit: None,
        scale: s,
        offset: o,
        word_order: order,
        bit: (ty == DataType::Bool && a & 0x40 != 0).then_some(b & 0x0f),
        length: if ty == DataType::String {
            u16::from(b % 8) + 1
        } else {
            ty.width()
        },
        write: Some(limits),
        decimals: None,
        report: Default::default(),
        homeassistant: Default::default(),
    };
    let multiple = a & 0x20 != 0;
    let Ok(ex) = prepare(&p, &input, multiple) else {
        return;
    };
    let Exchange::WriteRegisters { words, .. } = ex else {
        return;
    };
    assert_eq!(words.len(), usize::from(p.length), "{p:?} {input:?}");
    if matches!(ty, DataType::String | DataType::Bool) {
        return;
    }
    let raw = decode_registers(&words, ty, order, None).expect("a prepared write decodes");
    let wanted = match input {
        Input::Int(i) => i as f64,
        Input::Float(f) => f,
        _ => return,
    };
    let t = Transform {
        scale: s,
        offset: o,
        decimals: None,
    };
    let got = match scale(raw, &t) {
        Value::Int(i) => i as f64,
        Value::UInt(u) => u as f64,
        Value::Float(f) => f,
        other => panic!("{other:?} from a numeric write"),
    };
    // f32 registers hold ~7 significant digits; everything else is exact up to float noise.
    let tolerance = if ty == DataType::F32 { 1e-6 } else { 1e-9 };
    assert!(
        (got - wanted).abs() <= tolerance * wanted.abs().max(1.0),
        "{input:?} on {p:?} wrote {words:?}, which reads back as {got}"
    );
    assert!(limits.min.is_none_or(|m| wanted >= m) && limits.max.is_none_or(|m| wanted <= m));
}
