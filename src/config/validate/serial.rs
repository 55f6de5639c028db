//! Validation of `kind = "serial_line"` devices: port settings, driver or framing + parse +
//! points, stream or polled mode. Pure, like the rest of `validate`: every problem is pushed
//! with its key path and a hint of what would be valid, and validation goes on so one run
//! reports them all.

use crate::config::spec::serial::{
    BinarySpec, Checksum, ChecksumSpec, FieldPoint, FieldType, FrameLength, FramingSpec, Parity,
    ParseSpec, PortSettings, Sensor, Source,
};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::super::locate::KeyPath;
use super::super::raw::{RawDevice, RawFraming, RawParse, RawPoint};
use super::super::serial::{Mode, Protocol, SerialDevice};
use super::check::Check;
use super::report;
use crate::config::spec::report::ReportPolicy;

pub const KIND: &str = "serial_line";

const DEFAULT_STREAM_TIMEOUT: &str = "5s";
const DEFAULT_POLLED_TIMEOUT: &str = "1s";
const DEFAULT_MAX_LINE: i64 = 256;
const MAX_FRAME: i64 = 4096;

pub(super) fn device(c: &mut Check, p: KeyPath, d: &RawDevice) -> SerialDevice {
    c.topic_level(p.key("name"), &d.name);
    if d.host.is_some() {
        c.push(
            p.key("host"),
            "not used by a serial_line device; set path = \"/dev/...\"",
        );
    }
    c.not_used(
        &p,
        &[
            ("bus", d.bus.is_some()),
            ("profile", d.profile.is_some()),
            ("unit_id", d.unit_id.is_some()),
            ("word_order", d.word_order.is_some()),
            ("max_gap", d.max_gap.is_some()),
            ("max_registers", d.max_registers.is_some()),
            ("max_bits", d.max_bits.is_some()),
            ("one_request_per_point", d.one_request_per_point.is_some()),
            ("force_multiple_write", d.force_multiple_write.is_some()),
            ("retries", d.retries.is_some()),
            ("skip_points", !d.skip_points.is_empty()),
        ],
        "a Modbus key, not used by a serial_line device",
    );
    let path = d.path.clone().unwrap_or_default();
    if path.trim().is_empty() {
        c.push(
            p.key("path"),
            "missing: a serial_line device needs path = \"/dev/ttyUSB0\" (or a /dev/serial/by-id/ name)",
        );
    }
    let port = line_settings(
        c,
        &p,
        path,
        (d.baud, d.data_bits, d.parity.as_deref(), d.stop_bits),
    );

    let payload = report::payload(c, &p, d.payload.as_deref());
    let device_report = report::policy(
        c,
        &p,
        report::Keys::of_device(d),
        &ReportPolicy::default(),
        true,
    );
    let sensor = d
        .driver
        .as_deref()
        .map(|s| c.parsed(p.key("driver"), s, "driver", Sensor::NAMES, Sensor::Sds011));
    let request = request_bytes(c, &p, d);
    let protocol = match sensor {
        Some(s) => {
            let fixed = "comes from the driver; remove it (or remove `driver` to describe the protocol yourself)";
            if d.framing.is_some() {
                c.push(p.key("framing"), format!("[devices.framing] {fixed}"));
            }
            if d.parse.is_some() {
                c.push(p.key("parse"), format!("[devices.parse] {fixed}"));
            }
            if !d.points.is_empty() {
                let names: Vec<&str> = s.points().iter().map(|(n, _)| *n).collect();
                c.push(
                    p.key("points"),
                    format!(
                        "the {s} driver defines its points ({}); remove the [[devices.points]] tables",
                        names.join(", ")
                    ),
                );
            }
            if request.is_some() {
                c.push(p.key("request"), format!("the request {fixed}"));
            }
            Protocol::Sensor(s)
        }
        None => custom(c, &p, d, &device_report),
    };

    let request = match &protocol {
        Protocol::Sensor(s) => s.request(),
        Protocol::Custom { .. } => request,
    };
    let polled = match d.mode.as_deref() {
        None => request.is_some(),
        Some("polled") => true,
        Some("stream") => false,
        Some(other) => {
            c.push(
                p.key("mode"),
                format!("unknown mode {other:?}; valid: stream, polled"),
            );
            request.is_some()
        }
    };
    let interval = c.duration(
        p.key("interval"),
        &d.interval,
        Duration::from_millis(10),
        Duration::from_secs(86_400),
    );
    if let Protocol::Sensor(s) = &protocol {
        let (wants_polled, how) = match s.request() {
            Some(_) => (true, "is polled"),
            None => (false, "streams by itself"),
        };
        if d.mode.is_some() && polled != wants_polled {
            c.push(
                p.key("mode"),
                format!(
                    "the {s} driver {how}; remove mode (or set mode = \"{}\")",
                    if wants_polled { "polled" } else { "stream" }
                ),
            );
        }
    }
    let polled = match &protocol {
        Protocol::Sensor(s) => s.request().is_some(),
        Protocol::Custom { .. } => polled,
    };
    let mode = match (polled, request) {
        (true, Some(request)) => Mode::Polled { request, interval },
        (true, None) => {
            c.push(
                p.key("mode"),
                "polled mode needs request = \"...\" (text) or request_hex = \"...\" (bytes)",
            );
            Mode::Stream
        }
        (false, Some(_)) => {
            let key = if d.request_hex.is_some() {
                "request_hex"
            } else {
                "request"
            };
            c.push(
                p.key(key),
                "a request is only sent in polled mode; remove it or set mode = \"polled\"",
            );
            Mode::Stream
        }
        (false, None) => Mode::Stream,
    };
    let default_timeout = match mode {
        Mode::Stream => DEFAULT_STREAM_TIMEOUT,
        Mode::Polled { .. } => DEFAULT_POLLED_TIMEOUT,
    };
    let timeout = c.duration(
        p.key("timeout"),
        d.timeout.as_deref().unwrap_or(default_timeout),
        Duration::from_millis(10),
        Duration::from_secs(600),
    );
    let backoff_max = c.duration(
        p.key("backoff_max"),
        &d.backoff_max,
        Duration::from_millis(10),
        Duration::from_secs(86_400),
    );
    SerialDevice {
        name: Arc::from(d.name.as_str()),
        port,
        protocol,
        mode,
        timeout,
        backoff_max,
        payload,
        report: device_report,
    }
}

