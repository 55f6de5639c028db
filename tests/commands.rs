//! Commands (`…/set`) as an operator sends them, through mosquitto upstream or the embedded
//! broker, to a pymodbus RTU unit on a socat pty: what a bad payload echoes, what the retain flag
//! and empty payloads do, a command the gateway itself passes on, and commands sent while the
//! gateway is stopped (persistent session, `command_max_age`), and a write still running at
//! shutdown (it shares one stop budget with the uplink).

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::gateway::{hash_of, Gateway, GatewayConfig};
use support::modbus::RtuSim;
use support::mosquitto::Mosquitto;
use support::mqtt::{publish, MqttWatcher};
use support::{wait_until, LONG};

const SET: &str = "fieldbridge/gw/dev/setpoint/set";
const RESULT: &str = "fieldbridge/gw/dev/setpoint/set/result";
/// Holding register 2 of unit 2 in the simulator's `--units-count` map.
const INITIAL: u16 = 202;

/// Unit 2 of `sim` as device `dev` with one writable u16 point `setpoint` (holding 2), plus
/// `extra` tables; upstream at `upstream` (keep-alive 2 s) when given.
fn config(sim: &RtuSim, upstream: Option<u16>, extra: &str) -> GatewayConfig {
    let mut c = GatewayConfig::standard();
    if let Some(port) = upstream {
        c = c.upstream(port);
        if let Some(up) = c.upstream.as_mut() {
            up.keep_alive = "2s";
        }
    }
    c.with(format!(
        "[[buses]]\nname = \"rs485\"\nkind = \"serial\"\npath = \"{}\"\nbaud = 9600\nrequest_gap = \"2ms\"\n\n\
         [[devices]]\nname = \"dev\"\nkind = \"modbus_rtu\"\nbus = \"rs485\"\nunit_id = 2\ninterval = \"200ms\"\ntimeout = \"300ms\"\nbackoff_max = \"2s\"\n\n\
         [[devices.points]]\nname = \"setpoint\"\ntable = \"holding\"\naddress = 2\ntype = \"u16\"\nwritable = true\n\n{extra}",
        sim.bus_path().display()
    ))
}

/// Waits until the gateway takes commands from upstream (its SUBSCRIBE may still be in flight
/// after it is online): a command to a point that does not exist gets a result.
fn wait_for_the_command_subscription(mosq: &Mosquitto, up: &MqttWatcher) {
    let probe = "fieldbridge/gw/dev/nothing/set";
    wait_until(LONG, "the command subscription", || {
        publish(mosq.port, &["-q", "1", "-t", probe, "-m", "1"]);
        up.count(|m| m.topic == format!("{probe}/result")) > 0
    });
}

fn results(w: &MqttWatcher) -> Vec<serde_json::Value> {
    w.messages()
        .iter()
        .filter(|m| m.topic == RESULT)
        .map(|m| m.json())
        .collect()
}

