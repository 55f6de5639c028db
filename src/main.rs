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
    /// Hash a password for the embedded broker: reads it from the terminal (twice, without
    /// echo) or from stdin, and prints `USER:HASH` or writes that line into --file.
    Passwd {
        /// The user name.
        user: String,
        /// Create or update this password file (mode 0600) instead of printing.
        #[arg(long)]
        file: Option<PathBuf>,
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
        Cmd::Passwd { user, file } => passwd(&user, file.as_deref()),
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

fn passwd(user: &str, file: Option<&std::path::Path>) -> ExitCode {
    use fieldbridge::guard::auth;
    use std::io::IsTerminal;
    if let Some(p) = auth::user_name_problem(user) {
        eprintln!("user name {user:?} {p}");
        return ExitCode::from(2);
    }
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {user}: "));
        let again = rpassword::prompt_password("Again: ");
        match (first, again) {
            (Ok(a), Ok(b)) if a == b => a,
            (Ok(_), Ok(_)) => {
                eprintln!("the passwords differ; nothing written");
                return ExitCode::from(2);
            }
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("cannot read the password: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("cannot read the password from stdin: {e}");
            return ExitCode::FAILURE;
        }
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        eprintln!("empty password refused");
        return ExitCode::from(2);
    }
    let hash = match auth::hash_password(password.as_bytes()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match file {
        None => {
            println!("{user}:{hash}");
            ExitCode::SUCCESS
        }
        Some(f) => match auth::update_password_file(f, user, &hash) {
            Ok(()) => {
                eprintln!("{}: password of {user} set", f.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
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
