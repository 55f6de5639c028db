//! MQTT 3.1.1 framing and the few packets the guard inspects or writes itself: CONNECT,
//! CONNACK, PUBLISH (header only), SUBSCRIBE, SUBACK, PUBACK/PUBREC/PUBREL/PUBCOMP.
//!
//! Pure: bytes in, values out, never a panic on input (every length is checked before it is
//! used). Everything else (PINGREQ, UNSUBSCRIBE, the broker's packets) travels as opaque frames.
//! rumqttd's own codec is not reused: its parsers are tied to its router types and would accept
//! a packet before our size limit could refuse it; the few packets needed here are small.

use crate::config::spec::topic::topic_name_problem;

/// Packet types (the high nibble of the first byte).
pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// The longest client id the guard accepts. MQTT 3.1.1 obliges a server to take 1 to 23
/// characters and lets it refuse longer ones (§3.1.3.1); 128 bytes leaves room for generated
/// ids (a MAC and a hostname) without letting one client use up 64 KiB of every log line.
pub const MAX_CLIENT_ID: usize = 128;

/// CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
pub const RC_BAD_PROTOCOL: u8 = 1;
pub const RC_IDENTIFIER_REJECTED: u8 = 2;
pub const RC_SERVER_UNAVAILABLE: u8 = 3;
pub const RC_BAD_CREDENTIALS: u8 = 4;
pub const RC_NOT_AUTHORIZED: u8 = 5;

/// SUBACK return code for a refused filter.
pub const SUBACK_FAILURE: u8 = 0x80;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("remaining length is longer than 4 bytes")]
    BadLength,
    #[error("packet of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed {what} packet: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
}

fn malformed(what: &'static str, why: &'static str) -> CodecError {
    CodecError::Malformed { what, why }
}

/// One complete packet: the first byte and the body after the remaining length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub first: u8,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
    pub fn flags(&self) -> u8 {
        self.first & 0x0f
    }
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(self.first, &self.body)
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_frame_into(self.first, &self.body, out)
    }
}

/// Why a packet a client sent must not reach the broker, or `None`: a packet type only a server
/// sends or a reserved one (§4.8: a protocol violation closes the connection), fixed-header
/// flags other than the type requires (§2.2.2), or a body on a packet that has none
/// (PINGREQ, DISCONNECT). PUBLISH flags are checked by `parse_publish`.
pub fn client_frame_problem(f: &Frame) -> Option<&'static str> {
    match (f.kind(), f.flags()) {
        (CONNACK | SUBACK | UNSUBACK | PINGRESP, _) => Some("a packet type only a server sends"),
        (0 | 15, _) => Some("a reserved packet type"),
        (PUBLISH, _) => None,
        (PUBREL | SUBSCRIBE | UNSUBSCRIBE, 0x02) => None,
        (PUBREL | SUBSCRIBE | UNSUBSCRIBE, _) => Some("fixed header flags must be 0010"),
        (_, flags) if flags != 0 => Some("fixed header flags must be 0000"),
        (PINGREQ | DISCONNECT, _) if !f.body.is_empty() => {
            Some("PINGREQ and DISCONNECT have no body")
        }
        _ => None,
    }
}

/// Takes one complete frame off the front of `buf`, or `None` when more bytes are needed.
/// A declared length over `max_body` is an error as soon as the length is known, so an
/// oversized packet is refused before it is buffered.
pub fn take_frame(buf: &mut Vec<u8>, max_body: usize) -> Result<Option<Frame>, CodecError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len: usize = 0;
    let mut i = 1;
    loop {
        if i > 4 {
            return Err(CodecError::BadLength);
        }
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    if len > max_body {
        return Err(CodecError::TooLarge { len, max: max_body });
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    let body = buf[i..i + len].to_vec();
    buf.drain(..i + len);
    Ok(Some(Frame { first, body }))
}

pub fn encode_frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    encode_frame_into(first, body, &mut out);
    out
}

