//! The embedded MQTT broker (rumqttd, in-process), so clients on the board can subscribe to
//! readings and retained device status without any other software.
//!
//! Our small `[broker]` section is mapped onto `rumqttd::Config` here and nowhere else. rumqttd's
//! `start()` blocks forever and has no shutdown API, so it runs on its own thread for the life of
//! the process. Its in-process link publishes at QoS 0; retained messages go through
//! `Packet::Publish` with the retain flag. rumqttd keeps everything in memory: retained status is
//! re-published by us after every start.
//!
//! Clients never reach rumqttd directly: its only listener is on loopback, on a port picked at
//! start, and requires a per-start random login that only the guard (`guard`) has. The guard
//! owns the public listeners, authentication, topic ACLs and limits.
//!
//! Commands: with writable points, the link also subscribes to `<prefix>/<gw>/+/+/set`, so a
//! local client allowed to send commands (see `guard`) reaches the same command runner as
//! upstream.
//!
//! Forwarding does not pass through rumqttd: the guard commits what local clients publish on
//! `[[forward]]` topics to the outbox before rumqttd (and so the client's PUBACK) sees it
//! (`guard::Forwarder`). An in-process subscriber would lag behind a burst, and rumqttd skips a
//! lagging reader's unread messages.
//! The link receives what the gateway itself published on the command topics too, so those
//! copies are recognised and dropped (see `echo`).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use rumqttd::local::LinkTx;
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{ConnectionSettings, Notification, RouterConfig, ServerSettings};

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::config::Broker as BrokerConfig;
use crate::flow::Command;
use crate::guard::{self, BackendLogin, Forwarder, GuardError};
use crate::mqtt::birth::BirthWatch;
use crate::mqtt::echo::Echoes;
use crate::mqtt::inbound::{CommandTopic, Inbound};
use crate::mqtt::topics::Topics;
use crate::ops::health::Beat;
use crate::ops::stats::BrokerCounters;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error("embedded broker did not start listening on {addr} within {}", humantime::format_duration(*wait))]
    NotListening { addr: SocketAddr, wait: Duration },
    #[error("embedded broker: no async runtime for the guard: {reason}")]
    NoRuntime { reason: String },
    #[error("embedded broker: no free loopback port for rumqttd: {0}")]
    NoLoopbackPort(#[source] std::io::Error),
    /// rumqttd would not give us the in-process link (`reason`: its error, in words).
    #[error("embedded broker: cannot open the gateway's link: {reason}")]
    Link { reason: String },
    #[error("embedded broker: cannot subscribe the gateway's link to {filter}: {reason}")]
    Subscribe { filter: String, reason: String },
    #[error("embedded broker: cannot start the {thread} thread: {source}")]
    Thread {
        thread: &'static str,
        source: std::io::Error,
    },
    /// The link did not take a publish: the broker's router has stopped.
    #[error("embedded broker: publishing on {topic}: {reason}")]
    Publish { topic: String, reason: String },
}

/// The gateway's own publishing handle into the embedded broker.
pub struct LocalBroker {
    tx: LinkTx,
    /// What the guard's connections share; a reload updates its users, ACLs and limits.
    pub guard: Arc<guard::Shared>,
    pub listen: SocketAddr,
    /// rumqttd's own loopback listener, behind the guard.
    pub backend: SocketAddr,
    /// `<prefix>/<gw>/+/+/set` when local commands are taken.
    command_filter: Option<String>,
    echoes: Arc<Mutex<Echoes>>,
}

const ECHO_CAPACITY: usize = 10_000;

fn rumqttd_config(
    cfg: &BrokerConfig,
    backend: SocketAddr,
    login: &BackendLogin,
) -> rumqttd::Config {
    // The rumqttd sample config uses 100 MiB × 10 segments per filter; a Pi needs far less.
    let segment = (cfg.max_payload_bytes * 4).max(256 * 1024);
    let connections = ConnectionSettings {
        connection_timeout_ms: 5000,
        // The guard enforces max_payload_bytes on the payload; this bounds the whole packet
        // (topic and header included) so rumqttd never refuses what the guard let through.
        max_payload_size: cfg.max_payload_bytes + 2 + 65_535 + 2 + 5,
        max_inflight_count: 100,
        auth: Some(HashMap::from([(
            login.user.clone(),
            login.password.clone(),
        )])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "local".into(),
        listen: backend,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: RouterConfig {
            max_connections: cfg.max_connections + 1,
            max_outgoing_packet_count: 200,
            max_segment_size: segment,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("local".to_string(), server)])),
        ..Default::default()
    }
}

