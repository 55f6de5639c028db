//! The stable-toolchain fuzz harness: runs a fuzz target (fuzz/src/) on its seed corpus
//! (fuzz/corpus/<target>/), then on mutations of it (bit flips, byte changes, insertions,
//! deletions, duplicated ranges, splices between seeds) from a fixed seed, for a bounded number
//! of inputs or seconds, whichever ends first. No coverage guidance: that is what the libFuzzer
//! build (fuzz/run) adds; this keeps every target exercised in CI without nightly or cargo-fuzz.
//!
//! A panicking input is written to target/fuzz-failures/<target>-<n>.bin and the test fails
//! with its hex, so it can be replayed (`fuzz/run <target> <file>`) and kept as a seed.
//! `FUZZ_EXECS`, `FUZZ_SECONDS` and `FUZZ_SEED` override the bounds and the seed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MAX_INPUT: usize = 4096;
const INTERESTING: [u8; 10] = [0x00, 0x01, 0x02, 0x7f, 0x80, 0xff, b'\n', b'$', b'*', b'='];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "{} has no seeds", dir.display());
    seeds
}

fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..rng.random_range(1..=4) {
        let n = input.len();
        match rng.random_range(0..8) {
            0 if n > 0 => {
                let i = rng.random_range(0..n);
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 if n > 0 => {
                let i = rng.random_range(0..n);
                input[i] = rng.random();
            }
            2 if n > 0 => {
                let i = rng.random_range(0..n);
                input[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            3 => {
                let i = rng.random_range(0..=n);
                let k = rng.random_range(1..=8);
                let bytes: Vec<u8> = (0..k).map(|_| rng.random()).collect();
                input.splice(i..i, bytes);
            }
            4 if n > 0 => {
                let i = rng.random_range(0..n);
                let k = rng.random_range(1..=(n - i).min(16));
                input.drain(i..i + k);
            }
            5 if n > 0 => {
                let i = rng.random_range(0..n);
                let k = rng.random_range(1..=(n - i).min(32));
                let copy = input[i..i + k].to_vec();
                let at = rng.random_range(0..=n);
                input.splice(at..at, copy);
            }
            6 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let i = rng.random_range(0..other.len());
                    let k = rng.random_range(1..=other.len() - i);
                    let at = rng.random_range(0..=n);
                    input.splice(at..at, other[i..i + k].iter().copied());
                }
            }
            _ if n > 1 => input.truncate(rng.random_range(1..n)),
            _ => input.push(rng.random()),
        }
    }
    input.truncate(MAX_INPUT);
}

/// Runs `run` on the seeds of `target` and on mutations of them; returns the number of inputs.
pub fn fuzz(target: &str, run: fn(&[u8])) -> u64 {
    let seeds = seeds(target);
    let max_execs: u64 = env_or("FUZZ_EXECS", 200_000);
    let max_time = Duration::from_secs(env_or("FUZZ_SECONDS", 30));
    let seed: u64 = env_or("FUZZ_SEED", 0x5eed_f1e1_db1d_6e00);
    let mut rng = StdRng::seed_from_u64(seed);
    let began = Instant::now();
    let mut execs = 0u64;
    let mut input = Vec::new();
    loop {
        if execs < seeds.len() as u64 {
            input.clone_from(&seeds[execs as usize]);
        } else {
            if execs >= max_execs || began.elapsed() >= max_time {
                break;
            }
            // Mostly build on the last input, so mutations accumulate; now and then restart
            // from a seed.
            if rng.random_range(0..8) == 0 || input.is_empty() {
                input.clone_from(&seeds[rng.random_range(0..seeds.len())]);
            }
            mutate(&mut rng, &mut input, &seeds);
        }
        if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{target}-{execs}.bin"));
            std::fs::write(&file, &input).unwrap();
            panic!(
                "{target} panicked on input {execs} (seed {seed:#x}), saved as {}: {:02x?}",
                file.display(),
                input
            );
        }
        execs += 1;
    }
    let secs = began.elapsed().as_secs_f64();
    println!(
        "{target}: {execs} inputs in {secs:.1} s ({:.0}/s), seed {seed:#x}, {} seeds, no panic",
        execs as f64 / secs.max(1e-9),
        seeds.len()
    );
    execs
}
