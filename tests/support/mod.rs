//! The one test harness every integration test (and the benches) uses.
//!
//! - [`wait`]: `wait_until` / `wait_for` with a deadline that name what they waited for, and
//!   small shared facts (free ports, the test venv).
//! - [`process`]: every child process (gateway, mosquitto, socat, Python peers, mbpoll,
//!   mosquitto_pub/sub, openssl...) is a [`process::Proc`]: its output lines are collected as
//!   they come, can be waited for with a deadline, and it is killed and reaped on drop.
//! - [`gateway`]: the gateway config builder, the running gateway and the CLI.
//! - [`mosquitto`], [`relay`], [`mqtt`]: the upstream broker, a TCP relay that cuts links, MQTT
//!   watchers and independent MQTT client processes.
//! - [`modbus`]: the pymodbus simulators (TCP and RTU) and mbpoll.
//! - [`homeassistant`]: retained discovery configs as Home Assistant reads them, and value
//!   templates rendered with Jinja2.
//! - [`http`]: GET on the gateway's HTTP listener, `promtool`, a headless Chromium.
//! - [`serial`]: socat pty pairs and sensor frames.
//! - [`notify`]: a `NOTIFY_SOCKET` listener that records sd_notify messages with their arrival
//!   time (READY, STATUS, the watchdog pings).
//! - [`certs`]: throw-away TLS certificates.
//! - [`fuzz`]: the stable-toolchain fuzz harness (tests/fuzz.rs).
//!
//! Nothing here sleeps to synchronise: everything waits for something it can observe.

// Each test binary uses only part of the harness.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod fuzz;
pub mod gateway;
pub mod homeassistant;
pub mod http;
pub mod modbus;
pub mod mosquitto;
pub mod mqtt;
pub mod notify;
pub mod process;
pub mod relay;
pub mod serial;
pub mod wait;

pub use wait::{
    eventually, free_port, wait_for, wait_for_async, wait_until, wait_until_async, LONG,
};
