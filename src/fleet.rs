//! The device tasks (one poller per Modbus device, one task per serial device) and the Modbus
//! lines they poll through (one task per `[[buses]]` entry, a private one per Modbus TCP
//! device), each of which can be started and stopped on its own, so that a reload restarts only
//! what changed (`reload::Plan`) while every other device keeps its cadence.
//!
//! The fleet also keeps what is keyed by device or line in step with its tasks: the board of
//! device reachability, each Modbus device's write handle for commands, the line and serial
//! counters of the stats, and each task's watchdog beat (a stopped task drops its beat).
//! Stop order, at shutdown and for one device: the device task first, then its line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Retry, Schedule};
use crate::commands::Targets;
use crate::config::serial::SerialDevice;
use crate::config::{Bus, Config, Device, Transport};
use crate::device::modbus::bus::{self, BusHandle, Connector};
use crate::device::modbus::driver::{own_poll_budget, ModbusDriver};
use crate::device::modbus::lines;
use crate::device::modbus::writer::Writer;
use crate::device::serial;
use crate::device::Driver;
use crate::flow::DeviceEvent;
use crate::ops::health::Health;
use crate::ops::stats::{Board, LineCounters, Named, PollCounters, SerialCounters};
use crate::poller;
use crate::reload::Changes;

/// What the device tasks report into, shared with the rest of the gateway.
pub struct Deps {
    pub tx: mpsc::Sender<DeviceEvent>,
    pub health: Health,
    pub board: Arc<Board>,
    pub writers: Targets,
    pub line_stats: Named<LineCounters>,
    pub serial_stats: Named<SerialCounters>,
    pub poll_stats: Named<PollCounters>,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

struct Line {
    handle: BusHandle,
    run: Running,
}

pub struct Fleet {
    deps: Deps,
    /// The config the running tasks were started from.
    cfg: Config,
    buses: HashMap<Arc<str>, Line>,
    /// The private line of each Modbus TCP device, by device name.
    tcp_lines: HashMap<Arc<str>, Line>,
    devices: HashMap<Arc<str>, Running>,
    /// Parents of every device's and every line's own token.
    devices_stop: CancellationToken,
    lines_stop: CancellationToken,
}

impl Fleet {
    /// Starts every line and device task of `cfg`.
    pub fn start(cfg: &Config, deps: Deps) -> Fleet {
        let mut f = Fleet {
            deps,
            cfg: cfg.clone(),
            buses: HashMap::new(),
            tcp_lines: HashMap::new(),
            devices: HashMap::new(),
            devices_stop: CancellationToken::new(),
            lines_stop: CancellationToken::new(),
        };
        for b in &cfg.buses {
            f.start_bus(b);
        }
        for d in &cfg.devices {
            f.start_modbus(d);
        }
        for d in &cfg.serial_devices {
            f.start_serial(d);
        }
        f
    }

    /// Applies a reload to `new`: stops the removed and changed devices and buses, then starts
    /// the added and changed ones. Unchanged devices and their lines are not touched.
    pub async fn apply(&mut self, new: &Config, devices: &Changes, buses: &Changes) {
        for name in devices.removed.iter().chain(&devices.changed) {
            self.stop_device(name).await;
            if devices.removed.contains(name) {
                self.deps.board.remove(name);
            }
        }
        for name in buses.removed.iter().chain(&buses.changed) {
            if let Some(line) = self.buses.remove(name) {
                line.run.stop().await;
            }
            self.forget_line(name);
        }
        self.cfg = new.clone();
        for name in buses.added.iter().chain(&buses.changed) {
            if let Some(b) = new.buses.iter().find(|b| &b.name == name) {
                self.start_bus(b);
            }
        }
        for name in devices.added.iter().chain(&devices.changed) {
            if let Some(d) = new.devices.iter().find(|d| &d.name == name) {
                self.start_modbus(d);
            } else if let Some(d) = new.serial_devices.iter().find(|d| &d.name == name) {
                self.start_serial(d);
            }
        }
    }

    /// Stops every device task (shutdown, step 1); the lines keep running for writes.
    pub async fn stop_devices(&mut self) {
        self.devices_stop.cancel();
        for (_, d) in self.devices.drain() {
            let _ = d.task.await;
        }
    }

    /// Stops every line (shutdown, after the devices and the command runner).
    pub async fn stop_lines(&mut self) {
        self.lines_stop.cancel();
        for (_, l) in self.buses.drain().chain(self.tcp_lines.drain()) {
            let _ = l.run.task.await;
        }
    }

