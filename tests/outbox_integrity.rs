//! The outbox's integrity with the real binary and real files: committed rows that a damaged
//! WAL or a truncated main file took away are detected at the next start, logged at error level
//! with their count (`event="outbox_rows_lost"`), and the gateway starts anyway; a kill -9 in
//! the middle of a fast drain resends at most the in-flight window plus the acks of one ack
//! interval.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use support::gateway::{stored_ids, Gateway, GatewayConfig, SimDevice};
use support::modbus::ModbusSim;
use support::mosquitto::Mosquitto;
use support::mqtt::MqttWatcher;
use support::relay::{Mode, Relay};
use support::wait_until;

/// Rows queued before the crash: a realistic backlog, several WAL checkpoints' worth.
const BACKLOG: i64 = 20_000;
const DEVICES: usize = 8;

/// Rows in the outbox, read as another process would (read-only).
fn rows(data: &Path) -> i64 {
    count(data, "SELECT COUNT(*) FROM outbox")
}

/// Device status messages saying `offline` in the outbox.
fn offline_statuses(data: &Path) -> i64 {
    count(
        data,
        "SELECT COUNT(*) FROM outbox WHERE topic LIKE '%/status' AND payload = CAST('offline' AS BLOB)",
    )
}

/// A `SELECT COUNT(*) …` on the outbox, read-only; 0 while there is no database.
fn count(data: &Path, sql: &'static str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let url = format!("sqlite://{}?mode=ro", data.join("outbox.db").display());
        let Ok(mut c) = sqlx::SqliteConnection::connect(&url).await else {
            return 0;
        };
        let n: Result<(i64,), _> = sqlx::query_as(sql).fetch_one(&mut c).await;
        n.map_or(0, |(n,)| n)
    })
}

/// `name=123` from a log line.
fn field(line: &str, name: &str) -> i64 {
    let key = format!(" {name}=");
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + key.len();
    line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {line}"))
}

/// A gateway with no upstream, polling DEVICES simulated devices every 10 ms. No periodic stats
/// snapshot: once the devices are offline nothing more is stored, so the crash does not land
/// between a commit and its high-water mark.
fn spec(sim_port: u16) -> GatewayConfig {
    let mut spec = GatewayConfig::standard().stats_interval("1h");
    for i in 0..DEVICES {
        let dev = SimDevice::new(sim_port).interval("10ms").to_string();
        spec = spec.with(dev.replacen("name = \"dev\"", &format!("name = \"dev{i}\""), 1));
    }
    spec
}

/// Runs the gateway until the outbox holds BACKLOG rows, stops the devices, waits until the
/// count stands still, kills the gateway with SIGKILL and returns the count it had.
fn crash_with_backlog(dir: &Path) -> (GatewayConfig, i64) {
    let sim = ModbusSim::start(1);
    let spec = spec(sim.port);
    let mut gw = fill(&spec, dir, sim);
    gw.kill9();
    (spec, rows(&dir.join("data")))
}

/// Starts the gateway and returns it once the outbox holds BACKLOG rows and, the devices gone,
/// the count stands still.
fn fill(spec: &GatewayConfig, dir: &Path, sim: ModbusSim) -> Gateway {
    let gw: Gateway = spec.start(dir);
    let data = dir.join("data");
    wait_until(
        Duration::from_secs(180),
        "the backlog in the outbox",
        || rows(&data) >= BACKLOG,
    );
    drop(sim);
    // Each device going offline stores its status and a fresh stats snapshot: wait for all.
    wait_until(
        Duration::from_secs(180),
        "every device offline in the outbox",
        || offline_statuses(&data) >= DEVICES as i64,
    );
    let mut last = -1;
    loop {
        // A settle period, not a synchronisation: the count must stay put across more than one
        // group commit (100 ms) after the devices are gone.
        std::thread::sleep(Duration::from_millis(700));
        let n = rows(&data);
        if n == last {
            break;
        }
        last = n;
    }
    gw
}

