//! Config text → `parse_str` (serde with recovery, validation, location of every problem) and
//! profile text → `parse_profile`. Invariants: never a panic; a refused text has at least one
//! problem, each on a line that exists, listed in line order.

use std::path::Path;

use fieldbridge::config::load::parse_profile;
use fieldbridge::config::parse_str;

pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let lines = text.split('\n').count();
    let problems = if sel & 1 == 0 {
        match parse_str(&text) {
            Ok(_) => return,
            Err(p) => p,
        }
    } else {
        let mut p = Vec::new();
        if parse_profile(&text, Path::new("fuzz.toml"), &mut p).is_ok() {
            assert!(p.is_empty(), "a profile accepted with problems: {p:?}");
            return;
        }
        p
    };
    assert!(!problems.is_empty(), "refused without a problem");
    let mut last = 0;
    for p in &problems {
        if let Some(l) = p.line {
            assert!(l >= 1 && l <= lines, "line {l} of {lines}: {p:?}");
            assert!(l >= last, "not in line order: {problems:?}");
            last = l;
        }
    }
}
