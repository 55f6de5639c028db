//! The uplink: the upstream session. It sends outbox rows upstream in order at QoS 1 through one
//! connection at a time (`link`, which owns rumqttc) and deletes a row only on the broker's
//! PUBACK for the PUBLISH that carried it.
//!
//! Every connection starts a fresh in-flight table: the outbox is the one source of truth, so
//! after any disconnect sending restarts from the oldest row still stored (a row acked just
//! before the link died may be sent twice; none is lost). The broker keeps our session
//! (`clean_session = false` under the configured, stable `client_id`) so that what our
//! subscriptions match while the gateway is away, commands above all, is queued there and
//! delivered when it returns; nothing of our own sending depends on that session. The Last Will marks the
//! gateway `offline` (retained); `online` is published retained on every connect. Reconnects use
//! capped, jittered exponential backoff; a black-holed link is detected by the keep-alive ping.
//!
//! What to read from the outbox next and what to wait for is decided by the pure send plan
//! (`plan::SendPlan`: backlog and live cursors, window, replay rate, stop and grace); which row
//! a PUBACK names is decided by `outbox::inflight`; how wide the window is, and when a publish
//! the broker sits on is given up on, by `window`. The session loop here only moves data between
//! those two, the outbox and the link: each turn queues what the plan allows, writes it in one
//! flush, then waits for whatever comes first.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use rumqttc::{EventLoop, LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::{
    interval, interval_at, sleep, sleep_until, timeout, timeout_at, Instant, Interval,
    MissedTickBehavior,
};
use tokio_util::sync::CancellationToken;

use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::backoff::reconnect_delay;
use crate::config::spec::topic::topic_name_problem;
use crate::config::{BridgeRule, Tls, Upstream};
use crate::flow::{excerpt, Command, Message, Route, Routed};
use crate::mqtt::birth::BirthWatch;
use crate::mqtt::echo::Echoes;
use crate::mqtt::inbound::{CommandTopic, Inbound};
use crate::mqtt::learned;
use crate::mqtt::link::{Cause, Heard, Link, LinkError};
use crate::mqtt::plan::{read_pace, SendPlan};
use crate::mqtt::strikes::Strikes;
use crate::mqtt::topics::{self, Topics};
use crate::mqtt::window::{given_up, Learned, Unacked, Window};
use crate::ops::health::Beat;
use crate::ops::shutdown::Budget;
use crate::ops::stats::UplinkCounters;
use crate::outbox::inflight::{InFlight, Mismatch, Tag};
use crate::outbox::{Outbox, OutboxError, Row};

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("upstream TLS: cannot read CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("upstream TLS: cannot use {path}: {reason}")]
    ClientCert { path: String, reason: String },
    #[error("upstream TLS: {0}")]
    Tls(String),
}

pub struct Uplink {
    cfg: Upstream,
    transport: Transport,
    topics: Topics,
    outbox: Outbox,
    stats: Arc<UplinkCounters>,
    subscribe: Vec<BridgeRule>,
    downlink: mpsc::Sender<Routed>,
    /// What we published that our own subscriptions will bring back (see `echo`).
    echoes: Mutex<Echoes>,
    beat: Beat,
    /// Where `<prefix>/<gw>/<device>/<point>/set` commands go; `None`: not subscribed.
    commands: Option<mpsc::Sender<Command>>,
    /// Home Assistant's birth topic, when discovery is on.
    birth: Option<BirthWatch>,
    /// What an incoming publish is (command, message for a subscription, echo).
    inbound: Inbound,
    /// Where the window learned from this broker is kept (`learned`); `None`: not kept.
    learned: Option<PathBuf>,
}

/// Why a session ended.
enum End {
    Stopped,
    Failed(SessionError),
    /// Lost after CONNACK, with the rows sent and not acknowledged.
    Lost(SessionError, Vec<i64>),
}

