//! fieldbridge: an IoT gateway daemon. Modbus devices are polled, every reading is stored in a
//! durable SQLite outbox, published to an embedded MQTT broker for local clients, and bridged to
//! an upstream MQTT broker with at-least-once delivery. Start reading at `app.rs`; the data path
//! and module map are in ARCHITECTURE.md.

pub mod app;
pub mod broker;
pub mod commands;
pub mod config;
pub mod demo;
pub mod device;
pub mod echo;
pub mod guard;
pub mod health;
pub mod outbox;
pub mod pipeline;
pub mod poller;
pub mod reading;
pub mod replay;
pub mod stats;
pub mod status;
pub mod telemetry;
pub mod tools;
pub mod topics;
pub mod uplink;
