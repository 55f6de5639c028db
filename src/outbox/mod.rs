//! The durable outbox: every message bound upstream is committed to SQLite before anyone sees it,
//! and deleted only when the upstream broker has acknowledged it (design.md §3, O1–O9).
//!
//! One writer task (`writer.rs`) owns the write connection and group-commits: appends that
//! arrive within `commit_interval` share one transaction of a few multi-row INSERTs (an SD card
//! wears out on per-message fsyncs). `append` returns only after that transaction committed with
//! `synchronous=FULL` in WAL mode, so a process crash loses nothing that was appended and a power
//! cut at most the group being committed. Acks are deleted as id ranges, within `ACK_INTERVAL`
//! (10 ms) once `ACK_BATCH` (64) wait and with the next group commit before that, which bounds
//! the duplicates after a crash. In-flight state is not persisted: after a
//! restart every row is sent again (O3). Reads are served in id order from a read-ahead page, so
//! the uplink's many small fetches cost one query per page.
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
//! Integrity (O6, O9): a high-water mark beside the database (`mark.rs`, `outbox.hwm`) says what
//! the outbox held after its last commit; rows it counted that the database no longer has (WAL
//! garbage, a truncated main file) are reported at open (`event=outbox_rows_lost`, counted as
//! dropped). A database that is not a database or is corrupt is moved aside (`outbox.db.corrupt-
//! <unix time>`), its readable rows are salvaged into a fresh one with their ids (`salvage.rs`,
//! `event=outbox_salvaged`), and the gateway starts. `close` checkpoints the WAL into the main
//! file at shutdown.

mod ahead;
mod db;
pub mod inflight;
mod mark;
mod row;
mod salvage;
mod sql;
mod writer;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::time::Instant;

use crate::config::OutboxSettings;
use crate::flow::Message;
use ahead::{Pages, Refill, READ_AHEAD};
use db::{connect, highest_id, init_schema, is_corruption, raise_sequence};
use mark::{Mark, MarkFile};
use writer::{RunClock, WriteCmd, Writer};

pub use row::Row;
pub use writer::{Liveness, Stats, ACK_BATCH};

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
    #[error("outbox {path}: salvaging rows from the corrupt database failed: {source}")]
    Salvage { path: PathBuf, source: sqlx::Error },
    #[error("outbox {path}: closing (WAL checkpoint) failed: {source}")]
    Close { path: PathBuf, source: sqlx::Error },
    /// The group commit that held the messages failed (disk full, I/O error); shared by every
    /// caller whose messages were in that group.
    #[error("outbox: write failed, messages not stored: {0}")]
    WriteFailed(Arc<sqlx::Error>),
    #[error("outbox is closed")]
    Closed,
}

/// The read connection and its read-ahead pages. The pages have their own lock, never held
/// across an await, so a fetch served from memory never waits for a query under way.
struct Reader {
    conn: Mutex<SqliteConnection>,
    pages: std::sync::Mutex<Pages>,
}

impl Reader {
    fn pages(&self) -> std::sync::MutexGuard<'_, Pages> {
        // Plain bookkeeping, left consistent at every step: a panic elsewhere cannot break it.
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Resolves when the messages of one `Outbox::submit` are committed (or their commit failed).
pub struct Receipt(oneshot::Receiver<Result<(), Arc<sqlx::Error>>>);

impl Receipt {
    pub async fn committed(self) -> Result<(), OutboxError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OutboxError::WriteFailed(e)),
            Err(_) => Err(OutboxError::Closed),
        }
    }
}

/// Cheap to clone; every clone talks to the same writer task.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<WriteCmd>,
    reader: Arc<Reader>,
    latest: watch::Receiver<i64>,
    stats: Arc<Stats>,
    clock: Arc<RunClock>,
    evictions: Arc<AtomicU64>,
    path: PathBuf,
}

fn db_err(path: &Path) -> impl Fn(sqlx::Error) -> OutboxError + '_ {
    move |source| OutboxError::Db {
        path: path.to_path_buf(),
        source,
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
    low_id: i64,
}

