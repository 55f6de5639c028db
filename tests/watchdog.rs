//! The systemd watchdog catches every hang, and a shutdown always finishes, even with a hung
//! loop. The gateway runs under a test `NOTIFY_SOCKET` with `WATCHDOG_USEC` = 4 s, polling a
//! pymodbus simulator, reading an SDS011 sensor on a socat pty and sending to mosquitto. Each loop
//! (poller, serial task, pipeline, outbox writer, uplink, the embedded broker's link thread)
//! in turn is hung for good with the `FIELDBRIDGE_DEBUG_HANG_FILE` hook; the pings must stop
//! within half the watchdog interval of the hang, `STATUS=` must name the loop, and SIGTERM must
//! end the process within `shutdown_timeout` plus a few seconds, non-zero, with the abandoned
//! loops logged. Without a hang the pings go on, idle and under a burst of forwarded messages.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::gateway::{stored_ids, Gateway, GatewayConfig, SimDevice};
use support::modbus::ModbusSim;
use support::mosquitto::Mosquitto;
use support::mqtt::burst;
use support::notify::{longest_gap, Notice, NotifyListener};
use support::serial::{sds011_frame, Peer, PtyPair};

/// The watchdog interval systemd would give (`WatchdogSec=4s`).
const WATCHDOG: Duration = Duration::from_secs(4);
/// `shutdown_timeout` of `GatewayConfig::standard()`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// "A few seconds" beyond `shutdown_timeout` for a stop with a hung loop: the gateway's own
/// margin is 5 s; the rest is room for a loaded test machine.
const STOP_LIMIT: Duration = Duration::from_secs(SHUTDOWN_TIMEOUT.as_secs() + 9);
const START: Duration = Duration::from_secs(30);

fn sds011(path: &std::path::Path) -> String {
    format!(
        "[[devices]]\nname = \"air\"\nkind = \"serial_line\"\npath = \"{}\"\ndriver = \"sds011\"\n",
        path.display()
    )
}

/// A gateway with a Modbus device `dev` (every 200 ms), a serial sensor `air`, mosquitto
/// upstream, the notify socket and the hang hook.
struct Rig {
    gw: Gateway,
    notify: NotifyListener,
    hang_file: PathBuf,
    sensor: Peer,
    _pty: PtyPair,
    _sim: ModbusSim,
    _mosq: Mosquitto,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start(spec: impl FnOnce(GatewayConfig) -> GatewayConfig) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let sim = ModbusSim::start(1);
        let mosq = Mosquitto::start();
        let pty = PtyPair::start();
        let notify = NotifyListener::bind(dir.path());
        let hang_file = dir.path().join("hang");
        let base = GatewayConfig::standard()
            .upstream(mosq.port)
            .with(SimDevice::new(sim.addr().port()).interval("200ms"))
            .with(sds011(&pty.device()))
            .env("NOTIFY_SOCKET", notify.path())
            .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
            .env("FIELDBRIDGE_DEBUG_HANG_FILE", &hang_file)
            .env("RUST_LOG", "info");
        let gw = spec(base).spawn(dir.path());
        let sensor = pty.open_peer();
        Rig {
            gw,
            notify,
            hang_file,
            sensor,
            _pty: pty,
            _sim: sim,
            _mosq: mosq,
            _dir: dir,
        }
    }

    /// The sensor sends one frame (it streams while the test waits).
    fn stream(sensor: &mut Peer) {
        let _ = sensor.send(&sds011_frame(123, 456));
    }

    /// READY, both devices online, upstream connected, and three pings.
    fn wait_healthy(&mut self) {
        self.notify
            .wait(START, "READY=1", |n| n.has_line("READY=1"));
        let sensor = &mut self.sensor;
        let online = self.notify.wait_from(
            0,
            START,
            || Rig::stream(sensor),
            |n| {
                n.status().is_some_and(|s| {
                    s.starts_with("2/2 devices online") && s.contains("upstream connected")
                })
            },
        );
        assert!(
            online.is_some(),
            "never healthy: {:?}\n{}",
            self.notify.notices(),
            self.gw.log()
        );
        assert!(
            self.notify
                .more_pings(3, WATCHDOG * 2, || Rig::stream(sensor)),
            "a healthy gateway did not ping: {:?}",
            self.notify.notices()
        );
    }
}

