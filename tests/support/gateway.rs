//! The real `fieldbridge` binary: a config builder that renders the TOML a user would write,
//! a running gateway (spawned, waited for, its log captured, killed on drop), and the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tempfile::TempDir;

use super::mqtt::Message;
use super::process::{text, Proc};
use super::wait::{free_port, wait_for, wait_until};

pub const BIN: &str = env!("CARGO_BIN_EXE_fieldbridge");
const START_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TIMEOUT: Duration = Duration::from_secs(20);
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// `fieldbridge ARGS…` to completion (the CLI tools: check, scan, read, write, status...).
pub fn fieldbridge<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Proc::run(
        "fieldbridge",
        Command::new(BIN).args(args).env("NO_COLOR", "1"),
        CLI_TIMEOUT,
    )
}

/// `fieldbridge passwd USER` with the password on stdin: the `USER:HASH` line it prints.
pub fn passwd_line(user: &str, password: &str) -> String {
    let out = Proc::run_with_input(
        "fieldbridge passwd",
        Command::new(BIN).args(["passwd", user]),
        &format!("{password}\n"),
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "passwd: {}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The hash part of [`passwd_line`].
pub fn hash_of(password: &str) -> String {
    let line = passwd_line("u", password);
    line.split_once(':').unwrap().1.to_string()
}

/// `[upstream]` of a test gateway: quick keep-alive and reconnects.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub port: u16,
    pub keep_alive: &'static str,
    pub connect_timeout: Option<&'static str>,
    /// Lines appended to `[upstream]` (and its sub-tables, e.g. `[upstream.tls]`).
    pub extra: String,
}

/// A gateway's config, rendered as the TOML a user would write, and how to run it.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub id: String,
    /// The embedded broker listens on `broker_ip:broker_port`.
    pub broker_ip: &'static str,
    pub broker_port: u16,
    /// Lines appended to `[broker]` (and its sub-tables).
    pub broker: String,
    pub shutdown_timeout: Option<&'static str>,
    pub stats_interval: Option<&'static str>,
    pub commit_interval: Option<&'static str>,
    pub upstream: Option<Upstream>,
    /// Top-level tables appended verbatim: `[[buses]]`, `[[devices]]`, `[[forward]]`...
    pub body: String,
    /// Run with the data dir on a private tmpfs of this size.
    pub tmpfs_data_kib: Option<u64>,
    /// Runs the gateway as `prefix… fieldbridge run --config FILE` (setpriv, unshare...).
    pub prefix: Vec<OsString>,
    pub env: Vec<(String, OsString)>,
    /// Signal the gateway's whole process group when stopping it.
    pub process_group: bool,
}

impl GatewayConfig {
    /// `[gateway]` id and data dir and `[broker]` listen on loopback, nothing else.
    pub fn minimal() -> GatewayConfig {
        GatewayConfig {
            id: "gw".into(),
            broker_ip: "127.0.0.1",
            broker_port: free_port(),
            broker: String::new(),
            shutdown_timeout: None,
            stats_interval: None,
            commit_interval: None,
            upstream: None,
            body: String::new(),
            tmpfs_data_kib: None,
            prefix: Vec::new(),
            env: Vec::new(),
            process_group: false,
        }
    }

    /// Only the embedded broker, listening on `listen_ip`, configured by `broker` (the body of
    /// `[broker]` and its sub-tables).
    pub fn broker_only(listen_ip: &'static str, broker: &str) -> GatewayConfig {
        let mut c = GatewayConfig::minimal();
        c.broker_ip = listen_ip;
        c.broker = broker.to_owned();
        c
    }

    /// Quick shutdown, stats every second and a 20 ms outbox commit interval.
    pub fn standard() -> GatewayConfig {
        let mut c = GatewayConfig::minimal();
        c.shutdown_timeout = Some("3s");
        c.stats_interval = Some("1s");
        c.commit_interval = Some("20ms");
        c
    }

