//! Benchmarks that print figures (not pass/fail). Run with `cargo bench --bench gateway`.
//! Sections (FB_BENCH_ONLY=comma list, default all): ingest, fsync, drain, bridge, queued, idle,
//! broker (local clients through the embedded broker and its guard, against mosquitto).
//! Knobs: FB_BENCH_DEVICES (10), FB_BENCH_POINTS (99), FB_BENCH_INTERVAL_MS (100),
//! FB_BENCH_SECONDS (15), FB_BENCH_DRAIN (100000; e.g. "100000,1000000"), FB_BENCH_QUEUED
//! (1000000). Needs mosquitto and strace (scripts/test installs mosquitto; strace for fsync).

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldbridge::cli::demo::{serve_sim, SimKind};
use fieldbridge::flow::Message;
use fieldbridge::outbox::Outbox;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use support::free_port;
use support::mosquitto::Mosquitto;
use support::relay::{Mode, Relay};
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

/// One QoS 1 publisher (64-byte payloads, window 100) on `bench/flood` for `secs`, counted by a
/// QoS 1 subscriber: (delivered msg/s, sent).
fn flood(port: u16, secs: u64) -> (f64, u64) {
    let got = counter(port, "bench/flood");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sent = rt.block_on(async move {
        let mut o = MqttOptions::new("bench-flood", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(100);
        let (client, mut ev) = AsyncClient::new(o, 100);
        let pump = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
        let end = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut n = 0u64;
        while tokio::time::Instant::now() < end {
            if client
                .publish("bench/flood", QoS::AtLeastOnce, false, vec![b'x'; 64])
                .await
                .is_err()
            {
                break;
            }
            n += 1;
        }
        let _ = client.disconnect().await;
        pump.abort();
        n
    });
    // The subscriber may still be taking what was in flight: wait until it has everything
    // (or 10 s), then count.
    let end = Instant::now() + Duration::from_secs(10);
    while got.load(Ordering::Relaxed) < sent && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5)); // polling interval of a deadline wait
    }
    (got.load(Ordering::Relaxed) as f64 / secs as f64, sent)
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
        "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\nstats_interval = \"1s\"\n\n[broker]\nlisten = \"127.0.0.1:{}\"\n\n[upstream]\nhost = \"127.0.0.1\"\nport = {upstream}\ninflight = 256\n\n",
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

