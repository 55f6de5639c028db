//! Topic access decisions for clients of the embedded broker. Pure and table-tested.
//!
//! Rules, in order:
//! 1. The gateway's own tree `<prefix>/<gateway id>/#` is read-only for every client: nobody but
//!    the gateway may publish readings, status or stats there, so a local client can never forge
//!    what the gateway reports.
//! 2. The exception: command topics `<prefix>/<gateway id>/+/+/set` may be published by users
//!    with `commands = true`, and by nobody else (anonymous clients never) — and never with the
//!    retain flag, by anyone: a retained command would run again for every later subscriber and
//!    at every reconnect. Upstream follows the same rule (`mqtt::inbound`).
//! 3. Otherwise a client may publish to a topic matched by one of its `publish` filters, and
//!    subscribe to a filter that is *covered* by one of its `subscribe` filters (every topic the
//!    requested filter can match is matched by the allowed one).

use crate::config::spec::access::Access;

/// Why a publish was refused; logged as the `reason` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A topic of the gateway's own tree (readings, status, stats).
    GatewayTopic,
    /// A command topic, and the user is not allowed to send commands.
    NotCommandUser,
    /// Not matched by any of the client's filters.
    NoMatchingFilter,
    /// A command with the retain flag: it would run again for every new subscriber and at every
    /// reconnect, hours later, over newer values. Refused for everyone, like upstream.
    RetainedCommand,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::GatewayTopic => "gateway_topic_read_only",
            Denied::NotCommandUser => "not_a_command_user",
            Denied::NoMatchingFilter => "no_matching_filter",
            Denied::RetainedCommand => "retained_command",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    gateway_tree: String,
    commands: String,
}

impl Policy {
    /// `base` is `<prefix>/<gateway id>`.
    pub fn new(base: &str) -> Policy {
        Policy {
            gateway_tree: format!("{base}/#"),
            commands: format!("{base}/+/+/set"),
        }
    }

    /// Whether `who` may publish on `topic` (with the retain flag when `retain`).
    pub fn publish(&self, who: &Access, topic: &str, retain: bool) -> Result<(), Denied> {
        if crate::config::spec::topic::matches(&self.commands, topic) {
            return if retain {
                Err(Denied::RetainedCommand)
            } else if who.commands {
                Ok(())
            } else {
                Err(Denied::NotCommandUser)
            };
        }
        if crate::config::spec::topic::matches(&self.gateway_tree, topic) {
            return Err(Denied::GatewayTopic);
        }
        if who
            .publish
            .iter()
            .any(|f| crate::config::spec::topic::matches(f, topic))
        {
            Ok(())
        } else {
            Err(Denied::NoMatchingFilter)
        }
    }

    pub fn subscribe(&self, who: &Access, filter: &str) -> bool {
        who.subscribe.iter().any(|a| covers(a, filter))
    }
}

/// Whether every topic matched by `filter` is also matched by `allowed`.
pub fn covers(allowed: &str, filter: &str) -> bool {
    // A leading wildcard does not match `$` topics (see crate::config::spec::topic::matches), so it cannot cover a
    // filter that names them.
    if filter.starts_with('$') && (allowed.starts_with('+') || allowed.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let a = allowed.split('/');
    for al in a {
        match (al, f.next()) {
            ("#", _) => return true,
            // `a/#` also matches `a`; that case took the arm above.
            (_, None) => return false,
            (_, Some("#")) => return false,
            ("+", Some(_)) => {}
            (lit, Some(fl)) => {
                if fl == "+" || fl != lit {
                    return false;
                }
            }
        }
    }
    f.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_filters_table() {
        let cases = [
            ("#", "a/b", true),
            ("#", "#", true),
            ("#", "$SYS/x", false),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("a/#", "a/+/c", true),
            ("a/#", "b/#", false),
            ("a/#", "#", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/b", "a/b", true),
            ("a/b", "a/+", false),
            ("a/b", "a/b/c", false),
            ("+/+", "x/y", true),
            ("+", "$SYS", false),
            ("$SYS/#", "$SYS/broker", true),
        ];
        for (allowed, filter, want) in cases {
            assert_eq!(covers(allowed, filter), want, "{allowed} covers {filter}");
        }
    }

    #[test]
    fn gateway_tree_is_read_only_and_commands_only_for_command_users() {
        let p = Policy::new("fb/gw");
        let anyone = Access::everything();
        let commander = Access {
            commands: true,
            ..Access::everything()
        };
        let narrow = Access {
            publish: vec!["sensors/+/temp".into()],
            subscribe: vec!["sensors/#".into()],
            commands: false,
        };
        let cases: Vec<(&Access, &str, Result<(), Denied>)> = vec![
            (&anyone, "fb/gw/dev/temp", Err(Denied::GatewayTopic)),
            (&anyone, "fb/gw/status", Err(Denied::GatewayTopic)),
            (&anyone, "fb/gw/dev/status", Err(Denied::GatewayTopic)),
            (&anyone, "fb/gw/dev/temp/set", Err(Denied::NotCommandUser)),
            (&commander, "fb/gw/dev/temp/set", Ok(())),
            (&commander, "fb/gw/dev/temp", Err(Denied::GatewayTopic)),
            (&commander, "fb/gw/a/b/c/set", Err(Denied::GatewayTopic)),
            (&anyone, "fb/other-gw/dev/temp", Ok(())),
            (&anyone, "anything/else", Ok(())),
            (&narrow, "sensors/esp1/temp", Ok(())),
            (&narrow, "sensors/esp1/hum", Err(Denied::NoMatchingFilter)),
        ];
        for (who, topic, want) in cases {
            assert_eq!(p.publish(who, topic, false), want, "{topic} by {who:?}");
        }
        // With the retain flag: a command is refused for everyone; other topics as without.
        let retained: Vec<(&Access, &str, Result<(), Denied>)> = vec![
            (
                &commander,
                "fb/gw/dev/temp/set",
                Err(Denied::RetainedCommand),
            ),
            (&anyone, "fb/gw/dev/temp/set", Err(Denied::RetainedCommand)),
            (&anyone, "anything/else", Ok(())),
            (&anyone, "fb/gw/status", Err(Denied::GatewayTopic)),
        ];
        for (who, topic, want) in retained {
            assert_eq!(
                p.publish(who, topic, true),
                want,
                "retained {topic} by {who:?}"
            );
        }
        assert!(p.subscribe(&anyone, "fb/gw/#"));
        assert!(p.subscribe(&narrow, "sensors/+/temp"));
        assert!(!p.subscribe(&narrow, "#"));
        assert!(!p.subscribe(&narrow, "fb/gw/#"));
    }
}
