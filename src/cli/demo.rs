//! `fieldbridge demo`: the whole product on built-in simulated Modbus TCP devices, so a new user
//! sees readings flow with no hardware and no other software.
//!
//! The simulated devices are real Modbus TCP servers (tokio-modbus) on loopback with values that
//! change over time; the gateway polls them through the same config, driver, outbox and embedded
//! broker as in production, and a local MQTT subscriber prints what it receives.

use std::future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::ops::stats::BrokerCounters;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

/// A simulated device: register values as a function of the time since start.
#[derive(Clone, Copy, Debug)]
pub enum SimKind {
    /// holding 0-1: f32 water temperature (ABCD); holding 2: u16 pressure in centibar;
    /// coil 0: pump running.
    Boiler,
    /// input 0-1: u32 energy in Wh (ABCD); input 2-3: f32 power in W (CDAB); holding 10: i16
    /// cabinet temperature in tenths of °C.
    Meter,
}

pub struct SimDevice {
    kind: SimKind,
    start: Instant,
}

fn f32_words(v: f32) -> [u16; 2] {
    let b = v.to_be_bytes();
    [
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ]
}

impl SimDevice {
    pub fn new(kind: SimKind) -> Self {
        SimDevice {
            kind,
            start: Instant::now(),
        }
    }

    fn register(&self, holding: bool, addr: u16) -> Option<u16> {
        let t = self.start.elapsed().as_secs_f64();
        match (self.kind, holding, addr) {
            (SimKind::Boiler, true, 0 | 1) => {
                let w = f32_words((60.0 + 5.0 * (t / 10.0).sin()) as f32);
                Some(w[usize::from(addr)])
            }
            (SimKind::Boiler, true, 2) => Some((150.0 + 10.0 * (t / 7.0).cos()) as u16),
            (SimKind::Meter, false, 0 | 1) => {
                let e = 1_000_000u32.wrapping_add((t * 3.0) as u32);
                Some(if addr == 0 {
                    (e >> 16) as u16
                } else {
                    e as u16
                })
            }
            (SimKind::Meter, false, 2 | 3) => {
                let w = f32_words((2300.0 + 400.0 * (t / 5.0).sin()) as f32);
                // CDAB: low word first
                Some(if addr == 2 { w[1] } else { w[0] })
            }
            (SimKind::Meter, true, 10) => Some((-50.0 + 30.0 * (t / 20.0).sin()) as i16 as u16),
            (_, _, a) if a < 100 => Some(0),
            _ => None,
        }
    }

    fn bit(&self, coil: bool, addr: u16) -> Option<bool> {
        let t = self.start.elapsed().as_secs();
        match (self.kind, coil, addr) {
            (SimKind::Boiler, true, 0) => Some((t / 15).is_multiple_of(2)),
            (_, _, a) if a < 100 => Some(false),
            _ => None,
        }
    }

