//! What went wrong on an RTU line, told from the raw bytes: pure, tested as tables.
//!
//! tokio-modbus cannot say it: on a bad CRC its decoder drops a byte and waits for more, so a
//! wiring fault looks like silence until the deadline. The bus keeps the bytes of each request
//! and of what came back (`bus::Line`), and this module names the fault: nothing came (no
//! answer), a frame shaped like the answer with a CRC that does not match (baud, parity,
//! termination), a valid frame from another unit id, or bytes that are no frame at all.

/// The kind of a failed RTU exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing came back.
    NoAnswer,
    /// A reply shaped like the answer (right length, our unit or function) with a wrong CRC.
    BadCrc,
    /// A valid frame (its CRC matches) from this unit id instead.
    WrongUnit(u8),
    /// Bytes that are not the answer: no frame, or a frame of the right unit that does not
    /// answer the request.
    Garbage,
}

impl Fault {
    /// The `event` field of its log line and the name of its counter.
    pub fn event(self) -> &'static str {
        match self {
            Fault::NoAnswer => "modbus_timeout",
            Fault::BadCrc => "modbus_bad_crc",
            Fault::WrongUnit(_) => "modbus_wrong_unit",
            Fault::Garbage => "modbus_garbage",
        }
    }
}

/// Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF), sent low byte first.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for b in bytes {
        crc ^= u16::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn crc_ok(frame: &[u8]) -> bool {
    match frame.len().checked_sub(2) {
        Some(n) if n >= 2 => frame[n..] == crc16(&frame[..n]).to_le_bytes(),
        _ => false,
    }
}

/// Length of the response frame that starts `bytes`, from its function code (and byte
/// count); `None` while too few bytes are there to tell, or for a function we never send.
fn response_len(bytes: &[u8]) -> Option<usize> {
    let fc = *bytes.get(1)?;
    match fc {
        f if f & 0x80 != 0 => Some(5),
        1..=4 | 23 => Some(5 + usize::from(*bytes.get(2)?)),
        5 | 6 | 15 | 16 => Some(8),
        _ => None,
    }
}

/// Length of the normal answer to `request` (unit, function, fields, CRC), if we can tell.
pub fn expected_len(request: &[u8]) -> Option<usize> {
    let fc = *request.get(1)?;
    let word = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *request.get(at)?,
            *request.get(at + 1)?,
        ])))
    };
    match fc {
        1 | 2 => Some(5 + word(4)?.div_ceil(8)),
        3 | 4 => Some(5 + 2 * word(4)?),
        5 | 6 | 15 | 16 => Some(8),
        23 => Some(5 + 2 * word(4)?),
        _ => None,
    }
}

/// Whether `reply` already is a whole frame shaped like the answer to `request` (or its
/// exception) whose CRC does not match: the line can give up on it at once instead of
/// waiting for more bytes until the timeout.
pub fn is_bad_crc(request: &[u8], reply: &[u8]) -> bool {
    let (Some(&unit), Some(&fc)) = (request.first(), request.get(1)) else {
        return false;
    };
    let exception = reply.get(1) == Some(&(fc | 0x80));
    let want = if exception {
        Some(5)
    } else {
        expected_len(request)
    };
    let Some(want) = want else {
        return false;
    };
    let Some(frame) = reply.get(..want) else {
        return false;
    };
    // One of unit and function may be the corrupted byte, not both: then it is garbage.
    let shaped = frame[0] == unit || frame[1] == fc || exception;
    shaped && !crc_ok(frame)
}

