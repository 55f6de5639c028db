//! A simulated Modbus RTU bus for integration tests: tests/peers/modbus_rtu_sim.py (pymodbus
//! 3.16.1) serving several unit ids on one socat pty pair, or RTU framing over TCP; and `mbpoll`
//! as an independent master to cross-check what is on the wire.
//!
//! The simulator owns the sensor end of the pair (`PtyPair::peer`); the gateway opens
//! [`RtuSim::bus_path`] (`PtyPair::device`). Every link name lives in a temporary directory of
//! its own, so tests never share a line. Nothing sleeps to synchronise: starting waits for the
//! simulator's `READY`, every command for its `OK`, unplugging for socat's links to vanish.
//! Dropping an [`RtuSim`] kills the simulator, then socat.

// Each test binary includes this module but uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::peers::venv_python;
use super::serial::PtyPair;

/// Generous, because a loaded CI machine can take seconds to start Python and import pymodbus.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// An mbpoll run is bounded by its own `-o` timeout; this only catches a hung one.
const MBPOLL_DEADLINE: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(10);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read_or_empty(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Request and write counts of one unit id, as the simulator saw them on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnitStats {
    pub requests: u64,
    pub writes: u64,
}

/// Everything `stats` reported: per unit id (served or not) and the total.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BusStats {
    pub units: BTreeMap<u8, UnitStats>,
    pub total: u64,
}

enum Transport {
    /// RTU on a pty pair; `None` while unplugged.
    Serial(PtyPair),
    /// RTU framing over TCP on this loopback port.
    Tcp(u16),
}

/// A Modbus RTU bus with several simulated units. See tests/peers/modbus_rtu_sim.py for the
/// spec format and the commands.
pub struct RtuSim {
    child: Child,
    stdin: ChildStdin,
    stdout: mpsc::Receiver<String>,
    transport: Transport,
    dir: TempDir,
}

impl RtuSim {
    /// Serves the units of `spec` (`{"units": {"1": {...}, ...}}`) on a pty pair of its own.
    pub fn start(spec: &serde_json::Value) -> RtuSim {
        RtuSim::spawn(Some(spec), 0, false)
    }

    /// Units 1..=count, each with the simulator's default small map (`--units-count`).
    pub fn start_units(count: u8) -> RtuSim {
        RtuSim::spawn(None, count, false)
    }

    /// RTU framing (unit id, PDU, CRC; no MBAP header) over TCP on a free loopback port, like
    /// an RS-485 device server in transparent mode.
    pub fn start_tcp(spec: &serde_json::Value) -> RtuSim {
        RtuSim::spawn(Some(spec), 0, true)
    }

    fn spawn(spec: Option<&serde_json::Value>, units_count: u8, tcp: bool) -> RtuSim {
        let dir = tempfile::Builder::new()
            .prefix("modbus-rtu-sim-")
            .tempdir()
            .expect("create temp dir");
        let mut command = Command::new(venv_python());
        command.arg(manifest_dir().join("tests/peers/modbus_rtu_sim.py"));
        let transport = if tcp {
            command.args(["--tcp-port", "0"]);
            Transport::Tcp(0)
        } else {
            let pty = PtyPair::start();
            command
                .arg("--serial")
                .arg(pty.peer())
                .args(["--baud", "9600"]);
            Transport::Serial(pty)
        };
        if let Some(spec) = spec {
            let path = dir.path().join("spec.json");
            fs::write(&path, spec.to_string()).expect("write spec.json");
            command.arg("--spec").arg(path);
        }
        if units_count > 0 {
            command.args(["--units-count", &units_count.to_string()]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(dir.path().join("stderr")).expect("create stderr file"))
            .spawn()
            .expect("spawn modbus_rtu_sim.py");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        // A thread turns the pipe into a channel so that every read can have a deadline.
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("modbus-rtu-sim-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn stdout reader");
        let mut sim = RtuSim {
            child,
            stdin,
            stdout: rx,
            transport,
            dir,
        };
        let ready = sim.next_line(Instant::now() + START_TIMEOUT, "READY");
        match &mut sim.transport {
            Transport::Serial(_) => {
                assert_eq!(ready, "READY", "modbus_rtu_sim: unexpected first line")
            }
            Transport::Tcp(port) => {
                *port = ready
                    .strip_prefix("READY port=")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| {
                        panic!("modbus_rtu_sim: expected READY port=, got {ready:?}")
                    })
            }
        }
        sim
    }

    /// The gateway's end of the serial line (a symlink to a pty; gone while unplugged).
    pub fn bus_path(&self) -> PathBuf {
        match &self.transport {
            Transport::Serial(pty) => pty.device(),
            Transport::Tcp(_) => panic!("bus_path() of an RTU-over-TCP simulator; use addr()"),
        }
    }

