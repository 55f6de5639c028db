//! End to end against real peers: pymodbus plays the Modbus TCP device, mosquitto the upstream
//! broker, and the real `fieldbridge` binary runs in between.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use support::certs::{make_certs, LOCALHOST_SAN};
use support::gateway::{ids_seen, is_reading, split_id, GatewayConfig, SimDevice};
use support::modbus::ModbusSim;
use support::mosquitto::Mosquitto;
use support::mqtt::{mosquitto_pub_lines, mosquitto_sub, Message, MqttWatcher};
use support::process::text;
use support::relay::{Mode, Relay};
use support::{free_port, wait_for, wait_until};

const LONG: Duration = Duration::from_secs(30);

/// Every sequence number 0..=upto of `boot` was received upstream (the gateway numbers its
/// messages without gaps, so a missing number is a lost message).
fn has_all(w: &MqttWatcher, boot: &str, upto: u64) -> bool {
    ids_seen(&w.messages())
        .get(boot)
        .is_some_and(|seqs| (0..=upto).all(|s| seqs.contains_key(&s)))
}

fn duplicates(w: &MqttWatcher) -> usize {
    ids_seen(&w.messages())
        .values()
        .flat_map(|s| s.values())
        .map(|n| n - 1)
        .sum()
}

/// The newest (boot, seq) the local broker has shown.
fn newest_local(local: &MqttWatcher) -> Option<(String, u64)> {
    local
        .messages()
        .iter()
        .rfind(|m| is_reading(m))
        .map(|m| split_id(m.json()["id"].as_str().unwrap()))
}

fn value_of(w: &MqttWatcher, point: &str) -> serde_json::Value {
    let topic = format!("fieldbridge/gw/dev/{point}");
    w.wait_for_sync(|m| m.topic == topic, LONG).json()
}

#[test]
fn readings_arrive_upstream_with_exactly_the_decoded_values() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let _gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(SimDevice::new(sim.port))
        .start(dir.path());

    let expect = [
        ("f32_abcd", json!(21.5)),
        ("i32", json!(-123456)),
        ("u16_scaled", json!(234.5)),
        ("f32_cdab", json!(21.5)),
        ("i16", json!(-42)),
        ("u32", json!(4_000_000_000u64)),
        ("input_u16", json!(777)),
        ("input_f32", json!(-3.25)),
        ("coil0", json!(true)),
        ("coil1", json!(false)),
        ("discrete1", json!(true)),
    ];
    for (point, want) in expect {
        let p = value_of(&up, point);
        assert_eq!(p["value"], want, "{point}: {p}");
        assert_eq!(p["quality"], "good", "{point}");
        assert!(
            p["ts"].as_i64().unwrap() > 1_600_000_000_000,
            "ts in ms: {p}"
        );
        assert!(p["id"].is_string(), "{p}");
    }
    assert_eq!(value_of(&up, "f32_abcd")["unit"], "°C");
    let status = up.wait_for_sync(|m| m.topic == "fieldbridge/gw/dev/status", LONG);
    assert_eq!(status.text(), "online");
}

#[test]
fn an_upstream_black_hole_loses_no_reading_produced_during_the_outage() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let relay = Relay::start(mosq.addr());
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(relay.port())
        .with(SimDevice::new(sim.port).interval("50ms"));
    let gw = spec.start(dir.path());
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/#");

    up.wait_for_sync(is_reading, LONG);
    relay.set_mode(Mode::BlackHole);
    // The outage lasts until the gateway has noticed the dead link (keep-alive 1 s) and the
    // device has produced plenty of readings that could not go upstream.
    wait_until(LONG, "the gateway to detect the dead link", || {
        gw.log().contains("upstream_disconnected")
    });
    let (boot, at_detect) = wait_for(LONG, "a local reading", || newest_local(&local));
    wait_until(LONG, "more readings during the outage", || {
        newest_local(&local).is_some_and(|(_, s)| s > at_detect + 100)
    });
    relay.set_mode(Mode::Pass);
    let (_, upto) = newest_local(&local).unwrap();
    wait_until(
        LONG,
        "every reading up to the end of the outage upstream",
        || has_all(&up, &boot, upto),
    );
    let dups = duplicates(&up);
    eprintln!("outage: {} readings checked, {dups} duplicates", upto + 1);
    assert!(
        dups <= 2 * 64 + 10,
        "duplicates bounded by the in-flight window: {dups}"
    );
}