    /// An upstream broker on 127.0.0.1:`port` (keep-alive 1 s, connect timeout 2 s).
    pub fn upstream(mut self, port: u16) -> Self {
        self.upstream = Some(Upstream {
            port,
            keep_alive: "1s",
            connect_timeout: Some("2s"),
            extra: String::new(),
        });
        self
    }

    /// Lines appended to `[upstream]`.
    pub fn upstream_extra(mut self, extra: impl Into<String>) -> Self {
        self.upstream.as_mut().expect("no upstream").extra = extra.into();
        self
    }

    /// Appends top-level tables (a device, a bus, `[[forward]]`...).
    pub fn with(mut self, tables: impl fmt::Display) -> Self {
        self.body.push_str(&tables.to_string());
        self.body.push('\n');
        self
    }

    pub fn stats_interval(mut self, interval: &'static str) -> Self {
        self.stats_interval = Some(interval);
        self
    }

    pub fn tmpfs_data(mut self, kib: u64) -> Self {
        self.tmpfs_data_kib = Some(kib);
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// Runs the gateway through `prefix` (e.g. `setpriv --reuid=… --`).
    pub fn prefix<S: Into<OsString>>(mut self, prefix: impl IntoIterator<Item = S>) -> Self {
        self.prefix = prefix.into_iter().map(Into::into).collect();
        self
    }

    pub fn process_group(mut self) -> Self {
        self.process_group = true;
        self
    }

    /// The config file's text with the data dir at `data_dir`.
    pub fn render(&self, data_dir: &Path) -> String {
        let mut s = format!(
            "[gateway]\nid = \"{}\"\ndata_dir = \"{}\"\n",
            self.id,
            data_dir.display()
        );
        if let Some(t) = self.shutdown_timeout {
            s += &format!("shutdown_timeout = \"{t}\"\n");
        }
        if let Some(t) = self.stats_interval {
            s += &format!("stats_interval = \"{t}\"\n");
        }
        s += &format!(
            "\n[broker]\nlisten = \"{}:{}\"\n{}\n",
            self.broker_ip, self.broker_port, self.broker
        );
        if let Some(t) = self.commit_interval {
            s += &format!("[outbox]\ncommit_interval = \"{t}\"\n\n");
        }
        if let Some(up) = &self.upstream {
            s += &format!(
                "[upstream]\nhost = \"127.0.0.1\"\nport = {}\nkeep_alive = \"{}\"\n",
                up.port, up.keep_alive
            );
            if let Some(t) = up.connect_timeout {
                s += &format!("connect_timeout = \"{t}\"\n");
            }
            s += &format!(
                "reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n{}\n\n",
                up.extra
            );
        }
        s += &self.body;
        s
    }

    /// Writes `dir/fieldbridge.toml` (data dir `dir/data`) and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let cfg = dir.join("fieldbridge.toml");
        std::fs::write(&cfg, self.render(&dir.join("data"))).expect("write fieldbridge.toml");
        cfg
    }

    /// Starts the gateway in `dir` (config, data and `gateway.log` there) and returns once its
    /// embedded broker accepts connections.
    pub fn start(&self, dir: &Path) -> Gateway {
        let mut gw = self.spawn(dir);
        let port = self.broker_port;
        wait_until(
            START_TIMEOUT,
            "the gateway's embedded broker to listen",
            || {
                if let Some(status) = gw.proc.try_wait() {
                    panic!("gateway exited early ({status}):\n{}", gw.log());
                }
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            },
        );
        gw
    }

    /// Like [`GatewayConfig::start`] in a temporary directory the gateway owns.
    pub fn start_in_temp(&self) -> Gateway {
        self.start_owning(tempfile::tempdir().expect("temp dir"))
    }

    /// Like [`GatewayConfig::start`] in `dir`, which the gateway owns (and removes).
    pub fn start_owning(&self, dir: TempDir) -> Gateway {
        let mut gw = self.start(dir.path());
        gw.temp = Some(dir);
        gw
    }

