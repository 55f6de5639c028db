//! Connections to the outbox database: how they are opened (WAL, `synchronous=FULL`), the
//! schema, and which SQLite errors mean "this file is damaged".

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

pub const SCHEMA_VERSION: i64 = 1;

/// Rows the SQLite worker thread may hand over before the reader takes them: a whole read-ahead
/// page fits, so the worker never waits for the async side in the middle of a page.
const ROW_CHANNEL: usize = 1024;

pub async fn connect(path: &Path) -> Result<SqliteConnection, sqlx::Error> {
    let url = format!("sqlite://{}", path.display());
    let opts = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: each commit fsyncs the WAL, so a committed group survives a power cut.
        .synchronous(SqliteSynchronous::Full)
        .row_buffer_size(ROW_CHANNEL)
        .pragma("cache_size", CACHE_KIB)
        .busy_timeout(Duration::from_secs(5));
    SqliteConnection::connect_with(&opts).await
}

/// Each connection's page cache, in KiB (a negative `cache_size`). SQLite's default, 2 MiB per
/// connection, fills as a backlog grows and stays filled; the outbox's access is sequential (the
/// writer appends at one end and deletes at the other, the reader pages forward once), so a
/// few hundred KiB hold every page it touches twice, and the kernel's page cache holds the rest.
const CACHE_KIB: &str = "-512";

/// Opens an existing database file without creating it or changing its journal mode: for
/// reading what is left of a quarantined file.
pub async fn connect_existing(path: &Path) -> Result<SqliteConnection, sqlx::Error> {
    let url = format!("sqlite://{}", path.display());
    let opts = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(false)
        .row_buffer_size(ROW_CHANNEL)
        .busy_timeout(Duration::from_secs(5));
    SqliteConnection::connect_with(&opts).await
}

pub async fn init_schema(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let (version,): (i64,) = sqlx::query_as("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    // Rows the uplink could not send (an invalid topic, too large), kept with the reason for a
    // person to look at; the queue moves on without them (`WriteCmd::DeadLetter`).
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS dead_letter (
            id INTEGER PRIMARY KEY,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            retain INTEGER NOT NULL,
            reason TEXT NOT NULL,
            dead_ms INTEGER NOT NULL
        )",
    )
    .execute(&mut *conn)
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

/// The highest id ever handed out: the AUTOINCREMENT counter, or the newest row if larger.
pub async fn highest_id(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    let (seq,): (i64,) = sqlx::query_as(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),
                    COALESCE((SELECT MAX(id) FROM outbox), 0))",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(seq)
}

/// Moves the AUTOINCREMENT counter up to `id`, so ids never go backwards after rows were lost.
pub async fn raise_sequence(conn: &mut SqliteConnection, id: i64) -> Result<(), sqlx::Error> {
    let changed =
        sqlx::query("UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'outbox' AND seq < ?1")
            .bind(id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
    if changed == 0 {
        sqlx::query(
            "INSERT INTO sqlite_sequence (name, seq)
             SELECT 'outbox', ?1 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox')",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), including their extended codes.
pub fn is_corruption(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 11 | 26)),
        _ => false,
    }
}