fn stalled_status_names(n: &Notice, loop_name: &str) -> bool {
    n.status().is_some_and(|s| {
        s.starts_with("STALLED: ") && s.contains(&format!("{loop_name} (no beat for"))
    })
}

/// Hangs `loop_name` and checks the pings, STATUS and the stop; returns how long after the hang
/// was asked for the last ping came.
fn hang_stops_the_pings_and_the_stop_still_finishes(loop_name: &str) -> Duration {
    let mut rig = Rig::start(|c| c);
    rig.wait_healthy();

    let before = rig.notify.notices().len();
    let asked = Instant::now();
    std::fs::write(&rig.hang_file, format!("{loop_name}\n")).unwrap();
    let sensor = &mut rig.sensor;
    let Some((at, _)) = rig.notify.wait_from(
        before,
        START,
        || Rig::stream(sensor),
        |n| stalled_status_names(n, loop_name),
    ) else {
        panic!(
            "STATUS never named {loop_name} as stalled: {:?}\n{}",
            rig.notify.notices(),
            rig.gw.log()
        );
    };
    let log = rig.gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("debug_hang") && l.contains(loop_name)),
        "the hook did not hang {loop_name}:\n{log}"
    );
    let notices = rig.notify.notices();
    // The hang happens at the loop's first beat after the file is written, so measuring from
    // the write can only make the figure larger.
    let last_ping = notices[before..at]
        .iter()
        .rev()
        .find(|n| n.is_ping())
        .map_or(asked, |n| n.at);
    let stopped_after = last_ping.saturating_duration_since(asked);
    eprintln!("{loop_name}: last ping {stopped_after:?} after the hang");
    assert!(
        stopped_after <= WATCHDOG / 2,
        "{loop_name} hung, yet the pings went on for {stopped_after:?}: {:?}",
        &notices[before..]
    );

    // With the uplink hung nothing is acknowledged, so no row may leave the outbox: every
    // message committed before the abandoned stop must still be there after it.
    let data = rig.gw.dir.join("data");
    let committed = (loop_name == "uplink").then(|| stored_ids(&data));

    let term = Instant::now();
    let status = rig.gw.terminate_within(STOP_LIMIT);
    eprintln!("{loop_name}: SIGTERM to exit {:?}", term.elapsed());
    assert!(
        !status.success(),
        "a stop that abandoned {loop_name} must not look clean: {status:?}"
    );
    let log = rig.gw.log();
    let abandoned = log
        .lines()
        .find(|l| l.contains("event=\"shutdown_abandoned\""))
        .unwrap_or_else(|| panic!("no shutdown_abandoned line:\n{log}"));
    assert!(
        abandoned.contains("ERROR") && abandoned.contains(loop_name),
        "{abandoned}"
    );
    if let Some(committed) = committed {
        let kept = stored_ids(&data);
        assert!(!committed.is_empty(), "the hung uplink left nothing queued");
        let lost: Vec<&String> = committed.difference(&kept).collect();
        assert!(
            lost.is_empty(),
            "committed rows lost by the abandoned stop: {lost:?}"
        );
        eprintln!("{loop_name}: {} committed rows kept", committed.len());
    }
    let later = rig.notify.notices();
    assert!(
        later[at..].iter().all(|n| !n.is_ping()),
        "pinged again with {loop_name} hung: {:?}",
        &later[at..]
    );
    stopped_after
}

