//! The serial task: the one owner of one port. It opens the port (reopening with capped
//! exponential backoff after an unplug or an open error), feeds what it reads through the framer
//! and the decoder, sends `DeviceEvent`s, and tracks the device's status like the poller does.
//!
//! Invariants: status events are sent only on a change (online → offline → online), each
//! offline one with a reason, as `device::status::Status` (shared with the Modbus poller)
//! decides; online means "a valid frame arrived within `timeout`" (streaming) or "the last
//! request was answered" (polled); an open port alone is not online. Rejected input (noise, bad
//! checksums, over-long lines, unparsable frames) is counted in `SerialCounters` and logged at most
//! once per `LOG_EVERY` per device, so a babbling sensor cannot flood the journal. Nothing a
//! device sends can make this task panic or stop; only `stop` ends it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::framing::{FrameEvent, Framer};
use super::parse::parse_frame;
use super::port::{Port, PortError};
use super::sensors::DecodeError;
use crate::backoff::{backoff, Retry, Schedule};
use crate::config::serial::{Mode, Protocol, SerialDevice};
use crate::device::status::{Change, Status};
use crate::flow::{now_ms, DeviceEvent, Quality, Reading, Value};
use crate::ops::health::Beat;
use crate::ops::stats::SerialCounters;
use crate::ops::telemetry::LogLimiter;

/// First delay before reopening a lost port; doubles up to the device's `backoff_max`.
pub const REOPEN_MIN: Duration = Duration::from_millis(200);
/// At most one "rejected input" log line per device in this period.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Room for opening the port before the first beat counts as late.
const BEAT_SLACK: Duration = Duration::from_secs(10);

/// Why a session on an open port ended.
enum End {
    Stopped,
    Lost(PortError),
}

struct Task {
    /// Liveness for the systemd watchdog: every wait below promises when the loop comes round.
    beat: Beat,
    dev: SerialDevice,
    tx: mpsc::Sender<DeviceEvent>,
    stop: CancellationToken,
    stats: Arc<SerialCounters>,
    status: Status,
    framer: Framer,
    limiter: LogLimiter,
    events: Vec<FrameEvent>,
}

/// How long the serial task of `dev` may take before its first beat (see `ops::health`).
pub fn first_beat_within(dev: &SerialDevice) -> Duration {
    dev.timeout + BEAT_SLACK
}

/// Runs until `stop` is cancelled (or the receiving side is gone).
pub async fn run(
    dev: SerialDevice,
    tx: mpsc::Sender<DeviceEvent>,
    stop: CancellationToken,
    stats: Arc<SerialCounters>,
    beat: Beat,
) {
    let mut t = Task {
        beat,
        framer: Framer::new(dev.protocol.framing()).resync_on(dev.protocol.line_starts()),
        status: Status::new(dev.name.clone()),
        dev,
        tx,
        stop,
        stats,
        limiter: LogLimiter::new(LOG_EVERY),
        events: Vec::new(),
    };
    t.run().await
}

