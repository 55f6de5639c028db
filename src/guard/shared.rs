//! What every connection of the guard shares: the backend login for rumqttd, the ACL policy and
//! users, the login throttle, and the connection slots (in total and per client address). Built
//! once from `[broker]` by `mqtt::broker`, read by the listeners and proxies.
//!
//! A reload replaces the `Rights` (users, ACLs, anonymous policy, per-connection limits) as one
//! value (`Shared::update`): a new connection is admitted under the rights of its CONNECT's
//! moment; a connected client whose own rights are unchanged goes on untouched, and one whose
//! rights changed (its user removed, its password or access changed; for an anonymous client,
//! the anonymous access or policy) is disconnected, so it logs in again under the new rights
//! rather than keep rights the operator took away. New limits apply to new connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::spec::access::Access;
use crate::config::Broker as BrokerConfig;
use crate::guard::acl::Policy;
use crate::guard::forward::Forwarder;
use crate::guard::{auth, throttle};
use crate::ops::stats::BrokerCounters;
use crate::ops::telemetry::KeyedLimiter;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("embedded broker cannot listen on {addr} ({listener} listener): {source} (is another MQTT broker, e.g. mosquitto, using that port? change [broker] listen)")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("[broker.tls]: {file}: {message}")]
    Tls { file: String, message: String },
    #[error("embedded broker: {0}")]
    Internal(String),
}

/// Credentials the guard presents to rumqttd; fresh random values each start.
#[derive(Clone)]
pub struct BackendLogin {
    pub user: String,
    pub password: String,
}

impl BackendLogin {
    pub fn random() -> BackendLogin {
        let hex = |n: usize| {
            let mut b = vec![0u8; n];
            rand::fill(&mut b[..]);
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        };
        BackendLogin {
            user: format!("fieldbridge-guard-{}", hex(4)),
            password: hex(24),
        }
    }
}

/// Everything a connection needs, shared by all listeners.
/// How often one client address may cause a refusal line in the log.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Password checks running at once: each holds Argon2's memory (19 MiB at the default cost).
const VERIFY_WORKERS: usize = 2;
/// Checks waiting for a worker before new ones are refused unhashed (about 0.1 s of work at
/// the default cost on a PC, a few tenths of a second on a Pi).
const VERIFY_QUEUE: usize = 8;

/// Who may log in with which rights, and the limits checked at CONNECT: what a reload may
/// change, replaced as one value.
#[derive(Clone)]
pub(super) struct Rights {
    /// User → (password hash, access).
    pub(super) users: HashMap<String, (String, Access)>,
    pub(super) anonymous: Access,
    /// `None`: anonymous clients only on loopback listeners.
    pub(super) allow_anonymous: Option<bool>,
    pub(super) keep_alive: (u16, u16),
    pub(super) keep_alive_zero: bool,
    pub(super) connect_timeout: Duration,
}

/// Who a connected client logged in as, to tell whether a reload changed its rights.
pub(super) enum Who {
    Anonymous { loopback_listener: bool },
    User { name: String, hash: String },
}

impl Rights {
    fn of(cfg: &BrokerConfig) -> Rights {
        let secs = |d: Duration| u16::try_from(d.as_secs()).unwrap_or(u16::MAX);
        Rights {
            users: cfg
                .users
                .iter()
                .filter_map(|u| {
                    let hash = u.password_hash.clone()?;
                    Some((u.name.clone(), (hash, u.access.clone())))
                })
                .collect(),
            anonymous: cfg.anonymous.clone(),
            allow_anonymous: cfg.allow_anonymous,
            keep_alive: (secs(cfg.keep_alive_min), secs(cfg.keep_alive_max)),
            keep_alive_zero: cfg.allow_keep_alive_zero,
            connect_timeout: cfg.connect_timeout,
        }
    }

    pub(super) fn anonymous_allowed(&self, loopback_listener: bool) -> bool {
        self.allow_anonymous.unwrap_or(loopback_listener)
    }

    /// Whether a client admitted as `who` with `access` would be admitted with exactly that
    /// access under these rights.
    pub(super) fn still_grants(&self, who: &Who, access: &Access) -> bool {
        match who {
            Who::Anonymous { loopback_listener } => {
                self.anonymous_allowed(*loopback_listener) && self.anonymous == *access
            }
            Who::User { name, hash } => self
                .users
                .get(name)
                .is_some_and(|(h, a)| h == hash && a == access),
        }
    }
}

