//! The gateway as a systemd service, without systemd: the sd_notify protocol (READY, STATUS,
//! WATCHDOG) read from a test `NOTIFY_SOCKET` (hung loops: `tests/watchdog.rs`), journal entries read from a test listener on the
//! journal socket path inside a private mount namespace, and `fieldbridge status` against a
//! running daemon. Devices are pymodbus simulators; the upstream is mosquitto.

mod support;

use std::net::TcpStream;
use std::time::Duration;

use support::gateway::{fieldbridge, GatewayConfig, SimDevice};
use support::modbus::ModbusSim;
use support::mosquitto::Mosquitto;
use support::notify::NotifyListener;
use support::process::text;
use support::{free_port, wait_until};

/// `fieldbridge status --timeout 2s --config CFG`.
fn status(cfg: &std::path::Path) -> std::process::Output {
    fieldbridge([
        "status",
        "--timeout",
        "2s",
        "--config",
        cfg.to_str().unwrap(),
    ])
}

#[test]
fn ready_follows_the_listening_broker_and_the_outbox_and_a_healthy_gateway_keeps_pinging() {
    let dir = tempfile::tempdir().unwrap();
    let sim = ModbusSim::start(1);
    let notify = NotifyListener::bind(dir.path());
    let spec = GatewayConfig::standard()
        .with(SimDevice::new(sim.addr().port()))
        .env("NOTIFY_SOCKET", notify.path())
        .env("WATCHDOG_USEC", "1000000")
        .env("RUST_LOG", "info");
    let gw = spec.spawn(dir.path());

    notify.wait(Duration::from_secs(30), "READY=1", |n| {
        n.has_line("READY=1")
    });
    // READY means the broker already accepts clients and the outbox database exists.
    assert!(
        TcpStream::connect(("127.0.0.1", spec.broker_port)).is_ok(),
        "broker not listening at READY"
    );
    assert!(dir.path().join("data").read_dir().unwrap().next().is_some());
    notify.wait(
        Duration::from_secs(20),
        "STATUS with the device online",
        |n| {
            n.status()
                .is_some_and(|s| s.starts_with("1/1 devices online"))
        },
    );
    assert!(
        notify.more_pings(3, Duration::from_secs(5), || {}),
        "a healthy gateway stopped pinging: {:?}\n{}",
        notify.notices(),
        gw.log()
    );
    drop((gw, sim));
}

#[test]
fn status_command_reports_devices_outbox_and_upstream_of_the_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let spec = GatewayConfig::standard()
        .upstream(mosq.addr().port())
        .with(SimDevice::new(sim.addr().port()).interval("200ms"));
    let gw = spec.spawn(dir.path());
    let cfg = gw.config.clone();
    let mut last = String::new();
    wait_until(
        Duration::from_secs(30),
        "status showing the device online and upstream connected",
        || {
            let out = status(&cfg);
            last = text(&out);
            out.status.success()
                && last.contains("devices: 1/1 online")
                && last.contains("upstream: connected")
                && last.contains("outbox: ")
        },
    );
    let json = fieldbridge(["status", "--json", "--config", cfg.to_str().unwrap()]);
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["devices"]["dev"], true);
    assert!(v["outbox"]["rows"].is_u64());
    drop((gw, sim, mosq));
}

#[test]
fn status_right_after_start_and_after_every_state_change_shows_the_state_not_the_start_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = ModbusSim::start(1);
    let mut mosq = Mosquitto::start();
    // A periodic snapshot far away: only a snapshot on each change can show the changes.
    let spec = GatewayConfig::standard()
        .stats_interval("1h")
        .upstream(mosq.addr().port())
        .with(SimDevice::new(sim.addr().port()).interval("200ms"));
    let gw = spec.spawn(dir.path());
    let cfg = gw.config.clone();
    let mut last = String::new();
    let mut shows = |what: &str, parts: &[&str]| {
        let ok = support::eventually(Duration::from_secs(20), || {
            let out = status(&cfg);
            last = text(&out);
            out.status.success() && parts.iter().all(|p| last.contains(p))
        });
        assert!(ok, "status never showed {what}:\n{last}\n{}", gw.log());
    };
    shows(
        "the device online and upstream connected",
        &["devices: 1/1 online", "upstream: connected"],
    );
    sim.mute();
    shows(
        "the device offline",
        &["devices: 0/1 online", "dev", "offline"],
    );
    mosq.kill();
    shows("upstream disconnected", &["upstream: disconnected"]);
    sim.unmute();
    shows("the device online again", &["devices: 1/1 online"]);
}

