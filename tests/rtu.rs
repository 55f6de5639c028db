//! Modbus RTU end to end: the real gateway binary on a socat pty pair (or RTU over TCP) with
//! pymodbus serving several unit ids on the other end (tests/peers/modbus_rtu_sim.py, whose
//! register layout tests/harness_rtu_sim.rs cross-checks with mbpoll), readings watched on the
//! embedded broker, commands sent through mosquitto with mosquitto_pub.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use support::gateway::{fieldbridge, hash_of, GatewayConfig, BIN};
use support::modbus::{ModbusSim, RtuSim};
use support::mosquitto::Mosquitto;
use support::mqtt::{mosquitto_pub, publish, Message, MqttWatcher};
use support::process::{text, Proc};
use support::{wait_for, wait_until};

const LONG: Duration = Duration::from_secs(30);

fn bus(path: &Path) -> String {
    format!(
        "[[buses]]\nname = \"rs485\"\nkind = \"serial\"\npath = \"{}\"\nbaud = 9600\nrequest_gap = \"2ms\"\n",
        path.display()
    )
}

/// The standard test gateway with `body` (buses and devices) and, optionally, an upstream
/// broker (keep-alive 2 s).
fn gateway(upstream: Option<u16>, body: &str) -> GatewayConfig {
    let mut c = GatewayConfig::standard();
    if let Some(port) = upstream {
        c = c.upstream(port);
        let up = c.upstream.as_mut().unwrap();
        up.keep_alive = "2s";
        up.connect_timeout = None;
    }
    c.with(body)
}

fn rtu_device(name: &str, unit: u8, interval: &str, timeout: &str, points: &str) -> String {
    format!(
        "[[devices]]\nname = \"{name}\"\nkind = \"modbus_rtu\"\nbus = \"rs485\"\nunit_id = {unit}\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\nbackoff_max = \"2s\"\n{points}\n"
    )
}

/// Points of the simulator's `--units-count` map for unit `u`: holding 0..1 (100u, 100u+1),
/// holding 10 = f32 (u + 0.5), input 0 = 1000 + 100u, coil 0 = true.
const UNIT_POINTS: &str = r#"
[[devices.points]]
name = "h0"
table = "holding"
address = 0
type = "u16"

[[devices.points]]
name = "h1"
table = "holding"
address = 1
type = "u16"

[[devices.points]]
name = "f"
table = "holding"
address = 10
type = "f32"

[[devices.points]]
name = "in0"
table = "input"
address = 0
type = "u16"

[[devices.points]]
name = "c0"
table = "coil"
address = 0
type = "bool"
"#;

fn expected_unit_values(unit: u64) -> Vec<(&'static str, Value)> {
    vec![
        ("h0", json!(100 * unit)),
        ("h1", json!(100 * unit + 1)),
        ("f", json!(unit as f64 + 0.5)),
        ("in0", json!(1000 + 100 * unit)),
        ("c0", json!(true)),
    ]
}

fn point_of(m: &Message) -> (String, String) {
    let mut it = m.topic.rsplit('/');
    let point = it.next().unwrap_or_default().to_string();
    let device = it.next().unwrap_or_default().to_string();
    (device, point)
}

/// Every reading of `device` so far has the value its point must have.
fn assert_all_values(watch: &MqttWatcher, device: &str, want: &[(&str, Value)]) -> usize {
    let mut checked = 0;
    let is_reading = |m: &Message| {
        !m.topic.ends_with("/status")
            && !m.topic.ends_with("/stats")
            && m.payload.first() == Some(&b'{')
    };
    for m in watch.messages().iter().filter(|m| is_reading(m)) {
        let (d, p) = point_of(m);
        if d != device {
            continue;
        }
        let v = m.json();
        if let Some((_, w)) = want.iter().find(|(n, _)| *n == p) {
            if v["quality"] == "good" {
                assert_eq!(&v["value"], w, "{device}/{p}: {}", m.text());
                checked += 1;
            }
        }
    }
    checked
}

fn status_count(watch: &MqttWatcher, device: &str, s: &str) -> usize {
    let topic = format!("fieldbridge/gw/{device}/status");
    watch.count(|m| m.topic == topic && m.text() == s)
}

fn reading_ts(watch: &MqttWatcher, device: &str, point: &str) -> Vec<i64> {
    let topic = format!("fieldbridge/gw/{device}/{point}");
    watch
        .messages()
        .iter()
        .filter(|m| m.topic == topic)
        .filter_map(|m| m.json()["ts"].as_i64())
        .collect()
}

