//! Home Assistant MQTT discovery (issue 16) with the real binary, pymodbus as the device and
//! mosquitto upstream: the configs are retained on both brokers with the documented fields and
//! their templates read the values in both payload shapes; a birth message on either broker
//! brings them again; a point or device that leaves the config is removed after a restart; a
//! `number` and a `switch` command sent on the discovered command topics reach the simulator.
//! Bad `[homeassistant]` keys make `fieldbridge check` exit 2 naming file, line and key.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use support::gateway::{fieldbridge, GatewayConfig};
use support::homeassistant::{render, retained_configs, CONFIGS};
use support::modbus::{mbpoll, ModbusSim, Target};
use support::mosquitto::Mosquitto;
use support::mqtt::{publish, MqttWatcher};
use support::LONG;

const NUMBER: &str = "homeassistant/number/gw_meter/setpoint/config";
const SWITCH: &str = "homeassistant/switch/gw_meter/relay/config";
const ENERGY: &str = "homeassistant/sensor/gw_meter/energy/config";
const VOLTAGE: &str = "homeassistant/sensor/gw_meter/voltage/config";
const ALARM: &str = "homeassistant/binary_sensor/gw_meter/alarm/config";
const GATEWAY: &str = "homeassistant/binary_sensor/gw/connectivity/config";
const PANEL_TEMP: &str = "homeassistant/sensor/gw_panel/temp/config";

/// Device "meter" (one message per point) and, unless `shrunk`, device "panel" (one message
/// per poll), both on the simulator at `port`. Shrunk: "meter" has lost its voltage point and
/// "panel" is gone.
fn devices(port: u16, shrunk: bool) -> String {
    let mut s = format!(
        r#"
[[devices]]
name = "meter"
kind = "modbus_tcp"
host = "127.0.0.1"
port = {port}
interval = "100ms"
timeout = "300ms"

[[devices.points]]
name = "energy"
table = "holding"
address = 0
type = "f32"
unit = "kWh"

[[devices.points]]
name = "setpoint"
table = "holding"
address = 30
type = "u16"
scale = 0.1
unit = "°C"
writable = true
min = 5
max = 30

[[devices.points]]
name = "relay"
table = "coil"
address = 2
type = "bool"
writable = true

[[devices.points]]
name = "alarm"
table = "discrete"
address = 1
type = "bool"
"#
    );
    if !shrunk {
        s += r#"
[[devices.points]]
name = "voltage"
table = "holding"
address = 4
type = "u16"
scale = 0.1
unit = "V"

[[devices]]
name = "panel"
kind = "modbus_tcp"
host = "127.0.0.1"
port = PORT
interval = "100ms"
timeout = "300ms"
payload = "device"

[[devices.points]]
name = "temp"
table = "holding"
address = 0
type = "f32"
unit = "°C"
"#
        .replace("PORT", &port.to_string())
        .as_str();
    }
    s
}

fn config(sim: &ModbusSim, mosq: &Mosquitto, shrunk: bool) -> GatewayConfig {
    GatewayConfig::standard()
        .upstream(mosq.port)
        .with("[homeassistant]\nenabled = true\n")
        .with(devices(sim.port, shrunk))
}

const ALL: [&str; 7] = [GATEWAY, ENERGY, NUMBER, SWITCH, ALARM, VOLTAGE, PANEL_TEMP];

