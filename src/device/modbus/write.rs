//! Pure write validation and encoding: a command payload for one point → the Modbus exchange
//! that sets it, or the reason it is refused. Nothing here talks to a device, so a refused
//! command can never cause bus traffic.
//!
//! Payloads: a JSON value (`21.5`, `true`, `"text"`), a JSON object `{"value": …, "id": …}`
//! (the id is echoed in the result), or plain text (`21.5`, `on`, `off`, or a string point's
//! text). The value is in engineering units: range-checked against the point's `min`/`max`,
//! then turned into the raw value with the inverse of scale and offset, which must land on a
//! value the type can hold exactly (no silent rounding of a set-point).

use crate::config::spec::modbus::{DataType, Table};
use crate::device::value::Raw;
use crate::flow::excerpt;
use serde_json::Value as Json;

use super::bus::Exchange;
use super::decode::encode_registers;
use crate::config::Point;

/// What a command asked for, before it meets a point.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Bool(bool),
    Int(i128),
    Float(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("no device {0:?} on this gateway")]
    UnknownDevice(String),
    #[error("device {device:?} has no point {point:?}")]
    UnknownPoint { device: String, point: String },
    #[error("point {0:?} is read-only (set writable = true in the config to allow writes)")]
    ReadOnly(String),
    #[error("bad payload: {0}")]
    BadPayload(String),
    #[error("{value} is out of range for {point:?}: {range}")]
    OutOfRange {
        point: String,
        value: String,
        range: String,
    },
    #[error("{0}")]
    NotRepresentable(String),
    /// Sent too long ago to be run now (see `commands::stale`).
    #[error("{0}")]
    Stale(String),
}

/// A command payload, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub input: Input,
    /// The correlation id to echo, if there was one.
    pub id: Option<Json>,
    /// When the sender sent it (`"ts"`, milliseconds since 1970), if it said.
    pub sent_ms: Option<i64>,
}

/// Reads a command payload: the value, the correlation id and the send time.
pub fn parse_payload(bytes: &[u8]) -> Result<Payload, WriteError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| WriteError::BadPayload("not UTF-8 text".into()))?
        .trim();
    if text.is_empty() {
        return Err(WriteError::BadPayload(
            "empty; send a value, e.g. 21.5, true or {\"value\": 21.5}".into(),
        ));
    }
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(mut m)) => {
            let id = m.remove("id");
            let sent_ms = match m.remove("ts") {
                None => None,
                Some(t) => Some(t.as_i64().ok_or_else(|| {
                    WriteError::BadPayload(
                        "\"ts\" is the send time in milliseconds since 1970, a whole number".into(),
                    )
                })?),
            };
            let Some(v) = m.remove("value") else {
                return Err(WriteError::BadPayload(
                    "a JSON object needs a \"value\" key".into(),
                ));
            };
            if let Some(k) = m.keys().next() {
                return Err(WriteError::BadPayload(format!(
                    "unknown key {:?}; valid: value, id, ts",
                    excerpt(k)
                )));
            }
            Ok(Payload {
                input: json_input(&v)?,
                id,
                sent_ms,
            })
        }
        Ok(v) => Ok(Payload {
            input: json_input(&v)?,
            id: None,
            sent_ms: None,
        }),
        // Not JSON: plain text, as mosquitto_pub users type it.
        Err(_) => Ok(Payload {
            input: plain_input(text),
            id: None,
            sent_ms: None,
        }),
    }
}

fn json_input(v: &Json) -> Result<Input, WriteError> {
    match v {
        Json::Bool(b) => Ok(Input::Bool(*b)),
        Json::Number(n) => Ok(if let Some(i) = n.as_i64() {
            Input::Int(i128::from(i))
        } else if let Some(u) = n.as_u64() {
            Input::Int(i128::from(u))
        } else {
            Input::Float(n.as_f64().unwrap_or(f64::NAN))
        }),
        Json::String(s) => Ok(Input::Text(s.clone())),
        Json::Null => Err(WriteError::BadPayload("null is not a value".into())),
        Json::Array(_) | Json::Object(_) => Err(WriteError::BadPayload(
            "expected a number, a boolean or a string".into(),
        )),
    }
}

