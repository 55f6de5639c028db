//! Harness self-check, not a product test: the Modbus RTU bus simulator
//! (tests/peers/modbus_rtu_sim.py, driven by tests/support/modbus.rs) checked by an independent
//! master, mbpoll: typed values that Python's `struct` encoded read back as what they are, the
//! word and byte orders land where the Modbus convention puts them, and the faults the gateway's
//! tests rely on (silent unknown ids, mute, delay, garbage, exceptions, unplug) behave as on a
//! real RS-485 bus.
//!
//! Expected register words are literal constants worked out by hand from IEEE 754 and two's
//! complement (noted next to each), never computed by the simulator or by fieldbridge's decoder.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::modbus::{mbpoll, Mbpoll, RtuSim, Target};
use support::process::Proc;
use support::wait::venv_python;

/// mbpoll as the RTU master on `bus` (9600 8N1, 0-based references).
fn mbpoll_rtu(bus: &Path, options: &[&str], write_values: &[&str]) -> Mbpoll {
    mbpoll(Target::Rtu(bus), options, write_values)
}

fn read(sim: &RtuSim, unit: u8, table_type: &str, reference: u16, count: u16) -> Mbpoll {
    let (unit, reference, count) = (unit.to_string(), reference.to_string(), count.to_string());
    mbpoll_rtu(
        &sim.bus_path(),
        &[
            "-a", &unit, "-t", table_type, "-r", &reference, "-c", &count,
        ],
        &[],
    )
}

/// Reads that must succeed; returns the printed values.
fn values(sim: &RtuSim, unit: u8, table_type: &str, reference: u16, count: u16) -> Vec<String> {
    read(sim, unit, table_type, reference, count)
        .expect_ok()
        .texts()
}

fn hex(words: &[u16]) -> Vec<String> {
    words.iter().map(|w| format!("0x{w:04X}")).collect()
}

/// A read mbpoll gives up on after 0.3 s (for ids that must stay silent).
fn read_quick(sim: &RtuSim, unit: u8) -> Mbpoll {
    let unit = unit.to_string();
    mbpoll_rtu(
        &sim.bus_path(),
        &["-a", &unit, "-r", "0", "-c", "1", "-o", "0.3"],
        &[],
    )
}

fn write(sim: &RtuSim, unit: u8, table_type: &str, reference: u16, values: &[&str]) -> Mbpoll {
    let (unit, reference) = (unit.to_string(), reference.to_string());
    mbpoll_rtu(
        &sim.bus_path(),
        &["-a", &unit, "-t", table_type, "-r", &reference],
        values,
    )
}

#[test]
fn f32_values_read_back_in_all_four_word_orders() {
    // 3.14159274 (f32 nearest to pi) = 0x40490FDB: bytes A=40 B=49 C=0F D=DB.
    let pi = std::f32::consts::PI;
    let sim = RtuSim::start(&json!({"units": {"3": {"typed": [
        {"table": "holding", "address": 0, "type": "f32", "order": "ABCD", "value": pi},
        {"table": "holding", "address": 2, "type": "f32", "order": "CDAB", "value": pi},
        {"table": "holding", "address": 4, "type": "f32", "order": "BADC", "value": pi},
        {"table": "holding", "address": 6, "type": "f32", "order": "DCBA", "value": pi},
        {"table": "input", "address": 0, "type": "f32", "value": -3.25},
        {"table": "input", "address": 2, "type": "f32", "order": "CDAB", "value": 230.5}
    ]}}}));
    assert_eq!(
        values(&sim, 3, "4:hex", 0, 8),
        hex(&[0x4049, 0x0FDB, 0x0FDB, 0x4049, 0x4940, 0xDB0F, 0xDB0F, 0x4940])
    );
    // mbpoll decodes floats itself: -B is ABCD, its default is CDAB.
    let abcd = mbpoll_rtu(
        &sim.bus_path(),
        &["-a", "3", "-t", "4:float", "-B", "-r", "0", "-c", "1"],
        &[],
    );
    assert_eq!(abcd.expect_ok().texts(), ["3.14159"]);
    assert_eq!(values(&sim, 3, "4:float", 2, 1), ["3.14159"]);
    // Input registers: -3.25 = 0xC0500000; 230.5 = 0x43668000, word-swapped.
    assert_eq!(
        values(&sim, 3, "3:hex", 0, 4),
        hex(&[0xC050, 0x0000, 0x8000, 0x4366])
    );
    let inputs = mbpoll_rtu(
        &sim.bus_path(),
        &["-a", "3", "-t", "3:float", "-B", "-r", "0", "-c", "1"],
        &[],
    );
    assert_eq!(inputs.expect_ok().texts(), ["-3.25"]);
    assert_eq!(values(&sim, 3, "3:float", 2, 1), ["230.5"]);
}