    /// Starts the gateway without waiting for anything (for tests that wait for something
    /// else: sd_notify's READY, a log line).
    pub fn spawn(&self, dir: &Path) -> Gateway {
        let cfg = self.write(dir);
        let mut program: Vec<OsString> = self.prefix.clone();
        if let Some(kib) = self.tmpfs_data_kib {
            // The data dir on a small tmpfs that only the gateway's private mount namespace
            // sees: disk-full without touching the host's mounts. `exec` keeps the gateway's
            // pid, so `nsenter -t <pid> -m` reaches the same mount.
            let data = dir.join("data");
            std::fs::create_dir_all(&data).unwrap();
            program.extend(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    &format!(
                        "mount -t tmpfs -o size={kib}k tmpfs '{}' && exec \"$@\"",
                        data.display()
                    ),
                    "sh",
                ]
                .map(OsString::from),
            );
        }
        program.push(BIN.into());
        let mut cmd = Command::new(&program[0]);
        cmd.args(&program[1..])
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info,fieldbridge=debug")
            .env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = dir.join("gateway.log");
        let mut spawn = Proc::build("gateway", &mut cmd).log_to(&log);
        if self.process_group {
            spawn = spawn.process_group();
        }
        Gateway {
            proc: spawn.start(),
            dir: dir.to_path_buf(),
            config: cfg,
            broker_port: self.broker_port,
            temp: None,
        }
    }
}

/// A running `fieldbridge run`; killed (SIGKILL) on drop.
pub struct Gateway {
    proc: Proc,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub broker_port: u16,
    /// Dropped after the process.
    temp: Option<TempDir>,
}

impl Gateway {
    pub fn pid(&self) -> Pid {
        self.proc.pid()
    }

    /// Runs a shell command inside the gateway's mount namespace.
    pub fn in_mount_ns(&self, script: &str) -> Output {
        Proc::run(
            "nsenter",
            Command::new("nsenter").args(["-t", &self.pid().to_string(), "-m", "sh", "-c", script]),
            CLI_TIMEOUT,
        )
    }

    /// Everything this gateway process logged so far (also kept in `dir/gateway.log`).
    pub fn log(&self) -> String {
        self.proc.text()
    }

    /// Waits until the log has a line containing every one of `parts` and returns it.
    pub fn wait_log(&self, parts: &[&str]) -> String {
        self.proc
            .wait_for_line(LOG_TIMEOUT, &format!("a log line with {parts:?}"), |l| {
                parts.iter().all(|p| l.contains(p))
            })
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.proc.try_wait()
    }

    /// Writes `text` as the gateway's config file (as an operator's editor would) and sends
    /// SIGHUP, as `systemctl reload` does.
    pub fn reload_with(&self, text: &str) {
        std::fs::write(&self.config, text).expect("rewrite fieldbridge.toml");
        self.proc.signal(Signal::SIGHUP);
    }

    /// The config file the gateway was started with, as written.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config).expect("read fieldbridge.toml")
    }

    /// SIGKILL, as a power cut or the OOM killer would.
    pub fn kill9(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(20))
    }

    /// SIGTERM, then wait for the exit; panics with the log if it takes longer than `deadline`.
    pub fn terminate_within(&mut self, deadline: Duration) -> ExitStatus {
        self.proc.signal(Signal::SIGTERM);
        self.proc.wait_exit(deadline)
    }
}

/// A Modbus TCP device "dev" polling the simulator of tests/peers/modbus_sim.py (default
/// map: [`SIM_POINTS`]).
#[derive(Clone, Debug)]
pub struct SimDevice {
    /// "dev" unless named otherwise.
    pub name: String,
    pub port: u16,
    pub interval: &'static str,
    pub timeout: &'static str,
    pub points: String,
    /// Device-level lines (`payload = "device"`, `report = "on_change"`...).
    pub keys: String,
}

impl SimDevice {
    pub fn new(port: u16) -> SimDevice {
        SimDevice {
            name: "dev".into(),
            port,
            interval: "100ms",
            timeout: "300ms",
            points: SIM_POINTS.to_owned(),
            keys: String::new(),
        }
    }

    /// Appends device-level lines (`payload = "device"`, report keys...).
    pub fn keys(mut self, keys: impl AsRef<str>) -> Self {
        self.keys.push_str(keys.as_ref());
        self.keys.push('\n');
        self
    }

