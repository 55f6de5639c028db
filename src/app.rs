//! Builds every task from a validated config and owns the start and stop order. Every loop gets
//! what it needs from here: its channels, its counters and its liveness beat (one `Health`
//! registry per run, no process-wide state).
//!
//! Start: outbox (durable store first) → embedded broker → pipeline → uplink → pollers → the
//! HTTP listener (`[http]`; it only reads what the loops count).
//! Stop: the HTTP listener (its event streams end) → pollers (no new readings) → pipeline
//! drains and commits everything queued → uplink gets what is left of the stop's one
//! `shutdown_timeout` budget (`ops::shutdown::Budget`) for in-flight publishes, publishes
//! `offline`, disconnects → the outbox commits the last acks and
//! checkpoints its WAL (`Outbox::close`). The whole stop has a hard deadline
//! (`ops::shutdown`), so a hung loop cannot hold it up.
//!
//! Reload (`run_reloadable`, one request per SIGHUP): the file is loaded as `run` loads it,
//! `reload::plan` says what changes or why it cannot, and this module applies it to the running
//! pieces (guard rights, uplink, pipeline report plans, `fleet`); see ARCHITECTURE.md.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::commands::{Commands, Targets};
use crate::config::{Config, ConfigError};
use crate::fleet::{Deps, Fleet};
use crate::flow::{Command, Message, Route, Routed};
use crate::guard::{self, Forwarder};
use crate::homeassistant::{self, discovery, Discovery};
use crate::http::{self, HttpError};
use crate::mqtt::birth::BirthWatch;
use crate::mqtt::broker::{BrokerError, LocalBroker};
use crate::mqtt::topics::{self, Topics};
use crate::mqtt::uplink::{self, Uplink, UplinkError};
use crate::ops::health::Health;
use crate::ops::stats::{
    Board, BrokerCounters, CommandCounters, LineCounters, Named, PollCounters, Reporter,
    SerialCounters, Sources, UplinkCounters,
};
use crate::ops::{memory, shutdown, watchdog};
use crate::outbox::{Outbox, OutboxError};
use crate::pipeline::{self, Pipeline};
use crate::reload::{self, Plan};
use crate::report::{DevicePlan, ReportState};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    #[error(transparent)]
    Abandoned(#[from] shutdown::Abandoned),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("internal: {0}")]
    Internal(String),
}

/// Runs the gateway until `stop` is cancelled. Once the outbox is open, the broker listens and
/// every loop runs, systemd is told `READY=1` (see `ops::watchdog`) and `on_ready` is called.
/// `broker_counters` are also fed by the log layer (`ops::telemetry`), which sees what rumqttd
/// skipped for lagging subscribers.
pub async fn run(
    cfg: Config,
    broker_counters: Arc<BrokerCounters>,
    stop: CancellationToken,
    on_ready: impl FnOnce(),
) -> Result<(), AppError> {
    run_reloadable(cfg, None, broker_counters, stop, on_ready).await
}

/// Where a reload's new config comes from, and the requests (one per SIGHUP) to read it.
pub struct Reloads {
    pub file: PathBuf,
    pub requests: mpsc::Receiver<()>,
}

