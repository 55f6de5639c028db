//! Pure parsing of one frame into point values: regex with named captures, key=value pairs,
//! JSON lines, CSV columns (text frames), or typed fields at byte offsets (binary frames).
//!
//! Invariants: a frame that does not have the expected shape at all (no regex match, not JSON,
//! not UTF-8) is an error and yields no values; a point whose field is absent from an otherwise
//! good frame is skipped (sensors often alternate between line types); a field that is present
//! but does not convert to the point's type yields a bad-quality value with the reason. Nothing
//! here panics on any input. No I/O; tested as tables.

use crate::config::spec::serial::{FieldPoint, FieldType, ParseSpec, Source};
use crate::device::value::{scale, Raw, Transform};

use crate::flow::Value;

/// The frame as a whole did not have the configured shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame is not UTF-8 text")]
    NotText,
    #[error("line does not match the regex")]
    NoMatch,
    #[error("line is not a JSON object: {0}")]
    NotJson(String),
    #[error("no field of any configured point is in the frame")]
    NoFields,
}

/// One point's outcome: its value, or why its field did not convert.
pub type PointValue = (usize, Result<Value, String>);

/// Extracts every configured point present in `frame`. `Ok` holds at least one entry.
pub fn parse_frame(
    spec: &ParseSpec,
    frame: &[u8],
    points: &[FieldPoint],
) -> Result<Vec<PointValue>, ParseError> {
    let raw: Vec<(usize, Result<Raw, String>)> = match spec {
        ParseSpec::Binary => points
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match &p.source {
                Source::Bytes {
                    offset,
                    little_endian,
                } => {
                    let bytes = frame.get(*offset..offset.checked_add(p.field_type.width())?)?;
                    Some((i, Ok(from_bytes(bytes, p.field_type, *little_endian))))
                }
                _ => None,
            })
            .collect(),
        _ => {
            let text = std::str::from_utf8(frame).map_err(|_| ParseError::NotText)?;
            let fields = text_fields(spec, text)?;
            points
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let s = fields.get(&p.source)?;
                    Some((i, s.to_raw(p.field_type)))
                })
                .collect()
        }
    };
    if raw.is_empty() {
        return Err(ParseError::NoFields);
    }
    Ok(raw
        .into_iter()
        .map(|(i, r)| {
            let p = &points[i];
            let t = Transform {
                scale: p.scale,
                offset: p.offset,
                decimals: p.decimals,
            };
            (i, r.map(|raw| scale(raw, &t)))
        })
        .collect())
}

/// A field's text, or a JSON value that keeps its own type.
enum FieldText<'a> {
    Text(&'a str),
    Json(&'a serde_json::Value),
}

impl FieldText<'_> {
    fn to_raw(&self, t: FieldType) -> Result<Raw, String> {
        match self {
            FieldText::Text(s) => text_to_raw(s.trim(), t),
            FieldText::Json(serde_json::Value::Bool(b)) if t == FieldType::Bool => {
                Ok(Raw::Bool(*b))
            }
            FieldText::Json(serde_json::Value::Number(n)) => text_to_raw(&n.to_string(), t),
            FieldText::Json(serde_json::Value::String(s)) => text_to_raw(s.trim(), t),
            FieldText::Json(v) => Err(format!("JSON value {v} is not a {t}")),
        }
    }
}

/// The fields of a text frame, looked up by a point's source.
struct Fields<'a> {
    named: Vec<(String, FieldText<'a>)>,
    columns: Vec<&'a str>,
    json: Option<serde_json::Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, src: &Source) -> Option<FieldText<'_>> {
        match src {
            Source::Column(c) => self.columns.get(*c).map(|s| FieldText::Text(s)),
            Source::Field(name) => {
                if let Some(root) = &self.json {
                    return json_path(root, name).map(FieldText::Json);
                }
                self.named
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| match v {
                        FieldText::Text(s) => FieldText::Text(s),
                        FieldText::Json(j) => FieldText::Json(j),
                    })
            }
            Source::Bytes { .. } => None,
        }
    }
}

