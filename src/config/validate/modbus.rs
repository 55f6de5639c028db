//! Validation of Modbus devices (TCP and RTU), their points, the `[[buses]]` they share, and the
//! device profiles they name. Pure: profiles arrive already read (see `config::profile`).
//!
//! Precedence of a device key: the device's own value, then the profile's `[defaults]`, then
//! the built-in default. Profile points come first, in profile order; a device point with the
//! same name replaces the profile's, and `skip_points` drops profile points.

use crate::config::spec::modbus::{DataType, Table, WordOrder};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::super::locate::KeyPath;
use super::super::profile::{builtin_names, Profiles};
use super::super::raw::{RawBus, RawConfig, RawDevice, RawPoint, RawProfile, RawProfileDefaults};
use super::super::serial::SerialDevice;
use super::super::{Bus, BusLink, Device, Issue, PlanLimits, Point, Transport, WriteLimits};
use super::check::Check;
use super::{homeassistant, report};
use crate::config::spec::report::ReportPolicy;

pub const KIND_TCP: &str = "modbus_tcp";
pub const KIND_RTU: &str = "modbus_rtu";
const DEFAULT_TIMEOUT: &str = super::super::raw::DEFAULT_MODBUS_TIMEOUT;
/// Longest string point: one full read request.
const MAX_STRING_REGISTERS: i64 = 125;

pub(in super::super) fn profile(raw: &RawProfile) -> Result<(), Vec<Issue>> {
    let mut c = Check { issues: Vec::new() };
    let root = KeyPath::root();
    c.topic_level(root.key("profile").key("name"), &raw.profile.name);
    let d = root.key("defaults");
    let order = defaults_order(&mut c, &d, &raw.defaults);
    limits(&mut c, &d, &raw.defaults, None);
    if let Some(u) = raw.defaults.unit_id {
        c.int::<u8>(d.key("unit_id"), u, 1, 247);
    }
    if let Some(t) = &raw.defaults.timeout {
        c.duration(
            d.key("timeout"),
            t,
            Duration::from_millis(10),
            Duration::from_secs(600),
        );
    }
    if let Some(p) = &raw.defaults.parity {
        c.parsed(
            d.key("parity"),
            p,
            "parity",
            crate::config::spec::serial::Parity::NAMES,
            crate::config::spec::serial::Parity::None,
        );
    }
    if raw.points.is_empty() {
        c.push(
            root.key("points"),
            "a profile needs at least one [[points]]",
        );
    }
    let mut names = HashSet::new();
    for (i, pt) in raw.points.iter().enumerate() {
        let pp = root.key("points").index(i);
        if !names.insert(pt.name.as_str()) {
            c.push(
                pp.key("name"),
                format!("duplicate point name {:?}", pt.name),
            );
        }
        point(&mut c, pp, pt, order, &ReportPolicy::default());
    }
    if c.issues.is_empty() {
        Ok(())
    } else {
        Err(c.issues)
    }
}

fn defaults_order(c: &mut Check, d: &KeyPath, defaults: &RawProfileDefaults) -> WordOrder {
    match &defaults.word_order {
        Some(s) => c.parsed(
            d.key("word_order"),
            s,
            "word order",
            WordOrder::NAMES,
            WordOrder::Abcd,
        ),
        None => WordOrder::Abcd,
    }
}

/// Planner limits from the device's keys, falling back to the profile's defaults.
fn limits(
    c: &mut Check,
    p: &KeyPath,
    own: &RawProfileDefaults,
    profile: Option<&RawProfileDefaults>,
) -> PlanLimits {
    let pick = |mine: Option<i64>, theirs: Option<i64>| mine.or(theirs);
    let prof = |f: fn(&RawProfileDefaults) -> Option<i64>| profile.and_then(f);
    let dflt = PlanLimits::default();
    PlanLimits {
        max_gap: pick(own.max_gap, prof(|d| d.max_gap))
            .map(|v| c.int(p.key("max_gap"), v, 0, 124))
            .unwrap_or(dflt.max_gap),
        max_registers: pick(own.max_registers, prof(|d| d.max_registers))
            .map(|v| c.int(p.key("max_registers"), v, 1, 125))
            .unwrap_or(dflt.max_registers),
        max_bits: pick(own.max_bits, prof(|d| d.max_bits))
            .map(|v| c.int(p.key("max_bits"), v, 1, 2000))
            .unwrap_or(dflt.max_bits),
        one_request_per_point: own
            .one_request_per_point
            .or(profile.and_then(|d| d.one_request_per_point))
            .unwrap_or(false),
    }
}

