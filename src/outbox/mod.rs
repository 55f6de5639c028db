//! The durable outbox: every message bound upstream is committed to SQLite before anyone sees it,
//! and deleted only when the upstream broker has acknowledged it (design.md §3, O1–O7).
//!
//! One writer task owns the write connection and group-commits: appends and acks that arrive
//! within `commit_interval` share one transaction (an SD card wears out on per-message fsyncs).
//! `append` returns only after that transaction committed with `synchronous=FULL` in WAL mode, so
//! a process crash loses nothing that was appended and a power cut at most the group being
//! committed. In-flight state is not persisted: after a restart every row is sent again (O3).
//!
//! Bounds (O5): rows, bytes and optionally age. When full, `drop_oldest` deletes the oldest rows,
//! `drop_newest` refuses the new ones; every drop is counted and logged at error level. A write
//! that fails (disk full, I/O error) is counted as a drop too; the next commit is tried afresh, so
//! the outbox recovers by itself when space returns.
//!
//! Time: rows are ordered by id, never by timestamp. Age is measured on a clock that only runs
//! while the gateway runs (`mono_ms`, persisted in each row and continued after a restart), so the
//! jump of the wall clock when a Pi without RTC syncs NTP cannot make rows look old.
//!
//! A database that is not a database or is corrupt is moved aside (`outbox.db.corrupt-<unix
//! time>`) and a fresh one is created (O6): the gateway starts and says so at error level.

pub mod inflight;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::time::Instant;

use crate::config::{OutboxSettings, Overflow};
use crate::flow::Message;

/// A stored message with its row id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub message: Message,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: cannot create directory: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox {path}: {source}")]
    Db { path: PathBuf, source: sqlx::Error },
    #[error("outbox {path}: cannot move the corrupt database aside: {source}")]
    Quarantine {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The group commit that held the messages failed (disk full, I/O error); shared by every
    /// caller whose messages were in that group.
    #[error("outbox: write failed, messages not stored: {0}")]
    WriteFailed(Arc<sqlx::Error>),
    #[error("outbox is closed")]
    Closed,
}

/// Counters, readable from any task.
#[derive(Debug, Default)]
pub struct Stats {
    pub appended: AtomicU64,
    pub acked: AtomicU64,
    /// Every message given up: overflow, age, and failed writes.
    pub dropped: AtomicU64,
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub commits: AtomicU64,
}

/// Milliseconds of gateway running time, continued across restarts from the newest row.
#[derive(Debug)]
struct RunClock {
    base_ms: i64,
    started: Instant,
}

impl RunClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + self.started.elapsed().as_millis() as i64
    }
}

/// Messages waiting for the group commit, and who to tell when it is done.
type PendingAppend = (Vec<Message>, oneshot::Sender<Result<(), Arc<sqlx::Error>>>);

enum WriteCmd {
    Append(Vec<Message>, oneshot::Sender<Result<(), Arc<sqlx::Error>>>),
    Ack(Vec<i64>),
    Flush(oneshot::Sender<()>),
}

/// Cheap to clone; every clone talks to the same writer task.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<WriteCmd>,
    reader: Arc<Mutex<SqliteConnection>>,
    latest: watch::Receiver<i64>,
    stats: Arc<Stats>,
    clock: Arc<RunClock>,
    path: PathBuf,
}

const SCHEMA_VERSION: i64 = 1;

fn db_err(path: &Path) -> impl Fn(sqlx::Error) -> OutboxError + '_ {
    move |source| OutboxError::Db {
        path: path.to_path_buf(),
        source,
    }
}

async fn connect(path: &Path) -> Result<SqliteConnection, sqlx::Error> {
    let url = format!("sqlite://{}", path.display());
    let opts = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: each commit fsyncs the WAL, so a committed group survives a power cut.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(5));
    SqliteConnection::connect_with(&opts).await
}