impl LocalBroker {
    /// Starts the broker behind the guard and returns once every listener accepts connections.
    /// `base` is `<prefix>/<gateway id>` (read-only for clients). With `forward`, messages of
    /// local clients matching its rules are committed to the outbox first. Must be called where
    /// a tokio runtime is current (e.g. from `spawn_blocking`): the guard runs on it.
    /// With `commands`, local clients' `<device>/<point>/set` publishes (which the guard lets
    /// through only for users with `commands = true`) go to the command runner too. With
    /// `birth`, Home Assistant's birth messages from local clients are reported to it.
    /// `beat` watches the link thread (see below); the guard counts connections in `counters`.
    pub fn start(
        cfg: &BrokerConfig,
        base: &str,
        forward: Option<Forwarder>,
        commands: Option<(Topics, mpsc::Sender<Command>)>,
        birth: Option<BirthWatch>,
        beat: Beat,
        counters: Arc<BrokerCounters>,
    ) -> Result<LocalBroker, BrokerError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|e| BrokerError::NoRuntime {
            reason: e.to_string(),
        })?;
        // Public listeners first: a busy port is a clear startup error.
        let bound = guard::bind(cfg)?;
        // rumqttd cannot be handed a bound socket; take a free loopback port for it. Even if
        // another process raced for that port, it could not pass as us: clients only ever
        // talk to the guard, which sends nothing but the random backend login there.
        let backend = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(BrokerError::NoLoopbackPort)?;
        let login = BackendLogin::random();
        let shared = Arc::new(guard::Shared::new(
            cfg,
            base,
            backend,
            login.clone(),
            forward,
            counters,
        )?);
        let mut broker = rumqttd::Broker::new(rumqttd_config(cfg, backend, &login));
        let (mut tx, mut rx) = broker.link("fieldbridge").map_err(|e| BrokerError::Link {
            reason: e.to_string(),
        })?;
        let subscribe_err = |filter: &str, e: rumqttd::local::LinkError| BrokerError::Subscribe {
            filter: filter.to_string(),
            reason: e.to_string(),
        };
        let command_filter = commands.as_ref().map(|(t, _)| t.command_filter());
        if let Some(f) = &command_filter {
            tx.subscribe(f.clone()).map_err(|e| subscribe_err(f, e))?;
        }
        if let Some(b) = &birth {
            tx.subscribe(b.topic.clone())
                .map_err(|e| subscribe_err(&b.topic, e))?;
        }
        let echoes = Arc::new(Mutex::new(Echoes::new(ECHO_CAPACITY)));
        let link_echoes = echoes.clone();
        let (command_topics, command_tx) = match commands {
            Some((t, tx)) => (Some(t), Some(tx)),
            None => (None, None),
        };
        let inbound = Inbound::local(command_topics);
        std::thread::Builder::new()
            .name("mqtt-broker".into())
            .spawn(move || {
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                } else {
                    tracing::error!("embedded broker listener stopped");
                }
            })
            .map_err(|source| BrokerError::Thread {
                thread: "mqtt-broker",
                source,
            })?;
        // The router parks a link it has nothing for (`Unschedule`); it must be woken or our
        // publishes stall. Forwarded publishes of local clients arrive here too. The thread
        // comes round every tick to beat, so a hang in it stops the watchdog too.
        std::thread::Builder::new()
            .name("mqtt-link".into())
            .spawn(move || loop {
                beat.busy_blocking();
                let deadline = std::time::Instant::now() + beat.tick();
                match rx.recv_deadline(deadline) {
                    // Nothing within the tick. A closed channel fails at once instead.
                    Err(rumqttd::local::LinkError::RecvTimeout(_))
                        if std::time::Instant::now() >= deadline => {}
                    Ok(Some(Notification::Unschedule)) => {
                        if rx.ready().is_err() {
                            break;
                        }
                    }
                    Ok(Some(Notification::Forward(f))) => {
                        let p = f.publish;
                        // The guard lets only UTF-8 topics through: this copies, never replaces.
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        if birth.as_ref().is_some_and(|b| b.offer(&topic, &p.payload)) {
                            continue;
                        }
                        let verdict = {
                            let mut echoes = link_echoes.lock().unwrap_or_else(|e| e.into_inner());
                            inbound.classify(&topic, p.retain, &p.payload, &mut echoes)
                        };
                        match (verdict.command, &command_tx) {
                            // A retained command would be a standing order replayed later over
                            // newer values: not executed.
                            (Some(CommandTopic::Retained), _) => {
                                tracing::warn!(event = "write_failed", topic = %crate::flow::excerpt(&topic), "retained command ignored (publish commands without the retain flag)");
                            }
                            (Some(CommandTopic::Run { device, point }), Some(ctx)) => {
                                let cmd = Command {
                                    device: device.to_string(),
                                    point: point.to_string(),
                                    payload: p.payload.to_vec(),
                                    origin: inbound.side().origin(),
                                };
                                if ctx.try_send(cmd).is_err() {
                                    tracing::warn!(event = "write_failed", topic = %crate::flow::excerpt(&topic), "command queue full or stopped; local command dropped");
                                }
                            }
                            _ => {}
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            })
            .map_err(|source| BrokerError::Thread {
                thread: "mqtt-link",
                source,
            })?;
        let probe = backend;
        let wait = Duration::from_secs(10);
        let deadline = std::time::Instant::now() + wait;
        while TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(BrokerError::NotListening {
                    addr: backend,
                    wait,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        guard::spawn(bound, cfg, shared.clone(), &rt)?;
        Ok(LocalBroker {
            guard: shared,
            tx,
            listen: cfg.listen,
            backend,
            command_filter,
            echoes,
        })
    }

    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
    ) -> Result<(), BrokerError> {
        if self
            .command_filter
            .as_deref()
            .is_some_and(|f| crate::config::spec::topic::matches(f, topic))
        {
            // Our link subscribes to the command filter and will receive this back; an upstream
            // command delivered here by a [[subscribe]] rule must not run twice.
            self.echoes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(topic.as_bytes(), payload);
        }
        let p = Publish::new(
            bytes::Bytes::copy_from_slice(topic.as_bytes()),
            bytes::Bytes::copy_from_slice(payload),
            retain,
        );
        self.tx
            .send(Packet::Publish(p, None))
            .await
            .map(|_| ())
            .map_err(|e| BrokerError::Publish {
                topic: topic.to_string(),
                reason: e.to_string(),
            })
    }
}
