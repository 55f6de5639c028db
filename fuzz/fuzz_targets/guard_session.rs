#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldbridge_fuzz::guard_session::run(data));
