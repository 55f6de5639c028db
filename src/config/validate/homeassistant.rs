//! `[homeassistant]` and the `homeassistant = { … }` hints of a point (issue 16): the discovery
//! prefix is a topic, a hint names a platform and classes Home Assistant knows, and a platform
//! fits the point (only a writable coil or bit is a switch, only a writable number a number).

use super::check::Check;
use crate::config::locate::KeyPath;
use crate::config::raw::{RawHomeAssistant, RawPointHints};
use crate::config::spec::homeassistant::{Component, PointHints, NO_CLASS, STATE_CLASSES};
use crate::config::spec::topic::topic_level_problem;
use crate::config::HomeAssistant;

/// `None` when discovery is off (no section, or `enabled = false`). `base` is the gateway's
/// own `<topic_prefix>/<id>`.
pub(super) fn section(
    c: &mut Check,
    p: KeyPath,
    raw: Option<&RawHomeAssistant>,
    base: &str,
) -> Option<HomeAssistant> {
    let raw = raw?;
    let prefix = &raw.discovery_prefix;
    if prefix == base || prefix.starts_with(&format!("{base}/")) {
        // The birth topic would be the gateway's own status topic, which clients cannot
        // publish on.
        c.push(
            p.key("discovery_prefix"),
            format!("{prefix:?} lies in the gateway's own topics ({base}/…); use e.g. \"homeassistant\""),
        );
    } else if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') {
        c.push(
            p.key("discovery_prefix"),
            format!("{prefix:?} must be non-empty without a leading or trailing '/'"),
        );
    } else {
        for level in prefix.split('/') {
            if let Some(why) = topic_level_problem(level) {
                c.push(
                    p.key("discovery_prefix"),
                    format!("{prefix:?}: level {level:?} {why}"),
                );
            }
        }
    }
    raw.enabled.then(|| HomeAssistant {
        discovery_prefix: prefix.clone(),
    })
}

/// What the hints of a point need to know about it.
pub(super) struct PointKind {
    pub boolean: bool,
    pub text: bool,
    pub writable: bool,
}

/// The hints of the point at `p` (its key `homeassistant`).
pub(super) fn hints(
    c: &mut Check,
    p: &KeyPath,
    raw: Option<&RawPointHints>,
    kind: PointKind,
) -> PointHints {
    let Some(raw) = raw else {
        return PointHints::default();
    };
    let h = p.key("homeassistant");
    let component = raw.component.as_deref().map(|s| {
        let comp = c.parsed(
            h.key("component"),
            s,
            "Home Assistant component",
            Component::NAMES,
            Component::Sensor,
        );
        let fits = match comp {
            Component::Sensor => true,
            Component::BinarySensor => kind.boolean,
            Component::Switch => kind.boolean && kind.writable,
            Component::Number => !kind.boolean && !kind.text && kind.writable,
        };
        if !fits {
            c.push(
                h.key("component"),
                format!(
                    "a {} is for {}; this point is {}{}",
                    comp.as_str(),
                    match comp {
                        Component::BinarySensor => "a bool point",
                        Component::Switch => "a writable bool point",
                        _ => "a writable numeric point",
                    },
                    if kind.writable {
                        "writable "
                    } else {
                        "read-only "
                    },
                    if kind.boolean {
                        "bool"
                    } else if kind.text {
                        "text"
                    } else {
                        "numeric"
                    }
                ),
            );
        }
        comp
    });
    let platform = component.unwrap_or(match (kind.boolean, kind.writable, kind.text) {
        (true, true, _) => Component::Switch,
        (true, false, _) => Component::BinarySensor,
        (false, true, false) => Component::Number,
        _ => Component::Sensor,
    });
    if let Some(dc) = &raw.device_class {
        let known = platform.device_classes();
        if dc != NO_CLASS && !known.contains(&dc.as_str()) {
            c.push(
                h.key("device_class"),
                format!(
                    "{dc:?} is not a Home Assistant {} device class; valid: {}, or \"none\"",
                    platform.as_str(),
                    known.join(", ")
                ),
            );
        }
    }
    if let Some(sc) = &raw.state_class {
        if !STATE_CLASSES.contains(&sc.as_str()) {
            c.push(
                h.key("state_class"),
                format!(
                    "unknown state class {sc:?}; valid: {}",
                    STATE_CLASSES.join(", ")
                ),
            );
        } else if platform != Component::Sensor {
            c.push(
                h.key("state_class"),
                format!(
                    "only a sensor has a state class; this point is a {}",
                    platform.as_str()
                ),
            );
        }
    }
    if let Some(u) = &raw.unit_of_measurement {
        if u.trim().is_empty() {
            c.push(h.key("unit_of_measurement"), "must not be empty");
        } else if matches!(platform, Component::BinarySensor | Component::Switch) {
            c.push(
                h.key("unit_of_measurement"),
                format!("a {} has no unit", platform.as_str()),
            );
        }
    }
    if let Some(n) = &raw.name {
        if n.trim().is_empty() {
            c.push(h.key("name"), "must not be empty");
        }
    }
    PointHints {
        discover: raw.discover.unwrap_or(true),
        component,
        device_class: raw.device_class.clone(),
        state_class: raw.state_class.clone(),
        unit_of_measurement: raw.unit_of_measurement.clone(),
        name: raw.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_discovery_prefix_must_be_a_topic_outside_the_gateways_own() {
        let cases = [
            ("homeassistant", true),
            ("site/ha", true),
            ("fieldbridge", true),
            ("fieldbridge/gw", false),
            ("fieldbridge/gw/ha", false),
            ("ha/+", false),
            ("", false),
            ("ha/", false),
        ];
        for (prefix, ok) in cases {
            let src = format!(
                "[gateway]\nid = \"gw\"\n[homeassistant]\nenabled = true\ndiscovery_prefix = {prefix:?}\n\
                 [[devices]]\nname = \"d\"\nkind = \"modbus_tcp\"\nhost = \"h\"\n\
                 [[devices.points]]\nname = \"p\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n"
            );
            let got = crate::config::parse_str(&src);
            assert_eq!(got.is_ok(), ok, "{prefix:?}: {:?}", got.err());
        }
    }
}