/// Why a session ended without a stop; logged by `run` (as `upstream_connect_failed` or
/// `upstream_disconnected`), then the uplink reconnects.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("reading the outbox: {0}")]
    Outbox(#[source] OutboxError),
    /// The link handed back a packet id that still carries an unacknowledged publish.
    #[error("in-flight bookkeeping: {0:?}")]
    InFlight(Mismatch),
    /// The broker kept answering but left a publish unacknowledged (see `window`).
    #[error(transparent)]
    Unacknowledged(Unacked),
}

fn tls_transport(t: &Tls) -> Result<Transport, UplinkError> {
    let ca_err = |reason: String| UplinkError::CaFile {
        path: t.ca_file.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&t.ca_file).map_err(|e| ca_err(e.to_string()))?;
    for c in certs {
        let c = c.map_err(|e| ca_err(e.to_string()))?;
        roots.add(c).map_err(|e| ca_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no certificate found in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UplinkError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &t.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let file_err = |path: &std::path::Path, reason: String| UplinkError::ClientCert {
                path: path.display().to_string(),
                reason,
            };
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err(cert, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(cert, e.to_string()))?;
            if chain.is_empty() {
                return Err(file_err(cert, "no certificate found in the file".into()));
            }
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| UplinkError::Tls(format!("client certificate and key: {e}")))?
        }
    };
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )))
}

impl Uplink {
    /// `subscribe` rules deliver upstream messages into the local broker through `downlink`.
    pub fn new(
        cfg: Upstream,
        topics: Topics,
        outbox: Outbox,
        subscribe: Vec<BridgeRule>,
        downlink: mpsc::Sender<Routed>,
        beat: Beat,
    ) -> Result<Uplink, UplinkError> {
        let transport = match &cfg.tls {
            Some(t) => tls_transport(t)?,
            None => Transport::Tcp,
        };
        Ok(Uplink {
            cfg,
            transport,
            inbound: Inbound::upstream(subscribe.clone(), None),
            topics,
            outbox,
            stats: Arc::new(UplinkCounters::default()),
            subscribe,
            downlink,
            echoes: Mutex::new(Echoes::new(10_000)),
            beat,
            commands: None,
            birth: None,
            learned: None,
        })
    }

    /// Counts into `stats` (a reload's new connection continues the counters of the old).
    pub fn with_stats(mut self, stats: Arc<UplinkCounters>) -> Self {
        self.stats = stats;
        self
    }

    /// Subscribes to this gateway's command topics and hands every command to `tx`.
    pub fn with_commands(mut self, tx: mpsc::Sender<Command>) -> Self {
        self.commands = Some(tx);
        self.inbound = Inbound::upstream(self.subscribe.clone(), Some(self.topics.clone()));
        self
    }

    /// Starts with the window learned from this broker in an earlier run, and keeps what it
    /// learns, in `data_dir` (see `window::Learned`).
    pub fn with_learned_window(mut self, data_dir: &Path) -> Self {
        self.learned = Some(data_dir.join(learned::FILE));
        self
    }

    /// Subscribes to Home Assistant's birth topic and reports each birth to `watch`.
    pub fn with_birth(mut self, watch: BirthWatch) -> Self {
        self.birth = Some(watch);
        self
    }