pub(super) fn buses(c: &mut Check, p: KeyPath, raw: &[RawBus]) -> Vec<Bus> {
    let mut out: Vec<Bus> = Vec::new();
    for (i, b) in raw.iter().enumerate() {
        let bp = p.index(i);
        if b.name.trim().is_empty() {
            c.push(bp.key("name"), "must not be empty");
        }
        if out.iter().any(|o| *o.name == *b.name) {
            c.push(
                bp.key("name"),
                format!("duplicate bus name {:?}; bus names must be unique", b.name),
            );
        }
        let not_for = |c: &mut Check, keys: &[(&str, bool)], kind: &str| {
            c.not_used(&bp, keys, &format!("not used by a {kind} bus"));
        };
        let link = match b.kind.as_str() {
            "serial" => {
                not_for(
                    c,
                    &[("host", b.host.is_some()), ("port", b.port.is_some())],
                    "serial",
                );
                let path = b.path.clone().unwrap_or_default();
                if path.trim().is_empty() {
                    c.push(
                        bp.key("path"),
                        "missing: a serial bus needs path = \"/dev/ttyUSB0\" (better: a /dev/serial/by-id/ name)",
                    );
                }
                let port = super::serial::line_settings(
                    c,
                    &bp,
                    path,
                    (b.baud, b.data_bits, b.parity.as_deref(), b.stop_bits),
                );
                BusLink::Serial {
                    port,
                    rs485: b.rs485,
                }
            }
            "rtu_over_tcp" => {
                not_for(
                    c,
                    &[
                        ("path", b.path.is_some()),
                        ("baud", b.baud.is_some()),
                        ("data_bits", b.data_bits.is_some()),
                        ("parity", b.parity.is_some()),
                        ("stop_bits", b.stop_bits.is_some()),
                        ("rs485", b.rs485),
                    ],
                    "rtu_over_tcp (the device server sets the line)",
                );
                let host = b.host.clone().unwrap_or_default();
                if host.trim().is_empty() {
                    c.push(
                        bp.key("host"),
                        "missing: an rtu_over_tcp bus needs host = \"<device server address>\"",
                    );
                }
                BusLink::RtuOverTcp {
                    host,
                    port: c.int(bp.key("port"), b.port.unwrap_or(502), 1, 65535),
                }
            }
            other => {
                c.push(
                    bp.key("kind"),
                    format!("unknown bus kind {other:?}; valid: serial, rtu_over_tcp"),
                );
                BusLink::RtuOverTcp {
                    host: String::new(),
                    port: 502,
                }
            }
        };
        let request_gap = c.duration(
            bp.key("request_gap"),
            &b.request_gap,
            Duration::ZERO,
            Duration::from_secs(10),
        );
        out.push(Bus {
            name: Arc::from(b.name.as_str()),
            link,
            request_gap,
        });
    }
    out
}

