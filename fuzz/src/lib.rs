//! The bodies of fieldbridge's fuzz targets, one module each. Each `run(data)` must not panic
//! on any input and asserts the invariants of what it drives. They are compiled twice: into the
//! libFuzzer binaries of `fuzz_targets/` (fuzz/run) and into the stable-toolchain harness of
//! `tests/fuzz.rs`, which CI runs for a bounded number of inputs.

pub mod config_parse;
pub mod guard_codec;
pub mod guard_session;
pub mod modbus_answer;
pub mod serial_framing;