#[test]
fn a_refused_then_restored_upstream_loses_nothing_either() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let relay = Relay::start(mosq.addr());
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(relay.port())
        .with(SimDevice::new(sim.port).interval("50ms"));
    let gw = spec.start(dir.path());
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/#");

    up.wait_for_sync(is_reading, LONG);
    relay.set_mode(Mode::Refuse);
    let (boot, at_cut) = wait_for(LONG, "a local reading", || newest_local(&local));
    wait_until(LONG, "readings during the outage", || {
        newest_local(&local).is_some_and(|(_, s)| s > at_cut + 100)
    });
    relay.set_mode(Mode::Pass);
    let (_, upto) = newest_local(&local).unwrap();
    wait_until(
        LONG,
        "every reading up to the end of the outage upstream",
        || has_all(&up, &boot, upto),
    );
}

#[test]
fn rows_pending_at_a_kill_9_are_delivered_after_restart() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let relay = Relay::start(mosq.addr());
    relay.set_mode(Mode::Refuse);
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(relay.port())
        .with(SimDevice::new(sim.port).interval("50ms"));
    let mut gw = spec.start(dir.path());
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/#");
    wait_until(
        LONG,
        "readings queued while upstream is unreachable",
        || newest_local(&local).is_some_and(|(_, s)| s >= 60),
    );
    // Everything the local broker showed was committed first (append before local publish).
    let (boot, upto) = newest_local(&local).unwrap();
    gw.kill9();
    assert_eq!(up.count(is_reading), 0, "nothing could have gone upstream");

    relay.set_mode(Mode::Pass);
    let _gw = spec.start(dir.path());
    wait_until(LONG, "all rows pending at the kill upstream", || {
        has_all(&up, &boot, upto)
    });
}

#[test]
fn the_last_will_marks_a_killed_gateway_offline_and_a_restart_online() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(SimDevice::new(sim.port));
    let live = MqttWatcher::connect(mosq.port, "fieldbridge/gw/status");
    let mut gw = spec.start(dir.path());
    let status = |want: &str, times: usize| {
        wait_until(LONG, want, || live.count(|m| m.text() == want) == times);
        // A subscriber arriving afterwards gets it as the retained value.
        let w = MqttWatcher::connect(mosq.port, "fieldbridge/gw/status");
        w.wait_for_sync(|m| m.retain && m.text() == want, LONG);
    };
    status("online", 1);
    gw.kill9();
    status("offline", 1);
    let _gw = spec.start(dir.path());
    status("online", 2);
}

#[test]
fn a_clean_shutdown_publishes_offline_and_leaves_nothing_unsent() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(SimDevice::new(sim.port))
        .start(dir.path());
    up.wait_for_sync(is_reading, LONG);
    let status = gw.terminate();
    assert!(status.success(), "exit status {status}\n{}", gw.log());
    up.wait_for_sync(
        |m| m.topic == "fieldbridge/gw/status" && m.text() == "offline",
        LONG,
    );
    let log = gw.log();
    assert!(log.contains("stopped") && log.contains("queued=0"), "{log}");
    // every reading the gateway numbered reached upstream
    let seen = ids_seen(&up.messages());
    for (boot, seqs) in seen {
        let max = *seqs.keys().max().unwrap();
        let all: BTreeSet<u64> = seqs.keys().copied().collect();
        assert_eq!(all.len() as u64, max + 1, "gaps in boot {boot}");
    }
}

