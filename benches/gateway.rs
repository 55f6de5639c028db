//! Benchmarks that print figures (not pass/fail): whole-path ingest rate with CPU and RSS, drain
//! rate of a backlog to mosquitto, idle RSS. Run with `cargo bench --bench gateway`; knobs:
//! FB_BENCH_DEVICES (10), FB_BENCH_POINTS (100), FB_BENCH_INTERVAL_MS (100), FB_BENCH_SECONDS (15),
//! FB_BENCH_DRAIN (100000). Needs mosquitto (scripts/test installs it).

#[path = "../tests/common/peers.rs"]
mod peers;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldbridge::demo::{serve_sim, SimKind};
use fieldbridge::outbox::{Message, Outbox};
use peers::{free_port, Mosquitto};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Counts PUBLISHes on `filter` (QoS 1) without storing them.
fn counter(port: u16, filter: &'static str) -> Arc<AtomicU64> {
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    let ready = Arc::new(AtomicU64::new(0));
    let r = ready.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let id = format!("bench-counter-{}", NEXT.fetch_add(1, Ordering::Relaxed));
            let mut o = MqttOptions::new(id, "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(30));
            o.set_inflight(1000);
            let (client, mut ev) = AsyncClient::new(o, 100);
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => r.store(1, Ordering::SeqCst),
                    Ok(Event::Incoming(Incoming::Publish(p))) if !p.retain => {
                        if !p.topic.ends_with("/status") {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    });
    while ready.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    n
}

struct Proc {
    child: Child,
}

impl Proc {
    fn start(dir: &Path, config: &str) -> Proc {
        let cfg = dir.join("fieldbridge.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc { child }
    }
    /// (user+system CPU seconds, RSS in KiB) from /proc.
    fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (ticks as f64 / 100.0, rss)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(
    data: &Path,
    upstream: u16,
    devices: &[(String, u16)],
    points: u64,
    interval_ms: u64,
) -> String {
    let mut s = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\n\n[broker]\nlisten = \"127.0.0.1:{}\"\n\n[upstream]\nhost = \"127.0.0.1\"\nport = {upstream}\ninflight = 256\n\n",
        data.display(),
        free_port()
    );
    for (name, port) in devices {
        let _ = write!(
            s,
            "[[devices]]\nname = \"{name}\"\nkind = \"modbus_tcp\"\nhost = \"127.0.0.1\"\nport = {port}\ninterval = \"{interval_ms}ms\"\n\n"
        );
        for p in 0..points {
            let _ = write!(s, "[[devices.points]]\nname = \"p{p}\"\ntable = \"holding\"\naddress = {p}\ntype = \"u16\"\n\n");
        }
    }
    s
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

fn main() {
    // `cargo bench` passes --bench; anything else (cargo test --all-targets, --list) must not
    // start a minute-long measurement.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n_dev = env("FB_BENCH_DEVICES", 10);
    let n_pts = env("FB_BENCH_POINTS", 100).min(99);
    let interval = env("FB_BENCH_INTERVAL_MS", 100);
    let secs = env("FB_BENCH_SECONDS", 15);
    let drain_n = env("FB_BENCH_DRAIN", 100_000);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = CancellationToken::new();
    let devices: Vec<(String, u16)> = (0..n_dev)
        .map(|i| {
            let addr = rt
                .block_on(serve_sim(SimKind::Meter, stop.clone()))
                .unwrap();
            (format!("dev{i}"), addr.port())
        })
        .collect();
    let mosq = Mosquitto::start();

    // 1. Ingest through the whole path, upstream online.
    {
        let dir = tempfile::tempdir().unwrap();
        let up = counter(mosq.port, "fieldbridge/bench/#");
        let gw = Proc::start(
            dir.path(),
            &config(
                &dir.path().join("data"),
                mosq.port,
                &devices,
                n_pts,
                interval,
            ),
        );
        wait_for("first readings upstream", Duration::from_secs(30), || {
            up.load(Ordering::Relaxed) > 0
        });
        std::thread::sleep(Duration::from_secs(3)); // warm-up, not synchronisation
        let (cpu0, _) = gw.usage();
        let n0 = up.load(Ordering::Relaxed);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let el = t0.elapsed().as_secs_f64();
        let n1 = up.load(Ordering::Relaxed);
        let (cpu1, rss) = gw.usage();
        let offered = (n_dev * n_pts) as f64 * 1000.0 / interval as f64;
        println!(
            "ingest: offered {offered:.0} readings/s ({n_dev} devices x {n_pts} points every {interval} ms); delivered upstream {:.0} msg/s; gateway CPU {:.1}% of one core; RSS {:.1} MiB",
            (n1 - n0) as f64 / el,
            (cpu1 - cpu0) / el * 100.0,
            rss as f64 / 1024.0
        );
    }

    // 2. Drain a backlog queued during an outage.
    {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        rt.block_on(async {
            let settings = fieldbridge::config::OutboxSettings {
                max_rows: 10_000_000,
                max_bytes: 1 << 34,
                commit_interval: Duration::from_millis(0),
                max_age: None,
                overflow: fieldbridge::config::Overflow::DropOldest,
            };
            let ob = Outbox::open(&data, &settings).await.unwrap();
            let mut seq = 0u64;
            while seq < drain_n {
                let batch: Vec<Message> = (0..5000.min(drain_n - seq))
                    .map(|i| Message {
                        topic: format!("fieldbridge/bench/dev{}/p{}", i % 10, i % 100),
                        payload: format!(
                            r#"{{"id":"bench-{}","value":{},"unit":"kWh","ts":1795320046879,"quality":"good"}}"#,
                            seq + i,
                            i
                        )
                        .into_bytes(),
                        retain: false,
                    })
                    .collect();
                seq += batch.len() as u64;
                ob.append(batch).await.unwrap();
            }
            ob.flush().await.unwrap();
        });
        let up = counter(mosq.port, "fieldbridge/bench/#");
        let gw = Proc::start(dir.path(), &config(&data, mosq.port, &[], 0, interval));
        let took = wait_for("the backlog to drain", Duration::from_secs(600), || {
            up.load(Ordering::Relaxed) >= drain_n
        });
        let (cpu, rss) = gw.usage();
        println!(
            "drain: {drain_n} queued messages delivered to mosquitto (QoS 1) in {:.2} s = {:.0} msg/s; gateway CPU {:.1} s; RSS {:.1} MiB",
            took.as_secs_f64(),
            drain_n as f64 / took.as_secs_f64(),
            cpu,
            rss as f64 / 1024.0
        );
    }

    // 3. Idle RSS with one device.
    {
        let dir = tempfile::tempdir().unwrap();
        let up = counter(mosq.port, "fieldbridge/bench/#");
        let gw = Proc::start(
            dir.path(),
            &config(&dir.path().join("data"), mosq.port, &devices[..1], 10, 5000),
        );
        wait_for("first readings upstream", Duration::from_secs(30), || {
            up.load(Ordering::Relaxed) > 0
        });
        std::thread::sleep(Duration::from_secs(10));
        let (cpu, rss) = gw.usage();
        println!(
            "idle: one device, 10 points every 5 s: RSS {:.1} MiB after 10 s, CPU {:.2} s total",
            rss as f64 / 1024.0,
            cpu
        );
    }
    stop.cancel();
}
