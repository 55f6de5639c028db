//! Child processes for tests: spawned with their stdout and stderr read line by line into a
//! shared buffer (optionally also appended to a log file), lines waited for with a deadline,
//! and killed and reaped on drop.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::wait::{wait_for, POLL_INTERVAL};

/// How long a process stopped with a gentle signal gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Captured {
    /// Every line of both streams in arrival order, without its line ending.
    lines: Vec<(Stream, String)>,
    /// The exact bytes of stdout and stderr.
    raw: [Vec<u8>; 2],
    /// Reader threads still running (a stream not yet at end-of-file).
    open: usize,
}

struct Shared {
    captured: Mutex<Captured>,
    changed: Condvar,
}

impl Shared {
    /// The captured output; a test that panicked elsewhere must not make this panic too (a
    /// panic in `Drop` during unwinding aborts the whole test binary).
    fn captured(&self) -> MutexGuard<'_, Captured> {
        self.captured.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for new output (or the end of a stream) until `end` at most.
    fn wait_change<'a>(
        &self,
        c: MutexGuard<'a, Captured>,
        end: Instant,
    ) -> MutexGuard<'a, Captured> {
        let left = end.saturating_duration_since(Instant::now());
        self.changed
            .wait_timeout(c, left)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }
}

/// How to start a [`Proc`]; see [`Proc::build`].
pub struct Spawn<'a> {
    name: String,
    cmd: &'a mut Command,
    stdin: bool,
    log: Option<&'a Path>,
    stop: Signal,
    group: bool,
}

impl<'a> Spawn<'a> {
    /// A pipe on stdin for [`Proc::send_line`] (otherwise stdin is /dev/null).
    pub fn stdin(mut self) -> Self {
        self.stdin = true;
        self
    }

    /// Also append every output line to this file (kept for a person to read).
    pub fn log_to(mut self, path: &'a Path) -> Self {
        self.log = Some(path);
        self
    }

    /// Stop it with this signal (SIGKILL after a grace period) instead of SIGKILL.
    pub fn stop_with(mut self, signal: Signal) -> Self {
        self.stop = signal;
        self
    }

    /// Run it in a process group of its own and signal the whole group, so that what it
    /// starts goes with it.
    pub fn process_group(mut self) -> Self {
        self.group = true;
        self
    }

    pub fn start(self) -> Proc {
        if self.group {
            self.cmd.process_group(0);
        }
        let mut child = self
            .cmd
            .stdin(if self.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} ({:?}): {e}", self.name, self.cmd));
        let shared = Arc::new(Shared {
            captured: Mutex::new(Captured {
                open: 2,
                ..Captured::default()
            }),
            changed: Condvar::new(),
        });
        let log = self.log.map(|p| {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open log {}: {e}", p.display()));
            Arc::new(Mutex::new(f))
        });
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("piped stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("piped stderr"));
        let readers = [(Stream::Stdout, stdout), (Stream::Stderr, stderr)]
            .into_iter()
            .map(|(stream, pipe)| {
                let (shared, log) = (shared.clone(), log.clone());
                thread::Builder::new()
                    .name(format!("{}-{stream:?}", self.name))
                    .spawn(move || read_lines(pipe, stream, &shared, log))
                    .expect("spawn output reader")
            })
            .collect();
        Proc {
            name: self.name,
            stdin: child.stdin.take(),
            child,
            status: None,
            shared,
            readers,
            cursor: 0,
            stop: self.stop,
            group: self.group,
        }
    }
}

fn read_lines(
    pipe: Box<dyn Read + Send>,
    stream: Stream,
    shared: &Shared,
    log: Option<Arc<Mutex<File>>>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(log) = &log {
            let _ = log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(&buf);
        }
        let mut text = &buf[..];
        while let [rest @ .., b'\n' | b'\r'] = text {
            text = rest;
        }
        let line = String::from_utf8_lossy(text).into_owned();
        let mut c = shared.captured();
        c.raw[stream as usize].extend_from_slice(&buf);
        c.lines.push((stream, line));
        drop(c);
        shared.changed.notify_all();
    }
    shared.captured().open -= 1;
    shared.changed.notify_all();
}

/// A running child process whose output is collected; killed and reaped on drop.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    status: Option<ExitStatus>,
    shared: Arc<Shared>,
    readers: Vec<JoinHandle<()>>,
    /// Index into the lines of the next stdout line [`Proc::next_line`] returns.
    cursor: usize,
    stop: Signal,
    group: bool,
}

