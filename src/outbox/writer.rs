//! The single writer task: it owns the write connection and group-commits (design.md §3, O1, O7).
//!
//! Appends that arrive within `commit_interval` share one transaction and one fsync; every
//! caller is answered after the COMMIT. The group is written as a handful of multi-row INSERTs
//! with fixed SQL text (`sql.rs`), so a group costs a few calls into the SQLite worker thread,
//! not one per message.
//!
//! Acks are committed promptly once `ACK_BATCH` of them wait, on their own deadline
//! (`ACK_INTERVAL`, at most `commit_interval`): an acknowledged row left in the table is sent
//! again after a kill -9, so the ack delay is what bounds duplicates. Fewer acks ride along with
//! the next group commit instead (within `commit_interval`): at 50 readings a second a DELETE
//! transaction (and its WAL write) per burst of PUBACKs cost about 8 % of the gateway's CPU on
//! the 50-device bench, and what a crash can repeat stays below `ACK_BATCH`. Acks are deleted as id ranges (`id BETWEEN ? AND ?`).
//! An ack-only transaction is committed with `synchronous=NORMAL` (no fsync) while the last
//! fsynced commit is less than `commit_interval` old, and with FULL otherwise: in WAL mode a
//! NORMAL commit survives a process crash, and a power cut can only undo deletes (duplicates,
//! never loss) of at most one commit interval. Appends are always FULL.
//!
//! After every commit the high-water mark (`mark.rs`) is recorded; `close` checkpoints the WAL
//! into the main file (`wal_checkpoint(TRUNCATE)`) and marks the outbox clean.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::db::{connect, init_schema};
use super::mark::{Mark, MarkFile};
use super::sql::{chunk_sizes, coalesce, insert_sql, MAX_CHUNK};
use crate::config::{OutboxSettings, Overflow};
use crate::flow::Message;