#[test]
fn a_local_client_receives_readings_and_retained_device_status() {
    let sim = ModbusSim::start(1);
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayConfig::standard()
        .with(SimDevice::new(sim.port))
        .start(dir.path());
    let first = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/dev/#");
    first.wait_for_sync(|m| m.topic == "fieldbridge/gw/dev/status", LONG);
    // An independent client (mosquitto_sub) connecting later gets the retained status...
    let retained = mosquitto_sub(
        gw.broker_port,
        &[
            "-t",
            "fieldbridge/gw/dev/status",
            "-C",
            "1",
            "-W",
            "10",
            "--retained-only",
        ],
    );
    let m = retained.wait_message("fieldbridge/gw/dev/status", LONG);
    assert_eq!(
        (m.topic.as_str(), m.text().as_str()),
        ("fieldbridge/gw/dev/status", "online")
    );
    assert!(m.retain);
    // ...and live readings.
    let live = mosquitto_sub(
        gw.broker_port,
        &["-t", "fieldbridge/gw/dev/i32", "-C", "1", "-W", "10"],
    );
    let p = live.wait_message("fieldbridge/gw/dev/i32", LONG).json();
    assert_eq!(p["value"], -123456);
}

#[test]
fn a_muted_device_goes_offline_and_comes_back_online() {
    let mut sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/gw/dev/status");
    let dir = tempfile::tempdir().unwrap();
    let _gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(SimDevice::new(sim.port))
        .start(dir.path());
    let count = |s: &str| up.count(|m| m.text() == s);
    wait_until(LONG, "online", || count("online") == 1);
    sim.mute();
    wait_until(LONG, "offline after the device stops answering", || {
        count("offline") == 1
    });
    sim.unmute();
    wait_until(LONG, "online again", || count("online") == 2);
}

#[test]
fn a_late_reply_is_never_read_as_the_answer_to_the_next_request() {
    let mut sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/gw/dev/#");
    let dir = tempfile::tempdir().unwrap();
    let _gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(SimDevice::new(sim.port))
        .start(dir.path());
    let count = |s: &str| up.count(|m| m.text() == s);
    wait_until(LONG, "online", || count("online") == 1);
    // Replies now come 0.4 s late with a 0.3 s timeout: every request times out and its answer
    // arrives while the next request would be waiting.
    sim.set_delay(Duration::from_millis(400));
    wait_until(LONG, "offline", || count("offline") == 1);
    sim.set_delay(Duration::ZERO);
    wait_until(LONG, "online again", || count("online") == 2);
    let before = up.messages().len();
    wait_until(LONG, "several polls after recovery", || {
        up.count(|m| m.topic.ends_with("/i32")) > 5 && up.messages().len() > before + 40
    });
    // Every reading after recovery is the right value for its own point.
    let expect: BTreeMap<&str, serde_json::Value> = [
        ("f32_abcd", json!(21.5)),
        ("i32", json!(-123456)),
        ("u16_scaled", json!(234.5)),
        ("input_u16", json!(777)),
        ("input_f32", json!(-3.25)),
        ("coil0", json!(true)),
        ("discrete1", json!(true)),
    ]
    .into();
    for m in up.messages().iter().filter(|m| is_reading(m)) {
        let point = m.topic.rsplit('/').next().unwrap();
        if let Some(want) = expect.get(point) {
            assert_eq!(&m.json()["value"], want, "{point}: {}", m.text());
        }
    }
}

fn tls_mosquitto(certs: &std::path::Path) -> (Mosquitto, u16) {
    tls_mosquitto_with(certs, "")
}

fn tls_mosquitto_with(certs: &std::path::Path, extra: &str) -> (Mosquitto, u16) {
    let tls_port = free_port();
    let mosq = Mosquitto::start_with_config(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n{extra}",
        d = certs.display()
    ));
    wait_until(LONG, "the TLS listener", || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    (mosq, tls_port)
}

