//! The owner of one Modbus line: a serial port (RTU on RS-485), an RTU-over-TCP socket, or one
//! Modbus TCP connection. Exactly one task per line holds the connection and runs every
//! exchange on it (polls of all units on that line, and writes) one at a time, in arrival
//! order, with the configured silence between requests.
//!
//! Line hygiene, because RTU has no transaction ids:
//! - bytes that arrive while no request is outstanding (a late reply to a timed-out request,
//!   noise) are discarded before the next request goes out (`Line`);
//! - an answer that is not the answer to the request (another unit's late reply, a wrong
//!   quantity, a write echo that does not match) counts as garbage: the request is sent once
//!   more on a cleared line; if the decoder gave up, the connection is rebuilt first;
//! - after a unit timed out or answered garbage, that unit gets no new request for one more
//!   timeout: its own late reply would carry the right unit id and function code and could pass
//!   for the answer to its next request. Other units are not held up: their jobs go ahead of
//!   the waiting unit's (per unit, jobs stay in arrival order), and a stray reply from the
//!   waiting unit has the wrong unit id for them. A reply later than twice the timeout cannot
//!   be told apart; nothing can, on RTU.
//!
//! A Modbus TCP connection is dropped after a timeout instead. Every exchange has its own
//! deadline; tokio-modbus has none.
//!
//! Wiring faults are named, not lumped into timeouts: `Line` keeps the bytes of each request and
//! of what came back, and `fault` (pure) tells a bad CRC from a reply of another unit from
//! garbage. A reply shaped like the answer with a wrong CRC ends the exchange at once (the
//! decoder would wait for more bytes until the deadline). Each kind is counted per line and
//! per unit, and logged with the device and unit id at most every `FAULT_LOG_EVERY` per unit
//! and kind; tokio-modbus's own log lines about the same bytes are turned off (`telemetry`).
//! The line's load (busy share, response times, overrun) is measured by `load` (pure) and
//! published with the counters; an overrun is logged (`event=line_overrun`), rate-limited.
//!
//! Which job goes next (taints, per-unit order) is decided by the pure `queue`; this task does
//! the I/O around it. tokio-modbus types stay in this file: answers leave it as `Answer`, with
//! exceptions as our `ModbusException`, and failures as `DeviceError`.

use crate::config::spec::modbus::Table;
use crate::config::spec::serial::PortSettings;
use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_modbus::client::{rtu, tcp, Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_util::sync::CancellationToken;

use super::exception::ModbusException;
use super::fault::{self, Fault};
use super::load::{Load, Window, WINDOW};
use super::queue::{Next, Queue};
use crate::device::serial::port::Port;
use crate::device::DeviceError;
use crate::ops::stats::{bump, LineCounters, UnitCounters};
use crate::ops::telemetry::{KeyedLimiter, LogLimiter};

/// How often one kind of fault of one unit is logged (the count of the others goes with it).
const FAULT_LOG_EVERY: Duration = Duration::from_secs(30);

/// How often a line's overrun is logged.
const OVERRUN_LOG_EVERY: Duration = Duration::from_secs(60);

/// One Modbus request as the bus runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    Read {
        table: Table,
        start: u16,
        count: u16,
    },
    /// FC 05 (or FC 15 with `multiple`).
    WriteCoil {
        address: u16,
        value: bool,
        multiple: bool,
    },
    /// FC 06 for one register unless `multiple`, else FC 16.
    WriteRegisters {
        address: u16,
        words: Vec<u16>,
        multiple: bool,
    },
    /// One bit of a holding register: read (FC 03), change the bit, write back. Atomic as far
    /// as this gateway goes, because the bus runs nothing else in between.
    WriteBit {
        address: u16,
        bit: u8,
        value: bool,
        multiple: bool,
    },
}

impl Exchange {
    /// Function codes this exchange sends, for logs and `explain`.
    pub fn function(&self) -> &'static str {
        match self {
            Exchange::Read { table, .. } => match table {
                Table::Coil => "FC01",
                Table::Discrete => "FC02",
                Table::Holding => "FC03",
                Table::Input => "FC04",
            },
            Exchange::WriteCoil {
                multiple: false, ..
            } => "FC05",
            Exchange::WriteCoil { multiple: true, .. } => "FC15",
            Exchange::WriteRegisters {
                words, multiple, ..
            } if words.len() == 1 && !multiple => "FC06",
            Exchange::WriteRegisters { .. } => "FC16",
            Exchange::WriteBit {
                multiple: false, ..
            } => "FC03+FC06",
            Exchange::WriteBit { multiple: true, .. } => "FC03+FC16",
        }
    }
}

