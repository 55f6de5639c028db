//! Modbus peers: the pymodbus simulators (tests/peers/modbus_sim.py for Modbus TCP,
//! tests/peers/modbus_rtu_sim.py for an RTU bus on a socat pty pair or RTU framing over TCP),
//! both driven through [`PythonPeer`], and `mbpoll` as an independent master.
//!
//! Nothing sleeps to synchronise: starting waits for the simulator's `READY`, every command for
//! its `OK`, unplugging for socat's links to vanish. Dropping a simulator kills it (then socat).

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::process::Proc;
use super::serial::PtyPair;
use super::wait::{manifest_dir, venv_python, LOCALHOST};

/// Generous, because a loaded CI machine can take seconds to start Python and import pymodbus.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// An mbpoll run is bounded by its own `-o` timeout; this only catches a hung one.
const MBPOLL_DEADLINE: Duration = Duration::from_secs(30);

/// A Python peer of tests/peers/: started with a `READY…` line on stdout, then driven by
/// one-line commands on stdin, each answered by the lines it prints and `OK <command>` (or a
/// line starting with `ERR`).
pub struct PythonPeer {
    proc: Proc,
    /// Holds the spec file; removed after the process is gone.
    _dir: TempDir,
}

impl PythonPeer {
    /// Runs tests/peers/`script` with `args` (and `--spec FILE` for `spec`); returns it with
    /// its `READY…` line.
    pub fn start(
        script: &str,
        args: &[&str],
        spec: Option<&serde_json::Value>,
    ) -> (PythonPeer, String) {
        let dir = tempfile::Builder::new()
            .prefix("python-peer-")
            .tempdir()
            .expect("create temp dir");
        let mut cmd = Command::new(venv_python());
        cmd.arg(manifest_dir().join("tests/peers").join(script))
            .args(args);
        if let Some(spec) = spec {
            let path = dir.path().join("spec.json");
            fs::write(&path, spec.to_string()).expect("write spec.json");
            cmd.arg("--spec").arg(path);
        }
        let mut proc = Proc::build(script, &mut cmd).stdin().start();
        let ready = proc.next_line(START_TIMEOUT, "READY");
        assert!(
            ready.starts_with("READY"),
            "{script}: expected READY, got {ready:?}\n{}",
            proc.stderr()
        );
        (PythonPeer { proc, _dir: dir }, ready)
    }

    /// What the peer wrote to stderr (pymodbus logs warnings and errors there).
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Sends one control line, waits for its `OK` and returns the lines printed before it.
    /// Panics on `ERR`.
    pub fn command(&mut self, cmd: &str) -> Vec<String> {
        let cmd = cmd.trim();
        self.proc.send_line(cmd);
        let ok = format!("OK {cmd}");
        let mut output = Vec::new();
        loop {
            let line = self.proc.next_line(COMMAND_TIMEOUT, &ok);
            if line == ok {
                return output;
            }
            assert!(
                !line.starts_with("ERR"),
                "{} rejected {cmd:?}: {line}",
                self.proc.name()
            );
            output.push(line);
        }
    }
}

fn port_of(ready: &str) -> u16 {
    ready
        .strip_prefix("READY port=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected READY port=<port>, got {ready:?}"))
}

// ---------------------------------------------------------------------------------------------
// Modbus TCP device simulator

/// A simulated Modbus TCP device (pymodbus) on a port it picked itself. See
/// tests/peers/modbus_sim.py for the register map and the commands.
pub struct ModbusSim {
    pub port: u16,
    peer: PythonPeer,
}

impl ModbusSim {
    /// The default register map, answering as unit `unit`.
    pub fn start(unit: u8) -> ModbusSim {
        ModbusSim::spawn(unit, None)
    }

    /// `spec` replaces the map: `{"holding": {"0": 16812}, "input": {..}, "coils": {"0": true},
    /// "discrete": {..}, "counter": 20, "clock": 21}` (raw registers / bools; `counter` and
    /// `clock`, a register reading as Unix seconds mod 65536, are optional).
    pub fn start_with_spec(unit: u8, spec: &serde_json::Value) -> ModbusSim {
        ModbusSim::spawn(unit, Some(spec))
    }