#[test]
fn i32_and_u32_values_read_back_in_all_four_word_orders() {
    // -123456 = 0xFFFE1DC0 (123456 = 0x0001E240, two's complement);
    // 305419896 = 0x12345678; 4000000000 = 0xEE6B2800.
    let sim = RtuSim::start(&json!({"units": {"1": {"typed": [
        {"address": 0, "type": "i32", "order": "ABCD", "value": -123_456},
        {"address": 2, "type": "i32", "order": "CDAB", "value": 305_419_896},
        {"address": 4, "type": "u32", "order": "ABCD", "value": 4_000_000_000u64},
        {"address": 6, "type": "u32", "order": "CDAB", "value": 4_000_000_000u64},
        {"address": 8, "type": "u32", "order": "BADC", "value": 4_000_000_000u64},
        {"address": 10, "type": "u32", "order": "DCBA", "value": 4_000_000_000u64}
    ]}}}));
    assert_eq!(
        values(&sim, 1, "4:hex", 0, 12),
        hex(&[
            0xFFFE, 0x1DC0, 0x5678, 0x1234, 0xEE6B, 0x2800, 0x2800, 0xEE6B, 0x6BEE, 0x0028, 0x0028,
            0x6BEE
        ])
    );
    let abcd = mbpoll_rtu(
        &sim.bus_path(),
        &["-a", "1", "-t", "4:int", "-B", "-r", "0", "-c", "1"],
        &[],
    );
    assert_eq!(abcd.expect_ok().texts(), ["-123456"]);
    assert_eq!(values(&sim, 1, "4:int", 2, 1), ["305419896"]);
}

#[test]
fn u16_and_i16_values_read_back_as_is_or_byte_swapped() {
    // -2 = 0xFFFE; 0x1234 = 4660; BADC swaps the two bytes of the register.
    let sim = RtuSim::start(&json!({"units": {"5": {"typed": [
        {"address": 0, "type": "u16", "value": 65535},
        {"address": 1, "type": "i16", "value": -2},
        {"address": 2, "type": "u16", "value": 4660},
        {"address": 3, "type": "u16", "order": "BADC", "value": 4660},
        {"address": 4, "type": "i16", "order": "BA", "value": -2},
        {"table": "input", "address": 7, "type": "i16", "value": -300}
    ]}}}));
    assert_eq!(
        values(&sim, 5, "4", 0, 5),
        ["65535 (-1)", "65534 (-2)", "4660", "13330", "65279 (-257)"]
    );
    // -300 = 0xFED4 = 65236.
    assert_eq!(values(&sim, 5, "3", 7, 1), ["65236 (-300)"]);
}

