//! fieldbridge: an IoT gateway daemon. Modbus devices are polled, every reading is stored in a
//! durable SQLite outbox, published to an embedded MQTT broker for local clients, and bridged to
//! an upstream MQTT broker with at-least-once delivery. Start reading at `app.rs`; the data path
//! and module map are in ARCHITECTURE.md.

pub mod app;
pub mod backoff;
pub mod cli;
pub mod commands;
pub mod config;
pub mod device;
pub mod fleet;
pub mod flow;
pub mod guard;
pub mod homeassistant;
pub mod http;
pub mod mqtt;
pub mod ops;
pub mod outbox;
pub mod pipeline;
pub mod poller;
pub mod reload;
pub mod report;
pub mod sidefile;
