//! Handing memory the gateway no longer uses back to the kernel, at the two moments it frees a
//! lot at once: after startup and after a reload; and one malloc arena for every thread.
//!
//! Parsing and validating a config of a few thousand points peaks at megabytes that are freed
//! before the first poll. glibc keeps freed chunks in its arenas and gives back only the top of
//! each heap, so those pages would stay in the daemon's RSS for as long as it runs.
//! `malloc_trim(0)` returns every whole free page of every arena. Other C libraries (musl for
//! the ARMv6 twin) return memory on their own; there it is a no-op.
//!
//! Trimming once a minute as well was measured and not kept: on the 50-device bench it saved
//! under 0.2 MiB on average, because steady-state churn touches the same pages again within
//! seconds.

/// Makes every thread allocate from glibc's main arena. glibc gives a thread that meets a locked
/// arena one of its own (up to 8 per core), each keeping its own free pages and high-water
/// mark; this daemon allocates little and mostly off the data path's hot loop, so sharing one
/// costs no measurable CPU. On the 50-device bench (device shape, paired runs) it kept RSS
/// 0.7 MiB lower. Must run before any thread is started (it limits arenas made later). A
/// `MALLOC_ARENA_MAX` in the environment wins; elsewhere than glibc it is a no-op.
pub fn one_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    limit_arenas();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_arenas() {
    // SAFETY: mallopt only sets a glibc tunable; no thread but this one exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_arenas() {}

/// Returns free heap pages to the kernel; the bytes of RSS it gave back, as far as the process
/// can tell (0 where that cannot be read).
pub fn release_freed() -> u64 {
    let before = resident_bytes();
    trim();
    before.saturating_sub(resident_bytes())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Resident set from `/proc/self/smaps_rollup`, which walks the page tables. `statm` would be
/// cheaper but recent kernels keep its counters per CPU and fold them late, so it can miss a
/// release of several MiB.
fn resident_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/smaps_rollup") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releasing_freed_memory_gives_back_the_pages_of_many_freed_small_chunks() {
        // 4 MiB in 1 KiB chunks (below the mmap threshold, so they come from an arena), then a
        // live chunk after them so that no heap top can be trimmed, then the chunks are freed.
        // black_box: otherwise the optimiser may never allocate what is never read.
        let chunks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8 | 1; 1024]).collect();
        let chunks = std::hint::black_box(chunks);
        // 96 KiB: no cache of freed small chunks can serve it, so it comes from the top.
        let keep = std::hint::black_box(vec![1u8; 96 * 1024]);
        let full = resident_bytes();
        drop(chunks);
        release_freed();
        let after = resident_bytes();
        drop(std::hint::black_box(keep));
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(
                full.saturating_sub(after) >= 1 << 20,
                "4 MiB freed in 1 KiB chunks; RSS went from {full} to only {after}"
            );
        }
    }
}