#[test]
fn readings_arrive_over_tls_verified_against_the_configured_ca_file() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path(), "fieldbridge-test-ca", LOCALHOST_SAN);
    let (mosq, tls_port) = tls_mosquitto(certs.path());
    let sim = ModbusSim::start(1);
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(tls_port)
        .with(SimDevice::new(sim.port));
    let spec = spec.upstream_extra(format!(
        "[upstream.tls]\nca_file = \"{}/ca.pem\"\n",
        certs.path().display()
    ));
    let _gw = spec.start(dir.path());
    assert_eq!(value_of(&up, "i32")["value"], -123456);
    up.wait_for_sync(
        |m| m.topic == "fieldbridge/gw/status" && m.text() == "online",
        LONG,
    );
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path(), "the-real-ca", LOCALHOST_SAN);
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path(), "some-other-ca", LOCALHOST_SAN);
    let (mosq, tls_port) = tls_mosquitto(certs.path());
    let sim = ModbusSim::start(1);
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(tls_port)
        .with(SimDevice::new(sim.port));
    let spec = spec.upstream_extra(format!(
        "[upstream.tls]\nca_file = \"{}/ca.pem\"\n",
        other.path().display()
    ));
    let gw = spec.start(dir.path());
    wait_until(LONG, "a certificate error in the log", || {
        let log = gw.log();
        log.contains("upstream_connect_failed") && log.contains("certificate")
    });
    assert_eq!(
        up.count(|_| true),
        0,
        "nothing may reach the broker over an unverified link"
    );
}

#[test]
fn stats_are_published_retained_upstream_and_locally() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(mosq.port)
        .stats_interval("200ms")
        .with(SimDevice::new(sim.port));
    let gw = spec.start(dir.path());
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/gw/stats");
    let m = up.wait_for_sync(|m| m.json()["devices"]["dev"] == true, LONG);
    let v = m.json();
    assert_eq!(v["devices"].as_object().unwrap().len(), 1, "{v}");
    assert_eq!(v["upstream"]["connected"], true, "{v}");
    assert!(v["outbox"]["rows"].is_u64(), "{v}");
    assert!(v["stalled"].as_array().unwrap().is_empty(), "{v}");
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/stats");
    local.wait_for_sync(|m| m.retain, LONG);
    wait_until(LONG, "a stats log line", || {
        gw.log().contains("event=\"stats\"")
    });
}

#[test]
fn mutual_tls_with_a_client_certificate_is_accepted_where_one_is_required() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path(), "fieldbridge-test-ca", LOCALHOST_SAN);
    let (mosq, tls_port) = tls_mosquitto_with(certs.path(), "require_certificate true\n");
    let sim = ModbusSim::start(1);
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let d = certs.path().display();

    // without a client certificate the broker refuses the handshake
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(tls_port)
        .upstream_extra(format!("[upstream.tls]\nca_file = \"{d}/ca.pem\"\n"))
        .with(SimDevice::new(sim.port));
    let gw = spec.start(dir.path());
    wait_until(LONG, "a refused TLS connection in the log", || {
        gw.log().contains("upstream_connect_failed")
    });
    assert_eq!(up.count(|_| true), 0);
    drop(gw);

    let dir = tempfile::tempdir().unwrap();
    let spec = spec.upstream_extra(format!(
        "[upstream.tls]\nca_file = \"{d}/ca.pem\"\ncert_file = \"{d}/client.pem\"\nkey_file = \"{d}/client.key\"\n"
    ));
    let _gw = spec.start(dir.path());
    assert_eq!(value_of(&up, "i32")["value"], -123456);
}

#[test]
fn a_sigstopped_broker_is_detected_by_keep_alive_and_nothing_is_lost() {
    let sim = ModbusSim::start(1);
    let mut mosq = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(SimDevice::new(sim.port).interval("50ms"));
    let gw = spec.start(dir.path());
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/#");
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    up.wait_for_sync(is_reading, LONG);
    mosq.sigstop();
    // keep-alive is 1 s: the dead link must be noticed within a few seconds, not minutes
    wait_until(
        Duration::from_secs(6),
        "the gateway to detect the hung broker",
        || gw.log().contains("upstream_disconnected"),
    );
    let (boot, _) = wait_for(LONG, "a local reading", || newest_local(&local));
    mosq.sigcont();
    let _ = &mut mosq;
    let (_, upto) = wait_for(LONG, "a local reading", || newest_local(&local));
    wait_until(
        LONG,
        "every reading upstream after the broker resumed",
        || has_all(&up, &boot, upto),
    );
}