#[test]
fn discovery_configs_are_retained_on_both_brokers_with_the_documented_fields_and_working_templates()
{
    let mosq = Mosquitto::start();
    let sim = ModbusSim::start(1);
    let cfg = config(&sim, &mosq, false);
    let gw = cfg.start_in_temp();
    let up = retained_configs(mosq.port, &ALL, LONG);
    let local = retained_configs(gw.broker_port, &ALL, LONG);
    assert_eq!(up, local, "the same configs on both brokers");

    let energy = &up[ENERGY];
    for (key, want) in [
        ("device_class", json!("energy")),
        ("state_class", json!("total_increasing")),
        ("unit_of_measurement", json!("kWh")),
        ("state_topic", json!("fieldbridge/gw/meter/energy")),
        ("availability_mode", json!("all")),
        ("unique_id", json!("fieldbridge/gw/meter/energy")),
        (
            "availability",
            json!([
                {"topic": "fieldbridge/gw/status", "payload_available": "online", "payload_not_available": "offline"},
                {"topic": "fieldbridge/gw/meter/status", "payload_available": "online", "payload_not_available": "offline"},
            ]),
        ),
    ] {
        assert_eq!(energy[key], want, "{key} of {ENERGY}");
    }
    assert_eq!(
        energy["device"],
        json!({
            "identifiers": ["fieldbridge/gw/meter"],
            "name": "meter",
            "manufacturer": "fieldbridge",
            "model": "Modbus TCP device",
            "via_device": "fieldbridge/gw",
        })
    );
    assert_eq!(
        up[GATEWAY]["device"]["identifiers"],
        json!(["fieldbridge/gw"]),
        "the via_device exists"
    );
    assert_eq!(up[GATEWAY]["state_topic"], "fieldbridge/gw/status");
    assert_eq!(up[VOLTAGE]["device_class"], "voltage");
    assert_eq!(up[VOLTAGE]["state_class"], "measurement");
    assert_eq!(
        up[ALARM]["device"]["identifiers"],
        json!(["fieldbridge/gw/meter"])
    );
    let number = &up[NUMBER];
    assert_eq!(
        (
            &number["min"],
            &number["max"],
            &number["step"],
            &number["command_topic"]
        ),
        (
            &json!(5.0),
            &json!(30.0),
            &json!(0.1),
            &json!("fieldbridge/gw/meter/setpoint/set")
        )
    );
    assert_eq!(
        up[SWITCH]["command_topic"],
        "fieldbridge/gw/meter/relay/set"
    );
    assert_eq!(up[PANEL_TEMP]["state_topic"], "fieldbridge/gw/panel");

    // The templates, rendered as Home Assistant renders them, give the values the gateway
    // publishes in both shapes: the panel's one-message-per-poll carries the same register
    // as the meter's energy point.
    let readings = MqttWatcher::connect(mosq.port, "fieldbridge/gw/#");
    let point = readings.wait_for_sync(|m| m.topic == "fieldbridge/gw/meter/energy", LONG);
    let poll = readings.wait_for_sync(|m| m.topic == "fieldbridge/gw/panel", LONG);
    let want = point.json()["value"].to_string();
    assert_eq!(
        render(energy["value_template"].as_str().unwrap(), &point.text()),
        want
    );
    assert_eq!(
        render(
            up[PANEL_TEMP]["value_template"].as_str().unwrap(),
            &poll.text()
        ),
        want
    );
    // A poll without the point (on_change) renders nothing, which Home Assistant ignores.
    assert_eq!(
        render(
            up[PANEL_TEMP]["value_template"].as_str().unwrap(),
            r#"{"id":"x-1","ts":1,"points":{}}"#
        ),
        ""
    );
    let alarm = readings.wait_for_sync(|m| m.topic == "fieldbridge/gw/meter/alarm", LONG);
    assert_eq!(
        render(up[ALARM]["value_template"].as_str().unwrap(), &alarm.text()),
        "ON",
        "discrete 1 of the simulator is set"
    );
}

#[test]
fn discovery_is_published_again_when_home_assistant_announces_itself_on_either_broker() {
    let mosq = Mosquitto::start();
    let sim = ModbusSim::start(1);
    let gw = config(&sim, &mosq, false).start_in_temp();
    retained_configs(mosq.port, &ALL, LONG);
    for (broker, port) in [("upstream", mosq.port), ("local", gw.broker_port)] {
        let w = MqttWatcher::connect(port, CONFIGS);
        // The retained copies arrive first; only a live (not retained) copy is a republish.
        w.wait_for_sync(|m| m.retain && m.topic == ENERGY, LONG);
        assert_eq!(
            w.count(|m| !m.retain),
            0,
            "{broker}: nothing republished before the birth"
        );
        publish(port, &["-t", "homeassistant/status", "-m", "offline"]);
        publish(port, &["-t", "homeassistant/status", "-m", "online"]);
        for topic in ALL {
            w.wait_for_sync(|m| !m.retain && m.topic == topic, LONG);
        }
        let energy = w.wait_for_sync(|m| !m.retain && m.topic == ENERGY, LONG);
        assert_eq!(energy.json()["device_class"], "energy", "{broker}");
    }
}

