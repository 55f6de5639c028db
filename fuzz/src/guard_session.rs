//! The guard's per-connection state (`guard::session`) on a stream of packets a client sends
//! after its CONNECT, under one of a few ACL setups chosen by the first byte (everything
//! allowed; a LAN user with command rights; nothing allowed; with or without a forward rule; a
//! small or large payload limit).
//! Invariants, checked against a model kept here: a protocol violation or a second CONNECT
//! closes; nothing the ACL refuses reaches rumqttd or the outbox, and each refusal is acked as
//! its QoS requires; the PUBREL of a refused QoS 2 publish is completed by the guard exactly
//! once and every other PUBREL goes to rumqttd; a forwarded publish keeps its payload and
//! retain flag under its remote topic; a narrowed SUBSCRIBE carries exactly the valid, allowed
//! filters, and its SUBACK comes back with one code per filter the client asked for, 0x80 in
//! the refused places.

use std::collections::HashSet;

use fieldbridge::config::spec::access::Access;
use fieldbridge::config::spec::topic::filter_problem;
use fieldbridge::config::BridgeRule;
use fieldbridge::guard::acl::Policy;
use fieldbridge::guard::codec::{self, Frame};
use fieldbridge::guard::session::{merge_suback, remote_topic, Close, Rules, Session, Step};

const MAX_BODY: usize = 4096;

pub fn run(data: &[u8]) {
    let Some((&setup, rest)) = data.split_first() else {
        return;
    };
    let policy = Policy::new("fieldbridge/gw");
    let access = match setup % 3 {
        0 => Access::everything(),
        1 => Access {
            publish: vec!["lan/#".into(), "a/+/c".into()],
            subscribe: vec!["lan/#".into(), "fieldbridge/gw/#".into()],
            commands: true,
        },
        _ => Access {
            publish: Vec::new(),
            subscribe: Vec::new(),
            commands: false,
        },
    };
    let forward = if setup & 0x04 != 0 {
        vec![BridgeRule {
            filter: "lan/#".into(),
            remap: Some(("lan".into(), "up".into())),
        }]
    } else {
        Vec::new()
    };
    let rules = Rules {
        policy: &policy,
        access: &access,
        max_payload: if setup & 0x08 != 0 { 8 } else { MAX_BODY },
        forward: &forward,
    };
    let mut session = Session::default();
    let mut refused_qos2: HashSet<u16> = HashSet::new();
    let mut buf = rest.to_vec();
    while let Ok(Some(f)) = codec::take_frame(&mut buf, MAX_BODY) {
        // A malformed packet closes the connection.
        let Ok(out) = session.on_client_frame(&rules, &f) else {
            return;
        };
        if let Some(problem) = codec::client_frame_problem(&f) {
            assert_eq!(out.step, Step::Close(Close::Violation(problem)));
            return;
        }
        match f.kind() {
            codec::CONNECT => {
                assert_eq!(out.step, Step::Close(Close::SecondConnect));
                return;
            }
            codec::PUBLISH => publish(&rules, &f, &out.step, out.denied.len(), &mut refused_qos2),
            codec::PUBREL => {
                let id = codec::pkid_of(&f.body);
                let ours = id.is_some_and(|id| refused_qos2.remove(&id));
                let want = match id {
                    Some(id) if ours => Step::Answer(codec::ack(codec::PUBCOMP, id)),
                    _ => Step::Relay,
                };
                assert_eq!(out.step, want, "PUBREL {id:?}");
            }
            codec::SUBSCRIBE => subscribe(&rules, &f, &out.step, out.denied.len()),
            codec::DISCONNECT => assert_eq!(out.step, Step::Disconnect),
            _ => assert_eq!(out.step, Step::Relay),
        }
        assert!(
            out.denied.is_empty() || f.kind() == codec::PUBLISH || f.kind() == codec::SUBSCRIBE
        );
        if matches!(out.step, Step::Close(_)) {
            return;
        }
    }
}