    /// The TCP address of an RTU-over-TCP simulator.
    pub fn addr(&self) -> SocketAddr {
        match self.transport {
            Transport::Tcp(port) => (Ipv4Addr::LOCALHOST, port).into(),
            Transport::Serial(_) => panic!("addr() of a serial RTU simulator; use bus_path()"),
        }
    }

    /// What the simulator wrote to stderr (pymodbus logs warnings and errors there).
    pub fn stderr(&self) -> String {
        read_or_empty(&self.dir.path().join("stderr"))
    }

    /// Sends one control line, waits for its `OK` and returns the lines printed before it.
    /// Panics on `ERR`.
    pub fn command(&mut self, cmd: &str) -> Vec<String> {
        let cmd = cmd.trim();
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("modbus_rtu_sim: write {cmd:?}: {e}\n{}", self.stderr()));
        let end = Instant::now() + COMMAND_TIMEOUT;
        let ok = format!("OK {cmd}");
        let mut output = Vec::new();
        loop {
            let line = self.next_line(end, &ok);
            if line == ok {
                return output;
            }
            assert!(
                !line.starts_with("ERR"),
                "modbus_rtu_sim rejected {cmd:?}: {line}"
            );
            output.push(line);
        }
    }

    /// The unit neither answers nor executes requests until [`RtuSim::unmute`].
    pub fn mute(&mut self, unit: u8) {
        self.command(&format!("mute {unit}"));
    }

    pub fn unmute(&mut self, unit: u8) {
        self.command(&format!("unmute {unit}"));
    }

    /// The unit's replies go out `delay` late from now on (`Duration::ZERO` ends that).
    pub fn delay(&mut self, unit: u8, delay: Duration) {
        self.command(&format!("delay {unit} {}", delay.as_secs_f64()));
    }

    /// The unit's next reply goes out with a corrupted CRC (once).
    pub fn garbage(&mut self, unit: u8) {
        self.command(&format!("garbage {unit}"));
    }

    /// Every request of the unit is answered with exception `code` (nothing is executed);
    /// code 0 ends that.
    pub fn exception(&mut self, unit: u8, code: u8) {
        self.command(&format!("exception {unit} {code}"));
    }

    /// Sets a register (`holding`, `input`) or, with 0/1, a bit (`coils`, `discrete`).
    pub fn set(&mut self, unit: u8, table: &str, addr: u16, value: u16) {
        self.command(&format!("set {unit} {table} {addr} {value}"));
    }

    /// Encodes `value` as the simulator encodes a spec's typed entry (`ty`: u16 … f64 or
    /// string, `order`: ABCD, CDAB, … as in the spec) and stores it from `addr` on. For a string
    /// `value` is `"<registers> <text>"`.
    pub fn set_typed(
        &mut self,
        unit: u8,
        table: &str,
        addr: u16,
        ty: &str,
        order: &str,
        value: impl std::fmt::Display,
    ) {
        self.command(&format!("typed {unit} {table} {addr} {ty} {order} {value}"));
    }

    /// A register (`holding`, `input`) as the unit's store holds it now.
    pub fn get(&mut self, unit: u8, table: &str, addr: u16) -> u16 {
        let out = self.command(&format!("get {unit} {table} {addr}"));
        out.iter()
            .find_map(|l| l.strip_prefix("VALUE "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("modbus_rtu_sim: no VALUE line in {out:?}"))
    }

    /// A bit (`coils`, `discrete`) as the unit's store holds it now.
    pub fn get_bit(&mut self, unit: u8, table: &str, addr: u16) -> bool {
        self.get(unit, table, addr) != 0
    }

    /// Request and write counts per unit id seen on the wire (served ids and unknown ones).
    pub fn stats(&mut self) -> BusStats {
        let mut stats = BusStats::default();
        for line in self.command("stats") {
            let Some(rest) = line.strip_prefix("STATS ") else {
                continue;
            };
            if let Some(total) = rest.strip_prefix("total=") {
                stats.total = total.parse().expect("STATS total=<n>");
                continue;
            }
            let mut unit = None;
            let mut counts = UnitStats::default();
            for field in rest.split_whitespace() {
                match field.split_once('=') {
                    Some(("unit", v)) => unit = v.parse().ok(),
                    Some(("requests", v)) => counts.requests = v.parse().expect("requests=<n>"),
                    Some(("writes", v)) => counts.writes = v.parse().expect("writes=<n>"),
                    _ => panic!("modbus_rtu_sim: unexpected STATS field in {line:?}"),
                }
            }
            stats.units.insert(unit.expect("STATS unit=<u>"), counts);
        }
        stats
    }

    /// Requests received for `unit` (whether it exists, answered or not).
    pub fn requests(&mut self, unit: u8) -> u64 {
        self.stats().units.get(&unit).map_or(0, |s| s.requests)
    }

    /// Write requests (function codes 5, 6, 15, 16, 23) received for `unit`.
    pub fn writes(&mut self, unit: u8) -> u64 {
        self.stats().units.get(&unit).map_or(0, |s| s.writes)
    }

    /// Requests received for any unit id.
    pub fn total_requests(&mut self) -> u64 {
        self.stats().total
    }

    pub fn is_plugged(&self) -> bool {
        match &self.transport {
            Transport::Serial(pty) => pty.is_plugged(),
            Transport::Tcp(_) => true,
        }
    }

    /// Pulls the adapter: socat stops, both links vanish, the gateway's reads see end-of-file
    /// and its writes EIO. The simulator closes its end and keeps its state.
    pub fn unplug(&mut self) {
        self.pty().unplug();
    }

    /// Plugs it back in: socat again under the same link names, the simulator reattached (same
    /// store, same counters). Returns once the simulator has the line open.
    pub fn replug(&mut self) {
        self.pty().plug();
        self.command("reopen");
    }

    fn pty(&mut self) -> &mut PtyPair {
        match &mut self.transport {
            Transport::Serial(pty) => pty,
            Transport::Tcp(_) => panic!("an RTU-over-TCP simulator has no serial line"),
        }
    }

    fn next_line(&mut self, end: Instant, expecting: &str) -> String {
        let timeout = end.saturating_duration_since(Instant::now());
        match self.stdout.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!(
                    "modbus_rtu_sim: no {expecting:?} in time\n{}",
                    self.stderr()
                )
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                panic!(
                    "modbus_rtu_sim exited ({status}) before {expecting:?}\n{}",
                    self.stderr()
                )
            }
        }
    }
}

