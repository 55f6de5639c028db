//! The outbox's SQL shapes, pure: how a group's rows are cut into multi-row INSERTs and how
//! acknowledged ids become id ranges. Every statement has one of a few fixed texts, so sqlx
//! prepares it once per connection and keeps it in its statement cache (keyed by the text); a
//! statement built with a varying number of placeholders would be parsed again for each group.
//!
//! Rows are cut into chunks whose sizes are powers of two up to [`MAX_CHUNK`]: a group of `n`
//! rows costs `n / MAX_CHUNK` full statements plus at most one of each smaller size, and only
//! `log2(MAX_CHUNK) + 1` texts exist. Parameters are numbered (`?NNN`) so the values shared by
//! the whole group (its timestamps) are bound once; the highest number stays under 999, the
//! oldest default of SQLITE_MAX_VARIABLE_NUMBER, so no SQLite build can refuse a chunk.

/// Rows in the largest INSERT: 2 shared + 3 per row = 770 parameters for appends, 6 per row =
/// 768 when salvaged rows keep their own ids and clocks (those use [`MAX_SALVAGE_CHUNK`]).
pub const MAX_CHUNK: usize = 256;
pub const MAX_SALVAGE_CHUNK: usize = 128;

/// The statement sizes a group of `n` rows is cut into, largest first, each a power of two
/// `<= max` (itself a power of two). Their sum is `n`.
pub fn chunk_sizes(n: usize, max: usize) -> Vec<usize> {
    let mut out = vec![max; n / max];
    let mut rest = n % max;
    let mut size = max / 2;
    while rest > 0 {
        if rest >= size {
            out.push(size);
            rest -= size;
        }
        size /= 2;
    }
    out
}

/// Sorts and deduplicates `ids`, then joins consecutive ids into inclusive ranges
/// (`[3, 1, 2, 7]` → `[(1, 3), (7, 7)]`). Only ids that are present are covered: a range never
/// spans an id that was not acknowledged, so an unacknowledged row between two acked ones stays.
pub fn coalesce(mut ids: Vec<i64>) -> Vec<(i64, i64)> {
    ids.sort_unstable();
    ids.dedup();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for id in ids {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(id) => *hi = id,
            _ => out.push((id, id)),
        }
    }
    out
}

/// `INSERT` of `rows` new messages: `?1` = created_ms and `?2` = mono_ms for all of them, then
/// topic, payload, retain per row (`?3`, `?4`, `?5`, then `?6`…).
pub fn insert_sql(rows: usize) -> String {
    let mut s =
        String::from("INSERT INTO outbox (topic, payload, retain, created_ms, mono_ms) VALUES ");
    for r in 0..rows {
        let p = 3 + r * 3;
        if r > 0 {
            s.push(',');
        }
        s.push_str(&format!("(?{},?{},?{},?1,?2)", p, p + 1, p + 2));
    }
    s
}

/// `INSERT` of `rows` salvaged rows with their own id and clocks, six parameters per row.
pub fn insert_salvaged_sql(rows: usize) -> String {
    let mut s = String::from(
        "INSERT INTO outbox (id, topic, payload, retain, created_ms, mono_ms) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            s.push(',');
        }
        s.push_str("(?,?,?,?,?,?)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_cut_into_power_of_two_chunks_that_add_up() {
        let table: &[(usize, usize, &[usize])] = &[
            (0, 256, &[]),
            (1, 256, &[1]),
            (2, 256, &[2]),
            (3, 256, &[2, 1]),
            (255, 256, &[128, 64, 32, 16, 8, 4, 2, 1]),
            (256, 256, &[256]),
            (257, 256, &[256, 1]),
            (600, 256, &[256, 256, 64, 16, 8]),
            (20_000, 256, &[]),
            (7, 4, &[4, 2, 1]),
        ];
        for (n, max, want) in table {
            let got = chunk_sizes(*n, *max);
            assert_eq!(got.iter().sum::<usize>(), *n, "n={n}");
            assert!(
                got.iter().all(|c| c.is_power_of_two() && c <= max),
                "{got:?}"
            );
            if !want.is_empty() || *n == 0 {
                assert_eq!(&got, want, "n={n} max={max}");
            }
        }
        // 20,000 rows: 78 full statements and the binary digits of the rest (32 = 0b100000).
        let big = chunk_sizes(20_000, 256);
        assert_eq!(big.len(), 78 + 1);
    }

    #[test]
    fn only_a_few_fixed_statement_texts_exist_for_any_group() {
        let mut texts = std::collections::BTreeSet::new();
        for n in 0..2_000 {
            for c in chunk_sizes(n, MAX_CHUNK) {
                texts.insert(insert_sql(c));
            }
        }
        assert_eq!(texts.len(), 9, "1, 2, 4, ..., 256 rows");
    }

    #[test]
    fn the_highest_parameter_number_stays_under_sqlites_oldest_limit() {
        let sql = insert_sql(MAX_CHUNK);
        let last = 2 + 3 * MAX_CHUNK;
        assert!(sql.contains(&format!("?{last},")), "{sql}");
        assert!(!sql.contains(&format!("?{}", last + 1)));
        assert!(last <= 999);
        const { assert!(6 * MAX_SALVAGE_CHUNK <= 999) };
        assert_eq!(insert_sql(2), "INSERT INTO outbox (topic, payload, retain, created_ms, mono_ms) VALUES (?3,?4,?5,?1,?2),(?6,?7,?8,?1,?2)");
    }

    #[test]
    fn acknowledged_ids_become_ranges_of_consecutive_ids() {
        type Case<'a> = (&'a [i64], &'a [(i64, i64)]);
        let table: &[Case] = &[
            (&[], &[]),
            (&[5], &[(5, 5)]),
            (&[1, 2, 3], &[(1, 3)]),
            (&[3, 1, 2, 7], &[(1, 3), (7, 7)]),
            (&[1, 2, 2, 3, 3], &[(1, 3)]),
            (&[10, 12, 14], &[(10, 10), (12, 12), (14, 14)]),
            // backlog and live acks interleaved, as the uplink sends both streams
            (&[100, 5000, 101, 5001, 102], &[(100, 102), (5000, 5001)]),
            (&[i64::MAX, i64::MAX - 1], &[(i64::MAX - 1, i64::MAX)]),
        ];
        for (ids, want) in table {
            assert_eq!(&coalesce(ids.to_vec()), want, "{ids:?}");
        }
        // a drain's worth: 20,000 acks in PUBACK order with one id missing in the middle
        let ids: Vec<i64> = (1..=20_000).filter(|i| *i != 777).rev().collect();
        assert_eq!(coalesce(ids), vec![(1, 776), (778, 20_000)]);
    }
}