/// What the device answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Words(Vec<u16>),
    Bits(Vec<bool>),
    Written,
    Exception(ModbusException),
}

/// How a bus reaches its line.
#[derive(Debug, Clone, PartialEq)]
pub enum Connector {
    Serial { port: PortSettings, rs485: bool },
    RtuOverTcp { host: String, port: u16 },
    Tcp { host: String, port: u16 },
}

impl Connector {
    pub fn describe(&self) -> String {
        match self {
            Connector::Serial { port, .. } => port.path.clone(),
            Connector::RtuOverTcp { host, port } => format!("rtu-over-tcp://{host}:{port}"),
            Connector::Tcp { host, port } => format!("{host}:{port}"),
        }
    }

    /// The RTU inter-frame silence (3.5 characters of 11 bits; the spec fixes 1.75 ms above
    /// 19200 baud). Sockets have no such rule.
    fn min_gap(&self) -> Duration {
        match self {
            Connector::Serial { port, .. } if port.baud <= 19_200 => {
                Duration::from_micros(38_500_000 / u64::from(port.baud.max(1)))
            }
            Connector::Serial { .. } => Duration::from_micros(1750),
            _ => Duration::ZERO,
        }
    }
}

struct Job {
    unit: u8,
    exchange: Exchange,
    timeout: Duration,
    retries: u8,
    reply: oneshot::Sender<Result<Answer, DeviceError>>,
    /// Attempts made so far.
    attempts: u32,
    /// A garbage answer gets one extra attempt, once per job.
    garbage_retry_used: bool,
}

/// A cheap handle for sending exchanges to a bus task.
#[derive(Clone)]
pub struct BusHandle {
    tx: mpsc::Sender<Job>,
    name: Arc<str>,
    stats: Arc<LineCounters>,
}

impl BusHandle {
    /// Queues `exchange` for `unit` and waits for the outcome. `timeout` bounds the exchange on
    /// the wire, not the wait in the queue (other units' exchanges come first).
    pub async fn call(
        &self,
        unit: u8,
        exchange: Exchange,
        timeout: Duration,
        retries: u8,
    ) -> Result<Answer, DeviceError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            unit,
            exchange,
            timeout,
            retries,
            reply,
            attempts: 0,
            garbage_retry_used: false,
        };
        let gone = || DeviceError::BusGone {
            line: self.name.clone(),
        };
        self.tx.send(job).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub fn stats(&self) -> &Arc<LineCounters> {
        &self.stats
    }
}

/// Starts the owner task of one line; it ends when `stop` is cancelled or every handle is gone.
pub fn spawn(
    name: Arc<str>,
    connector: Connector,
    request_gap: Duration,
    stop: CancellationToken,
) -> (BusHandle, tokio::task::JoinHandle<()>) {
    // Small: a deep queue would only hide that the line is slower than the configured polling.
    let (tx, rx) = mpsc::channel(64);
    let stats = Arc::new(LineCounters::default());
    let handle = BusHandle {
        tx,
        name: name.clone(),
        stats: stats.clone(),
    };
    let task = tokio::spawn(run(name, connector, request_gap, rx, stop, stats));
    (handle, task)
}

