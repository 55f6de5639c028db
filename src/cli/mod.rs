//! The command-line tools besides `run`: `status` (read the daemon's stats snapshot), `explain`,
//! `read`, `write` and `scan` (talk to devices once, with the same code the daemon uses), and the
//! `demo` (simulated devices on loopback) and `passwd` (hash a broker user's password). `main.rs` parses arguments and calls these.

pub mod demo;
pub mod passwd;
pub mod status;
pub mod tools;
