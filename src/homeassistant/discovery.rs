//! The Home Assistant discovery documents of a config (pure): one retained config per point
//! on `<discovery_prefix>/<component>/<node_id>/<object_id>/config` (Home Assistant's
//! per-entity discovery), and which earlier topics to clear.
//!
//! Every configured device (Modbus or serial line) is one Home Assistant device, reached
//! through the gateway (`via_device`), which is a device of its own with a connectivity entity
//! on the gateway's status topic. Entities are available only while both the gateway's status (its Last Will
//! upstream) and the device's status say `online` (`availability_mode = all`). States are read
//! from the topics readings are published on today, in either payload shape: `value_json.value`
//! for `payload = "point"`, `value_json.points["<point>"].value` for `payload = "device"` (a
//! poll that does not carry the point renders nothing, which Home Assistant ignores). Commands
//! go to the existing `…/<point>/set` topics.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value as Json};

use crate::config::serial::Protocol;
use crate::config::spec::homeassistant::{Component, PointHints, NO_CLASS};
use crate::config::spec::modbus::DataType;
use crate::config::spec::report::PayloadShape;
use crate::config::spec::serial::FieldType;
use crate::config::{Config, Point, Transport, WriteLimits};
use crate::flow::Message;
use crate::homeassistant::units;
use crate::mqtt::topics::{Topics, OFFLINE, ONLINE};

/// What the gateway tells Home Assistant about itself.
#[derive(Debug, Clone)]
pub struct Origin {
    pub gateway_id: String,
    pub version: String,
    pub discovery_prefix: String,
}

/// Every discovery config of `cfg`, in config order: the gateway's own entity first, then the
/// Modbus devices' points, then the serial devices'.
pub fn documents(cfg: &Config, topics: &Topics, origin: &Origin) -> Vec<Message> {
    let mut out = vec![gateway_document(topics, origin)];
    let no_hints = PointHints::default();
    for d in &cfg.devices {
        let owner = Owner {
            name: &d.name,
            payload: d.payload,
            manufacturer: d.manufacturer.as_deref().unwrap_or("fieldbridge"),
            model: d.model.clone().unwrap_or_else(|| {
                match &d.transport {
                    Transport::Tcp { .. } => "Modbus TCP device",
                    Transport::Bus(_) => "Modbus RTU device",
                }
                .to_string()
            }),
        };
        for p in d.points.iter().filter(|p| p.homeassistant.discover) {
            let kind = match p.data_type {
                DataType::Bool => Kind::Bool,
                DataType::String => Kind::Text,
                t => Kind::Number {
                    range: t.integer_range(),
                },
            };
            out.push(document(
                &owner,
                &Subject {
                    name: &p.name,
                    unit: p.unit.as_deref(),
                    kind,
                    scale: p.scale,
                    offset: p.offset,
                    decimals: p.decimals,
                    write: p.write,
                    hints: &p.homeassistant,
                },
                topics,
                origin,
            ));
        }
    }
    for d in &cfg.serial_devices {
        let (model, points): (String, Vec<SerialPoint>) = match &d.protocol {
            Protocol::Sensor(s) => (
                s.to_string().to_uppercase(),
                s.points()
                    .iter()
                    .map(|(n, u)| (*n, *u, Kind::Number { range: None }, None))
                    .collect(),
            ),
            Protocol::Custom { points, .. } => (
                "serial line device".to_string(),
                points
                    .iter()
                    .map(|p| {
                        let kind = match p.field_type {
                            FieldType::Bool => Kind::Bool,
                            _ => Kind::Number { range: None },
                        };
                        (&*p.name, p.unit.as_deref(), kind, p.decimals)
                    })
                    .collect(),
            ),
        };
        let owner = Owner {
            name: &d.name,
            payload: d.payload,
            manufacturer: "fieldbridge",
            model,
        };
        for (name, unit, kind, decimals) in points {
            out.push(document(
                &owner,
                &Subject {
                    name,
                    unit,
                    kind,
                    scale: 1.0,
                    offset: 0.0,
                    decimals,
                    write: None,
                    hints: &no_hints,
                },
                topics,
                origin,
            ));
        }
    }
    out
}