pub(super) fn device(
    c: &mut Check,
    p: KeyPath,
    d: &RawDevice,
    profiles: &Profiles,
    buses: &[Bus],
) -> Device {
    c.topic_level(p.key("name"), &d.name);
    let prof: Option<&RawProfile> = match d.profile.as_deref() {
        None => None,
        Some(name) => match profiles.get(name) {
            Some(Ok(raw)) => Some(raw),
            Some(Err(why)) => {
                c.push(p.key("profile"), why.clone());
                None
            }
            None => {
                c.push(
                    p.key("profile"),
                    format!(
                        "profile {name:?} was not loaded; built-in: {}",
                        builtin_names()
                    ),
                );
                None
            }
        },
    };
    let defaults = prof.map(|r| &r.defaults);
    c.not_used(
        &p,
        &[
            ("path", d.path.is_some()),
            ("baud", d.baud.is_some()),
            ("data_bits", d.data_bits.is_some()),
            ("parity", d.parity.is_some()),
            ("stop_bits", d.stop_bits.is_some()),
        ],
        "a serial line setting: put it on the [[buses]] entry the device names with bus = \"...\"",
    );
    let transport = match d.kind.as_str() {
        KIND_TCP => {
            if d.bus.is_some() {
                c.push(
                    p.key("bus"),
                    "a modbus_tcp device connects by itself (host, port); bus is for modbus_rtu",
                );
            }
            let host = d.host.clone().unwrap_or_default();
            if host.trim().is_empty() {
                c.push(
                    p.key("host"),
                    "missing: a modbus_tcp device needs host = \"<address>\"",
                );
            }
            Transport::Tcp {
                host,
                port: c.int(p.key("port"), d.port, 1, 65535),
            }
        }
        KIND_RTU => {
            if d.host.is_some() {
                c.push(
                    p.key("host"),
                    "a modbus_rtu device is reached through its bus; for a serial device server use a [[buses]] entry with kind = \"rtu_over_tcp\"",
                );
            }
            let bus = d.bus.clone().unwrap_or_default();
            if bus.is_empty() {
                c.push(
                    p.key("bus"),
                    "missing: a modbus_rtu device needs bus = \"<name of a [[buses]] entry>\"",
                );
            } else if !buses.iter().any(|b| *b.name == *bus) {
                let known: Vec<&str> = buses.iter().map(|b| &*b.name).collect();
                c.push(
                    p.key("bus"),
                    format!(
                        "no [[buses]] entry named {bus:?}; defined: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            Transport::Bus(Arc::from(bus.as_str()))
        }
        other => {
            c.push(
                p.key("kind"),
                format!(
                    "unknown device kind {other:?}; valid: modbus_tcp, modbus_rtu, serial_line"
                ),
            );
            Transport::Tcp {
                host: String::new(),
                port: 502,
            }
        }
    };
    let unit_id = match (&transport, d.unit_id.or(defaults.and_then(|x| x.unit_id))) {
        // On a serial line 0 is broadcast (nobody answers) and 248-255 are reserved.
        (Transport::Bus(_), u) => c.int(p.key("unit_id"), u.unwrap_or(1), 1, 247),
        // 0 and 255 are common "this device" ids behind Modbus TCP; 248-254 are reserved but some
        // gateways use them, so TCP accepts the whole byte.
        (_, u) => c.int(p.key("unit_id"), u.unwrap_or(1), 0, 255),
    };
    let interval = c.duration(
        p.key("interval"),
        &d.interval,
        Duration::from_millis(10),
        Duration::from_secs(86_400),
    );
    let timeout = c.duration(
        p.key("timeout"),
        d.timeout
            .as_deref()
            .or(defaults.and_then(|x| x.timeout.as_deref()))
            .unwrap_or(DEFAULT_TIMEOUT),
        Duration::from_millis(10),
        Duration::from_secs(600),
    );
    let backoff_max = c.duration(
        p.key("backoff_max"),
        &d.backoff_max,
        Duration::from_millis(10),
        Duration::from_secs(86_400),
    );
    let retries = c.int(p.key("retries"), d.retries.unwrap_or(1), 0, 5);
    let word_order = match &d.word_order {
        Some(s) => c.parsed(
            p.key("word_order"),
            s,
            "word order",
            WordOrder::NAMES,
            WordOrder::Abcd,
        ),
        // Already checked when the profile was loaded.
        None => defaults
            .and_then(|x| x.word_order.as_deref())
            .and_then(|s| s.parse().ok())
            .unwrap_or(WordOrder::Abcd),
    };
    let own_limits = RawProfileDefaults {
        max_gap: d.max_gap,
        max_registers: d.max_registers,
        max_bits: d.max_bits,
        one_request_per_point: d.one_request_per_point,
        ..RawProfileDefaults::default()
    };
    let limits = limits(c, &p, &own_limits, defaults);
    let force_multiple_write = d
        .force_multiple_write
        .or(defaults.and_then(|x| x.force_multiple_write))
        .unwrap_or(false);

    let payload = report::payload(c, &p, d.payload.as_deref());
    let device_report = report::policy(
        c,
        &p,
        report::Keys::of_device(d),
        &ReportPolicy::default(),
        true,
    );
    let mut own_names = HashSet::new();
    let mut own = Vec::new();
    for (i, pt) in d.points.iter().enumerate() {
        let pp = p.key("points").index(i);
        if !own_names.insert(pt.name.as_str()) {
            c.push(
                pp.key("name"),
                format!("duplicate point name {:?} in device {:?}", pt.name, d.name),
            );
        }
        own.push(point(c, pp, pt, word_order, &device_report));
    }
    let mut points = Vec::new();
    if let Some(prof) = prof {
        let known: HashSet<&str> = prof.points.iter().map(|x| x.name.as_str()).collect();
        for (i, s) in d.skip_points.iter().enumerate() {
            if !known.contains(s.as_str()) {
                c.push(
                    p.key("skip_points").index(i),
                    format!("profile {:?} has no point {s:?}", prof.profile.name),
                );
            }
        }
        // The profile was validated on its own when it was loaded: its issues are not the
        // device's, so they go to a scratch list.
        let mut scratch = Check { issues: Vec::new() };
        for pt in &prof.points {
            if own_names.contains(pt.name.as_str()) || d.skip_points.contains(&pt.name) {
                continue;
            }
            points.push(point(
                &mut scratch,
                KeyPath::root(),
                pt,
                word_order,
                &device_report,
            ));
        }
    } else if !d.skip_points.is_empty() {
        c.push(p.key("skip_points"), "only meaningful with a profile");
    }
    points.extend(own);
    if points.is_empty() {
        c.push(
            p.key("points"),
            "a device needs at least one [[devices.points]] (or a profile)",
        );
    }
    Device {
        name: Arc::from(d.name.as_str()),
        transport,
        unit_id,
        interval,
        timeout,
        backoff_max,
        retries,
        limits,
        force_multiple_write,
        profile: d.profile.clone(),
        manufacturer: prof.and_then(|r| r.profile.manufacturer.clone()),
        model: prof.and_then(|r| r.profile.model.clone()),
        points: points.into(),
        payload,
        report: device_report,
    }
}

fn point(
    c: &mut Check,
    p: KeyPath,
    pt: &RawPoint,
    device_order: WordOrder,
    device_report: &ReportPolicy,
) -> Point {
    c.point_common(&p, &pt.name, pt.scale, pt.offset);
    c.not_used(
        &p,
        &[
            ("field", pt.field.is_some()),
            ("column", pt.column.is_some()),
            ("byte_offset", pt.byte_offset.is_some()),
            ("byte_order", pt.byte_order.is_some()),
        ],
        "a serial_line key, not used by a Modbus point (byte order is part of word_order)",
    );
    let table = match &pt.table {
        Some(t) => c.parsed(p.key("table"), t, "table", Table::NAMES, Table::Holding),
        None => {
            c.push(
                p.key("table"),
                format!(
                    "missing: a Modbus point needs table = one of {}",
                    Table::NAMES
                ),
            );
            Table::Holding
        }
    };
    let data_type = c.parsed(
        p.key("type"),
        &pt.data_type,
        "data type",
        DataType::NAMES,
        DataType::U16,
    );
    if table.is_bits() && data_type != DataType::Bool {
        c.push(
            p.key("type"),
            format!("a point in the {table} table is a single bit; valid: type = \"bool\""),
        );
    }
    let bit = pt.bit.map(|b| {
        if table.is_bits() {
            c.push(
                p.key("bit"),
                format!("the {table} table is already bits; remove bit"),
            );
        } else if data_type != DataType::Bool {
            c.push(
                p.key("bit"),
                "one bit of a register is a bool; valid: type = \"bool\" with bit = 0..15",
            );
        }
        c.int::<u8>(p.key("bit"), b, 0, 15)
    });
    let length = match (data_type, pt.length) {
        (DataType::String, Some(n)) => c.int(p.key("length"), n, 1, MAX_STRING_REGISTERS),
        (DataType::String, None) => {
            c.push(
                p.key("length"),
                "missing: a string point needs length = <registers> (two characters each)",
            );
            1
        }
        (_, Some(_)) => {
            c.push(p.key("length"), "only a string point has a length");
            data_type.width()
        }
        (_, None) => data_type.width(),
    };
    let width = if data_type == DataType::String {
        length.max(1)
    } else {
        data_type.width()
    };
    let last = 65536 - i64::from(width);
    let address = match pt.address {
        Some(a) => c.int(p.key("address"), a, 0, last),
        None => {
            c.push(
                p.key("address"),
                "missing: a Modbus point needs address = <0-based register>",
            );
            0
        }
    };
    let word_order = match &pt.word_order {
        Some(s) => c.parsed(
            p.key("word_order"),
            s,
            "word order",
            WordOrder::NAMES,
            device_order,
        ),
        None => device_order,
    };
    let numeric = !matches!(data_type, DataType::Bool | DataType::String);
    for (k, v) in [("min", pt.min), ("max", pt.max)] {
        match v {
            Some(_) if !numeric => {
                c.push(p.key(k), format!("a {} point has no range", pt.data_type))
            }
            Some(x) if !x.is_finite() => c.push(p.key(k), "must be a finite number"),
            Some(_) if !pt.writable => c.push(
                p.key(k),
                "a range applies to writes; add writable = true or remove it",
            ),
            Some(x) => {
                if let Some((lo, hi)) = engineering_range(data_type, pt.scale, pt.offset) {
                    if x < lo || x > hi {
                        c.push(
                            p.key(k),
                            format!(
                                "{k} {x} is outside what a {} point can hold: {lo} to {hi}{}",
                                pt.data_type,
                                if pt.scale == 1.0 && pt.offset == 0.0 {
                                    ""
                                } else {
                                    " after scale and offset"
                                }
                            ),
                        );
                    }
                }
            }
            None => {}
        }
    }
    if let (Some(lo), Some(hi)) = (pt.min, pt.max) {
        if lo > hi {
            c.push(p.key("min"), format!("min {lo} is above max {hi}"));
        }
    }
    // FC 16 carries at most 123 registers (Modbus application protocol §6.12).
    if pt.writable && data_type == DataType::String && width > 123 {
        c.push(
            p.key("length"),
            format!("a writable string is written in one FC 16 request of at most 123 registers; {width} is too long"),
        );
    }
    if pt.writable && matches!(table, Table::Input | Table::Discrete) {
        c.push(
            p.key("writable"),
            format!("the {table} table is read-only in Modbus; only holding and coil points can be written"),
        );
    }
    Point {
        name: Arc::from(pt.name.as_str()),
        table,
        address,
        data_type,
        unit: pt.unit.as_deref().map(Arc::from),
        scale: pt.scale,
        offset: pt.offset,
        decimals: c.decimals(&p, pt.decimals, numeric),
        word_order,
        bit,
        length: width,
        write: pt.writable.then_some(WriteLimits {
            min: pt.min,
            max: pt.max,
        }),
        report: report::policy(c, &p, report::Keys::of_point(pt), device_report, numeric),
        homeassistant: homeassistant::hints(
            c,
            &p,
            pt.homeassistant.as_ref(),
            homeassistant::PointKind {
                boolean: data_type == DataType::Bool,
                text: data_type == DataType::String,
                writable: pt.writable,
            },
        ),
    }
}

/// The engineering values a point of `ty` can take (`raw * scale + offset` over the raw range);
/// `None` when any finite value fits (f64).
fn engineering_range(ty: DataType, scale: f64, offset: f64) -> Option<(f64, f64)> {
    let (lo, hi) = match ty {
        DataType::F32 => (-f64::from(f32::MAX), f64::from(f32::MAX)),
        t => t.integer_range()?,
    };
    let (a, b) = (lo * scale + offset, hi * scale + offset);
    Some((a.min(b), a.max(b)))
}

/// Cross-device rules of RTU buses: a unit id answers once per bus, a serial port has one owner
/// (one `[[buses]]` entry, not also a serial_line device).
pub(super) fn check_buses(
    c: &mut Check,
    root: KeyPath,
    raw: &RawConfig,
    buses: &[Bus],
    devices: &[Device],
    serial_devices: &[SerialDevice],
) {
    let mut units: HashMap<(&str, u8), &str> = HashMap::new();
    let mut di = 0;
    for (i, rd) in raw.devices.iter().enumerate() {
        if rd.kind == super::serial::KIND {
            continue;
        }
        let Some(d) = devices.get(di) else { break };
        di += 1;
        if let Transport::Bus(bus) = &d.transport {
            if let Some(first) = units.insert((bus, d.unit_id), &d.name) {
                c.push(
                    root.key("devices").index(i).key("unit_id"),
                    format!(
                        "unit id {} is already used by device {first:?} on bus {bus:?}; every device on one RS-485 line needs its own id",
                        d.unit_id
                    ),
                );
            }
        }
    }
    for (i, b) in buses.iter().enumerate() {
        if let BusLink::RtuOverTcp { host, port } = &b.link {
            if let Some(other) = buses[..i].iter().find(
                |o| matches!(&o.link, BusLink::RtuOverTcp { host: h, port: p } if h == host && p == port),
            ) {
                c.push(
                    root.key("buses").index(i).key("host"),
                    format!(
                        "{host}:{port} is already bus {:?}; one device server port is one line: put all its devices on that bus",
                        other.name
                    ),
                );
            }
        }
        let BusLink::Serial { port, .. } = &b.link else {
            continue;
        };
        let p = root.key("buses").index(i).key("path");
        if let Some(other) = buses[..i]
            .iter()
            .find(|o| matches!(&o.link, BusLink::Serial { port: q, .. } if q.path == port.path))
        {
            c.push(
                p.clone(),
                format!(
                    "{:?} is already bus {:?}; one port is one bus: put all its devices on that bus (conflicting line settings cannot both apply)",
                    port.path, other.name
                ),
            );
        }
        if let Some(s) = serial_devices.iter().find(|s| s.port.path == port.path) {
            c.push(
                p,
                format!(
                    "{:?} is also the port of serial_line device {:?}; a port has one owner",
                    port.path, s.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_range_is_refused_where_the_point_type_cannot_hold_it() {
        // (type, scale, offset, min, max, keys refused)
        type Case = (&'static str, f64, f64, f64, f64, &'static [&'static str]);
        let cases: &[Case] = &[
            ("u16", 1.0, 0.0, 0.0, 65535.0, &[]),
            ("u16", 1.0, 0.0, -5.0, 70000.0, &["min", "max"]),
            ("u16", 1.0, 0.0, -5.0, 100.0, &["min"]),
            ("u16", 0.1, 0.0, 0.0, 6553.5, &[]),
            ("u16", 0.1, 0.0, 0.0, 6553.6, &["max"]),
            ("u16", 1.0, -40.0, -40.0, 65495.0, &[]),
            ("u16", -1.0, 0.0, -65535.0, 0.0, &[]),
            ("u16", -1.0, 0.0, -65535.0, 1.0, &["max"]),
            ("i16", 1.0, 0.0, -32768.0, 32767.0, &[]),
            ("i16", 1.0, 0.0, -32769.0, 32768.0, &["min", "max"]),
            ("u32", 1.0, 0.0, 0.0, 4294967295.0, &[]),
            ("u32", 1.0, 0.0, -1.0, 4294967296.0, &["min", "max"]),
            ("f32", 1.0, 0.0, -1e38, 1e38, &[]),
            ("f32", 1.0, 0.0, -1e39, 1e39, &["min", "max"]),
            ("f64", 1.0, 0.0, -1e300, 1e300, &[]),
        ];
        for (ty, scale, offset, min, max, refused) in cases {
            let text = format!(
                "name = \"p\"\ntable = \"holding\"\naddress = 0\ntype = \"{ty}\"\nwritable = true\nscale = {scale:?}\noffset = {offset:?}\nmin = {min:?}\nmax = {max:?}\n"
            );
            let pt: RawPoint = toml::from_str(&text).unwrap();
            let mut c = Check::default();
            point(
                &mut c,
                KeyPath::root(),
                &pt,
                WordOrder::Abcd,
                &ReportPolicy::default(),
            );
            let keys: Vec<String> = c.issues.iter().map(|i| i.path.to_string()).collect();
            assert_eq!(
                keys, *refused,
                "{ty} scale {scale} offset {offset}: {:?}",
                c.issues
            );
        }
    }
}