#[test]
fn status_command_fails_clearly_when_no_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GatewayConfig::standard()
        .with(SimDevice::new(free_port()))
        .write(dir.path());
    let out = status(&cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is fieldbridge running"), "{err}");
}

/// Reads journal entries the way journald does (native protocol: `KEY=value` lines, or a
/// length-prefixed binary value; large entries arrive as a memfd) and appends each as one JSON
/// object per line. Like journald it discards an empty datagram: systemd-journal-logger sends
/// one at startup to probe the socket, and it is no entry.
const JOURNAL_LISTENER: &str = r#"
import array, json, os, socket, struct, sys
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
open(out + ".ready", "w").close()
with open(out, "a") as f:
    while True:
        data, anc, _, _ = s.recvmsg(1 << 20, socket.CMSG_SPACE(64))
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
                for fd in fds:
                    os.lseek(fd, 0, 0)
                    chunks = []
                    while True:
                        c = os.read(fd, 1 << 16)
                        if not c:
                            break
                        chunks.append(c)
                    data = b"".join(chunks)
                    os.close(fd)
        if not data:
            continue
        fields, i = {}, 0
        while i < len(data):
            nl = data.index(b"\n", i)
            line = data[i:nl]
            if b"=" in line:
                k, v = line.split(b"=", 1)
                i = nl + 1
            else:
                k = line
                (n,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
                v = data[nl + 9 : nl + 9 + n]
                i = nl + 9 + n + 1
            fields[k.decode()] = v.decode("utf-8", "replace")
        f.write(json.dumps(fields) + "\n")
        f.flush()
"#;

#[test]
fn under_journald_events_carry_device_point_unit_error_and_event_fields() {
    let dir = tempfile::tempdir().unwrap();
    let sim = ModbusSim::start(1);
    // Nothing listens upstream: the uplink logs upstream_connect_failed.
    // Address 150 is outside the simulator's map: the device answers with exception 02.
    let device = SimDevice::new(sim.addr().port()).points(
        "[[devices.points]]\nname = \"missing\"\ntable = \"holding\"\naddress = 150\ntype = \"u16\"\n",
    );
    let spec = GatewayConfig::standard().upstream(free_port()).with(device);
    let listener = dir.path().join("listener.py");
    std::fs::write(&listener, JOURNAL_LISTENER).unwrap();
    let entries = dir.path().join("journal.jsonl");
    let stderr = dir.path().join("stderr.log");
    // In a private mount namespace a tmpfs hides the host's /run/systemd, so the listener can
    // own the journal socket path without touching the host.
    let script = r#"
set -e
if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; else mount -t tmpfs tmpfs /run; fi
mkdir -p /run/systemd/journal
python3 "$1" /run/systemd/journal/socket "$2" &
i=0; while [ ! -e "$2.ready" ]; do i=$((i+1)); [ $i -lt 500 ] || exit 3; sleep 0.01; done
exec 2>"$3"
export JOURNAL_STREAM="$(stat -c %d:%i "$3")"
shift 3
exec "$@"
"#;
    // The gateway's command line follows the script's three arguments.
    let _gw = spec
        .prefix([
            "unshare".as_ref(),
            "--mount".as_ref(),
            "--propagation".as_ref(),
            "private".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            script.as_ref(),
            "sh".as_ref(),
            listener.as_os_str(),
            entries.as_os_str(),
            stderr.as_os_str(),
        ])
        .env("RUST_LOG", "debug,rumqttc=warn,sqlx=warn")
        .process_group()
        .spawn(dir.path());

    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&entries)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let find = |event: &str| read().into_iter().find(|e| e["EVENT"] == event);
    wait_until(
        Duration::from_secs(30),
        "point_exception and upstream_connect_failed in the journal",
        || find("point_exception").is_some() && find("upstream_connect_failed").is_some(),
    );
    let p = find("point_exception").unwrap();
    assert_eq!(p["DEVICE"], "dev");
    assert_eq!(p["POINT"], "missing");
    assert_eq!(p["UNIT_ID"], "1");
    assert!(p["ERROR"].as_str().unwrap().contains("exception"), "{p}");
    assert_eq!(p["PRIORITY"], "7");
    assert_eq!(p["MESSAGE"], "point read failed");
    assert_eq!(p["SYSLOG_IDENTIFIER"], "fieldbridge");
    let u = find("upstream_connect_failed").unwrap();
    assert_eq!(u["PRIORITY"], "4");
    assert!(!u["ERROR"].as_str().unwrap_or("").is_empty(), "{u}");

    // The device goes away: device_offline with its name and the reason.
    drop(sim);
    wait_until(
        Duration::from_secs(30),
        "device_offline in the journal",
        || find("device_offline").is_some(),
    );
    let d = find("device_offline").unwrap();
    assert_eq!(d["DEVICE"], "dev");
    assert!(!d["ERROR"].as_str().unwrap_or("").is_empty(), "{d}");
    // Every entry is one a journal reader can show: a message and a priority.
    for e in read() {
        assert!(
            e["MESSAGE"].as_str().is_some_and(|m| !m.is_empty()) && e["PRIORITY"].is_string(),
            "an entry without MESSAGE or PRIORITY: {e}"
        );
    }
    // Nothing reached stderr: under journald the journal is the only destination.
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(!err.contains("device_offline"), "{err}");
}

