//! Serial line sensors: one task per port that turns a byte stream into `Reading`s and device
//! status events, the same `DeviceEvent`s the Modbus poller sends.
//!
//! Why a task of its own instead of the `Driver::poll()` trait: a streaming sensor (SDS011, a GPS)
//! decides when data arrives, so "one complete read on the poller's schedule" does not describe
//! it, and its liveness is "a valid frame within `timeout`", not "an answer to my request". The
//! task (`task.rs`) keeps the poller's contract — offline once with a reason, capped exponential
//! backoff, online on the first good data — and adds port ownership and reopening after an
//! unplug. Polled serial sensors (MH-Z19B, or a request string) run in the same task, because the
//! request and the answer must share the port owner anyway.
//!
//! Layout: `checksum`, `framing`, `parse` and `sensors` are pure and tested as tables; `port` is
//! the only I/O; `task` wires them together.

pub mod checksum;
pub mod framing;
pub mod parse;
pub mod port;
pub mod sensors;
pub mod task;
