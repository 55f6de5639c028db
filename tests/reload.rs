//! Reload (issue 17): `systemctl reload` sends SIGHUP; the gateway reads its config file again
//! and applies the difference, or refuses the file and keeps running on the old config. Real
//! peers: the pymodbus simulator as every device, mosquitto upstream, MQTT clients on the
//! embedded broker.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::gateway::{hash_of, split_id, Gateway, GatewayConfig, SimDevice};
use support::modbus::ModbusSim;
use support::mosquitto::Mosquitto;
use support::mqtt::{mosquitto_pub, Message, MqttWatcher};
use support::wait_until;

const WAIT: Duration = Duration::from_secs(30);

const COUNTER: &str = r#"
[[devices.points]]
name = "counter"
table = "holding"
address = 20
type = "u16"
"#;

fn device(sim: &ModbusSim, name: &str, interval: &'static str) -> SimDevice {
    SimDevice::new(sim.addr().port())
        .name(name)
        .interval(interval)
        .points(COUNTER)
}

fn user(name: &str, hash: &str) -> String {
    format!("\n[[broker.users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\n")
}

/// A reading of device `dev` (any gateway id).
fn reading_of(m: &Message, dev: &str) -> bool {
    m.topic.ends_with(&format!("/{dev}/counter")) && m.payload.first() == Some(&b'{')
}

/// The reading timestamps (ms) of `dev`, in arrival order.
fn stamps(msgs: &[Message], dev: &str) -> Vec<i64> {
    msgs.iter()
        .filter(|m| reading_of(m, dev))
        .filter_map(|m| m.json()["ts"].as_i64())
        .collect()
}

/// Every reading id upstream got exactly once, and none is missing: the sequence of the one
/// boot runs from 0 to its highest without a gap (ids are `<boot>-<seq>`, one sequence for all
/// devices, each reading one id).
fn assert_count_exact(msgs: &[Message]) {
    let mut seen: BTreeMap<String, BTreeMap<u64, usize>> = BTreeMap::new();
    for m in msgs
        .iter()
        .filter(|m| m.topic.ends_with("/counter") && m.payload.first() == Some(&b'{'))
    {
        let id = m.json()["id"]
            .as_str()
            .expect("reading has an id")
            .to_string();
        let (boot, seq) = split_id(&id);
        *seen.entry(boot).or_default().entry(seq).or_default() += 1;
    }
    assert_eq!(seen.len(), 1, "one boot: {:?}", seen.keys());
    let seqs = seen.values().next().unwrap();
    let dups: Vec<_> = seqs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated ids: {dups:?}");
    let max = *seqs.keys().next_back().unwrap();
    let missing: Vec<u64> = (0..=max).filter(|s| !seqs.contains_key(s)).collect();
    assert!(missing.is_empty(), "ids lost upstream: {missing:?}");
}

/// The largest gap between consecutive readings, in ms.
fn largest_gap(ts: &[i64]) -> i64 {
    ts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
}

/// Connections the gateway made to mosquitto (its client id starts with "fieldbridge-").
fn upstream_connections(m: &Mosquitto) -> usize {
    m.log()
        .lines()
        .filter(|l| l.contains("New client connected") && l.contains(" as fieldbridge-"))
        .count()
}

fn alive(gw: &mut Gateway) {
    if let Some(status) = gw.try_wait() {
        panic!("the gateway exited ({status}):\n{}", gw.log());
    }
}

/// Waits until `dev` has `more` readings upstream beyond what it has now.
fn wait_readings(up: &MqttWatcher, dev: &str, more: usize) {
    let now = up.count(|m| reading_of(m, dev));
    wait_until(
        WAIT,
        &format!("{more} more readings of {dev} upstream"),
        || up.count(|m| reading_of(m, dev)) >= now + more,
    );
}

