//! What the guard does with each packet a client sends after its CONNECT: relay it, answer it
//! itself, hold it for the outbox, or close the connection. Pure (no I/O, no clock), so the
//! per-connection state — QoS 2 ids we refused, SUBSCRIBEs we narrowed — can be fuzzed and
//! tested as tables; `proxy` only carries the decisions out.
//!
//! The rules: a packet only a server sends, a reserved type, wrong fixed-header flags, a second
//! CONNECT or a payload over `max_payload_bytes` closes the connection (MQTT 3.1.1 §4.8). A
//! PUBLISH the ACL refuses is acknowledged as its QoS requires and dropped; its later PUBREL is
//! answered here too, so rumqttd never sees an id it did not receive. An invalid or refused
//! SUBSCRIBE filter gets 0x80 in its place in the SUBACK (§3.9.3) and the rest goes on to rumqttd.

use std::collections::HashSet;

use super::acl::Policy;
use super::codec::{self, CodecError, Frame};
use crate::config::spec::access::Access;
use crate::config::spec::topic;
use crate::config::BridgeRule;
use crate::flow::Message;

/// What a connection is allowed: fixed for its lifetime.
pub struct Rules<'a> {
    pub policy: &'a Policy,
    pub access: &'a Access,
    pub max_payload: usize,
    /// `[[forward]]` rules; empty when nothing is forwarded.
    pub forward: &'a [BridgeRule],
}

/// The upstream topic of a local topic that a rule forwards (the first matching rule wins).
pub fn remote_topic(rules: &[BridgeRule], topic: &str) -> Option<String> {
    rules
        .iter()
        .find(|r| topic::matches(&r.filter, topic))
        .map(|r| r.to_remote(topic))
}

/// Why the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// A packet the protocol forbids a client to send (logged as a protocol violation).
    Violation(&'static str),
    /// A PUBLISH over `max_payload_bytes`.
    TooLarge {
        topic: String,
        bytes: usize,
    },
    SecondConnect,
}

/// One refusal by the ACL, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub action: &'static str,
    pub topic: String,
    pub reason: &'static str,
}

/// What to do with one client packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Relay it to rumqttd as it came.
    Relay,
    /// A SUBSCRIBE with refused filters: relay `frame` (the allowed ones) instead and, when its
    /// SUBACK comes, put 0x80 back where `mask` says (`merge_suback`).
    Narrowed {
        pkid: u16,
        mask: Vec<Option<u8>>,
        frame: Vec<u8>,
    },
    /// Answer the client with these bytes; rumqttd sees nothing.
    Answer(Vec<u8>),
    /// Nothing to send anywhere (a refused QoS 0 publish).
    Drop,
    /// A publish on a forwarded topic: hold it until the outbox has committed it, then relay.
    /// `acked`: the client waits for an ack (QoS 1 or 2).
    Forward {
        message: Message,
        acked: bool,
    },
    /// DISCONNECT: relay it; the client's Will is not published.
    Disconnect,
    Close(Close),
}

/// The decision and the refusals to log with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub step: Step,
    pub denied: Vec<Denial>,
}

impl From<Step> for Outcome {
    fn from(step: Step) -> Outcome {
        Outcome {
            step,
            denied: Vec::new(),
        }
    }
}

/// The state one client connection carries between packets.
#[derive(Debug, Default)]
pub struct Session {
    /// QoS 2 publishes we refused and answered with PUBREC: their PUBREL is ours to complete.
    refused_qos2: HashSet<u16>,
}

impl Session {
    /// Decides what happens to `f`, a whole packet the client sent after CONNECT. An error is a
    /// malformed packet: the connection closes.
    pub fn on_client_frame(&mut self, rules: &Rules, f: &Frame) -> Result<Outcome, CodecError> {
        if let Some(problem) = codec::client_frame_problem(f) {
            return Ok(Step::Close(Close::Violation(problem)).into());
        }
        Ok(match f.kind() {
            codec::CONNECT => Step::Close(Close::SecondConnect).into(),
            codec::PUBLISH => self.publish(rules, f)?,
            codec::DISCONNECT => Step::Disconnect.into(),
            codec::PUBREL => match codec::pkid_of(&f.body) {
                Some(id) if self.refused_qos2.remove(&id) => {
                    Step::Answer(codec::ack(codec::PUBCOMP, id)).into()
                }
                _ => Step::Relay.into(),
            },
            codec::SUBSCRIBE => subscribe(rules, f)?,
            _ => Step::Relay.into(),
        })
    }