impl Drop for RtuSim {
    fn drop(&mut self) {
        // Fails only if the child was already reaped, which is the state we want anyway. The
        // PtyPair field is dropped after this and stops socat.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// mbpoll, the independent master

/// What one mbpoll run printed.
#[derive(Debug)]
pub struct Mbpoll {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Mbpoll {
    /// `(reference, value text)` of every value printed, in order (all slaves together).
    pub fn values(&self) -> Vec<(u32, String)> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let (reference, value) = l.strip_prefix('[')?.split_once("]:")?;
                Some((reference.parse().ok()?, value.trim().to_owned()))
            })
            .collect()
    }

    /// The value texts only, in order.
    pub fn texts(&self) -> Vec<String> {
        self.values().into_iter().map(|(_, v)| v).collect()
    }

    /// `(slave, value texts)` for every slave polled, in order (for `-a 1:30`).
    pub fn by_slave(&self) -> Vec<(u8, Vec<String>)> {
        let mut out: Vec<(u8, Vec<String>)> = Vec::new();
        for line in self.stdout.lines() {
            if let Some(rest) = line.strip_prefix("-- Polling slave ") {
                let slave = rest.trim_end_matches("...").parse().expect("slave number");
                out.push((slave, Vec::new()));
            } else if let Some((_, value)) = line.strip_prefix('[').and_then(|l| l.split_once("]:"))
            {
                if let Some(last) = out.last_mut() {
                    last.1.push(value.trim().to_owned());
                }
            }
        }
        out
    }

    /// Panics with everything mbpoll printed unless it succeeded.
    pub fn expect_ok(self) -> Mbpoll {
        assert!(
            self.success,
            "mbpoll failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `mbpoll -m rtu -b 9600 -d 8 -s 1 -P none -0 -1 <options> <bus> [write values]` once
/// (0-based references) and returns what it printed. Reads time out after mbpoll's own `-o`
/// (1 s unless `options` say otherwise).
pub fn mbpoll_rtu(bus: &Path, options: &[&str], write_values: &[&str]) -> Mbpoll {
    let dir = tempfile::Builder::new()
        .prefix("mbpoll-")
        .tempdir()
        .expect("temp dir for mbpoll output");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new("mbpoll")
        .args([
            "-m", "rtu", "-b", "9600", "-d", "8", "-s", "1", "-P", "none", "-0", "-1",
        ])
        .args(options)
        .arg(bus)
        .args(write_values)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("mbpoll stdout file"))
        .stderr(File::create(&err).expect("mbpoll stderr file"))
        .spawn()
        .expect("spawn mbpoll (apt install mbpoll)");
    let end = Instant::now() + MBPOLL_DEADLINE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < end => thread::sleep(POLL_INTERVAL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mbpoll {options:?} did not finish in {MBPOLL_DEADLINE:?}");
            }
            Err(e) => panic!("waiting for mbpoll: {e}"),
        }
    };
    Mbpoll {
        success: status.success(),
        stdout: read_or_empty(&out),
        stderr: read_or_empty(&err),
    }
}