async fn init_schema(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let (version,): (i64,) = sqlx::query_as("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    if version < SCHEMA_VERSION {
        // AUTOINCREMENT: ids are never reused, so "rows after id N" stays meaningful after the
        // newest rows were acked and deleted.
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                topic TEXT NOT NULL,
                payload BLOB NOT NULL,
                retain INTEGER NOT NULL,
                created_ms INTEGER NOT NULL,
                mono_ms INTEGER NOT NULL
            )",
        )
        .execute(&mut *conn)
        .await?;
        // A constant of ours, not input: PRAGMA takes no bind parameters.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {SCHEMA_VERSION}"
        )))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), including their extended codes.
fn is_corruption(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 11 | 26)),
        _ => false,
    }
}

/// Renames the database and its WAL/SHM files to `<name>.corrupt-<unix seconds>`.
fn quarantine(path: &Path) -> Result<PathBuf, OutboxError> {
    let stamp = crate::flow::now_ms() / 1000;
    let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to).map_err(|source| OutboxError::Quarantine {
                path: from.clone(),
                source,
            })?;
        }
    }
    Ok(aside)
}

struct Opened {
    writer: SqliteConnection,
    reader: SqliteConnection,
    rows: i64,
    bytes: i64,
    max_id: i64,
    max_mono: i64,
}

async fn open_db(path: &Path) -> Result<Opened, sqlx::Error> {
    let mut writer = connect(path).await?;
    init_schema(&mut writer).await?;
    let reader = connect(path).await?;
    let (rows, bytes, max_id, max_mono): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(topic) + LENGTH(payload)), 0),
                COALESCE(MAX(id), 0), COALESCE(MAX(mono_ms), 0) FROM outbox",
    )
    .fetch_one(&mut writer)
    .await?;
    Ok(Opened {
        writer,
        reader,
        rows,
        bytes,
        max_id,
        max_mono,
    })
}

impl Outbox {
    /// Opens (or creates) `dir/outbox.db` and starts the writer task. A corrupt database is
    /// moved aside and replaced by an empty one.
    pub async fn open(dir: &Path, settings: &OutboxSettings) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("outbox.db");
        let opened = match open_db(&path).await {
            Ok(o) => o,
            Err(e) if is_corruption(&e) => {
                let aside = quarantine(&path)?;
                tracing::error!(
                    event = "outbox_quarantined",
                    error = %e,
                    path = %path.display(),
                    moved_to = %aside.display(),
                    "outbox database is corrupt: moved it aside and started a new, empty one; messages in the old file were not sent"
                );
                open_db(&path).await.map_err(db_err(&path))?
            }
            Err(e) => return Err(db_err(&path)(e)),
        };
        let stats = Arc::new(Stats::default());
        stats.rows.store(opened.rows as u64, Ordering::Relaxed);
        stats.bytes.store(opened.bytes as u64, Ordering::Relaxed);
        if opened.rows > 0 {
            tracing::info!(
                rows = opened.rows,
                bytes = opened.bytes,
                "outbox holds unsent messages from before; sending them first"
            );
        }
        let clock = Arc::new(RunClock {
            base_ms: opened.max_mono + 1,
            started: Instant::now(),
        });
        let (latest_tx, latest) = watch::channel(opened.max_id);
        let (tx, rx) = mpsc::channel(256);
        let w = Writer {
            conn: Some(opened.writer),
            settings: settings.clone(),
            stats: stats.clone(),
            latest: latest_tx,
            clock: clock.clone(),
            path: path.clone(),
        };
        tokio::spawn(w.run(rx));
        Ok(Outbox {
            tx,
            reader: Arc::new(Mutex::new(opened.reader)),
            latest,
            stats,
            clock,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Durably appends `messages`; returns after the transaction that holds them committed.
    /// Messages refused by `drop_newest` count as stored-and-dropped, not as an error.
    pub async fn append(&self, messages: Vec<Message>) -> Result<(), OutboxError> {
        if messages.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(WriteCmd::Append(messages, tx))
            .await
            .map_err(|_| OutboxError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OutboxError::WriteFailed(e)),
            Err(_) => Err(OutboxError::Closed),
        }
    }

    /// Deletes acknowledged rows (in the next group commit).
    pub async fn ack(&self, ids: Vec<i64>) -> Result<(), OutboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.tx
            .send(WriteCmd::Ack(ids))
            .await
            .map_err(|_| OutboxError::Closed)
    }

