//! Every fuzz target of fuzz/src/, on the stable toolchain: its seeds, then mutations of them
//! for a bounded number of inputs (tests/support/fuzz.rs), so each runs in every CI build.
//! The coverage-guided runs use the same target code through libFuzzer (fuzz/run; FUZZING.md).

mod support;

#[path = "../fuzz/src/config_parse.rs"]
mod config_parse;
#[path = "../fuzz/src/guard_codec.rs"]
mod guard_codec;
#[path = "../fuzz/src/guard_session.rs"]
mod guard_session;
#[path = "../fuzz/src/modbus_answer.rs"]
mod modbus_answer;
#[path = "../fuzz/src/serial_framing.rs"]
mod serial_framing;

use support::fuzz::fuzz;

#[test]
fn the_guard_codec_survives_mutated_client_packets() {
    fuzz("guard_codec", guard_codec::run);
}

#[test]
fn the_guard_never_relays_what_the_acl_refuses_on_mutated_client_sessions() {
    fuzz("guard_session", guard_session::run);
}

#[test]
fn modbus_answers_and_commands_survive_mutation_and_round_trip() {
    fuzz("modbus_answer", modbus_answer::run);
}

#[test]
fn config_parsing_and_validation_survive_mutated_files() {
    fuzz("config_parse", config_parse::run);
}

#[test]
fn serial_framing_and_parsing_survive_mutated_streams() {
    fuzz("serial_framing", serial_framing::run);
}

/// How often random noise passes a one-byte checksum: of the candidate frames noise forms
/// (start, length and end bytes right, so only the checksum decides), about one in 256 is
/// accepted. `NOISE_MB` sets the amount of noise (default 4 MiB; FUZZING.md gives 10 MiB).
#[test]
fn a_sum8_checksum_lets_about_one_random_candidate_frame_in_256_through() {
    use fieldbridge::config::spec::serial::{
        BinarySpec, Checksum, ChecksumSpec, FrameLength, FramingSpec, Sensor,
    };
    use fieldbridge::device::serial::framing::{FrameEvent, Framer};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    let mb: usize = std::env::var("NOISE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut rng = StdRng::seed_from_u64(256);
    let mut noise = vec![0u8; mb << 20];
    rng.fill(noise.as_mut_slice());
    // A one-byte start, fixed length, sum8: the weakest common sensor protocol; and SDS011.
    let one_byte_start = FramingSpec::Binary(BinarySpec {
        start: vec![0x42],
        length: FrameLength::Fixed(10),
        end: vec![],
        checksum: Some(ChecksumSpec {
            kind: Checksum::Sum8,
            from: 1,
            to: 9,
            at: 9,
        }),
    });
    for (name, spec) in [
        ("1-byte start, 10 bytes, sum8", one_byte_start),
        (
            "SDS011 (AA C0, 10 bytes, AB, sum8)",
            Sensor::Sds011.framing(),
        ),
    ] {
        let mut framer = Framer::new(spec);
        let mut events = Vec::new();
        for chunk in noise.chunks(4096) {
            framer.push(chunk, &mut events);
        }
        let accepted = events
            .iter()
            .filter(|e| matches!(e, FrameEvent::Frame(_)))
            .count();
        let refused = events
            .iter()
            .filter(|e| matches!(e, FrameEvent::BadChecksum))
            .count();
        let candidates = accepted + refused;
        println!(
            "{name}: {mb} MiB of noise → {candidates} candidate frames, {accepted} accepted (1 in {:.0})",
            candidates as f64 / accepted.max(1) as f64
        );
        if candidates > 10_000 {
            let rate = accepted as f64 / candidates as f64;
            assert!(
                (1.0 / 400.0..1.0 / 160.0).contains(&rate),
                "{name}: {accepted} of {candidates}"
            );
        }
    }
}
