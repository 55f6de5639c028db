//! Serial lines for tests: a socat pty pair whose two ends appear under stable link names in a
//! temporary directory, the test's own end of it, ways to unplug and replug it, and the frames
//! sensors send.
//!
//! Facts this relies on (the shared testing notes of the project): killing socat removes both links, so the
//! gateway sees the port vanish as if a USB adapter were pulled; starting it again with the same
//! link names is plugging it back in. socat is stopped with SIGTERM (SIGKILL would leave the
//! links behind, pointing at pts numbers that get reused). Nothing sleeps to synchronise: the
//! helper waits for socat's "starting data transfer loop" log line and for the links.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::process::Proc;
use super::wait::wait_until;

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A socat pty pair: `device` is the gateway's end, `peer` is the test's (the sensor's) end.
pub struct PtyPair {
    socat: Option<Proc>,
    dir: TempDir,
}

impl PtyPair {
    pub fn start() -> PtyPair {
        let dir = tempfile::Builder::new()
            .prefix("fieldbridge-pty-")
            .tempdir()
            .expect("temp dir for pty links");
        let mut p = PtyPair { socat: None, dir };
        p.plug();
        p
    }

    /// Path the gateway opens.
    pub fn device(&self) -> PathBuf {
        self.dir.path().join("device")
    }

    /// Path the test (playing the sensor) opens.
    pub fn peer(&self) -> PathBuf {
        self.dir.path().join("peer")
    }

    pub fn is_plugged(&self) -> bool {
        self.socat.is_some()
    }

    /// Starts socat with the same link names; returns once both links exist and socat is
    /// moving data.
    pub fn plug(&mut self) {
        assert!(self.socat.is_none(), "already plugged");
        // Links of an earlier socat that did not clean up would make it fail.
        let _ = fs::remove_file(self.device());
        let _ = fs::remove_file(self.peer());
        let socat = Proc::build(
            "socat",
            Command::new("socat")
                .args(["-d", "-d"])
                .arg(format!("pty,raw,echo=0,link={}", self.device().display()))
                .arg(format!("pty,raw,echo=0,link={}", self.peer().display())),
        )
        .stop_with(Signal::SIGTERM)
        .start();
        socat.wait_for_line(START_TIMEOUT, "socat's pty pair", |l| {
            l.contains("starting data transfer loop")
        });
        let (dev, peer) = (self.device(), self.peer());
        wait_until(START_TIMEOUT, "socat's links", || {
            dev.exists() && peer.exists()
        });
        self.socat = Some(socat);
    }

    /// Stops socat (SIGTERM) and waits until it has exited and removed its links.
    pub fn unplug(&mut self) {
        let Some(mut socat) = self.socat.take() else {
            return;
        };
        socat.stop();
        let (dev, peer) = (self.device(), self.peer());
        wait_until(START_TIMEOUT, "socat's links to disappear", || {
            fs::symlink_metadata(&dev).is_err() && fs::symlink_metadata(&peer).is_err()
        });
    }

    /// Opens the test's end of the line.
    pub fn open_peer(&self) -> Peer {
        Peer::open(&self.peer())
    }
}

/// The sensor's end of a pty pair.
pub struct Peer {
    file: File,
}

impl Peer {
    pub fn open(path: &Path) -> Peer {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        Peer { file }
    }

    /// Writes the bytes as one write. Errors are returned, not panicked on: a test that unplugs
    /// the line expects them.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.file.flush()
    }

    /// Blocking read of exactly `n` bytes (what a sensor does while waiting for a command).
    pub fn read_exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        self.file.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Blocking read of up to `max` bytes, whatever arrives first.
    pub fn read_some(&mut self, max: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; max];
        let n = self.file.read(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn try_clone(&self) -> Peer {
        Peer {
            file: self.file.try_clone().expect("clone pty fd"),
        }
    }
}

/// An SDS011 data frame for the given values (µg/m³ × 10, as the sensor sends them).
pub fn sds011_frame(pm25_x10: u16, pm10_x10: u16) -> [u8; 10] {
    let [a, b] = pm25_x10.to_le_bytes();
    let [c, d] = pm10_x10.to_le_bytes();
    let mut f = [0xAA, 0xC0, a, b, c, d, 0x12, 0x34, 0, 0xAB];
    f[8] = f[2..8].iter().fold(0u8, |s, x| s.wrapping_add(*x));
    f
}

/// An MH-Z19B answer to the read command for `ppm`.
pub fn mhz19b_answer(ppm: u16) -> [u8; 9] {
    let [h, l] = ppm.to_be_bytes();
    let mut f = [0xFF, 0x86, h, l, 0x47, 0x00, 0x00, 0x00, 0];
    let sum = f[1..8].iter().fold(0u8, |s, x| s.wrapping_add(*x));
    f[8] = sum.wrapping_neg();
    f
}

/// `$<body>*hh\r\n` with the correct NMEA checksum.
pub fn nmea_line(body: &str) -> String {
    let cs = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("${body}*{cs:02X}\r\n")
}
