//! Figures of the HTTP listener (issue 16), printed, never asserted. Run with
//! `cargo bench --bench http`.
//!
//! The gateway polls FB_BENCH_DEVICES (50) Modbus TCP devices, simulated in this process, with
//! FB_BENCH_POINTS (50) u16 registers each every second, and publishes to a mosquitto upstream.
//! - RSS added by the listener with the page open: the same config without `[http]`, then with
//!   it, the page fetched and one client on its event stream; VmRSS averaged over
//!   FB_BENCH_SECONDS (20) after a 10 s warm-up, each run in a fresh gateway.
//! - CPU of one `/metrics` scrape: utime+stime of the gateway from /proc/<pid>/stat over
//!   FB_BENCH_SCRAPES (200) scrapes back to back, minus the gateway's own CPU rate (measured
//!   just before over the same wall time) for the time they took.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldbridge::cli::demo::{serve_sim, SimKind};
use support::gateway::{Gateway, GatewayConfig};
use support::http::get;
use support::mosquitto::Mosquitto;
use support::{free_port, wait_until, LONG};
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (CPU seconds, VmRSS KiB) of `pid`.
fn usage(pid: u32) -> (f64, u64) {
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
    // USER_HZ is 100 on every Linux this runs on.
    (ticks as f64 / 100.0, rss)
}

/// Mean VmRSS (KiB) and CPU % of `pid` over `secs`, sampled every second.
fn sample(pid: u32, secs: u64) -> (u64, f64) {
    let (cpu0, _) = usage(pid);
    let t0 = Instant::now();
    let mut sum = 0;
    for _ in 0..secs {
        std::thread::sleep(Duration::from_secs(1));
        sum += usage(pid).1;
    }
    let (cpu1, _) = usage(pid);
    (
        sum / secs.max(1),
        (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0,
    )
}

/// A client on the page's event stream, reading until dropped; counts bytes received.
struct EventClient {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
}

impl EventClient {
    fn open(port: u16) -> EventClient {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (s, b) = (stop.clone(), bytes.clone());
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        write!(
            conn,
            "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        b.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
        });
        EventClient { stop, bytes }
    }
}

impl Drop for EventClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn start(devices: &[u16], points: u64, upstream: u16, http: Option<u16>) -> Gateway {
    let mut body = String::new();
    for (i, port) in devices.iter().enumerate() {
        let _ = write!(
            body,
            "[[devices]]\nname = \"sim-{i:03}\"\nkind = \"modbus_tcp\"\nhost = \"127.0.0.1\"\nport = {port}\ninterval = \"1s\"\ntimeout = \"3s\"\n\n"
        );
        for p in 0..points {
            let _ = write!(body, "[[devices.points]]\nname = \"hr{p}\"\ntable = \"holding\"\naddress = {p}\ntype = \"u16\"\n\n");
        }
    }
    if let Some(port) = http {
        let _ = write!(body, "[http]\nlisten = \"127.0.0.1:{port}\"\n");
    }
    let mut cfg = GatewayConfig::minimal()
        .upstream(upstream)
        .env("RUST_LOG", "warn")
        .with(body);
    cfg.stats_interval = Some("10s");
    cfg.start_in_temp()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n_dev = env("FB_BENCH_DEVICES", 50);
    let n_pts = env("FB_BENCH_POINTS", 50).min(99);
    let secs = env("FB_BENCH_SECONDS", 20);
    let scrapes = env("FB_BENCH_SCRAPES", 200);
    let warm = Duration::from_secs(10);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = CancellationToken::new();
    let devices: Vec<u16> = (0..n_dev)
        .map(|_| {
            rt.block_on(serve_sim(SimKind::Meter, stop.clone()))
                .unwrap()
                .port()
        })
        .collect();
    let mosq = Mosquitto::start();
    println!(
        "HTTP listener figures: {n_dev} devices x {n_pts} u16 registers every 1 s, upstream mosquitto"
    );

    // Without [http].
    let gw = start(&devices, n_pts, mosq.port, None);
    let pid = gw.pid().as_raw() as u32;
    std::thread::sleep(warm);
    let (rss_off, cpu_off) = sample(pid, secs);
    drop(gw);
    println!(
        "  without [http]:                        RSS {:>6.1} MiB, CPU {cpu_off:.1} %",
        rss_off as f64 / 1024.0
    );

    // With [http], the page fetched and its event stream open.
    let port = free_port();
    let gw = start(&devices, n_pts, mosq.port, Some(port));
    let pid = gw.pid().as_raw() as u32;
    wait_until(LONG, "the HTTP listener", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let page = get(port, "/", None);
    let client = EventClient::open(port);
    std::thread::sleep(warm);
    let b0 = client.bytes.load(Ordering::Relaxed);
    let (rss_on, cpu_on) = sample(pid, secs);
    let sse_rate = (client.bytes.load(Ordering::Relaxed) - b0) as f64 / secs as f64;
    println!(
        "  with [http], page open ({} B page, {:.1} kB/s of events): RSS {:>6.1} MiB, CPU {cpu_on:.1} %",
        page.body.len(),
        sse_rate / 1000.0,
        rss_on as f64 / 1024.0
    );
    println!(
        "  RSS added by the listener with the page open: {:+.1} MiB; CPU added: {:+.1} points of a core",
        (rss_on as f64 - rss_off as f64) / 1024.0,
        cpu_on - cpu_off
    );
    drop(client);

    // CPU of one /metrics scrape.
    let body = get(port, "/metrics", None).body;
    let (c0, _) = usage(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let idle_rate = (usage(pid).0 - c0) / t0.elapsed().as_secs_f64();
    let (c1, _) = usage(pid);
    let t1 = Instant::now();
    for _ in 0..scrapes {
        let r = get(port, "/metrics", None);
        assert_eq!(r.status, 200);
    }
    let wall = t1.elapsed().as_secs_f64();
    let cpu = usage(pid).0 - c1;
    let net = (cpu - idle_rate * wall).max(0.0);
    println!(
        "  /metrics ({} B, {} lines): {scrapes} scrapes in {wall:.2} s; gateway CPU {:.2} ms per scrape ({:.2} ms before subtracting polling at {:.1} %)",
        body.len(),
        body.lines().count(),
        net / scrapes as f64 * 1000.0,
        cpu / scrapes as f64 * 1000.0,
        idle_rate * 100.0
    );
    drop(gw);
    stop.cancel();
}
