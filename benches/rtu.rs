//! Modbus RTU figures (printed, not pass/fail). Run with `cargo bench --bench rtu`.
//! Sections (FB_BENCH_ONLY=plan,bus; default both):
//! - plan: requests per cycle for the Eastron SDM630 profile with and without planning, the
//!   measured cycle time of both against a simulated SDM630 on a pty, and the wire time both
//!   would take at 9600 baud (computed: a pty moves bytes at memory speed).
//! - bus: polls per second with FB_BENCH_UNITS (30) simulated units on one pty bus, every unit
//!   polled back to back for FB_BENCH_SECONDS (10).
//!
//! FB_BENCH_BAUD (9600) sets the bus's baud rate, and with it the enforced inter-frame silence.
//!
//! Needs the test venv (scripts/test creates target/venv with pymodbus) and socat.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldbridge::config::{parse_str, Config, Device};
use fieldbridge::device::modbus::driver::ModbusDriver;
use fieldbridge::device::modbus::lines;
use fieldbridge::device::modbus::plan::plan;
use fieldbridge::device::Driver;
use support::modbus::RtuSim;
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rtu_config(path: &str, devices: &str) -> Config {
    // The bus keeps the RTU silence of 3.5 characters between frames, derived from the baud
    // rate (4 ms at 9600), even on a pty: FB_BENCH_BAUD shows how much of a figure that is.
    let baud = env("FB_BENCH_BAUD", 9600);
    let src = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = \"/tmp\"\n[broker]\nenabled = false\n\
         [[buses]]\nname = \"rs485\"\nkind = \"serial\"\npath = \"{path}\"\nbaud = {baud}\nrequest_gap = \"0ms\"\n{devices}"
    );
    parse_str(&src).unwrap_or_else(|e| panic!("{e:#?}"))
}

/// Wire time of one exchange at `baud` (8N1 = 10 bits per byte, plus 3.5 characters of silence
/// before the request and before the answer): request 8 bytes, answer 5 + data bytes.
fn wire_ms(count: u16, bits_table: bool, baud: f64) -> f64 {
    let data = if bits_table {
        f64::from(count.div_ceil(8))
    } else {
        2.0 * f64::from(count)
    };
    let chars = 8.0 + 5.0 + data + 2.0 * 3.5;
    chars * 10.0 / baud * 1000.0
}

fn cycle_wire_ms(d: &Device) -> f64 {
    plan(&d.points, &d.limits)
        .iter()
        .map(|r| wire_ms(r.count, r.table.is_bits(), 9600.0))
        .sum()
}

async fn time_polls(cfg: &Config, n: u32) -> (Duration, usize) {
    let stop = CancellationToken::new();
    let mut l = lines::start(cfg, &stop);
    let d = &cfg.devices[0];
    let (bus, budget) = l.get(&d.name).cloned().expect("line");
    let mut driver = ModbusDriver::new(d.clone(), bus, budget);
    // One poll to open the port and warm up the simulator.
    driver.poll().await.expect("warm-up poll");
    let t0 = Instant::now();
    let mut values = 0;
    for _ in 0..n {
        values += driver.poll().await.expect("poll").len();
    }
    let el = t0.elapsed();
    stop.cancel();
    while l.tasks.join_next().await.is_some() {}
    (el, values)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let only = std::env::var("FB_BENCH_ONLY").unwrap_or_default();
    let run = |s: &str| only.is_empty() || only.split(',').any(|x| x.trim() == s);
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    if run("plan") {
        // Every register the SDM630 profile reads exists on the simulated meter.
        let spec = serde_json::json!({"units": {"1": {"size": {"input": 400, "holding": 64}}}});
        let sim = RtuSim::start(&spec);
        let path = sim.bus_path().display().to_string();
        let dev = |extra: &str| {
            format!("[[devices]]\nname = \"meter\"\nkind = \"modbus_rtu\"\nbus = \"rs485\"\nunit_id = 1\nprofile = \"eastron-sdm630\"\ntimeout = \"1s\"\n{extra}\n")
        };
        let planned = rtu_config(&path, &dev(""));
        let single = rtu_config(&path, &dev("one_request_per_point = true"));
        let polls = 20;
        for (label, cfg) in [("planned", &planned), ("one request per point", &single)] {
            let d = &cfg.devices[0];
            let reqs = plan(&d.points, &d.limits).len();
            let (el, values) = rt.block_on(time_polls(cfg, polls));
            println!(
                "sdm630 {label}: {} points, {reqs} requests per cycle; measured on a pty with pymodbus: {:.1} ms per cycle ({values} values in {polls} cycles); wire time at 9600 baud 8N1: {:.0} ms per cycle (computed)",
                d.points.len(),
                el.as_secs_f64() * 1000.0 / f64::from(polls),
                cycle_wire_ms(d)
            );
        }
    }

    if run("bus") {
        let units = env("FB_BENCH_UNITS", 30).clamp(1, 247) as u8;
        let secs = env("FB_BENCH_SECONDS", 10);
        let sim = RtuSim::start_units(units);
        let path = sim.bus_path().display().to_string();
        let mut devices = String::new();
        for u in 1..=units {
            devices.push_str(&format!(
                "[[devices]]\nname = \"u{u}\"\nkind = \"modbus_rtu\"\nbus = \"rs485\"\nunit_id = {u}\ntimeout = \"1s\"\n\
                 [[devices.points]]\nname = \"h0\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n\
                 [[devices.points]]\nname = \"f\"\ntable = \"holding\"\naddress = 10\ntype = \"f32\"\n\
                 [[devices.points]]\nname = \"in0\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\n"
            ));
        }
        let cfg = rtu_config(&path, &devices);
        let reqs_per_poll = plan(&cfg.devices[0].points, &cfg.devices[0].limits).len();
        let polls = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        rt.block_on(async {
            let stop = CancellationToken::new();
            let mut l = lines::start(&cfg, &stop);
            let end = tokio::time::Instant::now() + Duration::from_secs(secs);
            let mut set = tokio::task::JoinSet::new();
            for d in &cfg.devices {
                let (bus, budget) = l.get(&d.name).cloned().expect("line");
                let mut driver = ModbusDriver::new(d.clone(), bus, budget);
                let (polls, failures) = (polls.clone(), failures.clone());
                set.spawn(async move {
                    while tokio::time::Instant::now() < end {
                        match driver.poll().await {
                            Ok(_) => polls.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
            while set.join_next().await.is_some() {}
            stop.cancel();
            while l.tasks.join_next().await.is_some() {}
        });
        let el = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let p = polls.load(Ordering::Relaxed) as f64;
        println!(
            "bus: {units} units on one pty bus at {} baud, {reqs_per_poll} requests per poll: {:.0} polls/s = {:.0} requests/s ({} failed polls); gateway side CPU {:.0}% of one core (the pymodbus simulator is the bottleneck: one Python process answering every unit)",
            env("FB_BENCH_BAUD", 9600),
            p / el,
            p * reqs_per_poll as f64 / el,
            failures.load(Ordering::Relaxed),
            cpu / el * 100.0
        );
        println!(
            "bus: at 9600 baud 8N1 the same poll takes {:.0} ms on the wire (computed), i.e. at most {:.1} polls/s for the whole line",
            cycle_wire_ms(&cfg.devices[0]),
            1000.0 / cycle_wire_ms(&cfg.devices[0])
        );
    }
}

/// User + system CPU time of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat (utime, stime), counted from the state field (index 0 here).
    (ticks(11) + ticks(12)) / 100.0
}
