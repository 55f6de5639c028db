//! A device's raw value before scaling, and the scaling itself (pure): shared by Modbus register
//! decoding and serial field parsing, so a scaled value is the same number whichever way it came.

use crate::flow::Value;

/// A decoded value before scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
}

/// Applies `value = raw * scale + offset`. Integers stay integers when the transform is the
/// identity, so a counter is published as `42`, not `42.0`. A non-finite float (NaN from an
/// uninitialised register) becomes `Value::Null` because JSON has no NaN.
pub fn scale(raw: Raw, scale: f64, offset: f64) -> Value {
    let identity = scale == 1.0 && offset == 0.0;
    let v = match raw {
        Raw::Bool(b) => return Value::Bool(b),
        Raw::Text(t) => return Value::Text(t),
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
            let got = scale(raw.clone(), *s, *o);
            match (&got, want) {
                (Value::Float(a), Value::Float(b)) => assert!((a - b).abs() < 1e-9, "{raw:?}"),
                _ => assert_eq!(&got, want, "{raw:?}"),
            }
        }
    }
}
