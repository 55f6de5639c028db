//! Forwarding (`[[forward]]`) at realistic volume, against mosquitto upstream and paho
//! publishers: a PUBACK from the embedded broker means the message is on disk, so a burst
//! during an outage and a kill -9 right after the last PUBACK lose nothing.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use support::gateway::{Gateway, GatewayConfig};
use support::mosquitto::Mosquitto;
use support::mqtt::{burst, mosquitto_sub, paho, MqttWatcher};
use support::relay::{Mode, Relay};
use support::wait::poll;
use support::wait_until;

/// A burst takes a few seconds on a PC; a loaded CI machine gets far more.
const BURST: Duration = Duration::from_secs(300);

fn forwarding_gateway(upstream_port: u16) -> GatewayConfig {
    GatewayConfig::minimal()
        .upstream(upstream_port)
        .stats_interval("1s")
        .with("[[forward]]\nfilter = \"bench/#\"\n")
}

/// mosquitto drops QoS 1 messages for a subscriber with more than `max_queued_messages` (1000)
/// queued; the test's collector may fall that far behind on a loaded machine, which would look
/// like a loss of ours.
fn upstream() -> Mosquitto {
    Mosquitto::start_with_config("max_queued_messages 0\n")
}

/// The upstream behind a relay that refuses connections (an outage until the test lets it
/// through), and a watcher of everything that reaches it. Keep the broker bound as long as the
/// other two.
fn refused_upstream() -> (Mosquitto, Relay, MqttWatcher) {
    let mosq = upstream();
    let relay = Relay::start(mosq.addr());
    relay.set_mode(Mode::Refuse);
    let up = MqttWatcher::connect(mosq.port, "#");
    (mosq, relay, up)
}

/// How many times each seq of `topic` arrived.
fn seqs(up: &MqttWatcher, topic: &str) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for m in up.messages().iter().filter(|m| m.topic == topic) {
        if let Some(seq) = m.json()["seq"].as_u64() {
            *seen.entry(seq).or_insert(0) += 1;
        }
    }
    seen
}

/// Publishes `count` numbered messages into the gateway's broker and waits for every ack.
fn publish_burst(gw: &Gateway, topic: &str, count: usize, qos: u8, pad: usize) {
    let mut publisher = burst(gw.broker_port, topic, count, qos, pad);
    let done = publisher.wait_for("every message acknowledged", BURST, |l| {
        l.starts_with("ACKED") || l.starts_with("TIMEOUT") || l.starts_with("DISCONNECTED")
    });
    assert!(done.starts_with("ACKED"), "publisher: {done}");
    assert!(publisher.wait_exit(BURST), "publisher failed");
}

/// Waits until every seq below `count` arrived upstream and returns the arrivals.
fn wait_all(up: &MqttWatcher, count: usize) -> BTreeMap<u64, usize> {
    let all = poll(BURST, || {
        (seqs(up, "bench/data").len() >= count).then_some(())
    });
    let seen = seqs(up, "bench/data");
    assert!(
        all.is_some(),
        "{} of {count} seqs arrived; the collector subscribed {} times",
        seen.len(),
        up.subscriptions()
    );
    let missing: Vec<u64> = (0..count as u64)
        .filter(|s| !seen.contains_key(s))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "missing seqs (first 10): {missing:?}");
    seen
}

fn stats_forwarded(up: &MqttWatcher) -> u64 {
    up.messages()
        .iter()
        .filter(|m| m.topic == "fieldbridge/gw/stats")
        .filter_map(|m| m.json()["broker"]["forwarded"].as_u64())
        .max()
        .unwrap_or(0)
}

fn start(spec: &GatewayConfig, dir: &Path) -> Gateway {
    spec.start(dir)
}