/// Names what came back for `request` after an exchange failed.
pub fn classify(request: &[u8], reply: &[u8]) -> Fault {
    if reply.is_empty() {
        return Fault::NoAnswer;
    }
    let unit = request.first().copied();
    // A valid frame of another unit anywhere in what came back.
    for start in 0..reply.len() {
        let rest = &reply[start..];
        if let Some(frame) = response_len(rest).and_then(|n| rest.get(..n)) {
            if crc_ok(frame) && Some(frame[0]) != unit {
                return Fault::WrongUnit(frame[0]);
            }
        }
    }
    if is_bad_crc(request, reply) {
        Fault::BadCrc
    } else {
        Fault::Garbage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_crc(mut f: Vec<u8>) -> Vec<u8> {
        let crc = crc16(&f);
        f.extend_from_slice(&crc.to_le_bytes());
        f
    }

    fn bad_crc(f: Vec<u8>) -> Vec<u8> {
        let mut f = with_crc(f);
        let n = f.len();
        f[n - 1] ^= 0xFF;
        f
    }

    #[test]
    fn the_crc_is_the_one_of_the_modbus_spec() {
        // Read holding registers of unit 1, address 0, count 1: 01 03 00 00 00 01 84 0A
        assert_eq!(
            with_crc(vec![1, 3, 0, 0, 0, 1]),
            vec![1, 3, 0, 0, 0, 1, 0x84, 0x0A]
        );
    }

    #[test]
    fn the_expected_answer_length_follows_the_function_and_quantity() {
        let cases: &[(Vec<u8>, Option<usize>)] = &[
            (with_crc(vec![1, 3, 0, 0, 0, 2]), Some(9)),
            (with_crc(vec![1, 4, 0, 0, 0, 10]), Some(25)),
            (with_crc(vec![1, 1, 0, 0, 0, 9]), Some(7)),
            (with_crc(vec![1, 2, 0, 0, 0, 8]), Some(6)),
            (with_crc(vec![1, 6, 0, 1, 0, 7]), Some(8)),
            (with_crc(vec![1, 16, 0, 1, 0, 2, 4, 0, 1, 0, 2]), Some(8)),
            (vec![1, 3, 0], None),
            (vec![1, 0x2B, 0, 0, 0, 1], None),
            (vec![], None),
        ];
        for (req, want) in cases {
            assert_eq!(expected_len(req), *want, "{req:02X?}");
        }
    }

    #[test]
    fn a_failed_exchange_is_named_from_what_came_back() {
        let req = with_crc(vec![3, 3, 0, 0, 0, 2]);
        let answer = vec![3, 3, 4, 0, 1, 0, 2];
        let cases: Vec<(&str, Vec<u8>, Fault)> = vec![
            ("nothing", vec![], Fault::NoAnswer),
            (
                "the answer with a bad CRC",
                bad_crc(answer.clone()),
                Fault::BadCrc,
            ),
            (
                "the answer with a corrupted unit byte and bad CRC",
                bad_crc(vec![0x83, 3, 4, 0, 1, 0, 2]),
                Fault::BadCrc,
            ),
            (
                "an exception with a bad CRC",
                bad_crc(vec![3, 0x83, 2]),
                Fault::BadCrc,
            ),
            (
                "a valid frame from unit 7",
                with_crc(vec![7, 3, 4, 0, 1, 0, 2]),
                Fault::WrongUnit(7),
            ),
            (
                "noise, then a valid frame from unit 7",
                [vec![0xFF, 0x00], with_crc(vec![7, 3, 4, 0, 1, 0, 2])].concat(),
                Fault::WrongUnit(7),
            ),
            ("a few stray bytes", vec![0xA5, 0xA5, 0xA5], Fault::Garbage),
            ("no frame at all", vec![0xA5; 9], Fault::Garbage),
            (
                "our unit, another function, valid CRC",
                with_crc(vec![3, 4, 4, 0, 1, 0, 2]),
                Fault::Garbage,
            ),
            ("the answer cut short", answer[..5].to_vec(), Fault::Garbage),
        ];
        for (what, reply, want) in cases {
            assert_eq!(classify(&req, &reply), want, "{what}: {reply:02X?}");
        }
    }

    #[test]
    fn a_bad_crc_is_known_as_soon_as_the_whole_answer_is_there() {
        let req = with_crc(vec![3, 3, 0, 0, 0, 2]);
        let bad = bad_crc(vec![3, 3, 4, 0, 1, 0, 2]);
        for n in 0..bad.len() {
            assert!(!is_bad_crc(&req, &bad[..n]), "only {n} bytes");
        }
        assert!(is_bad_crc(&req, &bad));
        assert!(!is_bad_crc(&req, &with_crc(vec![3, 3, 4, 0, 1, 0, 2])));
        assert!(!is_bad_crc(&[], &bad));
    }
}