impl Proc {
    /// Starts building a process named `name` (used in messages) from `cmd`.
    pub fn build<'a>(name: &str, cmd: &'a mut Command) -> Spawn<'a> {
        Spawn {
            name: name.to_owned(),
            cmd,
            stdin: false,
            log: None,
            stop: Signal::SIGKILL,
            group: false,
        }
    }

    /// Spawns `cmd` with default settings.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        Proc::build(name, cmd).start()
    }

    /// Runs `cmd` to completion and returns what it printed; kills it and panics after
    /// `deadline`.
    pub fn run(name: &str, cmd: &mut Command, deadline: Duration) -> Output {
        Proc::spawn(name, cmd).finish(deadline)
    }

    /// Like [`Proc::run`], writing `input` to its stdin and closing it.
    pub fn run_with_input(
        name: &str,
        cmd: &mut Command,
        input: &str,
        deadline: Duration,
    ) -> Output {
        let mut p = Proc::build(name, cmd).stdin().start();
        let mut stdin = p.stdin.take().expect("piped stdin");
        // A program that exits without reading its input is not an error here.
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        p.finish(deadline)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Every output line so far, stdout and stderr in arrival order.
    pub fn lines(&self) -> Vec<String> {
        let c = self.shared.captured();
        c.lines.iter().map(|(_, l)| l.clone()).collect()
    }

    /// Every output line so far, joined with newlines.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let c = self.shared.captured();
        String::from_utf8_lossy(&c.raw[Stream::Stderr as usize]).into_owned()
    }

    /// The first line (already printed or coming) on either stream that satisfies `pred`;
    /// panics naming `what` with the output so far after `deadline` or once the process has
    /// closed its output without printing it.
    pub fn wait_for_line(
        &self,
        deadline: Duration,
        what: &str,
        mut pred: impl FnMut(&str) -> bool,
    ) -> String {
        let end = Instant::now() + deadline;
        let mut checked = 0;
        let mut c = self.shared.captured();
        loop {
            if let Some((_, l)) = c.lines[checked..].iter().find(|(_, l)| pred(l)) {
                return l.clone();
            }
            checked = c.lines.len();
            let now = Instant::now();
            if c.open == 0 || now >= end {
                let why = if c.open == 0 {
                    "it closed its output first".to_owned()
                } else {
                    format!("timed out after {deadline:?}")
                };
                let output: Vec<&str> = c.lines.iter().map(|(_, l)| l.as_str()).collect();
                let output = output.join("\n");
                drop(c);
                panic!(
                    "{}: {why} waiting for {what}; output so far:\n{output}",
                    self.name
                );
            }
            c = self.shared.wait_change(c, end);
        }
    }

    /// The next stdout line not returned before; panics naming `what` after `deadline` or if
    /// the process exits first.
    pub fn next_line(&mut self, deadline: Duration, what: &str) -> String {
        let end = Instant::now() + deadline;
        let mut c = self.shared.captured();
        loop {
            if let Some(i) = c.lines[self.cursor..]
                .iter()
                .position(|(s, _)| *s == Stream::Stdout)
            {
                let i = self.cursor + i;
                self.cursor = i + 1;
                return c.lines[i].1.clone();
            }
            self.cursor = c.lines.len();
            let now = Instant::now();
            if c.open == 0 || now >= end {
                let stderr = String::from_utf8_lossy(&c.raw[Stream::Stderr as usize]).into_owned();
                drop(c);
                if now >= end {
                    panic!("{}: no {what} within {deadline:?}\n{stderr}", self.name);
                }
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                panic!("{} exited ({status}) before {what}\n{stderr}", self.name);
            }
            c = self.shared.wait_change(c, end);
        }
    }

    /// Writes one line to its stdin (see [`Spawn::stdin`]).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("spawned without a stdin pipe");
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            panic!("{}: write {line:?}: {e}\n{}", self.name, self.stderr());
        }
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits for it to exit by itself (and for its output to end); panics with its output
    /// after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        let status = super::wait::poll(deadline, || self.try_wait());
        let Some(status) = status else {
            panic!(
                "{} did not exit within {deadline:?}; output so far:\n{}",
                self.name,
                self.text()
            );
        };
        self.drain_output(end.max(Instant::now() + POLL_INTERVAL));
        status
    }

    /// Waits for it to exit and returns everything it printed; kills it and panics after
    /// `deadline`.
    pub fn finish(mut self, deadline: Duration) -> Output {
        let end = Instant::now() + deadline;
        if super::wait::poll(deadline, || self.try_wait()).is_none() {
            self.kill();
            panic!(
                "{} did not finish within {deadline:?}:\n{}",
                self.name,
                self.text()
            );
        }
        self.drain_output(end.max(Instant::now() + Duration::from_secs(5)));
        let c = self.shared.captured();
        Output {
            status: self.status.expect("exited"),
            stdout: c.raw[Stream::Stdout as usize].clone(),
            stderr: c.raw[Stream::Stderr as usize].clone(),
        }
    }

    /// Waits (until `end` at most) for the readers to reach end-of-file, so that the output
    /// is complete. A grandchild that kept the pipes open would make that never happen.
    fn drain_output(&mut self, end: Instant) {
        let mut c = self.shared.captured();
        while c.open > 0 {
            let now = Instant::now();
            if now >= end {
                return;
            }
            c = self.shared.wait_change(c, end);
        }
        drop(c);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Sends `sig` to it (or to its process group).
    pub fn signal(&self, sig: Signal) {
        let r = if self.group {
            signal::killpg(self.pid(), sig)
        } else {
            signal::kill(self.pid(), sig)
        };
        r.unwrap_or_else(|e| panic!("{sig} to {}: {e}", self.name));
    }

    /// SIGKILL and reap (a no-op once it has exited and been reaped).
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        if self.group {
            let _ = signal::killpg(self.pid(), Signal::SIGKILL);
        } else {
            let _ = self.child.kill();
        }
        self.status = Some(
            self.child
                .wait()
                .unwrap_or_else(|_| ExitStatus::from_raw(9)),
        );
        self.drain_output(Instant::now() + Duration::from_secs(1));
    }

    /// Stops it the way it was built to be stopped (SIGKILL unless [`Spawn::stop_with`]) and
    /// reaps it; SIGKILL if a gentler signal is not obeyed in time.
    pub fn stop(&mut self) {
        if self.stop != Signal::SIGKILL && self.try_wait().is_none() {
            let _ = if self.group {
                signal::killpg(self.pid(), self.stop)
            } else {
                signal::kill(self.pid(), self.stop)
            };
            super::wait::poll(STOP_GRACE, || self.try_wait());
        }
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// stdout and stderr of a finished process, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a program with arguments to completion (deadline: 2 minutes), like
/// `Command::output()` but with the harness's deadline and cleanup.
pub fn run<S: AsRef<OsStr>>(program: &str, args: impl IntoIterator<Item = S>) -> Output {
    Proc::run(
        program,
        Command::new(program).args(args),
        Duration::from_secs(120),
    )
}