    fn words(&self, holding: bool, addr: u16, cnt: u16) -> Result<Vec<u16>, ExceptionCode> {
        (0..cnt)
            .map(|i| {
                addr.checked_add(i)
                    .and_then(|a| self.register(holding, a))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect()
    }

    fn bits(&self, coil: bool, addr: u16, cnt: u16) -> Result<Vec<bool>, ExceptionCode> {
        (0..cnt)
            .map(|i| {
                addr.checked_add(i)
                    .and_then(|a| self.bit(coil, a))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            })
            .collect()
    }
}

impl Service for SimDevice {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        future::ready(match req {
            Request::ReadHoldingRegisters(a, c) => {
                self.words(true, a, c).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(a, c) => {
                self.words(false, a, c).map(Response::ReadInputRegisters)
            }
            Request::ReadCoils(a, c) => self.bits(true, a, c).map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, c) => {
                self.bits(false, a, c).map(Response::ReadDiscreteInputs)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// Serves a simulated device on 127.0.0.1 (a free port) until `stop`; returns its address.
pub async fn serve_sim(kind: SimKind, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let device = Arc::new(SimDevice::new(kind));
    let server = Server::new(listener);
    tokio::spawn(async move {
        let on_connected = |stream, socket_addr| {
            let device = device.clone();
            async move { accept_tcp_connection(stream, socket_addr, |_| Ok(Some(device.clone()))) }
        };
        let on_error = |e| tracing::debug!(error = %e, "simulated device connection error");
        let _ = server
            .serve_until(
                &on_connected,
                on_error,
                async move { stop.cancelled().await },
            )
            .await;
    });
    Ok(addr)
}

/// The demo's gateway config, run through the same parser and validation as a user's file.
pub fn demo_config(
    boiler: SocketAddr,
    meter: SocketAddr,
    broker: SocketAddr,
    data_dir: &std::path::Path,
    upstream: Option<(&str, u16)>,
) -> String {
    let upstream = match upstream {
        Some((host, port)) => format!(
            "[upstream]\nhost = \"{host}\"\nport = {port}\nkeep_alive = \"10s\"\nreconnect_max = \"10s\"\n"
        ),
        None => String::new(),
    };
    format!(
        r#"[gateway]
id = "demo"
data_dir = "{data_dir}"

[broker]
listen = "{broker}"

{upstream}
[[devices]]
name = "boiler"
kind = "modbus_tcp"
host = "{bh}"
port = {bp}
interval = "2s"
timeout = "500ms"

[[devices.points]]
name = "water_temperature"
table = "holding"
address = 0
type = "f32"
unit = "°C"

[[devices.points]]
name = "pressure"
table = "holding"
address = 2
type = "u16"
scale = 0.01
unit = "bar"

[[devices.points]]
name = "pump_running"
table = "coil"
address = 0
type = "bool"

[[devices]]
name = "meter"
kind = "modbus_tcp"
host = "{mh}"
port = {mp}
interval = "3s"
timeout = "500ms"

[[devices.points]]
name = "energy"
table = "input"
address = 0
type = "u32"
scale = 0.001
unit = "kWh"

[[devices.points]]
name = "power"
table = "input"
address = 2
type = "f32"
word_order = "CDAB"
unit = "W"

[[devices.points]]
name = "cabinet_temperature"
table = "holding"
address = 10
type = "i16"
scale = 0.1
unit = "°C"
"#,
        data_dir = data_dir.display(),
        bh = boiler.ip(),
        bp = boiler.port(),
        mh = meter.ip(),
        mp = meter.port(),
    )
}

/// A private data directory for one demo run.
pub fn demo_data_dir() -> PathBuf {
    std::env::temp_dir().join(format!("fieldbridge-demo-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_passes_the_same_validation_as_a_user_file() {
        let a: SocketAddr = "127.0.0.1:1502".parse().unwrap();
        let src = demo_config(
            a,
            a,
            a,
            std::path::Path::new("/tmp/x"),
            Some(("localhost", 1883)),
        );
        let cfg = crate::config::parse_str(&src).unwrap();
        assert_eq!(cfg.devices.len(), 2);
        assert!(cfg.upstream.is_some());
    }

    #[test]
    fn simulated_devices_answer_known_addresses_and_reject_others() {
        let d = SimDevice::new(SimKind::Meter);
        assert_eq!(d.words(false, 0, 4).map(|w| w.len()), Ok(4));
        assert_eq!(d.words(true, 99, 2), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(d.bits(true, 0, 3), Ok(vec![false; 3]));
    }
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub broker: SocketAddr,
    pub upstream: Option<(String, u16)>,
    /// Stop by itself after this long (for scripted runs); `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start a simulated device: {0}")]
    Sim(std::io::Error),
    #[error("built-in demo config is invalid: {0}")]
    Config(String),
    #[error(transparent)]
    App(#[from] crate::app::AppError),
}

/// Runs simulated devices, the gateway and a local subscriber that prints every message.
pub async fn run(
    opts: DemoOptions,
    broker_counters: Arc<BrokerCounters>,
    stop: CancellationToken,
) -> Result<(), DemoError> {
    let sims = CancellationToken::new();
    let boiler = serve_sim(SimKind::Boiler, sims.clone())
        .await
        .map_err(DemoError::Sim)?;
    let meter = serve_sim(SimKind::Meter, sims.clone())
        .await
        .map_err(DemoError::Sim)?;
    let dir = demo_data_dir();
    let src = demo_config(
        boiler,
        meter,
        opts.broker,
        &dir,
        opts.upstream.as_ref().map(|(h, p)| (h.as_str(), *p)),
    );
    let cfg = crate::config::parse_str(&src).map_err(|e| DemoError::Config(format!("{e:?}")))?;
    let prefix = crate::mqtt::topics::Topics::new(&cfg.gateway.topic_prefix, &cfg.gateway.id).all();
    println!("fieldbridge demo: simulated Modbus TCP devices 'boiler' at {boiler} and 'meter' at {meter}");
    println!(
        "embedded MQTT broker on {}; try: mosquitto_sub -h {} -p {} -t '{prefix}' -v",
        opts.broker,
        opts.broker.ip(),
        opts.broker.port()
    );
    if let Some(d) = opts.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
    let broker = opts.broker;
    let printer_stop = CancellationToken::new();
    let printer = printer_stop.clone();
    let app = crate::app::run(cfg, broker_counters, stop.clone(), move || {
        tokio::spawn(print_local(broker, prefix, printer));
    })
    .await;
    printer_stop.cancel();
    sims.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    app.map_err(DemoError::from)
}

/// Subscribes to the embedded broker like any local client would and prints what arrives.
async fn print_local(broker: SocketAddr, filter: String, stop: CancellationToken) {
    use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
    let ip = if broker.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        broker.ip().to_string()
    };
    let mut o = MqttOptions::new(
        format!("demo-viewer-{}", std::process::id()),
        ip,
        broker.port(),
    );
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 16);
    loop {
        let e = tokio::select! {
            _ = stop.cancelled() => return,
            e = ev.poll() => e,
        };
        match e {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                let _ = client.try_subscribe(filter.clone(), QoS::AtMostOnce);
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let retained = if p.retain { " (retained)" } else { "" };
                println!(
                    "{} {}{retained}",
                    p.topic,
                    String::from_utf8_lossy(&p.payload)
                );
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
