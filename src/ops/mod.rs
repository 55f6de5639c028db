//! Operating the gateway: liveness of every loop and the systemd watchdog (`health`, told to systemd by `watchdog`), the one
//! set of counters and the stats snapshot (`stats`), and logging to journald (`telemetry`).
//! Nothing here is process-wide: `app.rs` creates the registry and hands each loop its beat.

pub mod health;
pub mod stats;
pub mod telemetry;
pub mod watchdog;