#[test]
fn a_reload_restarts_only_what_changed_and_keeps_clients_upstream_and_cadence() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let alice = user("alice", &hash_of("alice-pw"));
    let bob = user("bob", &hash_of("bob-pw"));
    let before = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(device(&sim, "keep", "1s"))
        .with(device(&sim, "gone", "1s"))
        .with(device(&sim, "slow", "2s"));
    let mut before = before;
    before.broker = alice.clone();
    let mut after = GatewayConfig {
        body: String::new(),
        ..before.clone()
    }
    .with(device(&sim, "keep", "1s"))
    .with(device(&sim, "slow", "500ms"))
    .with(device(&sim, "fresh", "1s"));
    after.broker = format!("{alice}{bob}");

    let mut gw = before.start_in_temp();
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/#");
    wait_readings(&up, "keep", 3);
    wait_readings(&up, "gone", 1);
    wait_until(WAIT, "the removed device's status upstream", || {
        up.count(|m| m.topic == "fieldbridge/gw/gone/status" && m.text() == "online") > 0
    });
    let bob_before = mosquitto_pub(
        gw.broker_port,
        &["-u", "bob", "-P", "bob-pw", "-t", "x/y", "-m", "1"],
    );
    assert!(
        !bob_before.status.success(),
        "bob is not a user before the reload"
    );
    let connections = upstream_connections(&mosq);
    assert_eq!(connections, 1, "one upstream connection:\n{}", mosq.log());

    gw.reload_with(&after.render(&gw.dir.join("data")));
    let line = gw.wait_log(&["config_reloaded"]);
    for part in [
        "devices_added=1",
        "devices_removed=1",
        "devices_restarted=1",
        "devices_unchanged=1",
        "broker_rights_changed=true",
        "upstream_restarted=false",
    ] {
        assert!(line.contains(part), "{part} in: {line}");
    }
    alive(&mut gw);

    // The new device publishes, the restarted one at its new interval, the others go on.
    wait_readings(&up, "fresh", 3);
    wait_readings(&up, "slow", 4);
    wait_readings(&up, "keep", 4);
    let local_keep = local.count(|m| reading_of(m, "keep"));
    wait_readings(&up, "keep", 2);
    wait_until(WAIT, "the local client to keep receiving", || {
        local.count(|m| reading_of(m, "keep")) > local_keep
    });
    alive(&mut gw);

    // The new user logs in; the connected local client never reconnected.
    let bob_after = mosquitto_pub(
        gw.broker_port,
        &["-u", "bob", "-P", "bob-pw", "-t", "x/y", "-m", "1"],
    );
    assert!(
        bob_after.status.success(),
        "bob logs in after the reload: {bob_after:?}"
    );
    assert_eq!(
        local.subscriptions(),
        1,
        "the local client stayed connected"
    );
    // The upstream connection was not restarted.
    assert_eq!(
        upstream_connections(&mosq),
        connections,
        "no new upstream connection:\n{}",
        mosq.log()
    );

    // Unchanged cadence: no gap over 1.5 intervals across the reload.
    let msgs = up.messages();
    let keep = stamps(&msgs, "keep");
    assert!(
        largest_gap(&keep) <= 1500,
        "keep's largest gap {} ms over its 1 s interval: {keep:?}",
        largest_gap(&keep)
    );
    let slow = stamps(&msgs, "slow");
    let last = &slow[slow.len() - 3..];
    assert!(
        largest_gap(last) <= 750,
        "slow polls at its new 500 ms interval: {slow:?}"
    );
    let gone = stamps(&msgs, "gone").len();

    // The removed device's retained status is cleared, upstream and locally.
    wait_until(
        WAIT,
        "an empty status of the removed device upstream",
        || up.count(|m| m.topic == "fieldbridge/gw/gone/status" && m.payload.is_empty()) > 0,
    );
    for (name, port) in [("upstream", mosq.port), ("local", gw.broker_port)] {
        let fresh = MqttWatcher::connect(port, "fieldbridge/gw/+/status");
        wait_until(WAIT, &format!("retained statuses {name}"), || {
            fresh.count(|m| m.topic == "fieldbridge/gw/fresh/status") > 0
                && fresh.count(|m| m.topic == "fieldbridge/gw/keep/status") > 0
        });
        assert_eq!(
            fresh.count(|m| m.topic == "fieldbridge/gw/gone/status"),
            0,
            "no retained status of the removed device {name}: {:?}",
            fresh.messages()
        );
    }
    assert_eq!(
        stamps(&up.messages(), "gone").len(),
        gone,
        "the removed device is no longer polled"
    );

    // Count-exact by id once the gateway stopped cleanly (everything acked upstream).
    let status = gw.terminate();
    assert!(status.success(), "clean exit: {status}\n{}", gw.log());
    wait_until(WAIT, "the last readings upstream", || {
        let msgs = up.messages();
        let n = msgs
            .iter()
            .filter(|m| m.topic.ends_with("/counter"))
            .count();
        n > 0 && gw.log().contains("stopped")
    });
    assert_count_exact(&up.messages());
}