#[test]
fn a_rate_limited_backlog_replay_does_not_hold_back_live_readings() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let relay = Relay::start(mosq.addr());
    relay.set_mode(Mode::Refuse);
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(relay.port())
        .upstream_extra("replay_rate = 100\n")
        .with(SimDevice::new(sim.port).interval("50ms"));
    let gw = spec.start(dir.path());
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/#");
    wait_until(LONG, "a backlog of 600 readings", || {
        newest_local(&local).is_some_and(|(_, s)| s >= 600)
    });
    relay.set_mode(Mode::Pass);
    let (boot, backlog_end) = newest_local(&local).unwrap();
    // At 100 msg/s the backlog needs about 6 s; a live reading must arrive long before that.
    let live = up.wait_for_sync(
        |m| is_reading(m) && split_id(m.json()["id"].as_str().unwrap()).1 > backlog_end + 24,
        LONG,
    );
    let backlog_delivered = ids_seen(&up.messages())
        .get(&boot)
        .map_or(0, |s| s.keys().filter(|k| **k <= backlog_end).count());
    assert!(
        backlog_delivered < backlog_end as usize / 2,
        "live reading {} arrived only after {backlog_delivered} of {backlog_end} backlog rows",
        live.text()
    );
    let (_, upto) = newest_local(&local).unwrap();
    wait_until(
        LONG,
        "the whole backlog and the live readings upstream",
        || has_all(&up, &boot, upto),
    );
}

/// Publishes each line of `lines` as one QoS 1 message on `topic`.
fn publish_lines(port: u16, topic: &str, lines: &str) {
    let out = mosquitto_pub_lines(port, &["-q", "1", "-t", topic, "-l"], lines);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_local_client_publishing_during_an_outage_reaches_upstream_afterwards() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let relay = Relay::start(mosq.addr());
    relay.set_mode(Mode::Refuse);
    let up = MqttWatcher::connect(mosq.port, "site/#");
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(relay.port())
        .with(SimDevice::new(sim.port));
    let spec = spec.with(
        "[[forward]]\nfilter = \"lan/#\"\nlocal_prefix = \"lan\"\nremote_prefix = \"site/lan\"\n",
    );
    let gw = spec.start(dir.path());
    let lines: String = (0..50).map(|i| format!("{i}\n")).collect();
    publish_lines(gw.broker_port, "lan/esp32/temp", &lines);
    // not forwarded: outside the filter
    publish_lines(gw.broker_port, "other/x", "no\n");
    relay.set_mode(Mode::Pass);
    wait_until(LONG, "all 50 forwarded messages upstream", || {
        up.count(|m| m.topic == "site/lan/esp32/temp") >= 50
    });
    let got: Vec<String> = up
        .messages()
        .iter()
        .filter(|m| m.topic == "site/lan/esp32/temp")
        .map(|m| m.text())
        .collect();
    let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "in order, each once");
}

#[test]
fn upstream_subscriptions_reach_local_clients_and_nothing_loops_between_the_two() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(SimDevice::new(sim.port));
    // The widest filters in both directions: everything would loop without echo suppression.
    let spec = spec.with("[[forward]]\nfilter = \"#\"\n\n[[subscribe]]\nfilter = \"#\"\n");
    let gw = spec.start(dir.path());
    let up = MqttWatcher::connect(mosq.port, "#");
    let local = MqttWatcher::connect(gw.broker_port, "#");
    wait_until(LONG, "readings on both sides", || {
        up.count(is_reading) > 20 && local.count(is_reading) > 20
    });
    publish_lines(mosq.port, "cmd/valve", "open\n");
    local.wait_for_sync(|m| m.topic == "cmd/valve", LONG);
    publish_lines(gw.broker_port, "lan/esp32", "21.5\n");
    up.wait_for_sync(|m| m.topic == "lan/esp32", LONG);
    // Let a few hundred more readings pass through both directions, then count copies.
    let seen = up.count(is_reading);
    wait_until(LONG, "more readings", || up.count(is_reading) > seen + 200);
    assert_eq!(
        up.count(|m| m.topic == "cmd/valve"),
        1,
        "the command is not sent back up"
    );
    assert_eq!(local.count(|m| m.topic == "cmd/valve"), 1);
    assert_eq!(up.count(|m| m.topic == "lan/esp32"), 1);
    assert_eq!(
        local.count(|m| m.topic == "lan/esp32"),
        1,
        "not delivered back down"
    );
    assert_eq!(duplicates(&up), 0, "no reading reaches upstream twice");
    assert_eq!(
        duplicates(&local),
        0,
        "no reading reaches local clients twice"
    );
}