    /// Waits until everything sent to the writer so far is committed.
    pub async fn flush(&self) -> Result<(), OutboxError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(WriteCmd::Flush(tx))
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)
    }

    /// Up to `limit` rows with an id greater than `after` (and at most `upto`), oldest first.
    pub async fn fetch_range(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<Row>, OutboxError> {
        let mut conn = self.reader.lock().await;
        let rows: Vec<(i64, String, Vec<u8>, bool)> = sqlx::query_as(
            "SELECT id, topic, payload, retain FROM outbox WHERE id > ? AND id <= ?
             ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(upto)
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err(&self.path))?;
        Ok(rows
            .into_iter()
            .map(|(id, topic, payload, retain)| Row {
                id,
                message: Message {
                    topic,
                    payload,
                    retain,
                },
            })
            .collect())
    }

    /// Up to `limit` rows with an id greater than `after`, oldest first.
    pub async fn fetch_after(&self, after: i64, limit: usize) -> Result<Vec<Row>, OutboxError> {
        self.fetch_range(after, i64::MAX, limit).await
    }

    /// How long the oldest stored message has waited (in gateway running time).
    pub async fn oldest_age(&self) -> Result<Option<Duration>, OutboxError> {
        let mut conn = self.reader.lock().await;
        let row: Option<(i64,)> = sqlx::query_as("SELECT mono_ms FROM outbox ORDER BY id LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err(&self.path))?;
        Ok(row.map(|(m,)| Duration::from_millis((self.clock.now_ms() - m).max(0) as u64)))
    }

    /// The id of the newest committed row; changes whenever a commit adds rows.
    pub fn latest(&self) -> watch::Receiver<i64> {
        self.latest.clone()
    }
}

struct Writer {
    /// `None` after a failed commit until a fresh connection is open.
    conn: Option<SqliteConnection>,
    settings: OutboxSettings,
    stats: Arc<Stats>,
    latest: watch::Sender<i64>,
    clock: Arc<RunClock>,
    path: PathBuf,
}

/// Upper bound of messages in one transaction, so one commit never holds the writer for long.
const MAX_GROUP: usize = 20_000;
/// How often the age limit is applied when nothing else happens.
const AGE_TICK: Duration = Duration::from_secs(1);

/// Why messages were given up, for the log line.
#[derive(Debug, Clone, Copy)]
enum DropReason {
    Full,
    Age,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<WriteCmd>) {
        loop {
            let first = if self.settings.max_age.is_some() {
                match tokio::time::timeout(AGE_TICK, rx.recv()).await {
                    Ok(Some(cmd)) => Some(cmd),
                    Ok(None) => break,
                    Err(_) => None,
                }
            } else {
                match rx.recv().await {
                    Some(cmd) => Some(cmd),
                    None => break,
                }
            };
            let mut appends: Vec<PendingAppend> = Vec::new();
            let mut acks: Vec<i64> = Vec::new();
            let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
            let mut count = 0usize;
            let mut take = |cmd: WriteCmd, count: &mut usize| match cmd {
                WriteCmd::Append(m, tx) => {
                    *count += m.len();
                    appends.push((m, tx));
                }
                WriteCmd::Ack(ids) => {
                    *count += ids.len();
                    acks.extend(ids);
                }
                WriteCmd::Flush(tx) => flushes.push(tx),
            };
            if let Some(cmd) = first {
                take(cmd, &mut count);
                // Group commit: collect what arrives within the interval into one transaction.
                let deadline = Instant::now() + self.settings.commit_interval;
                while count < MAX_GROUP {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(cmd)) => take(cmd, &mut count),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            let offered: u64 = appends.iter().map(|(m, _)| m.len() as u64).sum();
            let result = self.commit(&appends, &acks).await;
            if let Err(e) = &result {
                self.count_drops(offered, None, Some(e));
                // A failed COMMIT can leave SQLite's transaction open while the driver believes
                // it closed; later "commits" would then only release savepoints inside it and
                // never reach the disk (seen with a full disk). Closing the connection rolls
                // back for certain; the next group opens a fresh one.
                if let Some(conn) = self.conn.take() {
                    let _ = conn.close().await;
                }
            }
            let reply = result.map_err(Arc::new);
            for (_, tx) in appends {
                let _ = tx.send(reply.clone());
            }
            for tx in flushes {
                let _ = tx.send(());
            }
        }
    }

    fn count_drops(&self, n: u64, reason: Option<DropReason>, error: Option<&sqlx::Error>) {
        if n == 0 {
            return;
        }
        let total = self.stats.dropped.fetch_add(n, Ordering::Relaxed) + n;
        match (reason, error) {
            (_, Some(e)) => tracing::error!(
                event = "outbox_drop",
                reason = "write_failed",
                dropped = n,
                dropped_total = total,
                error = %e,
                path = %self.path.display(),
                "outbox write failed (disk full?): these messages were not stored and will not reach upstream"
            ),
            (Some(r), None) => tracing::error!(
                event = "outbox_drop",
                reason = ?r,
                dropped = n,
                dropped_total = total,
                policy = ?self.settings.overflow,
                max_rows = self.settings.max_rows,
                max_bytes = self.settings.max_bytes,
                max_age = ?self.settings.max_age,
                "outbox limit reached: messages dropped"
            ),
            (None, None) => {}
        }
    }

    async fn commit(&mut self, appends: &[PendingAppend], acks: &[i64]) -> Result<(), sqlx::Error> {
        let now = crate::flow::now_ms();
        let mono = self.clock.now_ms();
        let s = &self.settings;
        if self.conn.is_none() {
            let mut fresh = connect(&self.path).await?;
            init_schema(&mut fresh).await?;
            self.conn = Some(fresh);
            tracing::info!(path = %self.path.display(), "outbox write connection reopened");
        }
        let conn = self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)?;
        let mut tx = conn.begin().await?;

        // Acks first: they make room for this group's appends.
        let (mut rows, mut bytes) = (
            self.stats.rows.load(Ordering::Relaxed),
            self.stats.bytes.load(Ordering::Relaxed),
        );
        let mut acked = 0u64;
        for chunk in acks.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "DELETE FROM outbox WHERE id IN ({placeholders})
                 RETURNING LENGTH(topic) + LENGTH(payload)"
            );
            // Only "?" placeholders are formatted in; the ids are bound.
            let mut q = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for (len,) in q.fetch_all(&mut *tx).await? {
                acked += 1;
                rows -= 1;
                bytes = bytes.saturating_sub(len as u64);
            }
        }

        let mut aged = 0u64;
        if let Some(max_age) = s.max_age {
            let limit = mono - max_age.as_millis() as i64;
            for (len,) in sqlx::query_as::<_, (i64,)>(
                "DELETE FROM outbox WHERE mono_ms < ? RETURNING LENGTH(topic) + LENGTH(payload)",
            )
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?
            {
                aged += 1;
                rows -= 1;
                bytes = bytes.saturating_sub(len as u64);
            }
        }

        let mut refused = 0u64;
        let mut added = 0u64;
        let mut last_id = None;
        for (msgs, _) in appends {
            for m in msgs {
                let fits = rows < s.max_rows && bytes + m.size() <= s.max_bytes;
                if !fits && s.overflow == Overflow::DropNewest {
                    refused += 1;
                    continue;
                }
                let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO outbox (topic, payload, retain, created_ms, mono_ms)
                     VALUES (?, ?, ?, ?, ?) RETURNING id",
                )
                .bind(&m.topic)
                .bind(&m.payload)
                .bind(m.retain)
                .bind(now)
                .bind(mono)
                .fetch_one(&mut *tx)
                .await?;
                last_id = Some(id);
                added += 1;
                rows += 1;
                bytes += m.size();
            }
        }
        let (evicted, evicted_bytes) = enforce_bounds(&mut tx, s, rows, bytes).await?;
        tx.commit().await?;

        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.appended.fetch_add(added, Ordering::Relaxed);
        self.stats.acked.fetch_add(acked, Ordering::Relaxed);
        self.stats.rows.store(rows - evicted, Ordering::Relaxed);
        self.stats
            .bytes
            .store(bytes.saturating_sub(evicted_bytes), Ordering::Relaxed);
        self.count_drops(refused + evicted, Some(DropReason::Full), None);
        self.count_drops(aged, Some(DropReason::Age), None);
        if let Some(id) = last_id {
            self.latest.send_replace(id);
        }
        Ok(())
    }
}

