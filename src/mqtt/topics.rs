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

/// The point name that would collide with the device status topic.
pub const RESERVED_POINT: &str = "status";

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

/// Why a string cannot be one level of a topic, or `None` when it can.
pub fn topic_level_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("must not be empty")
    } else if s.contains(['+', '#']) {
        Some("must not contain the MQTT wildcards '+' or '#'")
    } else if s.contains('/') {
        Some("must not contain '/'")
    } else if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("must not contain spaces or control characters")
    } else {
        None
    }
}

/// Why a string cannot be an MQTT topic filter, or `None` when it can.
pub fn filter_problem(f: &str) -> Option<&'static str> {
    if f.is_empty() {
        return Some("must not be empty");
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Some("'#' must be a whole level and the last one");
        }
        if l.contains('+') && *l != "+" {
            return Some("'+' must be a whole level");
        }
    }
    None
}

/// MQTT topic filter matching (`+` one level, `#` the rest, including the parent level).
/// Topics starting with `$` are not matched by a leading wildcard, as brokers do.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            lit => {
                if t.next() != Some(lit) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

/// Replaces a leading `from` (whole levels) by `to`; other topics are returned unchanged.
pub fn remap(topic: &str, from: &str, to: &str) -> String {
    if topic == from {
        return to.to_string();
    }
    match topic.strip_prefix(from).and_then(|r| r.strip_prefix('/')) {
        Some(rest) if !from.is_empty() => format!("{to}/{rest}"),
        _ => topic.to_string(),
    }
}

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

    #[test]
    fn filters_match_topics_like_an_mqtt_broker() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+/c", "a/b/c", true),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("a/b/c", "a/b", false),
            ("+", "", true),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
    }

    #[test]
    fn bad_filters_are_named() {
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a"] {
            assert!(filter_problem(bad).is_some(), "{bad:?}");
        }
        for good in ["#", "a/+/b", "a/#", "+"] {
            assert!(filter_problem(good).is_none(), "{good:?}");
        }
    }

    #[test]
    fn remap_replaces_whole_leading_levels_only() {
        let cases = [
            ("lan/t1", "lan", "site/lan", "site/lan/t1"),
            ("lan", "lan", "site/lan", "site/lan"),
            ("lane/t1", "lan", "site/lan", "lane/t1"),
            ("other/t", "lan", "x", "other/t"),
        ];
        for (t, from, to, want) in cases {
            assert_eq!(remap(t, from, to), want);
        }
    }

    #[test]
    fn topic_levels_with_wildcards_or_slashes_are_rejected() {
        for bad in ["", "a+b", "#", "a/b", "a b"] {
            assert!(topic_level_problem(bad).is_some(), "{bad:?}");
        }
        for good in ["boiler", "plc-1", "temp_2", "Ünit"] {
            assert!(topic_level_problem(good).is_none(), "{good:?}");
        }
    }
}
