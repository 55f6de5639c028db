//! Independent MQTT clients for the broker tests: mosquitto_pub / mosquitto_sub (apt
//! mosquitto-clients) and a paho-mqtt script (tests/peers/mqtt_ws_client.py, in the test venv),
//! run as child processes whose output lines are collected, waited for with deadlines, and
//! killed on drop. Also: a gateway that only runs its embedded broker, and test certificates.
//!
//! Included with `#[path]` by the broker test files, next to `mod common`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::gateway::Gateway;
use crate::common::peers::{free_port, venv_python};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Runs a command to completion, killing it after `deadline`.
pub fn run(cmd: &mut Command, deadline: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let end = Instant::now() + deadline;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} did not finish within {deadline:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// `mosquitto_pub -h 127.0.0.1 -p PORT ARGS…`, to completion.
pub fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    run(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
        DEADLINE,
    )
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A client process whose stdout and stderr lines are collected as they come.
pub struct Lines {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Lines {
    pub fn spawn(cmd: &mut Command) -> Lines {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let lines = lines.clone();
            readers.push(thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            }));
        }
        Lines {
            child,
            lines,
            readers,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The first line (already seen or coming) that satisfies `pred`.
    pub fn wait_for(&self, what: &str, deadline: Duration, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + deadline;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            if Instant::now() > end {
                panic!(
                    "timed out after {deadline:?} waiting for {what}; output so far:\n{}",
                    self.lines().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Messages printed by `mosquitto_sub -F 'MSG %r %q %t %p'` (or the paho script), as
    /// (retained, qos, topic, payload).
    pub fn messages(&self) -> Vec<(bool, u8, String, String)> {
        self.lines()
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("MSG ")?;
                let mut it = rest.splitn(4, ' ');
                let r = it.next()? == "1";
                let q = it.next()?.parse().ok()?;
                let t = it.next()?.to_string();
                let p = it.next().unwrap_or("").to_string();
                Some((r, q, t, p))
            })
            .collect()
    }

    pub fn wait_message(&self, topic: &str, deadline: Duration) -> (bool, u8, String, String) {
        let end = Instant::now() + deadline;
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| m.2 == topic) {
                return m;
            }
            if Instant::now() > end {
                panic!(
                    "no message on {topic} within {deadline:?}; output:\n{}",
                    self.lines().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the process to exit by itself and returns whether it succeeded.
    pub fn wait_exit(&mut self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return s.success();
            }
            if Instant::now() > end {
                panic!(
                    "client did not exit within {deadline:?}; output:\n{}",
                    self.lines().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `mosquitto_sub -d` printing each message as `MSG <retain> <qos> <topic> <payload>`; debug
/// lines show CONNACK and SUBACK ("Subscribed (mid: 1): 0, 128").
pub fn mosquitto_sub(port: u16, args: &[&str]) -> Lines {
    // stdbuf: its debug lines (the SUBACK) are block-buffered when stdout is a pipe.
    Lines::spawn(
        Command::new("stdbuf")
            .args(["-oL", "-eL", "mosquitto_sub"])
            .args(["-d", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-F", "MSG %r %q %t %p"])
            .args(args),
    )
}

/// Waits until a `mosquitto_sub -d` has its SUBACK and returns the granted codes.
pub fn subscribed(sub: &Lines) -> Vec<u8> {
    let line = sub.wait_for("the SUBACK", DEADLINE, |l| {
        // Not "…were denied.": it goes to stderr and may be read before the SUBACK line.
        l.starts_with("Subscribed (mid:") || l.contains("Connection error")
    });
    let Some((_, codes)) = line.split_once("):") else {
        return Vec::new();
    };
    codes
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect()
}

/// The paho-mqtt client of tests/peers/mqtt_ws_client.py (see its --help).
pub fn paho(args: &[&str]) -> Lines {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mqtt_ws_client.py");
    Lines::spawn(Command::new(venv_python()).arg("-u").arg(script).args(args))
}

/// `fieldbridge passwd USER` with the password on stdin: the `USER:HASH` line it prints.
pub fn passwd_line(user: &str, password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
        .args(["passwd", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "passwd: {}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The hash part of `passwd_line`.
pub fn hash_of(password: &str) -> String {
    let line = passwd_line("u", password);
    line.split_once(':').unwrap().1.to_string()
}

/// A gateway without devices or upstream: only its embedded broker, configured by `broker`
/// (the body of `[broker]` and its sub-tables; `listen` is set here to `listen_ip:port`).
pub struct BrokerGateway {
    pub gw: Gateway,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl BrokerGateway {
    pub fn start(listen_ip: &str, broker: &str) -> BrokerGateway {
        let dir = tempfile::tempdir().unwrap();
        BrokerGateway::start_in(dir, listen_ip, broker)
    }

    pub fn start_in(dir: tempfile::TempDir, listen_ip: &str, broker: &str) -> BrokerGateway {
        let port = free_port();
        let config = format!(
            "[gateway]\nid = \"gw\"\ndata_dir = \"{}\"\n\n[broker]\nlisten = \"{listen_ip}:{port}\"\n{broker}\n",
            dir.path().join("data").display()
        );
        let gw = Gateway::start_with_config(&config, port, dir.path());
        BrokerGateway { gw, port, dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Waits until the gateway's log has a line containing every one of `parts`.
    pub fn wait_log(&self, parts: &[&str]) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(l) = self
                .gw
                .log()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.to_string();
            }
            if Instant::now() > end {
                panic!("no log line with {parts:?}:\n{}", self.gw.log());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A throw-away CA (`ca.pem`) and a server certificate (`server.pem`, `server.key`) for
/// localhost and 127.0.0.1, made with openssl.
pub fn make_certs(dir: &Path) {
    let run = |args: &str| {
        let out = Command::new("openssl")
            .args(args.split_whitespace())
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args}: {}", text(&out));
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    run(&format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca"
    ));
    // The extension also makes it a version 3 certificate, which rustls requires.
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&format!(
        "req {ec} -keyout server.key -out server.csr -subj /CN=localhost"
    ));
    run("x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext");
}