#[test]
fn a_hung_poller_stops_the_pings_within_half_the_watchdog_interval_and_sigterm_still_ends_it() {
    hang_stops_the_pings_and_the_stop_still_finishes("poller:dev");
}

#[test]
fn a_hung_serial_task_stops_the_pings_within_half_the_watchdog_interval_and_sigterm_still_ends_it()
{
    hang_stops_the_pings_and_the_stop_still_finishes("poller:air");
}

#[test]
fn a_hung_pipeline_stops_the_pings_within_half_the_watchdog_interval_and_sigterm_still_ends_it() {
    hang_stops_the_pings_and_the_stop_still_finishes("pipeline");
}

#[test]
fn a_hung_outbox_writer_stops_the_pings_within_half_the_watchdog_interval_and_sigterm_still_ends_it(
) {
    hang_stops_the_pings_and_the_stop_still_finishes("outbox writer");
}

#[test]
fn a_hung_uplink_stops_the_pings_within_half_the_watchdog_interval_and_sigterm_still_ends_it() {
    hang_stops_the_pings_and_the_stop_still_finishes("uplink");
}

#[test]
fn a_hung_broker_link_stops_the_pings_within_half_the_watchdog_interval_and_sigterm_still_ends_it()
{
    hang_stops_the_pings_and_the_stop_still_finishes("broker link");
}

#[test]
fn without_a_hang_the_pings_go_on_idle_with_a_silent_sensor_and_under_a_burst_of_forwards() {
    const BURST: usize = 20_000;
    // Idle: the Modbus device polled every 5 s, the sensor silent (it goes offline).
    let mut rig = Rig::start(|mut c| {
        c.body = c.body.replace("interval = \"200ms\"", "interval = \"5s\"");
        c.with("[[forward]]\nfilter = \"bench/#\"\n")
    });
    rig.notify.wait(START, "READY=1", |n| n.has_line("READY=1"));
    let ready = rig.notify.notices().len();
    let idle_from = Instant::now();
    assert!(
        rig.notify
            .wait_from(
                ready,
                START,
                || {},
                |n| n.at >= idle_from + WATCHDOG * 2 && n.is_ping()
            )
            .is_some(),
        "pings stopped while idle: {:?}\n{}",
        rig.notify.notices(),
        rig.gw.log()
    );
    rig.notify.wait(START, "the silent sensor offline", |n| {
        n.status()
            .is_some_and(|s| s.starts_with("1/2 devices online"))
    });

    // Load: a burst of QoS 1 publishes forwarded through the outbox to upstream.
    let publisher = burst(rig.gw.broker_port, "bench/data", BURST, 1, 100);
    let done = publisher.wait_for(
        "every message acknowledged",
        Duration::from_secs(180),
        |l| l.starts_with("ACKED") || l.starts_with("TIMEOUT") || l.starts_with("DISCONNECTED"),
    );
    assert!(done.starts_with("ACKED"), "publisher: {done}");
    assert!(
        rig.notify.more_pings(2, WATCHDOG, || {}),
        "no ping after the burst"
    );

    let notices = rig.notify.notices();
    let stalls: Vec<&Notice> = notices
        .iter()
        .filter(|n| n.status().is_some_and(|s| s.starts_with("STALLED")))
        .collect();
    assert!(stalls.is_empty(), "a false stall: {stalls:?}");
    let pings: Vec<Instant> = notices[ready..]
        .iter()
        .filter(|n| n.is_ping())
        .map(|n| n.at)
        .collect();
    let gap = longest_gap(&pings);
    eprintln!(
        "{} pings over {:?}, longest gap {gap:?}",
        pings.len(),
        idle_from.elapsed()
    );
    assert!(gap < WATCHDOG / 2, "pings {gap:?} apart without a hang");
    let status = rig.gw.terminate_within(STOP_LIMIT);
    assert!(status.success(), "{status:?}\n{}", rig.gw.log());
    assert!(!rig.gw.log().contains("shutdown_abandoned"));
}