#[test]
fn units_on_one_bus_keep_their_period_while_a_muted_unit_costs_at_most_one_timeout_per_cycle() {
    let mut sim = RtuSim::start_units(3);
    let dir = tempfile::tempdir().unwrap();
    let mut body = bus(&sim.bus_path());
    for u in 1..=3u8 {
        body.push_str(&rtu_device(
            &format!("u{u}"),
            u,
            "300ms",
            "200ms",
            UNIT_POINTS,
        ));
    }
    // An id nobody on the bus has: silent, as on a real RS-485 line.
    body.push_str(&rtu_device("ghost", 9, "300ms", "200ms", UNIT_POINTS));
    let gw = gateway(None, &body).start(dir.path());
    let watch = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/#");
    wait_until(LONG, "all three units online", || {
        (1..=3).all(|u| status_count(&watch, &format!("u{u}"), "online") == 1)
    });
    wait_until(LONG, "the unknown id reported offline", || {
        status_count(&watch, "ghost", "offline") == 1
    });

    sim.mute(2);
    wait_until(LONG, "the muted unit offline", || {
        status_count(&watch, "u2", "offline") == 1
    });
    // From here, measure the period of units 1 and 3 over a dozen cycles.
    let start = [
        reading_ts(&watch, "u1", "h0").len(),
        reading_ts(&watch, "u3", "h0").len(),
    ];
    wait_until(LONG, "twelve more polls of units 1 and 3", || {
        reading_ts(&watch, "u1", "h0").len() >= start[0] + 12
            && reading_ts(&watch, "u3", "h0").len() >= start[1] + 12
    });
    for (i, dev) in ["u1", "u3"].iter().enumerate() {
        let ts = reading_ts(&watch, dev, "h0");
        let window = &ts[start[i]..];
        let mean = (window[window.len() - 1] - window[0]) as f64 / (window.len() - 1) as f64;
        let max = window.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        eprintln!(
            "{dev}: mean period {mean:.0} ms, longest {max} ms (interval 300 ms, timeout 200 ms)"
        );
        // Interval plus at most one timeout of the dead unit per cycle (the dead unit is on
        // backoff, so most cycles pay nothing).
        assert!(
            mean <= 300.0 + 200.0,
            "{dev}: mean period {mean} ms\n{}",
            gw.log()
        );
    }
    // The line's counters on the stats topic show what is wrong: timeouts, nothing garbled.
    let stats = watch.wait_for_sync(
        |m| {
            m.topic == "fieldbridge/gw/stats"
                && m.json()["lines"]["rs485"]["timeouts"].as_u64() > Some(2)
        },
        LONG,
    );
    let line = &stats.json()["lines"]["rs485"];
    assert!(line["requests"].as_u64() > Some(20), "{line}");
    assert_eq!(line["bad_answers"], 0, "{line}");
    assert_eq!(line["link_errors"], 0, "{line}");
    assert!(assert_all_values(&watch, "u1", &expected_unit_values(1)) > 0);
    assert!(assert_all_values(&watch, "u3", &expected_unit_values(3)) > 0);

    sim.unmute(2);
    wait_until(LONG, "the unmuted unit back online", || {
        status_count(&watch, "u2", "online") == 2
    });
    let n = reading_ts(&watch, "u2", "h0").len();
    wait_until(LONG, "unit 2 polled at its normal rate again", || {
        reading_ts(&watch, "u2", "h0").len() >= n + 5
    });
    assert!(assert_all_values(&watch, "u2", &expected_unit_values(2)) > 0);
}

const TYPED_POINTS: &str = r#"
[[devices.points]]
name = "u16"
table = "holding"
address = 0
type = "u16"
[[devices.points]]
name = "i16"
table = "holding"
address = 1
type = "i16"
[[devices.points]]
name = "i16_badc"
table = "holding"
address = 2
type = "i16"
word_order = "BADC"
[[devices.points]]
name = "u32_abcd"
table = "holding"
address = 3
type = "u32"
[[devices.points]]
name = "u32_cdab"
table = "holding"
address = 5
type = "u32"
word_order = "CDAB"
[[devices.points]]
name = "i32_badc"
table = "holding"
address = 7
type = "i32"
word_order = "BADC"
[[devices.points]]
name = "i32_dcba"
table = "holding"
address = 9
type = "i32"
word_order = "DCBA"
[[devices.points]]
name = "f32_abcd"
table = "holding"
address = 11
type = "f32"
[[devices.points]]
name = "f32_cdab"
table = "holding"
address = 13
type = "f32"
word_order = "CDAB"
[[devices.points]]
name = "f32_badc"
table = "holding"
address = 15
type = "f32"
word_order = "BADC"
[[devices.points]]
name = "f32_dcba"
table = "holding"
address = 17
type = "f32"
word_order = "DCBA"
[[devices.points]]
name = "u64_abcdefgh"
table = "holding"
address = 19
type = "u64"
word_order = "ABCDEFGH"
[[devices.points]]
name = "i64_ghefcdab"
table = "holding"
address = 23
type = "i64"
word_order = "GHEFCDAB"
[[devices.points]]
name = "f64_badcfehg"
table = "holding"
address = 27
type = "f64"
word_order = "BADCFEHG"
[[devices.points]]
name = "f64_hgfedcba"
table = "holding"
address = 31
type = "f64"
word_order = "HGFEDCBA"
[[devices.points]]
name = "u64_max"
table = "holding"
address = 35
type = "u64"
[[devices.points]]
name = "bit0"
table = "holding"
address = 40
type = "bool"
bit = 0
[[devices.points]]
name = "bit1"
table = "holding"
address = 40
type = "bool"
bit = 1
[[devices.points]]
name = "bit15"
table = "holding"
address = 40
type = "bool"
bit = 15
[[devices.points]]
name = "scaled"
table = "holding"
address = 41
type = "u16"
scale = 0.1
offset = -40
unit = "°C"
[[devices.points]]
name = "model"
table = "input"
address = 0
type = "string"
length = 4
[[devices.points]]
name = "model_badc"
table = "input"
address = 4
type = "string"
length = 3
word_order = "BADC"
[[devices.points]]
name = "coil0"
table = "coil"
address = 0
type = "bool"
[[devices.points]]
name = "coil1"
table = "coil"
address = 1
type = "bool"
[[devices.points]]
name = "discrete0"
table = "discrete"
address = 0
type = "bool"
"#;

fn typed_spec() -> Value {
    let t = |table: &str, address: u32, ty: &str, order: &str, value: Value| json!({"table": table, "address": address, "type": ty, "order": order, "value": value});
    json!({"units": {"1": {
        "holding": {"40": 0xA005u32, "41": 655},
        "coils": {"0": true, "1": false},
        "discrete": {"0": true},
        "typed": [
            t("holding", 0, "u16", "ABCD", json!(65000)),
            t("holding", 1, "i16", "ABCD", json!(-1234)),
            t("holding", 2, "i16", "BADC", json!(-1234)),
            t("holding", 3, "u32", "ABCD", json!(4_000_000_000u64)),
            t("holding", 5, "u32", "CDAB", json!(4_000_000_000u64)),
            t("holding", 7, "i32", "BADC", json!(-123_456)),
            t("holding", 9, "i32", "DCBA", json!(-123_456)),
            t("holding", 11, "f32", "ABCD", json!(21.5)),
            t("holding", 13, "f32", "CDAB", json!(-3.25)),
            t("holding", 15, "f32", "BADC", json!(1234.5)),
            t("holding", 17, "f32", "DCBA", json!(0.1)),
            t("holding", 19, "u64", "ABCDEFGH", json!(1_234_567_890_123_456_789u64)),
            t("holding", 23, "i64", "GHEFCDAB", json!(-9_876_543_210i64)),
            t("holding", 27, "f64", "BADCFEHG", json!(std::f64::consts::PI)),
            t("holding", 31, "f64", "HGFEDCBA", json!(-2.5e-10)),
            t("holding", 35, "u64", "ABCD", json!(u64::MAX)),
            {"table": "input", "address": 0, "type": "string", "length": 4, "value": "SDM630"},
            {"table": "input", "address": 4, "type": "string", "length": 3, "order": "BADC", "value": "XY-MD0"},
        ]
    }}})
}