/// The outbox's commit counter from the gateway's latest retained stats upstream.
fn commits(port: u16) -> u64 {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "fieldbridge/bench/stats", "-C", "1", "-W", "10"])
        .output()
        .expect("mosquitto_sub");
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v["outbox"]["commits"].as_u64())
        .unwrap_or(0)
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// Fills `data` with `n` reading-sized messages, as an outage would.
fn prefill(rt: &tokio::runtime::Runtime, data: &Path, n: u64) {
    rt.block_on(async {
        let settings = fieldbridge::config::OutboxSettings {
            max_rows: 100_000_000,
            max_bytes: 1 << 40,
            commit_interval: Duration::from_millis(0),
            max_age: None,
            overflow: fieldbridge::config::Overflow::DropOldest,
        };
        let ob = Outbox::open(data, &settings).await.unwrap();
        let mut seq = 0u64;
        while seq < n {
            let batch: Vec<Message> = (0..20_000.min(n - seq))
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
}

/// A mosquitto of our own config (the bridge comparison needs full control of it).
struct OwnMosquitto {
    child: Child,
}

impl OwnMosquitto {
    fn start(dir: &Path, port: u16, extra: &str) -> OwnMosquitto {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("m.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\nlog_dest file {}/m.log\n{extra}",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("mosquitto", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        OwnMosquitto { child }
    }
}

impl Drop for OwnMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `n` messages at QoS 1 into the broker on `port`; returns when all are acked.
fn publish_all(rt: &tokio::runtime::Runtime, port: u16, n: u64) {
    rt.block_on(async move {
        let mut o = MqttOptions::new("bench-publisher", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_inflight(1000);
        let (client, mut ev) = AsyncClient::new(o, 2000);
        tokio::spawn(async move {
            for i in 0..n {
                let payload = format!(
                    r#"{{"id":"bench-{i}","value":{i},"unit":"kWh","ts":1795320046879,"quality":"good"}}"#
                );
                client
                    .publish(format!("fieldbridge/bench/dev{}/p{}", i % 10, i % 100), QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
        });
        let mut acked = 0;
        while acked < n {
            if let Ok(Event::Incoming(Incoming::PubAck(_))) = ev.poll().await {
                acked += 1;
            }
        }
    });
}

fn main() {
    // `cargo bench` passes --bench; anything else (cargo test --all-targets, --list) must not
    // start a minute-long measurement.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let only = std::env::var("FB_BENCH_ONLY").unwrap_or_default();
    let run = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    let n_dev = env("FB_BENCH_DEVICES", 10);
    let n_pts = env("FB_BENCH_POINTS", 99).min(99);
    let interval = env("FB_BENCH_INTERVAL_MS", 100);
    let secs = env("FB_BENCH_SECONDS", 15);
    let drains: Vec<u64> = std::env::var("FB_BENCH_DRAIN")
        .unwrap_or_else(|_| "100000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let queued_n = env("FB_BENCH_QUEUED", 1_000_000);

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
    let offered = (n_dev * n_pts) as f64 * 1000.0 / interval as f64;

    if run("ingest") {
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
        let c0 = commits(mosq.port);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let el = t0.elapsed().as_secs_f64();
        let n1 = up.load(Ordering::Relaxed);
        let c1 = commits(mosq.port);
        let (cpu1, rss) = gw.usage();
        println!(
            "commits: {:.1} group commits/s at this rate (each fsyncs the WAL once with synchronous=FULL; from the stats topic, 1 s granularity)",
            c1.saturating_sub(c0) as f64 / el
        );
        println!(
            "ingest: offered {offered:.0} readings/s ({n_dev} devices x {n_pts} points every {interval} ms); delivered upstream {:.0} msg/s; gateway CPU {:.1}% of one core; RSS {:.1} MiB",
            (n1 - n0) as f64 / el,
            (cpu1 - cpu0) / el * 100.0,
            rss as f64 / 1024.0
        );
    }

    if run("fsync") {
        // The gateway runs under `strace --seccomp-bpf`, which stops it only on the traced
        // calls, so tracing does not slow the ingest it measures (attaching with -p would).
        let dir = tempfile::tempdir().unwrap();
        let up = counter(mosq.port, "fieldbridge/bench/#");
        let cfg_path = dir.path().join("fieldbridge.toml");
        std::fs::write(
            &cfg_path,
            config(
                &dir.path().join("data"),
                mosq.port,
                &devices,
                n_pts,
                interval,
            ),
        )
        .unwrap();
        let summary = dir.path().join("strace.txt");
        let t0 = Instant::now();
        let mut tracer = Command::new("strace")
            .args([
                "-f",
                "--seccomp-bpf",
                "-c",
                "-e",
                "trace=fsync,fdatasync",
                "-o",
            ])
            .arg(&summary)
            .arg(env!("CARGO_BIN_EXE_fieldbridge"))
            .args(["run", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace (apt install strace)");
        wait_for("first readings upstream", Duration::from_secs(30), || {
            up.load(Ordering::Relaxed) > 0
        });
        std::thread::sleep(Duration::from_secs(secs));
        let delivered = up.load(Ordering::Relaxed);
        let el = t0.elapsed().as_secs_f64();
        // Killing the traced gateway makes strace write its summary and exit (SIGINT to strace
        // did not stop a command it started).
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &tracer.id().to_string()])
            .status();
        let _ = tracer.wait();
        let text = std::fs::read_to_string(&summary).unwrap_or_default();
        let calls: u64 = text
            .lines()
            .filter(|l| l.ends_with("fsync") || l.ends_with("fdatasync"))
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(3)
                    .and_then(|c| c.parse::<u64>().ok())
            })
            .sum();
        println!(
            "fsync: {:.0} readings/s delivered on average, {:.1} fsync+fdatasync calls/s over the whole run ({el:.0} s; group commit 100 ms)",
            delivered as f64 / el,
            calls as f64 / el
        );
    }

    for &n in drains.iter().filter(|_| run("drain")) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let t = Instant::now();
        prefill(&rt, &data, n);
        let fill = t.elapsed();
        let up = counter(mosq.port, "fieldbridge/bench/#");
        let relay = Relay::start(mosq.addr());
        relay.set_mode(Mode::Refuse);
        let gw = Proc::start(dir.path(), &config(&data, relay.port(), &[], 0, interval));
        std::thread::sleep(Duration::from_secs(2)); // let it start; the link is refused meanwhile
        relay.set_mode(Mode::Pass);
        let took = wait_for("the backlog to drain", Duration::from_secs(1800), || {
            up.load(Ordering::Relaxed) >= n
        });
        let (cpu, rss) = gw.usage();
        println!(
            "drain: {n} queued messages (queued in {:.1} s through the outbox API) delivered to mosquitto (QoS 1) in {:.2} s after the link opened = {:.0} msg/s; gateway CPU {:.1} s; RSS {:.1} MiB",
            fill.as_secs_f64(),
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64(),
            cpu,
            rss as f64 / 1024.0
        );
    }

    for &n in drains.iter().filter(|_| run("bridge")) {
        // mosquitto A bridges bench/# to mosquitto B; A queues while the bridge link is refused.
        let dir = tempfile::tempdir().unwrap();
        let b = Mosquitto::start();
        let relay = Relay::start(b.addr());
        relay.set_mode(Mode::Refuse);
        let a_port = free_port();
        let _a = OwnMosquitto::start(
            &dir.path().join("a"),
            a_port,
            &format!(
                "persistence true\npersistence_location {}/a/\nmax_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 256\n\
                 connection bench-bridge\naddress 127.0.0.1:{}\ntopic fieldbridge/bench/# out 1\ncleansession false\nrestart_timeout 1\n",
                dir.path().display(),
                relay.port()
            ),
        );
        let t = Instant::now();
        publish_all(&rt, a_port, n);
        let fill = t.elapsed();
        let up = counter(b.port, "fieldbridge/bench/#");
        relay.set_mode(Mode::Pass);
        let took = wait_for(
            "the bridge backlog to drain",
            Duration::from_secs(1800),
            || up.load(Ordering::Relaxed) >= n,
        );
        println!(
            "bridge: {n} messages queued in a mosquitto 2.0.11 bridge (persistence on, queue unlimited, inflight 256; queued in {:.1} s) delivered to mosquitto in {:.2} s after the link opened = {:.0} msg/s",
            fill.as_secs_f64(),
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    }

    if run("queued") {
        for n in [0, queued_n] {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            if n > 0 {
                prefill(&rt, &data, n);
            }
            let relay = Relay::start(mosq.addr());
            relay.set_mode(Mode::Refuse);
            let gw = Proc::start(
                dir.path(),
                &config(&data, relay.port(), &devices[..1], 10, 1000),
            );
            std::thread::sleep(Duration::from_secs(5)); // settle, then read RSS
            let (_, rss) = gw.usage();
            let size = std::fs::metadata(data.join("outbox.db"))
                .map(|m| m.len())
                .unwrap_or(0)
                + std::fs::metadata(data.join("outbox.db-wal"))
                    .map(|m| m.len())
                    .unwrap_or(0);
            println!(
                "queued: {n} rows waiting (upstream unreachable), one device polling: RSS {:.1} MiB; database {:.1} MiB on disk",
                rss as f64 / 1024.0,
                size as f64 / 1048576.0
            );
        }
    }

    if run("broker") {
        // Local clients only: one QoS 1 publisher as fast as its window allows, one QoS 1
        // subscriber, both through fieldbridge's guard (the proxy that enforces auth and ACLs)
        // and rumqttd; then the same against mosquitto for scale.
        let dir = tempfile::tempdir().unwrap();
        let bp = free_port();
        let gw = Proc::start(
            dir.path(),
            &format!(
                "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\n\n[broker]\nlisten = \"127.0.0.1:{bp}\"\n",
                dir.path().join("data").display()
            ),
        );
        wait_for("the embedded broker", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", bp)).is_ok()
        });
        let (cpu0, _) = gw.usage();
        let (rate, sent) = flood(bp, secs);
        let (cpu1, rss) = gw.usage();
        println!(
            "broker: local QoS 1 publisher -> subscriber through the guard and rumqttd: {rate:.0} msg/s delivered ({sent} sent in {secs} s); gateway CPU {:.0}% of one core; RSS {:.1} MiB",
            (cpu1 - cpu0) / secs as f64 * 100.0,
            rss as f64 / 1024.0
        );
        let (rate, _) = flood(mosq.port, secs);
        println!("broker: the same clients against mosquitto 2.0.11: {rate:.0} msg/s delivered");
    }

    if run("idle") {
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