#[test]
fn a_broken_file_is_refused_with_every_error_and_the_old_config_keeps_running() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let cfg = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(device(&sim, "keep", "500ms"));
    let mut gw = cfg.start_in_temp();
    wait_readings(&up, "keep", 2);

    // Two problems: a bad interval and an unknown key, each named by line and key.
    let good = gw.config_text();
    let broken = good
        .replace("interval = \"500ms\"", "interval = \"soon\"")
        .replace("unit_id = 1", "unit_id = 1\nspeed = 9");
    assert_ne!(broken, good);
    gw.reload_with(&broken);
    let file = gw.config.display().to_string();
    let summary = gw.wait_log(&["config_reload_refused", "problems=2"]);
    assert!(summary.contains("old one"), "{summary}");
    let log = gw.log();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("config_reload_refused") && l.contains(&format!("{file}:")))
        .collect();
    assert_eq!(problems.len(), 2, "one line per problem:\n{log}");
    assert!(
        problems
            .iter()
            .any(|l| l.contains("key 'devices[0].interval'")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|l| l.contains("speed")), "{problems:?}");

    // Still running on the old config: readings go on at the old cadence.
    alive(&mut gw);
    wait_readings(&up, "keep", 4);
    alive(&mut gw);
    let keep = stamps(&up.messages(), "keep");
    assert!(
        largest_gap(&keep) <= 750,
        "keep's largest gap {} ms over its 500 ms interval: {keep:?}",
        largest_gap(&keep)
    );
    let status = gw.terminate();
    assert!(status.success(), "exit code unaffected: {status}");
    assert_count_exact(&up.messages());
}

#[test]
fn a_changed_gateway_id_or_data_dir_is_refused_and_the_old_config_keeps_running() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let cfg = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(device(&sim, "keep", "500ms"));
    let mut gw = cfg.start_in_temp();
    wait_readings(&up, "keep", 2);

    let good = gw.config_text();
    let data = gw.dir.join("data").display().to_string();
    let other = gw.dir.join("elsewhere").display().to_string();
    for (edit, key) in [
        (good.replace("id = \"gw\"", "id = \"gw2\""), "gateway.id"),
        (good.replace(&data, &other), "gateway.data_dir"),
    ] {
        assert_ne!(edit, good);
        let before = gw.log().matches("config_reload_refused").count();
        gw.reload_with(&edit);
        wait_until(WAIT, &format!("the refusal of {key}"), || {
            gw.log().matches("config_reload_refused").count() > before
                && gw.log().contains(&format!("key '{key}'"))
        });
        assert!(gw.log().contains("restart"), "{}", gw.log());
        alive(&mut gw);
        wait_readings(&up, "keep", 2);
    }
    assert_eq!(
        up.count(|m| m.topic.starts_with("fieldbridge/gw2/")),
        0,
        "nothing under the refused id"
    );
    assert!(
        !gw.dir.join("elsewhere").exists(),
        "no outbox in the refused data_dir"
    );
    let status = gw.terminate();
    assert!(status.success(), "exit code unaffected: {status}");
}

