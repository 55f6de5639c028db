//! Fault injection: a randomized sequence of link, broker and gateway faults, with a count-exact
//! check by message id that no committed reading was lost upstream.
//!
//! Knobs: FB_FAULT_CYCLES (default 50; 1000 for a long run), FB_FAULT_SEED (default: random,
//! printed so a failure can be replayed).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::gateway::{ids_seen, is_reading, split_id, GatewayConfig, SimDevice};
use support::modbus::ModbusSim;
use support::mosquitto::Mosquitto;
use support::mqtt::{publish, MqttWatcher};
use support::relay::{Mode, Relay};
use support::{eventually, wait_until};

const LONG: Duration = Duration::from_secs(60);
/// The gateway's in-flight window (upstream.inflight default) plus its status message.
const WINDOW: usize = fieldbridge::config::raw::DEFAULT_INFLIGHT as usize + 1;

/// Readings the local broker has shown so far (any boot).
/// (boot, sequence number) of a reading's message id.
type ReadingId = (String, u64);

fn local_count(local: &MqttWatcher) -> usize {
    local.count(is_reading)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    BlackHole,
    Refuse,
    Reset,
    Delay,
    KillBroker,
    StopBroker,
    KillGateway,
}

const FAULTS: [Fault; 7] = [
    Fault::BlackHole,
    Fault::Refuse,
    Fault::Reset,
    Fault::Delay,
    Fault::KillBroker,
    Fault::StopBroker,
    Fault::KillGateway,
];