fn publish(rules: &Rules, f: &Frame, step: &Step, denied: usize, refused_qos2: &mut HashSet<u16>) {
    let h = codec::parse_publish(f.flags(), &f.body).expect("the session accepted this PUBLISH");
    assert!(
        !h.topic.contains(['+', '#']) && !h.topic.is_empty(),
        "{:?}",
        h.topic
    );
    if h.payload_len > rules.max_payload {
        assert!(
            matches!(step, Step::Close(Close::TooLarge { .. })),
            "{step:?}"
        );
        return;
    }
    if rules
        .policy
        .publish(rules.access, &h.topic, h.retain)
        .is_err()
    {
        assert_eq!(denied, 1);
        let want = match (h.qos, h.pkid) {
            (1, Some(id)) => Step::Answer(codec::ack(codec::PUBACK, id)),
            (2, Some(id)) => {
                refused_qos2.insert(id);
                Step::Answer(codec::ack(codec::PUBREC, id))
            }
            _ => Step::Drop,
        };
        assert_eq!(step, &want, "refused {h:?}");
        return;
    }
    assert_eq!(denied, 0);
    if h.qos == 2 {
        if let Some(id) = h.pkid {
            refused_qos2.remove(&id);
        }
    }
    match (remote_topic(rules.forward, &h.topic), step) {
        (None, Step::Relay) => {}
        (Some(remote), Step::Forward { message, acked }) => {
            assert_eq!(message.topic, remote);
            assert_eq!(message.payload, f.body[f.body.len() - h.payload_len..]);
            assert_eq!(message.retain, h.retain);
            assert_eq!(*acked, h.qos > 0);
        }
        (remote, step) => panic!("{h:?} forwarded as {remote:?} got {step:?}"),
    }
}

fn subscribe(rules: &Rules, f: &Frame, step: &Step, denied: usize) {
    let s = codec::parse_subscribe(f.flags(), &f.body).expect("the session accepted it");
    let ok = |filter: &str| {
        filter_problem(filter).is_none() && rules.policy.subscribe(rules.access, filter)
    };
    let allowed: Vec<(String, u8)> = s.filters.iter().filter(|(f, _)| ok(f)).cloned().collect();
    assert_eq!(denied, s.filters.len() - allowed.len());
    match step {
        Step::Relay => assert_eq!(allowed.len(), s.filters.len()),
        Step::Answer(bytes) => {
            assert!(allowed.is_empty());
            assert_eq!(
                bytes,
                &codec::encode_suback(s.pkid, &vec![codec::SUBACK_FAILURE; s.filters.len()])
            );
        }
        Step::Narrowed { pkid, mask, frame } => {
            assert_eq!(*pkid, s.pkid);
            assert!(!allowed.is_empty() && allowed.len() < s.filters.len());
            let mut relayed = frame.clone();
            let g = codec::take_frame(&mut relayed, usize::MAX)
                .ok()
                .flatten()
                .expect("a narrowed SUBSCRIBE is one frame");
            let narrowed = codec::parse_subscribe(g.flags(), &g.body).expect("and parses");
            assert_eq!(narrowed.filters, allowed);
            // rumqttd grants what it saw at the QoS asked: the client gets a code per filter.
            let granted: Vec<u8> = allowed.iter().map(|(_, q)| *q).collect();
            let mut suback = merge_suback(*pkid, &granted, mask);
            let g = codec::take_frame(&mut suback, usize::MAX)
                .ok()
                .flatten()
                .expect("a frame");
            let (id, codes) = codec::parse_suback(&g.body).expect("a SUBACK");
            assert_eq!(id, s.pkid);
            let want: Vec<u8> = s
                .filters
                .iter()
                .map(|(f, q)| if ok(f) { *q } else { codec::SUBACK_FAILURE })
                .collect();
            assert_eq!(codes, want);
        }
        other => panic!("SUBSCRIBE {s:?} got {other:?}"),
    }
}