pub struct Shared {
    pub(super) backend: SocketAddr,
    pub(super) login: BackendLogin,
    pub(super) policy: Policy,
    /// Replaced by a reload; every connection watches it (see the module text).
    pub(super) rights: tokio::sync::watch::Sender<Arc<Rights>>,
    /// Verified against when the user is unknown, so that the answer takes as long as for a
    /// known user with a wrong password (no user enumeration by timing).
    pub(super) dummy_hash: String,
    /// Argon2 costs ~19 MiB and tens of ms each: bound how many run at once. With the memory
    /// (blocks) its workers have room for; a reload whose costliest hash needs more starts a
    /// new pool (the old one ends when its last check is done).
    verifier: std::sync::RwLock<(Arc<auth::Verifier>, usize)>,
    /// Failed logins per client address (password guessing).
    pub(super) throttle: std::sync::Mutex<throttle::Throttle>,
    pub(super) connections: Arc<Semaphore>,
    /// Open connections per client address (`max_connections_per_address`), so one LAN host
    /// cannot take every slot with idle sockets.
    pub(super) per_address: Arc<PerAddress>,
    /// Largest accepted packet body (a PUBLISH with the largest payload and topic).
    pub(super) max_body: usize,
    pub(super) max_payload: usize,
    /// One refusal line per client address per `REFUSAL_LOG_EVERY` (a client looping bad
    /// CONNECTs must not flood the journal).
    pub(super) refusal_log: std::sync::Mutex<KeyedLimiter<(std::net::IpAddr, String)>>,
    /// `[[forward]]`: matching publishes are committed to the outbox before rumqttd sees them.
    pub(super) forward: Option<Forwarder>,
    /// Connections accepted, refused for want of a slot, and closed (open = accepted − closed).
    pub(super) counters: Arc<BrokerCounters>,
}

impl Shared {
    /// `base` is `<prefix>/<gateway id>`, the gateway's own topic tree.
    pub fn new(
        cfg: &BrokerConfig,
        base: &str,
        backend: SocketAddr,
        login: BackendLogin,
        forward: Option<Forwarder>,
        counters: Arc<BrokerCounters>,
    ) -> Result<Shared, GuardError> {
        let dummy_hash = auth::hash_password(login.password.as_bytes())
            .map_err(|e| GuardError::Internal(e.to_string()))?;
        let max_blocks = blocks_for(cfg, &dummy_hash);
        let verifier = auth::Verifier::start(VERIFY_WORKERS, max_blocks, VERIFY_QUEUE)
            .map_err(|e| GuardError::Internal(e.to_string()))?;
        let verifier = std::sync::RwLock::new((Arc::new(verifier), max_blocks));
        Ok(Shared {
            backend,
            login,
            policy: Policy::new(base),
            rights: tokio::sync::watch::Sender::new(Arc::new(Rights::of(cfg))),
            dummy_hash,
            verifier,
            refusal_log: std::sync::Mutex::new(KeyedLimiter::new(REFUSAL_LOG_EVERY, 4096)),
            forward,
            counters,
            throttle: Default::default(),
            connections: Arc::new(Semaphore::new(cfg.max_connections)),
            per_address: Arc::new(PerAddress::new(cfg.max_connections_per_address)),
            max_body: cfg.max_payload_bytes + 2 + 65_535 + 2,
            max_payload: cfg.max_payload_bytes,
        })
    }

    /// A reload's new users, ACLs and limits (`[broker]`'s listeners and rumqttd's settings are
    /// not reloadable: `reload` refuses a change of them).
    pub fn update(&self, cfg: &BrokerConfig) {
        let need = blocks_for(cfg, &self.dummy_hash);
        let mut v = self.verifier.write().unwrap_or_else(|e| e.into_inner());
        if need > v.1 {
            match auth::Verifier::start(VERIFY_WORKERS, need, VERIFY_QUEUE) {
                Ok(bigger) => *v = (Arc::new(bigger), need),
                // The old pool stays: users with the costlier hash cannot log in until then.
                Err(e) => {
                    tracing::error!(event = "config_reload_refused", error = %e, "cannot start password workers for the new users' hashes; those users cannot log in")
                }
            }
        }
        drop(v);
        self.per_address.set_cap(cfg.max_connections_per_address);
        self.rights.send_replace(Arc::new(Rights::of(cfg)));
    }