/// Publishes 20,000 messages into the gateway with the upstream refused, lets it through and
/// checks that every one arrives once, in order, and is counted.
fn a_burst_arrives_complete_once_and_in_order(inflight: Option<u16>) {
    const N: usize = 20_000;
    let (_mosq, relay, up) = refused_upstream();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = forwarding_gateway(relay.port());
    if let Some(n) = inflight {
        spec = spec.upstream_extra(format!("inflight = {n}\n"));
    }
    let gw = start(&spec, dir.path());
    publish_burst(&gw, "bench/data", N, 1, 100);
    relay.set_mode(Mode::Pass);
    let seen = wait_all(&up, N);
    assert!(
        seen.values().all(|&n| n == 1),
        "no message twice without a crash"
    );
    let order: Vec<u64> = up
        .messages()
        .iter()
        .filter(|m| m.topic == "bench/data")
        .filter_map(|m| m.json()["seq"].as_u64())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in publish order");
    wait_until(BURST, "the stats topic to count every forward", || {
        stats_forwarded(&up) >= N as u64
    });
    let log = gw.log();
    assert!(!log.contains("jumping to head"), "rumqttd skipped: {log}");
    assert!(!log.contains("forward_refused"), "{log}");
}

#[test]
fn a_burst_of_20000_forwarded_during_an_outage_arrives_complete_once_and_in_order() {
    a_burst_arrives_complete_once_and_in_order(None);
}

/// With 512 in flight the uplink reads PUBACKs on a pace (`plan::read_pace`) for most of the
/// drain, and per arrival again for its tail.
#[test]
fn a_burst_drained_through_a_deep_paced_window_arrives_complete_once_and_in_order() {
    a_burst_arrives_complete_once_and_in_order(Some(512));
}

/// A paced read that finds nothing makes the uplink wait on the socket instead of on the pace
/// (`plan::read_pace`), so a broker that stops answering costs no wake-up a millisecond. The
/// keep-alive ping must still find such a link dead in the middle of a deep-window drain, and
/// every message arrive once it is back. The replay rate keeps the drain going long enough to
/// cut it in the middle; without acknowledgements the window then fills to 512 at that rate.
#[test]
fn a_deep_window_that_goes_silent_mid_drain_is_found_dead_by_the_ping_and_loses_nothing() {
    const N: usize = 20_000;
    let (_mosq, relay, up) = refused_upstream();
    let dir = tempfile::tempdir().unwrap();
    let spec =
        forwarding_gateway(relay.port()).upstream_extra("inflight = 512\nreplay_rate = 2000\n");
    let gw = start(&spec, dir.path());
    publish_burst(&gw, "bench/data", N, 1, 100);
    relay.set_mode(Mode::Pass);
    wait_until(BURST, "the drain to be under way", || {
        seqs(&up, "bench/data").len() >= 1000
    });
    relay.set_mode(Mode::BlackHole);
    wait_until(BURST, "the keep-alive to find the silent link dead", || {
        gw.log().contains("upstream_disconnected")
    });
    let before = seqs(&up, "bench/data").len();
    assert!(
        before < N,
        "the link went silent only after the drain: {before} of {N}"
    );
    relay.set_mode(Mode::Pass);
    wait_all(&up, N);
    let log = gw.log();
    assert!(
        !log.contains("upstream_ack_timeout"),
        "a silent link is the keep-alive's, not a reason to shrink the window: {log}"
    );
}

/// The newest `upstream` figures on the stats topic.
fn upstream_stats(up: &MqttWatcher) -> Option<serde_json::Value> {
    up.messages()
        .iter()
        .rfind(|m| m.topic == "fieldbridge/gw/stats")
        .map(|m| m.json()["upstream"].clone())
}

