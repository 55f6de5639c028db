//! The user-facing topic and payload scheme (design.md §6), in one place.
//!
//! Readings: `<prefix>/<gateway>/<device>/<point>` with a JSON payload
//! `{"id": "<message id>", "value": …, "unit": "…", "ts": <ms>, "quality": "good"}`, or with
//! `payload = "device"` one message per poll on `<prefix>/<gateway>/<device>`:
//! `{"id": "<message id>", "ts": <ms>, "points": {"<point>": {"value": …, "unit": "…"}, …}}`
//! (`quality` and `error` on a point only when it is not good).
//! Device status: `<prefix>/<gateway>/<device>/status` = `online` | `offline`, retained.
//! Gateway status: `<prefix>/<gateway>/status` = `online` | `offline`, retained.
//! Statistics: `<prefix>/<gateway>/stats`, JSON, retained.
//! Commands: `<prefix>/<gateway>/<device>/<point>/set` carrying the value; the outcome is
//! published on `<prefix>/<gateway>/<device>/<point>/set/result` (JSON, not retained).

use crate::flow::{Quality, Reading, Value};

#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(prefix: &str, gateway_id: &str) -> Self {
        Topics {
            base: format!("{prefix}/{gateway_id}"),
        }
    }
    pub fn reading(&self, device: &str, point: &str) -> String {
        format!("{}/{device}/{point}", self.base)
    }
    /// Where a device's one-message-per-poll payload goes.
    pub fn device(&self, device: &str) -> String {
        format!("{}/{device}", self.base)
    }
    pub fn device_status(&self, device: &str) -> String {
        format!("{}/{device}/status", self.base)
    }
    pub fn gateway_status(&self) -> String {
        format!("{}/status", self.base)
    }
    pub fn stats(&self) -> String {
        format!("{}/stats", self.base)
    }
    /// Where commands arrive: `<device>/<point>/set` below the gateway.
    pub fn command_filter(&self) -> String {
        format!("{}/+/+/set", self.base)
    }
    pub fn command_result(&self, device: &str, point: &str) -> String {
        format!("{}/{device}/{point}/set/result", self.base)
    }
    /// `(device, point)` of a command topic.
    pub fn parse_command<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let rest = rest.strip_suffix("/set")?;
        let (device, point) = rest.split_once('/')?;
        (!device.is_empty() && !point.is_empty() && !point.contains('/')).then_some((device, point))
    }
    /// Everything this gateway publishes, for a subscriber.
    pub fn all(&self) -> String {
        format!("{}/#", self.base)
    }
}

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

/// The JSON payload of a reading; `id` is the stable message id that survives resends. Keys in
/// alphabetical order (`error`, `id`, `quality`, `ts`, `unit`, `value`), as subscribers have
/// always seen them; written directly (see `device_payload`).
pub fn reading_payload(r: &Reading, id: &str) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(96);
    out.push(b'{');
    if let Some(e) = &r.error {
        out.extend_from_slice(b"\"error\":");
        json_str(&mut out, e);
        out.push(b',');
    }
    out.extend_from_slice(b"\"id\":");
    json_str(&mut out, id);
    out.extend_from_slice(b",\"quality\":");
    json_str(&mut out, r.quality.as_str());
    let _ = write!(out, ",\"ts\":{}", r.ts_ms);
    if let Some(u) = &r.unit {
        out.extend_from_slice(b",\"unit\":");
        json_str(&mut out, u);
    }
    out.extend_from_slice(b",\"value\":");
    json_value(&mut out, &r.value);
    out.push(b'}');
    out
}