#[test]
fn a_reload_right_at_ready_says_reloading_then_ready_and_never_stops_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sim = ModbusSim::start(1);
    let notify = NotifyListener::bind(dir.path());
    let spec = GatewayConfig::standard()
        .with(SimDevice::new(sim.addr().port()))
        .env("NOTIFY_SOCKET", notify.path());
    let mut gw = spec.spawn(dir.path());
    let (ready, _) = notify
        .wait_from(0, Duration::from_secs(30), || {}, |n| n.has_line("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; got {:?}", notify.notices()));
    // At once, as `systemctl reload` right after start would: the handler is already there.
    gw.reload_with(&gw.config_text());
    let (at, reloading) = notify
        .wait_from(
            ready + 1,
            Duration::from_secs(20),
            || {},
            |n| n.has_line("RELOADING=1"),
        )
        .unwrap_or_else(|| panic!("no RELOADING=1; got {:?}", notify.notices()));
    assert!(
        reloading
            .text
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{}",
        reloading.text
    );
    let again = notify.wait_from(
        at + 1,
        Duration::from_secs(20),
        || {},
        |n| n.has_line("READY=1"),
    );
    assert!(
        again.is_some(),
        "no READY=1 after the reload: {:?}",
        notify.notices()
    );
    gw.wait_log(&["config_reloaded", "devices_unchanged=1"]);
    assert!(gw.try_wait().is_none(), "the daemon exited:\n{}", gw.log());
    let status = gw.terminate();
    assert!(status.success(), "{status}");
}

/// The scheduling policy of every thread of process `pid`, by thread name: field 41 of
/// `/proc/<pid>/task/<tid>/stat` (3 is `SCHED_BATCH`).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // The name (field 2) is in parentheses and may hold spaces: count from the last ')'.
        let (head, rest) = stat.rsplit_once(')').unwrap();
        let name = head.split_once('(').unwrap().1.to_string();
        let policy = rest
            .split_whitespace()
            .nth(41 - 3)
            .unwrap()
            .parse()
            .unwrap();
        out.push((name, policy));
    }
    out
}

#[test]
fn every_thread_of_a_running_gateway_is_sched_batch_so_its_wake_ups_preempt_nothing() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayConfig::standard()
        .upstream(mosq.port)
        .with(SimDevice::new(sim.port))
        .start(dir.path());
    gw.wait_log(&["connected upstream"]);
    let threads = thread_policies(gw.pid().as_raw() as u32);
    // The runtime's workers, SQLite's, the embedded broker's, and the main thread at least.
    assert!(threads.len() >= 5, "{threads:?}");
    let other: Vec<_> = threads.iter().filter(|(_, p)| *p != 3).collect();
    assert!(other.is_empty(), "threads not SCHED_BATCH: {other:?}");
}