fn check_loss_reported(gw: &Gateway, before: i64) {
    let line = gw.wait_log(&["outbox_rows_lost"]);
    assert!(line.contains("ERROR"), "{line}");
    let (lost, found, expected) = (
        field(&line, "lost"),
        field(&line, "found"),
        field(&line, "expected"),
    );
    eprintln!("rows before the crash {before}; reported lost {lost}, found {found}");
    assert_eq!(expected, before, "{line}");
    assert!(lost > 0, "{line}");
    assert_eq!(lost + found, before, "{line}");
    gw.wait_log(&["outbox open"]);
}

#[test]
fn garbage_in_the_wal_after_a_kill_with_a_backlog_is_detected_logged_with_a_count_and_the_gateway_starts(
) {
    let dir = tempfile::tempdir().unwrap();
    let (spec, before) = crash_with_backlog(dir.path());
    let wal = dir.path().join("data/outbox.db-wal");
    let size = std::fs::metadata(&wal).unwrap().len() as usize;
    assert!(size > 0, "the backlog is (partly) in the WAL");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let garbage: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&wal, garbage).unwrap();
    let gw = spec.start(dir.path());
    check_loss_reported(&gw, before);
}

#[test]
fn a_main_file_truncated_to_zero_bytes_after_a_kill_is_detected_logged_with_a_count_and_the_gateway_starts(
) {
    let dir = tempfile::tempdir().unwrap();
    let (spec, before) = crash_with_backlog(dir.path());
    std::fs::write(dir.path().join("data/outbox.db"), b"").unwrap();
    let gw = spec.start(dir.path());
    check_loss_reported(&gw, before);
}

#[test]
fn a_kill_in_the_middle_of_a_fast_drain_resends_at_most_the_window_and_the_uncommitted_acks() {
    let sim = ModbusSim::start(1);
    let mosq = Mosquitto::start();
    let relay = Relay::start(mosq.addr());
    relay.set_mode(Mode::Refuse);
    let up = MqttWatcher::connect(mosq.port, "fieldbridge/#");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(sim.port).upstream(relay.port());
    // A long group commit, as on an SD card: a drain's acks must not wait for it.
    spec.commit_interval = Some("1s");
    let mut gw = fill(&spec, dir.path(), sim);
    let want = stored_ids(&dir.path().join("data"));
    assert!(want.len() as i64 >= BACKLOG);

    let counts = |up: &MqttWatcher| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for msg in up.messages() {
            let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap_or_default();
            if let Some(id) = v["id"].as_str().filter(|id| want.contains(*id)) {
                *m.entry(id.to_owned()).or_default() += 1;
            }
        }
        m
    };
    relay.set_mode(Mode::Pass);
    wait_until(Duration::from_secs(30), "the drain to start", || {
        !counts(&up).is_empty()
    });
    let t0 = Instant::now();
    let half = want.len() / 2;
    wait_until(
        Duration::from_secs(120),
        "half of the backlog upstream",
        || up.messages().len() >= half,
    );
    gw.kill9();
    let drained = counts(&up).len();
    let rate = drained as f64 / t0.elapsed().as_secs_f64();
    let gw = spec.start(dir.path());
    wait_until(
        Duration::from_secs(180),
        "the whole backlog upstream",
        || counts(&up).len() == want.len(),
    );
    let got = counts(&up);
    let dups: usize = got.values().map(|n| n - 1).sum();
    // the default inflight + the gateway's status + the acks not yet committed when the kill came
    // (fewer than a batch waiting for the group commit, or the acks of one ack interval of
    // 10 ms) and those of the commit being written; 100 ms leaves room for a loaded test
    // machine and a debug build, and is a tenth of the commit interval that held acks back
    // before.
    let window = fieldbridge::config::raw::DEFAULT_INFLIGHT as usize + 1;
    let bound = window + fieldbridge::outbox::ACK_BATCH + (rate * 0.100) as usize;
    eprintln!(
        "backlog {}, {drained} drained before the kill at {rate:.0} msg/s; {dups} duplicates (bound {bound}; holding acks for the 1 s commit interval would allow up to {})",
        want.len(),
        window + rate as usize
    );
    assert!(dups <= bound, "{dups} duplicates > {bound}");
    drop(gw);
}