    fn publish(&mut self, rules: &Rules, f: &Frame) -> Result<Outcome, CodecError> {
        let h = codec::parse_publish(f.flags(), &f.body)?;
        if h.payload_len > rules.max_payload {
            return Ok(Step::Close(Close::TooLarge {
                topic: h.topic,
                bytes: h.payload_len,
            })
            .into());
        }
        if let Err(d) = rules.policy.publish(rules.access, &h.topic, h.retain) {
            let step = match (h.qos, h.pkid) {
                (1, Some(id)) => Step::Answer(codec::ack(codec::PUBACK, id)),
                (2, Some(id)) => {
                    self.refused_qos2.insert(id);
                    Step::Answer(codec::ack(codec::PUBREC, id))
                }
                _ => Step::Drop,
            };
            return Ok(Outcome {
                step,
                denied: vec![Denial {
                    action: "publish",
                    topic: h.topic,
                    reason: d.as_str(),
                }],
            });
        }
        if let Some(id) = h.pkid.filter(|_| h.qos == 2) {
            // A reused packet id now belongs to an accepted publish.
            self.refused_qos2.remove(&id);
        }
        let Some(remote) = remote_topic(rules.forward, &h.topic) else {
            return Ok(Step::Relay.into());
        };
        // The payload is the tail of the body (parse_publish measured it).
        let payload = f.body[f.body.len() - h.payload_len..].to_vec();
        Ok(Step::Forward {
            message: Message {
                topic: remote,
                payload,
                retain: h.retain,
            },
            acked: h.qos > 0,
        }
        .into())
    }
}

fn subscribe(rules: &Rules, f: &Frame) -> Result<Outcome, CodecError> {
    let s = codec::parse_subscribe(f.flags(), &f.body)?;
    let mut mask = Vec::with_capacity(s.filters.len());
    let mut allowed = Vec::new();
    let mut denied = Vec::new();
    for (filter, qos) in &s.filters {
        // An invalid filter (`a/#/b`, `+a`, empty) is refused like a denied one (§4.7.1):
        // rumqttd would grant it.
        let reason = if topic::filter_problem(filter).is_some() {
            Some("invalid_filter")
        } else if rules.policy.subscribe(rules.access, filter) {
            None
        } else {
            Some("no_matching_filter")
        };
        match reason {
            None => {
                mask.push(None);
                allowed.push((filter.clone(), *qos));
            }
            Some(reason) => {
                denied.push(Denial {
                    action: "subscribe",
                    topic: filter.clone(),
                    reason,
                });
                mask.push(Some(codec::SUBACK_FAILURE));
            }
        }
    }
    let step = if allowed.is_empty() {
        let codes = vec![codec::SUBACK_FAILURE; s.filters.len()];
        Step::Answer(codec::encode_suback(s.pkid, &codes))
    } else if denied.is_empty() {
        Step::Relay
    } else {
        Step::Narrowed {
            pkid: s.pkid,
            mask,
            frame: codec::encode_subscribe(&codec::Subscribe {
                pkid: s.pkid,
                filters: allowed,
            }),
        }
    };
    Ok(Outcome { step, denied })
}