/// A broker that takes at most 10 publishes unacknowledged and silently drops any beyond them,
/// as AWS IoT Core does past 100, with the gateway's window at 40: the uplink gives up on the
/// dropped publishes (they wait while the broker answers others), halves its window until it
/// fits, and every message arrives. Before this, the dropped publishes held the window until a
/// reconnect that never came, since the broker answered every ping. After a restart the
/// gateway starts with the window it learned, so the cap costs no second round of timeouts.
#[test]
fn an_upstream_that_drops_publishes_beyond_its_cap_gets_every_message_once_the_window_fits() {
    const N: usize = 3_000;
    let (_mosq, relay, up) = refused_upstream();
    let dir = tempfile::tempdir().unwrap();
    // The harness's keep-alive of 1 s has the broker answer a ping every second.
    let spec =
        forwarding_gateway(relay.port()).upstream_extra("inflight = 40\nack_timeout = \"2s\"\n");
    let mut gw = start(&spec, dir.path());
    publish_burst(&gw, "bench/data", N, 1, 100);
    relay.set_mode(Mode::Cap(10));
    let seen = wait_all(&up, N);
    let dups: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "{} publishes dropped by the cap, {dups} duplicates",
        relay.dropped()
    );
    assert!(relay.dropped() > 0, "the cap never dropped a publish");
    // 40 → 20 → 10: ten in flight (the status message among them) fit the cap.
    let settled = poll(Duration::from_secs(30), || {
        upstream_stats(&up).filter(|u| u["window"] == 10 && u["ack_timeouts"] == 2)
    });
    let uplink_log = || {
        let log = gw.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("upstream")).collect();
        lines.join("\n")
    };
    assert!(
        settled.is_some(),
        "stats: {:?}\n{}",
        upstream_stats(&up),
        uplink_log()
    );
    let line = gw.wait_log(&["upstream_ack_timeout", "ERROR"]);
    assert!(
        line.contains("window=10") || line.contains("window=20"),
        "{line}"
    );
    // Each of the two reconnects sends again what was in flight then (40, then 20). Before a
    // connection committed the acks of the one before it and forgot the read-ahead, rows
    // acknowledged in an earlier session came back too (158 here).
    assert!(
        dups <= 40 + 20,
        "at most the windows given up on sent twice: {dups}\n{}",
        uplink_log()
    );

    assert!(gw.terminate().success(), "{}", gw.log());
    let gw = start(&spec, dir.path());
    let line = gw.wait_log(&["upstream_window_learned"]);
    assert!(line.contains("window=10"), "{line}");
    publish_burst(&gw, "bench/again", N, 1, 100);
    let arrived = poll(BURST, || {
        (seqs(&up, "bench/again").len() >= N).then_some(())
    });
    assert!(
        arrived.is_some(),
        "{} of {N} arrived after the restart",
        seqs(&up, "bench/again").len()
    );
    // The new process's counters start at zero: its stats say no publish was given up on.
    let fresh = poll(BURST, || {
        upstream_stats(&up)
            .filter(|u| u["ack_timeouts"] == 0 && u["sent"].as_u64() >= Some(N as u64))
    });
    assert!(
        fresh.as_ref().is_some_and(|u| u["window"] == 10),
        "stats after the restart: {fresh:?}\n{}",
        gw.log()
    );
    assert!(
        !gw.log().contains("upstream_ack_timeout"),
        "the learned window fits the cap from the start:\n{}",
        gw.log()
    );
}

/// Publishes `count` messages at `qos` while the upstream is down, kills the gateway with
/// SIGKILL right after the last acknowledgement, restarts it and brings the upstream back:
/// every message must arrive.
fn kill_9_after_the_last_ack_loses_nothing(count: usize, qos: u8) {
    let (_mosq, relay, up) = refused_upstream();
    let dir = tempfile::tempdir().unwrap();
    let spec = forwarding_gateway(relay.port());
    let mut gw = start(&spec, dir.path());
    publish_burst(&gw, "bench/data", count, qos, 100);
    gw.kill9();
    let _gw = start(&spec, dir.path());
    relay.set_mode(Mode::Pass);
    wait_all(&up, count);
}

#[test]
fn a_kill_9_right_after_the_last_puback_loses_no_forwarded_message() {
    kill_9_after_the_last_ack_loses_nothing(10_000, 1);
}

#[test]
fn a_kill_9_right_after_the_last_pubcomp_loses_no_qos2_forward() {
    kill_9_after_the_last_ack_loses_nothing(3_000, 2);
}

