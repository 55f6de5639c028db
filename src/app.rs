//! Builds every task from a validated config and owns the start and stop order. Every loop gets
//! what it needs from here: its channels, its counters and its liveness beat (one `Health`
//! registry per run, no process-wide state).
//!
//! Start: outbox (durable store first) → embedded broker → pipeline → uplink → pollers → the
//! HTTP listener (`[http]`; it only reads what the loops count).
//! Stop: the HTTP listener (its event streams end) → pollers (no new readings) → pipeline
//! drains and commits everything queued → uplink gets `shutdown_timeout` for in-flight
//! publishes, publishes `offline`, disconnects → the outbox commits the last acks and
//! checkpoints its WAL (`Outbox::close`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Retry, Schedule};
use crate::commands::Commands;
use crate::config::{Config, Transport};
use crate::device::modbus::driver::ModbusDriver;
use crate::device::modbus::lines;
use crate::device::serial;
use crate::device::Driver;
use crate::guard::Forwarder;
use crate::http::{self, HttpError};
use crate::mqtt::broker::{BrokerError, LocalBroker};
use crate::mqtt::topics::{self, Topics};
use crate::mqtt::uplink::{self, Uplink, UplinkError};
use crate::ops::health::Health;
use crate::ops::stats::{
    Board, BrokerCounters, CommandCounters, PollCounters, Reporter, SerialCounters, Sources,
};
use crate::ops::watchdog;
use crate::outbox::{Outbox, OutboxError};
use crate::pipeline::{self, Pipeline};
use crate::poller;
use crate::report::ReportState;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Uplink(#[from] UplinkError),
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
    let started = tokio::time::Instant::now();
    let health = Health::new();
    let topics = Topics::new(&cfg.gateway.topic_prefix, &cfg.gateway.id);
    let outbox = Outbox::open(&cfg.gateway.data_dir, &cfg.outbox).await?;
    tracing::info!(path = %outbox.path().display(), "outbox open");

    let (routed_tx, routed_rx) = mpsc::channel(256);
    // Only a gateway with writable points takes commands (upstream and from local clients).
    let writable = cfg
        .devices
        .iter()
        .any(|d| d.points.iter().any(|p| p.write.is_some()));
    let (command_tx, command_rx) = mpsc::channel(64);
    let broker_counters = cfg.broker.as_ref().map(|_| broker_counters);
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
            let broker = tokio::task::spawn_blocking(move || {
                LocalBroker::start(&b, &base, forward, local_commands)
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

    let uplink = match cfg.upstream.clone() {
        Some(up) => {
            let beat = health.register("uplink", uplink::connect_budget(&up));
            let u = Uplink::new(
                up,
                topics.clone(),
                outbox.clone(),
                cfg.subscribe.clone(),
                routed_tx.clone(),
                beat,
            )?;
            // Only a gateway with writable points listens for commands.
            Some(if writable {
                u.with_commands(command_tx)
            } else {
                u
            })
        }
        None => {
            tracing::warn!("no [upstream] configured: messages are kept in the outbox (bounded) and published locally only");
            None
        }
    };
    let board = Arc::new(Board::new(
        cfg.devices
            .iter()
            .map(|d| &d.name)
            .chain(cfg.serial_devices.iter().map(|d| &d.name)),
    ));
    // Bus tasks stop after the pollers, so no poll is left waiting on a vanished line. They
    // open nothing until the first request.
    let lines_stop = CancellationToken::new();
    let mut lines = lines::start(&cfg, &lines_stop);
    let serial_stats: Vec<(Arc<str>, Arc<SerialCounters>)> = cfg
        .serial_devices
        .iter()
        .map(|d| (d.name.clone(), Arc::default()))
        .collect();
    let polls: Vec<(Arc<str>, Arc<PollCounters>)> = cfg
        .devices
        .iter()
        .map(|d| (d.name.clone(), Arc::default()))
        .collect();
    let command_counters = Arc::new(CommandCounters::default());
    let sources = Sources {
        health: health.clone(),
        outbox: outbox.clone(),
        uplink: uplink.as_ref().map(|u| u.stats()),
        board: board.clone(),
        lines: lines.stats.clone(),
        serial: serial_stats.clone(),
        broker: broker_counters,
        polls: polls.clone(),
        commands: command_counters.clone(),
        started,
    };

    let (tx, rx) = mpsc::channel(1024);
    let pipe_stop = CancellationToken::new();
    let pipe = tokio::spawn(pipeline::run(
        Pipeline {
            outbox: outbox.clone(),
            local,
            topics: topics.clone(),
            board: board.clone(),
            beat: health.register("pipeline", Duration::ZERO),
            report: ReportState::from_config(&cfg),
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
    let uplink_stop = CancellationToken::new();
    let uplink_task =
        uplink.map(|u| tokio::spawn(u.run(uplink_stop.clone(), cfg.gateway.shutdown_timeout)));

    let poll_stop = CancellationToken::new();
    let commands_stop = CancellationToken::new();
    let commands = Commands {
        targets: cfg
            .devices
            .iter()
            .filter_map(|d| Some((d.name.clone(), lines.writer(d)?)))
            .collect(),
        topics: topics.clone(),
        results: routed_tx.clone(),
        max_age: cfg.upstream.as_ref().map(|u| u.command_max_age),
        counters: command_counters,
    };
    let commands_task = tokio::spawn(commands.run(command_rx, commands_stop.clone()));
    let mut pollers = JoinSet::new();
    for (d, (_, poll_counters)) in cfg.devices.iter().zip(&polls) {
        let Some((bus, budget)) = lines.get(&d.name).cloned() else {
            return Err(AppError::Internal(format!("no line for device {}", d.name)));
        };
        let driver = ModbusDriver::new(d.clone(), bus, budget);
        let driver_budget = driver.max_poll_time();
        tracing::info!(
            device = %d.name,
            unit_id = d.unit_id,
            line = %lines::describe(&cfg, d),
            points = d.points.len(),
            requests_per_cycle = driver.requests_per_cycle(),
            "polling device"
        );
        let schedule = Schedule {
            interval: d.interval,
            backoff_max: d.backoff_max,
            // Units on a shared line share its time: see `backoff::Retry`.
            retry: match d.transport {
                Transport::Bus(_) => Retry::Probe,
                Transport::Tcp { .. } => Retry::Backoff,
            },
        };
        pollers.spawn(poller::run(
            d.name.clone(),
            driver,
            schedule,
            tx.clone(),
            poll_stop.clone(),
            health.register_device(&d.name, driver_budget),
            poll_counters.clone(),
        ));
    }
    for (d, (_, stats)) in cfg.serial_devices.iter().zip(&serial_stats) {
        tracing::info!(device = %d.name, path = %d.port.path, "reading serial device");
        pollers.spawn(serial::task::run(
            d.clone(),
            tx.clone(),
            poll_stop.clone(),
            stats.clone(),
            health.register_device(&d.name, serial::task::first_beat_within(d)),
        ));
    }
    drop(tx);
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
    tracing::info!(devices = cfg.devices.len() + cfg.serial_devices.len(), gateway = %cfg.gateway.id, "fieldbridge running");

    stop.cancelled().await;
    tracing::info!("shutting down");
    http_stop.cancel();
    if let Some(t) = http_task {
        let _ = t.await;
    }
    poll_stop.cancel();
    stats_stop.cancel();
    while pollers.join_next().await.is_some() {}
    commands_stop.cancel();
    // A write in flight finishes (its device gets to confirm it) within the shutdown budget;
    // past that it is abandoned, unconfirmed, rather than holding up the rest of the stop.
    let mut commands_task = commands_task;
    if tokio::time::timeout(cfg.gateway.shutdown_timeout, &mut commands_task)
        .await
        .is_err()
    {
        commands_task.abort();
        tracing::warn!(
            event = "write_failed",
            "a write was still running at shutdown and was abandoned; its result is not published"
        );
    }
    lines_stop.cancel();
    while lines.tasks.join_next().await.is_some() {}
    let _ = stats_task.await;
    let _ = watchdog_task.await;
    pipe_stop.cancel();
    let local = pipe.await.map_err(|e| AppError::Internal(e.to_string()))?;
    outbox.flush().await?;
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
    Ok(())
}