/// `run`, and with `reloads`, each request reads `reloads.file` again and applies it (see
/// `reload`): a file that does not validate, or that changes what cannot change live, is
/// logged and refused, and the gateway keeps running on the config it has.
pub async fn run_reloadable(
    cfg: Config,
    reloads: Option<Reloads>,
    broker_counters: Arc<BrokerCounters>,
    stop: CancellationToken,
    on_ready: impl FnOnce(),
) -> Result<(), AppError> {
    let started = tokio::time::Instant::now();
    let health = Health::with_pace(watchdog::pace());
    let topics = Topics::new(&cfg.gateway.topic_prefix, &cfg.gateway.id);
    let writer_beat = health.register("outbox writer", health.pace().soon);
    let outbox = Outbox::open_watched(
        &cfg.gateway.data_dir,
        &cfg.outbox,
        Some(Box::new(writer_beat)),
    )
    .await?;
    tracing::info!(path = %outbox.path().display(), "outbox open");

    let (routed_tx, routed_rx) = mpsc::channel(256);
    // Only a gateway with writable points takes commands (upstream and from local clients).
    let writable = cfg
        .devices
        .iter()
        .any(|d| d.points.iter().any(|p| p.write.is_some()));
    let (command_tx, command_rx) = mpsc::channel(64);
    let broker_counters = cfg.broker.as_ref().map(|_| broker_counters);
    // Home Assistant's birth message, from either broker, asks for discovery again.
    let (birth, births) = match &cfg.homeassistant {
        Some(ha) => {
            let (tx, rx) = mpsc::channel(1);
            let topic = format!("{}/status", ha.discovery_prefix);
            (Some(BirthWatch { topic, tx }), Some(rx))
        }
        None => (None, None),
    };
    let mut local = match cfg.broker.clone() {
        Some(b) => {
            let forward = match (&broker_counters, cfg.forward.is_empty()) {
                (Some(c), false) => Some(Forwarder::new(
                    cfg.forward.clone(),
                    outbox.clone(),
                    c.clone(),
                )),
                _ => None,
            };
            let base = format!("{}/{}", cfg.gateway.topic_prefix, cfg.gateway.id);
            let local_commands = writable.then(|| (topics.clone(), command_tx.clone()));
            let link_beat = health.register("broker link", Duration::from_secs(10));
            let local_birth = birth.clone();
            let counters = broker_counters.clone().unwrap_or_default();
            let broker = tokio::task::spawn_blocking(move || {
                LocalBroker::start(
                    &b,
                    &base,
                    forward,
                    local_commands,
                    local_birth,
                    link_beat,
                    counters,
                )
            })
            .await
            .map_err(|e| AppError::Internal(e.to_string()))??;
            tracing::info!(listen = %broker.listen, backend = %broker.backend, "embedded MQTT broker listening");
            Some(broker)
        }
        None => None,
    };
    if let Some(b) = local.as_mut() {
        b.publish(&topics.gateway_status(), topics::ONLINE.as_bytes(), true)
            .await?;
    }

    let uplink = match &cfg.upstream {
        Some(_) => make_uplink(
            &cfg,
            &topics,
            &outbox,
            &routed_tx,
            &health,
            writable.then_some(&command_tx),
            None,
            birth.as_ref(),
        )?,
        None => {
            tracing::warn!("no [upstream] configured: messages are kept in the outbox (bounded) and published locally only");
            None
        }
    };
    let board = Board::new(
        cfg.devices
            .iter()
            .map(|d| &d.name)
            .chain(cfg.serial_devices.iter().map(|d| &d.name)),
    );
    // A reload cannot add or remove [http], so this holds for the life of the process.
    let board = Arc::new(if cfg.http.is_some() {
        board.keeping_values()
    } else {
        board
    });
    let line_stats: Named<LineCounters> = Arc::default();
    let serial_stats: Named<SerialCounters> = Arc::default();
    let uplink_stats = uplink.as_ref().map(|u| u.stats());
    let poll_stats: Named<PollCounters> = Arc::default();
    let command_counters = Arc::new(CommandCounters::default());
    let sources = Sources {
        health: health.clone(),
        outbox: outbox.clone(),
        uplink: uplink_stats.clone(),
        board: board.clone(),
        lines: line_stats.clone(),
        serial: serial_stats.clone(),
        broker: broker_counters,
        polls: poll_stats.clone(),
        commands: command_counters.clone(),
        started,
    };

    let (tx, rx) = mpsc::channel(1024);
    let (plans_tx, plans_rx) = mpsc::unbounded_channel();
    let guard = local.as_ref().map(|b| b.guard.clone());
    let pipe_stop = CancellationToken::new();
    let pipe = tokio::spawn(pipeline::run(
        Pipeline {
            outbox: outbox.clone(),
            local,
            topics: topics.clone(),
            board: board.clone(),
            // Promised within `soon`, like every loop that has not run yet: a promise of zero
            // made the watchdog name the pipeline stalled (an ERROR line) whenever its task was
            // first polled a millisecond after the watchdog's first look, as on a loaded machine.
            beat: health.register("pipeline", health.pace().soon),
            report: ReportState::from_config(&cfg),
            plans: plans_rx,
        },
        rx,
        routed_rx,
        pipe_stop.clone(),
    ));
    let stats_stop = CancellationToken::new();
    let reporter = Reporter {
        interval: cfg.gateway.stats_interval,
        sources: sources.clone(),
        topic: topics.stats(),
        tx: routed_tx.clone(),
    };
    let stats_task = tokio::spawn(reporter.run(stats_stop.clone()));
    let mut discovery = DiscoveryRun::start(&cfg, &topics, &routed_tx, births);
    let mut uplink_stop = CancellationToken::new();
    let budget = shutdown::Budget::default();
    let mut uplink_task = uplink.map(|u| {
        tokio::spawn(u.run(
            uplink_stop.clone(),
            cfg.gateway.shutdown_timeout,
            budget.clone(),
        ))
    });

    let commands_stop = CancellationToken::new();
    let writers: Targets = Arc::default();
    // Bus tasks stop after the pollers, so no poll is left waiting on a vanished line. They
    // open nothing until the first request.
    let mut fleet = Fleet::start(
        &cfg,
        Deps {
            tx,
            health: health.clone(),
            board: board.clone(),
            writers: writers.clone(),
            line_stats,
            serial_stats,
            poll_stats,
        },
    );
    let commands = Commands {
        targets: writers,
        topics: topics.clone(),
        results: routed_tx.clone(),
        max_age: cfg.upstream.as_ref().map(|u| u.command_max_age),
        counters: command_counters,
    };
    let commands_task = tokio::spawn(commands.run(command_rx, commands_stop.clone()));
    let http_stop = CancellationToken::new();
    let http_task = match &cfg.http {
        Some(h) => {
            let users = cfg
                .broker
                .iter()
                .flat_map(|b| &b.users)
                .filter_map(|u| Some((u.name.clone(), u.password_hash.clone()?)))
                .collect();
            let gateway = Arc::from(cfg.gateway.id.as_str());
            Some(http::start(h, users, sources.clone(), gateway, http_stop.clone()).await?)
        }
        None => None,
    };
    // READY goes out only now: the outbox is open, the broker listens, every loop runs.
    let watchdog_task = tokio::spawn(watchdog::supervise(sources, stop.clone()));
    on_ready();
    let released = memory::release_freed();
    tracing::info!(devices = cfg.devices.len() + cfg.serial_devices.len(), gateway = %cfg.gateway.id, released_kib = released / 1024, "fieldbridge running");

    let mut cfg = cfg;
    if let Some(mut reloads) = reloads {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                r = reloads.requests.recv() => {
                    if r.is_none() {
                        stop.cancelled().await;
                        break;
                    }
                }
            }
            watchdog::reloading();
            let status = match load_reload(&reloads.file, &cfg) {
                Err(e) => {
                    let problems = e.problems();
                    for p in &problems {
                        tracing::error!(event = "config_reload_refused", "{p}");
                    }
                    tracing::error!(event = "config_reload_refused", file = %reloads.file.display(), problems = problems.len(), "the new configuration was not applied; the gateway keeps running on the old one");
                    "reload refused; running on the previous configuration (see the log)"
                        .to_string()
                }
                Ok((new, plan)) => {
                    let mut running = Running {
                        fleet: &mut fleet,
                        plans: &plans_tx,
                        routed: &routed_tx,
                        topics: &topics,
                        guard: guard.as_deref(),
                        health: &health,
                        outbox: &outbox,
                        uplink_stats: uplink_stats.as_ref(),
                        commands: writable.then_some(&command_tx),
                        birth: birth.as_ref(),
                    };
                    // The new uplink is made before anything changes: if it cannot be (its TLS
                    // files do not load), the whole reload is refused and nothing is touched.
                    let fresh = match plan.upstream {
                        true => running.new_uplink(&new).map(Some),
                        false => Ok(None),
                    };
                    match fresh {
                        Err(e) => {
                            tracing::error!(event = "config_reload_refused", error = %e, "the new [upstream] cannot be used; the gateway keeps running on the old configuration");
                            "reload refused; running on the previous configuration (see the log)"
                                .to_string()
                        }
                        Ok(fresh) => {
                            if plan.upstream {
                                uplink_stop.cancel();
                                if let Some(t) = uplink_task.take() {
                                    let _ = t.await;
                                }
                                uplink_stop = CancellationToken::new();
                                tracing::info!(
                                    event = "upstream_restarted",
                                    "[upstream] changed: the upstream connection restarts"
                                );
                                uplink_task = fresh.map(|u| {
                                    tokio::spawn(u.run(
                                        uplink_stop.clone(),
                                        new.gateway.shutdown_timeout,
                                        budget.clone(),
                                    ))
                                });
                            }
                            running.apply(&new, &plan).await;
                            let d = &plan.devices;
                            let touched = !(d.added.is_empty()
                                && d.removed.is_empty()
                                && d.changed.is_empty());
                            if new.homeassistant.is_some() && touched {
                                // What left the config is cleared, what came is announced.
                                let births = discovery.stop().await;
                                discovery = DiscoveryRun::start(&new, &topics, &routed_tx, births);
                            }
                            log_applied(&plan);
                            cfg = new;
                            // The old config and the stopped tasks are gone only now.
                            memory::release_freed();
                            format!(
                                "reloaded: {} device(s) added, {} removed, {} restarted",
                                plan.devices.added.len(),
                                plan.devices.removed.len(),
                                plan.devices.changed.len()
                            )
                        }
                    }
                }
            };
            watchdog::reloaded(&status);
        }
    } else {
        stop.cancelled().await;
    }
    tracing::info!("shutting down");
    budget.start(std::time::Instant::now(), cfg.gateway.shutdown_timeout);
    // Disarmed when this function returns; see `ops::shutdown`.
    let deadline = shutdown::Deadline::arm(
        cfg.gateway.shutdown_timeout + shutdown::MARGIN,
        health.clone(),
    );
    http_stop.cancel();
    if let Some(t) = http_task {
        let _ = t.await;
    }
    stats_stop.cancel();
    fleet.stop_devices().await;
    commands_stop.cancel();
    // A write in flight finishes (its device gets to confirm it) within the shutdown budget;
    // past that it is abandoned, unconfirmed, rather than holding up the rest of the stop. What
    // it used is gone from the uplink's wait for acknowledgements.
    let mut commands_task = commands_task;
    let left = budget.left(std::time::Instant::now(), cfg.gateway.shutdown_timeout);
    if tokio::time::timeout(left, &mut commands_task)
        .await
        .is_err()
    {
        commands_task.abort();
        tracing::warn!(
            event = "write_failed",
            "a write was still running at shutdown and was abandoned; its result is not published"
        );
    }
    fleet.stop_lines().await;
    let _ = stats_task.await;
    let discovery_ran = discovery.task.is_some();
    discovery.stop().await;
    let _ = watchdog_task.await;
    pipe_stop.cancel();
    let local = pipe.await.map_err(|e| AppError::Internal(e.to_string()))?;
    outbox.flush().await?;
    if discovery_ran {
        // Everything published is committed now: the record narrows to what is current.
        if let Err(e) = homeassistant::settle(&cfg.gateway.data_dir, &discovery.documents) {
            tracing::error!(event = "discovery_state_failed", error = %e, "cannot record the published Home Assistant discovery topics");
        }
    }
    uplink_stop.cancel();
    if let Some(t) = uplink_task {
        let _ = t.await;
    }
    if let Some(mut b) = local {
        let _ = b
            .publish(&topics.gateway_status(), topics::OFFLINE.as_bytes(), true)
            .await;
    }
    // Commits the last acks and checkpoints the WAL into the main file.
    outbox.close().await?;
    let s = outbox.stats();
    tracing::info!(
        queued = s.rows.load(Ordering::Relaxed),
        dropped = s.dropped.load(Ordering::Relaxed),
        "stopped"
    );
    deadline.finish()?;
    Ok(())
}

