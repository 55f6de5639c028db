//! Fewer, smaller messages (issue 12) against real peers: pymodbus plays the device, mosquitto
//! the upstream broker. Report strategies (`on_change` with a deadband, a `max_interval`
//! heartbeat that carries the value read in its own poll), `payload = "device"` (one message
//! per poll with exact values, count-exact by id across an upstream outage), and exact decimals
//! in `fieldbridge read`.

mod support;

use std::time::Duration;

use serde_json::json;
use support::gateway::{fieldbridge, ids_seen, is_reading, split_id, GatewayConfig, SimDevice};
use support::modbus::ModbusSim;
use support::mosquitto::Mosquitto;
use support::mqtt::{Message, MqttWatcher};
use support::relay::{Mode, Relay};
use support::{wait_for, wait_until};

const LONG: Duration = Duration::from_secs(30);

fn on(w: &MqttWatcher, topic: &str) -> Vec<Message> {
    w.messages()
        .into_iter()
        .filter(|m| m.topic == topic)
        .collect()
}

/// Waits until `n` more polls' worth of the every-poll `marker` point arrived upstream. The
/// marker is read in the same request as the points under test and published after them, and
/// upstream delivery keeps the gateway's order, so whatever those polls published for the
/// other points has arrived by then.
fn wait_polls(w: &MqttWatcher, marker: &str, n: usize) {
    let start = on(w, marker).len();
    wait_until(LONG, &format!("{n} more polls of {marker}"), || {
        on(w, marker).len() >= start + n
    });
}

const LEVEL: &str = "fieldbridge/gw/dev/level";
const MARKER: &str = "fieldbridge/gw/dev/marker";

#[test]
fn a_step_under_the_deadband_publishes_nothing_and_a_step_over_it_publishes_once() {
    let mut sim = ModbusSim::start_with_spec(1, &json!({"holding": {"0": 100}, "counter": 1}));
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let points = r#"
[[devices.points]]
name = "level"
table = "holding"
address = 0
type = "u16"
scale = 0.1
report = "on_change"
deadband = 0.5

[[devices.points]]
name = "marker"
table = "holding"
address = 1
type = "u16"
"#;
    let dir = tempfile::tempdir().unwrap();
    let _gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(SimDevice::new(sim.port).points(points))
        .start(dir.path());

    up.wait_for_sync(|m| m.topic == LEVEL, LONG);
    wait_polls(&up, MARKER, 5);
    assert_eq!(
        on(&up, LEVEL).len(),
        1,
        "an unchanged value is published once"
    );

    // 10.0 → 10.4: under the deadband of 0.5, and so is the drift back to 9.6.
    sim.set_holding(0, 104);
    wait_polls(&up, MARKER, 5);
    sim.set_holding(0, 96);
    wait_polls(&up, MARKER, 5);
    assert_eq!(
        on(&up, LEVEL).len(),
        1,
        "steps under the deadband publish nothing"
    );

    // 10.0 → 10.7: over it, published once, with the exact decimal.
    sim.set_holding(0, 107);
    up.wait_for_sync(
        |m| m.topic == LEVEL && m.json()["value"] == json!(10.7),
        LONG,
    );
    wait_polls(&up, MARKER, 5);
    let values: Vec<serde_json::Value> = on(&up, LEVEL)
        .iter()
        .map(|m| m.json()["value"].clone())
        .collect();
    assert_eq!(values, [json!(10.0), json!(10.7)]);
}

#[test]
fn max_interval_publishes_on_time_with_the_value_read_in_that_poll() {
    // Register 0 reads as the Unix time in seconds (mod 65536) at the moment of each read.
    let sim = ModbusSim::start_with_spec(1, &json!({"holding": {}, "clock": 0}));
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    // A deadband no step of the clock can cross: only the heartbeat publishes.
    let points = r#"
[[devices.points]]
name = "clock"
table = "holding"
address = 0
type = "u16"
report = "on_change"
deadband = 100000
max_interval = "2s"
"#;
    let dir = tempfile::tempdir().unwrap();
    let _gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(SimDevice::new(sim.port).interval("200ms").points(points))
        .start(dir.path());

    let topic = "fieldbridge/gw/dev/clock";
    let msgs = wait_for(LONG, "four heartbeats", || {
        let m = on(&up, topic);
        (m.len() >= 4).then_some(m)
    });
    let beats: Vec<(i64, i64)> = msgs
        .iter()
        .map(|m| {
            let p = m.json();
            (p["ts"].as_i64().unwrap(), p["value"].as_i64().unwrap())
        })
        .collect();
    for &(ts, value) in &beats {
        // Read at most one second before the poll's timestamp was taken: never a cached value.
        let now_s = (ts / 1000) % 65536;
        assert!(
            value == now_s || value == (now_s + 65535) % 65536,
            "value {value} was not read in the poll of ts {ts} ({beats:?})"
        );
    }
    for pair in beats.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        // Due at the poll nearest to 2 s (within half the 200 ms interval), never much later.
        assert!(
            (1900..=3500).contains(&gap),
            "heartbeats {gap} ms apart ({beats:?})"
        );
        assert!(
            pair[1].1 != pair[0].1,
            "a heartbeat repeated a value: {beats:?}"
        );
    }
}

/// f32 CDAB, i32, scaled u16, a string, a coil and a point the device refuses (exception 02).
const MIXED: &str = r#"
[[devices.points]]
name = "f32_cdab"
table = "holding"
address = 0
type = "f32"
word_order = "CDAB"
unit = "°C"