async fn run(
    name: Arc<str>,
    connector: Connector,
    request_gap: Duration,
    mut rx: mpsc::Receiver<Job>,
    stop: CancellationToken,
    stats: Arc<LineCounters>,
) {
    let mut line = Owner {
        stats,
        name,
        gap: request_gap.max(connector.min_gap()),
        connector,
        ctx: None,
        tap: None,
        quiet_from: Instant::now(),
        rs485_noted: false,
        queue: Queue::default(),
        load: Load::new(WINDOW, Instant::now()),
        late_seen: 0,
        fault_log: KeyedLimiter::new(FAULT_LOG_EVERY, 256),
        overrun_log: LogLimiter::new(OVERRUN_LOG_EVERY),
    };
    let mut open = true;
    loop {
        let late = line
            .stats
            .late_polls
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Some(w) = line
            .load
            .close(Instant::now(), late.saturating_sub(line.late_seen))
        {
            line.late_seen = late;
            line.window_closed(w);
        }
        while let Ok(j) = rx.try_recv() {
            line.queue.push(j.unit, j);
        }
        // A caller that stopped waiting (shutdown) needs no answer, and the line no traffic.
        line.queue.retain(|j| !j.reply.is_closed());
        let now = Instant::now();
        let mut job = match line.queue.next(now) {
            Next::Run(job) => job,
            Next::Idle if !open => break,
            waiting => {
                // Nothing to send yet: a new job, the end of a taint, or stop.
                let wake = match waiting {
                    Next::WaitUntil(t) => Some(t),
                    _ => None,
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    j = rx.recv(), if open => match j {
                        Some(j) => line.queue.push(j.unit, j),
                        None => open = false,
                    },
                    _ = sleep_until(wake.unwrap_or(now)), if wake.is_some() => {}
                    // An idle line still closes its load windows.
                    _ = sleep_until(line.load.ends()) => {}
                }
                continue;
            }
        };
        let began = Instant::now();
        let step = tokio::select! {
            _ = stop.cancelled() => break,
            r = line.step(&mut job) => r,
        };
        line.load.busy(job.unit, began.elapsed());
        match step {
            Step::Done(result) => {
                // The poller may have given up waiting (shutdown); nothing to do then.
                let _ = job.reply.send(result);
            }
            // Back to the front: it is the oldest job of its unit.
            Step::Again => line.queue.put_back(job.unit, job),
        }
    }
    if let Some(mut ctx) = line.ctx.take() {
        let _ = timeout(Duration::from_millis(200), ctx.disconnect()).await;
    }
}

struct Owner {
    stats: Arc<LineCounters>,
    name: Arc<str>,
    connector: Connector,
    gap: Duration,
    ctx: Option<Context>,
    /// The bytes of the last request and of what came back (RTU connections only).
    tap: Option<Arc<Mutex<Tap>>>,
    /// When the line last fell silent; the next request waits for `gap` after it.
    quiet_from: Instant,
    rs485_noted: bool,
    /// The jobs waiting for the line, and the units that may not be asked yet (a late reply
    /// of theirs may still arrive): which job goes next is decided there (`queue`, pure).
    queue: Queue<Job>,
    load: Load,
    /// `late_polls` of the line when the last load window closed.
    late_seen: u64,
    /// Fault log lines, per unit and kind.
    fault_log: KeyedLimiter<(u8, &'static str)>,
    overrun_log: LogLimiter,
}

/// How one attempt went wrong.
enum Failure {
    /// Nothing (complete) arrived in time.
    Timeout,
    /// A reply shaped like the answer, with a CRC that does not match.
    BadCrc,
    /// A valid reply of another unit id.
    WrongUnit(u8),
    /// Something arrived that is not the answer (another unit, wrong function, size or echo):
    /// worth one more try on a cleared line.
    Garbage(String),
    /// The decoder gave up on what arrived (tokio-modbus: InvalidData). Like garbage, but the
    /// framed connection is left in its error state, so it must be rebuilt.
    Corrupt(String),
    /// The connection itself failed (unplugged adapter, reset socket).
    Link(String),
}

/// What became of one attempt at a job.
enum Step {
    Done(Result<Answer, DeviceError>),
    /// Try again later (a retry, or the extra attempt after garbage).
    Again,
}

impl Owner {
    /// One attempt at `job`, and whether it needs another.
    async fn step(&mut self, job: &mut Job) -> Step {
        job.attempts += 1;
        let err = match self.attempt(job).await {
            Ok(answer) => return Step::Done(Ok(answer)),
            Err(AttemptError::Connect(e)) => return Step::Done(Err(e)),
            Err(AttemptError::Failed(f)) => f,
        };
        let is_garbage = matches!(
            err,
            Failure::Garbage(_) | Failure::Corrupt(_) | Failure::BadCrc | Failure::WrongUnit(_)
        );
        let device_error = match err {
            Failure::Timeout => DeviceError::Timeout(job.timeout),
            Failure::BadCrc => DeviceError::BadCrc {
                line: self.name.clone(),
            },
            Failure::WrongUnit(got) => DeviceError::WrongUnit {
                line: self.name.clone(),
                got,
            },
            Failure::Garbage(reason) | Failure::Corrupt(reason) => DeviceError::BadAnswer {
                line: self.name.clone(),
                reason,
            },
            Failure::Link(reason) => DeviceError::Link {
                line: self.name.clone(),
                reason,
            },
        };
        self.log_fault(job, &device_error);
        if is_garbage && !job.garbage_retry_used {
            job.garbage_retry_used = true;
            return Step::Again;
        }
        let allowed = 1 + u32::from(job.retries) + u32::from(job.garbage_retry_used);
        if job.attempts >= allowed {
            Step::Done(Err(device_error))
        } else {
            Step::Again
        }
    }