/// A serial point: name, unit, kind, decimals.
type SerialPoint<'a> = (&'a str, Option<&'a str>, Kind, Option<u8>);

/// The device a point belongs to, as discovery needs it.
struct Owner<'a> {
    name: &'a str,
    payload: PayloadShape,
    manufacturer: &'a str,
    model: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Bool,
    Text,
    /// `range`: the raw range of an integer type; `None` for floats.
    Number {
        range: Option<(f64, f64)>,
    },
}

/// One point, Modbus or serial, as discovery needs it.
struct Subject<'a> {
    name: &'a str,
    unit: Option<&'a str>,
    kind: Kind,
    scale: f64,
    offset: f64,
    decimals: Option<u8>,
    /// `Some` when it takes commands.
    write: Option<WriteLimits>,
    hints: &'a PointHints,
}

fn document(owner: &Owner, p: &Subject, topics: &Topics, origin: &Origin) -> Message {
    let component = component_for(p.kind, p.write.is_some(), p.hints);
    let node = format!(
        "{}_{}",
        object_id(&origin.gateway_id),
        object_id(owner.name)
    );
    let topic = format!(
        "{}/{}/{node}/{}/config",
        origin.discovery_prefix,
        component.as_str(),
        object_id(p.name)
    );
    let doc = entity(owner, p, component, topics, origin);
    Message {
        topic,
        payload: doc.to_string().into_bytes(),
        retain: true,
    }
}

/// Topics published before (`previous`) that the current documents no longer have: each gets
/// an empty retained config, which removes the entity from Home Assistant.
pub fn stale<'p>(previous: &'p BTreeSet<String>, current: &[Message]) -> Vec<&'p str> {
    let now: BTreeSet<&str> = current.iter().map(|m| m.topic.as_str()).collect();
    previous
        .iter()
        .map(String::as_str)
        .filter(|t| !now.contains(t))
        .collect()
}

/// The empty retained message that clears `topic`.
pub fn removal(topic: &str) -> Message {
    Message {
        topic: topic.to_string(),
        payload: Vec::new(),
        retain: true,
    }
}

/// The platform a point becomes: its hint, else a writable bool is a switch, a read-only one a
/// binary sensor, a writable number a number, anything else a sensor.
pub fn component_of(p: &Point) -> Component {
    let kind = match p.data_type {
        DataType::Bool => Kind::Bool,
        DataType::String => Kind::Text,
        _ => Kind::Number { range: None },
    };
    component_for(kind, p.write.is_some(), &p.homeassistant)
}

fn component_for(kind: Kind, writable: bool, hints: &PointHints) -> Component {
    if let Some(c) = hints.component {
        return c;
    }
    match (kind, writable) {
        (Kind::Bool, true) => Component::Switch,
        (Kind::Bool, false) => Component::BinarySensor,
        (Kind::Text, _) => Component::Sensor,
        (Kind::Number { .. }, true) => Component::Number,
        (Kind::Number { .. }, false) => Component::Sensor,
    }
}

/// A name as a discovery topic level: Home Assistant allows `[a-zA-Z0-9_-]`. A name with other
/// characters keeps a readable stem and gets a hash of the whole name, so two names that differ
/// only in those characters stay two entities.
pub fn object_id(name: &str) -> String {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.chars().all(ok) && !name.is_empty() {
        return name.to_string();
    }
    let stem: String = name.chars().map(|c| if ok(c) { c } else { '_' }).collect();
    format!("{stem}_{:08x}", fnv1a(name.as_bytes()))
}

/// FNV-1a, 32 bits: stable across builds and releases, unlike the standard hasher.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn gateway_identifier(gateway_id: &str) -> String {
    format!("fieldbridge/{gateway_id}")
}

fn origin_block(origin: &Origin) -> Json {
    json!({
        "name": "fieldbridge",
        "sw_version": origin.version,
    })
}