#[test]
fn a_reload_disconnects_only_the_client_whose_own_rights_changed() {
    let sim = ModbusSim::start(1);
    let (alice_hash, carol_hash) = (hash_of("alice-pw"), hash_of("carol-pw"));
    let users = |alice_subscribe: &str| {
        format!(
            "{}subscribe = [\"{alice_subscribe}\"]\n{}",
            user("alice", &alice_hash),
            user("carol", &carol_hash)
        )
    };
    let mut cfg = GatewayConfig::standard().with(device(&sim, "keep", "200ms"));
    cfg.broker = users("#");
    let mut gw = cfg.start_in_temp();
    let sub = |name: &str, pw: &str| {
        let c = support::mqtt::mosquitto_sub(
            gw.broker_port,
            &["-u", name, "-P", pw, "-i", name, "-t", "fieldbridge/#"],
        );
        assert_eq!(c.subscribed(), vec![0], "{name} subscribed");
        c
    };
    let alice = sub("alice", "alice-pw");
    let carol = sub("carol", "carol-pw");
    let connacks = |c: &support::mqtt::MqttClient| {
        c.lines()
            .iter()
            .filter(|l| l.contains("received CONNACK"))
            .count()
    };

    cfg.broker = users("fieldbridge/#");
    gw.reload_with(&cfg.render(&gw.dir.join("data")));
    gw.wait_log(&["config_reloaded", "broker_rights_changed=true"]);
    gw.wait_log(&["broker_client_rights_changed", "user=alice"]);
    wait_until(WAIT, "alice to be disconnected and log in again", || {
        connacks(&alice) >= 2
    });
    // Carol's rights did not change: one connection, still receiving.
    let received = carol.messages().len();
    wait_until(WAIT, "carol to keep receiving", || {
        carol.messages().len() > received + 3
    });
    assert_eq!(
        connacks(&carol),
        1,
        "carol never reconnected: {:?}",
        carol.lines()
    );
    assert!(
        !gw.log()
            .lines()
            .any(|l| l.contains("broker_client_rights_changed") && l.contains("user=carol")),
        "{}",
        gw.log()
    );
    alive(&mut gw);
}

#[test]
fn a_changed_upstream_section_restarts_only_the_upstream_connection_and_loses_nothing() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let mut cfg = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(device(&sim, "keep", "200ms"));
    let mut gw = cfg.start_in_temp();
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/#");
    wait_readings(&up, "keep", 3);
    assert_eq!(upstream_connections(&mosq), 1);

    cfg.upstream.as_mut().unwrap().keep_alive = "2s";
    gw.reload_with(&cfg.render(&gw.dir.join("data")));
    gw.wait_log(&[
        "config_reloaded",
        "upstream_restarted=true",
        "devices_unchanged=1",
    ]);
    wait_until(WAIT, "the new upstream connection", || {
        upstream_connections(&mosq) == 2
    });
    wait_readings(&up, "keep", 5);
    alive(&mut gw);
    assert_eq!(local.subscriptions(), 1, "local clients are not touched");

    let status = gw.terminate();
    assert!(status.success(), "{status}");
    // At least once across the new connection: nothing lost (a copy of a message in flight at
    // the switch is allowed by the delivery contract).
    let mut seqs: Vec<u64> = up
        .messages()
        .iter()
        .filter(|m| reading_of(m, "keep"))
        .map(|m| split_id(m.json()["id"].as_str().unwrap()).1)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let max = *seqs.last().unwrap();
    assert_eq!(seqs.len() as u64, max + 1, "ids lost upstream: {seqs:?}");
}