    /// Queues a QoS 1 publish, remembering the message if our own subscriptions will echo it;
    /// returns its packet id.
    fn publish(
        &self,
        link: &mut Link,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<u16, LinkError> {
        // Our command subscription brings back what we publish on a command topic (a local
        // command a `[[forward]]` rule passes on) just as a `[[subscribe]]` filter would.
        let on_command_topic =
            self.commands.is_some() && self.topics.parse_command(&topic).is_some();
        if on_command_topic
            || self
                .subscribe
                .iter()
                .any(|r| crate::config::spec::topic::matches(&r.filter, &topic))
        {
            self.echoes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(topic.as_bytes(), &payload);
        }
        link.publish(topic, payload, retain)
    }

    /// A publish from upstream: a command goes to the command runner, a message for one of our
    /// subscriptions into the local broker, our own echo nowhere (see `inbound`). Never blocks
    /// the event loop on the runner: when it is behind, the command is refused in the log
    /// rather than stalling acks.
    async fn receive(&self, p: &rumqttc::Publish) {
        if let Some(b) = &self.birth {
            b.offer(&p.topic, &p.payload);
        }
        let verdict = {
            let mut echoes = self.echoes.lock().unwrap_or_else(|e| e.into_inner());
            self.inbound
                .classify(&p.topic, p.retain, &p.payload, &mut echoes)
        };
        match (verdict.command, &self.commands) {
            (Some(CommandTopic::Retained), _) => {
                // A retained command would run again at every reconnect, hours later, over newer
                // values. Not executed; the sender should clear it.
                tracing::warn!(event = "write_failed", topic = %excerpt(&p.topic), "retained command ignored (publish commands without the retain flag, and clear this one with an empty retained message)");
            }
            (Some(CommandTopic::Run { device, point }), Some(tx)) => {
                let cmd = Command {
                    device: device.to_string(),
                    point: point.to_string(),
                    payload: p.payload.to_vec(),
                    origin: self.inbound.side().origin(),
                };
                if tx.try_send(cmd).is_err() {
                    tracing::warn!(event = "write_failed", topic = %excerpt(&p.topic), "command queue full or stopped; command dropped");
                }
            }
            _ => {}
        }
        let Some(topic) = verdict.pass_on else {
            return;
        };
        let routed = Routed {
            message: Message {
                topic,
                payload: p.payload.to_vec(),
                retain: p.retain,
            },
            // Already in the upstream broker: delivered locally only.
            route: Route::LocalOnly,
        };
        if self.downlink.send(routed).await.is_err() {
            tracing::debug!(topic = %p.topic, "pipeline stopped; upstream message not delivered locally");
        }
    }

    pub fn stats(&self) -> Arc<UplinkCounters> {
        self.stats.clone()
    }

    fn options(&self) -> MqttOptions {
        let c = &self.cfg;
        let mut o = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        o.set_keep_alive(c.keep_alive);
        // A persistent session: commands published while the gateway is stopped or cut off wait
        // in the broker and run when it returns (too old ones are refused, see `commands`).
        o.set_clean_session(false);
        o.set_last_will(LastWill::new(
            self.topics.gateway_status(),
            topics::OFFLINE,
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(u) = &c.username {
            o.set_credentials(u.clone(), c.password.clone().unwrap_or_default());
        }
        // Packet ids cycle through rumqttc's inflight range; making it larger than our window
        // keeps a slow PUBACK from colliding with a new publish.
        o.set_inflight(c.inflight.saturating_mul(4));
        o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        o.set_transport(self.transport.clone());
        o
    }

    /// Runs until `stop` is cancelled; then gives in-flight publishes what is left of the stop's
    /// `budget` (at most `grace`) to be acknowledged, publishes `offline` and disconnects cleanly.
    pub async fn run(self, stop: CancellationToken, grace: Duration, budget: Budget) {
        let mut attempt = 0u32;
        let mut strikes = Strikes::default();
        let mut window = self.first_window();
        self.stats
            .window
            .store(window.size() as u64, Ordering::Relaxed);
        // A row the broker closed the connection on `STRIKES` times in a row: set aside.
        let mut refused = None;
        loop {
            let reason = match self
                .session(
                    &stop,
                    (grace, &budget),
                    &mut attempt,
                    (&mut strikes, &mut window),
                    refused.take(),
                )
                .await
            {
                End::Stopped => return,
                End::Lost(reason, unacked) => {
                    refused = strikes.session_lost(&unacked);
                    reason
                }
                End::Failed(reason) => reason,
            };
            if self.stats.connected.swap(false, Ordering::Relaxed) {
                tracing::warn!(event = "upstream_disconnected", error = %reason, "upstream connection lost");
            } else {
                tracing::warn!(event = "upstream_connect_failed", host = %self.cfg.host, port = self.cfg.port, error = %reason, "cannot connect upstream");
            }
            attempt = attempt.saturating_add(1);
            let delay = reconnect_delay(
                self.cfg.reconnect_min,
                self.cfg.reconnect_max,
                attempt,
                rand::random::<f64>(),
            );
            tracing::debug!(retry_in = ?delay, "upstream reconnect scheduled");
            self.beat.promise(delay + self.beat.soon()).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep(delay) => {}
            }
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The configured window, or the narrower one learned from this broker in an earlier run.
    fn first_window(&self) -> Window {
        let configured = usize::from(self.cfg.inflight);
        let Some(path) = &self.learned else {
            return Window::new(configured);
        };
        let window = Window::resume(configured, &self.broker(), learned::read(path).as_ref());
        if window.size() < configured {
            tracing::info!(
                event = "upstream_window_learned",
                window = window.size(),
                inflight = configured,
                path = %path.display(),
                "starting with {} publishes in flight, learned from this broker in an earlier \
                 run (upstream.inflight = {configured}); delete the file to try {configured} again",
                window.size()
            );
        }
        window
    }

    /// Keeps the window after a halving for the next start; a failure costs that start the
    /// `ack_timeout`s of learning it again, nothing else.
    async fn remember(&self, window: usize) {
        let Some(path) = self.learned.clone() else {
            return;
        };
        let learned = Learned {
            broker: self.broker(),
            configured: usize::from(self.cfg.inflight),
            window,
        };
        let written = tokio::task::spawn_blocking(move || {
            learned::write(&path, &learned).map_err(|e| (path, e))
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err((path, e))) => {
                tracing::error!(event = "upstream_window_not_kept", path = %path.display(), error = %e, "cannot keep the learned upstream window; the next start learns it again");
            }
            // The blocking task itself failed (a panic, or the runtime shutting down).
            Err(e) => {
                tracing::error!(event = "upstream_window_not_kept", error = %e, "cannot keep the learned upstream window; the next start learns it again");
            }
        }
    }

    /// `host:port`: the broker a learned window belongs to.
    fn broker(&self) -> String {
        format!("{}:{}", self.cfg.host, self.cfg.port)
    }

    async fn session(
        &self,
        stop: &CancellationToken,
        (grace, budget): (Duration, &Budget),
        attempt: &mut u32,
        (strikes, window): (&mut Strikes, &mut Window),
        refused: Option<i64>,
    ) -> End {
        let size = window.size();
        // Requests never go through rumqttc's channel (see `link`), so it stays small.
        let mut ev = EventLoop::new(self.options(), 1);
        let mut net = ev.network_options();
        net.set_connection_timeout(self.cfg.connect_timeout.as_secs().max(1));
        // The link batches its writes itself; Nagle would hold a batch back until the broker
        // acknowledged the previous one at the TCP level.
        net.set_tcp_nodelay(true);
        ev.set_network_options(net);

        self.beat.waiting(connect_budget(&self.cfg));
        let addr = format!("{}:{}", self.cfg.host, self.cfg.port);
        let wait = self.cfg.connect_timeout + Duration::from_secs(1);
        let mut link = tokio::select! {
            _ = stop.cancelled() => return End::Stopped,
            r = Link::connect(ev, addr, wait, self.cfg.connect_timeout.max(Duration::from_secs(1))) => match r {
                Ok(link) => link,
                Err(e) => return End::Failed(e.into()),
            },
        };
        *attempt = 0;
        self.stats.connected.store(true, Ordering::Relaxed);
        tracing::info!(event = "upstream_connected", host = %self.cfg.host, port = self.cfg.port, "connected upstream");

        let mut inflight = InFlight::default();
        let status = self.topics.gateway_status();
        if let Err(e) = self.hello(&mut link, &mut inflight, &status) {
            return End::Failed(e);
        }

        if let Err(e) = self.outbox.reread().await {
            return End::Failed(SessionError::Outbox(e));
        }
        let mut latest = self.outbox.latest();
        // Rows up to the newest id now were stored before this connection: the backlog.
        let replay_end = *latest.borrow_and_update();
        let mut plan = SendPlan::new(
            size,
            replay_end,
            self.cfg.replay_rate,
            std::time::Instant::now(),
        );
        let mut acks: Vec<i64> = Vec::new();
        // The last paced read found nothing (see `plan::read_pace`).
        let mut heard_nothing = false;
        // When the broker last sent us anything, and when to look next for a publish it sits on
        // (`window::given_up` walks the window, so not on every turn of a drain).
        let mut heard_at = None;
        let mut look_at = std::time::Instant::now();
        // One timer for the whole session: a `sleep` made on every turn of a drain would arm and
        // disarm a timer per event.
        let mut tick = interval(self.beat.tick());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // rumqttc's pace: a PINGREQ every keep-alive whatever else is sent, and a link that did
        // not answer the last one is dead.
        let keep_alive = self.cfg.keep_alive;
        let mut ping = (!keep_alive.is_zero()).then(|| {
            let mut i = interval_at(Instant::now() + keep_alive, keep_alive);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        loop {
            // The loop comes round at least every tick (the select below), so it can promise
            // its next beat soon even while nothing happens.
            self.beat.busy().await;
            let newest = *latest.borrow_and_update();
            loop {
                // While probing for a refused row (see `strikes`), one row in flight at a time.
                let probing = strikes.probing();
                let busy = match probing && inflight.rows() > 0 {
                    true => size,
                    false => inflight.len(),
                };
                let Some(mut fetch) = plan.next_fetch(busy, newest, std::time::Instant::now())
                else {
                    break;
                };
                if probing {
                    fetch.max = 1;
                }
                let rows = match self
                    .outbox
                    .fetch_range(fetch.after, fetch.upto, fetch.max)
                    .await
                {
                    Ok(rows) => rows,
                    Err(e) => return End::Failed(SessionError::Outbox(e)),
                };
                if plan.fetched(&fetch, rows.len(), rows.last().map(|r| r.id)) {
                    tracing::debug!("backlog replayed");
                }
                match self.send_rows(&mut link, &mut inflight, rows, refused) {
                    Ok(dead) => self.dead_letter(dead).await,
                    Err(SessionError::Link(LinkError::Lost(Cause::PacketIdInUse(pkid)))) => {
                        let why = Unacked::Overtaken(pkid);
                        return self.give_up(link, &inflight, window, why).await;
                    }
                    Err(e) => return End::Failed(e),
                }
            }
            if link.has_queued() {
                if let Err(end) = self
                    .write_out(&mut link, &inflight, stop, plan.deadline())
                    .await
                {
                    self.flush_acks(&mut acks).await;
                    return end;
                }
            }
            // The plan compares with `newest` as marked seen at the top of the round, not with
            // the id now: a commit since then must wake `changed()` below, or its rows would wait
            // for a PUBACK or the tick (7.5 s without a watchdog) while the window has room.
            let wait = plan.wait(inflight.len());
            let deadline = wait.deadline.map(Instant::from_std);
            tokio::select! {
                biased;
                _ = stop.cancelled(), if !plan.stopping() => {
                    let now = std::time::Instant::now();
                    plan.stop(now, budget.left(now, grace));
                }
                _ = sleep_until_some(deadline) => break,
                // Before the read: a flood of incoming messages must not hold back our pings.
                _ = tick_some(ping.as_mut()) => {
                    if let Err(e) = link.ping() {
                        self.flush_acks(&mut acks).await;
                        return End::Lost(e.into(), inflight.sent_rows());
                    }
                }
                r = link.read(read_pace(inflight.len(), plan.stopping(), heard_nothing)) => {
                    let heard = match r {
                        Ok(n) => {
                            heard_nothing = n == 0;
                            if n > 0 {
                                heard_at = Some(std::time::Instant::now());
                            }
                            self.on_heard(&mut link, &mut inflight, strikes, &mut acks).await
                        }
                        Err(e) => Err(e.into()),
                    };
                    if let Err(e) = heard {
                        self.flush_acks(&mut acks).await;
                        return End::Lost(e, inflight.sent_rows());
                    }
                }
                r = latest.changed(), if wait.newer_rows => {
                    if r.is_err() {
                        plan.latest_closed();
                    }
                }
                _ = sleep_some(wait.replay_token) => {}
                _ = tick.tick() => {}
            }
            self.flush_acks(&mut acks).await;
            if plan.finished(inflight.rows()) {
                break;
            }
            let now = std::time::Instant::now();
            if now >= look_at && !plan.stopping() {
                look_at = now + self.beat.tick();
                let limit = self.cfg.ack_timeout;
                if given_up(inflight.oldest_sent(), heard_at, now, limit) {
                    let why = Unacked::Waited(limit);
                    return self.give_up(link, &inflight, window, why).await;
                }
            }
        }
        let deadline = plan.deadline().map_or_else(Instant::now, Instant::from_std);
        if inflight.rows() > 0 {
            tracing::warn!(
                unacked = inflight.rows(),
                "shutdown deadline reached with publishes unacknowledged; they stay in the outbox and are sent after restart"
            );
        }
        self.say_goodbye(
            &mut link,
            &mut inflight,
            &status,
            deadline.max(Instant::now() + Duration::from_secs(1)),
        )
        .await;
        End::Stopped
    }

    /// Queues what every connection starts with: `online` (retained) and the subscriptions.
    fn hello(
        &self,
        link: &mut Link,
        inflight: &mut InFlight,
        status: &str,
    ) -> Result<(), SessionError> {
        let pkid = self.publish(link, status.into(), topics::ONLINE.into(), true)?;
        inflight
            .sent(pkid, Tag::Control, std::time::Instant::now())
            .map_err(SessionError::InFlight)?;
        for rule in &self.subscribe {
            link.subscribe(rule.filter.clone())?;
        }
        if self.commands.is_some() {
            link.subscribe(self.topics.command_filter())?;
        }
        if let Some(b) = &self.birth {
            link.subscribe(b.topic.clone())?;
        }
        Ok(())
    }

    /// Writes what the session queued. Almost always done at once; only when the socket has no
    /// room does this arm a timer (`Link::write_timeout`: the link is stalled) and listen for a
    /// stop, which then ends the session without the goodbye a stalled link cannot carry (the
    /// Last Will says `offline`; unacknowledged rows stay in the outbox).
    async fn write_out(
        &self,
        link: &mut Link,
        inflight: &InFlight,
        stop: &CancellationToken,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), End> {
        let limit = link.write_timeout();
        let out = link.flush();
        tokio::pin!(out);
        let r = match (&mut out).now_or_never() {
            Some(r) => r,
            None => {
                self.beat.waiting(limit);
                let stopping = deadline.is_some();
                tokio::select! {
                    r = timeout(limit, &mut out) => {
                        r.unwrap_or(Err(LinkError::Lost(Cause::WriteStalled(limit))))
                    }
                    _ = stop.cancelled(), if !stopping => return Err(self.abandon(inflight)),
                    _ = sleep_until_some(deadline.map(Instant::from_std)) => return Err(self.abandon(inflight)),
                }
            }
        };
        r.map_err(|e| End::Lost(e.into(), inflight.sent_rows()))
    }

    /// Ends a session whose broker left a publish unacknowledged (see `window`): halves the
    /// window; the rows in flight go again from the outbox, and `strikes` sends them one at a
    /// time until each is acknowledged, so a row this broker never takes is found and set aside.
    /// Says goodbye without a Will when nothing is queued, since the reconnect follows at once;
    /// publishes queued and not yet written are not sent into a session about to end (the Will
    /// then marks the gateway offline until it is back).
    async fn give_up(
        &self,
        mut link: Link,
        inflight: &InFlight,
        window: &mut Window,
        why: Unacked,
    ) -> End {
        let was = window.size();
        let now = window.shrink().unwrap_or(was);
        self.stats.ack_timeouts.fetch_add(1, Ordering::Relaxed);
        self.stats.window.store(now as u64, Ordering::Relaxed);
        self.remember(now).await;
        let rows = inflight.sent_rows();
        tracing::error!(
            event = "upstream_ack_timeout",
            oldest_row = rows.first().copied(),
            unacked = rows.len(),
            window_was = was,
            window = now,
            "upstream broker answers but {why}; it may cap unacknowledged publishes below the \
             window (AWS IoT Core takes 100): reconnecting to send again from the outbox with \
             {now} in flight (was {was}), and starting there after a restart"
        );
        if !link.has_queued() && link.disconnect().is_ok() {
            let _ = timeout(Duration::from_secs(1), link.flush()).await;
        }
        End::Lost(SessionError::Unacknowledged(why), rows)
    }

    /// Ends a session whose link is stalled at shutdown.
    fn abandon(&self, inflight: &InFlight) -> End {
        tracing::warn!(
            event = "upstream_disconnected",
            unacked = inflight.rows(),
            "upstream link stalled at shutdown; dropped without a goodbye (the broker publishes our Last Will); unacknowledged rows stay in the outbox"
        );
        self.stats.connected.store(false, Ordering::Relaxed);
        End::Stopped
    }

    /// Acts on what the last `Link::read` brought; `Err` ends the session.
    async fn on_heard(
        &self,
        link: &mut Link,
        inflight: &mut InFlight,
        strikes: &mut Strikes,
        acks: &mut Vec<i64>,
    ) -> Result<(), SessionError> {
        while let Some(h) = link.heard() {
            match h {
                Heard::Acked(pkid) => match inflight.on_puback(pkid) {
                    Ok(Tag::Row(id)) => {
                        strikes.acked(id);
                        acks.push(id)
                    }
                    Ok(Tag::Control) => {}
                    Err(m) => tracing::warn!(pkid, "unexpected PUBACK: {m:?}"),
                },
                Heard::Publish(p) => self.receive(&p).await,
            }
        }
        Ok(())
    }

    /// Publishes `offline` (retained) and disconnects cleanly. A clean DISCONNECT suppresses the
    /// Last Will, so the status must be published explicitly.
    async fn say_goodbye(
        &self,
        link: &mut Link,
        inflight: &mut InFlight,
        status: &str,
        deadline: Instant,
    ) {
        let mut acks = Vec::new();
        let said = match self.publish(link, status.into(), topics::OFFLINE.into(), true) {
            Ok(pkid) => inflight
                .sent(pkid, Tag::Control, std::time::Instant::now())
                .is_ok(),
            Err(_) => false,
        };
        if said {
            Self::see_off(link, inflight, &mut acks, deadline).await;
        }
        self.flush_acks(&mut acks).await;
        self.stats.connected.store(false, Ordering::Relaxed);
        tracing::info!(
            event = "upstream_disconnected",
            "disconnected from upstream (shutdown)"
        );
    }

    /// Sends what is queued and waits for the last PUBACKs, then the DISCONNECT; gives up at
    /// `deadline` or when the link breaks (the rows stay in the outbox).
    async fn see_off(
        link: &mut Link,
        inflight: &mut InFlight,
        acks: &mut Vec<i64>,
        deadline: Instant,
    ) {
        loop {
            if !link.has_queued() && inflight.is_empty() {
                if link.disconnect().is_ok() {
                    let _ = timeout_at(deadline, link.flush()).await;
                }
                break;
            }
            if link.has_queued() {
                match timeout_at(deadline, link.flush()).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            if inflight.is_empty() {
                continue;
            }
            match timeout_at(deadline, link.read(None)).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
            while let Some(h) = link.heard() {
                if let Heard::Acked(pkid) = h {
                    if let Ok(Tag::Row(id)) = inflight.on_puback(pkid) {
                        acks.push(id);
                    }
                }
            }
        }
    }

    /// Publishes `rows`, except those no broker would take (`unsendable`) and the one this
    /// broker refused (`refused`, see `strikes`): those come back with the reason, for the
    /// dead-letter table.
    fn send_rows(
        &self,
        link: &mut Link,
        inflight: &mut InFlight,
        rows: Vec<Row>,
        refused: Option<i64>,
    ) -> Result<Vec<(Row, &'static str)>, SessionError> {
        let mut dead = Vec::new();
        let now = std::time::Instant::now();
        for r in rows {
            if refused == Some(r.id) {
                dead.push((r, "refused_by_upstream"));
                continue;
            }
            if let Some(reason) = unsendable(&r.message, MAX_PACKET) {
                dead.push((r, reason));
                continue;
            }
            let m = r.message;
            let pkid = self.publish(link, m.topic, m.payload, m.retain)?;
            inflight
                .sent(pkid, Tag::Row(r.id), now)
                .map_err(SessionError::InFlight)?;
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(dead)
    }

    /// Moves rows that can never be sent out of the queue (one bad row must not hold back every
    /// row behind it), each logged at error level and counted on the stats topic.
    async fn dead_letter(&self, dead: Vec<(Row, &'static str)>) {
        if dead.is_empty() {
            return;
        }
        for (r, reason) in &dead {
            tracing::error!(
                event = "outbox_dead_letter",
                id = r.id,
                topic = %r.message.topic,
                reason = *reason,
                bytes = r.message.size(),
                "a stored message cannot be sent upstream; moved to the dead-letter table"
            );
        }
        let rows = dead.iter().map(|(r, reason)| (r.id, *reason)).collect();
        if let Err(e) = self.outbox.dead_letter(rows).await {
            tracing::error!(error = %e, "cannot move rows to the dead-letter table; they are sent again after a restart");
        }
    }

    async fn flush_acks(&self, acks: &mut Vec<i64>) {
        if acks.is_empty() {
            return;
        }
        let n = acks.len() as u64;
        if let Err(e) = self.outbox.ack(std::mem::take(acks)).await {
            tracing::error!(error = %e, "cannot record acknowledgements; rows will be sent again");
        }
        self.stats.acked.fetch_add(n, Ordering::Relaxed);
    }
}

/// Sleeps until `at`; never without one. Nothing reads the clock or arms a timer until the
/// future is polled, so a `select!` branch that waits for nothing costs nothing per turn.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `sleep_until_some` for a duration from when it is first polled.
async fn sleep_some(d: Option<Duration>) {
    match d {
        Some(d) => sleep(d).await,
        None => std::future::pending().await,
    }
}

/// `interval.tick()` when there is one; never without.
async fn tick_some(i: Option<&mut Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The largest packet we send or take upstream.
const MAX_PACKET: usize = 1024 * 1024;

/// Why a stored message can never be published, or `None`: a topic no PUBLISH may carry (the
/// same rule the guard applies to local clients), or a packet over `max_packet` bytes (topic,
/// payload and the fixed and variable header of a QoS 1 PUBLISH).
pub fn unsendable(m: &Message, max_packet: usize) -> Option<&'static str> {
    if topic_name_problem(&m.topic).is_some() || m.topic.len() > usize::from(u16::MAX) {
        return Some("invalid_topic");
    }
    if m.topic.len() + m.payload.len() + 2 + 2 + 5 > max_packet {
        return Some("too_large");
    }
    None
}

/// How long one connection attempt (or one wait for the broker) may take before the uplink
/// counts as hung; covers a slow outbox read too.
pub fn connect_budget(cfg: &Upstream) -> Duration {
    cfg.connect_timeout + Duration::from_secs(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_no_broker_would_take_are_named_and_others_pass() {
        let m = |topic: &str, payload: usize| Message {
            topic: topic.into(),
            payload: vec![b'x'; payload],
            retain: false,
        };
        let cases: &[(&str, Message, Option<&str>)] = &[
            ("a reading", m("fieldbridge/gw/dev/t", 60), None),
            (
                "a forwarded Will on a wildcard",
                m("lan/#", 6),
                Some("invalid_topic"),
            ),
            ("a plus level", m("a/+/b", 1), Some("invalid_topic")),
            ("an empty topic", m("", 1), Some("invalid_topic")),
            ("a NUL in the topic", m("a\0b", 1), Some("invalid_topic")),
            ("exactly the largest packet", m("t", 1000 - 10), None),
            ("one byte over", m("t", 1000 - 9), Some("too_large")),
        ];
        for (name, msg, want) in cases {
            assert_eq!(unsendable(msg, 1000), *want, "{name}");
        }
    }
}
