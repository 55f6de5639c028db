#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fieldbridge_fuzz::serial_framing::run(data));
