//! Runs the real `fieldbridge` binary as a child process for end-to-end tests: writes its config,
//! captures its log, and kills it (SIGKILL or SIGTERM) on demand and on drop.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::peers::{free_port, wait_until_sync, Message};

/// Settings of a test gateway; `config()` renders them as the TOML a user would write.
pub struct Spec {
    pub id: String,
    pub broker_port: u16,
    pub upstream_port: Option<u16>,
    pub modbus_port: u16,
    pub interval: &'static str,
    pub timeout: &'static str,
    /// `[[devices.points]]` tables of the one device, "dev".
    pub points: String,
    pub extra_upstream: String,
    pub stats_interval: &'static str,
    /// Top-level tables appended verbatim (e.g. `[[forward]]`).
    pub extra: String,
    /// Run with the data dir on a private tmpfs of this size.
    pub tmpfs_data_kib: Option<u64>,
}

impl Spec {
    pub fn new(modbus_port: u16, upstream_port: Option<u16>) -> Spec {
        Spec {
            id: "gw".into(),
            broker_port: free_port(),
            upstream_port,
            modbus_port,
            interval: "100ms",
            timeout: "300ms",
            points: POINTS.to_string(),
            extra_upstream: String::new(),
            stats_interval: "1s",
            extra: String::new(),
            tmpfs_data_kib: None,
        }
    }

    pub fn config(&self, data_dir: &Path) -> String {
        let upstream = match self.upstream_port {
            Some(p) => format!(
                "[upstream]\nhost = \"127.0.0.1\"\nport = {p}\nkeep_alive = \"1s\"\nconnect_timeout = \"2s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n{}\n",
                self.extra_upstream
            ),
            None => String::new(),
        };
        format!(
            r#"[gateway]
id = "{id}"
data_dir = "{dir}"
shutdown_timeout = "3s"
stats_interval = "{stats}"

[broker]
listen = "127.0.0.1:{bp}"

[outbox]
commit_interval = "20ms"

{upstream}
{extra}

[[devices]]
name = "dev"
kind = "modbus_tcp"
host = "127.0.0.1"
port = {mp}
unit_id = 1
interval = "{interval}"
timeout = "{timeout}"
backoff_max = "500ms"

{points}
"#,
            id = self.id,
            dir = data_dir.display(),
            bp = self.broker_port,
            mp = self.modbus_port,
            interval = self.interval,
            timeout = self.timeout,
            points = self.points,
            stats = self.stats_interval,
            extra = self.extra,
        )
    }
}

/// The points of the simulator's default map (tests/peers/modbus_sim.py).
pub const POINTS: &str = r#"
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

pub struct Gateway {
    child: Option<Child>,
    pub dir: PathBuf,
    pub broker_port: u16,
}

impl Gateway {
    /// Starts the gateway with `spec` using `dir` as config and data directory, and waits until
    /// its embedded broker accepts connections.
    pub fn start(spec: &Spec, dir: &Path) -> Gateway {
        let config = spec.config(&dir.join("data"));
        Gateway::launch(&config, spec.broker_port, dir, spec.tmpfs_data_kib)
    }

    /// Like [`Gateway::start`] with a config written by the test; its embedded broker must
    /// listen on `127.0.0.1:<broker_port>`.
    pub fn start_with_config(config: &str, broker_port: u16, dir: &Path) -> Gateway {
        Gateway::launch(config, broker_port, dir, None)
    }

    fn launch(config: &str, broker_port: u16, dir: &Path, tmpfs_data_kib: Option<u64>) -> Gateway {
        let cfg = dir.join("fieldbridge.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("gateway.log"))
            .unwrap();
        let bin = env!("CARGO_BIN_EXE_fieldbridge");
        let mut cmd = match tmpfs_data_kib {
            // The data dir on a small tmpfs that only the gateway's private mount namespace
            // sees: disk-full without touching the host's mounts. `exec` keeps the gateway's
            // pid, so `nsenter -t <pid> -m` reaches the same mount.
            Some(kib) => {
                let data = dir.join("data");
                std::fs::create_dir_all(&data).unwrap();
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                    "mount -t tmpfs -o size={kib}k tmpfs '{}' && exec '{bin}' run --config '{}'",
                    data.display(),
                    cfg.display()
                ));
                c
            }
            None => {
                let mut c = Command::new(bin);
                c.args(["run", "--config"]).arg(&cfg);
                c
            }
        };
        let child = cmd
            .env("RUST_LOG", "info,fieldbridge=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut g = Gateway {
            child: Some(child),
            dir: dir.to_path_buf(),
            broker_port,
        };
        let port = broker_port;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = g.child.as_mut().map(|c| c.try_wait()) {
                panic!("gateway exited early ({status}):\n{}", g.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "the gateway's embedded broker did not listen within 30 s:\n{}",
                    g.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        g
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Runs a shell command inside the gateway's mount namespace.
    pub fn in_mount_ns(&self, script: &str) -> std::process::Output {
        Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-m", "sh", "-c", script])
            .output()
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM).unwrap();
        let mut status = None;
        wait_until_sync(
            "the gateway to exit after SIGTERM",
            Duration::from_secs(20),
            || {
                status = c.try_wait().unwrap();
                status.is_some()
            },
        );
        status.unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A reading (not a status or stats message) of the test device "dev" of gateway "gw".
pub fn is_reading(m: &Message) -> bool {
    m.topic.starts_with("fieldbridge/gw/dev/")
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