fn gateway_document(topics: &Topics, origin: &Origin) -> Message {
    let id = gateway_identifier(&origin.gateway_id);
    let doc = json!({
        "name": "Connectivity",
        "unique_id": format!("{id}/connectivity"),
        "device_class": "connectivity",
        "state_topic": topics.gateway_status(),
        "payload_on": ONLINE,
        "payload_off": OFFLINE,
        "qos": 1,
        "device": {
            "identifiers": [id],
            "name": format!("fieldbridge {}", origin.gateway_id),
            "manufacturer": "fieldbridge",
            "model": "fieldbridge gateway",
            "sw_version": origin.version,
        },
        "origin": origin_block(origin),
    });
    Message {
        topic: format!(
            "{}/binary_sensor/{}/connectivity/config",
            origin.discovery_prefix,
            object_id(&origin.gateway_id)
        ),
        payload: doc.to_string().into_bytes(),
        retain: true,
    }
}

fn entity(d: &Owner, p: &Subject, component: Component, topics: &Topics, origin: &Origin) -> Json {
    let gw = gateway_identifier(&origin.gateway_id);
    let hints = p.hints;
    let mut doc = Map::new();
    doc.insert(
        "name".into(),
        json!(hints.name.as_deref().unwrap_or(p.name)),
    );
    doc.insert(
        "unique_id".into(),
        json!(format!("{gw}/{}/{}", d.name, p.name)),
    );
    let (state_topic, template) = state(d, p, component, topics);
    doc.insert("state_topic".into(), json!(state_topic));
    doc.insert("value_template".into(), json!(template));
    doc.insert("qos".into(), json!(1));
    doc.insert(
        "availability".into(),
        json!([
            {"topic": topics.gateway_status(), "payload_available": ONLINE, "payload_not_available": OFFLINE},
            {"topic": topics.device_status(d.name), "payload_available": ONLINE, "payload_not_available": OFFLINE},
        ]),
    );
    doc.insert("availability_mode".into(), json!("all"));
    let numeric = matches!(p.kind, Kind::Number { .. });
    let implied = numeric.then(|| units::implied(p.unit, p.name));
    let device_class = match hints.device_class.as_deref() {
        Some(NO_CLASS) => None,
        Some(dc) => Some(dc),
        None => match component {
            Component::Sensor | Component::Number => implied.and_then(|i| i.device_class),
            _ => None,
        },
    };
    if let Some(dc) = device_class {
        doc.insert("device_class".into(), json!(dc));
    }
    let unit = hints
        .unit_of_measurement
        .as_deref()
        .or_else(|| implied.and_then(|i| i.unit).or(p.unit).filter(|_| numeric));
    match component {
        Component::Sensor => {
            let state_class = match hints.state_class.as_deref() {
                Some(NO_CLASS) => None,
                Some(sc) => Some(sc),
                None => implied.map(|i| i.state_class),
            };
            if let Some(sc) = state_class {
                doc.insert("state_class".into(), json!(sc));
            }
            if let Some(u) = unit {
                doc.insert("unit_of_measurement".into(), json!(u));
            }
            if let Some(places) = p.decimals {
                doc.insert("suggested_display_precision".into(), json!(places));
            }
        }
        Component::BinarySensor => {
            doc.insert("payload_on".into(), json!(STATE_ON));
            doc.insert("payload_off".into(), json!(STATE_OFF));
        }
        Component::Switch => {
            doc.insert(
                "command_topic".into(),
                json!(format!("{}/set", topics.reading(d.name, p.name))),
            );
            doc.insert("payload_on".into(), json!("true"));
            doc.insert("payload_off".into(), json!("false"));
            doc.insert("state_on".into(), json!(STATE_ON));
            doc.insert("state_off".into(), json!(STATE_OFF));
            doc.insert("retain".into(), json!(false));
        }
        Component::Number => {
            doc.insert(
                "command_topic".into(),
                json!(format!("{}/set", topics.reading(d.name, p.name))),
            );
            let (min, max, step) = number_range(p);
            doc.insert("min".into(), json!(min));
            doc.insert("max".into(), json!(max));
            doc.insert("step".into(), json!(step));
            doc.insert("mode".into(), json!("box"));
            doc.insert("retain".into(), json!(false));
            if let Some(u) = unit {
                doc.insert("unit_of_measurement".into(), json!(u));
            }
        }
    }
    doc.insert("device".into(), device_block(d, &gw));
    doc.insert("origin".into(), origin_block(origin));
    Json::Object(doc)
}