/// The Home Assistant discovery publisher of the running config (see `homeassistant`).
struct DiscoveryRun {
    documents: Vec<Message>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Option<mpsc::Receiver<()>>>>,
}

impl DiscoveryRun {
    /// Publishes `cfg`'s discovery configs and clears the stale ones, when discovery is on or
    /// was on in an earlier run; `births` ask for a republish.
    fn start(
        cfg: &Config,
        topics: &Topics,
        tx: &mpsc::Sender<Routed>,
        births: Option<mpsc::Receiver<()>>,
    ) -> DiscoveryRun {
        let documents = match &cfg.homeassistant {
            Some(ha) => discovery::documents(
                cfg,
                topics,
                &discovery::Origin {
                    gateway_id: cfg.gateway.id.clone(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    discovery_prefix: ha.discovery_prefix.clone(),
                },
            ),
            None => Vec::new(),
        };
        let stop = CancellationToken::new();
        let task = homeassistant::has_work(&cfg.gateway.data_dir, &documents).then(|| {
            let d = Discovery {
                documents: documents.clone(),
                data_dir: cfg.gateway.data_dir.clone(),
                tx: tx.clone(),
            };
            tokio::spawn(d.run(births, stop.clone()))
        });
        DiscoveryRun {
            documents,
            stop,
            task,
        }
    }

    /// Stops the publisher once it has sent what it had; the births channel comes back.
    async fn stop(&mut self) -> Option<mpsc::Receiver<()>> {
        self.stop.cancel();
        match self.task.take() {
            Some(t) => t.await.ok().flatten(),
            None => None,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn make_uplink(
    cfg: &Config,
    topics: &Topics,
    outbox: &Outbox,
    routed_tx: &mpsc::Sender<Routed>,
    health: &Health,
    commands: Option<&mpsc::Sender<Command>>,
    stats: Option<&Arc<UplinkCounters>>,
    birth: Option<&BirthWatch>,
) -> Result<Option<Uplink>, AppError> {
    let Some(up) = cfg.upstream.clone() else {
        return Ok(None);
    };
    let beat = health.register("uplink", uplink::connect_budget(&up));
    let mut u = Uplink::new(
        up,
        topics.clone(),
        outbox.clone(),
        cfg.subscribe.clone(),
        routed_tx.clone(),
        beat,
    )?
    .with_learned_window(&cfg.gateway.data_dir);
    // Only a gateway with writable points listens for commands.
    if let Some(tx) = commands {
        u = u.with_commands(tx.clone());
    }
    if let Some(s) = stats {
        u = u.with_stats(s.clone());
    }
    if let Some(b) = birth {
        u = u.with_birth(b.clone());
    }
    Ok(Some(u))
}

/// Reads and validates the file as `fieldbridge run` does, then compares it with the running
/// config: the plan, or every problem (validation, or what a reload cannot change) as one
/// error that names file, line and key.
fn load_reload(file: &Path, running: &Config) -> Result<(Config, Plan), ConfigError> {
    let new = crate::config::load_to_run(file)?;
    match reload::plan(running, &new) {
        Ok(plan) => Ok((new, plan)),
        Err(refusals) => Err(crate::config::load::located(file, refusals)),
    }
}

fn log_applied(plan: &Plan) {
    let names = |v: &[Arc<str>]| v.iter().map(|n| &**n).collect::<Vec<_>>().join(",");
    let d = &plan.devices;
    tracing::info!(
        event = "config_reloaded",
        devices_added = d.added.len(),
        devices_removed = d.removed.len(),
        devices_restarted = d.changed.len(),
        devices_unchanged = d.unchanged,
        buses_added = plan.buses.added.len(),
        buses_removed = plan.buses.removed.len(),
        buses_restarted = plan.buses.changed.len(),
        broker_rights_changed = plan.broker_rights,
        upstream_restarted = plan.upstream,
        added = %names(&d.added),
        removed = %names(&d.removed),
        restarted = %names(&d.changed),
        "configuration reloaded"
    );
}

/// The running pieces a reload changes.
struct Running<'a> {
    fleet: &'a mut Fleet,
    plans: &'a mpsc::UnboundedSender<Vec<(Arc<str>, Option<DevicePlan>)>>,
    routed: &'a mpsc::Sender<Routed>,
    topics: &'a Topics,
    guard: Option<&'a guard::Shared>,
    health: &'a Health,
    outbox: &'a Outbox,
    uplink_stats: Option<&'a Arc<UplinkCounters>>,
    commands: Option<&'a mpsc::Sender<Command>>,
    birth: Option<&'a BirthWatch>,
}

impl Running<'_> {
    /// The uplink of `new`, counting into the running uplink's counters.
    fn new_uplink(&self, new: &Config) -> Result<Uplink, AppError> {
        make_uplink(
            new,
            self.topics,
            self.outbox,
            self.routed,
            self.health,
            self.commands,
            self.uplink_stats,
            self.birth,
        )?
        .ok_or_else(|| AppError::Internal("no [upstream] in the new config".into()))
    }

    async fn apply(&mut self, new: &Config, plan: &Plan) {
        if let (Some(g), Some(b)) = (self.guard, &new.broker) {
            if plan.broker_rights {
                g.update(b);
            }
        }
        let d = &plan.devices;
        // The pipeline takes the new report plans before a restarted device's first poll.
        let mut update: Vec<(Arc<str>, Option<DevicePlan>)> =
            d.removed.iter().map(|n| (n.clone(), None)).collect();
        for name in d.added.iter().chain(&d.changed) {
            let p = new
                .devices
                .iter()
                .find(|x| &x.name == name)
                .map(DevicePlan::modbus)
                .or_else(|| {
                    new.serial_devices
                        .iter()
                        .find(|x| &x.name == name)
                        .map(DevicePlan::serial)
                });
            update.push((name.clone(), p));
        }
        let _ = self.plans.send(update);
        self.fleet.apply(new, d, &plan.buses).await;
        // A removed device's retained status is cleared where statuses go: the outbox (so
        // upstream) and the local broker, as an empty retained message.
        for name in &d.removed {
            let clear = Routed {
                message: Message {
                    topic: self.topics.device_status(name),
                    payload: Vec::new(),
                    retain: true,
                },
                route: Route::Everywhere,
            };
            if self.routed.send(clear).await.is_err() {
                tracing::warn!(device = %name, "pipeline stopped; the removed device's status was not cleared");
            }
        }
    }
}