    async fn stop_device(&mut self, name: &Arc<str>) {
        if let Some(d) = self.devices.remove(name) {
            d.stop().await;
        }
        self.deps
            .writers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(line) = self.tcp_lines.remove(name) {
            line.run.stop().await;
            self.forget_line(name);
        }
        self.deps
            .serial_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, _)| n != name);
        self.deps
            .poll_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, _)| n != name);
    }

    fn forget_line(&self, name: &str) {
        self.deps
            .line_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, _)| &**n != name);
    }

    fn spawn_line(&self, name: Arc<str>, connector: Connector, gap: Duration) -> Line {
        let stop = self.lines_stop.child_token();
        let (handle, task) = bus::spawn(name.clone(), connector, gap, stop.clone());
        self.deps
            .line_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, handle.stats().clone()));
        Line {
            handle,
            run: Running { stop, task },
        }
    }

    fn start_bus(&mut self, b: &Bus) {
        let line = self.spawn_line(b.name.clone(), lines::connector(b), b.request_gap);
        self.buses.insert(b.name.clone(), line);
    }

    fn start_modbus(&mut self, d: &Device) {
        let (handle, budget) = match &d.transport {
            Transport::Bus(name) => {
                let Some(line) = self.buses.get(name) else {
                    // Validation makes every device name a defined bus.
                    tracing::error!(device = %d.name, bus = %name, "no line for device; not polled");
                    return;
                };
                // Every unit's worst case added up: a poll may wait behind all of them.
                let gap = self
                    .cfg
                    .buses
                    .iter()
                    .find(|b| &b.name == name)
                    .map(|b| b.request_gap)
                    .unwrap_or_default();
                let budget = self
                    .cfg
                    .devices
                    .iter()
                    .filter(|o| matches!(&o.transport, Transport::Bus(n) if n == name))
                    .map(|o| own_poll_budget(o) + gap * 8)
                    .fold(Duration::ZERO, |a, x| a.saturating_add(x));
                (line.handle.clone(), budget)
            }
            Transport::Tcp { host, port } => {
                let connector = Connector::Tcp {
                    host: host.clone(),
                    port: *port,
                };
                let line = self.spawn_line(d.name.clone(), connector, Duration::ZERO);
                let handle = line.handle.clone();
                self.tcp_lines.insert(d.name.clone(), line);
                (handle, own_poll_budget(d))
            }
        };
        // The line's stats and log lines name the devices behind each unit id.
        handle.stats().add_device(d.unit_id, d.name.clone());
        self.deps
            .writers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.name.clone(), Writer::new(d.clone(), handle.clone()));
        let driver = ModbusDriver::new(d.clone(), handle, budget);
        tracing::info!(
            device = %d.name,
            unit_id = d.unit_id,
            line = %lines::describe(&self.cfg, d),
            points = d.points.len(),
            requests_per_cycle = driver.requests_per_cycle(),
            "polling device"
        );
        let schedule = Schedule {
            interval: d.interval,
            backoff_max: d.backoff_max,
            // Units on a shared line share its time: see `backoff::Retry`.
            retry: match d.transport {
                Transport::Bus(_) => Retry::Probe,
                Transport::Tcp { .. } => Retry::Backoff,
            },
        };
        let beat = self
            .deps
            .health
            .register_device(&d.name, driver.max_poll_time());
        self.deps.board.add(&d.name);
        let polls: Arc<PollCounters> = Arc::default();
        self.deps
            .poll_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((d.name.clone(), polls.clone()));
        let stop = self.devices_stop.child_token();
        let task = tokio::spawn(poller::run(
            d.name.clone(),
            driver,
            schedule,
            self.deps.tx.clone(),
            stop.clone(),
            beat,
            polls,
        ));
        self.devices.insert(d.name.clone(), Running { stop, task });
    }

    fn start_serial(&mut self, d: &SerialDevice) {
        tracing::info!(device = %d.name, path = %d.port.path, "reading serial device");
        let stats: Arc<SerialCounters> = Arc::default();
        self.deps
            .serial_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((d.name.clone(), stats.clone()));
        let beat = self
            .deps
            .health
            .register_device(&d.name, serial::task::first_beat_within(d));
        self.deps.board.add(&d.name);
        let stop = self.devices_stop.child_token();
        let task = tokio::spawn(serial::task::run(
            d.clone(),
            self.deps.tx.clone(),
            stop.clone(),
            stats,
            beat,
        ));
        self.devices.insert(d.name.clone(), Running { stop, task });
    }
}