impl Task {
    async fn run(&mut self) {
        let reopen = Schedule {
            interval: REOPEN_MIN,
            backoff_max: self.dev.backoff_max,
            retry: Retry::Backoff,
        };
        let mut failures: u32 = 0;
        while !self.stop.is_cancelled() {
            let error = match Port::open(&self.dev.port) {
                Ok(port) => {
                    let frames_before = self.stats.frames.load(Ordering::Relaxed);
                    self.stats.opens.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        event = "serial_port_open",
                        device = %self.dev.name,
                        path = %port.path(),
                        baud = self.dev.port.baud,
                        "serial port open"
                    );
                    let end = self.session(port).await;
                    // Only a session that produced valid data resets the backoff: a port that
                    // opens and fails at once must not be reopened five times a second.
                    if self.stats.frames.load(Ordering::Relaxed) > frames_before {
                        failures = 0;
                    }
                    match end {
                        End::Stopped => return,
                        End::Lost(e) => e,
                    }
                }
                Err(e) => e,
            };
            failures = failures.saturating_add(1);
            let delay = backoff(&reopen, failures);
            let reason = error.to_string();
            if self.status.is_offline() {
                tracing::debug!(device = %self.dev.name, error = %reason, retry_in = ?delay, "serial port still unavailable");
            } else {
                tracing::warn!(
                    event = "serial_port_lost",
                    device = %self.dev.name,
                    error = %reason,
                    retry_in = %humantime::format_duration(delay),
                    "serial port unavailable; retrying"
                );
            }
            let change = self.status.failed(reason);
            if !self.report(change).await {
                return;
            }
            self.beat.promise(delay + self.beat.soon()).await;
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = sleep(delay) => {}
            }
        }
    }

    /// Logs and sends a status change, if there is one; `false` when the pipeline is gone
    /// (shutting down).
    async fn report(&mut self, change: Option<Change>) -> bool {
        match change {
            Some(c) => {
                let ev = self.status.report(c, None);
                self.tx.send(ev).await.is_ok()
            }
            None => true,
        }
    }

    async fn session(&mut self, mut port: Port) -> End {
        self.framer.reset();
        match self.dev.mode.clone() {
            Mode::Stream => self.stream(&mut port).await,
            Mode::Polled { request, interval } => self.polled(&mut port, &request, interval).await,
        }
    }

    async fn stream(&mut self, port: &mut Port) -> End {
        let mut buf = [0u8; 512];
        let timeout = self.dev.timeout;
        let mut deadline = Instant::now() + timeout;
        loop {
            // Once offline, only valid data matters; there is nothing more to time out.
            let watch_silence = !self.status.is_offline();
            // The loop comes round at least every tick, even with a silent sensor, so the
            // watchdog can tell a silent sensor from a hung loop.
            self.beat.waiting(self.beat.tick());
            tokio::select! {
                _ = self.stop.cancelled() => return End::Stopped,
                _ = sleep(self.beat.tick()) => {}
                r = port.read(&mut buf) => match r {
                    Ok(n) => {
                        self.beat.busy().await;
                        let readings = self.ingest(&buf[..n]);
                        if let Some(readings) = readings {
                            deadline = Instant::now() + timeout;
                            if !self.deliver(readings).await {
                                return End::Stopped;
                            }
                        }
                    }
                    Err(e) => return End::Lost(e),
                },
                _ = sleep_until(deadline), if watch_silence => {
                    let reason = format!(
                        "no valid data for {}",
                        humantime::format_duration(timeout)
                    );
                    let change = self.status.failed(reason);
                    if !self.report(change).await {
                        return End::Stopped;
                    }
                }
            }
        }
    }

    async fn polled(&mut self, port: &mut Port, request: &[u8], interval: Duration) -> End {
        let schedule = Schedule {
            interval,
            backoff_max: self.dev.backoff_max,
            retry: Retry::Backoff,
        };
        let mut failures: u32 = 0;
        let mut buf = [0u8; 512];
        let mut next = Instant::now();
        loop {
            // Waiting for the next poll, then at most one timeout for the answer.
            let wait = next.saturating_duration_since(Instant::now());
            self.beat.promise(wait + self.beat.soon()).await;
            tokio::select! {
                _ = self.stop.cancelled() => return End::Stopped,
                _ = sleep_until(next) => {}
            }
            let started = Instant::now();
            // Writing the request and waiting for the answer take at most one timeout.
            self.beat.waiting(self.dev.timeout);
            // A late answer to the previous request must not be taken for this one.
            port.discard_input();
            self.framer.reset();
            if let Err(e) = port.write_all(request).await {
                return End::Lost(e);
            }
            let deadline = started + self.dev.timeout;
            let answer = loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return End::Stopped,
                    r = port.read(&mut buf) => match r {
                        Ok(n) => {
                            if let Some(readings) = self.ingest(&buf[..n]) {
                                break Some(readings);
                            }
                        }
                        Err(e) => return End::Lost(e),
                    },
                    _ = sleep_until(deadline) => break None,
                }
            };
            self.beat.busy().await;
            match answer {
                Some(readings) => {
                    failures = 0;
                    next = started + interval;
                    if !self.deliver(readings).await {
                        return End::Stopped;
                    }
                }
                None => {
                    failures = failures.saturating_add(1);
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff(&schedule, failures);
                    next = Instant::now() + delay;
                    let reason = format!(
                        "no valid answer within {}",
                        humantime::format_duration(self.dev.timeout)
                    );
                    if self.status.is_offline() {
                        tracing::debug!(device = %self.dev.name, failures, "serial device still not answering");
                    }
                    let change = self.status.failed(reason);
                    if !self.report(change).await {
                        return End::Stopped;
                    }
                }
            }
        }
    }

    /// Marks the device online (if it was not) and sends the readings.
    async fn deliver(&mut self, readings: Vec<Reading>) -> bool {
        let change = self.status.answered();
        if !self.report(change).await {
            return false;
        }
        readings.is_empty() || self.tx.send(DeviceEvent::Readings(readings)).await.is_ok()
    }

    /// Frames and decodes `bytes`. `Some` when at least one valid frame was in them (its
    /// readings may be empty: a valid frame without values we read still proves the sensor
    /// alive); rejects are counted and logged, rate-limited.
    fn ingest(&mut self, bytes: &[u8]) -> Option<Vec<Reading>> {
        self.events.clear();
        self.framer.push(bytes, &mut self.events);
        let mut valid = false;
        let mut readings = Vec::new();
        let mut reject: Option<String> = None;
        let events = std::mem::take(&mut self.events);
        for ev in &events {
            match ev {
                FrameEvent::Frame(frame) => match self.decode(frame) {
                    Ok(mut r) => {
                        valid = true;
                        self.stats.frames.fetch_add(1, Ordering::Relaxed);
                        readings.append(&mut r);
                    }
                    Err(DecodeError::BadChecksum) => {
                        self.stats.bad_checksums.fetch_add(1, Ordering::Relaxed);
                        reject = Some("bad checksum".into());
                    }
                    Err(DecodeError::Malformed(why)) => {
                        self.stats.unparsable.fetch_add(1, Ordering::Relaxed);
                        reject = Some(why);
                    }
                },
                FrameEvent::Noise(n) => {
                    self.stats
                        .noise_bytes
                        .fetch_add(*n as u64, Ordering::Relaxed);
                    reject.get_or_insert_with(|| format!("{n} bytes of noise"));
                }
                FrameEvent::Overlong => {
                    self.stats.overlong.fetch_add(1, Ordering::Relaxed);
                    reject = Some("line longer than max_length".into());
                }
                FrameEvent::BadChecksum => {
                    self.stats.bad_checksums.fetch_add(1, Ordering::Relaxed);
                    reject = Some("bad checksum".into());
                }
            }
        }
        self.events = events;
        if let Some(last) = reject {
            if let Some(suppressed) = self.limiter.allow(Instant::now()) {
                let s = self.stats.snapshot();
                tracing::warn!(
                    event = "serial_input_rejected",
                    device = %self.dev.name,
                    last = %last,
                    noise_bytes = s.noise_bytes,
                    bad_checksums = s.bad_checksums,
                    overlong = s.overlong,
                    unparsable = s.unparsable,
                    suppressed,
                    "rejected serial input (totals since start; logged at most every {}s)",
                    LOG_EVERY.as_secs()
                );
            }
        }
        valid.then_some(readings)
    }

    fn decode(&self, frame: &[u8]) -> Result<Vec<Reading>, DecodeError> {
        let ts_ms = now_ms();
        let device = &self.dev.name;
        let reading = |point: Arc<str>, unit: Option<Arc<str>>, v: Result<Value, String>| {
            let (value, quality, error) = match v {
                Ok(v) => (v, Quality::Good, None),
                Err(e) => (Value::Null, Quality::Bad, Some(e)),
            };
            Reading {
                device: device.clone(),
                point,
                value,
                unit,
                ts_ms,
                quality,
                error,
            }
        };
        match &self.dev.protocol {
            Protocol::Sensor(s) => Ok(s
                .decode(frame)?
                .into_iter()
                .map(|(p, v)| reading(Arc::from(p), s.unit(p).map(Arc::from), Ok(v)))
                .collect()),
            Protocol::Custom { parse, points, .. } => parse_frame(parse, frame, points)
                .map(|vals| {
                    vals.into_iter()
                        .map(|(i, v)| {
                            let p = &points[i];
                            reading(p.name.clone(), p.unit.clone(), v)
                        })
                        .collect()
                })
                .map_err(|e| DecodeError::Malformed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_are_logged_at_once_then_at_most_once_per_period() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let got: Vec<Option<u64>> = [0, 1, 500, 9_999, 10_000, 10_001, 25_000]
            .iter()
            .map(|ms| l.allow(at(*ms)))
            .collect();
        assert_eq!(got, vec![Some(0), None, None, None, Some(3), None, Some(1)]);
    }
}
