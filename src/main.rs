//! The command line: parse arguments, load the config, run, and map errors to exit codes
//! (2: bad configuration or usage, 1: runtime failure).

use fieldbridge::config::spec::serial::{Parity, PortSettings};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use fieldbridge::cli::{demo, passwd, status, tools};
use fieldbridge::ops::sched::Outcome;
use fieldbridge::ops::stats::BrokerCounters;
use fieldbridge::ops::telemetry;
use fieldbridge::{app, config};
use std::sync::Arc;

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
    /// Print the Modbus requests each device's poll sends per cycle (the request plan).
    Explain {
        #[arg(long, short, default_value = "/etc/fieldbridge/fieldbridge.toml")]
        config: PathBuf,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Poll one configured Modbus device once and print the decoded values.
    Read {
        #[arg(long, short, default_value = "/etc/fieldbridge/fieldbridge.toml")]
        config: PathBuf,
        #[arg(long)]
        device: String,
    },
    /// Write one value to a writable point of a configured device (same checks as an upstream
    /// command).
    Write {
        #[arg(long, short, default_value = "/etc/fieldbridge/fieldbridge.toml")]
        config: PathBuf,
        #[arg(long)]
        device: String,
        #[arg(long)]
        point: String,
        /// The value, as in a command payload: 21.5, -3, true, on, "text" or {"value": 21.5}.
        #[arg(allow_negative_numbers = true)]
        value: String,
    },
    /// Find which Modbus unit ids answer on a line (serial port, RTU over TCP, or Modbus TCP).
    Scan(ScanArgs),
}

#[derive(clap::Args)]
struct ScanArgs {
    /// Serial port of an RS-485 line, e.g. /dev/ttyUSB0.
    #[arg(long, group = "line")]
    port: Option<String>,
    /// A Modbus TCP server, HOST:PORT.
    #[arg(long, group = "line")]
    tcp: Option<String>,
    /// A serial device server passing RTU frames over TCP, HOST:PORT.
    #[arg(long, group = "line")]
    rtu_over_tcp: Option<String>,
    /// Use a [[buses]] entry of this config instead (with --bus).
    #[arg(long, short, requires = "bus")]
    config: Option<PathBuf>,
    /// The [[buses]] entry to scan.
    #[arg(long, group = "line")]
    bus: Option<String>,
    #[arg(long, default_value_t = 9600)]
    baud: u32,
    /// none, even or odd.
    #[arg(long, default_value = "none")]
    parity: String,
    #[arg(long, default_value_t = 8)]
    data_bits: u8,
    #[arg(long, default_value_t = 1)]
    stop_bits: u8,
    #[arg(long, default_value_t = 1)]
    from: u8,
    #[arg(long, default_value_t = 247)]
    to: u8,
    /// How long to wait for each unit.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Register table to probe: holding, input, coil or discrete.
    #[arg(long, default_value = "holding")]
    table: String,
    /// Address to probe (0-based). An exception answer also counts as "present".
    #[arg(long, default_value_t = 0)]
    address: u16,
}