fn typed_expectations() -> Vec<(&'static str, Value)> {
    vec![
        ("u16", json!(65000)),
        ("i16", json!(-1234)),
        ("i16_badc", json!(-1234)),
        ("u32_abcd", json!(4_000_000_000u64)),
        ("u32_cdab", json!(4_000_000_000u64)),
        ("i32_badc", json!(-123_456)),
        ("i32_dcba", json!(-123_456)),
        ("f32_abcd", json!(21.5)),
        ("f32_cdab", json!(-3.25)),
        ("f32_badc", json!(1234.5)),
        ("f32_dcba", json!(0.1)),
        ("u64_abcdefgh", json!(1_234_567_890_123_456_789u64)),
        ("i64_ghefcdab", json!(-9_876_543_210i64)),
        ("f64_badcfehg", json!(std::f64::consts::PI)),
        ("f64_hgfedcba", json!(-2.5e-10)),
        ("u64_max", json!(u64::MAX)),
        ("bit0", json!(true)),
        ("bit1", json!(false)),
        ("bit15", json!(true)),
        ("scaled", json!(25.5)),
        ("model", json!("SDM630")),
        ("model_badc", json!("XY-MD0")),
        ("coil0", json!(true)),
        ("coil1", json!(false)),
        ("discrete0", json!(true)),
    ]
}

fn check_typed(watch: &MqttWatcher, device: &str) {
    let want = typed_expectations();
    wait_until(LONG, "a reading of every typed point", || {
        want.iter().all(|(p, _)| {
            let topic = format!("fieldbridge/gw/{device}/{p}");
            watch.count(|m| m.topic == topic) > 0
        })
    });
    for (p, w) in &want {
        let topic = format!("fieldbridge/gw/{device}/{p}");
        let m = watch.wait_for_sync(|m| m.topic == topic, LONG);
        let v = m.json();
        assert_eq!(v["quality"], "good", "{p}: {}", m.text());
        match (w.as_f64(), v["value"].as_f64()) {
            (Some(a), Some(b)) if w.is_f64() => {
                assert!(
                    (a - b).abs() <= a.abs() * 1e-12,
                    "{p}: {} want {w}",
                    m.text()
                )
            }
            _ => assert_eq!(&v["value"], w, "{p}: {}", m.text()),
        }
    }
    let scaled = watch.wait_for_sync(|m| m.topic.ends_with("/scaled"), LONG);
    assert_eq!(scaled.json()["unit"], "°C");
}

#[test]
fn every_type_and_order_decodes_to_the_value_pymodbus_serves() {
    let sim = RtuSim::start(&typed_spec());
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}",
        bus(&sim.bus_path()),
        rtu_device("dev", 1, "200ms", "300ms", TYPED_POINTS)
    );
    let gw = gateway(None, &body).start(dir.path());
    let watch = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/#");
    check_typed(&watch, "dev");
}

#[test]
fn rtu_over_tcp_reads_the_same_values_through_a_device_server() {
    let sim = RtuSim::start_tcp(&typed_spec());
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "[[buses]]\nname = \"rs485\"\nkind = \"rtu_over_tcp\"\nhost = \"127.0.0.1\"\nport = {}\n{}",
        sim.addr().port(),
        rtu_device("dev", 1, "200ms", "300ms", TYPED_POINTS)
    );
    let gw = gateway(None, &body).start(dir.path());
    let watch = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/#");
    check_typed(&watch, "dev");
}

#[test]
fn exceptions_make_bad_quality_readings_and_the_device_stays_online() {
    let mut sim = RtuSim::start_units(1);
    let dir = tempfile::tempdir().unwrap();
    // Address 500 is beyond the simulator's table: that request alone gets exception 02.
    let points = format!(
        "{UNIT_POINTS}\n[[devices.points]]\nname = \"missing\"\ntable = \"holding\"\naddress = 500\ntype = \"u16\"\n"
    );
    let body = format!(
        "{}{}",
        bus(&sim.bus_path()),
        rtu_device("dev", 1, "200ms", "300ms", &points)
    );
    let gw = gateway(None, &body).start(dir.path());
    let watch = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/#");
    let missing = watch.wait_for_sync(|m| m.topic.ends_with("/dev/missing"), LONG);
    let v = missing.json();
    assert_eq!(v["quality"], "bad", "{}", missing.text());
    assert_eq!(v["value"], Value::Null);
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("exception 02"),
        "{}",
        missing.text()
    );
    // The other requests of the same poll are unaffected.
    watch.wait_for_sync(
        |m| m.topic.ends_with("/dev/h0") && m.json()["quality"] == "good",
        LONG,
    );

    sim.exception(1, 4);
    let failing = watch.wait_for_sync(
        |m| {
            m.topic.ends_with("/dev/h0")
                && m.json()["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("exception 04"))
        },
        LONG,
    );
    assert_eq!(failing.json()["quality"], "bad");
    sim.exception(1, 0);
    watch.clear();
    watch.wait_for_sync(
        |m| m.topic.ends_with("/dev/h0") && m.json()["value"] == json!(100),
        LONG,
    );
    // An exception is an answer: the device never went offline.
    assert_eq!(status_count(&watch, "dev", "offline"), 0);
}