fn text_fields<'a>(spec: &ParseSpec, text: &'a str) -> Result<Fields<'a>, ParseError> {
    let mut f = Fields {
        named: Vec::new(),
        columns: Vec::new(),
        json: None,
    };
    match spec {
        ParseSpec::Regex(re) => {
            let caps = re.captures(text).ok_or(ParseError::NoMatch)?;
            for name in re.capture_names().flatten() {
                if let Some(m) = caps.name(name) {
                    f.named
                        .push((name.to_string(), FieldText::Text(m.as_str())));
                }
            }
        }
        ParseSpec::KeyValue { separators, assign } => {
            let is_sep = |c: char| {
                if separators.is_empty() {
                    c.is_whitespace() || c == ',' || c == ';'
                } else {
                    separators.contains(c)
                }
            };
            for pair in text.split(is_sep).filter(|p| !p.trim().is_empty()) {
                if let Some((k, v)) = pair.split_once(assign.as_str()) {
                    f.named.push((k.trim().to_string(), FieldText::Text(v)));
                }
            }
        }
        ParseSpec::Json => {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?;
            if !v.is_object() {
                return Err(ParseError::NotJson("not an object".into()));
            }
            f.json = Some(v);
        }
        ParseSpec::Csv { separator } => {
            f.columns = text.split(separator.as_str()).map(str::trim).collect();
        }
        ParseSpec::Binary => {}
    }
    Ok(f)
}

fn json_path<'v>(root: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    path.split('.').try_fold(root, |v, seg| match v {
        serde_json::Value::Object(m) => m.get(seg),
        serde_json::Value::Array(a) => a.get(seg.parse::<usize>().ok()?),
        _ => None,
    })
}

fn text_to_raw(s: &str, t: FieldType) -> Result<Raw, String> {
    let bad = || format!("{s:?} is not a {t}");
    let int = |lo: i64, hi: i64| -> Result<Raw, String> {
        let v: i64 = s.parse().map_err(|_| bad())?;
        if v < lo || v > hi {
            return Err(format!("{v} is out of range for {t}"));
        }
        Ok(Raw::Signed(v))
    };
    match t {
        FieldType::Bool => match s.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Ok(Raw::Bool(true)),
            "0" | "false" | "off" | "no" => Ok(Raw::Bool(false)),
            _ => Err(bad()),
        },
        FieldType::U8 => int(0, 255).map(unsigned),
        FieldType::I8 => int(-128, 127),
        FieldType::U16 => int(0, 65535).map(unsigned),
        FieldType::I16 => int(-32768, 32767),
        FieldType::U32 => int(0, u32::MAX.into()).map(unsigned),
        FieldType::I32 => int(i32::MIN.into(), i32::MAX.into()),
        FieldType::I64 => int(i64::MIN, i64::MAX),
        FieldType::U64 => s.parse::<u64>().map(Raw::Unsigned).map_err(|_| bad()),
        FieldType::F32 | FieldType::F64 => match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Raw::Float(v)),
            _ => Err(bad()),
        },
    }
}

fn unsigned(r: Raw) -> Raw {
    match r {
        Raw::Signed(v) if v >= 0 => Raw::Unsigned(v as u64),
        other => other,
    }
}