#[test]
fn a_corrupt_outbox_file_is_quarantined_and_the_gateway_runs() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("data/outbox.db"),
        b"this is not a database, just garbage bytes ".repeat(200),
    )
    .unwrap();
    let gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(SimDevice::new(sim.port))
        .start(dir.path());
    up.wait_for_sync(is_reading, LONG);
    let log = gw.log();
    assert!(
        log.contains("event=\"outbox_quarantined\"") && log.contains("ERROR"),
        "{log}"
    );
    let aside = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("outbox.db.corrupt-")
        })
        .count();
    assert_eq!(aside, 1);
}

#[test]
fn a_full_disk_keeps_local_readings_flowing_counts_drops_and_recovers() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(mosq.port)
        .stats_interval("200ms")
        .tmpfs_data(4096)
        .with(SimDevice::new(sim.port).interval("50ms"));
    let gw = spec.start(dir.path());
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/#");
    up.wait_for_sync(is_reading, LONG);

    // Fill the tmpfs; dd stops at ENOSPC.
    let data = gw.dir.join("data").display().to_string();
    gw.in_mount_ns(&format!(
        "dd if=/dev/zero of={data}/filler bs=64k 2>/dev/null; true"
    ));
    let out = gw.in_mount_ns(&format!("df -k {data} | tail -1"));
    eprintln!("tmpfs: {}", String::from_utf8_lossy(&out.stdout));
    wait_until(LONG, "a counted drop for a failed write", || {
        gw.log().contains("reason=\"write_failed\"")
    });
    // Polling and the local broker go on while nothing can be stored.
    let before = local.count(is_reading);
    wait_until(LONG, "local readings while the disk is full", || {
        local.count(is_reading) > before + 50
    });
    let dropped = |m: &Message| m.json()["outbox"]["dropped"].as_u64().unwrap_or(0) > 0;
    local.wait_for_sync(|m| m.topic.ends_with("/stats") && dropped(m), LONG);

    gw.in_mount_ns(&format!("rm -f {data}/filler"));
    let (boot, after_free) = wait_for(LONG, "a local reading", || newest_local(&local));
    // Readings produced after the space returned are stored and delivered again.
    up.wait_for_sync(
        |m| {
            is_reading(m)
                && split_id(m.json()["id"].as_str().unwrap()) > (boot.clone(), after_free + 20)
        },
        LONG,
    );
}

#[test]
fn a_server_certificate_for_another_host_name_is_refused_even_from_the_trusted_ca() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(
        certs.path(),
        "fieldbridge-test-ca",
        "DNS:broker.example.com",
    );
    let (mosq, tls_port) = tls_mosquitto(certs.path());
    let sim = ModbusSim::start(1);
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(tls_port)
        .with(SimDevice::new(sim.port));
    let d = certs.path().display();
    let spec = spec.upstream_extra(format!("[upstream.tls]\nca_file = \"{d}/ca.pem\"\n"));
    let gw = spec.start(dir.path());
    wait_until(LONG, "a host name error in the log", || {
        let log = gw.log();
        log.contains("upstream_connect_failed") && log.contains("certificate not valid for name")
    });
    assert_eq!(
        up.count(|_| true),
        0,
        "nothing may reach a broker with the wrong name"
    );
}