#[test]
fn a_late_reply_or_garbage_never_becomes_the_answer_to_the_next_request() {
    // Default retries = 1: one corrupted reply is retried, not an outage.
    let mut sim = RtuSim::start_units(2);
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}{}",
        bus(&sim.bus_path()),
        rtu_device("u1", 1, "100ms", "250ms", UNIT_POINTS),
        rtu_device("u2", 2, "100ms", "250ms", UNIT_POINTS)
    );
    let gw = gateway(None, &body).start(dir.path());
    let watch = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/#");
    wait_until(LONG, "both online", || {
        status_count(&watch, "u1", "online") == 1 && status_count(&watch, "u2", "online") == 1
    });
    // Unit 1 now answers 0.4 s late against a 0.25 s timeout: its replies land while unit 2's
    // requests (and unit 1's next ones) are on the wire.
    sim.delay(1, Duration::from_millis(400));
    wait_until(LONG, "the slow unit offline", || {
        status_count(&watch, "u1", "offline") == 1
    });
    let n = reading_ts(&watch, "u2", "h0").len();
    wait_until(LONG, "unit 2 polled through unit 1's late replies", || {
        reading_ts(&watch, "u2", "h0").len() >= n + 10
    });
    sim.delay(1, Duration::ZERO);
    wait_until(LONG, "the slow unit back", || {
        status_count(&watch, "u1", "online") == 2
    });
    // Corrupted CRCs: the bus retries on a cleared line; nothing wrong is published.
    // One corrupted reply per unit at a time: the next is armed only once both units have
    // been read again (two in a row would exceed retries = 1 and rightly mark a unit offline).
    for _ in 0..5 {
        let n = [
            reading_ts(&watch, "u1", "h0").len(),
            reading_ts(&watch, "u2", "h0").len(),
        ];
        sim.garbage(1);
        sim.garbage(2);
        wait_until(LONG, "a poll of both units after garbage", || {
            reading_ts(&watch, "u1", "h0").len() > n[0] + 1
                && reading_ts(&watch, "u2", "h0").len() > n[1] + 1
        });
    }
    let n = reading_ts(&watch, "u1", "h0").len();
    wait_until(LONG, "more polls", || {
        reading_ts(&watch, "u1", "h0").len() >= n + 5
    });
    let checked = assert_all_values(&watch, "u1", &expected_unit_values(1))
        + assert_all_values(&watch, "u2", &expected_unit_values(2));
    assert!(checked > 50, "only {checked} values checked\n{}", gw.log());
    assert_eq!(
        status_count(&watch, "u2", "offline"),
        0,
        "unit 2 never went offline\n{}",
        gw.log()
    );
}

#[test]
fn an_unplugged_adapter_goes_offline_with_the_reason_and_polling_recovers_after_replug() {
    let mut sim = RtuSim::start_units(2);
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}{}",
        bus(&sim.bus_path()),
        rtu_device("u1", 1, "200ms", "200ms", UNIT_POINTS),
        rtu_device("u2", 2, "200ms", "200ms", UNIT_POINTS)
    );
    let gw = gateway(None, &body).start(dir.path());
    let watch = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/#");
    wait_until(LONG, "both online", || {
        status_count(&watch, "u1", "online") == 1 && status_count(&watch, "u2", "online") == 1
    });
    sim.unplug();
    wait_until(LONG, "both offline", || {
        status_count(&watch, "u1", "offline") == 1 && status_count(&watch, "u2", "offline") == 1
    });
    wait_until(LONG, "the log names the missing port", || {
        gw.log().contains("no such device")
    });
    sim.replug();
    wait_until(LONG, "both online again without a restart", || {
        status_count(&watch, "u1", "online") == 2 && status_count(&watch, "u2", "online") == 2
    });
    watch.clear();
    watch.wait_for_sync(
        |m| m.topic.ends_with("/u2/h0") && m.json()["value"] == json!(200),
        LONG,
    );
}

const WRITABLE_POINTS: &str = r#"
[[devices.points]]
name = "setpoint"
table = "holding"
address = 2
type = "u16"
scale = 0.1
writable = true
min = 5
max = 35
[[devices.points]]
name = "limit"
table = "holding"
address = 12
type = "f32"
word_order = "CDAB"
writable = true
[[devices.points]]
name = "relay"
table = "coil"
address = 1
type = "bool"
writable = true
[[devices.points]]
name = "flag3"
table = "holding"
address = 5
type = "bool"
bit = 3
writable = true
[[devices.points]]
name = "label"
table = "holding"
address = 20
type = "string"
length = 2
writable = true
[[devices.points]]
name = "h0"
table = "holding"
address = 0
type = "u16"
[[devices.points]]
name = "in0"
table = "input"
address = 0
type = "u16"
"#;