    async fn attempt(&mut self, job: &Job) -> Result<Answer, AttemptError> {
        sleep_until(self.quiet_from + self.gap).await;
        let connector = self.connector.clone();
        if self.ctx.is_none() {
            let ctx = match self.connect(job.timeout).await {
                Ok(c) => c,
                Err(e) => {
                    bump(&self.stats.link_errors);
                    return Err(AttemptError::Connect(e));
                }
            };
            self.ctx = Some(ctx);
        }
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(AttemptError::Connect(DeviceError::Link {
                line: self.name.clone(),
                reason: "not connected".into(),
            }));
        };
        ctx.set_slave(Slave(job.unit));
        bump(&self.stats.requests);
        self.stats.unit(job.unit, |u| bump(&u.requests));
        let sent = Instant::now();
        let result = timeout(job.timeout, transact(ctx, &job.exchange)).await;
        self.quiet_from = Instant::now();
        let failure = match result {
            Ok(Ok(answer)) => {
                let exception = matches!(answer, Answer::Exception(_));
                if exception {
                    bump(&self.stats.exceptions);
                }
                self.stats.unit(job.unit, |u| {
                    bump(&u.answers);
                    if exception {
                        bump(&u.exceptions);
                    }
                });
                self.load.answered(job.unit, sent.elapsed());
                return Ok(answer);
            }
            Err(_) => Failure::Timeout,
            Ok(Err(f)) => f,
        };
        // What came back decides what the failure was (RTU; a TCP stream has no tap).
        let (failure, bytes_came) = match self.tap.as_ref() {
            Some(tap) => {
                let t = tap.lock().unwrap_or_else(|p| p.into_inner());
                let named = name_failure(failure, fault::classify(&t.request, &t.reply), &t.reply);
                (named, !t.reply.is_empty())
            }
            None => (failure, false),
        };
        let line = &self.stats;
        let counted = |u: &UnitCounters| match &failure {
            Failure::Timeout => bump(&u.timeouts),
            Failure::BadCrc => bump(&u.bad_crc),
            Failure::WrongUnit(_) => bump(&u.wrong_unit),
            Failure::Garbage(_) | Failure::Corrupt(_) => bump(&u.garbage),
            Failure::Link(_) => {}
        };
        line.unit(job.unit, counted);
        match &failure {
            Failure::Timeout => bump(&line.timeouts),
            Failure::BadCrc => {
                bump(&line.bad_answers);
                bump(&line.bad_crc);
            }
            Failure::WrongUnit(_) => {
                bump(&line.bad_answers);
                bump(&line.wrong_unit);
            }
            Failure::Garbage(_) | Failure::Corrupt(_) => {
                bump(&line.bad_answers);
                bump(&line.garbage);
            }
            Failure::Link(_) => bump(&line.link_errors),
        }
        // After a timeout or a wrong answer, the unit's own reply to this attempt may still be
        // on its way; it could pass for the answer to its next request.
        if !matches!(failure, Failure::Link(_)) && !matches!(connector, Connector::Tcp { .. }) {
            self.queue.taint(job.unit, self.quiet_from + job.timeout);
        }
        let drop_connection = match (&failure, &connector) {
            (Failure::Link(_), _) => true,
            // The codec's Framed stays errored: its next read would be a broken pipe.
            (Failure::Corrupt(_) | Failure::BadCrc, _) => true,
            // Bytes the decoder is still holding would be read in front of the next answer.
            (Failure::Timeout | Failure::Garbage(_) | Failure::WrongUnit(_), _) if bytes_came => {
                true
            }
            // Modbus TCP: a new connection is the only way to be sure a late reply is gone.
            (
                Failure::Timeout | Failure::Garbage(_) | Failure::WrongUnit(_),
                Connector::Tcp { .. },
            ) => true,
            // RTU: `Line` discards whatever arrives before the next request.
            _ => false,
        };
        if drop_connection {
            self.ctx = None;
        }
        Err(AttemptError::Failed(failure))
    }

