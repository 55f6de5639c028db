//! The durable outbox: every message bound upstream is committed to SQLite before anyone sees it,
//! and deleted only when the upstream broker has acknowledged it (design.md §3, O1–O5).
//!
//! One writer task owns the write connection and group-commits: appends and acks that arrive
//! within `commit_interval` share one transaction (an SD card wears out on per-message fsyncs).
//! `append` returns only after that transaction committed with `synchronous=FULL` in WAL mode, so
//! a process crash loses nothing that was appended and a power cut at most the group being
//! committed. In-flight state is not persisted: after a restart every row is sent again (O3).
//! The outbox is bounded by rows and bytes; when full, the oldest rows are dropped, counted and
//! logged at error level (O5). Rows are ordered by their id, never by timestamp, so a clock jump
//! (a Pi without RTC syncing NTP) cannot reorder or drop anything.

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

use crate::config::OutboxSettings;

/// A message bound upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

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
    #[error("outbox is closed")]
    Closed,
}

/// Counters, readable from any task.
#[derive(Debug, Default)]
pub struct Stats {
    pub appended: AtomicU64,
    pub acked: AtomicU64,
    pub dropped: AtomicU64,
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub commits: AtomicU64,
}

/// Messages waiting for the group commit, and who to tell when it is done.
type PendingAppend = (Vec<Message>, oneshot::Sender<Result<(), String>>);

enum WriteCmd {
    Append(Vec<Message>, oneshot::Sender<Result<(), String>>),
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
                created_ms INTEGER NOT NULL
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

impl Outbox {
    /// Opens (or creates) `dir/outbox.db` and starts the writer task.
    pub async fn open(dir: &Path, settings: &OutboxSettings) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("outbox.db");
        let err = db_err(&path);
        let mut writer = connect(&path).await.map_err(&err)?;
        init_schema(&mut writer).await.map_err(&err)?;
        let reader = connect(&path).await.map_err(&err)?;
        let (rows, bytes, max_id): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(topic) + LENGTH(payload)), 0),
                    COALESCE(MAX(id), 0) FROM outbox",
        )
        .fetch_one(&mut writer)
        .await
        .map_err(&err)?;
        let stats = Arc::new(Stats::default());
        stats.rows.store(rows as u64, Ordering::Relaxed);
        stats.bytes.store(bytes as u64, Ordering::Relaxed);
        if rows > 0 {
            tracing::info!(
                rows,
                bytes,
                "outbox holds unsent messages from before; sending them first"
            );
        }
        let (latest_tx, latest) = watch::channel(max_id);
        let (tx, rx) = mpsc::channel(256);
        let w = Writer {
            conn: writer,
            settings: settings.clone(),
            stats: stats.clone(),
            latest: latest_tx,
            path: path.clone(),
        };
        tokio::spawn(w.run(rx));
        let path = path.clone();
        Ok(Outbox {
            tx,
            reader: Arc::new(Mutex::new(reader)),
            latest,
            stats,
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
            Ok(Err(e)) => Err(OutboxError::Db {
                path: self.path.clone(),
                source: sqlx::Error::Protocol(e),
            }),
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

    /// Up to `limit` rows with an id greater than `after`, oldest first.
    pub async fn fetch_after(&self, after: i64, limit: usize) -> Result<Vec<Row>, OutboxError> {
        let mut conn = self.reader.lock().await;
        let rows: Vec<(i64, String, Vec<u8>, bool)> = sqlx::query_as(
            "SELECT id, topic, payload, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
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

    /// The id of the newest committed row; changes whenever a commit adds rows.
    pub fn latest(&self) -> watch::Receiver<i64> {
        self.latest.clone()
    }
}

struct Writer {
    conn: SqliteConnection,
    settings: OutboxSettings,
    stats: Arc<Stats>,
    latest: watch::Sender<i64>,
    path: PathBuf,
}

/// Upper bound of messages in one transaction, so one commit never holds the writer for long.
const MAX_GROUP: usize = 20_000;

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<WriteCmd>) {
        while let Some(first) = rx.recv().await {
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
            take(first, &mut count);
            // Group commit: collect what arrives within the interval into one transaction.
            let deadline = Instant::now() + self.settings.commit_interval;
            while count < MAX_GROUP {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(cmd)) => take(cmd, &mut count),
                    Ok(None) | Err(_) => break,
                }
            }
            let result = self.commit(&appends, &acks).await;
            match &result {
                Ok(()) => {}
                Err(e) => tracing::error!(
                    error = %e,
                    path = %self.path.display(),
                    lost = appends.iter().map(|(m, _)| m.len()).sum::<usize>(),
                    "outbox commit failed; these messages were not stored"
                ),
            }
            let reply = result.map_err(|e| e.to_string());
            for (_, tx) in appends {
                let _ = tx.send(reply.clone());
            }
            for tx in flushes {
                let _ = tx.send(());
            }
        }
    }

    async fn commit(&mut self, appends: &[PendingAppend], acks: &[i64]) -> Result<(), sqlx::Error> {
        let now = crate::reading::now_ms();
        let mut tx = self.conn.begin().await?;
        let mut added_rows = 0u64;
        let mut added_bytes = 0u64;
        let mut last_id = None;
        for (msgs, _) in appends {
            for m in msgs {
                let (id,): (i64,) = sqlx::query_as(
                    "INSERT INTO outbox (topic, payload, retain, created_ms) VALUES (?, ?, ?, ?)
                     RETURNING id",
                )
                .bind(&m.topic)
                .bind(&m.payload)
                .bind(m.retain)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                last_id = Some(id);
                added_rows += 1;
                added_bytes += (m.topic.len() + m.payload.len()) as u64;
            }
        }
        let mut removed_rows = 0u64;
        let mut removed_bytes = 0u64;
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
                removed_rows += 1;
                removed_bytes += len as u64;
            }
        }
        let rows = self.stats.rows.load(Ordering::Relaxed) + added_rows - removed_rows;
        let bytes = self.stats.bytes.load(Ordering::Relaxed) + added_bytes - removed_bytes;
        let (dropped_rows, dropped_bytes) =
            enforce_bounds(&mut tx, &self.settings, rows, bytes).await?;
        tx.commit().await?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.appended.fetch_add(added_rows, Ordering::Relaxed);
        self.stats.acked.fetch_add(removed_rows, Ordering::Relaxed);
        self.stats
            .rows
            .store(rows - dropped_rows, Ordering::Relaxed);
        self.stats
            .bytes
            .store(bytes - dropped_bytes, Ordering::Relaxed);
        if dropped_rows > 0 {
            let total = self
                .stats
                .dropped
                .fetch_add(dropped_rows, Ordering::Relaxed)
                + dropped_rows;
            tracing::error!(
                event = "outbox_drop",
                dropped = dropped_rows,
                dropped_total = total,
                max_rows = self.settings.max_rows,
                max_bytes = self.settings.max_bytes,
                "outbox full: dropped the oldest messages"
            );
        }
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
        }
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
}