#[test]
fn writes_from_upstream_round_trip_and_rejected_writes_never_reach_the_bus() {
    let mut sim = RtuSim::start_units(2);
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/gw/#");
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}",
        bus(&sim.bus_path()),
        rtu_device("dev", 2, "200ms", "300ms", WRITABLE_POINTS)
    );
    let gw = gateway(Some(mosq.port), &body).start(dir.path());
    wait_until(LONG, "online upstream", || {
        status_count(&up, "dev", "online") == 1
    });
    // The gateway subscribes to its command topics once connected; a result proves it.
    let set = |point: &str, payload: &str| {
        let topic = format!("fieldbridge/gw/dev/{point}/set");
        let result = format!("{topic}/result");
        let before = up.count(|m| m.topic == result);
        publish(mosq.port, &["-q", "1", "-t", &topic, "-m", payload]);
        wait_until(LONG, &format!("a result for {point} = {payload}"), || {
            up.count(|m| m.topic == result) > before
        });
        up.messages()
            .into_iter()
            .filter(|m| m.topic == result)
            .nth(before)
            .unwrap()
            .json()
    };
    // Wait until commands are taken at all (the SUBSCRIBE may still be in flight).
    wait_until(LONG, "the command subscription", || {
        publish(
            mosq.port,
            &["-q", "1", "-t", "fieldbridge/gw/dev/nothing/set", "-m", "1"],
        );
        up.count(|m| m.topic == "fieldbridge/gw/dev/nothing/set/result") > 0
    });

    let r = set("setpoint", "{\"value\": 21.5, \"id\": \"req-1\"}");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["id"], "req-1");
    assert_eq!(sim.get(2, "holding", 2), 215, "inverse scale: 21.5 / 0.1");
    let r = set("limit", "-3.25");
    assert_eq!(r["ok"], true, "{r}");
    // -3.25f32 = 0xC0500000, CDAB: low word first
    assert_eq!(
        (sim.get(2, "holding", 12), sim.get(2, "holding", 13)),
        (0x0000, 0xC050)
    );
    assert_eq!(set("relay", "on")["ok"], true);
    assert!(sim.get_bit(2, "coils", 1));
    sim.set(2, "holding", 5, 0x00F0);
    assert_eq!(set("flag3", "true")["ok"], true);
    assert_eq!(
        sim.get(2, "holding", 5),
        0x00F8,
        "read-modify-write keeps the other bits"
    );
    assert_eq!(set("label", "\"OK\"")["ok"], true);
    assert_eq!(sim.get(2, "holding", 20), 0x4F4B);

    // The new values come back through the normal polling path.
    up.wait_for_sync(
        |m| m.topic == "fieldbridge/gw/dev/setpoint" && m.json()["value"] == json!(21.5),
        LONG,
    );
    up.wait_for_sync(
        |m| m.topic == "fieldbridge/gw/dev/limit" && m.json()["value"] == json!(-3.25),
        LONG,
    );

    let writes = sim.writes(2);
    let rejected = [
        ("h0", "5", "read-only"),
        ("in0", "5", "read-only"),
        ("setpoint", "40", "out of range"),
        ("setpoint", "21.55", "whole number of steps"),
        ("setpoint", "warm", "not a number"),
        ("relay", "2", "not a boolean"),
        ("label", "\"toolong\"", "at most 4 characters"),
        ("setpoint", "{\"val\": 1}", "\"value\" key"),
        ("nosuch", "1", "no point"),
    ];
    for (point, payload, why) in rejected {
        let r = set(point, payload);
        assert_eq!(r["ok"], false, "{point} = {payload}: {r}");
        assert!(
            r["error"].as_str().unwrap_or_default().contains(why),
            "{point} = {payload}: {r}"
        );
    }
    assert_eq!(
        sim.writes(2),
        writes,
        "a rejected command caused bus traffic\n{}",
        gw.log()
    );
    assert_eq!(
        sim.get(2, "holding", 2),
        215,
        "the rejected values were not written"
    );
    assert_eq!(sim.writes(1), 0, "nothing was ever sent to the other unit");
}