/// Baud, data bits, parity, stop bits (as written, each optional) → checked line settings with
/// the common 9600 8N1 defaults. Shared with the Modbus RTU `[[buses]]`.
pub(super) fn line_settings(
    c: &mut Check,
    p: &KeyPath,
    path: String,
    (baud, data_bits, parity, stop_bits): (Option<i64>, Option<i64>, Option<&str>, Option<i64>),
) -> PortSettings {
    PortSettings {
        path,
        baud: c.int(p.key("baud"), baud.unwrap_or(9600), 50, 4_000_000),
        data_bits: c.int(p.key("data_bits"), data_bits.unwrap_or(8), 5, 8),
        parity: c.parsed(
            p.key("parity"),
            parity.unwrap_or("none"),
            "parity",
            Parity::NAMES,
            Parity::None,
        ),
        stop_bits: match stop_bits.unwrap_or(1) {
            1 => 1,
            2 => 2,
            other => {
                c.push(
                    p.key("stop_bits"),
                    format!("{other} is not valid; valid: 1, 2"),
                );
                1
            }
        },
    }
}

fn request_bytes(c: &mut Check, p: &KeyPath, d: &RawDevice) -> Option<Vec<u8>> {
    match (&d.request, &d.request_hex) {
        (Some(_), Some(_)) => {
            c.push(
                p.key("request_hex"),
                "set either request or request_hex, not both",
            );
            None
        }
        (Some(s), None) if s.is_empty() => {
            c.push(p.key("request"), "must not be empty");
            None
        }
        (Some(s), None) => Some(s.as_bytes().to_vec()),
        (None, Some(h)) => hex(c, p.key("request_hex"), h),
        (None, None) => None,
    }
}