async fn open_db(path: &Path) -> Result<Opened, sqlx::Error> {
    let mut writer = connect(path).await?;
    init_schema(&mut writer).await?;
    let reader = connect(path).await?;
    // Reads every row: a damaged page anywhere in the table shows up here, not in the uplink.
    let (rows, bytes, max_id, max_mono, low_id): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(topic) + LENGTH(payload)), 0),
                COALESCE(MAX(id), 0), COALESCE(MAX(mono_ms), 0), COALESCE(MIN(id), 0) FROM outbox",
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
        low_id,
    })
}

/// Compares the database with the high-water mark: committed rows it counted that are gone.
/// Raises the id counter to the mark so ids never go backwards. Returns the rows lost.
async fn check_mark(path: &Path, o: &mut Opened, mark: &Mark) -> Result<u64, sqlx::Error> {
    let highest = highest_id(&mut o.writer).await?;
    if highest >= mark.last_id {
        return Ok(0);
    }
    let (found,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE id BETWEEN ? AND ?")
        .bind(mark.low_id)
        .bind(mark.last_id)
        .fetch_one(&mut o.writer)
        .await?;
    raise_sequence(&mut o.writer, mark.last_id).await?;
    o.max_id = o.max_id.max(mark.last_id);
    let lost = (mark.rows - found).max(0) as u64;
    if lost > 0 {
        tracing::error!(
            event = "outbox_rows_lost",
            lost,
            expected = mark.rows,
            found,
            newest_id_expected = mark.last_id,
            newest_id_found = highest,
            path = %path.display(),
            "outbox: committed messages are missing from the database (damaged or deleted WAL or main file); they will not reach upstream"
        );
    } else {
        tracing::warn!(
            newest_id_expected = mark.last_id,
            newest_id_found = highest,
            path = %path.display(),
            "outbox: the database is older than its last commit (damaged WAL?), but no pending message is missing"
        );
    }
    Ok(lost)
}

/// Rows with `after < id ≤ upto`, oldest first, at most `limit`.
async fn read_rows(
    conn: &mut SqliteConnection,
    after: i64,
    upto: i64,
    limit: usize,
) -> Result<Vec<Row>, sqlx::Error> {
    let fetched: Vec<(i64, String, Vec<u8>, bool)> = sqlx::query_as(
        "SELECT id, topic, payload, retain FROM outbox WHERE id > ? AND id <= ?
         ORDER BY id LIMIT ?",
    )
    .bind(after)
    .bind(upto)
    .bind(limit as i64)
    .fetch_all(conn)
    .await?;
    Ok(fetched
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

impl Outbox {
    /// Opens (or creates) `dir/outbox.db` and starts the writer task. Missing committed rows are
    /// reported and counted; a corrupt database is moved aside, its readable rows are salvaged
    /// into a new one.
    pub async fn open(dir: &Path, settings: &OutboxSettings) -> Result<Outbox, OutboxError> {
        Outbox::open_watched(dir, settings, None).await
    }

    /// Like [`Outbox::open`], with the writer task reporting its liveness to `beat`.
    pub async fn open_watched(
        dir: &Path,
        settings: &OutboxSettings,
        beat: Option<Box<dyn Liveness>>,
    ) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(dir).map_err(|source| OutboxError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("outbox.db");
        let mark_path = dir.join("outbox.hwm");
        let old_mark = match mark::read(&mark_path) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, path = %mark_path.display(), "outbox: cannot read the high-water mark; a loss of rows before this start cannot be counted");
                None
            }
        };
        let mut lost = 0u64;
        let mut opened = match open_db(&path).await {
            Ok(mut o) => {
                if let Some(m) = &old_mark {
                    lost = check_mark(&path, &mut o, m).await.map_err(db_err(&path))?;
                }
                o
            }
            Err(e) if is_corruption(&e) => {
                let aside = quarantine(&path)?;
                let mut o = open_db(&path).await.map_err(db_err(&path))?;
                let known = old_mark.map_or(0, |m| m.last_id);
                let got = salvage::salvage(&aside, &mut o.writer, known)
                    .await
                    .map_err(|source| OutboxError::Salvage {
                        path: path.clone(),
                        source,
                    })?;
                let highest = got.highest.max(known);
                raise_sequence(&mut o.writer, highest)
                    .await
                    .map_err(db_err(&path))?;
                let expected = old_mark.map(|m| m.rows);
                lost = expected.map_or(got.unreadable, |n| (n - got.saved as i64).max(0) as u64);
                tracing::error!(
                    event = "outbox_quarantined",
                    error = %e,
                    path = %path.display(),
                    moved_to = %aside.display(),
                    "outbox database is corrupt: moved it aside and started a new one with the rows that could still be read"
                );
                tracing::error!(
                    event = "outbox_salvaged",
                    saved = got.saved,
                    lost,
                    expected = ?expected,
                    skipped_id_ranges = ?got.skipped,
                    unreadable = got.unreadable,
                    moved_to = %aside.display(),
                    "outbox salvage: readable rows of the corrupt database kept with their ids, in order"
                );
                // Re-read the figures of the new file (and check it reads).
                drop(o);
                let mut o = open_db(&path).await.map_err(db_err(&path))?;
                o.max_id = o.max_id.max(highest);
                o
            }
            Err(e) => return Err(db_err(&path)(e)),
        };
        let stats = Arc::new(Stats::default());
        stats.rows.store(opened.rows as u64, Ordering::Relaxed);
        stats.bytes.store(opened.bytes as u64, Ordering::Relaxed);
        stats.dropped.store(lost, Ordering::Relaxed);
        let (dead,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM dead_letter")
            .fetch_one(&mut opened.writer)
            .await
            .map_err(db_err(&path))?;
        stats
            .dead_letters
            .store(u64::try_from(dead).unwrap_or(0), Ordering::Relaxed);
        if opened.rows > 0 {
            tracing::info!(
                rows = opened.rows,
                bytes = opened.bytes,
                "outbox holds unsent messages from before; sending them first"
            );
        }
        let mark_file = match MarkFile::open(&mark_path) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, path = %mark_path.display(), "outbox: cannot write the high-water mark; a later loss of rows may go uncounted");
                None
            }
        };
        let mark = Mark {
            seq: old_mark.map_or(0, |m| m.seq) + 1,
            last_id: highest_id(&mut opened.writer)
                .await
                .map_err(db_err(&path))?
                .max(opened.max_id),
            rows: opened.rows,
            low_id: opened.low_id,
            clean: false,
        };
        if let Some(f) = &mark_file {
            if let Err(e) = f.record(&mark) {
                tracing::warn!(error = %e, path = %mark_path.display(), "outbox: cannot write the high-water mark");
            }
        }
        let clock = Arc::new(RunClock {
            base_ms: opened.max_mono + 1,
            started: Instant::now(),
        });
        let evictions = Arc::new(AtomicU64::new(0));
        let (latest_tx, latest) = watch::channel(opened.max_id);
        let (tx, rx) = mpsc::channel(256);
        let w = Writer {
            conn: Some(opened.writer),
            light_sync: false,
            settings: settings.clone(),
            stats: stats.clone(),
            latest: latest_tx,
            clock: clock.clone(),
            path: path.clone(),
            evictions: evictions.clone(),
            mark_file,
            mark,
            beat,
        };
        tokio::spawn(w.run(rx));
        Ok(Outbox {
            tx,
            reader: Arc::new(Reader {
                conn: Mutex::new(opened.reader),
                pages: std::sync::Mutex::new(Pages::default()),
            }),
            latest,
            stats,
            clock,
            evictions,
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
            .send(WriteCmd::Append {
                messages,
                done: tx,
                urgent: false,
            })
            .await
            .map_err(|_| OutboxError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(OutboxError::WriteFailed(e)),
            Err(_) => Err(OutboxError::Closed),
        }
    }

    /// Hands `messages` to the writer for the next commit and returns at once (after waiting
    /// for room in the writer's queue, which is the back-pressure). The receipt resolves when
    /// the transaction holding them committed. A submit marks its group urgent: someone is
    /// waiting for it (a local client's PUBACK), so the writer commits as soon as its queue is
    /// momentarily empty instead of waiting out `commit_interval`. While that fsync runs, the
    /// next group builds up, so a steady stream still shares commits.
    pub async fn submit(&self, messages: Vec<Message>) -> Result<Receipt, OutboxError> {
        let (tx, rx) = oneshot::channel();
        if messages.is_empty() {
            let _ = tx.send(Ok(()));
            return Ok(Receipt(rx));
        }
        self.tx
            .send(WriteCmd::Append {
                messages,
                done: tx,
                urgent: true,
            })
            .await
            .map_err(|_| OutboxError::Closed)?;
        Ok(Receipt(rx))
    }

    /// Moves rows the uplink cannot send to the dead-letter table with their reason (committed
    /// within `ACK_INTERVAL`, like an ack), so one bad row never blocks the queue.
    pub async fn dead_letter(&self, rows: Vec<(i64, &'static str)>) -> Result<(), OutboxError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.tx
            .send(WriteCmd::DeadLetter(rows))
            .await
            .map_err(|_| OutboxError::Closed)
    }

    /// Deletes acknowledged rows (committed within `ACK_INTERVAL`).
    pub async fn ack(&self, ids: Vec<i64>) -> Result<(), OutboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.tx
            .send(WriteCmd::Ack(ids))
            .await
            .map_err(|_| OutboxError::Closed)
    }

    /// Waits until everything sent to the writer so far is committed (at once, without waiting
    /// for the group's interval).
    pub async fn flush(&self) -> Result<(), OutboxError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(WriteCmd::Flush(tx))
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)
    }

    /// Clean shutdown: commits what is pending, checkpoints the WAL into the main file (so no
    /// pending row lives only in the WAL), marks the outbox clean and stops the writer. Every
    /// later write through any clone fails with `Closed`.
    pub async fn close(&self) -> Result<(), OutboxError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(WriteCmd::Close(tx))
            .await
            .map_err(|_| OutboxError::Closed)?;
        match rx.await {
            Ok(r) => r.map_err(|source| OutboxError::Close {
                path: self.path.clone(),
                source,
            }),
            Err(_) => Err(OutboxError::Closed),
        }
    }

    /// Prepares a new upstream session that reads from its start: commits the acks of the
    /// sessions before it, which would otherwise still be in the table and be sent again, and
    /// forgets the read-ahead pages, which may hold rows acknowledged since they were read.
    pub async fn reread(&self) -> Result<(), OutboxError> {
        self.flush().await?;
        self.reader.pages().clear();
        Ok(())
    }

    /// Up to `limit` rows with an id greater than `after` (and at most `upto`), oldest first.
    /// Served from a read-ahead page when an earlier read covered the range.
    pub async fn fetch_range(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<Row>, OutboxError> {
        if limit == 0 || upto <= after {
            return Ok(Vec::new());
        }
        let evictions = self.evictions.load(Ordering::Acquire);
        let want = (after, upto, limit);
        if let Some(rows) = self.serve_from_pages(want, evictions, false) {
            return Ok(rows);
        }
        let mut conn = self.reader.conn.lock().await;
        // A background read may have completed the page while this waited for the connection.
        if let Some(rows) = self.serve_from_pages(want, evictions, true) {
            return Ok(rows);
        }
        let read = limit.max(READ_AHEAD);
        // Every row up to this id was committed before the query below, so it sees all of them.
        let committed = *self.latest.borrow();
        let fetched = read_rows(&mut conn, after, upto, read)
            .await
            .map_err(db_err(&self.path))?;
        let covered = ahead::covered(after, upto, read, &fetched, committed);
        let mut rest: VecDeque<Row> = fetched.into();
        let out: Vec<Row> = rest.drain(..limit.min(rest.len())).collect();
        let last = out.last().map_or(after, |r| r.id);
        self.reader.pages().keep(last, covered, rest, evictions);
        Ok(out)
    }

    fn serve_from_pages(
        &self,
        want: (i64, i64, usize),
        evictions: u64,
        settled: bool,
    ) -> Option<Vec<Row>> {
        let (rows, refill) = self.reader.pages().serve(want, evictions, settled);
        if let Some(r) = refill {
            self.read_ahead(r);
        }
        rows
    }

    /// Reads the next page in the background (see `ahead`). It takes the connection like any
    /// fetch, so a fetch that needs its rows waits for it rather than reading them twice.
    fn read_ahead(&self, r: Refill) {
        let reader = self.reader.clone();
        let latest = self.latest.clone();
        tokio::spawn(async move {
            let mut conn = reader.conn.lock().await;
            let committed = *latest.borrow();
            match read_rows(&mut conn, r.after, r.upto, READ_AHEAD).await {
                Ok(rows) => {
                    let covered = ahead::covered(r.after, r.upto, READ_AHEAD, &rows, committed);
                    reader.pages().extend(&r, rows, covered);
                }
                // Nothing is lost: the fetch that needs these rows reads them itself and
                // reports the error if it persists.
                Err(e) => {
                    tracing::debug!(error = %e, "outbox: read-ahead failed; the next fetch reads inline");
                    reader.pages().refill_failed(&r);
                }
            }
        });
    }

    /// Up to `limit` rows with an id greater than `after`, oldest first.
    pub async fn fetch_after(&self, after: i64, limit: usize) -> Result<Vec<Row>, OutboxError> {
        self.fetch_range(after, i64::MAX, limit).await
    }

    /// How long the oldest stored message has waited (in gateway running time).
    pub async fn oldest_age(&self) -> Result<Option<Duration>, OutboxError> {
        let mut conn = self.reader.conn.lock().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overflow;

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

    /// A watch that asks the writer to come round every 100 ms and never hangs.
    struct FastTick;

    impl Liveness for FastTick {
        fn busy(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
            Box::pin(async {})
        }
        fn waiting(&self, _limit: Duration) {}
        fn tick(&self) -> Duration {
            Duration::from_millis(100)
        }
    }

    // Real time: with a paused clock, the test's waits would run ahead of SQLite's own thread.
    #[tokio::test]
    async fn a_watched_writer_that_comes_round_often_still_applies_the_age_limit_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = settings(100, 1 << 20);
        st.max_age = Some(Duration::from_millis(300));
        let ob = Outbox::open_watched(dir.path(), &st, Some(Box::new(FastTick)))
            .await
            .unwrap();
        ob.append(vec![msg(0)]).await.unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while ob.stats().dropped.load(Ordering::Relaxed) == 0 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ob.stats().dropped.load(Ordering::Relaxed), 1);
        assert!(topics(&ob).await.is_empty());
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
        let mut conn = db::connect(ob.path()).await.unwrap();
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
        let mut conn = db::connect(ob.path()).await.unwrap();
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

    fn reading(i: usize) -> Message {
        Message {
            topic: format!("fieldbridge/gw/dev-{}/hr{}", i % 50, i % 7),
            payload: format!(r#"{{"id":"b-{i}","v":{i},"ts":1764500000000}}"#).into_bytes(),
            retain: false,
        }
    }

    /// The uplink's pattern around reconnects: each session reads from the start again, and
    /// the rows it sent and got acknowledged are deleted. A read-ahead page left from an earlier
    /// session still holds such rows; `reread` at each connection keeps them from being sent twice.
    #[tokio::test]
    async fn a_session_that_rereads_never_gets_rows_acknowledged_in_an_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &settings(1_000_000, 1 << 30))
            .await
            .unwrap();
        ob.append((0..100).map(reading).collect()).await.unwrap();
        let ids = |rows: Vec<Row>| rows.iter().map(|r| r.id).collect::<Vec<_>>();
        // Session 1 reads five rows; nothing is acknowledged.
        assert_eq!(
            ids(ob.fetch_range(0, 100, 5).await.unwrap()),
            [1, 2, 3, 4, 5]
        );
        // Session 2 starts over and sends 1..=15; the broker acknowledges all but 7.
        ob.reread().await.unwrap();
        assert_eq!(
            ids(ob.fetch_range(0, 100, 5).await.unwrap()),
            [1, 2, 3, 4, 5]
        );
        let more = ids(ob.fetch_range(5, 100, 10).await.unwrap());
        assert_eq!(more, (6..=15).collect::<Vec<_>>());
        ob.ack((1..=15).filter(|&i| i != 7).collect())
            .await
            .unwrap();
        // Session 3, at once: 7 again, then what nobody has acknowledged yet.
        ob.reread().await.unwrap();
        assert_eq!(ids(ob.fetch_range(0, 100, 1).await.unwrap()), [7]);
        assert_eq!(ids(ob.fetch_range(7, 100, 3).await.unwrap()), [16, 17, 18]);
    }

    #[tokio::test]
    async fn small_fetches_served_from_read_ahead_return_every_row_once_in_order_while_appends_continue(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &settings(1_000_000, 1 << 30))
            .await
            .unwrap();
        ob.append((0..3_000).map(reading).collect()).await.unwrap();
        let (mut seen, mut after, mut next) = (Vec::new(), 0i64, 3_000usize);
        for round in 0..2_000 {
            let newest = *ob.latest().borrow();
            let rows = ob.fetch_range(after, newest, 1 + round % 9).await.unwrap();
            if let Some(r) = rows.last() {
                after = r.id;
            }
            seen.extend(rows);
            if round % 50 == 0 {
                ob.append((next..next + 100).map(reading).collect())
                    .await
                    .unwrap();
                next += 100;
            }
        }
        loop {
            let rows = ob.fetch_range(after, i64::MAX, 500).await.unwrap();
            let Some(r) = rows.last() else { break };
            after = r.id;
            seen.extend(rows);
        }
        assert_eq!(seen.len(), next);
        for (i, r) in seen.iter().enumerate() {
            assert_eq!(r.message, reading(i), "row {i}");
        }
        assert!(seen.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[tokio::test]
    async fn a_backlog_and_a_live_stream_read_side_by_side_each_get_every_row_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &settings(1_000_000, 1 << 30))
            .await
            .unwrap();
        ob.append((0..5_000).map(reading).collect()).await.unwrap();
        let replay_end = *ob.latest().borrow();
        let (mut backlog, mut live) = (Vec::new(), Vec::new());
        let (mut after_b, mut after_l, mut next) = (0i64, replay_end, 5_000usize);
        for round in 0..400 {
            let rows = ob.fetch_range(after_b, replay_end, 37).await.unwrap();
            if let Some(r) = rows.last() {
                after_b = r.id;
            }
            backlog.extend(rows);
            ob.append((next..next + 7).map(reading).collect())
                .await
                .unwrap();
            next += 7;
            let newest = *ob.latest().borrow();
            let rows = ob
                .fetch_range(after_l, newest, 1 + round % 13)
                .await
                .unwrap();
            if let Some(r) = rows.last() {
                after_l = r.id;
            }
            live.extend(rows);
        }
        loop {
            let rows = ob.fetch_range(after_l, i64::MAX, 500).await.unwrap();
            let Some(r) = rows.last() else { break };
            after_l = r.id;
            live.extend(rows);
        }
        assert_eq!(backlog.len(), 5_000);
        assert_eq!(live.len(), next - 5_000);
        for (i, r) in backlog.iter().chain(&live).enumerate() {
            assert_eq!(r.message, reading(i), "row {i}");
        }
    }

    #[tokio::test]
    async fn rows_dropped_by_the_limit_are_not_served_from_a_read_ahead_page() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &settings(1_000, 1 << 30))
            .await
            .unwrap();
        ob.append((0..1_000).map(reading).collect()).await.unwrap();
        let newest = *ob.latest().borrow();
        let first = ob.fetch_range(0, newest, 10).await.unwrap();
        assert_eq!(first.len(), 10);
        // 600 more: the 600 oldest go, including rows the read-ahead page holds
        ob.append((1_000..1_600).map(reading).collect())
            .await
            .unwrap();
        let next = ob.fetch_range(first[9].id, newest, 10).await.unwrap();
        assert_eq!(next[0].message, reading(600));
    }

    #[tokio::test]
    async fn acks_commit_within_ten_milliseconds_even_with_a_long_commit_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = settings(100_000, 1 << 30);
        st.commit_interval = Duration::from_secs(3);
        let ob = Outbox::open(dir.path(), &st).await.unwrap();
        ob.append((0..1_000).map(reading).collect()).await.unwrap();
        let ids: Vec<i64> = ob
            .fetch_after(0, 1_000)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        // an append waits for its interval; the acks beside it do not
        let slow = {
            let ob = ob.clone();
            tokio::spawn(async move { ob.append(vec![reading(5_000)]).await })
        };
        ob.ack(ids[..600].to_vec()).await.unwrap();
        // The DELETE is committed well before the 3 s interval the append waits for: another
        // connection sees it (polled, so a loaded machine only makes it slower, not wrong).
        let mut conn = db::connect(ob.path()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            if n == 400 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "acks not committed within 2 s ({n} rows)"
            );
            tokio::time::sleep(writer::ACK_INTERVAL).await;
        }
        assert!(
            !slow.is_finished(),
            "the append waits for its commit interval"
        );
        slow.await.unwrap().unwrap();
        assert_eq!(ob.stats().rows.load(Ordering::Relaxed), 401);
    }

    #[tokio::test]
    async fn a_clean_close_leaves_an_empty_wal_and_every_row_in_the_main_file() {
        let dir = tempfile::tempdir().unwrap();
        let ob = Outbox::open(dir.path(), &settings(100_000, 1 << 30))
            .await
            .unwrap();
        ob.append((0..20_000).map(reading).collect()).await.unwrap();
        ob.close().await.unwrap();
        assert!(matches!(
            ob.append(vec![msg(0)]).await,
            Err(OutboxError::Closed)
        ));
        drop(ob);
        let wal = std::fs::metadata(dir.path().join("outbox.db-wal")).map_or(0, |m| m.len());
        assert_eq!(wal, 0);
        // even without the WAL the rows are there
        let _ = std::fs::remove_file(dir.path().join("outbox.db-wal"));
        let _ = std::fs::remove_file(dir.path().join("outbox.db-shm"));
        let ob = Outbox::open(dir.path(), &settings(100_000, 1 << 30))
            .await
            .unwrap();
        assert_eq!(ob.stats().rows.load(Ordering::Relaxed), 20_000);
        assert_eq!(ob.stats().dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn damaged_pages_in_the_middle_of_a_large_outbox_are_skipped_and_the_readable_rows_salvaged_in_order_with_their_ids(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let st = settings(1_000_000, 1 << 30);
        let ob = Outbox::open(dir.path(), &st).await.unwrap();
        for k in 0..6 {
            ob.append((k * 5_000..(k + 1) * 5_000).map(reading).collect())
                .await
                .unwrap();
        }
        // 1,000 acked at the start: the salvaged ids do not start at 1
        let acked: Vec<i64> = ob
            .fetch_after(0, 1_000)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        ob.ack(acked).await.unwrap();
        ob.flush().await.unwrap();
        let before: Vec<Row> = ob.fetch_after(0, 100_000).await.unwrap();
        assert_eq!(before.len(), 29_000);
        ob.close().await.unwrap();
        drop(ob);
        // 8 pages in the middle of the file overwritten with garbage
        let path = dir.path().join("outbox.db");
        let mut bytes = std::fs::read(&path).unwrap();
        let pages = bytes.len() / 4096;
        assert!(pages > 500, "{pages} pages");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for p in pages / 2..pages / 2 + 8 {
            for b in &mut bytes[p * 4096..(p + 1) * 4096] {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        std::fs::write(&path, &bytes).unwrap();

        let ob = Outbox::open(dir.path(), &st).await.unwrap();
        let after: Vec<Row> = ob.fetch_after(0, 100_000).await.unwrap();
        let saved = after.len();
        let lost = ob.stats().dropped.load(Ordering::Relaxed) as usize;
        eprintln!("salvaged {saved} of 29000, lost {lost}");
        assert!(saved > 0 && saved < 29_000, "{saved}");
        assert_eq!(
            saved + lost,
            29_000,
            "every row is either saved or counted lost"
        );
        // in order, with their ids and content
        let by_id: std::collections::HashMap<i64, &Row> =
            before.iter().map(|r| (r.id, r)).collect();
        assert!(after.windows(2).all(|w| w[0].id < w[1].id));
        for r in &after {
            assert_eq!(Some(&r), by_id.get(&r.id), "row {}", r.id);
        }
        // the new file is sound and new ids continue after the old ones
        let mut conn = db::connect(ob.path()).await.unwrap();
        let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(check, "ok");
        ob.append(vec![msg(1)]).await.unwrap();
        assert!(*ob.latest().borrow() > before.last().unwrap().id);
    }
}
