//! Real peers for integration tests: a mosquitto broker, a pymodbus device simulator, a TCP relay
//! that can cut a link without touching either end, and an MQTT subscriber that records what
//! arrives.
//!
//! Nothing here sleeps to synchronise: everything waits for something it can observe, with a
//! deadline. Processes are killed and reaped on drop, temporary directories removed.

// Each test binary includes this module but uses only part of it.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// Generous, because a loaded CI machine can take seconds to start Python and import pymodbus.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// rumqttc retries as fast as it is polled; this keeps a watcher from spinning on a dead broker.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A port that was free a moment ago. Prefer letting the peer bind port 0 and report it; use
/// this only for programs that cannot (mosquitto), and retry if the port was taken meanwhile.
pub fn free_port() -> u16 {
    StdTcpListener::bind((LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The Python of the test venv, which has pymodbus 3.16.1 installed.
pub fn venv_python() -> PathBuf {
    let python = manifest_dir().join("target/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test once to create the test venv",
        python.display()
    );
    python
}

/// Calls `f` every few milliseconds until it returns something; `None` after `deadline`.
async fn poll<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn poll_sync<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= end {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until `f` returns something and returns it; panics naming `what` after `deadline`.
pub async fn wait_for_value<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll(deadline, f)
        .await
        .unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}

/// Blocking twin of [`wait_for_value`]; don't call it where it would block a runtime that must
/// keep running the code under test.
pub fn wait_for_value_sync<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_sync(deadline, f)
        .unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for {what}"))
}

pub async fn wait_until<F: FnMut() -> bool>(what: &str, deadline: Duration, mut f: F) {
    wait_for_value(what, deadline, || f().then_some(())).await;
}

pub fn wait_until_sync<F: FnMut() -> bool>(what: &str, deadline: Duration, mut f: F) {
    wait_for_value_sync(what, deadline, || f().then_some(()));
}

fn kill_and_reap(child: &mut Child) {
    // Fails only if the child was already reaped, which is the state we want anyway.
    let _ = child.kill();
    let _ = child.wait();
}

fn read_or_empty(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// mosquitto

/// A mosquitto broker of its own, on a free loopback port, logging to a file in its temp dir.
pub struct Mosquitto {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with_config("")
    }

    /// `extra` is appended to the generated config (more listeners, auth, TLS...); files it
    /// refers to must be readable by the broker and outlive it.
    pub fn start_with_config(extra: &str) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("mosquitto-")
            .tempdir()
            .expect("create temp dir");
        // The port may be taken between free_port() and mosquitto's bind: try another one.
        for _ in 0..5 {
            let port = free_port();
            write_mosquitto_config(dir.path(), port, extra);
            match spawn_mosquitto(dir.path(), port) {
                Ok(child) => {
                    return Mosquitto {
                        port,
                        child: Some(child),
                        dir,
                    }
                }
                Err(report) if report.contains(ADDRESS_IN_USE) => {}
                Err(report) => panic!("mosquitto did not start:\n{report}"),
            }
        }
        panic!("mosquitto found no free port in 5 attempts");
    }

    pub fn addr(&self) -> SocketAddr {
        (LOCALHOST, self.port).into()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        read_or_empty(&self.dir().join("mosquitto.log"))
    }

    /// SIGKILL: clients see their connections reset and new connections refused.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Starts it again on the same port (killing it first if it still runs); returns once the
    /// port accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        // Another test may hold the port for a moment between our kill and the new bind.
        let end = Instant::now() + START_TIMEOUT;
        loop {
            match spawn_mosquitto(self.dir(), self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(report) if report.contains(ADDRESS_IN_USE) && Instant::now() < end => {
                    thread::sleep(RECONNECT_BACKOFF);
                }
                Err(report) => panic!("mosquitto did not restart on port {}:\n{report}", self.port),
            }
        }
    }

    /// SIGSTOP: a black hole. TCP handshakes still complete into the backlog, nothing answers.
    /// Returns once the kernel reports the process stopped.
    pub fn sigstop(&self) {
        let pid = self.signal(Signal::SIGSTOP);
        wait_until_sync("mosquitto to stop", COMMAND_TIMEOUT, || {
            process_state(pid) == Some('T')
        });
    }

    pub fn sigcont(&self) {
        let pid = self.signal(Signal::SIGCONT);
        wait_until_sync("mosquitto to continue", COMMAND_TIMEOUT, || {
            process_state(pid) != Some('T')
        });
    }

    fn signal(&self, sig: Signal) -> Pid {
        let child = self.child.as_ref().expect("mosquitto is not running");
        let pid = Pid::from_raw(child.id() as i32);
        signal::kill(pid, sig).unwrap_or_else(|e| panic!("{sig} to mosquitto: {e}"));
        pid
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

const ADDRESS_IN_USE: &str = "Address already in use";

fn write_mosquitto_config(dir: &Path, port: u16, extra: &str) {
    // As root mosquitto drops to the `mosquitto` user, which cannot use our 0700 temp dir;
    // `user root` keeps it as is (and is ignored when the tests don't run as root).
    let config = format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         log_dest file {log}\n\
         log_type all\n\
         user root\n\
         {extra}\n",
        log = dir.join("mosquitto.log").display(),
    );
    fs::write(dir.join("mosquitto.conf"), config).expect("write mosquitto.conf");
}

/// Starts mosquitto with the config in `dir` and waits until `port` accepts connections. On
/// failure returns what it wrote to stderr and its log, having reaped it.
fn spawn_mosquitto(dir: &Path, port: u16) -> Result<Child, String> {
    let stderr_path = dir.join("mosquitto.stderr");
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&stderr_path).expect("create mosquitto.stderr"))
        .spawn()
        .expect("spawn mosquitto (apt install mosquitto)");
    let report = |why: String| {
        format!(
            "{why}\n{}\n{}",
            read_or_empty(&stderr_path),
            read_or_empty(&dir.join("mosquitto.log"))
        )
    };
    let end = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(report(format!("mosquitto exited: {status}")));
        }
        if StdTcpStream::connect((LOCALHOST, port)).is_ok() {
            return Ok(child);
        }
        if Instant::now() > end {
            kill_and_reap(&mut child);
            return Err(report(
                "mosquitto did not accept connections in time".into(),
            ));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The state letter of /proc/<pid>/stat (R, S, T...).
fn process_state(pid: Pid) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain spaces; the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

// ---------------------------------------------------------------------------------------------
// Modbus TCP device simulator (tests/peers/modbus_sim.py)

/// A simulated Modbus TCP device (pymodbus) on a port it picked itself. See
/// tests/peers/modbus_sim.py for the register map and the commands.
pub struct ModbusSim {
    pub port: u16,
    child: Child,
    stdin: ChildStdin,
    stdout: mpsc::Receiver<String>,
    dir: TempDir,
}

impl ModbusSim {
    /// The default register map, answering as unit `unit`.
    pub fn start(unit: u8) -> ModbusSim {
        ModbusSim::spawn(unit, None)
    }

    /// `spec` replaces the map: `{"holding": {"0": 16812}, "input": {..}, "coils": {"0": true},
    /// "discrete": {..}, "counter": 20}` (raw registers / bools; `counter` is optional).
    pub fn start_with_spec(unit: u8, spec: &serde_json::Value) -> ModbusSim {
        ModbusSim::spawn(unit, Some(spec))
    }

    fn spawn(unit: u8, spec: Option<&serde_json::Value>) -> ModbusSim {
        let dir = tempfile::Builder::new()
            .prefix("modbus-sim-")
            .tempdir()
            .expect("create temp dir");
        let mut command = Command::new(venv_python());
        command
            .arg(manifest_dir().join("tests/peers/modbus_sim.py"))
            .args(["--port", "0", "--unit", &unit.to_string()]);
        if let Some(spec) = spec {
            let path = dir.path().join("spec.json");
            fs::write(&path, spec.to_string()).expect("write spec.json");
            command.arg("--spec").arg(path);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(dir.path().join("stderr")).expect("create stderr file"))
            .spawn()
            .expect("spawn modbus_sim.py");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        // A thread turns the pipe into a channel so that every read can have a deadline.
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("modbus-sim-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn stdout reader");
        let mut sim = ModbusSim {
            port: 0,
            child,
            stdin,
            stdout: rx,
            dir,
        };
        let end = Instant::now() + START_TIMEOUT;
        let ready = sim.next_line(end, "READY");
        sim.port = ready
            .strip_prefix("READY port=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("modbus_sim: expected READY, got {ready:?}"));
        sim
    }

    pub fn addr(&self) -> SocketAddr {
        (LOCALHOST, self.port).into()
    }

    /// What the simulator wrote to stderr (pymodbus logs warnings and errors there).
    pub fn stderr(&self) -> String {
        read_or_empty(&self.dir.path().join("stderr"))
    }

    /// Sends one control line and waits for its `OK`.
    pub fn command(&mut self, cmd: &str) {
        self.command_output(cmd);
    }

    /// Requests received since start, answered or not, for any unit id.
    pub fn requests(&mut self) -> u64 {
        self.command_output("stats")
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

    /// The lines printed before the command's `OK`.
    fn command_output(&mut self, cmd: &str) -> Vec<String> {
        let cmd = cmd.trim();
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("modbus_sim: write {cmd:?}: {e}\n{}", self.stderr()));
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
                "modbus_sim rejected {cmd:?}: {line}"
            );
            output.push(line);
        }
    }

    fn next_line(&mut self, end: Instant, expecting: &str) -> String {
        let timeout = end.saturating_duration_since(Instant::now());
        match self.stdout.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("modbus_sim: no {expecting:?} in time\n{}", self.stderr())
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                panic!(
                    "modbus_sim exited ({status}) before {expecting:?}\n{}",
                    self.stderr()
                )
            }
        }
    }
}

