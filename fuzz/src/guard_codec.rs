//! The guard's codec, on bytes a client could send: framing (`take_frame`), the per-frame
//! refusal (`client_frame_problem`) and the CONNECT, PUBLISH, SUBSCRIBE and SUBACK parsers.
//! Invariants: a frame taken is within the body limit and re-encodes to a frame that parses
//! the same; what the parsers accept round-trips through our encoders and obeys the rules the
//! guard relies on (no wildcard in a PUBLISH or Will topic, QoS ≤ 2, packet id ≠ 0).

use fieldbridge::config::spec::topic::{filter_problem, topic_name_problem};
use fieldbridge::guard::codec::{
    client_frame_problem, encode_connect, encode_suback, encode_subscribe, parse_connect,
    parse_publish, parse_suback, parse_subscribe, pkid_of, take_frame, Frame, CONNECT, PUBLISH,
    SUBACK, SUBSCRIBE,
};

pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let max_body = [16usize, 256, 4096, 268_435_455][usize::from(sel & 3)];
    let mut buf = rest.to_vec();
    loop {
        let before = buf.len();
        match take_frame(&mut buf, max_body) {
            Ok(Some(f)) => {
                assert!(f.body.len() <= max_body, "a frame over the limit was taken");
                assert!(
                    buf.len() < before,
                    "a frame was taken without consuming input"
                );
                let mut again = f.encode();
                assert_eq!(take_frame(&mut again, max_body), Ok(Some(f.clone())));
                assert!(again.is_empty());
                frame(&f);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "incomplete input was consumed");
                break;
            }
            Err(_) => break,
        }
    }
    // The body parsers also see the raw input, not only what happened to frame well.
    frame(&Frame {
        first: sel,
        body: rest.to_vec(),
    });
}

fn frame(f: &Frame) {
    let _ = client_frame_problem(f);
    let _ = pkid_of(&f.body);
    match f.kind() {
        CONNECT => connect(&f.body),
        PUBLISH => {
            if let Ok(h) = parse_publish(f.flags(), &f.body) {
                assert!(h.qos <= 2);
                assert_eq!(topic_name_problem(&h.topic), None, "{:?}", h.topic);
                assert_ne!(h.pkid, Some(0));
                assert_eq!(h.pkid.is_some(), h.qos > 0);
                assert!(h.payload_len <= f.body.len());
            }
        }
        SUBSCRIBE => {
            if let Ok(s) = parse_subscribe(f.flags(), &f.body) {
                assert!(!s.filters.is_empty());
                for (filter, qos) in &s.filters {
                    assert!(*qos <= 2);
                    let _ = filter_problem(filter);
                }
                let mut enc = encode_subscribe(&s);
                let g = take_frame(&mut enc, usize::MAX).ok().flatten();
                let g = g.expect("our SUBSCRIBE frames");
                assert_eq!(parse_subscribe(g.flags(), &g.body), Ok(s));
            }
        }
        SUBACK => {
            if let Ok((pkid, codes)) = parse_suback(&f.body) {
                let mut enc = encode_suback(pkid, &codes);
                let g = take_frame(&mut enc, usize::MAX).ok().flatten();
                let g = g.expect("our SUBACK frames");
                assert_eq!(parse_suback(&g.body), Ok((pkid, codes)));
            }
        }
        _ => {}
    }
}

fn connect(body: &[u8]) {
    let Ok(c) = parse_connect(body) else { return };
    if c.level != 4 {
        return;
    }
    if let Some(w) = &c.will {
        assert_eq!(topic_name_problem(&w.topic), None, "Will {:?}", w.topic);
        assert!(w.qos <= 2);
    }
    assert!(c.password.is_none() || c.username.is_some());
    let mut enc = encode_connect(&c);
    let g = take_frame(&mut enc, usize::MAX).ok().flatten();
    let g = g.expect("our CONNECT frames");
    assert_eq!(g.kind(), CONNECT);
    assert_eq!(parse_connect(&g.body), Ok(c));
}
