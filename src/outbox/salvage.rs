//! Salvage: copies every readable row of a quarantined outbox file into the new one, in id order
//! and with its id and clocks, and says which id ranges could not be read.
//!
//! The bundled SQLite has no recovery API, so the old table is walked through its rowid B-tree:
//! pages of rows `WHERE id > cursor ORDER BY id`. When a read hits a damaged page, the walk goes
//! on one row at a time up to the damage, then probes forward (`id > cursor + 1, + 2, + 4, …`)
//! until a read succeeds and bisects back to the first id from which reading works again. The
//! ids in between are recorded as skipped; rows there (and rows whose topic is not text) are lost.

use std::path::Path;

use sqlx::{Connection, SqliteConnection};

use super::db::{connect_existing, is_corruption};
use super::sql::{chunk_sizes, insert_salvaged_sql, MAX_SALVAGE_CHUNK};

const PAGE: i64 = 500;

/// What a salvage recovered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Salvaged {
    pub saved: u64,
    /// Rows read but not usable (topic not UTF-8).
    pub unreadable: u64,
    /// Id ranges `(after, upto]` that could not be read.
    pub skipped: Vec<(i64, i64)>,
    /// The highest id the old file knew (its AUTOINCREMENT counter or newest readable row).
    pub highest: i64,
}

type OldRow = (i64, Vec<u8>, Vec<u8>, bool, i64, i64);
/// An old row whose topic decoded: id, topic, payload, retain, created_ms, mono_ms.
type GoodRow<'a> = (i64, String, &'a [u8], bool, i64, i64);

async fn read_rows(
    old: &mut SqliteConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<OldRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, CAST(topic AS BLOB), payload, retain, created_ms, mono_ms FROM outbox
         WHERE id > ? ORDER BY id LIMIT ?",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *old)
    .await
}

/// Whether a read that starts after `x` gets past the damage.
async fn readable_after(old: &mut SqliteConnection, x: i64) -> Result<bool, sqlx::Error> {
    match sqlx::query_as::<_, (i64,)>("SELECT id FROM outbox WHERE id > ? ORDER BY id LIMIT 1")
        .bind(x)
        .fetch_optional(&mut *old)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_corruption(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The smallest `x > cursor` from which reading works again, or `None` if none up to `bound`.
async fn next_readable(
    old: &mut SqliteConnection,
    cursor: i64,
    bound: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let mut bad = cursor;
    let mut step = 1i64;
    let good = loop {
        let x = cursor.saturating_add(step);
        if x > bound {
            return Ok(None);
        }
        if readable_after(old, x).await? {
            break x;
        }
        bad = x;
        step = step.saturating_mul(2);
    };
    let (mut lo, mut hi) = (bad, good);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if readable_after(old, mid).await? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}

async fn insert(
    new: &mut SqliteConnection,
    rows: &[OldRow],
    out: &mut Salvaged,
) -> Result<(), sqlx::Error> {
    let mut good: Vec<GoodRow> = Vec::with_capacity(rows.len());
    for (id, topic, payload, retain, created, mono) in rows {
        match String::from_utf8(topic.clone()) {
            Ok(t) => good.push((*id, t, payload, *retain, *created, *mono)),
            Err(_) => out.unreadable += 1,
        }
    }
    let mut tx = new.begin().await?;
    let mut rest = good.as_slice();
    for size in chunk_sizes(rest.len(), MAX_SALVAGE_CHUNK) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_salvaged_sql(size)));
        for (id, topic, payload, retain, created, mono) in chunk {
            q = q
                .bind(*id)
                .bind(topic.as_str())
                .bind(*payload)
                .bind(*retain)
                .bind(*created)
                .bind(*mono);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    out.saved += good.len() as u64;
    Ok(())
}

/// Copies the readable rows of the old file at `aside` into `new` (an empty, initialised outbox).
/// `known_highest` (from the high-water mark) bounds the search past damage. An old file that
/// cannot be opened at all yields nothing saved; errors of the new database are returned.
pub async fn salvage(
    aside: &Path,
    new: &mut SqliteConnection,
    known_highest: i64,
) -> Result<Salvaged, sqlx::Error> {
    let mut out = Salvaged::default();
    let mut old = match connect_existing(aside).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, path = %aside.display(), "outbox salvage: the old file cannot be opened");
            return Ok(out);
        }
    };
    let seq: i64 = sqlx::query_as::<_, (i64,)>(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)",
    )
    .fetch_one(&mut old)
    .await
    .map(|(s,)| s)
    .unwrap_or(0);
    // Without any counter, probe far enough that doubling steps still end quickly (~40 probes).
    let bound = match seq.max(known_highest) {
        0 => 1 << 40,
        b => b,
    };
    let mut cursor = 0i64;
    let mut page = PAGE;
    loop {
        match read_rows(&mut old, cursor, page).await {
            Ok(rows) if rows.is_empty() => break,
            Ok(rows) => {
                cursor = rows.last().map_or(cursor, |r| r.0);
                insert(new, &rows, &mut out).await?;
                page = PAGE;
            }
            Err(e) if is_corruption(&e) && page > 1 => page = 1,
            Err(e) if is_corruption(&e) => match next_readable(&mut old, cursor, bound).await {
                Ok(Some(x)) => {
                    out.skipped.push((cursor, x));
                    cursor = x;
                }
                Ok(None) => {
                    out.skipped.push((cursor, bound));
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox salvage stopped early");
                    break;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "outbox salvage stopped early");
                break;
            }
        }
    }
    out.highest = seq.max(cursor);
    let _ = old.close().await;
    Ok(out)
}