fn result_with_id(w: &MqttWatcher, id: &str) -> serde_json::Value {
    w.wait_for_sync(|m| m.topic == RESULT && m.json()["id"] == id, LONG)
        .json()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn start_upstream_gateway(
    sim: &RtuSim,
    mosq: &Mosquitto,
    dir: &std::path::Path,
) -> (GatewayConfig, Gateway, MqttWatcher) {
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/gw/#");
    let spec = config(sim, Some(mosq.port), "");
    let gw = spec.start(dir);
    wait_for_the_command_subscription(mosq, &up);
    (spec, gw, up)
}

#[test]
fn a_bad_commands_payload_is_quoted_at_most_two_hundred_bytes_in_its_result_and_the_log() {
    let mut sim = RtuSim::start_units(2);
    let mosq = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (_spec, gw, up) = start_upstream_gateway(&sim, &mosq, dir.path());
    let payload = dir.path().join("huge");
    std::fs::write(&payload, "x".repeat(300_000)).unwrap();
    publish(
        mosq.port,
        &["-q", "1", "-t", SET, "-f", payload.to_str().unwrap()],
    );
    let r = up.wait_for_sync(|m| m.topic == RESULT, LONG);
    assert!(
        r.payload.len() < 600,
        "{} bytes: {}",
        r.payload.len(),
        r.text()
    );
    let v = r.json();
    assert_eq!(v["ok"], false, "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("(300000 bytes in all)"), "{error}");
    assert!(error.contains("is not a number"), "{error}");
    gw.wait_log(&["write_failed", "(300000 bytes in all)"]);
    let longest = gw.log().lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2_000, "a log line of {longest} bytes");
    assert_eq!(sim.writes(2), 0);
}

#[test]
fn a_retained_command_sent_live_runs_once_and_clearing_it_with_an_empty_payload_is_silent() {
    let mut sim = RtuSim::start_units(2);
    let mosq = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (_spec, gw, up) = start_upstream_gateway(&sim, &mosq, dir.path());
    // Delivered live (MQTT clears the retain flag towards an existing subscription): a command.
    publish(
        mosq.port,
        &[
            "-q",
            "1",
            "-r",
            "-t",
            SET,
            "-m",
            r#"{"value": 7, "id": "r1"}"#,
        ],
    );
    assert_eq!(result_with_id(&up, "r1")["ok"], true);
    assert_eq!(sim.get(2, "holding", 2), 7);
    // Cleared as the log advises: an empty retained message, delivered live without the flag.
    publish(mosq.port, &["-q", "1", "-r", "-t", SET, "-n"]);
    // A command after it: once its result is there, the empty one has been dealt with.
    publish(
        mosq.port,
        &["-q", "1", "-t", SET, "-m", r#"{"value": 9, "id": "r2"}"#],
    );
    assert_eq!(result_with_id(&up, "r2")["ok"], true);
    let all = results(&up);
    assert_eq!(
        all.len(),
        2,
        "one result per command, none for the empty payload: {all:?}"
    );
    assert_eq!(sim.get(2, "holding", 2), 9);
    assert_eq!(sim.writes(2), 2, "{}", gw.log());
}

#[test]
fn a_local_command_that_a_forward_rule_sends_upstream_runs_once() {
    let mut sim = RtuSim::start_units(2);
    let mosq = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[broker.users]]\nname = \"op\"\npassword_hash = \"{}\"\ncommands = true\n\n\
         [[forward]]\nfilter = \"fieldbridge/gw/+/+/set\"\n",
        hash_of("op-pw")
    );
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/gw/#");
    let gw = config(&sim, Some(mosq.port), &extra).start(dir.path());
    wait_for_the_command_subscription(&mosq, &up);
    let local = r#"{"value": 11, "id": "local-1"}"#;
    publish(
        gw.broker_port,
        &["-u", "op", "-P", "op-pw", "-q", "1", "-t", SET, "-m", local],
    );
    // The forward rule passes the command upstream, where the gateway's own command subscription
    // receives it again.
    up.wait_for_sync(|m| m.topic == SET && m.text() == local, LONG);
    assert_eq!(result_with_id(&up, "local-1")["ok"], true);
    // An upstream command published after the copy reached mosquitto is delivered to the gateway
    // after that copy: once its result is there, the copy has been dealt with.
    publish(
        mosq.port,
        &["-q", "1", "-t", SET, "-m", r#"{"value": 12, "id": "up-1"}"#],
    );
    assert_eq!(result_with_id(&up, "up-1")["ok"], true);
    let local_results = results(&up)
        .into_iter()
        .filter(|r| r["id"] == "local-1")
        .count();
    assert_eq!(local_results, 1, "{}", gw.log());
    assert_eq!(sim.writes(2), 2, "11 once, then 12\n{}", gw.log());
    assert_eq!(sim.get(2, "holding", 2), 12);
}

#[test]
fn commands_sent_while_the_gateway_is_stopped_run_once_after_it_starts_and_stale_ones_are_refused()
{
    let mut sim = RtuSim::start_units(2);
    let mosq = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (spec, mut gw, up) = start_upstream_gateway(&sim, &mosq, dir.path());
    assert!(gw.terminate().success(), "{}", gw.log());
    drop(gw);
    assert_eq!(sim.get(2, "holding", 2), INITIAL);

    let fresh = json!({"value": 33, "id": "fresh", "ts": now_ms()}).to_string();
    let stale = json!({"value": 44, "id": "stale", "ts": now_ms() - 3_600_000}).to_string();
    publish(mosq.port, &["-q", "1", "-t", SET, "-m", &fresh]);
    publish(mosq.port, &["-q", "1", "-t", SET, "-m", &stale]);

    let gw = spec.start(dir.path());
    let s = result_with_id(&up, "stale");
    assert_eq!(s["ok"], false, "{s}");
    let error = s["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("sent 1h"), "{error}");
    assert!(
        error.ends_with("ago, older than command_max_age 5m; not executed"),
        "{error}"
    );
    let f = result_with_id(&up, "fresh");
    assert_eq!(f["ok"], true, "{f}");
    assert_eq!(sim.get(2, "holding", 2), 33, "{}", gw.log());
    // The stale command came after the fresh one: by its result, every duplicate would be done.
    let fresh_results = results(&up)
        .into_iter()
        .filter(|r| r["id"] == "fresh")
        .count();
    assert_eq!(fresh_results, 1);
    assert_eq!(sim.writes(2), 1, "exactly one write\n{}", gw.log());
}

#[test]
fn a_write_still_running_at_shutdown_leaves_the_uplink_only_what_is_left_of_one_stop_budget() {
    use std::time::{Duration, Instant};
    use support::relay::{Mode, Relay};

    let mut sim = RtuSim::start_units(2);
    let mosq = Mosquitto::start();
    let relay = Relay::start(mosq.addr());
    let dir = tempfile::tempdir().unwrap();
    let op = format!(
        "[[broker.users]]\nname = \"op\"\npassword_hash = \"{}\"\ncommands = true\n",
        hash_of("op-pw")
    );
    let mut spec = config(&sim, Some(relay.port()), &op);
    // A write that outlasts the stop budget (a unit that never answers, a 20 s timeout, no poll
    // after the first), and an upstream link the keep-alive does not declare dead while it is
    // black-holed: both waits are real.
    spec.body = spec
        .body
        .replace("timeout = \"300ms\"", "timeout = \"20s\"")
        .replace("interval = \"200ms\"", "interval = \"1h\"");
    spec.shutdown_timeout = Some("6s");
    if let Some(up) = spec.upstream.as_mut() {
        up.keep_alive = "60s";
    }
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/gw/#");
    let mut gw = spec.start(dir.path());
    up.wait_for_sync(|m| m.topic == "fieldbridge/gw/dev/setpoint", LONG);

    // The stats snapshots go on being sent into the black hole: in flight, never acknowledged.
    relay.set_mode(Mode::BlackHole);
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/stats");
    local.wait_for_sync(
        |m| {
            let s = m.json();
            let (sent, acked) = (&s["upstream"]["sent"], &s["upstream"]["acked"]);
            sent.as_u64().unwrap_or(0) >= acked.as_u64().unwrap_or(0) + 3
        },
        LONG,
    );
    sim.mute(2);
    let late = r#"{"value": 7, "id": "late"}"#;
    publish(
        gw.broker_port,
        &["-u", "op", "-P", "op-pw", "-q", "1", "-t", SET, "-m", late],
    );
    wait_until(LONG, "the write request at the unit", || sim.writes(2) == 1);

    let t = Instant::now();
    let status = gw.terminate_within(Duration::from_secs(30));
    let took = t.elapsed();
    let log = gw.log();
    // The write takes the whole budget (6 s); the uplink gets what is left of it, not 6 s more,
    // so the stop ends within the hard deadline (budget + 5 s) and cleanly.
    assert!(status.success(), "exit {status:?} after {took:?}\n{log}");
    assert!(!log.contains("shutdown_abandoned"), "{log}");
    assert!(
        log.contains("was abandoned"),
        "the write was not cut off:\n{log}"
    );
    assert!(
        took < Duration::from_secs(6 + 4),
        "the stop took {took:?}\n{log}"
    );
}