impl Drop for ModbusSim {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------------
// TCP relay

/// What the relay does with traffic; see [`Relay`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Keep every connection open and accept new ones, but move no byte in either direction.
    /// Nothing is read, so nothing is lost: after `Pass` the streams continue where they were.
    /// New connections reach the target only once the relay passes traffic again.
    BlackHole,
    /// Reset (RST) every current connection, both sides; new connections are accepted and reset
    /// at once, so a client's connect succeeds and its first read or write fails.
    Refuse,
    /// Reset every current connection, both sides, then behave as `Pass`.
    Reset,
    /// Forward both ways, holding every chunk this long first (a slow, high-latency link).
    Delay(Duration),
}

#[derive(Clone, Copy, Debug)]
struct RelayState {
    /// Never `Reset`: that is a one-off action recorded as a new generation.
    mode: Mode,
    /// Connections from an older generation are cut. Bumped by `Reset` and `Refuse`, so that a
    /// quick `Refuse` then `Pass` still cuts them even if they only ever see the latest state.
    generation: u64,
}

/// An in-process TCP relay on 127.0.0.1, forwarding to `target`, that can cut the link at
/// runtime. It runs on its own thread and runtime so that sync and async tests can use it.
/// Mode changes take effect asynchronously: wait on [`Relay::connections`] or on what the peers
/// observe.
pub struct Relay {
    port: u16,
    state: watch::Sender<RelayState>,
    open: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let listener = StdTcpListener::bind((LOCALHOST, 0)).expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking relay");
        let port = listener.local_addr().expect("relay addr").port();
        let (state, state_rx) = watch::channel(RelayState {
            mode: Mode::Pass,
            generation: 0,
        });
        let open = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = oneshot::channel();
        let thread = {
            let open = open.clone();
            thread::Builder::new()
                .name(format!("relay-{port}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("relay runtime");
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener).expect("relay listener");
                        tokio::select! {
                            _ = stop_rx => {}
                            () = accept_loop(listener, target, state_rx, open) => {}
                        }
                    });
                    // Dropping the runtime drops every connection task, closing its sockets.
                })
                .expect("spawn relay thread")
        };
        Relay {
            port,
            state,
            open,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        (LOCALHOST, self.port).into()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.send_modify(|s| match mode {
            Mode::Reset => {
                s.generation += 1;
                s.mode = Mode::Pass;
            }
            Mode::Refuse => {
                s.generation += 1;
                s.mode = Mode::Refuse;
            }
            Mode::Pass | Mode::BlackHole | Mode::Delay(_) => s.mode = mode,
        });
    }

    /// Client connections currently open through the relay.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    state: watch::Receiver<RelayState>,
    open: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        // Taken now, not in the task, so a reset issued right after this accept cuts it too.
        let current = *state.borrow();
        if current.mode == Mode::Refuse {
            abort(&client);
            continue;
        }
        let guard = OpenConnection::new(&open);
        let state = state.clone();
        tokio::spawn(async move {
            relay_connection(client, target, state, current.generation).await;
            drop(guard);
        });
    }
}