#[test]
fn a_forwarded_retained_message_stays_retained_upstream() {
    let mosq = upstream();
    let up = MqttWatcher::connect(mosq.port, "#");
    let dir = tempfile::tempdir().unwrap();
    let gw = start(&forwarding_gateway(mosq.port), dir.path());
    let mut pub1 = paho(&[
        "--transport",
        "tcp",
        "--port",
        &gw.broker_port.to_string(),
        "--publish",
        "bench/config=v1",
        "--retain",
        "--disconnect-after-publish",
    ]);
    assert!(pub1.wait_exit(BURST), "the publisher exits cleanly");
    up.wait_for_sync(|m| m.topic == "bench/config", BURST);
    // A subscriber arriving later gets it from mosquitto's retained store, flagged retained.
    let late = MqttWatcher::connect(mosq.port, "bench/config");
    let m = late.wait_for_sync(|m| m.topic == "bench/config", BURST);
    assert!(m.retain && m.text() == "v1", "{m:?}");
}

#[test]
fn a_forwarded_last_will_reaches_upstream_after_a_crash_and_not_after_a_disconnect() {
    let mosq = upstream();
    let up = MqttWatcher::connect(mosq.port, "#");
    let dir = tempfile::tempdir().unwrap();
    let gw = start(&forwarding_gateway(mosq.port), dir.path());
    let port = gw.broker_port.to_string();
    let mut crashing = paho(&[
        "--transport",
        "tcp",
        "--port",
        &port,
        "--client-id",
        "crashes",
        "--will",
        "bench/crashes/state=gone",
        "--subscribe",
        "bench/none",
    ]);
    crashing.wait_for("the SUBACK", BURST, |l| l.starts_with("SUBACK"));
    crashing.kill9();
    up.wait_for_sync(|m| m.topic == "bench/crashes/state", BURST);
    let mut polite = paho(&[
        "--transport",
        "tcp",
        "--port",
        &port,
        "--client-id",
        "polite",
        "--will",
        "bench/polite/state=gone",
        "--publish",
        "bench/polite/last=bye",
        "--disconnect-after-publish",
    ]);
    assert!(polite.wait_exit(BURST), "the polite client exits cleanly");
    up.wait_for_sync(|m| m.topic == "bench/polite/last", BURST);
    // Anything published after the clean disconnect would be behind `last` on this path.
    assert_eq!(up.count(|m| m.topic == "bench/polite/state"), 0);
}