/// `encode_frame`, appended to `out` (several frames relayed in one write).
pub fn encode_frame_into(first: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(first);
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(malformed(self.what, "truncated"))?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = usize::from(self.u16()?);
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(malformed(self.what, "truncated"))?;
        self.pos += n;
        Ok(s)
    }
    fn string(&mut self) -> Result<String, CodecError> {
        let b = self.bytes()?;
        let s = std::str::from_utf8(b).map_err(|_| malformed(self.what, "string is not UTF-8"))?;
        if s.contains('\0') {
            return Err(malformed(self.what, "string contains U+0000"));
        }
        Ok(s.to_string())
    }
    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }
    fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Callers only pass strings that came out of a parsed packet (≤ 65535 bytes) or our own
    // short credentials; clamp anyway so an encoding can never lie about its length.
    let n = b.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&b[..n]);
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub message: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    /// 4 for MQTT 3.1.1; anything else is refused by the guard.
    pub level: u8,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

// Hand-written so a password never reaches a log line through `{:?}`.
impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("level", &self.level)
            .field("client_id", &self.client_id)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// What a CONNECT body says, as far as it can be read. A protocol name/level we do not speak
/// comes back as `Ok` with that level, so the caller can answer "unacceptable protocol".
pub fn parse_connect(body: &[u8]) -> Result<Connect, CodecError> {
    const W: &str = "CONNECT";
    let mut r = Reader::new(body, W);
    let name = r.bytes()?;
    let level = r.u8()?;
    // "MQIsdp" names MQTT 3.1 (level 3), which is refused politely below; with level 4 it is
    // neither protocol (§3.1.2.1).
    match (name, level) {
        (b"MQTT", _) | (b"MQIsdp", 3) => {}
        (b"MQIsdp", _) => return Err(malformed(W, "protocol name MQIsdp with level 4")),
        _ => return Err(malformed(W, "unknown protocol name")),
    }
    let empty = Connect {
        level,
        clean_session: true,
        keep_alive: 0,
        client_id: String::new(),
        will: None,
        username: None,
        password: None,
    };
    if level != 4 {
        return Ok(empty);
    }
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(malformed(W, "reserved flag set"));
    }
    let keep_alive = r.u16()?;
    let client_id = r.string()?;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(malformed(W, "will QoS or retain without a will"));
    }
    if will_qos > 2 {
        return Err(malformed(W, "will QoS 3"));
    }
    let will = if will_flag {
        // A Will becomes a PUBLISH the broker sends for the client; a topic no PUBLISH may carry
        // (a wildcard, empty) would be stored, forwarded and refused upstream for ever.
        let topic = r.string()?;
        if topic_name_problem(&topic).is_some() {
            return Err(malformed(
                W,
                "Last Will topic is empty or has a wildcard (not a valid topic name)",
            ));
        }
        Some(Will {
            topic,
            message: r.bytes()?.to_vec(),
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let has_user = flags & 0x80 != 0;
    let has_pass = flags & 0x40 != 0;
    if has_pass && !has_user {
        return Err(malformed(W, "password without a user name"));
    }
    let username = if has_user { Some(r.string()?) } else { None };
    let password = if has_pass {
        Some(r.bytes()?.to_vec())
    } else {
        None
    };
    if !r.at_end() {
        return Err(malformed(W, "trailing bytes"));
    }
    Ok(Connect {
        clean_session: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        ..empty
    })
}

pub fn encode_connect(c: &Connect) -> Vec<u8> {
    let mut body = Vec::new();
    put_bytes(&mut body, b"MQTT");
    body.push(4);
    let mut flags = 0u8;
    if c.clean_session {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos & 0x03) << 3;
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.username.is_some() && c.password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive.to_be_bytes());
    put_bytes(&mut body, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        put_bytes(&mut body, w.topic.as_bytes());
        put_bytes(&mut body, &w.message);
    }
    if let Some(u) = &c.username {
        put_bytes(&mut body, u.as_bytes());
        if let Some(p) = &c.password {
            put_bytes(&mut body, p);
        }
    }
    encode_frame(CONNECT << 4, &body)
}

pub fn connack(code: u8) -> Vec<u8> {
    encode_frame(CONNACK << 4, &[0, code])
}

/// PUBACK, PUBREC, PUBREL (flags 0b0010) or PUBCOMP for `pkid`.
pub fn ack(kind: u8, pkid: u16) -> Vec<u8> {
    let first = kind << 4 | if kind == PUBREL { 0x02 } else { 0 };
    encode_frame(first, &pkid.to_be_bytes())
}

/// The packet id of an ack-type body (PUBACK … PUBCOMP, UNSUBACK).
pub fn pkid_of(body: &[u8]) -> Option<u16> {
    Some(u16::from(*body.first()?) << 8 | u16::from(*body.get(1)?))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishHeader {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub pkid: Option<u16>,
    pub payload_len: usize,
}

pub fn parse_publish(flags: u8, body: &[u8]) -> Result<PublishHeader, CodecError> {
    const W: &str = "PUBLISH";
    let qos = (flags >> 1) & 0x03;
    if qos == 3 {
        return Err(malformed(W, "QoS 3"));
    }
    let mut r = Reader::new(body, W);
    let topic = r.string()?;
    if let Some(problem) = topic_name_problem(&topic) {
        return Err(malformed(W, problem));
    }
    let pkid = if qos > 0 { Some(r.u16()?) } else { None };
    if pkid == Some(0) {
        return Err(malformed(W, "packet id 0"));
    }
    Ok(PublishHeader {
        topic,
        qos,
        retain: flags & 0x01 != 0,
        pkid,
        payload_len: r.rest().len(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<(String, u8)>,
}

pub fn parse_subscribe(flags: u8, body: &[u8]) -> Result<Subscribe, CodecError> {
    const W: &str = "SUBSCRIBE";
    if flags != 0x02 {
        return Err(malformed(W, "fixed header flags must be 0010"));
    }
    let mut r = Reader::new(body, W);
    let pkid = r.u16()?;
    let mut filters = Vec::new();
    while !r.at_end() {
        let f = r.string()?;
        let qos = r.u8()?;
        if qos > 2 {
            return Err(malformed(W, "requested QoS over 2"));
        }
        filters.push((f, qos));
    }
    if filters.is_empty() {
        return Err(malformed(W, "no topic filter"));
    }
    Ok(Subscribe { pkid, filters })
}

pub fn encode_subscribe(s: &Subscribe) -> Vec<u8> {
    let mut body = s.pkid.to_be_bytes().to_vec();
    for (f, q) in &s.filters {
        put_bytes(&mut body, f.as_bytes());
        body.push(*q);
    }
    encode_frame(SUBSCRIBE << 4 | 0x02, &body)
}

pub fn parse_suback(body: &[u8]) -> Result<(u16, Vec<u8>), CodecError> {
    let mut r = Reader::new(body, "SUBACK");
    let pkid = r.u16()?;
    Ok((pkid, r.rest().to_vec()))
}

pub fn encode_suback(pkid: u16, codes: &[u8]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    body.extend_from_slice(codes);
    encode_frame(SUBACK << 4, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    type FrameCase = (
        Vec<u8>,
        usize,
        Result<Option<(u8, usize)>, CodecError>,
        usize,
    );
    type PublishCase = (u8, Result<(u8, Option<u16>, usize), ()>);

    fn connect_bytes(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn frames_are_taken_only_when_complete_and_lengths_are_bounded() {
        let cases: Vec<FrameCase> = vec![
            (vec![], 10, Ok(None), 0),
            (vec![0xc0], 10, Ok(None), 1),
            (vec![0xc0, 0x00], 10, Ok(Some((0xc0, 0))), 0),
            (vec![0x30, 0x03, 1, 2], 10, Ok(None), 4),
            (vec![0x30, 0x02, 1, 2, 0xc0], 10, Ok(Some((0x30, 2))), 1),
            // 128 = 0x80 0x01
            (vec![0x30, 0x80, 0x01], 200, Ok(None), 3),
            (
                vec![0x30, 0x80, 0x01],
                127,
                Err(CodecError::TooLarge { len: 128, max: 127 }),
                3,
            ),
            (
                vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
                usize::MAX,
                Err(CodecError::BadLength),
                6,
            ),
        ];
        for (input, max, want, left) in cases {
            let mut buf = input.clone();
            let got = take_frame(&mut buf, max).map(|o| o.map(|f| (f.first, f.body.len())));
            assert_eq!(got, want, "{input:?}");
            assert_eq!(buf.len(), left, "{input:?}");
        }
    }

    #[test]
    fn remaining_length_encodes_and_decodes_at_every_boundary() {
        for n in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            let mut enc = encode_frame(0x30, &vec![7; n]);
            let f = take_frame(&mut enc, usize::MAX).unwrap().unwrap();
            assert_eq!(f.body.len(), n);
            assert!(enc.is_empty());
        }
    }

    #[test]
    fn connect_fields_are_read_and_reencoded_unchanged() {
        let mut p = Vec::new();
        put_bytes(&mut p, b"cid");
        put_bytes(&mut p, b"will/t");
        put_bytes(&mut p, b"bye");
        put_bytes(&mut p, b"alice");
        put_bytes(&mut p, b"pw");
        // user, password, will retain, will qos 1, will, clean
        let body = connect_bytes(0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02, &p);
        let c = parse_connect(&body).unwrap();
        assert_eq!(c.level, 4);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(c.client_id, "cid");
        assert_eq!(
            c.will,
            Some(Will {
                topic: "will/t".into(),
                message: b"bye".to_vec(),
                qos: 1,
                retain: true
            })
        );
        assert_eq!(c.username.as_deref(), Some("alice"));
        assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
        let mut enc = encode_connect(&c);
        let f = take_frame(&mut enc, 1000).unwrap().unwrap();
        assert_eq!(f.body, body);
        assert!(!format!("{c:?}").contains("pw\""), "{c:?}");
    }

    #[test]
    fn packets_a_client_may_not_send_are_named() {
        let f = |first: u8, body: &[u8]| Frame {
            first,
            body: body.to_vec(),
        };
        let cases: Vec<(&str, Frame, bool)> = vec![
            ("CONNECT", f(0x10, b"x"), true),
            ("CONNECT with a reserved flag", f(0x11, b"x"), false),
            ("PUBLISH QoS 1 retained", f(0x33, b"x"), true),
            ("PUBACK", f(0x40, &[0, 1]), true),
            ("PUBREL", f(0x62, &[0, 1]), true),
            ("PUBREL without its flag", f(0x60, &[0, 1]), false),
            ("SUBSCRIBE", f(0x82, b"x"), true),
            ("SUBSCRIBE with flags 0", f(0x80, b"x"), false),
            ("UNSUBSCRIBE", f(0xa2, b"x"), true),
            ("PINGREQ", f(0xc0, &[]), true),
            ("PINGREQ with a body", f(0xc0, &[0]), false),
            ("DISCONNECT", f(0xe0, &[]), true),
            ("DISCONNECT with a body", f(0xe0, &[1]), false),
            ("CONNACK", f(0x20, &[0, 0]), false),
            ("SUBACK", f(0x90, &[0, 1, 0]), false),
            ("UNSUBACK", f(0xb0, &[0, 1]), false),
            ("PINGRESP", f(0xd0, &[]), false),
            ("type 0", f(0x00, &[]), false),
            ("type 15", f(0xf0, &[]), false),
        ];
        for (name, frame, ok) in cases {
            assert_eq!(client_frame_problem(&frame).is_none(), ok, "{name}");
        }
    }

    #[test]
    fn mqisdp_is_mqtt_3_1_and_never_level_4() {
        let v31 = vec![0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60];
        assert_eq!(
            parse_connect(&v31).unwrap().level,
            3,
            "refused politely later"
        );
        let mut id = Vec::new();
        put_bytes(&mut id, b"c");
        let mut bad = vec![0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 4, 2, 0, 60];
        bad.extend_from_slice(&id);
        assert!(parse_connect(&bad).is_err());
    }

    #[test]
    fn malformed_connects_are_errors_not_panics() {
        let mut id = Vec::new();
        put_bytes(&mut id, b"c");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("bad name", vec![0, 4, b'X', b'Q', b'T', b'T', 4, 2, 0, 60]),
            ("reserved bit", connect_bytes(0x03, &id)),
            ("password without user", connect_bytes(0x42, &id)),
            ("will qos without will", connect_bytes(0x0a, &id)),
            ("truncated client id", connect_bytes(0x02, &[0, 9, b'a'])),
            ("will flag but no will", connect_bytes(0x06, &id)),
            ("trailing", {
                let mut b = connect_bytes(0x02, &id);
                b.push(1);
                b
            }),
        ];
        for (name, body) in cases {
            assert!(parse_connect(&body).is_err(), "{name}");
        }
        // A Last Will is published like any message later: a topic no PUBLISH may carry is a
        // malformed CONNECT, exactly as the PUBLISH would be.
        for topic in ["lan/#", "a/+/b", "#", "+", ""] {
            let mut p = id.clone();
            put_bytes(&mut p, topic.as_bytes());
            put_bytes(&mut p, b"poison");
            let body = connect_bytes(0x0e, &p); // will QoS 1, will flag, clean session
            assert!(parse_connect(&body).is_err(), "will topic {topic:?}");
        }
        let mut p = id.clone();
        put_bytes(&mut p, b"lan/dev/1");
        put_bytes(&mut p, b"bye");
        assert!(parse_connect(&connect_bytes(0x0e, &p)).is_ok());
        // Another protocol level parses far enough to be refused politely.
        let v5 = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0];
        assert_eq!(parse_connect(&v5).unwrap().level, 5);
    }

    #[test]
    fn publish_headers_give_topic_qos_pkid_and_payload_size() {
        let mut b = Vec::new();
        put_bytes(&mut b, b"a/b");
        b.extend_from_slice(&[0, 7, b'x', b'y']);
        let cases: Vec<PublishCase> = vec![
            (0x00, Ok((0, None, 4))),
            (0x02, Ok((1, Some(7), 2))),
            (0x04 | 0x01 | 0x08, Ok((2, Some(7), 2))),
            (0x06, Err(())),
        ];
        for (flags, want) in cases {
            let got = parse_publish(flags, &b)
                .map(|h| (h.qos, h.pkid, h.payload_len))
                .map_err(|_| ());
            assert_eq!(got, want, "flags {flags:#x}");
        }
        let mut wild = Vec::new();
        put_bytes(&mut wild, b"a/+");
        assert!(parse_publish(0, &wild).is_err());
        assert!(parse_publish(0x02, &[0, 1, b'a', 0, 0]).is_err(), "pkid 0");
        assert!(parse_publish(0, &[0, 5, b'a']).is_err(), "truncated topic");
    }

    #[test]
    fn subscribe_roundtrips_and_rejects_bad_flags_and_qos() {
        let s = Subscribe {
            pkid: 9,
            filters: vec![("a/#".into(), 1), ("b/+".into(), 2)],
        };
        let mut enc = encode_subscribe(&s);
        let f = take_frame(&mut enc, 1000).unwrap().unwrap();
        assert_eq!(parse_subscribe(f.flags(), &f.body).unwrap(), s);
        assert!(parse_subscribe(0, &f.body).is_err());
        assert!(parse_subscribe(2, &[0, 1]).is_err(), "no filters");
        assert!(parse_subscribe(2, &[0, 1, 0, 1, b'a', 3]).is_err(), "qos 3");
        let mut ack = encode_suback(9, &[1, 0x80]);
        let f = take_frame(&mut ack, 100).unwrap().unwrap();
        assert_eq!(parse_suback(&f.body).unwrap(), (9, vec![1, 0x80]));
        assert_eq!(ack_frame(PUBREL, 5), (0x62, vec![0, 5]));
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_parser() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let flags = rng.random::<u8>() & 0x0f;
            let _ = parse_connect(&bytes);
            let _ = parse_publish(flags, &bytes);
            let _ = parse_subscribe(flags, &bytes);
            let _ = parse_suback(&bytes);
            let _ = pkid_of(&bytes);
            let mut buf = bytes.clone();
            while let Ok(Some(_)) = take_frame(&mut buf, 32) {}
        }
    }

    fn ack_frame(kind: u8, pkid: u16) -> (u8, Vec<u8>) {
        let mut b = ack(kind, pkid);
        let f = take_frame(&mut b, 10).unwrap().unwrap();
        (f.first, f.body)
    }
}
