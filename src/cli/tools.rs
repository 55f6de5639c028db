//! One-shot field tools behind the CLI: `explain` (the planned requests), `scan` (which unit ids
//! answer on a line), `read` (one poll of a configured device) and `write` (one validated
//! write). They reuse the daemon's own pieces (planner, bus owner, driver, and the device's
//! write handle through `Commands`), so what they show is what the gateway does. They must not run against a port the daemon
//! holds: the port is opened exclusively and the second opener gets a "busy" error.

use crate::config::spec::modbus::Table;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::commands::Commands;
use crate::config::{Config, Device, Transport};
use crate::device::modbus::bus::{self, Answer, Connector, Exchange};

use crate::device::modbus::driver::ModbusDriver;
use crate::device::modbus::{lines, plan};
use crate::device::{DeviceError, Driver};
use crate::flow::Value;
use crate::flow::{Command, Origin};
use crate::mqtt::topics::Topics;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "no Modbus device named {name:?} in the config; {}",
        known_devices(known)
    )]
    NoDevice { name: String, known: Vec<String> },
    /// `read`, `write` and `explain` work on Modbus devices; a `serial_line` device streams.
    #[error("{name:?} is a serial_line device; {tool} works on Modbus devices only ({}); watch its readings with `mosquitto_sub -t '<prefix>/<gateway id>/{name}/#'` instead", known_devices(known))]
    SerialDevice {
        name: String,
        tool: &'static str,
        known: Vec<String>,
    },
    #[error("{0}")]
    Failed(String),
}

fn known_devices(known: &[String]) -> String {
    match known {
        [] => "the config has no Modbus devices".into(),
        names => format!("configured Modbus devices: {}", names.join(", ")),
    }
}

fn find<'c>(cfg: &'c Config, name: &str, tool: &'static str) -> Result<&'c Device, ToolError> {
    let known = || cfg.devices.iter().map(|d| d.name.to_string()).collect();
    if let Some(d) = cfg.devices.iter().find(|d| &*d.name == name) {
        return Ok(d);
    }
    if cfg.serial_devices.iter().any(|d| &*d.name == name) {
        return Err(ToolError::SerialDevice {
            name: name.to_string(),
            tool,
            known: known(),
        });
    }
    Err(ToolError::NoDevice {
        name: name.to_string(),
        known: known(),
    })
}