/// The SUBACK the client gets for a narrowed SUBSCRIBE: rumqttd's codes for the filters it saw,
/// 0x80 in the places of the refused ones. A code rumqttd did not send counts as a failure.
pub fn merge_suback(pkid: u16, granted: &[u8], mask: &[Option<u8>]) -> Vec<u8> {
    let mut granted = granted.iter().copied();
    let merged: Vec<u8> = mask
        .iter()
        .map(|m| m.unwrap_or_else(|| granted.next().unwrap_or(codec::SUBACK_FAILURE)))
        .collect();
    codec::encode_suback(pkid, &merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, qos: u8, retain: bool, pkid: u16, payload: &[u8]) -> Frame {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        body.extend_from_slice(payload);
        Frame {
            first: codec::PUBLISH << 4 | qos << 1 | u8::from(retain),
            body,
        }
    }

    fn frame(bytes: Vec<u8>) -> Frame {
        let mut buf = bytes;
        codec::take_frame(&mut buf, 1 << 20).unwrap().unwrap()
    }

    fn subscribe_frame(pkid: u16, filters: &[&str]) -> Frame {
        frame(codec::encode_subscribe(&codec::Subscribe {
            pkid,
            filters: filters.iter().map(|f| (f.to_string(), 1)).collect(),
        }))
    }

    struct Fixture {
        policy: Policy,
        access: Access,
        forward: Vec<BridgeRule>,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                policy: Policy::new("fieldbridge/gw"),
                access: Access {
                    publish: vec!["lan/#".into()],
                    subscribe: vec!["lan/#".into(), "fieldbridge/#".into()],
                    commands: false,
                },
                forward: vec![BridgeRule {
                    filter: "lan/up/#".into(),
                    remap: Some(("lan/up".into(), "site/up".into())),
                }],
            }
        }
        fn rules(&self) -> Rules<'_> {
            Rules {
                policy: &self.policy,
                access: &self.access,
                max_payload: 16,
                forward: &self.forward,
            }
        }
    }

    fn step(s: &mut Session, fx: &Fixture, f: Frame) -> Step {
        s.on_client_frame(&fx.rules(), &f).unwrap().step
    }

    #[test]
    fn each_client_packet_gets_the_step_the_rules_give() {
        let fx = Fixture::new();
        let cases: Vec<(&str, Frame, Step)> = vec![
            (
                "allowed qos1",
                publish("lan/a", 1, false, 7, b"x"),
                Step::Relay,
            ),
            (
                "refused qos1 is acked here",
                publish("other/a", 1, false, 7, b"x"),
                Step::Answer(codec::ack(codec::PUBACK, 7)),
            ),
            (
                "refused qos2 gets its PUBREC here",
                publish("other/a", 2, false, 9, b"x"),
                Step::Answer(codec::ack(codec::PUBREC, 9)),
            ),
            (
                "refused qos0 vanishes",
                publish("fieldbridge/gw/x", 0, false, 0, b"x"),
                Step::Drop,
            ),
            (
                "forwarded with its remote topic",
                publish("lan/up/t", 1, true, 3, b"hot"),
                Step::Forward {
                    message: Message {
                        topic: "site/up/t".into(),
                        payload: b"hot".to_vec(),
                        retain: true,
                    },
                    acked: true,
                },
            ),
            (
                "over max_payload closes",
                publish("lan/a", 0, false, 0, &[0; 17]),
                Step::Close(Close::TooLarge {
                    topic: "lan/a".into(),
                    bytes: 17,
                }),
            ),
            (
                "a second CONNECT closes",
                frame(codec::encode_frame(codec::CONNECT << 4, &[0, 4])),
                Step::Close(Close::SecondConnect),
            ),
            (
                "a SUBACK from a client is a violation",
                frame(codec::encode_suback(1, &[0])),
                Step::Close(Close::Violation("a packet type only a server sends")),
            ),
            (
                "PINGREQ with a body is a violation",
                frame(codec::encode_frame(codec::PINGREQ << 4, &[1])),
                Step::Close(Close::Violation("PINGREQ and DISCONNECT have no body")),
            ),
            (
                "DISCONNECT",
                frame(codec::encode_frame(codec::DISCONNECT << 4, &[])),
                Step::Disconnect,
            ),
            (
                "a PUBREL of an id we never refused goes on",
                frame(codec::encode_frame(codec::PUBREL << 4 | 2, &[0, 5])),
                Step::Relay,
            ),
            (
                "a wholly allowed SUBSCRIBE",
                subscribe_frame(4, &["lan/#"]),
                Step::Relay,
            ),
            (
                "a wholly refused SUBSCRIBE is answered here",
                subscribe_frame(4, &["a/#/b", "other"]),
                Step::Answer(codec::encode_suback(4, &[0x80, 0x80])),
            ),
        ];
        for (what, f, want) in cases {
            assert_eq!(step(&mut Session::default(), &fx, f), want, "{what}");
        }
    }

    #[test]
    fn the_pubrel_of_a_refused_qos2_publish_is_completed_here_once() {
        let fx = Fixture::new();
        let mut s = Session::default();
        step(&mut s, &fx, publish("other/a", 2, false, 9, b"x"));
        let pubrel = || frame(codec::encode_frame(codec::PUBREL << 4 | 2, &[0, 9]));
        assert_eq!(
            step(&mut s, &fx, pubrel()),
            Step::Answer(codec::ack(codec::PUBCOMP, 9))
        );
        assert_eq!(step(&mut s, &fx, pubrel()), Step::Relay);
    }

    #[test]
    fn a_refused_qos2_id_reused_by_an_allowed_publish_is_rumqttds_to_complete() {
        let fx = Fixture::new();
        let mut s = Session::default();
        step(&mut s, &fx, publish("other/a", 2, false, 9, b"x"));
        assert_eq!(
            step(&mut s, &fx, publish("lan/a", 2, false, 9, b"x")),
            Step::Relay
        );
        let pubrel = frame(codec::encode_frame(codec::PUBREL << 4 | 2, &[0, 9]));
        assert_eq!(step(&mut s, &fx, pubrel), Step::Relay);
    }

    #[test]
    fn a_partly_refused_subscribe_is_narrowed_and_its_suback_gets_the_refusals_back() {
        let fx = Fixture::new();
        let out = Session::default()
            .on_client_frame(&fx.rules(), &subscribe_frame(4, &["x/#", "lan/a", "+a"]))
            .unwrap();
        let reasons: Vec<_> = out.denied.iter().map(|d| d.reason).collect();
        assert_eq!(reasons, ["no_matching_filter", "invalid_filter"]);
        let Step::Narrowed { pkid, mask, frame } = out.step else {
            panic!("not narrowed: {:?}", out.step)
        };
        assert_eq!(
            frame,
            codec::encode_subscribe(&codec::Subscribe {
                pkid: 4,
                filters: vec![("lan/a".into(), 1)]
            })
        );
        assert_eq!(
            merge_suback(pkid, &[1], &mask),
            codec::encode_suback(4, &[0x80, 1, 0x80])
        );
        assert_eq!(
            merge_suback(pkid, &[], &mask),
            codec::encode_suback(4, &[0x80, 0x80, 0x80])
        );
    }
}