/// Leaves 50 messages on `site/old`, then `bad`, then 50 more in the outbox under `dir`, as an
/// earlier gateway run would have.
fn seed_outbox_around(dir: &std::path::Path, bad: fieldbridge::flow::Message) {
    use fieldbridge::config::{OutboxSettings, Overflow};
    use fieldbridge::flow::Message as Stored;
    use fieldbridge::outbox::Outbox;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let settings = OutboxSettings {
            max_rows: 1_000_000,
            max_bytes: 1 << 30,
            commit_interval: Duration::from_millis(0),
            max_age: None,
            overflow: Overflow::DropOldest,
        };
        let ob = Outbox::open(&dir.join("data"), &settings).await.unwrap();
        let m = |i: i32| Stored {
            topic: "site/old".into(),
            payload: i.to_string().into_bytes(),
            retain: false,
        };
        let mut batch: Vec<Stored> = (0..50).map(m).collect();
        batch.push(bad);
        batch.extend((50..100).map(m));
        ob.append(batch).await.unwrap();
        ob.close().await.unwrap();
    });
}

#[test]
fn a_message_the_upstream_refuses_by_disconnecting_is_set_aside_after_three_strikes() {
    let dir = tempfile::tempdir().unwrap();
    // Bigger than mosquitto's max_packet_size below: mosquitto closes the connection each time.
    seed_outbox_around(
        dir.path(),
        fieldbridge::flow::Message {
            topic: "site/big".into(),
            payload: vec![b'x'; 5000],
            retain: false,
        },
    );
    let mosq = Mosquitto::start_with_config("max_packet_size 2000\n");
    let up = MqttWatcher::connect(mosq.port, "#");
    let gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .start(dir.path());
    // Each session before the third strike sends the rows ahead of the refused one again
    // (at least once, within the in-flight window): count distinct messages, in first-seen order.
    let first_seen = || {
        let mut seen = Vec::new();
        for m in up.messages().iter().filter(|m| m.topic == "site/old") {
            if !seen.contains(&m.text()) {
                seen.push(m.text());
            }
        }
        seen
    };
    wait_until(LONG, "all 100 other messages upstream", || {
        first_seen().len() >= 100
    });
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(first_seen(), want, "in order, none lost");
    let log = gw.wait_log(&["outbox_dead_letter", "refused_by_upstream"]);
    assert!(log.contains("site/big"), "{log}");
    assert_eq!(
        gw.log().matches("upstream_disconnected").count(),
        3,
        "three strikes, then the queue goes on"
    );
    up.wait_for_sync(
        |m| m.topic == "fieldbridge/gw/stats" && m.json()["outbox"]["dead_letters"] == 1,
        LONG,
    );
}

#[test]
fn a_stored_message_upstream_cannot_take_is_set_aside_and_the_queue_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // Left in the outbox by an older gateway: a message on a topic no broker takes (a
    // forwarded Will on `lan/#`, as in the field report) between 100 others.
    seed_outbox_around(
        dir.path(),
        fieldbridge::flow::Message {
            topic: "lan/#".into(),
            payload: b"poison".to_vec(),
            retain: false,
        },
    );
    let mosq = Mosquitto::start();
    let up = MqttWatcher::connect(mosq.port, "#");
    let gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .start(dir.path());
    wait_until(LONG, "all 100 sendable messages upstream", || {
        up.count(|m| m.topic == "site/old") >= 100
    });
    let got: Vec<String> = up
        .messages()
        .iter()
        .filter(|m| m.topic == "site/old")
        .map(|m| m.text())
        .collect();
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "in order, none lost");
    let log = gw.wait_log(&["outbox_dead_letter", "invalid_topic"]);
    assert_eq!(
        log.matches("event=\"outbox_dead_letter\"").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("upstream_disconnected"), "{log}");
    // The stats topic counts it (`fieldbridge status` prints that count).
    let stats = up.wait_for_sync(
        |m| m.topic == "fieldbridge/gw/stats" && m.json()["outbox"]["dead_letters"] == 1,
        LONG,
    );
    assert_eq!(stats.json()["outbox"]["dead_letters"], 1);
}