fn from_bytes(b: &[u8], t: FieldType, little: bool) -> Raw {
    // `b` has exactly `t.width()` bytes (sliced by the caller); widen into a fixed array.
    let mut a = [0u8; 8];
    a[..b.len()].copy_from_slice(b);
    if little {
        a[..b.len()].reverse();
    }
    // `a[..width]` is now big-endian.
    let be = |n: usize| {
        a[..n]
            .iter()
            .fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
    };
    match t {
        FieldType::Bool => Raw::Bool(a[0] != 0),
        FieldType::U8 => Raw::Unsigned(be(1)),
        FieldType::I8 => Raw::Signed(i64::from(be(1) as u8 as i8)),
        FieldType::U16 => Raw::Unsigned(be(2)),
        FieldType::I16 => Raw::Signed(i64::from(be(2) as u16 as i16)),
        FieldType::U32 => Raw::Unsigned(be(4)),
        FieldType::I32 => Raw::Signed(i64::from(be(4) as u32 as i32)),
        FieldType::U64 => Raw::Unsigned(be(8)),
        FieldType::I64 => Raw::Signed(be(8) as i64),
        FieldType::F32 => Raw::Float(f64::from(f32::from_bits(be(4) as u32))),
        FieldType::F64 => Raw::Float(f64::from_bits(be(8))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;
    use std::sync::Arc;

    fn pt(name: &str, source: Source, t: FieldType) -> FieldPoint {
        FieldPoint {
            name: Arc::from(name),
            source,
            field_type: t,
            unit: None,
            scale: 1.0,
            offset: 0.0,
            decimals: None,
            report: Default::default(),
        }
    }

    fn field(name: &str, t: FieldType) -> FieldPoint {
        pt(name, Source::Field(name.into()), t)
    }

    type Case<'a> = (
        &'a str,
        &'a [u8],
        Result<Vec<(usize, Result<Value, String>)>, ParseError>,
    );

    fn check(spec: &ParseSpec, points: &[FieldPoint], cases: &[Case]) {
        for (name, frame, want) in cases {
            assert_eq!(&parse_frame(spec, frame, points), want, "{name}");
        }
    }

    #[test]
    fn regex_named_captures_become_typed_values() {
        let spec = ParseSpec::Regex(
            Regex::new(r"^T=(?P<temp>-?[0-9.]+)C(?: H=(?P<hum>[0-9]+)%)?(?: (?P<ok>\w+))?$")
                .unwrap(),
        );
        let mut hum = field("hum", FieldType::U8);
        hum.scale = 0.5;
        let points = [
            field("temp", FieldType::F64),
            hum,
            field("ok", FieldType::Bool),
        ];
        check(
            &spec,
            &points,
            &[
                (
                    "all fields",
                    b"T=-3.25C H=41% on",
                    Ok(vec![
                        (0, Ok(Value::Float(-3.25))),
                        (1, Ok(Value::Float(20.5))),
                        (2, Ok(Value::Bool(true))),
                    ]),
                ),
                (
                    "optional group absent",
                    b"T=21.5C",
                    Ok(vec![(0, Ok(Value::Float(21.5)))]),
                ),
                (
                    "present but out of range",
                    b"T=1C H=300%",
                    Ok(vec![
                        (0, Ok(Value::Float(1.0))),
                        (1, Err("300 is out of range for u8".into())),
                    ]),
                ),
                (
                    "present but not a bool",
                    b"T=1C maybe",
                    Ok(vec![
                        (0, Ok(Value::Float(1.0))),
                        (2, Err("\"maybe\" is not a bool".into())),
                    ]),
                ),
                ("no match", b"hello", Err(ParseError::NoMatch)),
                ("not text", &[0xff, 0xfe], Err(ParseError::NotText)),
            ],
        );
    }

    #[test]
    fn key_value_pairs_are_found_in_any_order_and_separator() {
        let spec = ParseSpec::KeyValue {
            separators: String::new(),
            assign: "=".into(),
        };
        let points = [
            field("t", FieldType::F64),
            field("rh", FieldType::U16),
            field("fan", FieldType::Bool),
        ];
        check(
            &spec,
            &points,
            &[
                (
                    "spaces",
                    b"t=21.5 rh=40 fan=off",
                    Ok(vec![
                        (0, Ok(Value::Float(21.5))),
                        (1, Ok(Value::UInt(40))),
                        (2, Ok(Value::Bool(false))),
                    ]),
                ),
                (
                    "commas, semicolons, other order, padding",
                    b"rh=41;t=-0.5, junk",
                    Ok(vec![(0, Ok(Value::Float(-0.5))), (1, Ok(Value::UInt(41)))]),
                ),
                ("no known key", b"x=1 y=2", Err(ParseError::NoFields)),
                (
                    "bad number",
                    b"t=abc",
                    Ok(vec![(0, Err("\"abc\" is not a f64".into()))]),
                ),
            ],
        );
        let colon = ParseSpec::KeyValue {
            separators: "|".into(),
            assign: ":".into(),
        };
        check(
            &colon,
            &points,
            &[(
                "custom separators",
                b"t: 3|rh:7",
                Ok(vec![(0, Ok(Value::Float(3.0))), (1, Ok(Value::UInt(7)))]),
            )],
        );
    }

    #[test]
    fn json_lines_are_read_by_dotted_paths_and_keep_their_types() {
        let points = [
            field("env.temp", FieldType::F64),
            field("count", FieldType::I64),
            field("door", FieldType::Bool),
            field("list.1", FieldType::U8),
            field("s", FieldType::F64),
        ];
        check(
            &ParseSpec::Json,
            &points,
            &[
                (
                    "nested, array, string number",
                    br#"{"env":{"temp":21.25},"count":-7,"door":true,"list":[1,2],"s":" 4.5 "}"#,
                    Ok(vec![
                        (0, Ok(Value::Float(21.25))),
                        (1, Ok(Value::Int(-7))),
                        (2, Ok(Value::Bool(true))),
                        (3, Ok(Value::UInt(2))),
                        (4, Ok(Value::Float(4.5))),
                    ]),
                ),
                (
                    "wrong JSON type",
                    br#"{"count":"x","door":{"a":1}}"#,
                    Ok(vec![
                        (1, Err("\"x\" is not a i64".into())),
                        (2, Err("JSON value {\"a\":1} is not a bool".into())),
                    ]),
                ),
                ("no known key", br#"{"other":1}"#, Err(ParseError::NoFields)),
                (
                    "array is not an object",
                    b"[1,2]",
                    Err(ParseError::NotJson("not an object".into())),
                ),
            ],
        );
        assert!(matches!(
            parse_frame(&ParseSpec::Json, b"{broken", &points),
            Err(ParseError::NotJson(_))
        ));
    }

    #[test]
    fn csv_columns_are_picked_by_index() {
        let spec = ParseSpec::Csv {
            separator: ",".into(),
        };
        let mut w = pt("weight", Source::Column(2), FieldType::F64);
        w.scale = 1000.0;
        let points = [pt("id", Source::Column(0), FieldType::U32), w];
        check(
            &spec,
            &points,
            &[
                (
                    "three columns",
                    b"17, ST ,1.250",
                    Ok(vec![
                        (0, Ok(Value::UInt(17))),
                        (1, Ok(Value::Float(1250.0))),
                    ]),
                ),
                ("short row", b"17", Ok(vec![(0, Ok(Value::UInt(17)))])),
                (
                    "empty column",
                    b",x,",
                    Ok(vec![
                        (0, Err("\"\" is not a u32".into())),
                        (1, Err("\"\" is not a f64".into())),
                    ]),
                ),
            ],
        );
    }

    #[test]
    fn binary_fields_decode_in_both_byte_orders() {
        let b = |offset, t, le| {
            pt(
                "p",
                Source::Bytes {
                    offset,
                    little_endian: le,
                },
                t,
            )
        };
        let frame = [0x02, 0xFF, 0xFE, 0x41, 0xAC, 0x00, 0x00, 0x34, 0x12];
        let points = [
            b(1, FieldType::I16, false),
            b(7, FieldType::U16, true),
            b(3, FieldType::F32, false),
            b(1, FieldType::U8, false),
            b(0, FieldType::Bool, false),
            b(8, FieldType::U32, false), // runs past the end: skipped
        ];
        assert_eq!(
            parse_frame(&ParseSpec::Binary, &frame, &points),
            Ok(vec![
                (0, Ok(Value::Int(-2))),
                (1, Ok(Value::UInt(0x1234))),
                (2, Ok(Value::Float(21.5))),
                (3, Ok(Value::UInt(255))),
                (4, Ok(Value::Bool(true))),
            ])
        );
        assert_eq!(
            parse_frame(&ParseSpec::Binary, &[], &points),
            Err(ParseError::NoFields)
        );
    }
}
