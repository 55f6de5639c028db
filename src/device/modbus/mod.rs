//! Modbus, RTU and TCP alike: one driver over one bus owner per line.
//!
//! `lines` builds one bus task per `[[buses]]` entry (and one per Modbus TCP device); `bus` owns
//! a line and serialises every request on it, in the order `queue` (pure) decides; `driver` is
//! the `Driver` a poller runs; `plan` (pure) groups points into requests; `decode` (pure) turns
//! registers into values; `write` (pure) validates and encodes a command into a write
//! exchange; `writer` is the write handle commands hold (validate, run on the line, check the
//! answer); `exception` (pure) is the device's Modbus exception as our own type, so no
//! tokio-modbus type leaves this folder. `fault` (pure) names what went wrong on an RTU line from
//! the raw bytes (no answer, bad CRC, wrong unit, garbage); `load` (pure) measures how busy a
//! line is and decides when it is overrun.

pub mod bus;
pub mod decode;
pub mod driver;
pub mod exception;
pub mod fault;
pub mod lines;
pub mod load;
pub mod plan;
pub mod queue;
pub mod write;
pub mod writer;