    pub fn interval(mut self, interval: &'static str) -> Self {
        self.interval = interval;
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn points(mut self, points: impl Into<String>) -> Self {
        self.points = points.into();
        self
    }
}

impl fmt::Display for SimDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[[devices]]\nname = \"{}\"\nkind = \"modbus_tcp\"\nhost = \"127.0.0.1\"\nport = {}\nunit_id = 1\ninterval = \"{}\"\ntimeout = \"{}\"\nbackoff_max = \"500ms\"\n{}\n{}\n",
            self.name, self.port, self.interval, self.timeout, self.keys, self.points
        )
    }
}

/// The points of the simulator's default map (tests/peers/modbus_sim.py).
pub const SIM_POINTS: &str = r#"
[[devices.points]]
name = "f32_abcd"
table = "holding"
address = 0
type = "f32"
unit = "°C"

[[devices.points]]
name = "i32"
table = "holding"
address = 2
type = "i32"

[[devices.points]]
name = "u16_scaled"
table = "holding"
address = 4
type = "u16"
scale = 0.1
unit = "V"

[[devices.points]]
name = "f32_cdab"
table = "holding"
address = 10
type = "f32"
word_order = "CDAB"

[[devices.points]]
name = "i16"
table = "holding"
address = 12
type = "i16"

[[devices.points]]
name = "u32"
table = "holding"
address = 13
type = "u32"

[[devices.points]]
name = "counter"
table = "holding"
address = 20
type = "u16"

[[devices.points]]
name = "input_u16"
table = "input"
address = 0
type = "u16"

[[devices.points]]
name = "input_f32"
table = "input"
address = 1
type = "f32"

[[devices.points]]
name = "coil0"
table = "coil"
address = 0
type = "bool"

[[devices.points]]
name = "coil1"
table = "coil"
address = 1
type = "bool"

[[devices.points]]
name = "discrete1"
table = "discrete"
address = 1
type = "bool"
"#;

/// A reading (not a status or stats message) of the test device "dev" of gateway "gw": one
/// point's, or with `payload = "device"` one poll's.
pub fn is_reading(m: &Message) -> bool {
    (m.topic.starts_with("fieldbridge/gw/dev/") || m.topic == "fieldbridge/gw/dev")
        && !m.topic.ends_with("/status")
        && m.payload.first() == Some(&b'{')
}

/// Message ids of readings, per gateway boot: boot → seq → copies received.
pub fn ids_seen(msgs: &[Message]) -> BTreeMap<String, BTreeMap<u64, usize>> {
    let mut out: BTreeMap<String, BTreeMap<u64, usize>> = BTreeMap::new();
    for m in msgs.iter().filter(|m| is_reading(m)) {
        if let Some(id) = m.json()["id"].as_str() {
            let (boot, seq) = split_id(id);
            *out.entry(boot).or_default().entry(seq).or_default() += 1;
        }
    }
    out
}

/// Splits a message id "<boot>-<seq>" (the gateway's id format: a random per-start prefix and
/// a sequence without gaps).
pub fn split_id(id: &str) -> (String, u64) {
    let (boot, seq) = id.rsplit_once('-').expect("id has boot-seq form");
    (boot.to_string(), seq.parse().expect("numeric sequence"))
}

/// A gateway without devices or upstream, in a temporary directory of its own: only its
/// embedded broker, listening on `listen_ip`, configured by `broker` (the body of `[broker]`
/// and its sub-tables).
pub fn broker_gateway(listen_ip: &'static str, broker: &str) -> Gateway {
    GatewayConfig::broker_only(listen_ip, broker).start_in_temp()
}

/// The message ids of every row in the outbox (read-only, as another process would).
pub fn stored_ids(data: &Path) -> BTreeSet<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let url = format!("sqlite://{}?mode=ro", data.join("outbox.db").display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT payload FROM outbox")
            .fetch_all(&mut c)
            .await
            .unwrap();
        rows.iter()
            .filter_map(|(p,)| serde_json::from_slice::<serde_json::Value>(p).ok())
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect()
    })
}