/// `fieldbridge explain`: the requests each device's poll sends, per cycle.
pub fn explain(cfg: &Config, device: Option<&str>) -> Result<String, ToolError> {
    let devices: Vec<&Device> = match device {
        Some(n) => vec![find(cfg, n, "explain")?],
        None => cfg.devices.iter().collect(),
    };
    let mut out = String::new();
    for d in devices {
        let _ = writeln!(
            out,
            "{} (unit {}, {}{}), every {}:",
            d.name,
            d.unit_id,
            lines::describe(cfg, d),
            d.profile
                .as_deref()
                .map(|p| format!(", profile {p}"))
                .unwrap_or_default(),
            humantime::format_duration(d.interval)
        );
        out.push_str(&plan::explain(&d.points, &d.limits));
        let l = d.limits;
        let _ = writeln!(
            out,
            "  limits: max_registers {}, max_bits {}, max_gap {}{}",
            l.max_registers,
            l.max_bits,
            l.max_gap,
            if l.one_request_per_point {
                ", one request per point"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "  payload: {}; report:", d.payload.as_str());
        let width = d.points.iter().map(|p| p.name.len()).max().unwrap_or(0);
        for p in d.points.iter() {
            let _ = writeln!(out, "    {:width$}  {}", p.name, p.report);
        }
    }
    Ok(out)
}

/// A config with only `device` (and the bus it needs), so a tool opens nothing else.
fn only(cfg: &Config, device: &Device) -> Config {
    let mut c = cfg.clone();
    c.devices = vec![device.clone()];
    c.buses
        .retain(|b| matches!(&device.transport, Transport::Bus(n) if *n == b.name));
    c.serial_devices.clear();
    c
}

/// `fieldbridge read`: one poll, decoded values as lines of text.
pub async fn read(cfg: &Config, device: &str) -> Result<String, ToolError> {
    let d = find(cfg, device, "read")?;
    let sub = only(cfg, d);
    let stop = CancellationToken::new();
    let mut l = lines::start(&sub, &stop);
    let result = match l.get(&d.name).cloned() {
        Some((bus, budget)) => ModbusDriver::new(d.clone(), bus, budget).poll().await,
        None => return Err(ToolError::Failed("no line for the device".into())),
    };
    stop.cancel();
    while l.tasks.join_next().await.is_some() {}
    let readings = result.map_err(|e| ToolError::Failed(format!("{}: {e}", d.name)))?;
    let width = readings.iter().map(|r| r.point.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in readings {
        let report = d
            .points
            .iter()
            .find(|p| p.name == r.point)
            .map(|p| p.report)
            .unwrap_or_default();
        let value = match &r.value {
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Text(t) => format!("{t:?}"),
            Value::Null => "null".into(),
        };
        let _ = writeln!(
            out,
            "{:width$}  {value}{}{}  [report {report}]",
            r.point,
            r.unit.map(|u| format!(" {u}")).unwrap_or_default(),
            r.error.map(|e| format!("  ({e})")).unwrap_or_default(),
        );
    }
    Ok(out)
}

/// `fieldbridge write`: one write with the same validation as an upstream command.
pub async fn write(
    cfg: &Config,
    device: &str,
    point: &str,
    value: &str,
) -> Result<String, ToolError> {
    let d = find(cfg, device, "write")?;
    let sub = only(cfg, d);
    let stop = CancellationToken::new();
    let mut l = lines::start(&sub, &stop);
    let Some(writer) = l.writer(d) else {
        return Err(ToolError::Failed("no line for the device".into()));
    };
    let (results, _) = tokio::sync::mpsc::channel(1);
    let commands = Commands {
        targets: Arc::new(std::sync::RwLock::new(
            [(d.name.clone(), writer)].into_iter().collect(),
        )),
        topics: Topics::new(&cfg.gateway.topic_prefix, &cfg.gateway.id),
        results,
        max_age: None,
        counters: Default::default(),
    };
    let cmd = Command {
        device: device.to_string(),
        point: point.to_string(),
        payload: value.as_bytes().to_vec(),
        origin: Origin::CommandLine,
    };
    let (outcome, _) = commands.execute(&cmd).await;
    stop.cancel();
    while l.tasks.join_next().await.is_some() {}
    outcome
        .map(|v| format!("{device}/{point} = {v}: confirmed by the device\n"))
        .map_err(|e| ToolError::Failed(e.to_string()))
}

/// What `scan` probes with.
#[derive(Debug, Clone)]
pub struct ScanSpec {
    pub connector: Connector,
    pub units: std::ops::RangeInclusive<u8>,
    pub timeout: Duration,
    pub table: Table,
    pub address: u16,
}

/// `fieldbridge scan`: asks every unit id in the range for one register (or bit). Any answer,
/// an exception included, means a device with that id is on the line. A reply with a bad CRC,
/// from another unit id, or of garbage is named with what to check, and listed at the end, so a
/// wiring fault is not taken for an empty address.
pub async fn scan(spec: &ScanSpec, mut progress: impl FnMut(&str)) -> Result<Vec<u8>, ToolError> {
    let stop = CancellationToken::new();
    let (handle, task) = bus::spawn(
        Arc::from("scan"),
        spec.connector.clone(),
        Duration::from_millis(5),
        stop.clone(),
    );
    let mut found = Vec::new();
    let mut faulty: Vec<u8> = Vec::new();
    for unit in spec.units.clone() {
        let ex = Exchange::Read {
            table: spec.table,
            start: spec.address,
            count: 1,
        };
        match handle.call(unit, ex, spec.timeout, 0).await {
            Ok(Answer::Words(w)) => {
                progress(&format!(
                    "unit {unit:>3}: answers ({} {} = {})",
                    spec.table,
                    spec.address,
                    w.first().copied().unwrap_or_default()
                ));
                found.push(unit);
            }
            Ok(Answer::Bits(b)) => {
                progress(&format!(
                    "unit {unit:>3}: answers ({} {} = {})",
                    spec.table,
                    spec.address,
                    b.first().copied().unwrap_or_default()
                ));
                found.push(unit);
            }
            Ok(Answer::Exception(code)) => {
                progress(&format!(
                    "unit {unit:>3}: answers with exception {code} for {} {}",
                    spec.table, spec.address
                ));
                found.push(unit);
            }
            Ok(Answer::Written) => {}
            Err(DeviceError::Timeout(_)) => {}
            // Something answers, but not cleanly: named, so a wiring fault is not taken for
            // an empty address.
            Err(DeviceError::BadCrc { .. }) => {
                progress(&format!(
                    "unit {unit:>3}: answers, but with bad CRCs — check baud, parity, termination"
                ));
                faulty.push(unit);
            }
            Err(DeviceError::WrongUnit { got, .. }) => {
                progress(&format!(
                    "unit {unit:>3}: a reply came from unit {got} instead — two devices with one id, or a device that ignores its id"
                ));
                faulty.push(unit);
            }
            Err(DeviceError::BadAnswer { reason, .. }) => {
                progress(&format!(
                    "unit {unit:>3}: answers with garbage ({reason}) — check baud, parity, wiring"
                ));
                faulty.push(unit);
            }
            Err(
                e @ (DeviceError::Port(_)
                | DeviceError::Connect { .. }
                | DeviceError::Resolve { .. }),
            ) => {
                stop.cancel();
                let _ = task.await;
                // Each of these names the port or address itself.
                return Err(ToolError::Failed(e.to_string()));
            }
            Err(e) => progress(&format!("unit {unit:>3}: garbled answer ({e})")),
        }
    }
    stop.cancel();
    let _ = task.await;
    if !faulty.is_empty() {
        let list: Vec<String> = faulty.iter().map(|u| u.to_string()).collect();
        progress(&format!(
            "{} unit{} answer{} with faults (not counted as found): {}",
            faulty.len(),
            if faulty.len() == 1 { "" } else { "s" },
            if faulty.len() == 1 { "s" } else { "" },
            list.join(", ")
        ));
    }
    Ok(found)
}