/// The JSON payload of one poll of a device (`payload = "device"`): the poll's time (when the
/// device answered its first request), the stable message id, and each reading given.
pub fn device_payload<'r>(
    id: &str,
    ts_ms: i64,
    readings: impl IntoIterator<Item = &'r Reading>,
) -> Vec<u8> {
    use std::io::Write;
    // Written directly rather than through a serde_json::Map: this runs once per poll for every
    // point of a device, and the tree of maps cost more than the bytes themselves.
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"id\":");
    json_str(&mut out, id);
    let _ = write!(out, ",\"ts\":{ts_ms},\"points\":{{");
    for (i, r) in readings.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(&mut out, &r.point);
        out.extend_from_slice(b":{\"value\":");
        json_value(&mut out, &r.value);
        if let Some(u) = &r.unit {
            out.extend_from_slice(b",\"unit\":");
            json_str(&mut out, u);
        }
        if r.quality != Quality::Good {
            out.extend_from_slice(b",\"quality\":");
            json_str(&mut out, r.quality.as_str());
        }
        if let Some(e) = &r.error {
            out.extend_from_slice(b",\"error\":");
            json_str(&mut out, e);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"}}");
    out
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a str into a Vec cannot fail; a failure would leave the text out, not panic.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn json_value(out: &mut Vec<u8>, v: &Value) {
    use std::io::Write;
    let _ = match v {
        Value::Bool(b) => write!(out, "{b}"),
        Value::Int(i) => write!(out, "{i}"),
        Value::UInt(u) => write!(out, "{u}"),
        // serde_json writes the shortest form (ryu) and null for a non-finite number.
        Value::Float(f) => serde_json::to_writer(&mut *out, f).map_err(std::io::Error::from),
        Value::Text(t) => serde_json::to_writer(&mut *out, t).map_err(std::io::Error::from),
        Value::Null => out.write_all(b"null"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Number};

    /// The payload as a serde_json tree, the way it was built before it was written directly.
    fn reference_payload(r: &Reading, id: &str) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("id".into(), json!(id));
        m.insert("value".into(), value_json(&r.value));
        if let Some(u) = &r.unit {
            m.insert("unit".into(), json!(u.as_ref()));
        }
        m.insert("ts".into(), json!(r.ts_ms));
        m.insert("quality".into(), json!(r.quality.as_str()));
        if let Some(e) = &r.error {
            m.insert("error".into(), json!(e));
        }
        serde_json::Value::Object(m).to_string().into_bytes()
    }

    fn value_json(v: &Value) -> serde_json::Value {
        match v {
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => json!(i),
            Value::UInt(u) => json!(u),
            Value::Float(f) => Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(t) => serde_json::Value::String(t.clone()),
            Value::Null => serde_json::Value::Null,
        }
    }

    #[test]
    fn a_reading_payload_is_byte_for_byte_what_a_json_tree_would_write() {
        let mut cases = Vec::new();
        for v in [
            Value::Float(21.5),
            Value::Float(100.3),
            Value::Float(f64::NAN),
            Value::Int(-3),
            Value::UInt(u64::MAX),
            Value::Bool(false),
            Value::Text("a \"quoted\" \\ name\n".into()),
            Value::Null,
        ] {
            cases.push(reading(v));
        }
        let mut bad = reading(Value::Null);
        bad.quality = Quality::Bad;
        bad.error = Some("device answered with \"exception\" 2".into());
        bad.unit = None;
        cases.push(bad);
        for r in &cases {
            assert_eq!(
                String::from_utf8(reading_payload(r, "ab-1")).unwrap(),
                String::from_utf8(reference_payload(r, "ab-1")).unwrap()
            );
        }
    }

    #[test]
    fn command_topics_name_device_and_point_and_nothing_else_parses() {
        let t = Topics::new("fb", "gw1");
        assert_eq!(t.command_filter(), "fb/gw1/+/+/set");
        assert_eq!(
            t.parse_command("fb/gw1/meter/setpoint/set"),
            Some(("meter", "setpoint"))
        );
        assert_eq!(
            t.command_result("meter", "sp"),
            "fb/gw1/meter/sp/set/result"
        );
        for bad in [
            "fb/gw1/meter/set",
            "fb/gw2/meter/sp/set",
            "fb/gw1/meter/sp/set/result",
            "fb/gw1//sp/set",
            "fb/gw1/a/b/c/set",
            "fb/gw1x/meter/sp/set",
        ] {
            assert_eq!(t.parse_command(bad), None, "{bad}");
        }
    }

    fn reading(value: Value) -> Reading {
        Reading {
            device: "boiler".into(),
            point: "temp".into(),
            value,
            unit: Some("°C".into()),
            ts_ms: 1_700_000_000_123,
            quality: Quality::Good,
            error: None,
        }
    }

    #[test]
    fn topics_follow_prefix_gateway_device_point() {
        let t = Topics::new("fieldbridge", "gw1");
        assert_eq!(t.reading("boiler", "temp"), "fieldbridge/gw1/boiler/temp");
        assert_eq!(t.device_status("boiler"), "fieldbridge/gw1/boiler/status");
        assert_eq!(t.gateway_status(), "fieldbridge/gw1/status");
    }

    #[test]
    fn a_device_payload_carries_each_point_with_unit_and_quality_only_when_bad() {
        let mut temp = reading(Value::Float(21.5));
        temp.point = "temp".into();
        let mut alarm = reading(Value::Bool(true));
        alarm.point = "alarm \"x\"".into();
        alarm.unit = None;
        let mut broken = reading(Value::Null);
        broken.point = "broken".into();
        broken.quality = Quality::Bad;
        broken.error = Some("device answered with Modbus exception 2".into());
        let mut name = reading(Value::Text("SDM630".into()));
        name.point = "model".into();
        name.unit = None;
        let mut count = reading(Value::UInt(u64::MAX));
        count.point = "count".into();
        count.unit = None;
        let mut nan = reading(Value::Float(f64::NAN));
        nan.point = "nan".into();
        nan.unit = None;
        let bytes = device_payload(
            "ab-7",
            1_700_000_000_123,
            [&temp, &alarm, &broken, &name, &count, &nan],
        );
        let p: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            p,
            json!({
                "id": "ab-7",
                "ts": 1_700_000_000_123i64,
                "points": {
                    "temp": {"value": 21.5, "unit": "°C"},
                    "alarm \"x\"": {"value": true},
                    "broken": {"value": null, "unit": "°C", "quality": "bad",
                               "error": "device answered with Modbus exception 2"},
                    "model": {"value": "SDM630"},
                    "count": {"value": u64::MAX},
                    "nan": {"value": null},
                }
            })
        );
        let empty: serde_json::Value =
            serde_json::from_slice(&device_payload("x-1", 5, [])).unwrap();
        assert_eq!(empty, json!({"id": "x-1", "ts": 5, "points": {}}));
    }

    #[test]
    fn payload_values_are_typed_json_not_strings() {
        let cases: &[(Value, serde_json::Value)] = &[
            (Value::Float(21.5), json!(21.5)),
            (Value::Int(-3), json!(-3)),
            (Value::UInt(4_000_000_000), json!(4_000_000_000u64)),
            (Value::Bool(true), json!(true)),
            (Value::Null, serde_json::Value::Null),
        ];
        for (v, want) in cases {
            let p: serde_json::Value =
                serde_json::from_slice(&reading_payload(&reading(v.clone()), "x-1")).unwrap();
            assert_eq!(&p["value"], want);
            assert_eq!(p["id"], "x-1");
            assert_eq!(p["ts"], 1_700_000_000_123i64);
            assert_eq!(p["quality"], "good");
            assert_eq!(p["unit"], "°C");
        }
    }
}