    fn spawn(unit: u8, spec: Option<&serde_json::Value>) -> ModbusSim {
        let unit = unit.to_string();
        let (peer, ready) =
            PythonPeer::start("modbus_sim.py", &["--port", "0", "--unit", &unit], spec);
        ModbusSim {
            port: port_of(&ready),
            peer,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        (LOCALHOST, self.port).into()
    }

    pub fn stderr(&self) -> String {
        self.peer.stderr()
    }

    /// Sends one control line and waits for its `OK`.
    pub fn command(&mut self, cmd: &str) {
        self.peer.command(cmd);
    }

    /// Requests received since start, answered or not, for any unit id.
    pub fn requests(&mut self) -> u64 {
        self.peer
            .command("stats")
            .iter()
            .find_map(|l| l.strip_prefix("STATS requests="))
            .and_then(|n| n.parse().ok())
            .expect("modbus_sim: no STATS line before OK stats")
    }

    pub fn mute(&mut self) {
        self.command("mute");
    }

    pub fn unmute(&mut self) {
        self.command("unmute");
    }

    /// Every reply from now on is sent `delay` late, on the connection it belongs to.
    pub fn set_delay(&mut self, delay: Duration) {
        self.command(&format!("delay {}", delay.as_secs_f64()));
    }

    pub fn set_holding(&mut self, addr: u16, value: u16) {
        self.command(&format!("set holding {addr} {value}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Modbus RTU bus simulator

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
    /// RTU on a pty pair; socat stopped while unplugged.
    Serial(PtyPair),
    /// RTU framing over TCP on this loopback port.
    Tcp(u16),
}

/// A Modbus RTU bus with several simulated units. See tests/peers/modbus_rtu_sim.py for the
/// spec format and the commands. The simulator owns the sensor end of the pty pair; the gateway
/// opens [`RtuSim::bus_path`].
pub struct RtuSim {
    /// Declared before `transport`: the simulator is killed before socat.
    peer: PythonPeer,
    transport: Transport,
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
        let mut args: Vec<String> = Vec::new();
        let pty = if tcp {
            args.extend(["--tcp-port".into(), "0".into()]);
            None
        } else {
            let pty = PtyPair::start();
            args.extend([
                "--serial".into(),
                pty.peer().display().to_string(),
                "--baud".into(),
                "9600".into(),
            ]);
            Some(pty)
        };
        if units_count > 0 {
            args.extend(["--units-count".into(), units_count.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (peer, ready) = PythonPeer::start("modbus_rtu_sim.py", &args, spec);
        let transport = match pty {
            Some(pty) => {
                assert_eq!(ready, "READY", "modbus_rtu_sim: unexpected first line");
                Transport::Serial(pty)
            }
            None => Transport::Tcp(port_of(&ready)),
        };
        RtuSim { peer, transport }
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
            Transport::Tcp(port) => (LOCALHOST, port).into(),
            Transport::Serial(_) => panic!("addr() of a serial RTU simulator; use bus_path()"),
        }
    }

    pub fn stderr(&self) -> String {
        self.peer.stderr()
    }

    /// Sends one control line, waits for its `OK` and returns the lines printed before it.
    pub fn command(&mut self, cmd: &str) -> Vec<String> {
        self.peer.command(cmd)
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

    /// Every reply of `unit` from now on with a fault: "crc", "garbage", "wrong-unit" (sent as
    /// unit+100) or "none".
    pub fn fault(&mut self, unit: u8, kind: &str) {
        self.command(&format!("fault {unit} {kind}"));
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
}

// ---------------------------------------------------------------------------------------------
// mbpoll, the independent master

/// Where mbpoll talks to.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// Modbus TCP on 127.0.0.1:port, unit 1, 1 s timeout unless the options say otherwise.
    Tcp(u16),
    /// Modbus RTU at 9600 8N1 on this serial port.
    Rtu(&'a Path),
}

/// What one mbpoll run printed.
#[derive(Debug)]
pub struct Mbpoll {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs mbpoll once against `target` with 0-based references (`-0 -1`), `options` and, for a
/// write, `write_values` after the target; returns what it printed.
pub fn mbpoll(target: Target, options: &[&str], write_values: &[&str]) -> Mbpoll {
    let mut cmd = Command::new("mbpoll");
    match target {
        Target::Tcp(port) => cmd
            .args([
                "-m",
                "tcp",
                "-p",
                &port.to_string(),
                "-a",
                "1",
                "-0",
                "-1",
                "-o",
                "1",
            ])
            .args(options)
            .arg("127.0.0.1"),
        Target::Rtu(bus) => cmd
            .args([
                "-m", "rtu", "-b", "9600", "-d", "8", "-s", "1", "-P", "none", "-0", "-1",
            ])
            .args(options)
            .arg(bus),
    };
    cmd.args(write_values);
    let out = Proc::run("mbpoll", &mut cmd, MBPOLL_DEADLINE);
    Mbpoll {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
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

    /// The value texts if mbpoll succeeded, else everything it printed.
    pub fn result(self) -> Result<Vec<String>, String> {
        if self.success {
            Ok(self.texts())
        } else {
            Err(format!("{}{}", self.stdout, self.stderr))
        }
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