    /// The password check pool in force now.
    pub(super) fn verifier(&self) -> Arc<auth::Verifier> {
        self.verifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The rights in force now.
    pub(super) fn rights(&self) -> Arc<Rights> {
        self.rights.borrow().clone()
    }

    /// Whether a refusal of a client from `ip` may be logged now: `Some(n)` with the number
    /// of like refusals (same address, same kind of `why`) held back since the last line. The
    /// kind is `why` up to its first number or quoted name, so "locked for another 800 ms" and
    /// "locked for another 400 ms" are one kind, "unknown user" and "wrong password" two.
    pub(super) fn may_log(&self, ip: std::net::IpAddr, why: &str) -> Option<u64> {
        let kind: String = why
            .chars()
            .take_while(|c| !c.is_ascii_digit() && !matches!(c, '"' | '('))
            .take(48)
            .collect();
        self.refusal_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow((ip, kind), tokio::time::Instant::now())
    }
}

/// Room for the costliest configured hash; the dummy one has our default cost.
fn blocks_for(cfg: &BrokerConfig, dummy_hash: &str) -> usize {
    cfg.users
        .iter()
        .filter_map(|u| u.password_hash.as_deref().and_then(auth::blocks_needed))
        .chain(auth::blocks_needed(dummy_hash))
        .max()
        .unwrap_or(0)
}

/// Open connections per client IP address, against an optional cap.
pub(crate) struct PerAddress {
    /// `usize::MAX`: no cap. A reload may change it.
    cap: std::sync::atomic::AtomicUsize,
    open: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in its address's count, given back on drop.
pub(crate) struct AddressSlot {
    owner: Arc<PerAddress>,
    ip: std::net::IpAddr,
}

impl PerAddress {
    pub(crate) fn new(cap: Option<usize>) -> Self {
        PerAddress {
            cap: std::sync::atomic::AtomicUsize::new(cap.unwrap_or(usize::MAX)),
            open: Default::default(),
        }
    }

    /// New connections from now on; open ones keep their slots.
    pub(crate) fn set_cap(&self, cap: Option<usize>) {
        self.cap.store(
            cap.unwrap_or(usize::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// A slot for one more connection from `ip`, or `None` when that address is at its cap.
    pub(crate) fn try_take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.cap.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // The table holds only addresses with open connections: it cannot grow with
                // every address that ever connected.
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod per_address_tests {
    use super::*;

    #[test]
    fn each_address_gets_at_most_its_cap_and_slots_come_back_on_close() {
        let a: std::net::IpAddr = [192, 168, 1, 10].into();
        let b: std::net::IpAddr = [192, 168, 1, 11].into();
        let p = Arc::new(PerAddress::new(Some(2)));
        let s1 = p.try_take(a).expect("first");
        let s2 = p.try_take(a).expect("second");
        assert!(p.try_take(a).is_none(), "third from the same address");
        let other = p.try_take(b).expect("another address has its own count");
        drop(s1);
        let s3 = p
            .try_take(a)
            .expect("a closed connection gives its slot back");
        drop((s2, s3, other));
        assert!(
            p.open.lock().unwrap().is_empty(),
            "no entries for idle addresses"
        );
        let unlimited = Arc::new(PerAddress::new(None));
        let many: Vec<_> = (0..100).filter_map(|_| unlimited.try_take(a)).collect();
        assert_eq!(many.len(), 100);
    }
}

#[cfg(test)]
mod rights_tests {
    use super::*;

    fn access(subscribe: &str) -> Access {
        Access {
            publish: vec!["#".into()],
            subscribe: vec![subscribe.into()],
            commands: false,
        }
    }

    fn rights(users: &[(&str, &str, &str)], anonymous: &str, allow: Option<bool>) -> Rights {
        Rights {
            users: users
                .iter()
                .map(|(n, h, s)| (n.to_string(), (h.to_string(), access(s))))
                .collect(),
            anonymous: access(anonymous),
            allow_anonymous: allow,
            keep_alive: (5, 600),
            keep_alive_zero: true,
            connect_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_client_keeps_its_session_only_while_a_reload_leaves_its_own_rights_alone() {
        let alice = Who::User {
            name: "alice".into(),
            hash: "h1".into(),
        };
        let anon_lo = Who::Anonymous {
            loopback_listener: true,
        };
        let anon_lan = Who::Anonymous {
            loopback_listener: false,
        };
        let base = [("alice", "h1", "a/#")];
        // (rights after the reload, who, access at login, keeps its session)
        let cases: Vec<(Rights, &Who, Access, bool)> = vec![
            (rights(&base, "#", None), &alice, access("a/#"), true),
            // Another user added, limits changed: alice is untouched.
            (
                Rights {
                    keep_alive: (1, 60),
                    ..rights(&[("alice", "h1", "a/#"), ("bob", "h2", "#")], "#", None)
                },
                &alice,
                access("a/#"),
                true,
            ),
            (rights(&[], "#", None), &alice, access("a/#"), false),
            (
                rights(&[("alice", "h9", "a/#")], "#", None),
                &alice,
                access("a/#"),
                false,
            ),
            (
                rights(&[("alice", "h1", "b/#")], "#", None),
                &alice,
                access("a/#"),
                false,
            ),
            (rights(&base, "#", None), &anon_lo, access("#"), true),
            (rights(&base, "x/#", None), &anon_lo, access("#"), false),
            (
                rights(&base, "#", Some(false)),
                &anon_lo,
                access("#"),
                false,
            ),
            (rights(&base, "#", None), &anon_lan, access("#"), false),
            (rights(&base, "#", Some(true)), &anon_lan, access("#"), true),
        ];
        for (i, (r, who, a, keeps)) in cases.iter().enumerate() {
            assert_eq!(r.still_grants(who, a), *keeps, "case {i}");
        }
    }
}
