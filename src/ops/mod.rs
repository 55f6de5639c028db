//! Operating the gateway: liveness of every loop and the systemd watchdog (`health`, told to systemd by `watchdog`), the one
//! set of counters and the stats snapshot (`stats`), logging to journald (`telemetry`), and the
//! hard deadline that makes a shutdown finish even with a hung loop (`shutdown`), giving
//! freed heap back after startup and reloads (`memory`), and the threads' scheduling policy
//! (`sched`).
//! Nothing here is process-wide: `app.rs` creates the registry and hands each loop its beat.

pub mod health;
pub mod memory;
pub mod sched;
pub mod shutdown;
pub mod stats;
pub mod telemetry;
pub mod watchdog;