    async fn connect(&mut self, t: Duration) -> Result<Context, DeviceError> {
        match &self.connector {
            Connector::Serial { port, rs485 } => {
                let opened = Port::open(port).map_err(|e| DeviceError::Port(e.to_string()))?;
                let stream = opened.into_stream();
                if *rs485 {
                    match enable_rs485(&stream) {
                        Ok(()) => {
                            if !self.rs485_noted {
                                tracing::info!(bus = %self.name, path = %port.path, "RS-485 mode enabled (TIOCSRS485)");
                            }
                        }
                        Err(e) if !self.rs485_noted => tracing::warn!(
                            bus = %self.name,
                            path = %port.path,
                            error = %e,
                            "the port's driver does not support RS-485 mode (TIOCSRS485); continuing without it (adapters with automatic direction control need none)"
                        ),
                        Err(_) => {}
                    }
                    self.rs485_noted = true;
                }
                Ok(rtu::attach(self.line(stream)))
            }
            Connector::RtuOverTcp { host, port } => {
                let stream = connect_tcp(host, *port, t).await?;
                Ok(rtu::attach(self.line(stream)))
            }
            Connector::Tcp { host, port } => {
                let stream = connect_tcp(host, *port, t).await?;
                // Requests are small and strictly one at a time: Nagle would only add delay.
                let _ = stream.set_nodelay(true);
                Ok(tcp::attach_slave(stream, Slave(1)))
            }
        }
    }
}

impl Owner {
    /// An RTU transport over `stream`, with a fresh tap for this task to read.
    fn line<S>(&mut self, stream: S) -> Line<S> {
        let tap = Arc::new(Mutex::new(Tap::default()));
        self.tap = Some(tap.clone());
        Line::new(stream, tap)
    }

    /// Logs a failed attempt: a debug line always, and for a unit the config names, a line of
    /// its own kind (bad CRC, wrong unit, garbage, timeout) with the device and unit id, at most
    /// every `FAULT_LOG_EVERY` per unit and kind.
    fn log_fault(&mut self, job: &Job, e: &DeviceError) {
        tracing::debug!(
            bus = %self.name,
            unit_id = job.unit,
            function = job.exchange.function(),
            attempt = job.attempts,
            error = %e,
            "modbus exchange failed"
        );
        let kind = match e {
            DeviceError::Timeout(_) => Fault::NoAnswer,
            DeviceError::BadCrc { .. } => Fault::BadCrc,
            DeviceError::WrongUnit { got, .. } => Fault::WrongUnit(*got),
            DeviceError::BadAnswer { .. } => Fault::Garbage,
            _ => return,
        };
        // Only units the config names: `scan` asks every id and reports what it found itself.
        let device = self.stats.devices_of(job.unit);
        if device.is_empty() {
            return;
        }
        let Some(suppressed) = self
            .fault_log
            .allow((job.unit, kind.event()), Instant::now())
        else {
            return;
        };
        let reply = self
            .tap
            .as_ref()
            .map(|t| hex(&t.lock().unwrap_or_else(|p| p.into_inner()).reply))
            .unwrap_or_default();
        let held_back = if suppressed > 0 {
            format!(
                " ({suppressed} more like it in the last {} s)",
                FAULT_LOG_EVERY.as_secs()
            )
        } else {
            String::new()
        };
        match kind {
            // A dead unit is reported by its poller (device_offline); this says how often.
            Fault::NoAnswer => tracing::info!(
                event = kind.event(),
                bus = %self.name,
                device = %device,
                unit_id = job.unit,
                function = job.exchange.function(),
                suppressed,
                "unit {}: {e}{held_back}",
                job.unit
            ),
            _ => tracing::warn!(
                event = kind.event(),
                bus = %self.name,
                device = %device,
                unit_id = job.unit,
                function = job.exchange.function(),
                reply = %reply,
                suppressed,
                "unit {}: {e}{held_back}",
                job.unit
            ),
        }
    }