/// Hex bytes written like "FF 01 86" or "ff0186"; `None` (with an issue) when invalid or empty.
fn hex(c: &mut Check, path: KeyPath, s: &str) -> Option<Vec<u8>> {
    let digits: String = s.chars().filter(|ch| !ch.is_whitespace()).collect();
    let bytes: Option<Vec<u8>> = if digits.is_empty() || !digits.len().is_multiple_of(2) {
        None
    } else {
        (0..digits.len())
            .step_by(2)
            .map(|i| {
                digits
                    .get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect()
    };
    if bytes.is_none() {
        c.push(
            path,
            format!("{s:?} is not a sequence of hex bytes; write e.g. \"FF 01 86\""),
        );
    }
    bytes
}

fn custom(c: &mut Check, p: &KeyPath, d: &RawDevice, device_report: &ReportPolicy) -> Protocol {
    let framing = match &d.framing {
        Some(f) => framing(c, p.key("framing"), f),
        None => {
            c.push(
                p.key("framing"),
                format!(
                    "missing: set driver = one of {} or describe the protocol with [devices.framing] and [devices.parse]",
                    Sensor::NAMES
                ),
            );
            None
        }
    };
    let parse = match &d.parse {
        Some(pr) => parse(c, p.key("parse"), pr),
        None => {
            c.push(
                p.key("parse"),
                format!(
                    "missing: [devices.parse] with format = one of {}",
                    ParseSpec::NAMES
                ),
            );
            None
        }
    };
    let is_binary_framing = matches!(framing, Some(FramingSpec::Binary(_)));
    if let Some(pr) = &parse {
        let binary_parse = matches!(pr, ParseSpec::Binary);
        if framing.is_some() && binary_parse != is_binary_framing {
            c.push(
                p.key("parse").key("format"),
                if binary_parse {
                    "format = \"binary\" needs [devices.framing] type = \"binary\""
                } else {
                    "text formats (regex, kv, json, csv) need [devices.framing] type = \"line\"; use format = \"binary\" for binary frames"
                },
            );
        }
    }
    if d.points.is_empty() {
        c.push(
            p.key("points"),
            "a device needs at least one [[devices.points]]",
        );
    }
    let max_frame = match &framing {
        Some(FramingSpec::Binary(b)) => Some(b.max_length()),
        _ => None,
    };
    let mut names = HashSet::new();
    let mut points = Vec::new();
    for (i, pt) in d.points.iter().enumerate() {
        let pp = p.key("points").index(i);
        if !names.insert(pt.name.as_str()) {
            c.push(
                pp.key("name"),
                format!("duplicate point name {:?} in device {:?}", pt.name, d.name),
            );
        }
        points.push(point(c, pp, pt, parse.as_ref(), max_frame, device_report));
    }
    Protocol::Custom {
        framing: framing.unwrap_or(FramingSpec::Line {
            delimiter: b"\n".to_vec(),
            max_length: 256,
        }),
        parse: parse.unwrap_or(ParseSpec::Json),
        points,
    }
}

fn framing(c: &mut Check, p: KeyPath, f: &RawFraming) -> Option<FramingSpec> {
    let line_keys: [(&str, bool); 2] = [
        ("delimiter", f.delimiter.is_some()),
        ("max_length", f.max_length.is_some()),
    ];
    let binary_keys: [(&str, bool); 9] = [
        ("start", f.start.is_some()),
        ("length", f.length.is_some()),
        ("length_at", f.length_at.is_some()),
        ("length_add", f.length_add.is_some()),
        ("end", f.end.is_some()),
        ("checksum", f.checksum.is_some()),
        ("checksum_from", f.checksum_from.is_some()),
        ("checksum_to", f.checksum_to.is_some()),
        ("checksum_at", f.checksum_at.is_some()),
    ];
    let mut not_for = |keys: &[(&str, bool)], kind: &str| {
        for (k, set) in keys {
            if *set {
                c.push(p.key(k), format!("not used by type = \"{kind}\" framing"));
            }
        }
    };
    match f.kind.as_str() {
        "line" => {
            not_for(&binary_keys, "line");
            let delimiter = f.delimiter.clone().unwrap_or_else(|| "\n".into());
            if delimiter.is_empty() || delimiter.len() > 8 {
                c.push(
                    p.key("delimiter"),
                    "must be 1 to 8 bytes, e.g. \"\\n\" or \"\\r\\n\"",
                );
            }
            let max_length = c.int(
                p.key("max_length"),
                f.max_length.unwrap_or(DEFAULT_MAX_LINE),
                1,
                65_536,
            );
            Some(FramingSpec::Line {
                delimiter: delimiter.into_bytes(),
                max_length,
            })
        }
        "binary" => {
            not_for(&line_keys, "binary");
            let start = match &f.start {
                Some(s) => hex(c, p.key("start"), s).unwrap_or_default(),
                None => {
                    c.push(
                        p.key("start"),
                        "missing: binary frames need start = \"<hex bytes>\", e.g. \"AA C0\"",
                    );
                    Vec::new()
                }
            };
            if start.len() > 8 {
                c.push(p.key("start"), "at most 8 bytes");
            }
            let end = match &f.end {
                Some(s) => hex(c, p.key("end"), s).unwrap_or_default(),
                None => Vec::new(),
            };
            let min = (start.len() + end.len()).max(1) as i64;
            let length = match (f.length, f.length_at) {
                (Some(n), None) => FrameLength::Fixed(c.int(p.key("length"), n, min, MAX_FRAME)),
                (None, Some(at)) => FrameLength::Field {
                    at: c.int(p.key("length_at"), at, 0, MAX_FRAME - 1),
                    add: c.int(
                        p.key("length_add"),
                        f.length_add.unwrap_or(0),
                        -255,
                        MAX_FRAME,
                    ),
                },
                (Some(_), Some(_)) => {
                    c.push(
                        p.key("length_at"),
                        "set either length (fixed) or length_at (a length byte), not both",
                    );
                    FrameLength::Fixed(1)
                }
                (None, None) => {
                    c.push(p.key("length"), "missing: set length = <total bytes> or length_at = <offset of a length byte>");
                    FrameLength::Fixed(1)
                }
            };
            if f.length_add.is_some() && f.length_at.is_none() {
                c.push(p.key("length_add"), "only used with length_at");
            }
            let checksum = match f.checksum.as_deref().unwrap_or("none") {
                "none" => {
                    for (k, set) in &binary_keys[6..] {
                        if *set {
                            c.push(p.key(k), "only used with a checksum");
                        }
                    }
                    None
                }
                name => {
                    let kind = c.parsed(
                        p.key("checksum"),
                        name,
                        "checksum",
                        Checksum::NAMES,
                        Checksum::Sum8,
                    );
                    // Default: over the bytes after the start bytes, stored just before the end bytes.
                    let before_end = -1 - end.len() as i64;
                    let spec = ChecksumSpec {
                        kind,
                        from: c.int(
                            p.key("checksum_from"),
                            f.checksum_from.unwrap_or(start.len() as i64),
                            -MAX_FRAME,
                            MAX_FRAME,
                        ),
                        to: c.int(
                            p.key("checksum_to"),
                            f.checksum_to.unwrap_or(before_end),
                            -MAX_FRAME,
                            MAX_FRAME,
                        ),
                        at: c.int(
                            p.key("checksum_at"),
                            f.checksum_at.unwrap_or(before_end),
                            -MAX_FRAME,
                            MAX_FRAME - 1,
                        ),
                    };
                    if let FrameLength::Fixed(n) = length {
                        // With a fixed length the offsets can be checked now instead of failing
                        // every frame at run time.
                        let fits = |o: i64, exclusive: bool| {
                            let n = n as i64;
                            let r = if o < 0 { n + o } else { o };
                            r >= 0 && if exclusive { r <= n } else { r < n }
                        };
                        if !fits(spec.from, true) || !fits(spec.to, true) || !fits(spec.at, false) {
                            c.push(
                                p.key("checksum_at"),
                                format!("checksum offsets do not fit a {n}-byte frame"),
                            );
                        }
                    }
                    Some(spec)
                }
            };
            Some(FramingSpec::Binary(BinarySpec {
                start,
                length,
                end,
                checksum,
            }))
        }
        other => {
            c.push(
                p.key("type"),
                format!("unknown framing {other:?}; valid: line, binary"),
            );
            None
        }
    }
}

fn parse(c: &mut Check, p: KeyPath, r: &RawParse) -> Option<ParseSpec> {
    let mut unused = |key: &str, set: bool, format: &str| {
        if set {
            c.push(p.key(key), format!("not used by format = \"{format}\""));
        }
    };
    let f = r.format.as_str();
    if f != "regex" {
        unused("regex", r.regex.is_some(), f);
    }
    if f != "kv" {
        unused("separators", r.separators.is_some(), f);
        unused("assign", r.assign.is_some(), f);
    }
    if f != "csv" {
        unused("separator", r.separator.is_some(), f);
    }
    match f {
        "regex" => {
            match &r.regex {
                Some(re) => match Regex::new(re) {
                    Ok(re) if re.capture_names().flatten().next().is_some() => {
                        Some(ParseSpec::Regex(re))
                    }
                    Ok(_) => {
                        c.push(p.key("regex"), "has no named capture group; name each value like (?P<temperature>[0-9.]+)");
                        None
                    }
                    Err(e) => {
                        c.push(p.key("regex"), format!("is not a valid regex: {e}"));
                        None
                    }
                },
                None => {
                    c.push(
                        p.key("regex"),
                        "missing: format = \"regex\" needs regex = '...' with named captures",
                    );
                    None
                }
            }
        }
        "kv" => {
            let assign = r.assign.clone().unwrap_or_else(|| "=".into());
            if assign.is_empty() {
                c.push(p.key("assign"), "must not be empty");
            }
            Some(ParseSpec::KeyValue {
                separators: r.separators.clone().unwrap_or_default(),
                assign,
            })
        }
        "json" => Some(ParseSpec::Json),
        "csv" => {
            let separator = r.separator.clone().unwrap_or_else(|| ",".into());
            if separator.is_empty() {
                c.push(p.key("separator"), "must not be empty");
            }
            Some(ParseSpec::Csv { separator })
        }
        "binary" => Some(ParseSpec::Binary),
        other => {
            c.push(
                p.key("format"),
                format!("unknown format {other:?}; valid: {}", ParseSpec::NAMES),
            );
            None
        }
    }
}

fn point(
    c: &mut Check,
    p: KeyPath,
    pt: &RawPoint,
    parse: Option<&ParseSpec>,
    max_frame: Option<usize>,
    device_report: &ReportPolicy,
) -> FieldPoint {
    c.point_common(&p, &pt.name, pt.scale, pt.offset);
    c.not_used(
        &p,
        &[
            ("table", pt.table.is_some()),
            ("address", pt.address.is_some()),
            ("word_order", pt.word_order.is_some()),
            ("bit", pt.bit.is_some()),
            ("length", pt.length.is_some()),
            ("writable", pt.writable),
            ("min", pt.min.is_some()),
            ("max", pt.max.is_some()),
        ],
        "a Modbus key, not used by a serial_line point",
    );
    c.not_used(
        &p,
        &[("homeassistant", pt.homeassistant.is_some())],
        "a serial_line point takes no Home Assistant hints (it is discovered by its unit); remove it",
    );
    let field_type = c.parsed(
        p.key("type"),
        &pt.data_type,
        "type",
        FieldType::NAMES,
        FieldType::F64,
    );
    let expect = |c: &mut Check, key: &str, wanted: &str, others: &[(&str, bool)]| {
        for (k, set) in others {
            if *set {
                c.push(
                    p.key(k),
                    format!("not used with this parse format; it uses {key}"),
                );
            }
        }
        c.push(p.key(key), format!("missing: {wanted}"));
    };
    let has = [
        ("field", pt.field.is_some()),
        ("column", pt.column.is_some()),
        ("byte_offset", pt.byte_offset.is_some()),
        ("byte_order", pt.byte_order.is_some()),
    ];
    let others = |keep: &[&str]| -> Vec<(&str, bool)> {
        has.iter()
            .copied()
            .filter(|(k, _)| !keep.contains(k))
            .collect()
    };
    let source = match parse {
        Some(ParseSpec::Csv { .. }) => match pt.column {
            Some(col) => {
                for (k, set) in others(&["column"]) {
                    if set {
                        c.push(p.key(k), "not used with format = \"csv\"; it uses column");
                    }
                }
                Source::Column(c.int(p.key("column"), col, 0, 1023))
            }
            None => {
                expect(
                    c,
                    "column",
                    "a csv point needs column = <0-based index>",
                    &others(&["column"]),
                );
                Source::Column(0)
            }
        },
        Some(ParseSpec::Binary) => {
            match pt.byte_offset {
                Some(off) => {
                    for (k, set) in others(&["byte_offset", "byte_order"]) {
                        if set {
                            c.push(
                                p.key(k),
                                "not used with format = \"binary\"; it uses byte_offset",
                            );
                        }
                    }
                    let offset: usize = c.int(p.key("byte_offset"), off, 0, MAX_FRAME - 1);
                    if let Some(max) = max_frame {
                        if offset + field_type.width() > max {
                            c.push(
                            p.key("byte_offset"),
                            format!("a {} at byte {offset} ends past the longest frame ({max} bytes)", field_type),
                        );
                        }
                    }
                    let little_endian = match pt.byte_order.as_deref().unwrap_or("big") {
                        "big" => false,
                        "little" => true,
                        other => {
                            c.push(
                                p.key("byte_order"),
                                format!("unknown byte order {other:?}; valid: big, little"),
                            );
                            false
                        }
                    };
                    Source::Bytes {
                        offset,
                        little_endian,
                    }
                }
                None => {
                    expect(
                        c,
                        "byte_offset",
                        "a binary point needs byte_offset = <offset in the frame>",
                        &others(&["byte_offset", "byte_order"]),
                    );
                    Source::Bytes {
                        offset: 0,
                        little_endian: false,
                    }
                }
            }
        }
        Some(spec) => match &pt.field {
            Some(f) => {
                for (k, set) in others(&["field"]) {
                    if set {
                        c.push(p.key(k), "not used with this parse format; it uses field");
                    }
                }
                if let ParseSpec::Regex(re) = spec {
                    if !re.capture_names().flatten().any(|n| n == f) {
                        let names: Vec<&str> = re.capture_names().flatten().collect();
                        c.push(
                            p.key("field"),
                            format!(
                                "{f:?} is not a named capture of the regex; valid: {}",
                                names.join(", ")
                            ),
                        );
                    }
                }
                if f.is_empty() {
                    c.push(p.key("field"), "must not be empty");
                }
                Source::Field(f.clone())
            }
            None => {
                expect(
                    c,
                    "field",
                    "this point needs field = \"<capture name, key or JSON path>\"",
                    &others(&["field"]),
                );
                Source::Field(String::new())
            }
        },
        // The parse table itself is broken (already reported); don't pile on.
        None => Source::Field(pt.field.clone().unwrap_or_default()),
    };
    FieldPoint {
        name: Arc::from(pt.name.as_str()),
        source,
        field_type,
        unit: pt.unit.as_deref().map(Arc::from),
        scale: pt.scale,
        offset: pt.offset,
        decimals: c.decimals(&p, pt.decimals, field_type != FieldType::Bool),
        report: report::policy(
            c,
            &p,
            report::Keys::of_point(pt),
            device_report,
            field_type != FieldType::Bool,
        ),
    }
}
