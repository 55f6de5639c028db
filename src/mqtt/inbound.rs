//! What an incoming publish is, decided in one place for both brokers (pure).
//!
//! The gateway receives publishes on two links: from the upstream broker (the uplink's
//! `[[subscribe]]` filters and, with writable points, our command topics) and from local clients
//! through the embedded broker's in-process link (the command topics only: `[[forward]]` rules
//! are applied by the guard before rumqttd sees a publish, see `guard::forward`).
//! The same questions arise on both: is this our own publish coming back (see `echo`), a command
//! for `<device>/<point>`, a retained command (never run: it would replay hours later over newer
//! values), or (upstream) a message a `[[subscribe]]` rule delivers locally, and under which
//! topic? Answering them in one function keeps the two links from drifting apart; the links only
//! do the I/O (channels, logging).
//!
//! An echo is never run as a command on either link: the gateway publishes on a command topic
//! only when it passes on a command that it already ran (a local client's command a `[[forward]]`
//! rule sends upstream, or an upstream one a `[[subscribe]]` rule delivers locally), so the copy
//! coming back is the same command a second time.
//!
//! Retained commands: the gateway runs a command the broker delivers live, and never one the
//! broker replays from its retained store when the gateway subscribes (MQTT marks exactly those
//! with the retain flag; a retained publish to an existing subscription arrives without it, and
//! is a live command). An empty payload on a command topic is what clears a retained message: it
//! is no command and gets no result.

use crate::config::spec::topic;
use crate::config::BridgeRule;
use crate::flow::Origin;
use crate::mqtt::echo::Echoes;
use crate::mqtt::topics::Topics;

/// Which link a publish arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// From the upstream broker: `[[subscribe]]` rules pass messages on into the local broker.
    Upstream,
    /// From a local client: commands only.
    Local,
}

impl Side {
    /// Who a command from this side is logged as.
    pub fn origin(self) -> Origin {
        match self {
            Side::Upstream => Origin::Upstream,
            Side::Local => Origin::Local,
        }
    }
}

/// A publish on one of our command topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandTopic<'t> {
    /// To the command runner.
    Run { device: &'t str, point: &'t str },
    /// Replayed from the broker's retained store: not run, the sender is warned in the log.
    Retained,
    /// An empty payload (clearing a retained command): nothing to run, nothing to answer.
    Empty,
}

/// What a publish is; several parts can apply at once (a command topic a rule also matches).
/// All empty: nothing to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict<'t> {
    /// Our own publish came back; its entry in the echo table is used up.
    pub echo: bool,
    pub command: Option<CommandTopic<'t>>,
    /// Delivered locally under this topic (remapped by the first matching `[[subscribe]]` rule).
    pub pass_on: Option<String>,
}

/// The receiving rules of one link.
#[derive(Debug, Clone)]
pub struct Inbound {
    side: Side,
    /// `[[subscribe]]` rules (upstream link only).
    rules: Vec<BridgeRule>,
    /// Our topic scheme, when commands are taken on this link.
    commands: Option<Topics>,
}

impl Inbound {
    /// The uplink's: `rules` are the `[[subscribe]]` rules; `commands`: our topics when this
    /// link takes commands.
    pub fn upstream(rules: Vec<BridgeRule>, commands: Option<Topics>) -> Self {
        Inbound {
            side: Side::Upstream,
            rules,
            commands,
        }
    }