#[test]
fn no_committed_reading_is_lost_through_randomized_link_broker_and_gateway_faults() {
    let cycles: usize = std::env::var("FB_FAULT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("FB_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fault suite: {cycles} cycles, FB_FAULT_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let sim = ModbusSim::start(1);
    let mut mosq = Mosquitto::start();
    let relay = Relay::start(mosq.addr());
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let spec = GatewayConfig::standard()
        .upstream(relay.port())
        .with(SimDevice::new(sim.port).interval("50ms"));
    let mut gw = spec.start(dir.path());
    let local = MqttWatcher::connect(gw.broker_port, "fieldbridge/#");
    wait_until(LONG, "first readings upstream", || up.count(is_reading) > 0);

    let mut tally: BTreeMap<Fault, usize> = BTreeMap::new();
    // (cycle, fault, highest reading id seen locally when it began), to place missing ids.
    let mut history: Vec<(usize, Fault, Option<ReadingId>)> = Vec::new();
    for cycle in 0..cycles {
        let fault = FAULTS[rng.random_range(0..FAULTS.len())];
        let latest = local
            .messages()
            .iter()
            .rev()
            .find(|m| is_reading(m))
            .and_then(|m| m.json()["id"].as_str().map(split_id));
        history.push((cycle, fault, latest));
        *tally.entry(fault).or_default() += 1;
        // A fault lasts until the device produced this many more readings (at ~240/s).
        let during = rng.random_range(5..120);
        let until = |local: &MqttWatcher| {
            let start = local_count(local);
            wait_until(
                LONG,
                &format!("cycle {cycle} ({fault:?}): readings"),
                || local_count(local) >= start + during,
            );
        };
        match fault {
            Fault::BlackHole | Fault::Refuse | Fault::Delay => {
                relay.set_mode(match fault {
                    Fault::BlackHole => Mode::BlackHole,
                    Fault::Refuse => Mode::Refuse,
                    _ => Mode::Delay(Duration::from_millis(rng.random_range(20..300))),
                });
                until(&local);
                relay.set_mode(Mode::Pass);
            }
            Fault::Reset => relay.set_mode(Mode::Reset),
            Fault::KillBroker => {
                // The test's own subscriber needs the broker too: hold the gateway off until it
                // has subscribed again, or messages would be lost between it and mosquitto.
                relay.set_mode(Mode::Refuse);
                // What mosquitto acknowledged (so the gateway deleted it) but had not yet
                // written to the test's subscriber would die with it: then the test, not the
                // gateway, loses it. A marker published now is queued behind all of that; once
                // the subscriber has it, everything acknowledged before has been delivered.
                let marker = format!("fieldbridge/test/marker-{cycle}");
                publish(mosq.port, &["-q", "1", "-t", &marker, "-m", "x"]);
                up.wait_for_sync(|m| m.topic == marker, LONG);
                let subs = up.subscriptions();
                mosq.kill();
                until(&local);
                mosq.restart();
                wait_until(LONG, "the test subscriber back on the broker", || {
                    up.subscriptions() > subs
                });
                relay.set_mode(Mode::Pass);
            }
            Fault::StopBroker => {
                mosq.sigstop();
                until(&local);
                mosq.sigcont();
            }
            Fault::KillGateway => {
                gw.kill9();
                gw = spec.start(dir.path());
                until(&local);
            }
        }
    }

    relay.set_mode(Mode::Pass);
    // Every boot's readings are numbered without gaps: all numbers up to the highest seen on
    // either side must arrive upstream.
    let want = |local: &MqttWatcher, up: &MqttWatcher| {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for seen in [ids_seen(&local.messages()), ids_seen(&up.messages())] {
            for (boot, seqs) in seen {
                let max = *seqs.keys().max().unwrap();
                let e = m.entry(boot).or_default();
                *e = (*e).max(max);
            }
        }
        m
    };
    let target = want(&local, &up);
    let missing = |up: &MqttWatcher| {
        let got = ids_seen(&up.messages());
        target
            .iter()
            .map(|(boot, max)| {
                let seqs = got.get(boot);
                (0..=*max)
                    .filter(|s| !seqs.is_some_and(|x| x.contains_key(s)))
                    .count()
            })
            .sum::<usize>()
    };
    // Failing is explained below, with the missing ids.
    eventually(LONG, || missing(&up) == 0);
    let lost = missing(&up);
    if lost > 0 {
        // Say which ones, and what the gateway was doing, before failing.
        let got = ids_seen(&up.messages());
        let local_seen = ids_seen(&local.messages());
        for (boot, max) in &target {
            let gaps: Vec<u64> = (0..=*max)
                .filter(|s| !got.get(boot).is_some_and(|x| x.contains_key(s)))
                .collect();
            if !gaps.is_empty() {
                let seen_locally = gaps
                    .iter()
                    .filter(|s| local_seen.get(boot).is_some_and(|x| x.contains_key(s)))
                    .count();
                eprintln!(
                    "boot {boot}: {} of 0..={max} missing upstream ({seen_locally} of them seen locally), first {:?}",
                    gaps.len(),
                    &gaps[..gaps.len().min(20)]
                );
                let first = gaps[0];
                for (cycle, fault, at) in &history {
                    if let Some((b, seq)) = at {
                        if b == boot && seq + 400 >= first && *seq <= first + 400 {
                            eprintln!("  cycle {cycle} {fault:?} began at {b}-{seq}");
                        }
                    }
                }
            }
        }
        let log = gw.log();
        let keep = std::env::temp_dir().join(format!("fieldbridge-faults-{seed}.log"));
        let _ = std::fs::write(&keep, &log);
        eprintln!("full gateway log (last boot): {}", keep.display());
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!(
            "gateway log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        panic!("{lost} readings never arrived upstream (seed {seed})");
    }
    let got = ids_seen(&up.messages());
    let total: usize = got.values().map(|s| s.len()).sum();
    let dups: usize = got.values().flat_map(|s| s.values()).map(|n| n - 1).sum();
    eprintln!(
        "fault suite: {cycles} cycles {tally:?}; {total} distinct readings from {} boots checked, {lost} lost, {dups} duplicates",
        got.len()
    );
    assert!(
        dups <= cycles * WINDOW,
        "duplicates {dups} exceed the in-flight window per fault cycle ({cycles} x {WINDOW})"
    );
    drop(gw);
}
