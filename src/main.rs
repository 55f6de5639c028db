//! The command line: parse arguments, load the config, run, and map errors to exit codes
//! (2: bad configuration or usage, 1: runtime failure).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use fieldbridge::{app, config, demo, health, status, telemetry};

#[derive(Parser)]
#[command(
    name = "fieldbridge",
    version,
    about = "IoT gateway: Modbus devices to MQTT, with a durable outbox"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Run {
        #[arg(long, short, default_value = "/etc/fieldbridge/fieldbridge.toml")]
        config: PathBuf,
    },
    /// Check a config file: print every problem and exit 2, or exit 0 when it is valid.
    Check {
        #[arg(long, short, default_value = "/etc/fieldbridge/fieldbridge.toml")]
        config: PathBuf,
    },
    /// Show the running gateway's devices, outbox and upstream state (read from its broker).
    Status {
        #[arg(long, short, default_value = "/etc/fieldbridge/fieldbridge.toml")]
        config: PathBuf,
        /// How long to wait for the daemon's answer.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print the raw JSON snapshot instead.
        #[arg(long)]
        json: bool,
    },
    /// Run a demo on built-in simulated Modbus devices, printing what a local subscriber sees.
    Demo {
        /// Where the embedded broker listens.
        #[arg(long, default_value = "127.0.0.1:11883")]
        broker: SocketAddr,
        /// Optional upstream broker, HOST:PORT.
        #[arg(long)]
        upstream: Option<String>,
        /// Stop after this long (e.g. "30s"); default: run until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    match cli.cmd {
        Cmd::Check { config } => match config::load(&config) {
            Ok(cfg) => {
                let devices = cfg.devices.len() + cfg.serial_devices.len();
                println!(
                    "{}: valid ({} device{}, upstream {})",
                    config.display(),
                    devices,
                    if devices == 1 { "" } else { "s" },
                    cfg.upstream
                        .as_ref()
                        .map(|u| format!("{}:{}", u.host, u.port))
                        .unwrap_or_else(|| "not configured".into())
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            if let Err(e) = telemetry::set_default_level(&cfg.gateway.log_level) {
                eprintln!("log_level: {e}");
                return ExitCode::from(2);
            }
            runtime_run(|stop| async move {
                let supervisor_stop = stop.clone();
                // READY is sent by the supervisor, which starts only once the outbox is open
                // and the broker listens (that is when `on_ready` runs).
                app::run(cfg, stop, move |running| {
                    tokio::spawn(health::supervise(
                        health::global().clone(),
                        running.clone(),
                        supervisor_stop,
                    ));
                })
                .await
                .map_err(|e| e.to_string())
            })
        }
        Cmd::Status {
            config,
            timeout,
            json,
        } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            runtime_run(|_stop| async move {
                let s = status::fetch(&cfg, timeout)
                    .await
                    .map_err(|e| e.to_string())?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?
                    );
                } else {
                    print!("{}", status::render(&s, status::now_ms()));
                }
                Ok(())
            })
        }
        Cmd::Demo {
            broker,
            upstream,
            duration,
        } => {
            let upstream = match upstream.map(|u| parse_host_port(&u)).transpose() {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("--upstream: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = demo::DemoOptions {
                broker,
                upstream,
                duration,
            };
            runtime_run(
                |stop| async move { demo::run(opts, stop).await.map_err(|e| e.to_string()) },
            )
        }
    }
}

fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (h, p) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: expected HOST:PORT"))?;
    let port = p.parse().map_err(|_| format!("{s:?}: bad port {p:?}"))?;
    Ok((h.to_string(), port))
}

/// Runs `f` on a runtime, cancelling its token on SIGINT or SIGTERM.
fn runtime_run<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received");
            s.cancel();
        });
        match f(stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "fieldbridge failed");
                eprintln!("fieldbridge: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies on SIGTERM, just not cleanly.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