[[devices.points]]
name = "i32"
table = "holding"
address = 2
type = "i32"

[[devices.points]]
name = "volts"
table = "holding"
address = 4
type = "u16"
scale = 0.1
unit = "V"

[[devices.points]]
name = "model"
table = "holding"
address = 5
type = "string"
length = 4

[[devices.points]]
name = "pump"
table = "coil"
address = 0
type = "bool"

[[devices.points]]
name = "missing"
table = "holding"
address = 150
type = "u16"
unit = "m"
"#;

fn mixed_sim() -> ModbusSim {
    // 21.5f32 = 0x41AC0000 (CDAB: low word first); -123456i32 = 0xFFFE1DC0; "FB-12" padded.
    ModbusSim::start_with_spec(
        1,
        &json!({
            "holding": {"0": 0, "1": 0x41AC, "2": 0xFFFE, "3": 0x1DC0, "4": 1003,
                        "5": 0x4642, "6": 0x2D31, "7": 0x3200, "8": 0},
            "coils": {"0": true}
        }),
    )
}

#[test]
fn a_device_payload_carries_the_exact_values_of_a_mixed_device_in_one_message() {
    let sim = mixed_sim();
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let _gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(
            SimDevice::new(sim.port)
                .points(MIXED)
                .keys("payload = \"device\""),
        )
        .start(dir.path());

    let m = up.wait_for_sync(|m| m.topic == "fieldbridge/gw/dev", LONG);
    let p = m.json();
    assert!(p["id"].is_string(), "{p}");
    assert!(
        p["ts"].as_i64().unwrap() > 1_600_000_000_000,
        "ts in ms: {p}"
    );
    let missing = &p["points"]["missing"];
    assert!(
        missing["error"]
            .as_str()
            .unwrap_or("")
            .contains("exception"),
        "{p}"
    );
    let mut points = p["points"].clone();
    points["missing"]["error"] = json!("…");
    assert_eq!(
        points,
        json!({
            "f32_cdab": {"value": 21.5, "unit": "°C"},
            "i32": {"value": -123456},
            "volts": {"value": 100.3, "unit": "V"},
            "model": {"value": "FB-12"},
            "pump": {"value": true},
            "missing": {"value": null, "unit": "m", "quality": "bad", "error": "…"},
        })
    );
    assert_eq!(
        up.count(|m| m.topic.starts_with("fieldbridge/gw/dev/") && !m.topic.ends_with("/status")),
        0,
        "no per-point messages with payload = \"device\""
    );
}

#[test]
fn device_payloads_are_count_exact_by_id_across_an_upstream_outage() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let relay = Relay::start(mosq.addr());
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayConfig::standard()
        .upstream(relay.port())
        .with(
            SimDevice::new(sim.port)
                .interval("50ms")
                .keys("payload = \"device\""),
        )
        .start(dir.path());
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/#");
    let newest_local = || {
        local
            .messages()
            .iter()
            .rfind(|m| is_reading(m))
            .map(|m| split_id(m.json()["id"].as_str().unwrap()))
    };

    up.wait_for_sync(is_reading, LONG);
    relay.set_mode(Mode::BlackHole);
    wait_until(LONG, "the gateway to detect the dead link", || {
        gw.log().contains("upstream_disconnected")
    });
    let (boot, at_cut) = wait_for(LONG, "a local poll message", &newest_local);
    wait_until(LONG, "polls during the outage", || {
        newest_local().is_some_and(|(_, s)| s > at_cut + 40)
    });
    relay.set_mode(Mode::Pass);
    let (_, upto) = newest_local().unwrap();
    wait_until(
        LONG,
        "every poll message up to the end of the outage",
        || {
            ids_seen(&up.messages())
                .get(&boot)
                .is_some_and(|seqs| (0..=upto).all(|s| seqs.contains_key(&s)))
        },
    );
    let readings: Vec<Message> = up.messages().into_iter().filter(is_reading).collect();
    assert!(
        readings.iter().all(|m| m.topic == "fieldbridge/gw/dev"),
        "only device messages"
    );
    for m in &readings {
        let n = m.json()["points"].as_object().map_or(0, |o| o.len());
        assert_eq!(
            n,
            12,
            "every_poll: each poll message has all 12 points: {}",
            m.text()
        );
    }
    let dups: usize = ids_seen(&readings)[&boot].values().map(|n| n - 1).sum();
    eprintln!(
        "outage: {} poll messages checked, {dups} duplicates",
        upto + 1
    );
    assert!(
        dups <= 2 * 64 + 10,
        "duplicates bounded by the in-flight window: {dups}"
    );
}

#[test]
fn read_prints_the_decimal_the_scale_implies_and_each_points_strategy() {
    let sim = mixed_sim();
    let dir = tempfile::tempdir().unwrap();
    let points = MIXED.replacen(
        "scale = 0.1\n",
        "scale = 0.1\nreport = \"on_change\"\ndeadband = 0.5\nmax_interval = \"1m\"\n",
        1,
    );
    let cfg = GatewayConfig::standard()
        .with(SimDevice::new(sim.port).points(points))
        .write(dir.path());
    let out = fieldbridge(["read", "-c", cfg.to_str().unwrap(), "--device", "dev"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        line("volts"),
        "volts 100.3 V [report on_change (deadband 0.5, max_interval 1m)]"
    );
    assert_eq!(line("f32_cdab"), "f32_cdab 21.5 °C [report every_poll]");
}