fn load_or_exit(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

fn scan_spec(a: &ScanArgs) -> Result<tools::ScanSpec, String> {
    use fieldbridge::device::modbus::bus::Connector;

    let connector = if let Some(port) = &a.port {
        let parity: Parity = a
            .parity
            .parse()
            .map_err(|_| format!("--parity {:?}: valid: {}", a.parity, Parity::NAMES))?;
        Connector::Serial {
            port: PortSettings {
                path: port.clone(),
                baud: a.baud,
                data_bits: a.data_bits,
                parity,
                stop_bits: a.stop_bits,
            },
            rs485: false,
        }
    } else if let Some(t) = &a.tcp {
        let (host, port) = parse_host_port(t)?;
        Connector::Tcp { host, port }
    } else if let Some(t) = &a.rtu_over_tcp {
        let (host, port) = parse_host_port(t)?;
        Connector::RtuOverTcp { host, port }
    } else if let (Some(c), Some(b)) = (&a.config, &a.bus) {
        let cfg = config::load(c).map_err(|e| e.to_string())?;
        let bus = cfg
            .buses
            .iter()
            .find(|x| &*x.name == b)
            .ok_or_else(|| format!("{}: no [[buses]] entry named {b:?}", c.display()))?;
        fieldbridge::device::modbus::lines::connector(bus)
    } else {
        return Err("say which line: --port PATH, --tcp HOST:PORT, --rtu-over-tcp HOST:PORT, or --config FILE --bus NAME".into());
    };
    if a.from > a.to {
        return Err(format!("--from {} is above --to {}", a.from, a.to));
    }
    let table = a.table.parse().map_err(|_| {
        format!(
            "--table {:?}: valid: {}",
            a.table,
            fieldbridge::config::spec::modbus::Table::NAMES
        )
    })?;
    Ok(tools::ScanSpec {
        connector,
        units: a.from..=a.to,
        timeout: a.timeout,
        table,
        address: a.address,
    })
}

fn main() -> ExitCode {
    // Before any thread exists; see `ops::memory`.
    fieldbridge::ops::memory::one_arena();
    let cli = Cli::parse();
    // One set per process: rumqttd reports skipped messages only through the log.
    let broker_counters = Arc::new(BrokerCounters::default());
    telemetry::init(broker_counters.clone());
    match cli.cmd {
        Cmd::Check { config } => match config::load_to_check(&config) {
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
            let cfg = match config::load_to_run(&config) {
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
            runtime_run_logged(|stop| async move {
                // Installed before the gateway starts, so before READY: a SIGHUP from an early
                // `systemctl reload` is a reload request, never the default "terminate".
                let requests = reload_requests().map_err(|e| format!("SIGHUP handler: {e}"))?;
                let reloads = app::Reloads {
                    file: config,
                    requests,
                };
                app::run_reloadable(cfg, Some(reloads), broker_counters, stop, || {})
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
                    print!(
                        "{}",
                        status::render(&s, u64::try_from(fieldbridge::flow::now_ms()).unwrap_or(0))
                    );
                }
                Ok(())
            })
        }
        Cmd::Passwd { user, file } => passwd::run(&user, file.as_deref()),
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
            runtime_run_logged(|stop| async move {
                demo::run(opts, broker_counters, stop)
                    .await
                    .map_err(|e| e.to_string())
            })
        }
        Cmd::Explain { config, device } => {
            let cfg = match load_or_exit(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match tools::explain(&cfg, device.as_deref()) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Read { config, device } => {
            let cfg = match load_or_exit(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime_run(|_stop| async move {
                let text = tools::read(&cfg, &device)
                    .await
                    .map_err(|e| e.to_string())?;
                print!("{text}");
                Ok(())
            })
        }
        Cmd::Write {
            config,
            device,
            point,
            value,
        } => {
            let cfg = match load_or_exit(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime_run(|_stop| async move {
                let text = tools::write(&cfg, &device, &point, &value)
                    .await
                    .map_err(|e| e.to_string())?;
                print!("{text}");
                Ok(())
            })
        }
        Cmd::Scan(args) => {
            let spec = match scan_spec(&args) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("scan: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime_run(|_stop| async move {
                println!(
                    "scanning units {}..={} on {} ({} each)",
                    spec.units.start(),
                    spec.units.end(),
                    spec.connector.describe(),
                    humantime::format_duration(spec.timeout)
                );
                let found = tools::scan(&spec, |line| println!("{line}"))
                    .await
                    .map_err(|e| e.to_string())?;
                let list: Vec<String> = found.iter().map(|u| u.to_string()).collect();
                println!(
                    "found {} unit{}: {}",
                    found.len(),
                    if found.len() == 1 { "" } else { "s" },
                    if list.is_empty() {
                        "none".to_string()
                    } else {
                        list.join(", ")
                    }
                );
                Ok(())
            })
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

/// Runs a one-shot tool (`status`, `read`, `write`, `scan`) with [`runtime_on`]: its failure is
/// printed once, on stderr, for the person who ran it.
fn runtime_run<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    runtime_on(f, false)
}

/// Runs a long-running command (`run`, `demo`): its failure also goes to the log (the journal
/// under systemd, where no one reads stderr).
fn runtime_run_logged<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    // Before the runtime starts its threads, which inherit the policy; see `ops::sched`.
    match fieldbridge::ops::sched::run_as_batch() {
        Outcome::Batch => tracing::debug!("scheduling policy: SCHED_BATCH"),
        Outcome::Kept(policy) => {
            tracing::info!(policy, "scheduling policy chosen before start kept")
        }
        Outcome::Failed(e) => {
            tracing::warn!(error = %e, "cannot make the gateway's threads SCHED_BATCH; they preempt other work on wake-up")
        }
    }
    runtime_on(f, true)
}

/// Runs `f` on a runtime, cancelling its token on SIGINT or SIGTERM.
fn runtime_on<F, Fut>(f: F, log_failure: bool) -> ExitCode
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
                if log_failure {
                    tracing::error!(error = %e, "fieldbridge failed");
                }
                eprintln!("fieldbridge: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// One request per SIGHUP; requests that arrive while one waits are merged into it (the file
/// is read when the request is taken, so the latest edit is what gets applied).
fn reload_requests() -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                break;
            }
        }
    });
    Ok(rx)
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