#[test]
fn a_point_or_device_that_leaves_the_config_or_discovery_switched_off_is_removed_after_a_restart() {
    let mosq = Mosquitto::start();
    let sim = ModbusSim::start(1);
    let dir = tempfile::tempdir().unwrap();
    let mut gw = config(&sim, &mosq, false).start(dir.path());
    retained_configs(mosq.port, &ALL, LONG);
    assert!(gw.terminate().success());
    drop(gw);

    let live = MqttWatcher::connect(mosq.port, CONFIGS);
    let mut gw = config(&sim, &mosq, true).start(dir.path());
    let kept = [GATEWAY, ENERGY, NUMBER, SWITCH, ALARM];
    retained_configs(mosq.port, &kept, LONG);
    for gone in [VOLTAGE, PANEL_TEMP] {
        live.wait_for_sync(|m| m.topic == gone && m.payload.is_empty(), LONG);
    }
    assert!(gw.terminate().success());
    drop(gw);

    // Discovery switched off: everything published before is removed, and nothing is left to
    // remember.
    live.clear();
    let mut off = config(&sim, &mosq, true);
    off.body = off.body.replace("[homeassistant]\nenabled = true\n", "");
    let mut gw = off.start(dir.path());
    for topic in kept {
        live.wait_for_sync(|m| m.topic == topic && m.payload.is_empty(), LONG);
    }
    assert!(gw.terminate().success());
    assert!(
        !dir.path()
            .join("data/homeassistant-discovery.json")
            .exists(),
        "the record of published topics is gone"
    );
}

#[test]
fn a_reload_clears_the_discovery_of_what_left_the_config_and_keeps_the_rest_without_a_restart() {
    let mosq = Mosquitto::start();
    let sim = ModbusSim::start(1);
    let dir = tempfile::tempdir().unwrap();
    let mut gw = config(&sim, &mosq, false).start(dir.path());
    retained_configs(mosq.port, &ALL, LONG);
    let live = MqttWatcher::connect(mosq.port, CONFIGS);
    let text = gw.config_text();
    let shrunk = text.replace(&devices(sim.port, false), &devices(sim.port, true));
    assert_ne!(shrunk, text, "the test config has the full device list");
    gw.reload_with(&shrunk);
    gw.wait_log(&["config_reloaded"]);
    for gone in [VOLTAGE, PANEL_TEMP] {
        live.wait_for_sync(|m| m.topic == gone && m.payload.is_empty(), LONG);
    }
    retained_configs(mosq.port, &[GATEWAY, ENERGY, NUMBER, SWITCH, ALARM], LONG);
    assert!(gw.try_wait().is_none(), "the gateway exited:\n{}", gw.log());
}

#[test]
fn a_gateway_killed_after_publishing_still_clears_what_left_the_config_at_the_next_start() {
    let mosq = Mosquitto::start();
    let sim = ModbusSim::start(1);
    let dir = tempfile::tempdir().unwrap();
    let mut gw = config(&sim, &mosq, false).start(dir.path());
    retained_configs(mosq.port, &ALL, LONG);
    // No clean stop: the record of published topics is the one written at start.
    gw.kill9();
    drop(gw);
    let _gw = config(&sim, &mosq, true).start(dir.path());
    retained_configs(mosq.port, &[GATEWAY, ENERGY, NUMBER, SWITCH, ALARM], LONG);
}