    /// Publishes a completed load window, and logs an overrun (rate-limited).
    fn window_closed(&mut self, w: Window) {
        self.stats
            .busy_ms
            .fetch_add(w.busy_ms, std::sync::atomic::Ordering::Relaxed);
        if w.overrun {
            bump(&self.stats.overruns);
            if let Some(suppressed) = self.overrun_log.allow(Instant::now()) {
                let busiest = w
                    .busiest
                    .iter()
                    .map(|s| {
                        let device = self.stats.devices_of(s.unit);
                        let response = s
                            .mean_ms
                            .map(|m| format!(", {m:.0} ms per answer"))
                            .unwrap_or_else(|| ", no answer".into());
                        format!(
                            "unit {} ({device}): {:.0}% of the line{response}",
                            s.unit, s.busy_pct
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::warn!(
                    event = "line_overrun",
                    bus = %self.name,
                    busy_pct = w.load.busy_pct,
                    late_polls = w.late,
                    busiest = %busiest,
                    suppressed,
                    "line {} cannot keep its devices' intervals: busy {:.0}% of the last {} s, {} polls ended after the next was due; busiest: {busiest} (raise intervals, move slow units to a line of their own, or shorten their timeouts)",
                    self.name,
                    w.load.busy_pct,
                    WINDOW.as_secs(),
                    w.late
                );
            }
        }
        self.stats.set_load(w.load);
    }
}

/// Up to 16 bytes in hex, for a log line.
fn hex(bytes: &[u8]) -> String {
    let mut out: Vec<String> = bytes.iter().take(16).map(|b| format!("{b:02X}")).collect();
    if bytes.len() > 16 {
        out.push(format!("… ({} bytes)", bytes.len()));
    }
    out.join(" ")
}

/// The failure as the bytes on the line show it: a timeout with bytes is not silence, and a
/// "header mismatch" from the decoder is a reply of another unit.
fn name_failure(failure: Failure, seen: Fault, reply: &[u8]) -> Failure {
    match (failure, seen) {
        (Failure::Link(r), _) => Failure::Link(r),
        (f, Fault::NoAnswer) => f,
        (_, Fault::BadCrc) => Failure::BadCrc,
        (_, Fault::WrongUnit(u)) => Failure::WrongUnit(u),
        (Failure::Timeout, Fault::Garbage) => {
            Failure::Garbage(format!("{} bytes that are no Modbus answer", reply.len()))
        }
        (f, Fault::Garbage) => f,
    }
}

enum AttemptError {
    Connect(DeviceError),
    Failed(Failure),
}

async fn connect_tcp(host: &str, port: u16, t: Duration) -> Result<TcpStream, DeviceError> {
    let addr = format!("{host}:{port}");
    let resolved = match timeout(t, tokio::net::lookup_host(addr.clone())).await {
        Ok(Ok(mut it)) => it.next().ok_or_else(|| DeviceError::Resolve {
            addr: addr.clone(),
            reason: "no address".into(),
        })?,
        Ok(Err(e)) => {
            return Err(DeviceError::Resolve {
                addr,
                reason: e.to_string(),
            })
        }
        Err(_) => return Err(DeviceError::Timeout(t)),
    };
    match timeout(t, TcpStream::connect(resolved)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(DeviceError::Connect {
            addr,
            reason: e.to_string(),
        }),
        // Not "no answer": nothing was asked yet, the host itself is unreachable.
        Err(_) => Err(DeviceError::Connect {
            addr,
            reason: format!("timed out after {}", humantime::format_duration(t)),
        }),
    }
}

/// Runs one exchange and checks that the answer is the answer to it: tokio-modbus checks the
/// unit and function code, but only debug-asserts the quantity (a panic in debug builds on a
/// device's input), so the quantity is checked here.
async fn transact(ctx: &mut Context, ex: &Exchange) -> Result<Answer, Failure> {
    match ex {
        Exchange::Read {
            table,
            start,
            count,
        } => {
            let req = match table {
                Table::Coil => Request::ReadCoils(*start, *count),
                Table::Discrete => Request::ReadDiscreteInputs(*start, *count),
                Table::Holding => Request::ReadHoldingRegisters(*start, *count),
                Table::Input => Request::ReadInputRegisters(*start, *count),
            };
            let want = usize::from(*count);
            match call(ctx, req).await? {
                Err(code) => Ok(Answer::Exception(exception(code))),
                Ok(Response::ReadCoils(mut bits) | Response::ReadDiscreteInputs(mut bits)) => {
                    // Bits come padded to whole bytes.
                    if bits.len() < want {
                        return Err(Failure::Garbage(format!(
                            "{} bits for a request of {want}",
                            bits.len()
                        )));
                    }
                    bits.truncate(want);
                    Ok(Answer::Bits(bits))
                }
                Ok(Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w)) => {
                    if w.len() != want {
                        return Err(Failure::Garbage(format!(
                            "{} registers for a request of {want}",
                            w.len()
                        )));
                    }
                    Ok(Answer::Words(w))
                }
                Ok(other) => Err(Failure::Garbage(format!("unexpected answer {other:?}"))),
            }
        }
        Exchange::WriteCoil {
            address,
            value,
            multiple,
        } => {
            let (req, echo) = if *multiple {
                (
                    Request::WriteMultipleCoils(*address, Cow::Owned(vec![*value])),
                    Response::WriteMultipleCoils(*address, 1),
                )
            } else {
                (
                    Request::WriteSingleCoil(*address, *value),
                    Response::WriteSingleCoil(*address, *value),
                )
            };
            written(call(ctx, req).await?, &echo)
        }
        Exchange::WriteRegisters {
            address,
            words,
            multiple,
        } => {
            let (req, echo) = match words.as_slice() {
                [one] if !multiple => (
                    Request::WriteSingleRegister(*address, *one),
                    Response::WriteSingleRegister(*address, *one),
                ),
                _ => (
                    Request::WriteMultipleRegisters(*address, Cow::Owned(words.clone())),
                    Response::WriteMultipleRegisters(
                        *address,
                        u16::try_from(words.len()).unwrap_or(u16::MAX),
                    ),
                ),
            };
            written(call(ctx, req).await?, &echo)
        }
        Exchange::WriteBit {
            address,
            bit,
            value,
            multiple,
        } => {
            let current = match call(ctx, Request::ReadHoldingRegisters(*address, 1)).await? {
                Err(code) => return Ok(Answer::Exception(exception(code))),
                Ok(Response::ReadHoldingRegisters(w)) if w.len() == 1 => w[0],
                Ok(other) => return Err(Failure::Garbage(format!("unexpected answer {other:?}"))),
            };
            let mask = 1u16 << (bit & 15);
            let next = if *value {
                current | mask
            } else {
                current & !mask
            };
            let (req, echo) = if *multiple {
                (
                    Request::WriteMultipleRegisters(*address, Cow::Owned(vec![next])),
                    Response::WriteMultipleRegisters(*address, 1),
                )
            } else {
                (
                    Request::WriteSingleRegister(*address, next),
                    Response::WriteSingleRegister(*address, next),
                )
            };
            written(call(ctx, req).await?, &echo)
        }
    }
}

/// A write is confirmed only by the echo the spec prescribes (address and value, or address
/// and quantity): a stale reply to another write of the same unit must not confirm this one.
fn written(r: Result<Response, ExceptionCode>, echo: &Response) -> Result<Answer, Failure> {
    match r {
        Err(code) => Ok(Answer::Exception(exception(code))),
        Ok(got) if got == *echo => Ok(Answer::Written),
        Ok(other) => Err(Failure::Garbage(format!(
            "the write was answered with {other:?}, not its echo {echo:?}"
        ))),
    }
}

/// The one place a tokio-modbus exception code becomes ours.
fn exception(code: ExceptionCode) -> ModbusException {
    ModbusException::new(u8::from(code))
}

async fn call(
    ctx: &mut Context,
    req: Request<'static>,
) -> Result<Result<Response, ExceptionCode>, Failure> {
    match ctx.call(req).await {
        Ok(r) => Ok(r),
        Err(tokio_modbus::Error::Protocol(p)) => Err(Failure::Garbage(p.to_string())),
        Err(tokio_modbus::Error::Transport(e)) if e.kind() == io::ErrorKind::InvalidData => {
            Err(Failure::Corrupt(e.to_string()))
        }
        Err(tokio_modbus::Error::Transport(e)) => Err(Failure::Link(e.to_string())),
    }
}

/// Discards input that is waiting but was not asked for.
trait DiscardPending {
    fn discard_pending(&mut self);
}

impl DiscardPending for tokio_serial::SerialStream {
    fn discard_pending(&mut self) {
        use tokio_serial::SerialPort;
        let _ = self.clear(tokio_serial::ClearBuffer::Input);
    }
}

impl DiscardPending for TcpStream {
    fn discard_pending(&mut self) {
        use std::os::fd::AsRawFd;
        let fd = self.as_raw_fd();
        let mut buf = [0u8; 256];
        // Straight from the socket with MSG_DONTWAIT: tokio's `try_read` answers WouldBlock
        // without asking the kernel while its cached readiness is clear, which would leave
        // bytes that arrived just now. Stops at "nothing waiting", EOF or an error; the next
        // write or read reports a dead socket properly.
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes; the fd stays open while `self` is
            // borrowed.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                break;
            }
        }
    }
}