const STATE_ON: &str = "ON";
const STATE_OFF: &str = "OFF";

/// The topic a point's value arrives on and the template that takes it out of the payload.
fn state(d: &Owner, p: &Subject, component: Component, topics: &Topics) -> (String, String) {
    // A JSON string is also a valid Jinja string literal (same escapes for what a topic level
    // can hold).
    let quoted = Json::String(p.name.to_string()).to_string();
    let (topic, value) = match d.payload {
        PayloadShape::Point => (topics.reading(d.name, p.name), "value_json.value".into()),
        PayloadShape::Device => (
            topics.device(d.name),
            format!("value_json.points[{quoted}].value"),
        ),
    };
    let render = match component {
        Component::BinarySensor | Component::Switch => format!(
            "{{% if {value} is none %}}None{{% elif {value} %}}{STATE_ON}{{% else %}}{STATE_OFF}{{% endif %}}"
        ),
        // A bad reading is null: "None" makes the state unknown.
        Component::Sensor | Component::Number => format!("{{{{ {value} }}}}"),
    };
    let template = match d.payload {
        PayloadShape::Point => render,
        // An `on_change` poll carries only the points that changed; nothing rendered leaves
        // the state as it was.
        PayloadShape::Device => {
            format!("{{% if {quoted} in value_json.points %}}{render}{{% endif %}}")
        }
    };
    (topic, template)
}

/// `min`, `max` and `step` of a number: the point's write range, else what its type can hold
/// after scale and offset; the step is one raw count (or the published decimals of a float).
fn number_range(p: &Subject) -> (f64, f64, f64) {
    // Home Assistant's number refuses a step below 0.001; float ranges are bounded so the
    // frontend shows them.
    const BOUND: f64 = 1e15;
    let integer = match p.kind {
        Kind::Number { range } => range,
        _ => None,
    };
    let (lo, hi) = match integer {
        Some((lo, hi)) => {
            let (a, b) = (lo * p.scale + p.offset, hi * p.scale + p.offset);
            (a.min(b), a.max(b))
        }
        None => (-BOUND, BOUND),
    };
    let limits = p.write.unwrap_or(WriteLimits {
        min: None,
        max: None,
    });
    let min = limits.min.unwrap_or(lo).max(-BOUND);
    let max = limits.max.unwrap_or(hi).min(BOUND);
    let step = match (integer, p.decimals) {
        (Some(_), _) => p.scale.abs(),
        (None, Some(places)) => 10f64.powi(-i32::from(places)),
        (None, None) => 0.001,
    };
    (min, max, step.max(0.001))
}

