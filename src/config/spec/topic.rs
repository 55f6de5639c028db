//! MQTT topic syntax, pure: what may be a topic level or a filter, filter matching and prefix
//! remapping. The config validates names and filters with it, the guard checks ACLs with it and
//! `mqtt/` routes with it, so all three agree on what a topic is.

/// The point name that would collide with the device status topic.
pub const RESERVED_POINT: &str = "status";

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

/// Why `topic` cannot name a message — the topic of a PUBLISH, or of a Last Will, which the
/// broker publishes for the client later — or `None` when it can. The guard checks client
/// packets with it and the uplink checks outbox rows with it, so both edges agree.
pub fn topic_name_problem(topic: &str) -> Option<&'static str> {
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        Some("empty topic or a wildcard in the topic")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