/// The bytes of the last request and of what came back since, for `fault` to read.
#[derive(Debug, Default)]
struct Tap {
    request: Vec<u8>,
    reply: Vec<u8>,
}

/// Enough for the longest RTU frame; beyond that, bytes are not kept.
const TAP_MAX: usize = 256;

fn keep(into: &mut Vec<u8>, bytes: &[u8]) {
    let room = TAP_MAX.saturating_sub(into.len());
    into.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// An RTU transport that throws away whatever arrived since the last answer before it sends
/// the next request: a late reply to a request that timed out must never be read as the
/// answer to the next one. It keeps the request and the reply in its tap, and ends a read
/// with an error as soon as the reply is a whole frame with a bad CRC.
struct Line<S> {
    inner: S,
    read_since_write: bool,
    tap: Arc<Mutex<Tap>>,
}

impl<S> Line<S> {
    fn new(inner: S, tap: Arc<Mutex<Tap>>) -> Self {
        Line {
            inner,
            read_since_write: true,
            tap,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Line<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.read_since_write = true;
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let mut tap = self.tap.lock().unwrap_or_else(|p| p.into_inner());
            keep(
                &mut tap.reply,
                buf.filled().get(before..).unwrap_or_default(),
            );
            if fault::is_bad_crc(&tap.request, &tap.reply) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "bad CRC")));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + DiscardPending + Unpin> AsyncWrite for Line<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.read_since_write {
            self.inner.discard_pending();
            self.read_since_write = false;
            let mut tap = self.tap.lock().unwrap_or_else(|p| p.into_inner());
            tap.request.clear();
            tap.reply.clear();
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            let mut tap = self.tap.lock().unwrap_or_else(|p| p.into_inner());
            keep(&mut tap.request, buf.get(..n).unwrap_or_default());
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Linux `struct serial_rs485` (include/uapi/linux/serial.h); libc has the ioctl number but
/// not the struct.
#[repr(C)]
#[derive(Default)]
struct SerialRs485 {
    flags: u32,
    delay_rts_before_send: u32,
    delay_rts_after_send: u32,
    padding: [u32; 5],
}

const SER_RS485_ENABLED: u32 = 1;
const SER_RS485_RTS_ON_SEND: u32 = 1 << 1;

/// Asks the kernel driver to switch the transceiver direction itself. ENOTTY (a pty, an
/// adapter whose driver lacks it) is returned as an error for the caller to log, never fatal.
fn enable_rs485(stream: &tokio_serial::SerialStream) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let conf = SerialRs485 {
        flags: SER_RS485_ENABLED | SER_RS485_RTS_ON_SEND,
        ..SerialRs485::default()
    };
    // SAFETY: TIOCSRS485 reads one `struct serial_rs485` from the pointer, which lives for the
    // call; the fd is open for as long as `stream` is borrowed.
    let rc = unsafe {
        libc::ioctl(
            stream.as_raw_fd(),
            libc::TIOCSRS485 as _,
            &conf as *const SerialRs485,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rtu_silence_follows_the_baud_rate_and_is_fixed_above_19200() {
        let serial = |baud| Connector::Serial {
            port: PortSettings {
                path: "/dev/null".into(),
                baud,
                data_bits: 8,
                parity: crate::config::spec::serial::Parity::None,
                stop_bits: 1,
            },
            rs485: false,
        };
        assert_eq!(serial(9600).min_gap(), Duration::from_micros(4010));
        assert_eq!(serial(19_200).min_gap(), Duration::from_micros(2005));
        assert_eq!(serial(115_200).min_gap(), Duration::from_micros(1750));
        let tcp = Connector::Tcp {
            host: "h".into(),
            port: 502,
        };
        assert_eq!(tcp.min_gap(), Duration::ZERO);
    }

    #[test]
    fn function_codes_follow_the_value_and_the_multiple_switch() {
        let regs = |n: usize, multiple| Exchange::WriteRegisters {
            address: 0,
            words: vec![0; n],
            multiple,
        };
        assert_eq!(regs(1, false).function(), "FC06");
        assert_eq!(regs(1, true).function(), "FC16");
        assert_eq!(regs(2, false).function(), "FC16");
        let coil = |multiple| Exchange::WriteCoil {
            address: 0,
            value: true,
            multiple,
        };
        assert_eq!(coil(false).function(), "FC05");
        assert_eq!(coil(true).function(), "FC15");
    }
}