/// Deletes the oldest rows until both limits hold; returns what it removed.
async fn enforce_bounds(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    settings: &OutboxSettings,
    rows: u64,
    bytes: u64,
) -> Result<(u64, u64), sqlx::Error> {
    let (max_rows, max_bytes) = (settings.max_rows, settings.max_bytes);
    if rows <= max_rows && bytes <= max_bytes {
        return Ok((0, 0));
    }
    let (mut r, mut b) = (rows, bytes);
    let (mut drop_rows, mut drop_bytes) = (0u64, 0u64);
    let mut upto: Option<i64> = None;
    while r > max_rows || b > max_bytes {
        let page: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, LENGTH(topic) + LENGTH(payload) FROM outbox WHERE id > ?
             ORDER BY id LIMIT 1000",
        )
        .bind(upto.unwrap_or(0))
        .fetch_all(&mut **tx)
        .await?;
        if page.is_empty() {
            break;
        }
        for (id, len) in page {
            if r <= max_rows && b <= max_bytes {
                break;
            }
            upto = Some(id);
            r -= 1;
            b = b.saturating_sub(len as u64);
            drop_rows += 1;
            drop_bytes += len as u64;
        }
    }
    if let Some(id) = upto {
        sqlx::query("DELETE FROM outbox WHERE id <= ?")
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok((drop_rows, drop_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_rows: u64, max_bytes: u64) -> OutboxSettings {
        OutboxSettings {
            max_rows,
            max_bytes,
            commit_interval: Duration::from_millis(5),
            max_age: None,
            overflow: Overflow::DropOldest,
        }
    }

    async fn topics(ob: &Outbox) -> Vec<String> {
        ob.fetch_after(0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.message.topic)
            .collect()
    }

    fn msg(i: usize) -> Message {
        Message {
            topic: format!("t/{i}"),
            payload: format!("p{i}").into_bytes(),
            retain: i.is_multiple_of(2),
        }
    }

    #[tokio::test]
    async fn appended_rows_survive_reopening_in_order_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &settings(100, 1 << 20))
            .await
            .unwrap();
        ob.append((0..5).map(msg).collect()).await.unwrap();
        let rows = ob.fetch_after(0, 10).await.unwrap();
        assert_eq!(rows.len(), 5);
        ob.ack(vec![rows[0].id, rows[2].id]).await.unwrap();
        ob.flush().await.unwrap();
        drop(ob);
        let ob = Outbox::open(dir.path(), &settings(100, 1 << 20))
            .await
            .unwrap();
        let left: Vec<Message> = ob
            .fetch_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.message)
            .collect();
        assert_eq!(left, vec![msg(1), msg(3), msg(4)]);
        assert_eq!(ob.stats().rows.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_full_outbox_drops_the_oldest_rows_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &settings(3, 1 << 20))
            .await
            .unwrap();
        ob.append((0..5).map(msg).collect()).await.unwrap();
        let left: Vec<Message> = ob
            .fetch_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.message)
            .collect();
        assert_eq!(left, vec![msg(2), msg(3), msg(4)]);
        assert_eq!(ob.stats().dropped.load(Ordering::Relaxed), 2);
        assert_eq!(ob.stats().rows.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn the_byte_limit_drops_oldest_rows_too() {
        let dir = tempfile::tempdir().unwrap();
        // each message is 3 + 2 = 5 bytes; 12 bytes hold two of them
        let ob = Outbox::open(dir.path(), &settings(100, 12)).await.unwrap();
        ob.append((0..4).map(msg).collect()).await.unwrap();
        let ids: Vec<String> = ob
            .fetch_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.message.topic)
            .collect();
        assert_eq!(ids, vec!["t/2", "t/3"]);
        assert_eq!(ob.stats().dropped.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn latest_id_advances_after_each_commit_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &settings(100, 1 << 20))
            .await
            .unwrap();
        ob.append(vec![msg(0)]).await.unwrap();
        let first = *ob.latest().borrow();
        let rows = ob.fetch_after(0, 10).await.unwrap();
        ob.ack(vec![rows[0].id]).await.unwrap();
        ob.flush().await.unwrap();
        ob.append(vec![msg(1)]).await.unwrap();
        let second = *ob.latest().borrow();
        assert!(second > first, "{second} > {first}");
        let rows = ob.fetch_after(first, 10).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].id, second);
    }

    #[tokio::test]
    async fn drop_newest_keeps_the_stored_rows_and_refuses_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = settings(3, 1 << 20);
        st.overflow = Overflow::DropNewest;
        let ob = Outbox::open(dir.path(), &st).await.unwrap();
        ob.append((0..5).map(msg).collect()).await.unwrap();
        assert_eq!(topics(&ob).await, vec!["t/0", "t/1", "t/2"]);
        assert_eq!(ob.stats().dropped.load(Ordering::Relaxed), 2);
        // an ack makes room again
        let first = ob.fetch_after(0, 1).await.unwrap()[0].id;
        ob.ack(vec![first]).await.unwrap();
        ob.append(vec![msg(9)]).await.unwrap();
        assert_eq!(topics(&ob).await, vec!["t/1", "t/2", "t/9"]);
    }

    #[tokio::test(start_paused = true)]
    async fn rows_older_than_max_age_in_running_time_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = settings(100, 1 << 20);
        st.max_age = Some(Duration::from_secs(60));
        let ob = Outbox::open(dir.path(), &st).await.unwrap();
        ob.append(vec![msg(0)]).await.unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        ob.append(vec![msg(1)]).await.unwrap();
        tokio::time::advance(Duration::from_secs(31)).await;
        ob.append(vec![msg(2)]).await.unwrap();
        assert_eq!(topics(&ob).await, vec!["t/1", "t/2"]);
        assert_eq!(ob.stats().dropped.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn wall_clock_timestamps_neither_order_nor_age_rows() {
        // Rows written before NTP synced carry 1970 wall-clock times; after the sync new rows
        // carry 2026. Neither the order nor the age limit may depend on that.
        let dir = tempfile::tempdir().unwrap();
        let mut st = settings(100, 1 << 20);
        st.max_age = Some(Duration::from_secs(3600));
        let ob = Outbox::open(dir.path(), &st).await.unwrap();
        ob.append(vec![msg(0), msg(1)]).await.unwrap();
        let mut conn = connect(ob.path()).await.unwrap();
        sqlx::query("UPDATE outbox SET created_ms = 0")
            .execute(&mut conn)
            .await
            .unwrap();
        ob.append(vec![msg(2)]).await.unwrap();
        assert_eq!(topics(&ob).await, vec!["t/0", "t/1", "t/2"]);
        assert_eq!(ob.stats().dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn the_running_clock_continues_after_a_restart_so_older_rows_stay_older() {
        let dir = tempfile::tempdir().unwrap();
        let st = settings(100, 1 << 20);
        let ob = Outbox::open(dir.path(), &st).await.unwrap();
        ob.append(vec![msg(0), msg(1)]).await.unwrap();
        drop(ob);
        let ob = Outbox::open(dir.path(), &st).await.unwrap();
        ob.append(vec![msg(2)]).await.unwrap();
        let mut conn = connect(ob.path()).await.unwrap();
        let stamps: Vec<(i64,)> = sqlx::query_as("SELECT mono_ms FROM outbox ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(stamps.len(), 3);
        assert!(stamps[2].0 > stamps[1].0, "{stamps:?}");
    }

    #[tokio::test]
    async fn a_corrupt_database_is_moved_aside_and_a_fresh_one_works() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("outbox.db"), vec![0xA5u8; 8192]).unwrap();
        let ob = Outbox::open(dir.path(), &settings(100, 1 << 20))
            .await
            .unwrap();
        ob.append(vec![msg(0)]).await.unwrap();
        assert_eq!(topics(&ob).await, vec!["t/0"]);
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("outbox.db.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        let kept = std::fs::read(dir.path().join(&aside[0])).unwrap();
        assert_eq!(
            kept,
            vec![0xA5u8; 8192],
            "the corrupt file is kept for inspection"
        );
    }
}
