//! The user-facing topic and payload scheme (design.md §6), in one place.
//!
//! Readings: `<prefix>/<gateway>/<device>/<point>` with a JSON payload
//! `{"id": "<message id>", "value": …, "unit": "…", "ts": <ms>, "quality": "good"}`.
//! Device status: `<prefix>/<gateway>/<device>/status` = `online` | `offline`, retained.
//! Gateway status: `<prefix>/<gateway>/status` = `online` | `offline`, retained.
//! Statistics: `<prefix>/<gateway>/stats`, JSON, retained.
//! Commands: `<prefix>/<gateway>/<device>/<point>/set` carrying the value; the outcome is
//! published on `<prefix>/<gateway>/<device>/<point>/set/result` (JSON, not retained).

use serde_json::{json, Map, Number};

use crate::flow::{Reading, Value};

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

/// The JSON payload of a reading; `id` is the stable message id that survives resends.
pub fn reading_payload(r: &Reading, id: &str) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Quality;

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