/// Closes with RST rather than FIN, as a reset link or a refusing host would.
fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

enum PumpEnd {
    /// The source closed its side; the other direction may go on.
    Eof,
    /// The relay cut the connection.
    Cut,
    /// A socket failed; give up on the whole connection.
    Failed,
}

async fn relay_connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<RelayState>,
    generation: u64,
) {
    if !wait_for_pass(&mut state, generation).await {
        return abort(&client);
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return abort(&client);
    };
    let cut = {
        let (client_rx, client_tx) = client.split();
        let (upstream_rx, upstream_tx) = upstream.split();
        let up = pump(client_rx, upstream_tx, state.clone(), generation);
        let down = pump(upstream_rx, client_tx, state, generation);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            let end = tokio::select! {
                end = &mut up, if !up_done => { up_done = true; end }
                end = &mut down, if !down_done => { down_done = true; end }
            };
            match end {
                PumpEnd::Eof if !(up_done && down_done) => {}
                PumpEnd::Eof | PumpEnd::Failed => break false,
                PumpEnd::Cut => break true,
            }
        }
    };
    if cut {
        abort(&client);
        abort(&upstream);
    }
}

/// Waits until the relay passes traffic; false if this connection's generation is cut.
async fn wait_for_pass(state: &mut watch::Receiver<RelayState>, generation: u64) -> bool {
    loop {
        let current = *state.borrow_and_update();
        if current.generation != generation || current.mode == Mode::Refuse {
            return false;
        }
        if matches!(current.mode, Mode::Pass | Mode::Delay(_)) {
            return true;
        }
        if state.changed().await.is_err() {
            return false;
        }
    }
}

