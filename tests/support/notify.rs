//! A service manager's end of the sd_notify protocol: a `NOTIFY_SOCKET` datagram socket whose
//! messages (`READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`) are recorded, each with the
//! moment it arrived, by a reader thread. Tests wait for a message with a deadline and measure
//! the pings afterwards (when the last `WATCHDOG=1` came, the longest gap between two).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::wait::{poll, wait_for};

/// How often the reader thread looks at its stop flag (not a synchronisation sleep).
const READ_SLICE: Duration = Duration::from_millis(100);

/// One datagram: when it arrived, and its lines.
#[derive(Clone, Debug)]
pub struct Notice {
    pub at: Instant,
    pub text: String,
}

impl Notice {
    pub fn has_line(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }

    pub fn is_ping(&self) -> bool {
        self.has_line("WATCHDOG=1")
    }

    /// The value of its `STATUS=` line, if it has one.
    pub fn status(&self) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix("STATUS="))
    }
}

/// A bound `NOTIFY_SOCKET`; give [`NotifyListener::path`] to the gateway.
pub struct NotifyListener {
    path: PathBuf,
    seen: Arc<Mutex<Vec<Notice>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl NotifyListener {
    /// Binds `dir/notify.sock` and starts recording.
    pub fn bind(dir: &Path) -> NotifyListener {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(READ_SLICE)).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    s.lock().unwrap_or_else(|e| e.into_inner()).push(Notice {
                        at: Instant::now(),
                        text,
                    });
                }
            }
        });
        NotifyListener {
            path,
            seen,
            stop,
            reader: Some(reader),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything received so far, in arrival order.
    pub fn notices(&self) -> Vec<Notice> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first notice from `from` on (an index into [`NotifyListener::notices`]) that `pred`
    /// accepts, once it arrived; `None` after `deadline`. `meanwhile` runs at every poll (a
    /// sensor that keeps streaming).
    pub fn wait_from(
        &self,
        from: usize,
        deadline: Duration,
        mut meanwhile: impl FnMut(),
        pred: impl Fn(&Notice) -> bool,
    ) -> Option<(usize, Notice)> {
        poll(deadline, || {
            meanwhile();
            self.notices()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, n)| pred(n))
        })
    }

    /// Like [`NotifyListener::wait_from`] from the start, panicking with everything received
    /// after `deadline`.
    pub fn wait(&self, deadline: Duration, what: &str, pred: impl Fn(&Notice) -> bool) -> Notice {
        wait_for(deadline, what, || {
            self.notices().into_iter().find(|n| pred(n))
        })
    }

    /// The pings received so far, by arrival time.
    pub fn pings(&self) -> Vec<Instant> {
        self.notices()
            .into_iter()
            .filter(Notice::is_ping)
            .map(|n| n.at)
            .collect()
    }

    /// Waits until `n` more pings than there are now have arrived; `false` after `deadline`.
    pub fn more_pings(&self, n: usize, deadline: Duration, meanwhile: impl FnMut()) -> bool {
        let have = self.pings().len();
        let mut meanwhile = meanwhile;
        poll(deadline, || {
            meanwhile();
            (self.pings().len() >= have + n).then_some(())
        })
        .is_some()
    }
}

/// The longest gap between two consecutive pings of `pings`.
pub fn longest_gap(pings: &[Instant]) -> Duration {
    pings
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