#[test]
fn what_rumqttd_skips_for_a_lagging_local_subscriber_is_counted_and_logged() {
    const N: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayConfig::minimal()
        .stats_interval("1s")
        .start(dir.path());
    let stats = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/stats");
    let slow = mosquitto_sub(gw.broker_port, &["-q", "0", "-t", "lan/#"]);
    assert_eq!(slow.subscribed(), vec![0]);
    // A subscriber that stops reading: 20 MB pass while it sleeps, far more than rumqttd keeps
    // for one filter (4 segments of 256 KiB).
    let pid = nix::unistd::Pid::from_raw(slow.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    publish_burst(&gw, "lan/data", N, 1, 1000);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let skipped = |s: &MqttWatcher| {
        s.messages()
            .iter()
            .filter_map(|m| m.json()["broker"]["subscriber_skipped"].as_u64())
            .max()
            .unwrap_or(0)
    };
    // Every message either reached the slow subscriber or is counted as skipped for it.
    let settled = poll(Duration::from_secs(30), || {
        let got = slow
            .messages()
            .iter()
            .filter(|m| m.topic == "lan/data")
            .count() as u64;
        (got + skipped(&stats) == N as u64).then_some(got)
    });
    let got = slow
        .messages()
        .iter()
        .filter(|m| m.topic == "lan/data")
        .count();
    assert!(
        settled.is_some(),
        "received {got} + skipped {} != {N}",
        skipped(&stats)
    );
    assert!(skipped(&stats) > 0, "the subscriber did lag");
    let log = gw.wait_log(&["broker_subscriber_skipped", "ERROR"]);
    assert!(log.contains("skipped="), "{log}");
}

/// Forwards 400 kB messages; neither the keep-alive nor the write timeout ends a stall of a
/// few seconds: only the link recovering, or a stop, may end it.
fn stalling_gateway(upstream_port: u16) -> GatewayConfig {
    let mut spec = forwarding_gateway(upstream_port);
    spec.broker = "max_payload_bytes = 524288\n".into();
    if let Some(u) = spec.upstream.as_mut() {
        u.keep_alive = "120s";
        u.connect_timeout = Some("60s");
    }
    spec
}

#[test]
fn a_link_that_stalls_mid_write_loses_no_publish_and_needs_no_reconnect() {
    // 60 × 400 kB is more than the loopback socket buffers hold, so while the relay reads
    // nothing the uplink is left waiting inside a write for the whole stall, under the
    // watchdog (2 s) without tripping it.
    const N: usize = 60;
    let mosq = upstream();
    let relay = Relay::start(mosq.addr());
    let up = MqttWatcher::connect(mosq.port, "bench/#");
    let dir = tempfile::tempdir().unwrap();
    let spec = stalling_gateway(relay.port()).env("WATCHDOG_USEC", "2000000");
    let gw = start(&spec, dir.path());
    gw.wait_log(&["connected upstream"]);
    relay.set_mode(Mode::BlackHole);
    publish_burst(&gw, "bench/data", N, 1, 400_000);
    // The stall itself, not a synchronisation: a link that takes nothing for 3 s.
    std::thread::sleep(Duration::from_secs(3));
    relay.set_mode(Mode::Pass);
    let all = poll(Duration::from_secs(60), || {
        (seqs(&up, "bench/data").len() >= N).then_some(())
    });
    let seen = seqs(&up, "bench/data");
    let missing: Vec<u64> = (0..N as u64).filter(|s| !seen.contains_key(s)).collect();
    assert!(
        all.is_some(),
        "missing after the stall, without a reconnect to resend them: {missing:?}"
    );
    assert!(!gw.log().contains("upstream_disconnected"), "{}", gw.log());
}

#[test]
fn a_link_stalled_mid_write_at_shutdown_neither_holds_up_the_stop_nor_loses_a_publish() {
    // As above, 60 × 400 kB cannot leave while the relay reads nothing: the uplink is inside a
    // write when the stop comes, and a write cannot be abandoned half-way and resumed.
    const N: usize = 60;
    let mosq = upstream();
    let relay = Relay::start(mosq.addr());
    let up = MqttWatcher::connect(mosq.port, "bench/#");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = stalling_gateway(relay.port());
    spec.shutdown_timeout = Some("3s");
    let mut gw = start(&spec, dir.path());
    gw.wait_log(&["connected upstream"]);
    relay.set_mode(Mode::BlackHole);
    let stats = MqttWatcher::connect(gw.broker_port, "fieldbridge/gw/stats");
    publish_burst(&gw, "bench/data", N, 1, 400_000);
    // Every row is committed now (each PUBACK says so), and 24 MB fit in no socket buffer, so
    // the uplink ends up inside a write it cannot finish. It is there once two snapshots a
    // second apart, both taken after the burst, show the same rows handed to the link: a
    // free uplink would have read the committed rows within milliseconds. Seeing one snapshot
    // with a row sent is not enough: the first commit may hold few enough rows to fit.
    let before = stats.messages().len();
    let sent = poll(Duration::from_secs(30), || {
        let sent: Vec<Option<u64>> = stats.messages()[before..]
            .iter()
            .map(|m| m.json()["upstream"]["sent"].as_u64())
            .collect();
        sent.windows(2)
            .any(|w| w[0] >= Some(1) && w[0] == w[1])
            .then_some(())
    });
    assert!(
        sent.is_some(),
        "the uplink never settled in a write\n{}",
        gw.log()
    );
    let status = gw.terminate_within(Duration::from_secs(3 + 9));
    assert!(status.success(), "{status:?}\n{}", gw.log());
    assert!(gw.log().contains("stalled at shutdown"), "{}", gw.log());

    relay.set_mode(Mode::Pass);
    let _gw = start(&spec, dir.path());
    let seen = wait_all(&up, N);
    assert_eq!(seen.len(), N);
}