/// Copies one direction, but only while the relay is in `Pass`; a read or write in progress
/// when the mode changes is abandoned (both are cancel-safe) and retried once it passes again.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut state: watch::Receiver<RelayState>,
    generation: u64,
) -> PumpEnd {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = loop {
            if !wait_for_pass(&mut state, generation).await {
                return PumpEnd::Cut;
            }
            tokio::select! {
                read = from.read(&mut buf) => match read {
                    Ok(n) => break n,
                    Err(_) => return PumpEnd::Failed,
                },
                _ = state.changed() => {}
            }
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return PumpEnd::Eof;
        }
        let delay = match state.borrow().mode {
            Mode::Delay(d) => d,
            _ => Duration::ZERO,
        };
        if !delay.is_zero() {
            // The link's latency, not synchronisation.
            tokio::time::sleep(delay).await;
        }
        let mut sent = 0;
        while sent < n {
            if !wait_for_pass(&mut state, generation).await {
                return PumpEnd::Cut;
            }
            tokio::select! {
                written = to.write(&buf[sent..n]) => match written {
                    Ok(0) | Err(_) => return PumpEnd::Failed,
                    Ok(k) => sent += k,
                },
                _ = state.changed() => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT watcher

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Message {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {} is not JSON ({e}): {}",
                self.topic,
                self.text()
            )
        })
    }
}

