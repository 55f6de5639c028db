//! A device's raw value before scaling, and the scaling itself (pure): shared by Modbus register
//! decoding and serial field parsing, so a scaled value is the same number whichever way it came.
//!
//! Scaling is decimal arithmetic done in binary floating point, so the result is rounded back to
//! the decimal places the operands imply: u16 1003 × 0.1 has one decimal, and is published as
//! `100.3`, not as the nearest binary sum `100.30000000000001`.

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

/// How a raw number becomes the published one: `raw * scale + offset`, then at most `decimals`
/// places (when set).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    pub scale: f64,
    pub offset: f64,
    pub decimals: Option<u8>,
}

impl Transform {
    pub const IDENTITY: Transform = Transform {
        scale: 1.0,
        offset: 0.0,
        decimals: None,
    };
}

/// Beyond this many places a decimal no longer fits the 15 significant digits an f64 keeps
/// exactly, so rounding to it would not make the text any shorter.
const MAX_PLACES: u32 = 15;

/// Applies the transform. Integers stay integers when it is the identity, so a counter is
/// published as `42`, not `42.0`. A non-finite result (NaN from an uninitialised register)
/// becomes `Value::Null` because JSON has no NaN.
pub fn scale(raw: Raw, t: &Transform) -> Value {
    let identity = t.scale == 1.0 && t.offset == 0.0;
    let (v, raw_places) = match raw {
        Raw::Bool(b) => return Value::Bool(b),
        Raw::Text(s) => return Value::Text(s),
        Raw::Unsigned(u) if identity => return Value::UInt(u),
        Raw::Signed(i) if identity => return Value::Int(i),
        Raw::Unsigned(u) => (u as f64 * t.scale + t.offset, Some(0)),
        Raw::Signed(i) => (i as f64 * t.scale + t.offset, Some(0)),
        Raw::Float(f) if identity => (f, None),
        Raw::Float(f) => (f * t.scale + t.offset, decimal_places(f)),
    };
    if !v.is_finite() {
        return Value::Null;
    }
    // A product has the places of both factors, a sum the larger of the two.
    let implied = match (
        raw_places,
        decimal_places(t.scale),
        decimal_places(t.offset),
    ) {
        (Some(r), Some(s), Some(o)) if !identity => Some((r + s).max(o)),
        _ => None,
    }
    .filter(|&p| p <= MAX_PLACES);
    let places = match (implied, t.decimals.map(u32::from)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Value::Float(match places {
        Some(p) => round_to(v, p),
        None => v,
    })
}

/// Places after the decimal point of the shortest decimal that reads back as `x`
/// (0.1 → 1, 0.5 → 1, 10 → 0, 1e-3 → 3, 21.25 → 2).
pub fn decimal_places(x: f64) -> Option<u32> {
    if !x.is_finite() {
        return None;
    }
    // `{:e}` is Rust's shortest round-trip form: "1.003e2", "1e-3".
    let s = format!("{:e}", x.abs());
    let (mantissa, exp) = s.split_once('e')?;
    let exp: i64 = exp.parse().ok()?;
    let frac = mantissa.split_once('.').map_or(0, |(_, f)| f.len()) as i64;
    u32::try_from((frac - exp).max(0)).ok()
}

/// The f64 nearest to `v` rounded to `places` decimals. `(v·10^p).round()` is an exact integer
/// and the division by an exact power of ten is correctly rounded, so the result prints as the
/// intended decimal.
fn round_to(v: f64, places: u32) -> f64 {
    let p = 10f64.powi(places.min(MAX_PLACES) as i32);
    let m = v * p;
    // Past 10^15 the integer part alone uses every exact digit: nothing to round.
    if !m.is_finite() || m.abs() >= 1e15 {
        return v;
    }
    let r = m.round() / p;
    // -0.04 to one place is 0, not "-0.0".
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(scale: f64, offset: f64, decimals: Option<u8>) -> Transform {
        Transform {
            scale,
            offset,
            decimals,
        }
    }

    /// The published text of a value, as the JSON payload and `fieldbridge read` show it.
    fn text(v: &Value) -> String {
        match v {
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(|n| n.to_string())
                .unwrap_or_else(|| "null".into()),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Text(s) => s.clone(),
            Value::Null => "null".into(),
        }
    }

    #[test]
    fn a_scaled_value_is_published_as_the_decimal_the_scale_implies() {
        let cases: &[(Raw, Transform, &str)] = &[
            (Raw::Unsigned(1003), t(0.1, 0.0, None), "100.3"),
            (Raw::Unsigned(2345), t(0.1, 0.0, None), "234.5"),
            (Raw::Signed(-41), t(0.1, 0.0, None), "-4.1"),
            (Raw::Unsigned(14), t(0.1, 0.0, None), "1.4"),
            (Raw::Unsigned(123), t(0.01, 0.0, None), "1.23"),
            (Raw::Unsigned(140), t(0.01, 0.0, None), "1.4"),
            (Raw::Signed(-7), t(0.01, 0.0, None), "-0.07"),
            (Raw::Unsigned(1_000_036), t(0.001, 0.0, None), "1000.036"),
            (Raw::Unsigned(3), t(0.001, 0.0, None), "0.003"),
            (
                Raw::Unsigned(4_294_967_295),
                t(0.001, 0.0, None),
                "4294967.295",
            ),
            (Raw::Unsigned(1003), t(10.0, 0.0, None), "10030.0"),
            (Raw::Signed(-3), t(10.0, 0.0, None), "-30.0"),
            (Raw::Unsigned(7), t(0.5, 0.0, None), "3.5"),
            (Raw::Unsigned(8), t(0.5, 0.0, None), "4.0"),
            (Raw::Signed(100), t(0.5, -10.0, None), "40.0"),
            (Raw::Unsigned(653), t(0.1, -40.0, None), "25.3"),
            (Raw::Unsigned(0), t(0.1, -40.0, None), "-40.0"),
            (Raw::Unsigned(1003), t(0.1, -273.15, None), "-172.85"),
            (Raw::Unsigned(2731), t(0.1, -273.15, None), "-0.05"),
            (Raw::Unsigned(27315), t(0.01, -273.15, None), "0.0"),
            (Raw::Unsigned(5), t(0.001, -0.0005, None), "0.0045"),
            (Raw::Signed(-12345), t(0.001, -1.5, None), "-13.845"),
            (Raw::Unsigned(12), t(1.0, -0.3, None), "11.7"),
            // decimals rounds further, never adds places
            (Raw::Unsigned(1_000_036), t(0.001, 0.0, Some(1)), "1000.0"),
            (Raw::Unsigned(2345), t(0.01, 0.0, Some(1)), "23.5"),
            (Raw::Unsigned(1003), t(0.1, 0.0, Some(3)), "100.3"),
            (Raw::Unsigned(1003), t(0.1, 0.0, Some(0)), "100.0"),
            (Raw::Signed(-4), t(0.01, 0.0, Some(1)), "0.0"),
            // floats from the device keep their shortest form; scaled, they add the scale's places
            (Raw::Float(21.1), t(1.0, 0.0, None), "21.1"),
            (
                Raw::Float(0.1 + 0.2),
                t(1.0, 0.0, None),
                "0.30000000000000004",
            ),
            (Raw::Float(21.1), t(0.1, 0.0, None), "2.11"),
            (Raw::Float(21.1), t(1.0, 0.3, None), "21.4"),
            (Raw::Float(21.123456), t(1.0, 0.0, Some(2)), "21.12"),
            (
                Raw::Float(1.0 / 3.0),
                t(0.1, 0.0, None),
                "0.03333333333333333",
            ),
            // an integer through the identity stays an integer
            (Raw::Unsigned(42), t(1.0, 0.0, None), "42"),
            (Raw::Signed(-42), t(1.0, 0.0, None), "-42"),
            (Raw::Unsigned(42), t(1.0, 0.0, Some(1)), "42"),
            (Raw::Bool(true), t(10.0, 0.0, None), "true"),
            (Raw::Float(f64::NAN), t(1.0, 0.0, None), "null"),
            (Raw::Float(f64::INFINITY), t(0.1, 0.0, None), "null"),
        ];
        for (raw, tr, want) in cases {
            let got = scale(raw.clone(), tr);
            assert_eq!(text(&got), *want, "{raw:?} {tr:?}");
        }
    }

    #[test]
    fn a_scale_has_the_decimal_places_of_its_shortest_decimal() {
        let cases: &[(f64, Option<u32>)] = &[
            (0.1, Some(1)),
            (0.01, Some(2)),
            (0.001, Some(3)),
            (0.5, Some(1)),
            (10.0, Some(0)),
            (1.0, Some(0)),
            (0.0, Some(0)),
            (-273.15, Some(2)),
            (1e-9, Some(9)),
            (1.5e20, Some(0)),
            (f64::NAN, None),
        ];
        for (x, want) in cases {
            assert_eq!(decimal_places(*x), *want, "{x}");
        }
    }
}