#[test]
fn scan_finds_exactly_the_units_that_answer_on_the_line() {
    let mut sim = RtuSim::start_units(3);
    sim.mute(2);
    let path = sim.bus_path();
    let out = fieldbridge([
        "scan",
        "--port",
        path.to_str().unwrap(),
        "--from",
        "1",
        "--to",
        "6",
        "--timeout",
        "150ms",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("found 2 units: 1, 3"), "{text}");
    assert!(
        text.contains("unit   1: answers (holding 0 = 100)"),
        "{text}"
    );

    let missing = fieldbridge([
        "scan",
        "--port",
        "/dev/fieldbridge-no-such-port",
        "--to",
        "2",
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no such device"));
}

#[test]
fn read_and_write_do_one_poll_and_one_validated_write_from_the_command_line() {
    let mut sim = RtuSim::start_units(2);
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}",
        bus(&sim.bus_path()),
        rtu_device("dev", 2, "1s", "300ms", WRITABLE_POINTS)
    );
    let cfg = dir.path().join("fieldbridge.toml");
    std::fs::write(&cfg, gateway(None, &body).render(&dir.path().join("data"))).unwrap();
    let c = cfg.to_str().unwrap();

    let out = fieldbridge(["read", "-c", c, "--device", "dev"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("h0        200"), "{text}");
    assert!(text.contains("in0       1200"), "{text}");

    let out = fieldbridge([
        "write", "-c", c, "--device", "dev", "--point", "setpoint", "30",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sim.get(2, "holding", 2), 300);

    let writes = sim.writes(2);
    let out = fieldbridge(["write", "-c", c, "--device", "dev", "--point", "h0", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    assert_eq!(sim.writes(2), writes);
}

#[test]
fn explain_prints_the_request_plan_of_a_profiled_device() {
    let dir = tempfile::tempdir().unwrap();
    let body = "[[buses]]\nname = \"rs485\"\nkind = \"serial\"\npath = \"/dev/ttyUSB0\"\n\
        [[devices]]\nname = \"meter\"\nkind = \"modbus_rtu\"\nbus = \"rs485\"\nprofile = \"eastron-sdm630\"\n";
    let cfg = dir.path().join("fieldbridge.toml");
    std::fs::write(&cfg, gateway(None, body).render(&dir.path().join("data"))).unwrap();
    let out = fieldbridge(["explain", "-c", cfg.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("meter (unit 1, bus rs485 (/dev/ttyUSB0), profile eastron-sdm630)"),
        "{text}"
    );
    assert!(text.contains("FC04 input        0..79"), "{text}");
}

#[test]
fn rs485_mode_on_a_port_without_support_is_logged_once_and_polling_goes_on() {
    let sim = RtuSim::start_units(1);
    let dir = tempfile::tempdir().unwrap();
    // A pty answers TIOCSRS485 with ENOTTY, like adapters whose driver lacks RS-485 support.
    let body = format!(
        "{}rs485 = true\n{}",
        bus(&sim.bus_path()),
        rtu_device("dev", 1, "200ms", "300ms", UNIT_POINTS)
    );
    let gw = gateway(None, &body).start(dir.path());
    let watch = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/#");
    watch.wait_for_sync(
        |m| m.topic.ends_with("/dev/h0") && m.json()["value"] == json!(100),
        LONG,
    );
    let log = gw.log();
    assert_eq!(
        log.matches("does not support RS-485 mode").count(),
        1,
        "{log}"
    );
}

#[test]
fn a_bus_port_the_user_may_not_open_is_reported_with_the_dialout_hint() {
    use std::os::unix::fs::PermissionsExt;
    let sim = RtuSim::start_units(1);
    let path = sim.bus_path();
    // Like a /dev/ttyUSB0 of group dialout seen by a user outside that group.
    let target = std::fs::canonicalize(&path).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(
        path.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = Proc::run(
        "setpriv (util-linux)",
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(BIN)
            .args(["scan", "--port", path.to_str().unwrap(), "--to", "1"]),
        LONG,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(err.contains("`dialout` group"), "{err}");
}

#[test]
fn scan_over_modbus_tcp_and_rtu_over_tcp_finds_the_units_that_answer() {
    let tcp = ModbusSim::start(1);
    let out = fieldbridge([
        "scan",
        "--tcp",
        &format!("127.0.0.1:{}", tcp.port),
        "--to",
        "3",
        "--timeout",
        "200ms",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("found 1 unit: 1"), "{text}");

    let rtu = RtuSim::start_tcp(&json!({"units": {"2": {"holding": {"0": 7}}, "3": {}}}));
    let out = fieldbridge([
        "scan",
        "--rtu-over-tcp",
        &rtu.addr().to_string(),
        "--to",
        "4",
        "--timeout",
        "200ms",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("found 2 units: 2, 3"), "{text}");
    assert!(text.contains("unit   2: answers (holding 0 = 7)"), "{text}");
}

#[test]
fn a_local_command_user_writes_through_the_embedded_broker_and_others_are_refused_by_the_guard() {
    let mut sim = RtuSim::start_units(2);
    let dir = tempfile::tempdir().unwrap();
    let users = format!(
        "[[broker.users]]\nname = \"op\"\npassword_hash = \"{}\"\ncommands = true\n\n\
         [[broker.users]]\nname = \"viewer\"\npassword_hash = \"{}\"\n\n",
        hash_of("op-pw"),
        hash_of("viewer-pw")
    );
    let body = format!(
        "{users}{}{}",
        bus(&sim.bus_path()),
        rtu_device("dev", 2, "200ms", "300ms", WRITABLE_POINTS)
    );
    let gw = gateway(None, &body).start(dir.path());
    let watch = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/#");
    watch.wait_for_sync(|m| m.topic.ends_with("/dev/h0"), LONG);
    let writes = sim.writes(2);
    let topic = "fieldbridge/gw/dev/setpoint/set";
    // A user without `commands` is refused by the guard: nothing reaches the gateway or the bus.
    let out = mosquitto_pub(
        gw.broker_port,
        &[
            "-u",
            "viewer",
            "-P",
            "viewer-pw",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            "30",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Not even a command user's retained command runs: the guard drops it (issue 14).
    let out = mosquitto_pub(
        gw.broker_port,
        &[
            "-u", "op", "-P", "op-pw", "-q", "1", "-r", "-t", topic, "-m", "40",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    gw.wait_log(&["broker_acl_denied", "retained_command"]);
    // The command user's write is executed and answered on the local broker.
    let out = mosquitto_pub(
        gw.broker_port,
        &[
            "-u",
            "op",
            "-P",
            "op-pw",
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            "{\"value\": 12.5, \"id\": \"local-1\"}",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let r = watch.wait_for_sync(
        |m| m.topic == "fieldbridge/gw/dev/setpoint/set/result",
        LONG,
    );
    let v = r.json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["id"], "local-1");
    assert_eq!(sim.get(2, "holding", 2), 125);
    assert_eq!(
        sim.writes(2),
        writes + 1,
        "exactly one write: neither the viewer's nor the retained one ran\n{}",
        gw.log()
    );
    assert_eq!(
        watch.count(|m| m.topic == "fieldbridge/gw/dev/setpoint/set/result"),
        1,
        "one result: the refused command was not executed"
    );
}

#[test]
fn a_retained_command_is_not_replayed_when_the_gateway_subscribes() {
    let mut sim = RtuSim::start_units(2);
    let mosq = Mosquitto::start();
    // A standing order left on the broker before the gateway connects: delivered to the new
    // subscription with the retain flag, it must not be executed (nor at every reconnect).
    publish(
        mosq.port,
        &[
            "-q",
            "1",
            "-r",
            "-t",
            "fieldbridge/gw/dev/setpoint/set",
            "-m",
            "7",
        ],
    );
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/gw/#");
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}",
        bus(&sim.bus_path()),
        rtu_device("dev", 2, "200ms", "300ms", WRITABLE_POINTS)
    );
    let gw = gateway(Some(mosq.port), &body).start(dir.path());
    wait_until(LONG, "the retained command seen and ignored", || {
        gw.log().contains("retained command ignored")
    });
    assert_eq!(sim.writes(2), 0, "the retained command reached the bus");
    assert_eq!(
        sim.get(2, "holding", 2),
        202,
        "unchanged from the simulator's map"
    );
    // A live command still works.
    publish(
        mosq.port,
        &[
            "-q",
            "1",
            "-t",
            "fieldbridge/gw/dev/setpoint/set",
            "-m",
            "8",
        ],
    );
    let r = up.wait_for_sync(
        |m| m.topic == "fieldbridge/gw/dev/setpoint/set/result",
        LONG,
    );
    assert_eq!(r.json()["ok"], true, "{}", r.text());
    assert_eq!(sim.get(2, "holding", 2), 80);
    assert_eq!(sim.writes(2), 1);
}

#[test]
fn a_unit_that_answers_again_is_back_within_ten_seconds_while_a_dead_unit_costs_one_timeout_per_five_seconds(
) {
    let mut sim = RtuSim::start_units(2);
    let dir = tempfile::tempdir().unwrap();
    // backoff_max left at its default (60 s): the schedule a field engineer gets.
    let device = |name: &str, unit: u8| {
        format!(
            "[[devices]]\nname = \"{name}\"\nkind = \"modbus_rtu\"\nbus = \"rs485\"\nunit_id = {unit}\ninterval = \"1s\"\ntimeout = \"300ms\"\n{UNIT_POINTS}\n"
        )
    };
    let body = format!(
        "{}{}{}",
        bus(&sim.bus_path()),
        device("u1", 1),
        device("u2", 2)
    );
    let gw = gateway(None, &body).start(dir.path());
    let watch = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/#");
    wait_until(LONG, "both units online", || {
        status_count(&watch, "u1", "online") == 1 && status_count(&watch, "u2", "online") == 1
    });

    sim.mute(2);
    let muted_at = std::time::Instant::now();
    let before = sim.requests(2);
    wait_until(LONG, "unit 2 offline", || {
        status_count(&watch, "u2", "offline") == 1
    });
    // Six requests to the dead unit: the failed poll (with its retry) and four probes. A
    // doubling backoff would be at 16 s by then.
    let probes = wait_for(
        Duration::from_secs(60),
        "six requests to the dead unit",
        || {
            let n = sim.requests(2) - before;
            (n >= 6).then_some(n)
        },
    );
    sim.unmute(2);
    let unmuted_at = std::time::Instant::now();
    let dead_for = unmuted_at - muted_at;
    eprintln!(
        "dead unit: {probes} requests in {:.1} s ({:.1} s per request after the first two)",
        dead_for.as_secs_f64(),
        dead_for.as_secs_f64() / (probes - 2) as f64
    );
    // At most one timeout per 5 s once offline (the first failed poll may retry once).
    assert!(
        (probes - 2) as f64 <= dead_for.as_secs_f64() / 5.0 + 1.0,
        "{probes} requests in {dead_for:?}\n{}",
        gw.log()
    );
    wait_until(
        Duration::from_secs(10),
        "unit 2 back online within 10 s of answering again",
        || status_count(&watch, "u2", "online") == 2,
    );
    eprintln!(
        "unit 2 back online {:.1} s after it answered again",
        unmuted_at.elapsed().as_secs_f64()
    );
    // The other unit was polled throughout.
    assert!(assert_all_values(&watch, "u1", &expected_unit_values(1)) > 10);
}

/// Four units on one line: 1 healthy, 2 answering with bad CRCs, 3 with garbage, 4 as unit 104.
fn faulty_bus() -> RtuSim {
    let mut sim = RtuSim::start_units(4);
    sim.fault(2, "crc");
    sim.fault(3, "garbage");
    sim.fault(4, "wrong-unit");
    sim
}

#[test]
fn bad_crc_wrong_unit_garbage_and_timeouts_are_named_apart_in_counters_log_and_status() {
    let sim = faulty_bus();
    let dir = tempfile::tempdir().unwrap();
    let mut body = bus(&sim.bus_path());
    for u in 1..=4u8 {
        body.push_str(&rtu_device(
            &format!("u{u}"),
            u,
            "300ms",
            "200ms",
            UNIT_POINTS,
        ));
    }
    // A unit nobody has: the one that really times out.
    body.push_str(&rtu_device("ghost", 9, "300ms", "200ms", UNIT_POINTS));
    let gw = gateway(None, &body).start(dir.path());
    let watch = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/#");
    let unit = |m: &Message, u: &str, field: &str| {
        m.json()["lines"]["rs485"]["units"][u][field]
            .as_u64()
            .unwrap_or(0)
    };
    let stats = watch.wait_for_sync(
        |m| {
            m.topic == "fieldbridge/gw/stats"
                && unit(m, "2", "bad_crc") >= 3
                && unit(m, "3", "garbage") >= 3
                && unit(m, "4", "wrong_unit") >= 3
                && unit(m, "9", "timeouts") >= 3
        },
        LONG,
    );
    let line = &stats.json()["lines"]["rs485"];
    eprintln!("{line:#}");
    // Each fault under its own name, per unit and per line; none of them is a timeout.
    for (u, field) in [("2", "bad_crc"), ("3", "garbage"), ("4", "wrong_unit")] {
        let kinds = ["timeouts", "bad_crc", "garbage", "wrong_unit"];
        for other in kinds.iter().filter(|k| **k != field) {
            assert_eq!(unit(&stats, u, other), 0, "unit {u} {other}: {line:#}");
        }
        assert_eq!(
            line["units"][u]["devices"],
            json!([format!("u{}", u)]),
            "{line:#}"
        );
    }
    for kind in ["bad_crc", "garbage", "wrong_unit"] {
        assert!(line[kind].as_u64() >= Some(3), "{kind}: {line:#}");
    }
    assert_eq!(
        line["bad_answers"].as_u64(),
        Some(
            line["bad_crc"].as_u64().unwrap()
                + line["garbage"].as_u64().unwrap()
                + line["wrong_unit"].as_u64().unwrap()
        ),
        "{line:#}"
    );
    for kind in ["bad_crc", "garbage", "wrong_unit", "timeouts"] {
        assert_eq!(unit(&stats, "1", kind), 0, "the healthy unit: {line:#}");
    }
    assert!(assert_all_values(&watch, "u1", &expected_unit_values(1)) > 0);

    // The log names each fault with the device and unit id, once per unit and kind per 30 s,
    // and tokio-modbus's own lines about the same bytes are gone.
    gw.wait_log(&["modbus_wrong_unit"]);
    let log = gw.log();
    for (event, device, unit_id) in [
        ("modbus_bad_crc", "u2", 2),
        ("modbus_garbage", "u3", 3),
        ("modbus_wrong_unit", "u4", 4),
    ] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("event=\"{event}\"")))
            .collect();
        assert_eq!(lines.len(), 1, "{event} rate-limited:\n{log}");
        assert!(
            lines[0].contains(&format!("device={device}"))
                && lines[0].contains(&format!("unit_id={unit_id}"))
                && lines[0].contains("WARN"),
            "{}",
            lines[0]
        );
    }
    assert!(log.contains("answers, but with bad CRCs (check baud, parity, termination)"));
    assert!(log.contains("a reply came from unit 104 instead"));
    assert!(
        !log.contains("Failed to decode") && !log.contains("tokio_modbus"),
        "{log}"
    );

    // fieldbridge status shows the units with their faults.
    let out = fieldbridge([
        "status",
        "--timeout",
        "5s",
        "--config",
        gw.config.to_str().unwrap(),
    ]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let row = |u: &str| {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("unit {u} (")))
            .unwrap_or_else(|| panic!("no row for unit {u}:\n{report}"))
            .to_string()
    };
    assert!(
        row("2").contains("bad CRC") && row("2").ends_with("check baud, parity, termination"),
        "{report}"
    );
    assert!(row("3").contains("0 timeouts"), "{report}");
    assert!(row("4").contains("check unit ids"), "{report}");
    assert!(row("1").contains("ms per answer"), "{report}");
    drop(sim);
}

#[test]
fn scan_names_units_that_answer_with_bad_crcs_garbage_or_another_unit_id() {
    let sim = faulty_bus();
    let path = sim.bus_path();
    let out = fieldbridge([
        "scan",
        "--port",
        path.to_str().unwrap(),
        "--from",
        "1",
        "--to",
        "6",
        "--timeout",
        "150ms",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("unit   1: answers (holding 0 = 100)"),
        "{text}"
    );
    assert!(
        text.contains("unit   2: answers, but with bad CRCs — check baud, parity, termination"),
        "{text}"
    );
    assert!(
        text.contains("unit   3: answers with garbage (7 bytes that are no Modbus answer) — check baud, parity, wiring"),
        "{text}"
    );
    assert!(
        text.contains("unit   4: a reply came from unit 104 instead"),
        "{text}"
    );
    assert!(
        !text.contains("unit   5:") && !text.contains("unit   6:"),
        "{text}"
    );
    assert!(
        text.contains("3 units answer with faults (not counted as found): 2, 3, 4"),
        "{text}"
    );
    assert!(text.contains("found 1 unit: 1"), "{text}");
    // scan says it once, in its own words: the bus's log lines are for configured devices.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("modbus_"), "{err}");
}

#[test]
fn a_slow_unit_that_makes_its_line_miss_the_intervals_is_named_in_a_line_overrun_warning() {
    let mut sim = RtuSim::start_units(4);
    let dir = tempfile::tempdir().unwrap();
    let mut body = bus(&sim.bus_path());
    for u in 1..=4u8 {
        body.push_str(&rtu_device(
            &format!("u{u}"),
            u,
            "500ms",
            "300ms",
            UNIT_POINTS,
        ));
    }
    let gw = gateway(None, &body).start(dir.path());
    let watch = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/#");
    wait_until(LONG, "all four units online", || {
        (1..=4).all(|u| status_count(&watch, &format!("u{u}"), "online") == 1)
    });
    // Unit 4 answers every request, 250 ms late (timeout 300 ms): three requests per poll make
    // it take more than its 500 ms interval by itself.
    sim.delay(4, Duration::from_millis(250));
    let line = |m: &Message| m.json()["lines"]["rs485"].clone();
    let stats = watch.wait_for_sync(
        |m| {
            m.topic == "fieldbridge/gw/stats"
                && line(m)["overruns"].as_u64() >= Some(1)
                && line(m)["units"]["4"]["response"]["mean_ms"].as_f64() >= Some(200.0)
        },
        LONG,
    );
    let l = line(&stats);
    eprintln!(
        "busy {}%, unit 4 {} ms per answer, unit 1 {} ms",
        l["busy_pct"],
        l["units"]["4"]["response"]["mean_ms"],
        l["units"]["1"]["response"]["mean_ms"]
    );
    // The slow unit's polls end after the next is due; the line is busy most of the time.
    assert!(l["units"]["4"]["late_polls"].as_u64() >= Some(2), "{l:#}");
    assert!(l["busy_pct"].as_f64() >= Some(50.0), "{l:#}");
    assert!(l["busy_ms"].as_u64() > Some(0), "{l:#}");
    assert!(
        l["units"]["1"]["response"]["mean_ms"].as_f64() < Some(100.0),
        "{l:#}"
    );
    // The warning names the slow unit first, with its response time, and comes once per minute.
    let warning = gw.wait_log(&["event=\"line_overrun\""]);
    assert!(
        warning.contains("WARN") && warning.contains("bus=rs485"),
        "{warning}"
    );
    let busiest = warning
        .split("busiest: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{warning}"));
    assert!(busiest.starts_with("unit 4 (u4): "), "{warning}");
    assert!(busiest.contains("ms per answer"), "{warning}");
    wait_until(LONG, "a second overrun window", || {
        watch
            .messages()
            .iter()
            .any(|m| m.topic == "fieldbridge/gw/stats" && line(m)["overruns"].as_u64() >= Some(2))
    });
    assert_eq!(
        gw.log().matches("event=\"line_overrun\"").count(),
        1,
        "rate-limited\n{}",
        gw.log()
    );
    // fieldbridge status shows the busy line and each unit's response time.
    let out = fieldbridge([
        "status",
        "--timeout",
        "5s",
        "--config",
        gw.config.to_str().unwrap(),
    ]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("% of the time, overrun in"), "{report}");
    let slow = report
        .lines()
        .find(|l| l.trim_start().starts_with("unit 4 (u4)"))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(slow.contains("ms per answer"), "{report}");
}
