//! Serial input: a framing spec (a built-in sensor's, or a line or binary one written as config
//! and validated like a user's) → `Framer` fed the rest of the input in pieces → each frame to
//! the sensor decoder or the configured parser.
//! Invariants: the frames found do not depend on how the bytes were split across reads; every
//! frame fits its spec (line: no delimiter, within max_length; binary: start and end bytes,
//! its length, a valid checksum); a checksummed frame of a built-in binary sensor decodes.

use std::cell::RefCell;
use std::collections::HashMap;

use fieldbridge::config::parse_str;
use fieldbridge::config::serial::Protocol;
use fieldbridge::config::spec::serial::{FrameLength, FramingSpec, Sensor};
use fieldbridge::device::serial::framing::{FrameEvent, Framer};
use fieldbridge::device::serial::parse::parse_frame;

thread_local! {
    static CACHE: RefCell<HashMap<[u8; 4], Option<Protocol>>> = RefCell::new(HashMap::new());
}

const PORT: &str = "[gateway]\nid = \"gw\"\n\n[[devices]]\nname = \"s\"\nkind = \"serial_line\"\npath = \"/dev/ttyS0\"\n";

pub fn run(data: &[u8]) {
    let [sel, a, b, c, chunk, rest @ ..] = data else {
        return;
    };
    // Building the spec goes through the whole config validation; 4 bytes decide it, so it is
    // built once per combination.
    let key = [*sel, *a, *b, *c];
    let known = CACHE.with(|m| m.borrow().get(&key).cloned());
    let protocol = known.unwrap_or_else(|| {
        let p = protocol(*sel, *a, *b, *c);
        CACHE.with(|m| m.borrow_mut().insert(key, p.clone()));
        p
    });
    let Some(protocol) = protocol else {
        return;
    };
    let spec = protocol.framing();
    let whole = frames(&spec, rest, rest.len().max(1));
    let pieces = frames(&spec, rest, usize::from(*chunk % 16) + 1);
    assert_eq!(whole, pieces, "frames depend on how the input was split");
    for f in &whole {
        fits(&spec, f);
        match &protocol {
            Protocol::Sensor(s) => {
                let r = s.decode(f);
                if *s != Sensor::Nmea {
                    assert!(
                        r.is_ok(),
                        "{s} frame {f:02x?} passed framing but not decoding: {r:?}"
                    );
                }
            }
            Protocol::Custom { parse, points, .. } => {
                if let Ok(values) = parse_frame(parse, f, points) {
                    assert!(!values.is_empty());
                    assert!(values.iter().all(|(i, _)| *i < points.len()));
                }
            }
        }
    }
}

fn frames(spec: &FramingSpec, input: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let mut framer = Framer::new(spec.clone());
    let mut events = Vec::new();
    for piece in input.chunks(chunk) {
        framer.push(piece, &mut events);
    }
    events
        .into_iter()
        .filter_map(|e| match e {
            FrameEvent::Frame(f) => Some(f),
            _ => None,
        })
        .collect()
}

fn fits(spec: &FramingSpec, f: &[u8]) {
    match spec {
        FramingSpec::Line {
            delimiter,
            max_length,
        } => {
            assert!(!f.is_empty() && f.len() <= *max_length, "{f:02x?}");
            assert!(!f
                .windows(delimiter.len())
                .any(|w| w == delimiter.as_slice()));
        }
        FramingSpec::Binary(b) => {
            assert!(f.starts_with(&b.start) && f.ends_with(&b.end), "{f:02x?}");
            match b.length {
                FrameLength::Fixed(n) => assert_eq!(f.len(), n),
                FrameLength::Field { at, add } => {
                    assert_eq!(f.len() as i64, i64::from(f[at]) + add, "{f:02x?}")
                }
            }
            assert!(f.len() <= b.max_length());
            if let Some(c) = &b.checksum {
                assert!(
                    c.verify(f),
                    "a frame with a bad checksum was accepted: {f:02x?}"
                );
            }
        }
    }
}

/// The device under test, from four input bytes, through the config validation (so only specs
/// a user could configure are fuzzed).
fn protocol(sel: u8, a: u8, b: u8, c: u8) -> Option<Protocol> {
    let body = match sel % 8 {
        0 => "driver = \"sds011\"\n".to_string(),
        1 => "driver = \"mhz19b\"\n".to_string(),
        2 => "driver = \"nmea\"\n".to_string(),
        3 | 4 => {
            let (format, extra, points) = match a % 3 {
                0 => (
                    "kv",
                    "separators = \" ,;\"\nassign = \"=\"\n",
                    "field = \"t\"",
                ),
                1 => ("csv", "separator = \",\"\n", "column = 1"),
                _ => ("json", "", "field = \"env.t\""),
            };
            let delimiter = if sel % 8 == 3 { "\\n" } else { "\\r\\n" };
            format!(
                "[devices.framing]\ntype = \"line\"\ndelimiter = \"{delimiter}\"\nmax_length = {}\n[devices.parse]\nformat = \"{format}\"\n{extra}[[devices.points]]\nname = \"t\"\n{points}\ntype = \"f64\"\n",
                u16::from(b) + 1
            )
        }
        _ => {
            let start = if a & 1 == 0 {
                format!("{b:02X}")
            } else {
                format!("{b:02X} {c:02X}")
            };
            let end = if a & 2 != 0 { "end = \"AB\"\n" } else { "" };
            let length = if a & 4 == 0 {
                format!("length = {}\n", c % 24 + 4)
            } else {
                format!(
                    "length_at = {}\nlength_add = {}\n",
                    (c % 3) + 2,
                    i64::from(c % 7) - 2
                )
            };
            let checksum = ["sum8", "sum8_neg", "xor8", "none"][usize::from((a >> 3) % 4)];
            format!(
                "[devices.framing]\ntype = \"binary\"\nstart = \"{start}\"\n{end}{length}checksum = \"{checksum}\"\n[devices.parse]\nformat = \"binary\"\n[[devices.points]]\nname = \"t\"\nbyte_offset = {}\ntype = \"{}\"\n",
                (a >> 5) % 4,
                ["u8", "i16", "u16", "f32"][usize::from(c % 4)]
            )
        }
    };
    let cfg = parse_str(&format!("{PORT}{body}")).ok()?;
    Some(cfg.serial_devices.into_iter().next()?.protocol)
}