fn device_block(d: &Owner, gw: &str) -> Json {
    json!({
        "identifiers": [format!("{gw}/{}", d.name)],
        "name": d.name,
        "via_device": gw,
        "manufacturer": d.manufacturer,
        "model": d.model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[gateway]
id = "gw1"
[homeassistant]
enabled = true
[[devices]]
name = "meter"
kind = "modbus_tcp"
host = "127.0.0.1"
[[devices.points]]
name = "energy"
table = "input"
address = 0
type = "f32"
unit = "kWh"
[[devices.points]]
name = "setpoint"
table = "holding"
address = 2
type = "i16"
scale = 0.5
writable = true
min = -10
unit = "°C"
[[devices.points]]
name = "relay"
table = "coil"
address = 0
type = "bool"
writable = true
[[devices.points]]
name = "door"
table = "discrete"
address = 0
type = "bool"
homeassistant = { device_class = "door" }
[[devices.points]]
name = "pf"
table = "input"
address = 4
type = "f32"
homeassistant = { device_class = "power_factor", name = "Power factor" }
[[devices.points]]
name = "hidden"
table = "input"
address = 6
type = "u16"
homeassistant = { discover = false }
"#;

    fn docs(src: &str) -> Vec<(String, Json)> {
        let cfg = crate::config::parse_str(src).unwrap_or_else(|e| panic!("{e:?}"));
        let origin = Origin {
            gateway_id: "gw1".into(),
            version: "9.9.9".into(),
            discovery_prefix: cfg
                .homeassistant
                .as_ref()
                .map(|h| h.discovery_prefix.clone())
                .unwrap_or_default(),
        };
        documents(&cfg, &Topics::new("fb", "gw1"), &origin)
            .into_iter()
            .map(|m| {
                assert!(m.retain, "{} is retained", m.topic);
                (m.topic, serde_json::from_slice(&m.payload).unwrap())
            })
            .collect()
    }

    #[test]
    fn each_point_becomes_the_entity_its_type_writability_and_hints_say_on_its_own_topic() {
        let got: Vec<(String, Option<String>, Option<String>)> = docs(BASE)
            .into_iter()
            .map(|(t, d)| {
                (
                    t,
                    d["device_class"].as_str().map(str::to_string),
                    d["state_class"].as_str().map(str::to_string),
                )
            })
            .collect();
        let s = |x: &str| Some(x.to_string());
        assert_eq!(
            got,
            vec![
                (
                    "homeassistant/binary_sensor/gw1/connectivity/config".into(),
                    s("connectivity"),
                    None
                ),
                (
                    "homeassistant/sensor/gw1_meter/energy/config".into(),
                    s("energy"),
                    s("total_increasing")
                ),
                (
                    "homeassistant/number/gw1_meter/setpoint/config".into(),
                    s("temperature"),
                    None
                ),
                (
                    "homeassistant/switch/gw1_meter/relay/config".into(),
                    None,
                    None
                ),
                (
                    "homeassistant/binary_sensor/gw1_meter/door/config".into(),
                    s("door"),
                    None
                ),
                (
                    "homeassistant/sensor/gw1_meter/pf/config".into(),
                    s("power_factor"),
                    s("measurement")
                ),
            ]
        );
    }

    #[test]
    fn a_number_takes_its_range_from_the_write_limits_and_type_and_its_step_from_the_scale() {
        let all = docs(BASE);
        let n = &all[2].1;
        assert_eq!(n["min"], json!(-10.0));
        assert_eq!(n["max"], json!(16383.5), "i16 max × 0.5");
        assert_eq!(n["step"], json!(0.5));
        assert_eq!(n["unit_of_measurement"], "°C");
        assert_eq!(n["command_topic"], "fb/gw1/meter/setpoint/set");
        let sw = &all[3].1;
        assert_eq!(sw["command_topic"], "fb/gw1/meter/relay/set");
        assert_eq!(
            (&sw["payload_on"], &sw["payload_off"]),
            (&json!("true"), &json!("false"))
        );
        assert_eq!(
            (&sw["state_on"], &sw["state_off"]),
            (&json!("ON"), &json!("OFF"))
        );
    }

    #[test]
    fn every_entity_needs_both_the_gateway_and_its_device_online_and_names_both_devices() {
        for (topic, d) in docs(BASE).into_iter().skip(1) {
            assert_eq!(d["availability_mode"], "all", "{topic}");
            let topics: Vec<&str> = d["availability"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["topic"].as_str().unwrap())
                .collect();
            assert_eq!(topics, ["fb/gw1/status", "fb/gw1/meter/status"], "{topic}");
            assert_eq!(d["device"]["identifiers"], json!(["fieldbridge/gw1/meter"]));
            assert_eq!(d["device"]["via_device"], "fieldbridge/gw1");
            assert_eq!(d["origin"]["name"], "fieldbridge");
            assert!(d["unique_id"]
                .as_str()
                .unwrap()
                .starts_with("fieldbridge/gw1/meter/"));
        }
    }

    #[test]
    fn templates_read_the_value_in_either_payload_shape() {
        let point = docs(BASE);
        assert_eq!(point[1].1["state_topic"], "fb/gw1/meter/energy");
        assert_eq!(point[1].1["value_template"], "{{ value_json.value }}");
        let device = docs(&BASE.replace(
            "host = \"127.0.0.1\"",
            "host = \"127.0.0.1\"\npayload = \"device\"",
        ));
        assert_eq!(device[1].1["state_topic"], "fb/gw1/meter");
        assert_eq!(
            device[1].1["value_template"],
            "{% if \"energy\" in value_json.points %}{{ value_json.points[\"energy\"].value }}{% endif %}"
        );
        assert_eq!(
            device[3].1["value_template"],
            "{% if \"relay\" in value_json.points %}{% if value_json.points[\"relay\"].value is none %}None{% elif value_json.points[\"relay\"].value %}ON{% else %}OFF{% endif %}{% endif %}"
        );
    }

    #[test]
    fn a_profile_gives_the_device_its_manufacturer_and_model_and_an_sdm630_its_energy_sensors() {
        let src = "[gateway]\nid = \"gw1\"\n[homeassistant]\nenabled = true\n\
                   [[buses]]\nname = \"b\"\nkind = \"serial\"\npath = \"/dev/ttyUSB0\"\n\
                   [[devices]]\nname = \"m\"\nkind = \"modbus_rtu\"\nbus = \"b\"\nprofile = \"eastron-sdm630\"\n";
        let all = docs(src);
        let energy: Vec<&Json> = all
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["device_class"] == "energy")
            .collect();
        assert!(energy.len() >= 6, "{} energy sensors", energy.len());
        for d in energy {
            assert_eq!(d["state_class"], "total_increasing");
            assert_eq!(d["unit_of_measurement"], "kWh");
            assert_eq!(d["device"]["manufacturer"], "Eastron");
            assert_eq!(d["device"]["model"], "SDM630-Modbus V2");
        }
        let pf = all
            .iter()
            .find(|(t, _)| t.ends_with("/power_factor_l1/config"))
            .expect("power factor discovered");
        assert_eq!(pf.1["device_class"], "power_factor");
    }

    #[test]
    fn a_serial_sensor_is_a_device_whose_points_are_sensors_classed_by_unit_and_name() {
        let src = "[gateway]\nid = \"gw1\"\n[homeassistant]\nenabled = true\n\
                   [[devices]]\nname = \"dust\"\nkind = \"serial_line\"\npath = \"/dev/ttyUSB0\"\ndriver = \"sds011\"\n";
        let all = docs(src);
        let got: Vec<(&str, &Json, &Json)> = all
            .iter()
            .skip(1)
            .map(|(t, d)| (t.as_str(), &d["device_class"], &d["unit_of_measurement"]))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "homeassistant/sensor/gw1_dust/pm2_5/config",
                    &json!("pm25"),
                    &json!("μg/m³")
                ),
                (
                    "homeassistant/sensor/gw1_dust/pm10/config",
                    &json!("pm10"),
                    &json!("μg/m³")
                ),
            ]
        );
        assert_eq!(all[1].1["device"]["model"], "SDS011");
        assert_eq!(all[1].1["device"]["via_device"], "fieldbridge/gw1");
        assert_eq!(all[1].1["state_topic"], "fb/gw1/dust/pm2_5");
    }

    #[test]
    fn names_that_are_not_topic_safe_get_a_readable_stem_and_a_stable_hash() {
        assert_eq!(object_id("voltage_l1"), "voltage_l1");
        assert_eq!(object_id("a-b"), "a-b");
        let a = object_id("a.b");
        let b = object_id("a b");
        assert!(a.starts_with("a_b_") && b.starts_with("a_b_"), "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(object_id("a.b"), a, "stable");
        assert_eq!(object_id("température").len(), "temp_rature_".len() + 8);
    }

    #[test]
    fn topics_published_before_and_gone_now_are_cleared_and_nothing_else() {
        let current = vec![removal("a"), removal("b")];
        let previous: BTreeSet<String> = ["a", "c", "d"].map(String::from).into();
        assert_eq!(stale(&previous, &current), vec!["c", "d"]);
        assert!(stale(&BTreeSet::new(), &current).is_empty());
    }
}