/// How the writer task reports that it is alive (`ops::health::Beat` implements it; the outbox
/// does not know who watches it). The futures may never complete: a test hook hangs the loop
/// there.
pub trait Liveness: Send + Sync {
    /// The writer has work in hand and beats again within `soon()`.
    fn busy(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// The writer waits, for at most `limit`, for a command or its own commit deadline.
    fn waiting(&self, limit: Duration);
    /// How often the writer comes round while it has nothing to do.
    fn tick(&self) -> Duration;
}

/// Counters, readable from any task.
#[derive(Debug, Default)]
pub struct Stats {
    pub appended: AtomicU64,
    pub acked: AtomicU64,
    /// Every message given up: overflow, age, failed writes, and committed rows found missing
    /// (damaged WAL or main file) or unreadable (quarantine) at open.
    pub dropped: AtomicU64,
    pub rows: AtomicU64,
    pub bytes: AtomicU64,
    pub commits: AtomicU64,
    /// Rows in the dead-letter table (kept across restarts, the newest `DEAD_LETTER_KEEP`).
    pub dead_letters: AtomicU64,
}

/// How many dead letters are kept for inspection; older ones are deleted (each was logged).
pub const DEAD_LETTER_KEEP: i64 = 1000;

/// Milliseconds of gateway running time, continued across restarts from the newest row.
#[derive(Debug)]
pub struct RunClock {
    pub base_ms: i64,
    pub started: Instant,
}

impl RunClock {
    pub fn now_ms(&self) -> i64 {
        self.base_ms + self.started.elapsed().as_millis() as i64
    }
}

/// Messages waiting for the group commit, and who to tell when it is done.
type PendingAppend = (Vec<Message>, oneshot::Sender<Result<(), Arc<sqlx::Error>>>);

pub enum WriteCmd {
    /// `urgent`: a client waits for this commit (a forwarded PUBLISH's ack): commit as soon as
    /// the queue is momentarily empty rather than after `commit_interval`.
    Append {
        messages: Vec<Message>,
        done: oneshot::Sender<Result<(), Arc<sqlx::Error>>>,
        urgent: bool,
    },
    Ack(Vec<i64>),
    /// Rows the uplink cannot send, with the reason: moved to `dead_letter` like an ack.
    DeadLetter(Vec<(i64, &'static str)>),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<Result<(), sqlx::Error>>),
}

/// Upper bound of messages in one transaction, so one commit never holds the writer for long.
const MAX_GROUP: usize = 20_000;
/// How often the age limit is applied when nothing else happens.
const AGE_TICK: Duration = Duration::from_secs(1);
/// The longest an ack waits for its DELETE to commit (or `commit_interval` if shorter) once
/// `ACK_BATCH` are waiting.
pub const ACK_INTERVAL: Duration = Duration::from_millis(10);
/// Below this many waiting acks (and dead letters) they wait for the next group commit, at most
/// `commit_interval`: fewer than that is a trickle of live readings, not a drain.
pub const ACK_BATCH: usize = 64;

/// Why messages were given up, for the log line.
#[derive(Debug, Clone, Copy)]
enum DropReason {
    Full,
    Age,
}

/// What is waiting for the next commit.
#[derive(Default)]
struct Group {
    appends: Vec<PendingAppend>,
    acks: Vec<i64>,
    dead: Vec<(i64, &'static str)>,
    flushes: Vec<oneshot::Sender<()>>,
    count: usize,
    append_due: Option<Instant>,
    ack_due: Option<Instant>,
}

impl Group {
    /// When the waiting acks must be committed: soon once they are a batch, otherwise with the
    /// next group commit. Never later than a deadline already set.
    fn ack_deadline(&mut self, now: Instant, commit_interval: Duration, ack_interval: Duration) {
        let wait = if self.acks.len() + self.dead.len() >= ACK_BATCH {
            ack_interval
        } else {
            commit_interval
        };
        let due = now + wait;
        self.ack_due = Some(self.ack_due.map_or(due, |d| d.min(due)));
    }

    fn is_empty(&self) -> bool {
        self.appends.is_empty()
            && self.acks.is_empty()
            && self.dead.is_empty()
            && self.flushes.is_empty()
    }
}

pub struct Writer {
    /// `None` after a failed commit until a fresh connection is open.
    pub conn: Option<SqliteConnection>,
    /// `conn` is at `synchronous=NORMAL` (a fresh one opens at FULL): the PRAGMA is sent only
    /// when a commit needs the other setting, one thread hand-off less per ack commit.
    pub light_sync: bool,
    pub settings: OutboxSettings,
    pub stats: Arc<Stats>,
    pub latest: watch::Sender<i64>,
    pub clock: Arc<RunClock>,
    pub path: PathBuf,
    /// Bumped whenever rows are deleted for a reason other than an ack (limits, age), so the
    /// reader's read-ahead pages are not served any more.
    pub evictions: Arc<AtomicU64>,
    /// `None` if the side file could not be opened (logged at open; loss detection is off).
    pub mark_file: Option<MarkFile>,
    pub mark: Mark,
    /// Liveness for the systemd watchdog (`None` in tools and unit tests).
    pub beat: Option<Box<dyn Liveness>>,
}

/// What one command asks of the loop.
struct Step {
    /// Commit without waiting for a deadline.
    now: bool,
    close: Option<oneshot::Sender<Result<(), sqlx::Error>>>,
}

/// Adds one command to the group being built.
fn absorb(g: &mut Group, cmd: WriteCmd, commit_interval: Duration, ack_interval: Duration) -> Step {
    let now = Instant::now();
    let mut step = Step {
        now: false,
        close: None,
    };
    match cmd {
        WriteCmd::Append {
            messages,
            done,
            urgent,
        } => {
            g.count += messages.len();
            g.append_due.get_or_insert(now + commit_interval);
            g.appends.push((messages, done));
            step.now = urgent;
        }
        WriteCmd::Ack(ids) => {
            g.count += ids.len();
            g.acks.extend(ids);
            g.ack_deadline(now, commit_interval, ack_interval);
        }
        WriteCmd::DeadLetter(rows) => {
            g.count += rows.len();
            g.dead.extend(rows);
            g.ack_deadline(now, commit_interval, ack_interval);
        }
        WriteCmd::Flush(tx) => {
            g.flushes.push(tx);
            step.now = true;
        }
        WriteCmd::Close(tx) => {
            step.close = Some(tx);
            step.now = true;
        }
    }
    step
}

impl Writer {
    pub async fn run(mut self, mut rx: mpsc::Receiver<WriteCmd>) {
        let ack_interval = ACK_INTERVAL.min(self.settings.commit_interval);
        // The last commit that was fsynced (synchronous=FULL); starts as "long ago".
        let mut last_sync: Option<Instant> = None;
        let mut g = Group::default();
        let mut age_due: Option<Instant> = None;
        loop {
            let due = match (g.append_due, g.ack_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Kept across tick wake-ups (below), which would otherwise postpone it for ever.
            let due = due.or_else(|| {
                (self.settings.max_age.is_some() && g.is_empty())
                    .then(|| *age_due.get_or_insert_with(|| Instant::now() + AGE_TICK))
            });
            // A watched writer comes round at least every tick, so a hang shows within `soon`
            // even while nothing is due.
            let wake = match (due, &self.beat) {
                (Some(d), Some(b)) => Some(d.min(Instant::now() + b.tick())),
                (None, Some(b)) => Some(Instant::now() + b.tick()),
                (d, None) => d,
            };
            if let (Some(b), Some(w)) = (&self.beat, wake) {
                b.waiting(w.saturating_duration_since(Instant::now()));
            }
            let next = match wake {
                Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok(),
                None => Some(rx.recv().await),
            };
            // Woken by the tick with nothing due: only a beat.
            if next.is_none() && due.is_none_or(|d| d > Instant::now()) {
                continue;
            }
            age_due = None;
            if let Some(b) = &self.beat {
                b.busy().await;
            }
            match next {
                Some(Some(cmd)) => {
                    let mut step = absorb(&mut g, cmd, self.settings.commit_interval, ack_interval);
                    if step.now {
                        // Take whatever else is already queued into the same commit: the
                        // cheapest moment to share an fsync.
                        while step.close.is_none() && g.count < MAX_GROUP {
                            match rx.try_recv() {
                                Ok(cmd) => {
                                    let more = absorb(
                                        &mut g,
                                        cmd,
                                        self.settings.commit_interval,
                                        ack_interval,
                                    );
                                    step.close = more.close;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    if step.now || g.count >= MAX_GROUP {
                        self.commit_group(std::mem::take(&mut g), &mut last_sync)
                            .await;
                    }
                    if let Some(tx) = step.close {
                        let closed = self.close().await;
                        // Ended before the caller hears so: the stop then sees no live beat.
                        self.beat = None;
                        let _ = tx.send(closed);
                        break;
                    }
                }
                Some(None) => {
                    if !g.is_empty() {
                        self.commit_group(std::mem::take(&mut g), &mut last_sync)
                            .await;
                    }
                    break;
                }
                None => {
                    let now = Instant::now();
                    if g.appends.is_empty() || g.append_due.is_some_and(|d| d <= now) {
                        self.commit_group(std::mem::take(&mut g), &mut last_sync)
                            .await;
                    } else {
                        // The acks are due, the appends not yet: commit the acks alone.
                        let acks = std::mem::take(&mut g.acks);
                        let dead = std::mem::take(&mut g.dead);
                        g.ack_due = None;
                        g.count = g.appends.iter().map(|(m, _)| m.len()).sum();
                        if let Err(e) = self.commit(&[], acks, dead, &mut last_sync).await {
                            self.failed(&e, 0).await;
                        }
                    }
                }
            }
        }
    }

    async fn commit_group(&mut self, g: Group, last_sync: &mut Option<Instant>) {
        let offered: u64 = g.appends.iter().map(|(m, _)| m.len() as u64).sum();
        let result = self.commit(&g.appends, g.acks, g.dead, last_sync).await;
        if let Err(e) = &result {
            self.failed(e, offered).await;
        }
        let reply = result.map_err(Arc::new);
        for (_, tx) in g.appends {
            let _ = tx.send(reply.clone());
        }
        for tx in g.flushes {
            let _ = tx.send(());
        }
    }

    /// Counts what a failed commit cost and drops the connection.
    async fn failed(&mut self, e: &sqlx::Error, offered: u64) {
        if offered == 0 {
            tracing::warn!(
                error = %e,
                path = %self.path.display(),
                "outbox: committing acknowledgements failed; those rows will be sent again"
            );
        }
        self.count_drops(offered, None, Some(e));
        // A failed COMMIT can leave SQLite's transaction open while the driver believes it
        // closed; later "commits" would then only release savepoints inside it and never reach
        // the disk (seen with a full disk). Closing the connection rolls back for certain; the
        // next group opens a fresh one.
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
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

    async fn connection(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        if self.conn.is_none() {
            let mut fresh = connect(&self.path).await?;
            init_schema(&mut fresh).await?;
            self.conn = Some(fresh);
            self.light_sync = false;
            tracing::info!(path = %self.path.display(), "outbox write connection reopened");
        }
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }

    async fn commit(
        &mut self,
        appends: &[PendingAppend],
        mut acks: Vec<i64>,
        dead: Vec<(i64, &'static str)>,
        last_sync: &mut Option<Instant>,
    ) -> Result<(), sqlx::Error> {
        let now = crate::flow::now_ms();
        let mono = self.clock.now_ms();
        let s = self.settings.clone();
        let started = Instant::now();
        // An ack-only commit skips the fsync while a synced commit is recent (see the module doc).
        let light = appends.is_empty()
            && last_sync.is_some_and(|t| started.duration_since(t) < s.commit_interval);
        let (mut rows, mut bytes) = (
            self.stats.rows.load(Ordering::Relaxed),
            self.stats.bytes.load(Ordering::Relaxed),
        );
        let mark_low = self.mark.low_id;
        let switch = light != self.light_sync;
        let conn = self.connection().await?;
        if switch {
            sqlx::query(if light {
                "PRAGMA synchronous = NORMAL"
            } else {
                "PRAGMA synchronous = FULL"
            })
            .execute(&mut *conn)
            .await?;
        }
        let mut tx = conn.begin().await?;

        // Dead letters: copied aside with their reason, then deleted like acked rows.
        let mut dead_added = 0u64;
        for (id, reason) in &dead {
            dead_added += sqlx::query(
                "INSERT OR REPLACE INTO dead_letter (id, topic, payload, retain, reason, dead_ms)
                 SELECT id, topic, payload, retain, ?, ? FROM outbox WHERE id = ?",
            )
            .bind(*reason)
            .bind(now)
            .bind(*id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            acks.push(*id);
        }
        if dead_added > 0 {
            sqlx::query(
                "DELETE FROM dead_letter WHERE id <=
                 (SELECT id FROM dead_letter ORDER BY id DESC LIMIT 1 OFFSET ?)",
            )
            .bind(DEAD_LETTER_KEEP)
            .execute(&mut *tx)
            .await?;
        }
        let dead_rows: Option<i64> = if dead_added > 0 {
            Some(
                sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM dead_letter")
                    .fetch_one(&mut *tx)
                    .await?
                    .0,
            )
        } else {
            None
        };

        // Acks first: they make room for this group's appends.
        let mut acked = 0u64;
        for (lo, hi) in coalesce(acks) {
            let (n, len): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(topic) + LENGTH(payload)), 0)
                 FROM outbox WHERE id BETWEEN ? AND ?",
            )
            .bind(lo)
            .bind(hi)
            .fetch_one(&mut *tx)
            .await?;
            if n == 0 {
                continue;
            }
            sqlx::query("DELETE FROM outbox WHERE id BETWEEN ? AND ?")
                .bind(lo)
                .bind(hi)
                .execute(&mut *tx)
                .await?;
            acked += n as u64;
            rows = rows.saturating_sub(n as u64);
            bytes = bytes.saturating_sub(len as u64);
        }

        let mut aged = 0u64;
        if let Some(max_age) = s.max_age {
            // mono_ms grows with the id (one running clock, continued across restarts), so the
            // expired rows are a prefix of the table: find its end without a full scan.
            let limit = mono - max_age.as_millis() as i64;
            let (end,): (i64,) = sqlx::query_as(
                "SELECT COALESCE((SELECT id FROM outbox WHERE mono_ms >= ?1 ORDER BY id LIMIT 1),
                                 (SELECT MAX(id) + 1 FROM outbox), 0)",
            )
            .bind(limit)
            .fetch_one(&mut *tx)
            .await?;
            let (n, len): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(topic) + LENGTH(payload)), 0)
                 FROM outbox WHERE id < ?",
            )
            .bind(end)
            .fetch_one(&mut *tx)
            .await?;
            if n > 0 {
                sqlx::query("DELETE FROM outbox WHERE id < ?")
                    .bind(end)
                    .execute(&mut *tx)
                    .await?;
                aged = n as u64;
                rows = rows.saturating_sub(aged);
                bytes = bytes.saturating_sub(len as u64);
            }
        }

        let mut refused = 0u64;
        let mut accepted: Vec<&Message> = Vec::new();
        for (msgs, _) in appends {
            for m in msgs {
                let fits = rows < s.max_rows && bytes + m.size() <= s.max_bytes;
                if !fits && s.overflow == Overflow::DropNewest {
                    refused += 1;
                    continue;
                }
                accepted.push(m);
                rows += 1;
                bytes += m.size();
            }
        }
        let mut last_id = None;
        let mut rest = accepted.as_slice();
        for size in chunk_sizes(accepted.len(), MAX_CHUNK) {
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            // One of nine fixed texts (sql.rs), built here but prepared once per connection.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_sql(size)))
                .bind(now)
                .bind(mono);
            for m in chunk {
                q = q
                    .bind(m.topic.as_str())
                    .bind(m.payload.as_slice())
                    .bind(m.retain);
            }
            last_id = Some(q.execute(&mut *tx).await?.last_insert_rowid());
        }
        let added = accepted.len() as u64;
        let (evicted, evicted_bytes) = enforce_bounds(&mut tx, &s, rows, bytes).await?;
        let rows_after = rows - evicted;
        let low_id = if rows_after == 0 {
            0
        } else if acked + aged + evicted > 0 || mark_low == 0 {
            let (low,): (i64,) = sqlx::query_as("SELECT COALESCE(MIN(id), 0) FROM outbox")
                .fetch_one(&mut *tx)
                .await?;
            low
        } else {
            mark_low
        };
        tx.commit().await?;
        self.light_sync = light;
        if !light {
            *last_sync = Some(started);
        }

        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = dead_rows {
            self.stats
                .dead_letters
                .store(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
        }
        self.stats.appended.fetch_add(added, Ordering::Relaxed);
        self.stats.acked.fetch_add(acked, Ordering::Relaxed);
        self.stats.rows.store(rows_after, Ordering::Relaxed);
        self.stats
            .bytes
            .store(bytes.saturating_sub(evicted_bytes), Ordering::Relaxed);
        if evicted + aged > 0 {
            self.evictions.fetch_add(1, Ordering::Release);
        }
        self.count_drops(refused + evicted, Some(DropReason::Full), None);
        self.count_drops(aged, Some(DropReason::Age), None);
        self.mark = Mark {
            seq: self.mark.seq + 1,
            last_id: last_id.unwrap_or(0).max(self.mark.last_id),
            rows: rows_after as i64,
            low_id,
            clean: false,
        };
        self.record_mark();
        if let Some(id) = last_id {
            self.latest.send_replace(id);
        }
        Ok(())
    }

    fn record_mark(&self) {
        if let Some(f) = &self.mark_file {
            if let Err(e) = f.record(&self.mark) {
                tracing::warn!(
                    error = %e,
                    path = %f.path().display(),
                    "outbox: cannot record the high-water mark; a later loss of rows may go uncounted"
                );
            }
        }
    }

    /// Checkpoints the WAL into the main file, marks the outbox clean and closes the connection.
    async fn close(&mut self) -> Result<(), sqlx::Error> {
        let conn = self.connection().await?;
        let (busy, log, done): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut *conn)
            .await?;
        if busy != 0 {
            tracing::warn!(
                wal_frames = log,
                checkpointed = done,
                "outbox: the WAL could not be checkpointed completely at shutdown (a reader was busy)"
            );
        }
        self.mark.seq += 1;
        self.mark.clean = busy == 0;
        self.record_mark();
        if let Some(f) = &self.mark_file {
            if let Err(e) = f.sync() {
                tracing::warn!(error = %e, path = %f.path().display(), "outbox: cannot sync the high-water mark");
            }
        }
        if let Some(conn) = self.conn.take() {
            conn.close().await?;
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

    const COMMIT: Duration = Duration::from_millis(100);

    fn acks(from: i64, n: usize) -> WriteCmd {
        WriteCmd::Ack((from..from + n as i64).collect())
    }

    /// The ack deadline after absorbing `batches` (sizes), relative to just before the first.
    fn ack_wait(batches: &[usize]) -> Duration {
        let start = Instant::now();
        let mut g = Group::default();
        let mut next = 1;
        for &n in batches {
            absorb(&mut g, acks(next, n), COMMIT, ACK_INTERVAL);
            next += n as i64;
        }
        g.ack_due.expect("acks set a deadline") - start
    }

    #[test]
    fn a_trickle_of_acks_waits_for_the_group_commit_and_a_batch_is_committed_promptly() {
        // (ack batches as they arrive, whether the deadline is the short ack interval)
        let table: &[(&[usize], bool)] = &[
            (&[1], false),
            (&[1, 1, 1], false),
            (&[ACK_BATCH - 1], false),
            (&[ACK_BATCH], true),
            (&[600], true),
            (&[10, ACK_BATCH - 10], true),
            (&[ACK_BATCH - 1, 1], true),
        ];
        for &(batches, prompt) in table {
            let wait = ack_wait(batches);
            if prompt {
                // Some slack for a slow machine between `start` and the last absorb.
                assert!(wait < COMMIT / 2, "{batches:?}: waits {wait:?}");
            } else {
                assert!(wait >= COMMIT, "{batches:?}: waits only {wait:?}");
            }
        }
    }

    #[test]
    fn dead_letters_count_towards_the_ack_batch() {
        let mut g = Group::default();
        let start = Instant::now();
        absorb(&mut g, acks(1, ACK_BATCH - 1), COMMIT, ACK_INTERVAL);
        absorb(
            &mut g,
            WriteCmd::DeadLetter(vec![(1_000, "too large")]),
            COMMIT,
            ACK_INTERVAL,
        );
        assert!(g.ack_due.unwrap() - start < COMMIT / 2);
    }
}