/// An MQTT subscriber (QoS 1, clean session) recording every publish it receives. It runs on
/// its own thread, reconnects by itself when the broker goes away and subscribes again on every
/// connection.
pub struct MqttWatcher {
    messages: Arc<Mutex<Vec<Message>>>,
    subscriptions: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MqttWatcher {
    /// Returns once the broker has acknowledged the subscription, so nothing published after
    /// this returns is missed.
    pub fn connect(port: u16, filter: &str) -> MqttWatcher {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        let client_id = format!(
            "test-watcher-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::SeqCst)
        );
        let mut options = MqttOptions::new(client_id, LOCALHOST.to_string(), port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, events) = AsyncClient::new(options, 16);

        let messages = Arc::new(Mutex::new(Vec::new()));
        let subscriptions = Arc::new(AtomicUsize::new(0));
        let (stop, stop_rx) = oneshot::channel();
        let thread = {
            let (messages, subscriptions) = (messages.clone(), subscriptions.clone());
            let filter = filter.to_owned();
            thread::Builder::new()
                .name(format!("mqtt-watcher-{port}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("watcher runtime");
                    runtime.block_on(async move {
                        let watch = watch_events(client, events, filter, messages, subscriptions);
                        tokio::select! {
                            _ = stop_rx => {}
                            () = watch => {}
                        }
                    });
                })
                .expect("spawn watcher thread")
        };
        let watcher = MqttWatcher {
            messages,
            subscriptions,
            stop: Some(stop),
            thread: Some(thread),
        };
        wait_until_sync(
            &format!("the watcher's subscription to {filter} on port {port}"),
            START_TIMEOUT,
            || watcher.subscriptions() > 0,
        );
        watcher
    }

    /// Subscriptions acknowledged so far: one per (re)connection.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.load(Ordering::SeqCst)
    }

    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    pub fn count(&self, mut pred: impl FnMut(&Message) -> bool) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| pred(m))
            .count()
    }

    /// Forgets what was received so far.
    pub fn clear(&self) {
        self.messages.lock().unwrap().clear();
    }

    /// The first message received (before or after the call) that matches `pred`.
    pub async fn wait_for(
        &self,
        mut pred: impl FnMut(&Message) -> bool,
        deadline: Duration,
    ) -> Message {
        match poll(deadline, || self.find(&mut pred)).await {
            Some(message) => message,
            None => self.no_match(deadline),
        }
    }

    pub fn wait_for_sync(
        &self,
        mut pred: impl FnMut(&Message) -> bool,
        deadline: Duration,
    ) -> Message {
        poll_sync(deadline, || self.find(&mut pred)).unwrap_or_else(|| self.no_match(deadline))
    }

    fn find(&self, pred: &mut impl FnMut(&Message) -> bool) -> Option<Message> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .find(|m| pred(m))
            .cloned()
    }

    fn no_match(&self, deadline: Duration) -> ! {
        let received: Vec<String> = self
            .messages()
            .iter()
            .map(|m| format!("  {} retain={} {:?}", m.topic, m.retain, m.text()))
            .collect();
        panic!(
            "no MQTT message matched within {deadline:?}; received {}:\n{}",
            received.len(),
            received.join("\n")
        )
    }
}

impl Drop for MqttWatcher {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn watch_events(
    client: AsyncClient,
    mut events: EventLoop,
    filter: String,
    messages: Arc<Mutex<Vec<Message>>>,
    subscriptions: Arc<AtomicUsize>,
) {
    loop {
        match events.poll().await {
            // A clean session forgets subscriptions, so every new connection needs one.
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client
                    .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                    .expect("queue subscribe");
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                if granted {
                    subscriptions.fetch_add(1, Ordering::SeqCst);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                messages.lock().unwrap().push(Message {
                    topic: publish.topic,
                    payload: publish.payload.to_vec(),
                    retain: publish.retain,
                });
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(RECONNECT_BACKOFF).await,
        }
    }
}