    /// The embedded broker's in-process link: commands from local clients, nothing passed on.
    pub fn local(commands: Option<Topics>) -> Self {
        Inbound {
            side: Side::Local,
            rules: Vec::new(),
            commands,
        }
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// Says what a received publish is. Uses up a matching entry of `echoes`, exactly once per
    /// publish, whatever the verdict.
    pub fn classify<'t>(
        &self,
        topic: &'t str,
        retain: bool,
        payload: &[u8],
        echoes: &mut Echoes,
    ) -> Verdict<'t> {
        let echo = echoes.take(topic.as_bytes(), payload);
        if echo {
            return Verdict {
                echo,
                ..Verdict::default()
            };
        }
        let command = self
            .commands
            .as_ref()
            .and_then(|t| t.parse_command(topic))
            .map(|(device, point)| match (payload.is_empty(), retain) {
                (true, _) => CommandTopic::Empty,
                (false, true) => CommandTopic::Retained,
                (false, false) => CommandTopic::Run { device, point },
            });
        let pass_on = self
            .rules
            .iter()
            .find(|r| topic::matches(&r.filter, topic))
            .map(|r| r.to_local(topic));
        Verdict {
            echo,
            command,
            pass_on,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CommandTopic::*;
    use Side::*;

    const CMD: &str = "fb/gw1/pump/speed/set";

    fn rule(filter: &str, remap: Option<(&str, &str)>) -> BridgeRule {
        BridgeRule {
            filter: filter.into(),
            remap: remap.map(|(l, r)| (l.into(), r.into())),
        }
    }

    struct Case {
        name: &'static str,
        side: Side,
        commands: bool,
        /// `(filter, (local prefix, remote prefix))`
        rules: &'static [(&'static str, Option<(&'static str, &'static str)>)],
        /// (topic, payload) we published that comes back on this link
        recorded: Option<(&'static str, &'static str)>,
        topic: &'static str,
        retain: bool,
        payload: &'static str,
        want: Verdict<'static>,
    }

    fn check(cases: &[Case]) {
        for c in cases {
            let rules = c.rules.iter().map(|(f, m)| rule(f, *m)).collect();
            let topics = c.commands.then(|| Topics::new("fb", "gw1"));
            let inbound = match c.side {
                Upstream => Inbound::upstream(rules, topics),
                Local => {
                    assert!(
                        c.rules.is_empty(),
                        "{}: the local link has no rules",
                        c.name
                    );
                    Inbound::local(topics)
                }
            };
            let mut echoes = Echoes::new(8);
            if let Some((t, p)) = c.recorded {
                echoes.record(t.as_bytes(), p.as_bytes());
            }
            let got = inbound.classify(c.topic, c.retain, c.payload.as_bytes(), &mut echoes);
            assert_eq!(got, c.want, "{}", c.name);
            if got.echo {
                assert!(echoes.is_empty(), "{}: the echo entry is used up", c.name);
            }
        }
    }

    fn run(device: &'static str, point: &'static str) -> Verdict<'static> {
        Verdict {
            command: Some(Run { device, point }),
            ..Verdict::default()
        }
    }

    fn pass_on(topic: &str) -> Verdict<'static> {
        Verdict {
            pass_on: Some(topic.into()),
            ..Verdict::default()
        }
    }

    fn case(name: &'static str, side: Side, commands: bool, topic: &'static str) -> Case {
        Case {
            name,
            side,
            commands,
            rules: &[],
            recorded: None,
            topic,
            retain: false,
            payload: "7",
            want: Verdict::default(),
        }
    }

    #[test]
    fn a_command_topic_of_ours_is_a_command_only_where_commands_are_taken() {
        check(&[
            Case {
                want: run("pump", "speed"),
                ..case("upstream, commands taken", Upstream, true, CMD)
            },
            Case {
                want: run("pump", "speed"),
                ..case("local, commands taken", Local, true, CMD)
            },
            case("upstream, no writable points", Upstream, false, CMD),
            case("local, no writable points", Local, false, CMD),
            case(
                "another gateway's command",
                Upstream,
                true,
                "fb/gw2/pump/speed/set",
            ),
            case(
                "a command result",
                Local,
                true,
                "fb/gw1/pump/speed/set/result",
            ),
            case("a reading", Upstream, true, "fb/gw1/pump/speed"),
        ]);
    }

    #[test]
    fn a_retained_command_is_never_run() {
        for side in [Upstream, Local] {
            check(&[Case {
                retain: true,
                want: Verdict {
                    command: Some(Retained),
                    ..Verdict::default()
                },
                ..case("retained", side, true, CMD)
            }]);
        }
    }

    #[test]
    fn a_message_a_rule_matches_is_passed_on_under_the_topic_of_the_other_side() {
        check(&[
            Case {
                rules: &[("site/lan/#", Some(("lan", "site/lan")))],
                want: pass_on("lan/t1"),
                ..case(
                    "subscribe rule: remote to local",
                    Upstream,
                    false,
                    "site/lan/t1",
                )
            },
            Case {
                rules: &[("a/#", None), ("a/b", Some(("a", "x")))],
                want: pass_on("a/b"),
                ..case("the first matching rule wins", Upstream, false, "a/b")
            },
            Case {
                rules: &[("a/#", None)],
                retain: true,
                want: pass_on("a/b"),
                ..case(
                    "retained messages are passed on too",
                    Upstream,
                    false,
                    "a/b",
                )
            },
            Case {
                rules: &[("a/#", None)],
                ..case("no rule matches", Upstream, false, "b/a")
            },
            Case {
                rules: &[("fb/gw1/#", None)],
                want: Verdict {
                    command: Some(Run {
                        device: "pump",
                        point: "speed",
                    }),
                    pass_on: Some(CMD.into()),
                    echo: false,
                },
                ..case("a command a rule matches is both", Upstream, true, CMD)
            },
        ]);
    }

    #[test]
    fn our_own_publish_coming_back_is_dropped_once_and_locally_not_even_run() {
        check(&[
            Case {
                rules: &[("a/#", None)],
                recorded: Some(("a/b", "7")),
                want: Verdict {
                    echo: true,
                    ..Verdict::default()
                },
                ..case("upstream echo: not delivered again", Upstream, false, "a/b")
            },
            Case {
                rules: &[("a/#", None)],
                recorded: Some(("a/b", "8")),
                want: pass_on("a/b"),
                ..case("another payload is not ours", Upstream, false, "a/b")
            },
            Case {
                recorded: Some((CMD, "7")),
                want: Verdict {
                    echo: true,
                    ..Verdict::default()
                },
                ..case("local echo of a command: not run twice", Local, true, CMD)
            },
            Case {
                rules: &[("fb/#", None)],
                recorded: Some((CMD, "7")),
                want: Verdict {
                    echo: true,
                    ..Verdict::default()
                },
                ..case(
                    "upstream echo of a command we forwarded: not run twice",
                    Upstream,
                    true,
                    CMD,
                )
            },
            Case {
                recorded: Some((CMD, "7")),
                want: Verdict {
                    echo: true,
                    ..Verdict::default()
                },
                ..case(
                    "an echo on the command subscription alone: not run twice",
                    Upstream,
                    true,
                    CMD,
                )
            },
        ]);
    }

    #[test]
    fn an_empty_command_payload_clears_a_retained_command_and_is_no_command() {
        for side in [Upstream, Local] {
            for retain in [false, true] {
                check(&[Case {
                    retain,
                    payload: "",
                    want: Verdict {
                        command: Some(Empty),
                        ..Verdict::default()
                    },
                    ..case("empty", side, true, CMD)
                }]);
            }
        }
    }
}
