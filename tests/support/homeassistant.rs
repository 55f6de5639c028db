//! Home Assistant's side of discovery, as far as a test can play it: the retained discovery
//! configs a broker holds (read by a fresh subscriber, as Home Assistant reads them when it
//! starts), and a value template rendered with Jinja2 the way Home Assistant renders it
//! (tests/peers/ha_template.py, system python3 with python3-jinja2).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use super::mqtt::{Message, MqttWatcher};
use super::process::Proc;
use super::wait::{manifest_dir, poll};

/// Where per-entity discovery configs live below the default prefix.
pub const CONFIGS: &str = "homeassistant/+/+/+/config";

/// The retained configs `port` holds, by topic, once a fresh subscriber receives exactly
/// `topics` (an empty retained message is no config). A subscriber that gets another set within
/// a few seconds is replaced by a fresh one until `deadline`, so configs still being published
/// or cleared are waited for; then it panics naming what it got.
pub fn retained_configs(
    port: u16,
    topics: &[&str],
    deadline: Duration,
) -> BTreeMap<String, serde_json::Value> {
    let want: BTreeSet<&str> = topics.iter().copied().collect();
    let mut last = BTreeSet::new();
    let found = poll(deadline, || {
        let w = MqttWatcher::connect(port, CONFIGS);
        poll(Duration::from_secs(3), || {
            let got: Vec<Message> = w
                .messages()
                .into_iter()
                .filter(|m| !m.payload.is_empty())
                .collect();
            let names: BTreeSet<String> = got.iter().map(|m| m.topic.clone()).collect();
            let same = names.len() == want.len()
                && names.iter().all(|n| want.contains(n.as_str()))
                && got.iter().all(|m| m.retain);
            last = names;
            same.then_some(got)
        })
    });
    let Some(got) = found else {
        panic!("retained configs on port {port}: want {want:#?}\ngot {last:#?}");
    };
    got.into_iter()
        .map(|m| (m.topic.clone(), m.json()))
        .collect()
}

/// `template` rendered against `payload` as Home Assistant's MQTT integration renders a
/// `value_template` (`value` and `value_json`).
pub fn render(template: &str, payload: &str) -> String {
    let script = manifest_dir().join("tests/peers/ha_template.py");
    let out = Proc::run(
        "ha_template.py",
        Command::new("python3")
            .arg(script)
            .args([template, payload]),
        Duration::from_secs(20),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RENDERED "))
        .unwrap_or_else(|| {
            panic!(
                "ha_template.py printed no result: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).expect("a JSON string")
}
