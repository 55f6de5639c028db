//! Which bus task each Modbus device talks through: one task per `[[buses]]` entry (every RTU
//! unit on that line shares it) and one private task per Modbus TCP device. Also the poll-time
//! budget of a device on a shared line, which includes waiting for the other units, and each
//! device's write handle (`Writer`) on that same line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::bus::{self, BusHandle, Connector};
use super::driver::own_poll_budget;
use super::writer::Writer;
use crate::config::{Bus, BusLink, Config, Device, Transport};
use crate::ops::stats::LineCounters;

pub struct Lines {
    by_device: HashMap<Arc<str>, (BusHandle, Duration)>,
    pub tasks: JoinSet<()>,
    /// Every line's counters, by line name (a bus name, or the device name of a Modbus TCP
    /// device).
    pub stats: Vec<(Arc<str>, Arc<LineCounters>)>,
}

impl Lines {
    /// The bus handle of a device and the longest one of its polls may take.
    pub fn get(&self, device: &str) -> Option<&(BusHandle, Duration)> {
        self.by_device.get(device)
    }

    /// The write handle of `device`, on the line its polls use.
    pub fn writer(&self, device: &Device) -> Option<Writer> {
        let (bus, _) = self.by_device.get(&device.name)?;
        Some(Writer::new(device.clone(), bus.clone()))
    }
}

pub fn connector(bus: &Bus) -> Connector {
    match &bus.link {
        BusLink::Serial { port, rs485 } => Connector::Serial {
            port: port.clone(),
            rs485: *rs485,
        },
        BusLink::RtuOverTcp { host, port } => Connector::RtuOverTcp {
            host: host.clone(),
            port: *port,
        },
    }
}

/// Starts the bus tasks `cfg`'s Modbus devices need.
pub fn start(cfg: &Config, stop: &CancellationToken) -> Lines {
    let mut tasks = JoinSet::new();
    let mut stats = Vec::new();
    let mut shared: HashMap<&str, (BusHandle, Duration)> = HashMap::new();
    for b in &cfg.buses {
        // Every unit's worst case added up: a poll may wait behind all of them.
        let budget = cfg
            .devices
            .iter()
            .filter(|d| matches!(&d.transport, Transport::Bus(n) if *n == b.name))
            .map(|d| own_poll_budget(d) + b.request_gap * 8)
            .fold(Duration::ZERO, |a, x| a.saturating_add(x));
        let (handle, task) = bus::spawn(b.name.clone(), connector(b), b.request_gap, stop.clone());
        tasks.spawn(async move {
            let _ = task.await;
        });
        stats.push((b.name.clone(), handle.stats().clone()));
        shared.insert(&b.name, (handle, budget));
    }
    let mut by_device = HashMap::new();
    for d in &cfg.devices {
        let entry = match &d.transport {
            Transport::Bus(name) => shared.get(&**name).cloned(),
            Transport::Tcp { host, port } => {
                let (handle, task) = bus::spawn(
                    d.name.clone(),
                    Connector::Tcp {
                        host: host.clone(),
                        port: *port,
                    },
                    Duration::ZERO,
                    stop.clone(),
                );
                tasks.spawn(async move {
                    let _ = task.await;
                });
                stats.push((d.name.clone(), handle.stats().clone()));
                Some((handle, own_poll_budget(d)))
            }
        };
        if let Some(e) = entry {
            // The line's stats and log lines name the devices behind each unit id.
            e.0.stats().add_device(d.unit_id, d.name.clone());
            by_device.insert(d.name.clone(), e);
        }
    }
    Lines {
        by_device,
        tasks,
        stats,
    }
}

/// The devices of `cfg` that use `device`'s line, for logs.
pub fn describe(cfg: &Config, d: &Device) -> String {
    match &d.transport {
        Transport::Tcp { host, port } => format!("{host}:{port}"),
        Transport::Bus(name) => cfg
            .buses
            .iter()
            .find(|b| b.name == *name)
            .map(|b| format!("bus {name} ({})", b.link.describe()))
            .unwrap_or_else(|| format!("bus {name}")),
    }
}