fn plain_input(text: &str) -> Input {
    match text.to_ascii_lowercase().as_str() {
        "on" => return Input::Bool(true),
        "off" => return Input::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i128>() {
        return Input::Int(i);
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Input::Float(f),
        _ => Input::Text(text.to_string()),
    }
}

/// Checks `input` against point `p` and encodes it; `multiple` forces FC 15/16.
pub fn prepare(p: &Point, input: &Input, multiple: bool) -> Result<Exchange, WriteError> {
    let Some(limits) = p.write else {
        return Err(WriteError::ReadOnly(p.name.to_string()));
    };
    if matches!(p.table, Table::Input | Table::Discrete) {
        return Err(WriteError::ReadOnly(p.name.to_string()));
    }
    if p.data_type == DataType::Bool {
        let value = as_bool(input)?;
        return Ok(match (p.table, p.bit) {
            (Table::Coil, _) => Exchange::WriteCoil {
                address: p.address,
                value,
                multiple,
            },
            (_, Some(bit)) => Exchange::WriteBit {
                address: p.address,
                bit,
                value,
                multiple,
            },
            _ => Exchange::WriteRegisters {
                address: p.address,
                words: vec![u16::from(value)],
                multiple,
            },
        });
    }
    let raw = match p.data_type {
        DataType::String => match input {
            Input::Text(t) => {
                let cap = usize::from(p.length) * 2;
                if !t.is_ascii() {
                    return Err(WriteError::BadPayload(
                        "a string point takes ASCII text".into(),
                    ));
                }
                if t.len() > cap {
                    return Err(WriteError::OutOfRange {
                        point: p.name.to_string(),
                        value: format!("{:?}", excerpt(t)),
                        range: format!("at most {cap} characters"),
                    });
                }
                Raw::Text(t.clone())
            }
            _ => {
                return Err(WriteError::BadPayload(format!(
                    "{:?} is a string point; send text",
                    p.name
                )))
            }
        },
        ty => {
            let value = as_number(input, &p.name)?;
            check_range(p, value, &limits)?;
            raw_number(p, ty, input, value)?
        }
    };
    let words = encode_registers(&raw, p.data_type, p.word_order, p.length).ok_or_else(|| {
        WriteError::NotRepresentable(format!("cannot encode {raw:?} as {:?}", p.data_type))
    })?;
    Ok(Exchange::WriteRegisters {
        address: p.address,
        words,
        multiple,
    })
}

fn as_bool(input: &Input) -> Result<bool, WriteError> {
    match input {
        Input::Bool(b) => Ok(*b),
        Input::Int(0) => Ok(false),
        Input::Int(1) => Ok(true),
        Input::Text(t) if t.eq_ignore_ascii_case("true") => Ok(true),
        Input::Text(t) if t.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(WriteError::BadPayload(format!(
            "{} is not a boolean; send true/false, 1/0 or on/off",
            show(other)
        ))),
    }
}

fn as_number(input: &Input, point: &str) -> Result<f64, WriteError> {
    match input {
        Input::Int(i) => Ok(*i as f64),
        Input::Float(f) if f.is_finite() => Ok(*f),
        other => Err(WriteError::BadPayload(format!(
            "{} is not a number; {point:?} takes a number",
            show(other)
        ))),
    }
}

fn show(i: &Input) -> String {
    match i {
        Input::Bool(b) => b.to_string(),
        Input::Int(v) => v.to_string(),
        Input::Float(f) => f.to_string(),
        Input::Text(t) => format!("{:?}", excerpt(t)),
    }
}

fn check_range(p: &Point, v: f64, l: &crate::config::WriteLimits) -> Result<(), WriteError> {
    let below = l.min.is_some_and(|m| v < m);
    let above = l.max.is_some_and(|m| v > m);
    if below || above {
        let range = match (l.min, l.max) {
            (Some(a), Some(b)) => format!("valid: {a} to {b}"),
            (Some(a), None) => format!("valid: at least {a}"),
            (None, Some(b)) => format!("valid: at most {b}"),
            (None, None) => String::new(),
        };
        return Err(WriteError::OutOfRange {
            point: p.name.to_string(),
            value: v.to_string(),
            range,
        });
    }
    Ok(())
}

/// Engineering value → raw value of the point's type: the inverse of `raw * scale + offset`.
fn raw_number(p: &Point, ty: DataType, input: &Input, v: f64) -> Result<Raw, WriteError> {
    let identity = p.scale == 1.0 && p.offset == 0.0;
    if matches!(ty, DataType::F32 | DataType::F64) {
        let raw = (v - p.offset) / p.scale;
        if ty == DataType::F32 && raw.abs() > f64::from(f32::MAX) {
            return Err(WriteError::OutOfRange {
                point: p.name.to_string(),
                value: v.to_string(),
                range: "beyond the f32 range".into(),
            });
        }
        return Ok(Raw::Float(raw));
    }
    let (lo, hi) = ty.integer_range().unwrap_or((0.0, 0.0));
    // Exact path for integers without a transform: no detour through f64 for 64-bit values.
    let raw: i128 = match input {
        Input::Int(i) if identity => *i,
        _ => {
            let raw = (v - p.offset) / p.scale;
            let rounded = raw.round();
            // A set-point the register cannot hold exactly is refused, not rounded behind the
            // operator's back.
            // Absolute, in steps: only float noise from the division may be forgiven, at any
            // magnitude (1500000.4 is not 1500000).
            if (raw - rounded).abs() > 1e-9_f64.max(4.0 * f64::EPSILON * raw.abs()) {
                return Err(WriteError::NotRepresentable(format!(
                    "{v} is not a whole number of steps of {} for {:?} (scale {}, offset {})",
                    p.scale, p.name, p.scale, p.offset
                )));
            }
            rounded as i128
        }
    };
    if (raw as f64) < lo || (raw as f64) > hi {
        return Err(WriteError::OutOfRange {
            point: p.name.to_string(),
            value: v.to_string(),
            range: format!("the register holds {lo} to {hi} as {ty:?} before scaling"),
        });
    }
    Ok(match ty {
        DataType::U16 | DataType::U32 | DataType::U64 => Raw::Unsigned(
            u64::try_from(raw)
                .map_err(|_| WriteError::NotRepresentable(format!("{raw} is negative")))?,
        ),
        _ => Raw::Signed(
            i64::try_from(raw)
                .map_err(|_| WriteError::NotRepresentable(format!("{raw} does not fit")))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::spec::modbus::WordOrder;
    use crate::config::WriteLimits;

    use crate::device::modbus::plan::tests::pt;

    fn writable(mut p: Point, min: Option<f64>, max: Option<f64>) -> Point {
        p.write = Some(WriteLimits { min, max });
        p
    }

    fn regs(address: u16, words: &[u16], multiple: bool) -> Exchange {
        Exchange::WriteRegisters {
            address,
            words: words.to_vec(),
            multiple,
        }
    }

    #[test]
    fn payloads_parse_as_json_objects_or_plain_text() {
        let cases: &[(&str, Input)] = &[
            ("21.5", Input::Float(21.5)),
            ("42", Input::Int(42)),
            ("-7", Input::Int(-7)),
            ("true", Input::Bool(true)),
            ("on", Input::Bool(true)),
            ("OFF", Input::Bool(false)),
            ("\"abc\"", Input::Text("abc".into())),
            ("hello world", Input::Text("hello world".into())),
            ("{\"value\": 3}", Input::Int(3)),
            ("18446744073709551615", Input::Int(u64::MAX as i128)),
        ];
        for (text, want) in cases {
            let got = parse_payload(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(&got.input, want, "{text}");
        }
        let p = parse_payload(br#"{"value": 1, "id": "req-7", "ts": 1764500000000}"#).unwrap();
        assert_eq!(p.id, Some(Json::String("req-7".into())));
        assert_eq!(p.sent_ms, Some(1_764_500_000_000));
        for bad in [
            "",
            "  ",
            "null",
            "[1]",
            "{\"v\": 1}",
            "{\"value\": 1, \"x\": 2}",
            "{\"value\": 1, \"ts\": \"yesterday\"}",
        ] {
            assert!(
                matches!(
                    parse_payload(bad.as_bytes()),
                    Err(WriteError::BadPayload(_))
                ),
                "{bad:?} should be refused"
            );
        }
        assert!(parse_payload(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn values_encode_with_type_order_and_inverse_scale() {
        use DataType::*;
        use Table::{Coil, Holding};
        let mut scaled = pt(Holding, 10, U16);
        scaled.scale = 0.1;
        let mut offset = pt(Holding, 11, I16);
        offset.offset = -40.0;
        let mut cdab = pt(Holding, 12, F32);
        cdab.word_order = WordOrder::Cdab;
        let mut text = pt(Holding, 20, String);
        text.length = 2;
        let cases: Vec<(Point, Input, bool, Exchange)> = vec![
            (
                pt(Holding, 1, U16),
                Input::Int(2345),
                false,
                regs(1, &[2345], false),
            ),
            (
                pt(Holding, 1, U16),
                Input::Int(2345),
                true,
                regs(1, &[2345], true),
            ),
            (scaled, Input::Float(21.5), false, regs(10, &[215], false)),
            (offset, Input::Int(-50), false, regs(11, &[0xFFF6], false)),
            (
                cdab,
                Input::Float(21.5),
                false,
                regs(12, &[0x0000, 0x41AC], false),
            ),
            (
                pt(Holding, 2, I32),
                Input::Int(-123456),
                false,
                regs(2, &[0xFFFE, 0x1DC0], false),
            ),
            (
                pt(Holding, 4, U64),
                Input::Int(u64::MAX as i128),
                false,
                regs(4, &[0xFFFF; 4], false),
            ),
            (
                text,
                Input::Text("ab".into()),
                false,
                regs(20, &[0x6162, 0], false),
            ),
            (
                pt(Coil, 3, Bool),
                Input::Bool(true),
                false,
                Exchange::WriteCoil {
                    address: 3,
                    value: true,
                    multiple: false,
                },
            ),
            (
                pt(Holding, 5, Bool),
                Input::Int(1),
                false,
                regs(5, &[1], false),
            ),
        ];
        for (p, input, multiple, want) in cases {
            let p = writable(p, None, None);
            assert_eq!(prepare(&p, &input, multiple), Ok(want), "{p:?} {input:?}");
        }
        let mut bit = writable(pt(Holding, 6, Bool), None, None);
        bit.bit = Some(3);
        assert_eq!(
            prepare(&bit, &Input::Bool(false), false),
            Ok(Exchange::WriteBit {
                address: 6,
                bit: 3,
                value: false,
                multiple: false
            })
        );
    }

    #[test]
    fn refused_writes_say_why() {
        use DataType::*;
        use Table::{Coil, Holding};
        let ranged = writable(pt(Holding, 1, U16), Some(5.0), Some(35.0));
        let mut tenth = writable(pt(Holding, 2, U16), None, None);
        tenth.scale = 0.1;
        let mut short = writable(pt(Holding, 20, String), None, None);
        short.length = 1;
        let cases: Vec<(Point, Input, &str)> = vec![
            (pt(Holding, 1, U16), Input::Int(1), "read-only"),
            (
                writable(pt(Table::Input, 1, U16), None, None),
                Input::Int(1),
                "read-only",
            ),
            (ranged.clone(), Input::Int(36), "out of range"),
            (ranged.clone(), Input::Float(4.5), "valid: 5 to 35"),
            (ranged, Input::Text("x".into()), "not a number"),
            (tenth.clone(), Input::Float(21.55), "whole number of steps"),
            (tenth, Input::Float(150_000.04), "whole number of steps"),
            (
                writable(pt(Holding, 3, U32), None, None),
                Input::Float(1_500_000.4),
                "whole number",
            ),
            (
                writable(pt(Holding, 3, U16), None, None),
                Input::Int(70_000),
                "register holds",
            ),
            (
                writable(pt(Holding, 3, U16), None, None),
                Input::Int(-1),
                "register holds",
            ),
            (
                writable(pt(Holding, 3, I16), None, None),
                Input::Float(1.5),
                "whole number",
            ),
            (
                writable(pt(Coil, 3, Bool), None, None),
                Input::Int(2),
                "not a boolean",
            ),
            (short, Input::Text("abc".into()), "at most 2 characters"),
        ];
        for (p, input, want) in cases {
            let e = prepare(&p, &input, false).expect_err(&format!("{p:?} {input:?}"));
            assert!(e.to_string().contains(want), "{input:?}: {e}");
        }
    }

    #[test]
    fn a_refused_value_is_quoted_at_most_two_hundred_bytes() {
        use DataType::*;
        use Table::*;
        let huge = "x".repeat(300_000);
        let points = [
            writable(pt(Holding, 1, U16), None, None),
            writable(pt(Coil, 1, Bool), None, None),
        ];
        for p in &points {
            let e = prepare(p, &super::Input::Text(huge.clone()), false).unwrap_err();
            let text = e.to_string();
            assert!(text.len() < 400, "{:?}: {} bytes", p.data_type, text.len());
            assert!(text.contains("(300000 bytes in all)"), "{text}");
        }
    }
}