#[test]
fn sixty_four_bit_values_land_in_the_documented_word_and_byte_orders() {
    // 72623859790382856 = 0x0102030405060708: bytes A..H = 01..08.
    // -2 as i64 = 0xFFFFFFFFFFFFFFFE. pi as f64 = 0x400921FB54442D18. -2.5 = 0xC004000000000000.
    let u = 72_623_859_790_382_856u64;
    let pi = std::f64::consts::PI;
    let sim = RtuSim::start(&json!({"units": {"2": {"typed": [
        {"address": 0, "type": "u64", "order": "ABCDEFGH", "value": u},
        {"address": 4, "type": "u64", "order": "GHEFCDAB", "value": u},
        {"address": 8, "type": "u64", "order": "BADCFEHG", "value": u},
        {"address": 12, "type": "u64", "order": "HGFEDCBA", "value": u},
        {"address": 16, "type": "u64", "order": "CDAB", "value": u},
        {"address": 20, "type": "i64", "value": -2},
        {"address": 24, "type": "i64", "order": "DCBA", "value": -2},
        {"address": 28, "type": "f64", "value": pi},
        {"address": 32, "type": "f64", "order": "GHEFCDAB", "value": pi},
        {"address": 36, "type": "f64", "order": "BADC", "value": pi},
        {"table": "input", "address": 40, "type": "f64", "value": -2.5}
    ]}}}));
    let words = values(&sim, 2, "4:hex", 0, 40);
    let expect: [[u16; 4]; 10] = [
        [0x0102, 0x0304, 0x0506, 0x0708],
        [0x0708, 0x0506, 0x0304, 0x0102],
        [0x0201, 0x0403, 0x0605, 0x0807],
        [0x0807, 0x0605, 0x0403, 0x0201],
        [0x0708, 0x0506, 0x0304, 0x0102],
        [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE],
        [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
        [0x4009, 0x21FB, 0x5444, 0x2D18],
        [0x2D18, 0x5444, 0x21FB, 0x4009],
        [0x0940, 0xFB21, 0x4454, 0x182D],
    ];
    for (i, want) in expect.iter().enumerate() {
        assert_eq!(
            words[i * 4..i * 4 + 4],
            hex(want),
            "value at address {}",
            i * 4
        );
    }
    assert_eq!(
        values(&sim, 2, "3:hex", 40, 4),
        hex(&[0xC004, 0x0000, 0x0000, 0x0000])
    );
}

#[test]
fn strings_fill_their_registers_high_byte_first_padded_with_zeros() {
    // ASCII: S=53 D=44 M=4D 6=36 3=33 0=30; X=58 Y=59 -=2D 2=32.
    let sim = RtuSim::start(&json!({"units": {"1": {"typed": [
        {"table": "input", "address": 30, "type": "string", "length": 4, "value": "SDM630"},
        {"table": "input", "address": 34, "type": "string", "length": 4, "order": "BADC",
         "value": "SDM630"},
        {"table": "holding", "address": 0, "type": "string", "length": 4, "value": "XY-MD02"}
    ]}}}));
    assert_eq!(
        values(&sim, 1, "3:hex", 30, 8),
        hex(&[0x5344, 0x4D36, 0x3330, 0x0000, 0x4453, 0x364D, 0x3033, 0x0000])
    );
    assert_eq!(
        values(&sim, 1, "4:hex", 0, 4),
        hex(&[0x5859, 0x2D4D, 0x4430, 0x3200])
    );
}

#[test]
fn coils_and_discrete_inputs_are_separate_tables_of_bits() {
    let sim = RtuSim::start(&json!({"units": {"4": {
        "coils": {"0": true, "2": true, "9": true},
        "discrete": {"1": true},
        "holding": {"0": 7}
    }}}));
    assert_eq!(
        values(&sim, 4, "0", 0, 10),
        ["1", "0", "1", "0", "0", "0", "0", "0", "0", "1"]
    );
    assert_eq!(values(&sim, 4, "1", 0, 3), ["0", "1", "0"]);
    assert_eq!(values(&sim, 4, "4", 0, 1), ["7"]);
}

#[test]
fn several_units_on_one_bus_each_answer_with_their_own_map() {
    let sim = RtuSim::start(&json!({"units": {
        "1": {"holding": {"0": 111}},
        "2": {"holding": {"0": 222}},
        "247": {"holding": {"0": 247}}
    }}));
    let polled = mbpoll_rtu(
        &sim.bus_path(),
        &["-a", "1,2,247", "-r", "0", "-c", "1"],
        &[],
    );
    let polled = polled.expect_ok().by_slave();
    assert_eq!(
        polled,
        [
            (1, vec!["111".to_owned()]),
            (2, vec!["222".to_owned()]),
            (247, vec!["247".to_owned()])
        ]
    );
}

#[test]
fn thirty_units_from_units_count_all_answer_with_their_default_maps() {
    let sim = RtuSim::start_units(30);
    // Default map: holding[i] = 100 * unit + i; holding 10..11 = f32 (unit + 0.5), ABCD.
    let polled = mbpoll_rtu(&sim.bus_path(), &["-a", "1:30", "-r", "0", "-c", "2"], &[]);
    let polled = polled.expect_ok().by_slave();
    assert_eq!(polled.len(), 30);
    for (unit, texts) in polled {
        let base = 100 * u32::from(unit);
        assert_eq!(texts, [base.to_string(), (base + 1).to_string()]);
    }
    let float = mbpoll_rtu(
        &sim.bus_path(),
        &["-a", "30", "-t", "4:float", "-B", "-r", "10", "-c", "1"],
        &[],
    );
    assert_eq!(float.expect_ok().texts(), ["30.5"]);
    // input[i] = 1000 + 100 * unit + i.
    assert_eq!(values(&sim, 17, "3", 3, 1), ["2703"]);
}

#[test]
fn a_unit_id_nobody_has_gets_no_answer_but_its_requests_are_counted() {
    let mut sim = RtuSim::start(&json!({"units": {"1": {"holding": {"0": 5}}}}));
    let silent = read_quick(&sim, 9);
    assert!(!silent.success, "unit 9 answered: {}", silent.stdout);
    assert!(silent.stderr.contains("timed out"), "{}", silent.stderr);
    assert!(silent.values().is_empty());
    assert_eq!(values(&sim, 1, "4", 0, 1), ["5"]);
    let stats = sim.stats();
    assert_eq!(stats.units[&9].requests, 1);
    assert_eq!(stats.units[&1].requests, 1);
    assert_eq!(stats.total, 2);
}

#[test]
fn a_muted_unit_is_silent_until_unmuted_while_the_others_keep_answering() {
    let mut sim = RtuSim::start(&json!({"units": {
        "1": {"holding": {"0": 11}},
        "2": {"holding": {"0": 22}}
    }}));
    sim.mute(2);
    let silent = read_quick(&sim, 2);
    assert!(
        !silent.success && silent.stderr.contains("timed out"),
        "{silent:?}"
    );
    assert_eq!(values(&sim, 1, "4", 0, 1), ["11"]);
    sim.unmute(2);
    assert_eq!(values(&sim, 2, "4", 0, 1), ["22"]);
    assert_eq!(sim.requests(2), 2);
}

#[test]
fn a_muted_unit_does_not_execute_writes() {
    let mut sim = RtuSim::start(&json!({"units": {"1": {"holding": {"3": 1}}}}));
    sim.mute(1);
    let out = mbpoll_rtu(
        &sim.bus_path(),
        &["-a", "1", "-r", "3", "-o", "0.3"],
        &["9"],
    );
    assert!(!out.success, "{out:?}");
    assert_eq!(sim.get(1, "holding", 3), 1);
    assert_eq!(sim.writes(1), 1);
}

#[test]
fn writes_change_the_store_and_are_counted_per_unit() {
    let mut sim = RtuSim::start(&json!({"units": {"1": {}, "2": {"coils": {"5": false}}}}));
    // FC 06 (one register), FC 16 (several), FC 05 (one coil), FC 15 (several coils).
    write(&sim, 1, "4", 4, &["4242"]).expect_ok();
    write(&sim, 1, "4", 10, &["1", "2", "65535"]).expect_ok();
    write(&sim, 2, "0", 5, &["1"]).expect_ok();
    write(&sim, 2, "0", 6, &["1", "0", "1"]).expect_ok();
    assert_eq!(sim.get(1, "holding", 4), 4242);
    assert_eq!(
        [10, 11, 12].map(|a| sim.get(1, "holding", a)),
        [1, 2, 65535]
    );
    assert_eq!(
        [5, 6, 7, 8].map(|a| sim.get_bit(2, "coils", a)),
        [true, true, false, true]
    );
    // What mbpoll reads back agrees with the store.
    assert_eq!(values(&sim, 1, "4", 10, 3), ["1", "2", "65535 (-1)"]);
    let stats = sim.stats();
    assert_eq!((stats.units[&1].requests, stats.units[&1].writes), (3, 2));
    assert_eq!((stats.units[&2].requests, stats.units[&2].writes), (2, 2));
    assert_eq!(sim.total_requests(), 5);
}

#[test]
fn set_changes_what_the_master_reads_in_every_table() {
    let mut sim = RtuSim::start(&json!({"units": {"6": {}}}));
    sim.set(6, "holding", 1, 500);
    sim.set(6, "input", 2, 600);
    sim.set(6, "coils", 3, 1);
    sim.set(6, "discrete", 4, 1);
    assert_eq!(values(&sim, 6, "4", 1, 1), ["500"]);
    assert_eq!(values(&sim, 6, "3", 2, 1), ["600"]);
    assert_eq!(values(&sim, 6, "0", 3, 1), ["1"]);
    assert_eq!(values(&sim, 6, "1", 4, 1), ["1"]);
    assert_eq!(sim.get(6, "input", 2), 600);
    assert!(sim.get_bit(6, "discrete", 4));
}

#[test]
fn typed_values_set_at_run_time_are_encoded_like_spec_ones() {
    let mut sim = RtuSim::start(&json!({"units": {"1": {}}}));
    // 21.5 = 0x41AC0000; 0x0102030405060708 as above; "AB" = 41 42.
    sim.set_typed(1, "holding", 0, "f32", "CDAB", 21.5);
    sim.set_typed(
        1,
        "holding",
        2,
        "u64",
        "HGFEDCBA",
        72_623_859_790_382_856u64,
    );
    sim.set_typed(1, "input", 5, "string", "ABCD", "2 AB");
    sim.set_typed(1, "input", 7, "i16", "ABCD", -2);
    assert_eq!(
        values(&sim, 1, "4:hex", 0, 6),
        hex(&[0x0000, 0x41AC, 0x0807, 0x0605, 0x0403, 0x0201])
    );
    assert_eq!(values(&sim, 1, "4:float", 0, 1), ["21.5"]);
    assert_eq!(
        values(&sim, 1, "3:hex", 5, 3),
        hex(&[0x4142, 0x0000, 0xFFFE])
    );
}

#[test]
fn an_exception_command_answers_every_request_of_that_unit_with_its_code_until_cleared() {
    let mut sim = RtuSim::start(&json!({"units": {
        "1": {"holding": {"0": 1}},
        "2": {"holding": {"0": 2}}
    }}));
    sim.exception(1, 6);
    let busy = read(&sim, 1, "4", 0, 1);
    assert!(!busy.success && busy.stderr.contains("busy"), "{busy:?}");
    let refused = write(&sim, 1, "4", 0, &["77"]);
    assert!(
        !refused.success && refused.stderr.contains("busy"),
        "{refused:?}"
    );
    assert_eq!(sim.get(1, "holding", 0), 1, "a refused write was executed");
    assert_eq!(values(&sim, 2, "4", 0, 1), ["2"]);
    sim.exception(1, 0);
    assert_eq!(values(&sim, 1, "4", 0, 1), ["1"]);
}

#[test]
fn reads_beyond_the_table_are_answered_with_illegal_data_address() {
    let sim = RtuSim::start(&json!({"units": {"1": {
        "holding": {"150": 9},
        "size": {"input": 20, "coils": 8}
    }}}));
    // holding covers 0..150 (highest address used), input 0..19, coils 0..7.
    assert_eq!(values(&sim, 1, "4", 150, 1), ["9"]);
    for (table, reference, count) in [("4", 150, 2), ("3", 19, 2), ("3", 20, 1), ("0", 4, 5)] {
        let out = read(&sim, 1, table, reference, count);
        assert!(
            !out.success && out.stderr.contains("Illegal data address"),
            "-t {table} -r {reference} -c {count}: {out:?}"
        );
    }
    assert_eq!(values(&sim, 1, "3", 19, 1), ["0"]);
    assert_eq!(values(&sim, 1, "0", 7, 1), ["0"]);
}

#[test]
fn a_garbage_reply_fails_the_crc_check_once_then_the_unit_answers_normally() {
    let mut sim = RtuSim::start(&json!({"units": {"1": {"holding": {"0": 1234}}}}));
    sim.garbage(1);
    let bad = read(&sim, 1, "4", 0, 1);
    assert!(
        !bad.success && bad.stderr.contains("Invalid CRC"),
        "{bad:?}"
    );
    assert_eq!(values(&sim, 1, "4", 0, 1), ["1234"]);
}

#[test]
fn a_delayed_unit_answers_after_a_short_master_timeout_but_within_a_long_one() {
    let mut sim = RtuSim::start(&json!({"units": {
        "1": {"holding": {"0": 10}},
        "2": {"holding": {"0": 20}}
    }}));
    sim.delay(2, Duration::from_millis(600));
    let late = read_quick(&sim, 2);
    assert!(
        !late.success && late.stderr.contains("timed out"),
        "{late:?}"
    );
    let patient = mbpoll_rtu(
        &sim.bus_path(),
        &["-a", "2", "-r", "0", "-c", "1", "-o", "5"],
        &[],
    );
    assert_eq!(patient.expect_ok().texts(), ["20"]);
    sim.delay(2, Duration::ZERO);
    assert_eq!(values(&sim, 2, "4", 0, 1), ["20"]);
}

#[test]
fn an_unplugged_line_vanishes_and_after_replug_the_units_answer_with_their_state_kept() {
    let mut sim = RtuSim::start(&json!({"units": {"1": {"holding": {"0": 1}}}}));
    write(&sim, 1, "4", 0, &["321"]).expect_ok();
    let path = sim.bus_path();
    sim.unplug();
    assert!(!sim.is_plugged());
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "link still there"
    );
    let gone = read_quick(&sim, 1);
    assert!(!gone.success, "{gone:?}");
    // The simulator lives on while unplugged and still takes commands.
    assert_eq!(sim.get(1, "holding", 0), 321);
    sim.replug();
    assert_eq!(sim.bus_path(), path);
    assert_eq!(values(&sim, 1, "4", 0, 1), ["321"]);
    assert_eq!(sim.requests(1), 2);
    // And once more: replugging works more than once.
    sim.unplug();
    sim.replug();
    assert_eq!(values(&sim, 1, "4", 0, 1), ["321"]);
}

/// CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), low byte first on the wire.
fn with_crc(frame: &[u8]) -> Vec<u8> {
    let mut crc: u16 = 0xFFFF;
    for byte in frame {
        crc ^= u16::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    let mut out = frame.to_vec();
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Sends one RTU request (CRC appended) and reads a reply of `reply_len` bytes.
fn ask(stream: &mut TcpStream, request: &[u8], reply_len: usize) -> Vec<u8> {
    stream.write_all(&with_crc(request)).unwrap();
    let mut reply = vec![0u8; reply_len];
    stream.read_exact(&mut reply).unwrap();
    reply
}

#[test]
fn rtu_over_tcp_answers_bare_rtu_frames_and_ignores_unknown_units() {
    // The textbook frame "read 1 holding register at 0 from unit 1": 01 03 00 00 00 01 84 0A.
    assert_eq!(
        with_crc(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x01]),
        [0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0A]
    );
    let mut sim = RtuSim::start_tcp(&json!({"units": {
        "1": {"holding": {"0": 0x1234}},
        "2": {"holding": {"1": 0xBEEF}}
    }}));
    let mut stream = TcpStream::connect(sim.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        ask(&mut stream, &[0x01, 0x03, 0x00, 0x00, 0x00, 0x01], 7),
        with_crc(&[0x01, 0x03, 0x02, 0x12, 0x34])
    );
    // Unit 9 is silent: the next bytes on the stream are the answer to the request after it.
    stream
        .write_all(&with_crc(&[0x09, 0x03, 0x00, 0x00, 0x00, 0x01]))
        .unwrap();
    assert_eq!(
        ask(&mut stream, &[0x02, 0x03, 0x00, 0x01, 0x00, 0x01], 7),
        with_crc(&[0x02, 0x03, 0x02, 0xBE, 0xEF])
    );
    let stats = sim.stats();
    assert_eq!(stats.units[&9].requests, 1);
    assert_eq!(stats.total, 3);
}

#[test]
fn a_bad_spec_is_refused_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    // Two typed values overlapping at register 1.
    std::fs::write(
        &spec,
        json!({"units": {"1": {"typed": [
            {"address": 0, "type": "u32", "value": 1},
            {"address": 1, "type": "u16", "value": 2}
        ]}}})
        .to_string(),
    )
    .unwrap();
    let out = Proc::run(
        "modbus_rtu_sim.py",
        Command::new(venv_python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/modbus_rtu_sim.py"
            ))
            .args(["--tcp-port", "0", "--spec"])
            .arg(&spec),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("defined twice"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_unit_with_a_fault_keeps_it_on_every_reply_until_told_otherwise() {
    let mut sim = RtuSim::start(&json!({"units": {
        "1": {"holding": {"0": 1234}},
        "2": {"holding": {"0": 20}}
    }}));
    // (fault, what mbpoll (libmodbus) says)
    for (kind, says) in [
        ("crc", "Invalid CRC"),
        ("wrong-unit", "Response not from requested slave"),
    ] {
        sim.fault(1, kind);
        for _ in 0..2 {
            let bad = read_quick(&sim, 1);
            assert!(!bad.success && bad.stderr.contains(says), "{kind}: {bad:?}");
        }
        // The other unit is not affected.
        assert_eq!(values(&sim, 2, "4", 0, 1), ["20"], "{kind}");
    }
    sim.fault(1, "none");
    assert_eq!(values(&sim, 1, "4", 0, 1), ["1234"]);
    // Garbage: 0xA5 bytes, no frame. (libmodbus stops reading after what it takes for a
    // header, so the rest stays on the line for the next master: no read of unit 2 here.)
    sim.fault(1, "garbage");
    assert!(!read_quick(&sim, 1).success);
}