#[test]
fn a_number_and_a_switch_command_on_their_discovered_topics_reach_the_simulator() {
    let mosq = Mosquitto::start();
    let sim = ModbusSim::start(1);
    let _gw = config(&sim, &mosq, false).start_in_temp();
    let up: BTreeMap<String, Value> = retained_configs(mosq.port, &ALL, LONG);
    let results = MqttWatcher::connect(mosq.port, "fieldbridge/gw/meter/+/set/result");
    // The gateway takes commands once it is subscribed; its status says it is connected.
    MqttWatcher::connect(mosq.port, "fieldbridge/gw/meter/status")
        .wait_for_sync(|m| m.text() == "online", LONG);

    // As Home Assistant sends them: a number's value as text, a switch's payload_off.
    let number = &up[NUMBER];
    let switch = &up[SWITCH];
    publish(
        mosq.port,
        &[
            "-q",
            "1",
            "-t",
            number["command_topic"].as_str().unwrap(),
            "-m",
            "21.5",
        ],
    );
    publish(
        mosq.port,
        &[
            "-q",
            "1",
            "-t",
            switch["command_topic"].as_str().unwrap(),
            "-m",
            switch["payload_off"].as_str().unwrap(),
        ],
    );
    for point in ["setpoint", "relay"] {
        let r = results.wait_for_sync(
            |m| m.topic == format!("fieldbridge/gw/meter/{point}/set/result"),
            LONG,
        );
        assert_eq!(r.json()["ok"], true, "{point}: {}", r.text());
    }
    let holding = mbpoll(Target::Tcp(sim.port), &["-r", "30", "-c", "1"], &[]).expect_ok();
    assert_eq!(holding.texts(), ["215"], "21.5 °C at scale 0.1");
    let coil = mbpoll(
        Target::Tcp(sim.port),
        &["-t", "0", "-r", "2", "-c", "1"],
        &[],
    )
    .expect_ok();
    assert_eq!(coil.texts(), ["0"], "the relay is off");
}

#[test]
fn bad_homeassistant_keys_are_refused_by_check_with_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fb.toml");
    let text = r#"[gateway]
id = "gw"
data_dir = "data"

[homeassistant]
enabled = true
discovery_prefix = "home/#"

[[devices]]
name = "plc"
kind = "modbus_tcp"
host = "127.0.0.1"

[[devices.points]]
name = "temp"
table = "holding"
address = 0
type = "f32"
homeassistant = { component = "switch", device_class = "warmth" }

[[devices.points]]
name = "sp"
table = "holding"
address = 2
type = "u16"
writable = true
homeassistant = { state_class = "measurement" }
"#;
    std::fs::write(&file, text).unwrap();
    let out = check(&file);
    assert_eq!(out.0, Some(2), "{}", out.1);
    for (line, key) in [
        (7, "homeassistant.discovery_prefix"),
        (19, "devices[0].points[0].homeassistant.component"),
        (19, "devices[0].points[0].homeassistant.device_class"),
    ] {
        assert!(
            out.1.contains(&format!("fb.toml:{line}: key '{key}'")),
            "{key} at line {line} not named in\n{}",
            out.1
        );
    }
    assert!(
        out.1
            .contains("fb.toml:27: key 'devices[0].points[1].homeassistant.state_class'"),
        "a state class on a number:\n{}",
        out.1
    );
    // An unknown hint key is named like any unknown key.
    std::fs::write(
        &file,
        text.replace("state_class = \"measurement\"", "typo = 1"),
    )
    .unwrap();
    let out = check(&file);
    assert_eq!(out.0, Some(2), "{}", out.1);
    assert!(
        out.1
            .contains("fb.toml:27: key 'devices[0].points[1].homeassistant.typo': unknown field"),
        "{}",
        out.1
    );
}

/// `fieldbridge check --config FILE`: exit code and everything it printed.
fn check(file: &Path) -> (Option<i32>, String) {
    let out = fieldbridge(["check", "--config", file.to_str().unwrap()]);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
