//! A mosquitto broker of its own for each test, on a free loopback port, logging to a file in
//! its temp dir.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tempfile::TempDir;

use super::process::Proc;
use super::wait::{eventually, free_port, wait_for, wait_until, LOCALHOST};

/// Generous, because a loaded CI machine can take seconds to start anything.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
const ADDRESS_IN_USE: &str = "Address already in use";

pub struct Mosquitto {
    pub port: u16,
    proc: Option<Proc>,
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
            write_config(dir.path(), port, extra);
            match spawn(dir.path(), port) {
                Ok(proc) => {
                    return Mosquitto {
                        port,
                        proc: Some(proc),
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
        fs::read_to_string(self.dir().join("mosquitto.log")).unwrap_or_default()
    }

    /// SIGKILL: clients see their connections reset and new connections refused.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Starts it again on the same port (killing it first if it still runs); returns once the
    /// port accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        // Another test may hold the port for a moment between our kill and the new bind.
        let mut last = String::new();
        let proc = wait_for(
            START_TIMEOUT,
            &format!("mosquitto to restart on port {}", self.port),
            || match spawn(self.dir.path(), self.port) {
                Ok(proc) => Some(proc),
                Err(report) if report.contains(ADDRESS_IN_USE) => {
                    last = report;
                    None
                }
                Err(report) => panic!("mosquitto did not restart on port {}:\n{report}", self.port),
            },
        );
        drop(last);
        self.proc = Some(proc);
    }

    /// SIGSTOP: a black hole. TCP handshakes still complete into the backlog, nothing answers.
    /// Returns once the kernel reports the process stopped.
    pub fn sigstop(&self) {
        let pid = self.signal(Signal::SIGSTOP);
        wait_until(COMMAND_TIMEOUT, "mosquitto to stop", || {
            process_state(pid) == Some('T')
        });
    }

    pub fn sigcont(&self) {
        let pid = self.signal(Signal::SIGCONT);
        wait_until(COMMAND_TIMEOUT, "mosquitto to continue", || {
            process_state(pid) != Some('T')
        });
    }

    fn signal(&self, sig: Signal) -> Pid {
        let proc = self.proc.as_ref().expect("mosquitto is not running");
        proc.signal(sig);
        proc.pid()
    }
}

fn write_config(dir: &Path, port: u16, extra: &str) {
    // As root mosquitto drops to the `mosquitto` user, which cannot use our 0700 temp dir;
    // `user root` keeps it as is (and is ignored when the tests don't run as root).
    // `max_queued_messages 0`: no limit on what waits for a subscriber. With the default (1000)
    // mosquitto drops messages for a test's watcher that falls behind a fast drain ("Outgoing
    // messages are being dropped"), which reads as loss by the gateway: seen in
    // outbox_integrity's kill-during-drain test, 222 of 29,100 ids never seen though acked.
    let config = format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_queued_messages 0\n\
         log_dest file {log}\n\
         log_type all\n\
         user root\n\
         {extra}\n",
        log = dir.join("mosquitto.log").display(),
    );
    fs::write(dir.join("mosquitto.conf"), config).expect("write mosquitto.conf");
}

/// Starts mosquitto with the config in `dir` and waits until `port` accepts connections. On
/// failure returns what it printed and its log, having reaped it.
fn spawn(dir: &Path, port: u16) -> Result<Proc, String> {
    let mut proc = Proc::spawn(
        "mosquitto",
        Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join("mosquitto.conf")),
    );
    let mut exited = None;
    let listening = eventually(START_TIMEOUT, || {
        exited = proc.try_wait();
        exited.is_some() || TcpStream::connect((LOCALHOST, port)).is_ok()
    });
    if listening && exited.is_none() {
        return Ok(proc);
    }
    proc.kill();
    let why = match exited {
        Some(status) => format!("mosquitto exited: {status}"),
        None => "mosquitto did not accept connections in time".into(),
    };
    let log = fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default();
    Err(format!("{why}\n{}\n{log}", proc.text()))
}

/// The state letter of /proc/<pid>/stat (R, S, T...).
fn process_state(pid: Pid) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain spaces; the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}
