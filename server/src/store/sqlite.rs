//! SQLite backend: WAL, one writer thread that commits each batch of pending
//! writes in one transaction (group commit) and answers every write only after
//! its batch is committed, a checkpointer thread that copies the WAL back into
//! the database off the commit path, a pool of read-only connections, and the
//! usage journal (`journal`): a validation that takes no seat is decided on a
//! read connection and appends its usage row there, without the writer
//! (with `synchronous = full`, a syncer thread groups the journal's fsyncs).
//!
//! This file holds the store: its read pool, the look-ups and the writes it
//! queues. `writer` has the writer and checkpointer threads (the batches,
//! the journal's copy, rotation and crash recovery), `schema` the
//! migrations, `journal` the usage journal's file, `totals` the usage
//! totals counted so far.

mod journal;
mod schema;
mod totals;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keysmith_core::wire::{License, LicenseSummary, Plan};
use keysmith_core::{Code, LicenseKey, Status};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use super::{
    event_names, from_unix, license_tag, opt_time, plan_tag, status_of, AttemptResult, Deactivated,
    DeliveryAttempt, DeliveryJob, DeliveryNext, EventType, LicenseFilter, LicensePage,
    LicensePatch, NewLicense, NewWebhook, PageRequest, Precondition, Result, Store, StoreError,
    UsagePage, UsageRecord, ValidationInput, ValidationOutcome, Webhook, WebhookPatch,
    WEBHOOK_COLUMNS,
};
use crate::ids;
use crate::license::{decide, effective_status, transition, Decision, Seats};
pub use journal::with_suffix;
use journal::{Entry, Journal};
use totals::Counted;
use writer::{
    append_usage, cut_torn_journal, in_savepoint, open_writer, prune_usage_in, run_checkpointer,
    run_writer, usage_entry, Tuning, CHECKPOINT_EVERY, INGEST_EVERY, JOURNAL_ROTATE_BYTES,
    PACE_BUDGET, PACE_PAUSE, RETRY_NAMING, WAL_RESTART_PAGES,
};

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Storage(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> StoreError {
        StoreError::Storage(format!("stored JSON: {e}"))
    }
}

type Completion = Box<dyn FnOnce(Result<()>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Completion + Send>;

/// How a commit reaches the disk (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Synchronous {
    /// A commit is written to the WAL before its answer leaves: it survives
    /// `kill -9` of the server (SPEC §3); a power cut or kernel crash may
    /// lose the last commits, never the database's integrity.
    #[default]
    Normal,
    /// A commit is also fsynced before its answer leaves: it survives a
    /// power cut too, at one fsync per batch (and usage records appended to
    /// the journal wait for the syncer's next fsync, which they share).
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

const REPLACE_ADMIN_TOKEN_HASH: &str = "INSERT INTO meta (k, v) VALUES ('admin_token_sha256', ?1) \
     ON CONFLICT (k) DO UPDATE SET v = excluded.v";

/// Stores `hash` as the admin token's in the database at `path`, whether a
/// server runs on it or not: a plain connection's one write, which a
/// running server's writer waits for like any other (the store itself, its
/// journal and its writer, stay the server's).
pub fn replace_admin_token_hash_at(path: &Path, hash: &str) -> Result<()> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.execute(REPLACE_ADMIN_TOKEN_HASH, [hash])?;
    Ok(())
}

/// Whether the SQLite database at `path` holds a license, read without
/// opening it as a store (no migration, no journal); a file that cannot be
/// read as one counts as holding some, so that nothing is taken for empty
/// that may not be.
pub fn has_licenses_at(path: &Path) -> bool {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|conn| {
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.query_row("SELECT EXISTS (SELECT 1 FROM licenses)", [], |r| r.get(0))
        })
        .unwrap_or(true)
}

/// The SQLite store.
pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    /// Jobs sent to the writer and not taken yet (`Pace`).
    queued: Arc<AtomicUsize>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    checkpointer: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    readers: Arc<ReadPool>,
    journal: Arc<Journal>,
    /// The usage totals counted so far (`totals`).
    counted: Arc<Counted>,
}

impl Drop for SqliteStore {
    /// Stops the checkpointer, closes the read connections, closes the queue
    /// and waits for the writer to finish its last batch. The writer's
    /// connection is then the last one open, and closing it removes the
    /// WAL and its `-shm` (a read-only connection closing last cannot).
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.checkpointer.take() {
            drop(stop);
            let _ = thread.join();
        }
        self.readers.idle.lock().expect("read pool lock").clear();
        let (closed, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.writer, closed));
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

struct ReadPool {
    path: std::path::PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn take(&self) -> Result<Connection> {
        if let Some(conn) = self.idle.lock().expect("read pool lock").pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().expect("read pool lock");
        if idle.len() < 16 {
            idle.push(conn);
        }
    }

    /// Whether `query` (with `params` bound) finds a row, on a pooled
    /// connection on this thread: how the background workers look for work
    /// without making the writer commit.
    fn finds(&self, query: &str, params: impl rusqlite::Params) -> Result<bool> {
        self.run(|conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT EXISTS ({query})"))?
                .query_row(params, |r| r.get(0))?)
        })
    }

    /// Runs `f` on a pooled connection on this thread.
    fn run<R>(&self, f: impl FnOnce(&Connection) -> Result<R>) -> Result<R> {
        let conn = self.take()?;
        let result = f(&conn);
        self.give_back(conn);
        result
    }
}

/// A read connection's page cache, as SQLite takes it (negative: KiB):
/// with the writer's and 16 idle readers at most, well under the 150 MB
/// memory budget.
pub const READER_CACHE_KIB: i64 = -4 * 1024;

/// The deliveries to claim at `?1` (ms), at most `?2`, at most `?3` in
/// flight to one endpoint: due, not leased, to an enabled endpoint, each
/// the license's oldest pending one (events in order per license).
const CLAIMABLE: &str = "SELECT seq, url, secret, id, type, created_at, data, attempts, first_attempt_ms, webhook_id FROM ( \
     SELECT d.seq, w.url, w.secret, e.id, e.type, e.created_at, e.data, d.attempts, \
     d.first_attempt_ms, w.id AS webhook_id, d.next_attempt_ms, \
     ROW_NUMBER() OVER (PARTITION BY d.webhook_seq ORDER BY d.next_attempt_ms, d.seq) \
     + (SELECT COUNT(*) FROM deliveries q WHERE q.webhook_seq = d.webhook_seq \
        AND q.state = 'pending' AND q.locked_until_ms > ?1) AS in_flight \
     FROM deliveries d JOIN webhooks w ON w.seq = d.webhook_seq JOIN events e ON e.seq = d.event_seq \
     WHERE d.state = 'pending' AND d.next_attempt_ms <= ?1 AND d.locked_until_ms <= ?1 AND w.enabled = 1 \
     AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.webhook_seq = d.webhook_seq \
         AND p.license_id = d.license_id AND p.state = 'pending' AND p.seq < d.seq)) \
     WHERE in_flight <= ?3 ORDER BY next_attempt_ms, seq LIMIT ?2";

/// Whether any event was raised before `?1` (`prune_events`).
const EVENTS_BEFORE: &str = "SELECT 1 FROM events INDEXED BY events_by_time WHERE created_at < ?1";
/// The oldest events raised before `?1` that no delivery still waits to
/// send, at most `?2`.
const SETTLED_EVENTS_BEFORE: &str = "SELECT e.seq FROM events e INDEXED BY events_by_time \
     WHERE e.created_at < ?1 AND NOT EXISTS \
     (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.state = 'pending') \
     ORDER BY e.created_at, e.seq LIMIT ?2";

/// The sweep's query. `INDEXED BY` because the planner otherwise prefers
/// `licenses_by_status` and visits every active license (1.85 s at 1M,
/// stalling every write behind it).
const DUE_LICENSES: &str = "SELECT id FROM licenses INDEXED BY licenses_due \
     WHERE status = 'active' AND expires_at IS NOT NULL AND expires_at <= ?1 LIMIT 500";

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`, with the
    /// default durability.
    pub fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        SqliteStore::open_with(path, Synchronous::default())
    }

    /// Opens (creating and migrating) the database at `path`.
    pub fn open_with(path: &Path, synchronous: Synchronous) -> anyhow::Result<SqliteStore> {
        let tuning = Tuning {
            restart_pages: WAL_RESTART_PAGES,
            checkpoint_every: CHECKPOINT_EVERY,
            ingest_every: INGEST_EVERY,
            pace_pause: PACE_PAUSE,
            pace_budget: PACE_BUDGET,
            rotate_bytes: JOURNAL_ROTATE_BYTES,
            retry_naming: RETRY_NAMING,
        };
        SqliteStore::open_tuned(path, synchronous, tuning)
    }

    fn open_tuned(
        path: &Path,
        synchronous: Synchronous,
        tuning: Tuning,
    ) -> anyhow::Result<SqliteStore> {
        let opening = |e: StoreError| anyhow::anyhow!("opening {}: {e}", path.display());
        create_private_if_missing(path)?;
        let journal = Journal::open(path, synchronous == Synchronous::Full)
            .map_err(|e| anyhow::anyhow!("opening the usage journal: {e}"))?;
        let journal = Arc::new(journal);
        let conn = open_writer(path, synchronous).map_err(opening)?;
        let wal = journal::with_suffix(path, "-wal");
        cut_torn_journal(&conn, &journal).map_err(opening)?;
        let checkpoint_conn = Connection::open(path)
            .and_then(|c| {
                c.busy_timeout(Duration::from_secs(5))?;
                c.pragma_update(None, "synchronous", synchronous.pragma())?;
                c.pragma_update(None, "wal_autocheckpoint", 0)?;
                Ok(c)
            })
            .map_err(|e| opening(e.into()))?;
        let restart = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_restart = restart.clone();
        let writer_journal = journal.clone();
        let writer_queued = queued.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                run_writer(
                    conn,
                    rx,
                    writer_queued,
                    writer_restart,
                    writer_journal,
                    wal,
                    tuning,
                )
            })?;
        let db_file =
            std::fs::File::open(path).map_err(|e| opening(StoreError::Storage(e.to_string())))?;
        let (stop, stopped) = mpsc::channel();
        let checkpointer = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run_checkpointer(checkpoint_conn, db_file, stopped, restart, tuning))?;
        Ok(SqliteStore {
            writer: tx,
            queued,
            writer_thread: Some(thread),
            checkpointer: Some((stop, checkpointer)),
            readers: Arc::new(ReadPool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }),
            journal,
            counted: Arc::default(),
        })
    }

    /// Returns once the writer has copied every usage row answered so far
    /// into the tables, so that a read counts them all.
    async fn settle_usage(&self) -> Result<()> {
        self.write(|_| Ok(())).await
    }

    /// Appends a usage row to the journal; returns once it survives a crash
    /// of the server (and, with `synchronous = full`, a power cut).
    async fn record_usage(&self, entry: Entry) -> Result<()> {
        let storage = |e: std::io::Error| StoreError::Storage(format!("recording usage: {e}"));
        // One `write(2)`: less than handing it to another thread. With
        // `synchronous = full`, the syncer thread's next fsync covers it.
        let end = self.journal.append(&entry).map_err(storage)?;
        self.journal.synced(end).await.map_err(storage)
    }

    /// Runs `f` in the writer's next batch; returns once that batch committed.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Box::new(move |commit: Result<()>| {
                let _ = tx.send(commit.and(result));
            })
        });
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.writer.send(job).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Storage("the writer has stopped".into()));
        }
        rx.await
            .map_err(|_| StoreError::Storage("the write was dropped".into()))?
    }

    /// Runs `f` on a pooled read-only connection.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || pool.run(f))
            .await
            .map_err(|e| StoreError::Storage(format!("read task: {e}")))?
    }
}

/// One step down a license's usage chain (`USAGE_CHAIN`): the pointer of
/// a row that is license `?1`'s, and only if it goes down.
macro_rules! chain_step {
    () => {
        "SELECT u.prev_seq FROM chain JOIN usage u ON u.seq = chain.seq \
         WHERE u.license_seq = ?1 AND u.prev_seq < u.seq"
    };
}

/// `chain`: the `seq`s of license `?1`'s usage rows from row `?2` down,
/// newest first, at most `?3` of them (`-1`: all), a walk down the chain
/// `append_usage` keeps; `CHAIN_ROWS` then reads the rows. A step follows
/// a row's pointer only if the row is the license's and the pointer goes
/// down, so a damaged pointer ends the walk (the join leaves out a row that
/// is not the license's, and a pointer to a deleted row finds none).
const USAGE_CHAIN: &str = concat!(
    "WITH RECURSIVE chain(seq) AS (SELECT ?2 UNION ALL ",
    chain_step!(),
    " LIMIT ?3)"
);

/// `chain`: the `seq`s of license `?1`'s usage rows from row `?2` down to
/// the first one after row `?3`, as `USAGE_CHAIN` walks it.
const USAGE_CHAIN_ABOVE: &str = concat!(
    "WITH RECURSIVE chain(seq) AS (SELECT ?2 WHERE ?2 > ?3 UNION ALL ",
    chain_step!(),
    " AND u.prev_seq > ?3)"
);

/// The `FROM` of a query on `USAGE_CHAIN`: its rows as `u`, those of
/// license `?1` only.
const CHAIN_ROWS: &str = "FROM chain JOIN usage u ON u.seq = chain.seq AND u.license_seq = ?1";

/// The `seq` of license `license`'s newest usage row, if it has one.
fn newest_usage(conn: &Connection, license: i64) -> rusqlite::Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT last_seq FROM license_counters WHERE license_seq = ?1")?
        .query_row([license], |r| r.get(0))
        .optional()?
        .flatten())
}

/// The `seq` of license `license`'s newest usage row below `before` (a page
/// cursor): the row before the cursor's in the chain, or, for a cursor
/// that is not one of the license's rows, found by walking the chain down
/// from `newest`, the license's newest row.
fn usage_before(
    conn: &Connection,
    license: i64,
    newest: Option<i64>,
    before: i64,
) -> Result<Option<i64>> {
    let at_cursor: Option<(i64, Option<i64>)> = conn
        .prepare_cached("SELECT license_seq, prev_seq FROM usage WHERE seq = ?1")?
        .query_row([before], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match at_cursor {
        Some((owner, prev)) if owner == license => Ok(prev.filter(|p| *p < before)),
        _ => Ok(conn
            .prepare_cached(&format!(
                "{USAGE_CHAIN} SELECT u.seq {CHAIN_ROWS} WHERE u.seq < ?4 LIMIT 1"
            ))?
            .query_row(params![license, newest, -1, before], |r| r.get(0))
            .optional()?),
    }
}

/// The columns `license_row` maps, read `FROM licenses`. The counters count
/// every usage row copied in (`UsageCopy`); a read settles the journal first.
const LICENSE_COLUMNS: &str =
    "seq, id, key, status, plan, customer_email, max_domains, max_machines, \
     metadata, created_at, updated_at, expires_at, \
     (SELECT c.last_validated_at FROM license_counters c WHERE c.license_seq = licenses.seq), \
     COALESCE((SELECT c.validations FROM license_counters c WHERE c.license_seq = licenses.seq), 0)";

/// Maps a row of `LICENSE_COLUMNS` without its seats.
fn license_row(row: &Row<'_>) -> rusqlite::Result<(i64, License, String, String)> {
    Ok((
        row.get(0)?,
        License {
            id: row.get(1)?,
            key: row.get(2)?,
            status: Status::Active,
            plan: row.get(4)?,
            customer_email: row.get(5)?,
            max_domains: row.get(6)?,
            domains: Vec::new(),
            max_machines: row.get(7)?,
            machines: Vec::new(),
            metadata: serde_json::Map::new(),
            created_at: from_unix(row.get(9)?),
            updated_at: from_unix(row.get(10)?),
            expires_at: opt_time(row.get(11)?),
            last_validated_at: opt_time(row.get(12)?),
            validation_count: row.get::<_, i64>(13)? as u64,
        },
        row.get(3)?,
        row.get(8)?,
    ))
}

fn finish_license(
    conn: &Connection,
    raw: (i64, License, String, String),
) -> Result<(i64, License)> {
    let (seq, mut license, status, metadata) = raw;
    license.status = status_of(&status)?;
    license.metadata = serde_json::from_str(&metadata)?;
    license.domains = seat_list(
        conn,
        "SELECT domain FROM license_domains WHERE license_seq = ?1 ORDER BY added_at, domain",
        seq,
    )?;
    license.machines = seat_list(conn, "SELECT fingerprint FROM license_machines WHERE license_seq = ?1 ORDER BY added_at, fingerprint", seq)?;
    Ok((seq, license))
}

fn seat_list(conn: &Connection, sql: &str, seq: i64) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map([seq], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn load_license_by(conn: &Connection, column: &str, value: &str) -> Result<Option<(i64, License)>> {
    let sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses WHERE {column} = ?1");
    let raw = conn
        .prepare_cached(&sql)?
        .query_row([value], license_row)
        .optional()?;
    raw.map(|raw| finish_license(conn, raw)).transpose()
}

fn load_license(conn: &Connection, id: &str) -> Result<(i64, License)> {
    load_license_by(conn, "id", id)?.ok_or_else(|| StoreError::license_not_found(id))
}

fn load_plan(conn: &Connection, name: &str) -> Result<Option<Plan>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, features, max_domains, max_machines, duration_days, offline_grace_days FROM plans WHERE name = ?1",
    )?;
    let raw = stmt
        .query_row([name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    raw.map(
        |(name, features, max_domains, max_machines, duration_days, offline_grace_days)| {
            Ok(Plan {
                name,
                features: serde_json::from_str(&features)?,
                max_domains,
                max_machines,
                duration_days,
                offline_grace_days,
            })
        },
    )
    .transpose()
}

fn plan_must_exist(conn: &Connection, name: &str) -> Result<Plan> {
    load_plan(conn, name)?.ok_or_else(|| StoreError::Invalid {
        code: "PLAN_NOT_FOUND",
        message: format!("no plan named {name:?}; create it with PUT /api/v1/plans/{name}"),
    })
}

/// Writes an event to the outbox and queues it for every enabled endpoint
/// that subscribes to it, in the caller's transaction. An event no enabled
/// endpoint subscribes to is not kept: only its deliveries ever read it, and
/// one `license.created` per license would otherwise be most of the
/// database (about 1 GB at a million licenses).
fn record_event(
    conn: &Connection,
    kind: EventType,
    license: &License,
    now: DateTime<Utc>,
) -> Result<()> {
    let subscribed: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM webhooks w WHERE w.enabled = 1 \
             AND EXISTS (SELECT 1 FROM json_each(w.events) WHERE value = ?1))",
        )?
        .query_row([kind.as_str()], |r| r.get(0))?;
    if !subscribed {
        return Ok(());
    }
    let data = serde_json::json!({ "license": license });
    conn.prepare_cached(
        "INSERT INTO events (id, type, license_id, created_at, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        ids::event_id(),
        kind.as_str(),
        license.id,
        now.timestamp(),
        data.to_string()
    ])?;
    let event_seq = conn.last_insert_rowid();
    conn.prepare_cached(
        "INSERT INTO deliveries (event_seq, webhook_seq, license_id, state, next_attempt_ms) \
         SELECT ?1, w.seq, ?2, 'pending', ?3 FROM webhooks w \
         WHERE w.enabled = 1 AND EXISTS (SELECT 1 FROM json_each(w.events) WHERE value = ?4)",
    )?
    .execute(params![
        event_seq,
        license.id,
        now.timestamp_millis(),
        kind.as_str()
    ])?;
    Ok(())
}

fn webhook_row(row: &Row<'_>) -> rusqlite::Result<(i64, Webhook, String)> {
    Ok((
        row.get(0)?,
        Webhook {
            id: row.get(1)?,
            url: row.get(2)?,
            events: Vec::new(),
            enabled: row.get(4)?,
            created_at: from_unix(row.get(5)?),
            pending: row.get::<_, i64>(6)? as u64,
            secret: None,
        },
        row.get(3)?,
    ))
}

fn finish_webhook(raw: (i64, Webhook, String)) -> Result<(i64, Webhook)> {
    let (seq, mut webhook, events) = raw;
    webhook.events = serde_json::from_str(&events)?;
    Ok((seq, webhook))
}

fn load_webhook(conn: &Connection, id: &str) -> Result<(i64, Webhook)> {
    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1");
    let raw = conn
        .prepare_cached(&sql)?
        .query_row([id], webhook_row)
        .optional()?;
    raw.map(finish_webhook)
        .transpose()?
        .ok_or_else(|| StoreError::webhook_not_found(id))
}

fn write_license_fields(conn: &Connection, seq: i64, l: &License) -> Result<()> {
    conn.prepare_cached(
        "UPDATE licenses SET status = ?2, plan = ?3, customer_email = ?4, max_domains = ?5, \
         max_machines = ?6, metadata = ?7, updated_at = ?8, expires_at = ?9 WHERE seq = ?1",
    )?
    .execute(params![
        seq,
        l.status.as_str(),
        l.plan,
        l.customer_email,
        l.max_domains,
        l.max_machines,
        serde_json::Value::Object(l.metadata.clone()).to_string(),
        l.updated_at.timestamp(),
        l.expires_at.map(|t| t.timestamp()),
    ])?;
    Ok(())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

fn insert_license(conn: &Connection, new: &NewLicense, now: DateTime<Utc>) -> Result<License> {
    let plan = plan_must_exist(conn, &new.plan)?;
    let expires_at = crate::license::default_expiry(new.expires_at, plan.duration_days, now);
    let metadata = serde_json::Value::Object(new.metadata.clone()).to_string();
    // Ids and keys are random; a collision is astronomically rare, but
    // uniqueness is the database's to enforce, so retry on one.
    for _ in 0..8 {
        let id = ids::license_id();
        let key = LicenseKey::generate(&new.key_prefix).map_err(|e| StoreError::Invalid {
            code: "BAD_PREFIX",
            message: e.to_string(),
        })?;
        let inserted = conn
            .prepare_cached(
                "INSERT INTO licenses (id, key, status, plan, customer_email, max_domains, max_machines, \
                 metadata, created_at, updated_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
            )?
            .execute(params![
                id,
                key.as_str(),
                crate::license::effective_status(Status::Active, expires_at, now).as_str(),
                plan.name,
                new.customer_email,
                new.max_domains.unwrap_or(plan.max_domains),
                new.max_machines.unwrap_or(plan.max_machines),
                metadata,
                now.timestamp(),
                expires_at.map(|t| t.timestamp()),
            ]);
        match inserted {
            Ok(_) => {
                let (_, license) = load_license(conn, &id)?;
                record_event(conn, EventType::Created, &license, now)?;
                return Ok(license);
            }
            Err(e) if is_unique_violation(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Storage(
        "could not find a free license id and key".into(),
    ))
}

/// The constant statements a validation runs on one seat table (no SQL
/// built per request).
struct SeatTable {
    /// The prefix of its seats in the `seats` column (`kept_seats!`).
    kind: &'static str,
    held: &'static str,
    count: &'static str,
    insert: &'static str,
}

const DOMAIN_SEATS: SeatTable = SeatTable {
    kind: "d:",
    held: "SELECT EXISTS(SELECT 1 FROM license_domains WHERE license_seq = ?1 AND domain = ?2)",
    count: "SELECT COUNT(*) FROM license_domains WHERE license_seq = ?1",
    insert: "INSERT INTO license_domains (license_seq, domain, added_at) VALUES (?1, ?2, ?3)",
};

const MACHINE_SEATS: SeatTable = SeatTable {
    kind: "m:",
    held:
        "SELECT EXISTS(SELECT 1 FROM license_machines WHERE license_seq = ?1 AND fingerprint = ?2)",
    count: "SELECT COUNT(*) FROM license_machines WHERE license_seq = ?1",
    insert: "INSERT INTO license_machines (license_seq, fingerprint, added_at) VALUES (?1, ?2, ?3)",
};

fn seats(
    conn: &Connection,
    table: &SeatTable,
    seq: i64,
    value: &str,
    max: Option<u32>,
) -> Result<Seats> {
    let held: bool = conn
        .prepare_cached(table.held)?
        .query_row(params![seq, value], |r| r.get(0))?;
    let taken: i64 = if held || max.is_none() {
        0
    } else {
        conn.prepare_cached(table.count)?
            .query_row([seq], |r| r.get(0))?
    };
    Ok(Seats {
        held,
        taken: taken as u64,
        max,
    })
}

/// `seats` from a license's kept seats (its `seats` column).
fn kept_seat(kept: &[String], kind: &str, value: &str, max: Option<u32>) -> Seats {
    let mut of_kind = kept.iter().filter_map(|s| s.strip_prefix(kind));
    let taken = of_kind.clone().count() as u64;
    Seats {
        held: of_kind.any(|s| s == value),
        taken,
        max,
    }
}

/// Creates the database file, empty (a new database to SQLite), with mode
/// 0600 if it is missing: it holds every license key and webhook secret,
/// and SQLite gives its log and shared-memory files the database's mode.
/// An existing file readable by others is left as it is, with a warning.
fn create_private_if_missing(path: &Path) -> anyhow::Result<()> {
    match crate::files::create_private(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Some(mode) = crate::files::open_to_others(path)? {
                tracing::warn!(
                    "{} is readable by other users (mode {mode:o}): it holds every license key; run `chmod 600` on it and its -wal, -shm and -usage files",
                    path.display()
                );
            }
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("creating {}", path.display()))),
    }
}

/// A validation decided from what the database holds, before any write.
struct Seen {
    seq: i64,
    id: String,
    status: Status,
    plan: String,
    expires_at: Option<DateTime<Utc>>,
    activated: bool,
    features: String,
    grace: u32,
    decision: Decision,
}

impl Seen {
    /// Whether the validation changes more than the history: it takes a
    /// seat, or activates the license. Only the writer may do that.
    fn writes(&self) -> bool {
        self.decision.writes(self.activated)
    }

    fn outcome(self) -> Result<(i64, ValidationOutcome)> {
        let outcome = ValidationOutcome {
            code: self.decision.code,
            license: Some(LicenseSummary {
                id: self.id,
                status: self.status,
                plan: self.plan,
                expires_at: self.expires_at,
                features: serde_json::from_str(&self.features)?,
            }),
            offline_grace_days: self.grace,
        };
        Ok((self.seq, outcome))
    }
}

/// What a validation reads of its license and plan, by key (`?1`).
/// `INDEXED BY`: the planner prefers the unique index on `key`, which then
/// needs the table row too (one more random page at 1M licenses: 8% of a
/// validation's CPU in an A/B, docs/performance.md). Public for the
/// micro-benchmarks (bench/benches/store.rs).
pub const VALIDATION_LOOKUP: &str =
    "SELECT l.seq, l.id, l.status, l.plan, l.max_domains, l.max_machines, l.expires_at, \
     l.activated_at IS NOT NULL, p.features, p.offline_grace_days, l.seats \
     FROM licenses l INDEXED BY licenses_validate \
     JOIN plans p ON p.name = l.plan WHERE l.key = ?1";

/// A row of `VALIDATION_LOOKUP`.
struct ValidationRow {
    seq: i64,
    id: String,
    status: String,
    plan: String,
    max_domains: Option<u32>,
    max_machines: Option<u32>,
    expires_at: Option<i64>,
    activated: bool,
    features: String,
    grace: u32,
    /// The seats kept in the row (`seats`); `None` past `KEPT_SEATS`, when
    /// only the seat tables have them.
    kept: Option<Vec<String>>,
}

impl ValidationRow {
    /// Whether deciding `v` needs the seat tables as well as this row.
    fn needs_seat_tables(&self, v: &ValidationInput) -> bool {
        self.kept.is_none() && (v.domain.is_some() || v.fingerprint.is_some())
    }
}

fn validation_row(conn: &Connection, key: &str) -> Result<Option<ValidationRow>> {
    let mut stmt = conn.prepare_cached(VALIDATION_LOOKUP)?;
    let row = stmt
        .query_row([key], |r| {
            let row = ValidationRow {
                seq: r.get(0)?,
                id: r.get(1)?,
                status: r.get(2)?,
                plan: r.get(3)?,
                max_domains: r.get(4)?,
                max_machines: r.get(5)?,
                expires_at: r.get(6)?,
                activated: r.get(7)?,
                features: r.get(8)?,
                grace: r.get(9)?,
                kept: None,
            };
            Ok((row, r.get::<_, Option<String>>(10)?))
        })
        .optional()?;
    let Some((mut row, kept)) = row else {
        return Ok(None);
    };
    row.kept = kept.as_deref().map(serde_json::from_str).transpose()?;
    Ok(Some(row))
}

/// Looks the key up and decides; `None` for an unknown key.
fn look_up(conn: &Connection, v: &ValidationInput) -> Result<Option<Seen>> {
    validation_row(conn, &v.key)?
        .map(|row| decide_on(conn, v, row))
        .transpose()
}

/// Decides `v` on its license's row, reading the seat tables only when the
/// row does not keep its seats.
fn decide_on(conn: &Connection, v: &ValidationInput, row: ValidationRow) -> Result<Seen> {
    let expires_at = opt_time(row.expires_at);
    let status = effective_status(status_of(&row.status)?, expires_at, v.now);
    let seats_of = |table: &SeatTable, value: &str, max: Option<u32>| match &row.kept {
        Some(kept) => Ok(kept_seat(kept, table.kind, value, max)),
        None => seats(conn, table, row.seq, value, max),
    };
    let domain_seats = v
        .domain
        .as_deref()
        .map(|d| seats_of(&DOMAIN_SEATS, d, row.max_domains))
        .transpose()?;
    let machine_seats = v
        .fingerprint
        .as_deref()
        .map(|f| seats_of(&MACHINE_SEATS, f, row.max_machines))
        .transpose()?;
    Ok(Seen {
        seq: row.seq,
        id: row.id,
        status,
        plan: row.plan,
        expires_at,
        activated: row.activated,
        features: row.features,
        grace: row.grace,
        decision: decide(status, domain_seats, machine_seats),
    })
}

/// Looks the key up on a read connection, in one snapshot. The row is one
/// statement, which reads in a snapshot of its own; that is the whole
/// look-up unless the license's seats are only in the seat tables, and then
/// it runs again in a transaction, so that the row and the seats are read
/// in the same snapshot. (A `BEGIN` and `COMMIT` around every look-up cost
/// two statements more.)
fn look_up_read(conn: &Connection, v: &ValidationInput) -> Result<Option<Seen>> {
    match validation_row(conn, &v.key)? {
        None => Ok(None),
        Some(row) if !row.needs_seat_tables(v) => decide_on(conn, v, row).map(Some),
        Some(_) => {
            conn.prepare_cached("BEGIN")?.execute([])?;
            let seen = look_up(conn, v);
            conn.prepare_cached("COMMIT")?.execute([])?;
            seen
        }
    }
}

/// The writer's part of a validation that takes a seat or activates the
/// license: decided again inside the write transaction, so two validations
/// racing for the last seat cannot both take it. Its usage row commits with
/// the seat, so that no crash leaves one without the other.
fn validate_in(conn: &Connection, v: &ValidationInput) -> Result<Option<ValidationOutcome>> {
    let Some(seen) = look_up(conn, v)? else {
        return Ok(None);
    };
    let now = v.now.timestamp();
    if let (true, Some(domain)) = (seen.decision.take_domain_seat, &v.domain) {
        conn.prepare_cached(DOMAIN_SEATS.insert)?
            .execute(params![seen.seq, domain, now])?;
    }
    if let (true, Some(fp)) = (seen.decision.take_machine_seat, &v.fingerprint) {
        conn.prepare_cached(MACHINE_SEATS.insert)?
            .execute(params![seen.seq, fp, now])?;
    }
    append_usage(conn, &[usage_entry(v, seen.seq, seen.decision.code)])?;
    if seen.decision.activates(seen.activated) {
        conn.prepare_cached("UPDATE licenses SET activated_at = ?2 WHERE seq = ?1")?
            .execute(params![seen.seq, now])?;
        // The event's license counts this validation (its row is in).
        let (_, license) = load_license(conn, &seen.id)?;
        record_event(conn, EventType::Activated, &license, v.now)?;
    }
    seen.outcome().map(|(_, outcome)| Some(outcome))
}

fn update_in(
    conn: &Connection,
    id: &str,
    patch: LicensePatch,
    now: DateTime<Utc>,
) -> Result<License> {
    let (seq, before) = load_license(conn, id)?;
    patch
        .precondition
        .check(&format!("license {id}"), Some(&license_tag(&before)))?;
    let mut after = before.clone();
    if let Some(plan) = patch.plan.clone() {
        plan_must_exist(conn, &plan)?;
        after.plan = plan;
    }
    if let Some(email) = patch.customer_email.clone() {
        after.customer_email = email;
    }
    if let Some(max) = patch.max_domains {
        after.max_domains = max;
    }
    if let Some(max) = patch.max_machines {
        after.max_machines = max;
    }
    if let Some(expires_at) = patch.expires_at {
        after.expires_at = expires_at;
    }
    if let Some(metadata) = patch.metadata.clone() {
        after.metadata = metadata;
    }
    let (status, status_event) = transition(before.status, patch.status, after.expires_at, now)?;
    after.status = status;
    if after == before {
        return Ok(before);
    }
    after.updated_at = now;
    write_license_fields(conn, seq, &after)?;
    record_event(
        conn,
        status_event.unwrap_or(EventType::Updated),
        &after,
        now,
    )?;
    Ok(after)
}

fn free_seat(
    conn: &Connection,
    id: &str,
    table: &str,
    column: &str,
    value: &str,
    now: DateTime<Utc>,
) -> Result<License> {
    let (seq, _) = load_license(conn, id)?;
    let sql = format!("DELETE FROM {table} WHERE license_seq = ?1 AND {column} = ?2");
    if conn.prepare_cached(&sql)?.execute(params![seq, value])? == 0 {
        let what = if column == "domain" {
            "DOMAIN_NOT_FOUND"
        } else {
            "MACHINE_NOT_FOUND"
        };
        return Err(StoreError::NotFound {
            code: what,
            message: format!("license {id} holds no seat for {value:?}"),
        });
    }
    conn.prepare_cached("UPDATE licenses SET updated_at = ?2 WHERE seq = ?1")?
        .execute(params![seq, now.timestamp()])?;
    let (_, license) = load_license(conn, id)?;
    record_event(conn, EventType::Updated, &license, now)?;
    Ok(license)
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_plan(&self, plan: Plan, precondition: Precondition) -> Result<bool> {
        self.write(move |conn| {
            let current = load_plan(conn, &plan.name)?;
            precondition.check(
                &format!("plan {:?}", plan.name),
                current.as_ref().map(plan_tag).as_deref(),
            )?;
            let existed = current.is_some();
            conn.prepare_cached(
                "INSERT INTO plans (name, features, max_domains, max_machines, duration_days, offline_grace_days) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET features = excluded.features, \
                 max_domains = excluded.max_domains, max_machines = excluded.max_machines, \
                 duration_days = excluded.duration_days, offline_grace_days = excluded.offline_grace_days",
            )?
            .execute(params![
                plan.name,
                serde_json::to_string(&plan.features)?,
                plan.max_domains,
                plan.max_machines,
                plan.duration_days,
                plan.offline_grace_days
            ])?;
            Ok(!existed)
        })
        .await
    }

    async fn get_plan(&self, name: String) -> Result<Plan> {
        self.read(move |conn| {
            load_plan(conn, &name)?.ok_or_else(|| StoreError::NotFound {
                code: "PLAN_NOT_FOUND",
                message: format!("no plan named {name:?}"),
            })
        })
        .await
    }

    async fn list_plans(&self) -> Result<Vec<Plan>> {
        self.read(|conn| {
            let names: Vec<String> = conn
                .prepare_cached("SELECT name FROM plans ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            names
                .iter()
                .map(|n| load_plan(conn, n).map(|p| p.expect("plan listed a moment ago")))
                .collect()
        })
        .await
    }

    async fn delete_plan(&self, name: String) -> Result<()> {
        self.write(move |conn| {
            let in_use: bool = conn
                .prepare_cached("SELECT EXISTS(SELECT 1 FROM licenses WHERE plan = ?1)")?
                .query_row([&name], |r| r.get(0))?;
            if in_use {
                return Err(StoreError::Conflict {
                    code: "PLAN_IN_USE",
                    message: format!(
                        "plan {name:?} still has licenses; move them to another plan first"
                    ),
                });
            }
            if conn
                .prepare_cached("DELETE FROM plans WHERE name = ?1")?
                .execute([&name])?
                == 0
            {
                return Err(StoreError::NotFound {
                    code: "PLAN_NOT_FOUND",
                    message: format!("no plan named {name:?}"),
                });
            }
            Ok(())
        })
        .await
    }

    async fn create_license(&self, new: NewLicense, now: DateTime<Utc>) -> Result<License> {
        self.write(move |conn| insert_license(conn, &new, now))
            .await
    }

    async fn has_licenses(&self) -> Result<bool> {
        self.read(|conn| {
            Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM licenses)", [], |r| r.get(0))?)
        })
        .await
    }

    async fn get_license(&self, id: String) -> Result<License> {
        self.settle_usage().await?;
        self.read(move |conn| load_license(conn, &id).map(|(_, l)| l))
            .await
    }

    async fn list_licenses(&self, filter: LicenseFilter, page: PageRequest) -> Result<LicensePage> {
        self.settle_usage().await?;
        self.read(move |conn| {
            let mut sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses WHERE seq < ?1");
            let mut args: Vec<String> = Vec::new();
            for (column, value) in [
                ("status", filter.status.map(|s| s.as_str().to_owned())),
                ("plan", filter.plan),
                ("customer_email", filter.customer_email),
                ("key", filter.key),
            ] {
                if let Some(value) = value {
                    args.push(value);
                    let collate = if column == "customer_email" {
                        " COLLATE NOCASE"
                    } else {
                        ""
                    };
                    sql.push_str(&format!(" AND {column} = ?{}{collate}", args.len() + 2));
                }
            }
            sql.push_str(" ORDER BY seq DESC LIMIT ?2");
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut bound: Vec<&dyn rusqlite::ToSql> = vec![];
            let before = page.before.unwrap_or(i64::MAX);
            let limit = i64::from(page.limit) + 1;
            bound.push(&before);
            bound.push(&limit);
            for a in &args {
                bound.push(a);
            }
            let raws: Vec<_> = stmt
                .query_map(bound.as_slice(), license_row)?
                .collect::<rusqlite::Result<_>>()?;
            let more = raws.len() > page.limit as usize;
            let mut out = Vec::with_capacity(raws.len());
            let mut last_seq = None;
            for raw in raws.into_iter().take(page.limit as usize) {
                let (seq, license) = finish_license(conn, raw)?;
                last_seq = Some(seq);
                out.push(license);
            }
            Ok((out, if more { last_seq } else { None }))
        })
        .await
    }

    async fn update_license(
        &self,
        id: String,
        patch: LicensePatch,
        now: DateTime<Utc>,
    ) -> Result<License> {
        self.write(move |conn| update_in(conn, &id, patch, now))
            .await
    }

    async fn revoke_license(&self, id: String, now: DateTime<Utc>) -> Result<License> {
        self.write(move |conn| {
            let (seq, mut license) = load_license(conn, &id)?;
            if license.status == Status::Revoked {
                return Ok(license);
            }
            license.status = Status::Revoked;
            license.updated_at = now;
            write_license_fields(conn, seq, &license)?;
            record_event(conn, EventType::Revoked, &license, now)?;
            Ok(license)
        })
        .await
    }

    async fn free_domain(&self, id: String, domain: String, now: DateTime<Utc>) -> Result<License> {
        self.write(move |conn| free_seat(conn, &id, "license_domains", "domain", &domain, now))
            .await
    }

    async fn free_machine(
        &self,
        id: String,
        fingerprint: String,
        now: DateTime<Utc>,
    ) -> Result<License> {
        self.write(move |conn| {
            free_seat(
                conn,
                &id,
                "license_machines",
                "fingerprint",
                &fingerprint,
                now,
            )
        })
        .await
    }

    async fn usage(&self, id: String, page: PageRequest) -> Result<UsagePage> {
        self.settle_usage().await?;
        let counted = self.counted.clone();
        self.read(move |conn| {
            let (seq, _) = load_license(conn, &id)?;
            let newest = newest_usage(conn, seq)?;
            let start = match page.before {
                None => newest,
                Some(before) => usage_before(conn, seq, newest, before)?,
            };
            let mut stmt = conn.prepare_cached(&format!(
                "{USAGE_CHAIN} SELECT u.seq, u.at, u.code, u.domain, u.fingerprint, u.ip, \
                 u.user_agent, u.country {CHAIN_ROWS} ORDER BY u.seq DESC"
            ))?;
            let rows: Vec<(i64, UsageRecord)> = stmt
                .query_map(params![seq, start, i64::from(page.limit) + 1], |r| {
                    let code: String = r.get(2)?;
                    Ok((
                        r.get(0)?,
                        UsageRecord {
                            at: from_unix(r.get(1)?),
                            code: Code::parse(&code).unwrap_or(Code::BadRequest),
                            domain: r.get(3)?,
                            fingerprint: r.get(4)?,
                            ip: r.get(5)?,
                            user_agent: r.get(6)?,
                            country: r.get(7)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let more = rows.len() > page.limit as usize;
            let rows: Vec<_> = rows.into_iter().take(page.limit as usize).collect();
            let next_before = if more {
                rows.last().map(|(s, _)| *s)
            } else {
                None
            };
            let totals = counted.totals(conn, seq, newest)?;
            Ok(UsagePage {
                records: rows.into_iter().map(|(_, r)| r).collect(),
                next_before,
                totals,
            })
        })
        .await
    }

    async fn validate(&self, input: ValidationInput) -> Result<ValidationOutcome> {
        // Decided on a read connection, on this thread (a look-up by key
        // takes microseconds, less than a hand-off to another thread); only
        // a validation that takes a seat or activates goes to the writer.
        match self.readers.run(|conn| look_up_read(conn, &input))? {
            None => Ok(ValidationOutcome::not_found()),
            Some(seen) if !seen.writes() => {
                let (seq, outcome) = seen.outcome()?;
                self.record_usage(usage_entry(&input, seq, outcome.code))
                    .await?;
                Ok(outcome)
            }
            Some(_) => Ok(self
                .write(move |conn| validate_in(conn, &input))
                .await?
                .unwrap_or_else(ValidationOutcome::not_found)),
        }
    }

    async fn deactivate(
        &self,
        key: String,
        domain: Option<String>,
        fingerprint: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Deactivated> {
        self.write(move |conn| {
            let Some((seq, _)) = load_license_by(conn, "key", &key)? else {
                return Err(StoreError::NotFound {
                    code: "LICENSE_NOT_FOUND",
                    message: "no license has this key".into(),
                });
            };
            let freed = |sql: &str, value: &Option<String>| -> Result<bool> {
                Ok(match value {
                    Some(v) => conn.prepare_cached(sql)?.execute(params![seq, v])? > 0,
                    None => false,
                })
            };
            let out = Deactivated {
                domain_freed: freed(
                    "DELETE FROM license_domains WHERE license_seq = ?1 AND domain = ?2",
                    &domain,
                )?,
                machine_freed: freed(
                    "DELETE FROM license_machines WHERE license_seq = ?1 AND fingerprint = ?2",
                    &fingerprint,
                )?,
            };
            if out.domain_freed || out.machine_freed {
                conn.prepare_cached("UPDATE licenses SET updated_at = ?2 WHERE seq = ?1")?
                    .execute(params![seq, now.timestamp()])?;
                let id: String =
                    conn.query_row("SELECT id FROM licenses WHERE seq = ?1", [seq], |r| {
                        r.get(0)
                    })?;
                let (_, license) = load_license(conn, &id)?;
                record_event(conn, EventType::Updated, &license, now)?;
            }
            Ok(out)
        })
        .await
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<usize> {
        // Looked at on a read connection first, as `claim_deliveries`: a
        // sweep with nothing due does not make the writer commit.
        if !self.readers.finds(DUE_LICENSES, [now.timestamp()])? {
            return Ok(0);
        }
        self.write(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached(DUE_LICENSES)?
                .query_map([now.timestamp()], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for id in &ids {
                let (seq, mut license) = load_license(conn, id)?;
                license.status = Status::Expired;
                license.updated_at = now;
                write_license_fields(conn, seq, &license)?;
                record_event(conn, EventType::Expired, &license, now)?;
            }
            Ok(ids.len())
        })
        .await
    }

    async fn prune_usage(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let pruned = self
            .write(move |conn| prune_usage_in(conn, before, limit))
            .await;
        // Committed (or failed, and perhaps not): the totals counted so
        // far may count deleted rows.
        if !matches!(pruned, Ok(0)) {
            self.counted.pruned();
        }
        pruned
    }

    async fn prune_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let cutoff = before.timestamp();
        // Looked at on a read connection first, as `expire_due`.
        if !self.readers.finds(EVENTS_BEFORE, [cutoff])? {
            return Ok(0);
        }
        self.write(move |conn| {
            let seqs: Vec<i64> = conn
                .prepare_cached(SETTLED_EVENTS_BEFORE)?
                .query_map(params![cutoff, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for seq in &seqs {
                // Their attempts go with them (ON DELETE CASCADE).
                conn.prepare_cached("DELETE FROM deliveries WHERE event_seq = ?1")?
                    .execute([seq])?;
                conn.prepare_cached("DELETE FROM events WHERE seq = ?1")?
                    .execute([seq])?;
            }
            Ok(seqs.len() as u64)
        })
        .await
    }

    async fn create_webhook(&self, new: NewWebhook, now: DateTime<Utc>) -> Result<Webhook> {
        self.write(move |conn| {
            let id = ids::webhook_id();
            conn.prepare_cached(
                "INSERT INTO webhooks (id, url, events, secret, enabled, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                id,
                new.url,
                serde_json::to_string(&event_names(&new.events))?,
                new.secret,
                new.enabled,
                now.timestamp()
            ])?;
            let (_, mut webhook) = load_webhook(conn, &id)?;
            webhook.secret = Some(new.secret);
            Ok(webhook)
        })
        .await
    }

    async fn list_webhooks(&self, page: PageRequest) -> Result<(Vec<Webhook>, Option<i64>)> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2"
            );
            let raws: Vec<_> = conn
                .prepare_cached(&sql)?
                .query_map(
                    params![page.before.unwrap_or(i64::MAX), i64::from(page.limit) + 1],
                    webhook_row,
                )?
                .collect::<rusqlite::Result<_>>()?;
            let more = raws.len() > page.limit as usize;
            let hooks = raws
                .into_iter()
                .take(page.limit as usize)
                .map(finish_webhook)
                .collect::<Result<Vec<_>>>()?;
            let next = if more {
                hooks.last().map(|(seq, _)| *seq)
            } else {
                None
            };
            Ok((hooks.into_iter().map(|(_, w)| w).collect(), next))
        })
        .await
    }

    async fn get_webhook(&self, id: String) -> Result<Webhook> {
        self.read(move |conn| load_webhook(conn, &id).map(|(_, w)| w))
            .await
    }

    async fn update_webhook(&self, id: String, patch: WebhookPatch) -> Result<Webhook> {
        self.write(move |conn| {
            let (seq, _) = load_webhook(conn, &id)?;
            if let Some(url) = &patch.url {
                conn.prepare_cached("UPDATE webhooks SET url = ?2 WHERE seq = ?1")?
                    .execute(params![seq, url])?;
            }
            if let Some(events) = &patch.events {
                conn.prepare_cached("UPDATE webhooks SET events = ?2 WHERE seq = ?1")?
                    .execute(params![seq, serde_json::to_string(&event_names(events))?])?;
            }
            if let Some(enabled) = patch.enabled {
                if enabled {
                    // What waited while it was disabled starts its retry
                    // window now, not when it was first tried.
                    conn.prepare_cached(
                        "UPDATE deliveries SET first_attempt_ms = NULL WHERE webhook_seq = ?1 \
                         AND state = 'pending' AND NOT (SELECT enabled FROM webhooks WHERE seq = ?1)",
                    )?
                    .execute(params![seq])?;
                }
                conn.prepare_cached("UPDATE webhooks SET enabled = ?2 WHERE seq = ?1")?
                    .execute(params![seq, enabled])?;
            }
            if let Some(secret) = &patch.secret {
                conn.prepare_cached("UPDATE webhooks SET secret = ?2 WHERE seq = ?1")?
                    .execute(params![seq, secret])?;
            }
            load_webhook(conn, &id).map(|(_, w)| w)
        })
        .await
    }

    async fn delete_webhook(&self, id: String) -> Result<()> {
        self.write(move |conn| {
            let (seq, _) = load_webhook(conn, &id)?;
            conn.prepare_cached("DELETE FROM delivery_attempts WHERE webhook_seq = ?1")?
                .execute([seq])?;
            conn.prepare_cached("DELETE FROM deliveries WHERE webhook_seq = ?1")?
                .execute([seq])?;
            conn.prepare_cached("DELETE FROM webhooks WHERE seq = ?1")?
                .execute([seq])?;
            Ok(())
        })
        .await
    }

    async fn delivery_attempts(
        &self,
        id: String,
        page: PageRequest,
    ) -> Result<(Vec<DeliveryAttempt>, Option<i64>)> {
        self.read(move |conn| {
            let (seq, _) = load_webhook(conn, &id)?;
            let rows: Vec<(i64, DeliveryAttempt)> = conn
                .prepare_cached(
                    "SELECT a.seq, e.id, e.type, a.attempt, a.at, a.status_code, a.error, a.duration_ms, d.state \
                     FROM delivery_attempts a JOIN deliveries d ON d.seq = a.delivery_seq \
                     JOIN events e ON e.seq = d.event_seq \
                     WHERE a.webhook_seq = ?1 AND a.seq < ?2 ORDER BY a.seq DESC LIMIT ?3",
                )?
                .query_map(params![seq, page.before.unwrap_or(i64::MAX), i64::from(page.limit) + 1], |r| {
                    Ok((
                        r.get(0)?,
                        DeliveryAttempt {
                            event_id: r.get(1)?,
                            kind: r.get(2)?,
                            attempt: r.get(3)?,
                            at: from_unix(r.get::<_, i64>(4)? / 1000),
                            status_code: r.get(5)?,
                            error: r.get(6)?,
                            duration_ms: r.get::<_, i64>(7)? as u64,
                            state: r.get(8)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let more = rows.len() > page.limit as usize;
            let rows: Vec<_> = rows.into_iter().take(page.limit as usize).collect();
            let next = if more { rows.last().map(|(s, _)| *s) } else { None };
            Ok((rows.into_iter().map(|(_, a)| a).collect(), next))
        })
        .await
    }

    async fn redeliver(&self, id: String, event_id: String, now: DateTime<Utc>) -> Result<()> {
        self.write(move |conn| {
            let (seq, _) = load_webhook(conn, &id)?;
            let changed = conn
                .prepare_cached(
                    "UPDATE deliveries SET state = 'pending', first_attempt_ms = NULL, next_attempt_ms = ?3, \
                     locked_until_ms = 0 WHERE webhook_seq = ?1 AND state != 'pending' \
                     AND event_seq = (SELECT seq FROM events WHERE id = ?2)",
                )?
                .execute(params![seq, event_id, now.timestamp_millis()])?;
            if changed > 0 {
                // The license's later events wait for it again (in order):
                // their windows start when they are tried next.
                conn.prepare_cached(
                    "UPDATE deliveries SET first_attempt_ms = NULL WHERE webhook_seq = ?1 \
                     AND state = 'pending' AND license_id = (SELECT license_id FROM events WHERE id = ?2) \
                     AND event_seq > (SELECT seq FROM events WHERE id = ?2)",
                )?
                .execute(params![seq, event_id])?;
            }
            if changed == 0 {
                let pending: bool = conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE webhook_seq = ?1 \
                         AND state = 'pending' AND event_seq = (SELECT seq FROM events WHERE id = ?2))",
                    )?
                    .query_row(params![seq, event_id], |r| r.get(0))?;
                return Err(super::no_redelivery(&id, &event_id, pending));
            }
            Ok(())
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        per_endpoint: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<DeliveryJob>> {
        // Asked four times a second. Looked at on a read connection first:
        // through the writer, every poll would commit, copying the usage
        // journal and emptying every reader's page cache. The look is the
        // claim's own query, so that due deliveries it would not claim (an
        // endpoint disabled or at its cap, a license's later event) do not
        // send each poll through the writer either.
        let now_ms = now.timestamp_millis();
        if !self
            .readers
            .finds(CLAIMABLE, params![now_ms, limit, per_endpoint])?
        {
            return Ok(Vec::new());
        }
        self.write(move |conn| {
            let jobs: Vec<DeliveryJob> = conn
                .prepare_cached(CLAIMABLE)?
                .query_map(params![now_ms, limit, per_endpoint], |r| {
                    Ok(DeliveryJob {
                        delivery: r.get(0)?,
                        webhook_id: r.get(9)?,
                        url: r.get(1)?,
                        secret: r.get(2)?,
                        event_id: r.get(3)?,
                        kind: r.get(4)?,
                        created_at: from_unix(r.get(5)?),
                        data: r.get(6)?,
                        attempt: r.get::<_, u32>(7)? + 1,
                        first_attempt_at: r
                            .get::<_, Option<i64>>(8)?
                            .and_then(chrono::DateTime::from_timestamp_millis),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let until = now_ms + lease.num_milliseconds();
            for job in &jobs {
                conn.prepare_cached("UPDATE deliveries SET locked_until_ms = ?2 WHERE seq = ?1")?
                    .execute(params![job.delivery, until])?;
            }
            Ok(jobs)
        })
        .await
    }

    async fn finish_delivery(&self, job: DeliveryJob, result: AttemptResult) -> Result<()> {
        self.write(move |conn| {
            let webhook_seq: Option<i64> = conn
                .prepare_cached("SELECT webhook_seq FROM deliveries WHERE seq = ?1")?
                .query_row([job.delivery], |r| r.get(0))
                .optional()?;
            let Some(webhook_seq) = webhook_seq else {
                return Ok(()); // the endpoint was deleted meanwhile
            };
            let at_ms = result.at.timestamp_millis();
            conn.prepare_cached(
                "INSERT INTO delivery_attempts (delivery_seq, webhook_seq, attempt, at, status_code, error, duration_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                job.delivery,
                webhook_seq,
                job.attempt,
                at_ms,
                result.status_code,
                result.error,
                result.duration_ms as i64
            ])?;
            let (state, next_ms) = match result.next {
                DeliveryNext::Delivered => ("delivered", at_ms),
                DeliveryNext::Failed => ("failed", at_ms),
                DeliveryNext::RetryAt(t) => ("pending", t.timestamp_millis()),
            };
            conn.prepare_cached(
                "UPDATE deliveries SET state = ?2, attempts = ?3, first_attempt_ms = COALESCE(first_attempt_ms, ?4), \
                 next_attempt_ms = ?5, locked_until_ms = 0 WHERE seq = ?1",
            )?
            .execute(params![job.delivery, state, job.attempt, at_ms, next_ms])?;
            Ok(())
        })
        .await
    }

    async fn admin_token_hash(&self) -> Result<Option<String>> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT v FROM meta WHERE k = 'admin_token_sha256'")?
                .query_row([], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn keep_first_admin_token_hash(&self, hash: String) -> Result<String> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO meta (k, v) VALUES ('admin_token_sha256', ?1)",
            )?
            .execute([hash])?;
            Ok(conn
                .prepare_cached("SELECT v FROM meta WHERE k = 'admin_token_sha256'")?
                .query_row([], |r| r.get(0))?)
        })
        .await
    }

    async fn replace_admin_token_hash(&self, hash: String) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(REPLACE_ADMIN_TOKEN_HASH)?
                .execute([hash])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::schema::{migrate, KEPT_SEATS, MIGRATIONS};
    use super::writer::{
        in_transaction, ingest, ingested_through, recover_usage, rotate_journal,
        INGEST_PIECE_BYTES, PACE_ROWS,
    };
    use super::*;

    #[test]
    fn the_expiry_sweep_uses_its_partial_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {DUE_LICENSES}"))
            .unwrap()
            .query_map([0], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter().any(|step| step.contains("licenses_due")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_validation_reads_its_license_from_one_covering_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("k.db")).unwrap();
        migrate(&mut conn).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {VALIDATION_LOOKUP}"))
            .unwrap()
            .query_map(["KS-X"], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter()
                .any(|step| step.contains("COVERING INDEX licenses_validate")),
            "{plan:?}"
        );
    }

    fn new_license(n: usize) -> NewLicense {
        NewLicense {
            plan: "p".into(),
            customer_email: format!("c{n}@example.com"),
            max_domains: None,
            max_machines: None,
            expires_at: None,
            metadata: serde_json::Map::new(),
            key_prefix: "KS".into(),
        }
    }

    const TEST_CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

    fn test_tuning(restart_pages: i64) -> Tuning {
        Tuning {
            restart_pages,
            checkpoint_every: TEST_CHECKPOINT_EVERY,
            ingest_every: TEST_CHECKPOINT_EVERY,
            pace_pause: PACE_PAUSE,
            pace_budget: PACE_BUDGET,
            rotate_bytes: JOURNAL_ROTATE_BYTES,
            retry_naming: TEST_CHECKPOINT_EVERY,
        }
    }

    async fn store_with_plan(path: &Path, restart_pages: i64) -> SqliteStore {
        store_tuned(path, test_tuning(restart_pages)).await
    }

    async fn store_tuned(path: &Path, tuning: Tuning) -> SqliteStore {
        let store = SqliteStore::open_tuned(path, Synchronous::Normal, tuning).unwrap();
        store
            .put_plan(
                Plan {
                    name: "p".into(),
                    features: vec![],
                    max_domains: None,
                    max_machines: None,
                    duration_days: None,
                    offline_grace_days: 7,
                },
                Precondition::None,
            )
            .await
            .unwrap();
        store
    }

    /// A store in a fresh directory, with one license.
    async fn store_with_license(
        tuning: Tuning,
    ) -> (tempfile::TempDir, std::path::PathBuf, SqliteStore, License) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_tuned(&path, tuning).await;
        let license = store
            .create_license(new_license(0), Utc::now())
            .await
            .unwrap();
        (dir, path, store, license)
    }

    fn wal_bytes(db: &Path) -> u64 {
        std::fs::metadata(db.with_extension("db-wal")).map_or(0, |m| m.len())
    }

    /// How many times the log has started over: its header's checkpoint
    /// sequence number (bytes 12..16, big-endian), which SQLite increments
    /// at each restart.
    fn wal_restarts(db: &Path) -> u32 {
        let mut header = [0; 16];
        std::fs::File::open(db.with_extension("db-wal"))
            .and_then(|mut wal| std::io::Read::read_exact(&mut wal, &mut header))
            .expect("the WAL's header");
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    }

    /// Commits leave the WAL for the database file without any commit
    /// checkpointing (wal_autocheckpoint = 0): the checkpointer copies them.
    #[tokio::test]
    async fn the_checkpointer_copies_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_plan(&path, WAL_RESTART_PAGES).await;
        let created = store
            .create_license(new_license(0), Utc::now())
            .await
            .unwrap();
        tokio::time::sleep(TEST_CHECKPOINT_EVERY * 4).await;
        // The database file alone, without its WAL, already holds the license.
        let copy = dir.path().join("copy.db");
        std::fs::copy(&path, &copy).unwrap();
        let conn = Connection::open(&copy).unwrap();
        let found: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM licenses WHERE id = ?1",
                [&created.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(found, 1);
        drop(store);
    }

    /// A clean stop leaves everything in the database file: the log copied
    /// in and cut to nothing, the usage journal copied and emptied. A
    /// backup of `keysmith.db` alone, taken with the server stopped, is
    /// whole, and the next start has no log to read.
    #[tokio::test]
    async fn a_clean_stop_leaves_everything_in_the_database_file() {
        // Checkpoints every minute: none runs while the store is open.
        let tuning = Tuning {
            checkpoint_every: Duration::from_secs(60),
            ..test_tuning(WAL_RESTART_PAGES)
        };
        let (dir, path, store, license) = store_with_license(tuning).await;
        for at in 1..=20 {
            store
                .validate(validation(&license.key, 1_000 + at))
                .await
                .unwrap();
        }
        assert!(
            journal_bytes(&path) > 0,
            "the validations went to the journal"
        );
        drop(store);
        assert_eq!(wal_bytes(&path), 0, "the log is copied in and cut");
        assert_eq!(journal_bytes(&path), 0, "the journal is emptied");
        for suffix in ["-wal", "-shm"] {
            let file = journal::with_suffix(&path, suffix);
            assert!(!file.exists(), "{} is left behind", file.display());
        }
        let copy = dir.path().join("alone.db");
        std::fs::copy(&path, &copy).unwrap();
        assert_eq!(count(&copy, "SELECT COUNT(*) FROM licenses"), 1);
        assert_eq!(count(&copy, "SELECT COUNT(*) FROM usage"), 20);
        // And the store opens again with every count.
        let store = store_tuned(&path, tuning).await;
        let got = store.get_license(license.id.clone()).await.unwrap();
        assert_eq!(counted(&got), (20, Some(1_020)));
    }

    fn validation(key: &str, at: i64) -> ValidationInput {
        ValidationInput {
            key: key.into(),
            domain: None,
            fingerprint: None,
            ip: None,
            user_agent: None,
            country: None,
            now: from_unix(at),
        }
    }

    /// The one license's counters row: validations and last time.
    fn counters_row(path: &Path) -> Option<(i64, Option<i64>)> {
        let conn = Connection::open(path).unwrap();
        conn.query_row(
            "SELECT validations, last_validated_at FROM license_counters",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .unwrap()
    }

    fn count(path: &Path, sql: &str) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// A journal record of a `VALID` answer to a bare validation.
    fn valid_usage(license_seq: i64, at: i64) -> Entry {
        Entry {
            license_seq,
            at,
            code: "VALID".into(),
            domain: None,
            fingerprint: None,
            ip: None,
            user_agent: None,
            country: None,
        }
    }

    /// Bytes of records in the journal's file (past its 16-byte header).
    fn journal_bytes(db: &Path) -> u64 {
        let len = std::fs::metadata(journal::path_for(db)).map_or(0, |m| m.len());
        len.saturating_sub(16)
    }

    fn counted(l: &License) -> (u64, Option<i64>) {
        (
            l.validation_count,
            l.last_validated_at.map(|t| t.timestamp()),
        )
    }

    /// The writer copies the journal (and counts it) at the start of its
    /// transaction; when that fails, the batch's writes still commit, and
    /// the copy catches up once it works again.
    #[tokio::test]
    async fn a_failing_journal_copy_holds_back_no_write() {
        let (_dir, path, store, license) = store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        // The first validation activates the license (the writer's own row).
        store
            .validate(validation(&license.key, 1_000))
            .await
            .unwrap();
        let side = Connection::open(&path).unwrap();
        let block = |table: &str| {
            side.execute_batch(&format!(
                "CREATE TRIGGER block_{table} BEFORE UPDATE ON {table} \
                 BEGIN SELECT RAISE(ABORT, 'blocked by the test'); END;"
            ))
            .unwrap()
        };
        let unblock = |table: &str| {
            side.execute_batch(&format!("DROP TRIGGER block_{table}"))
                .unwrap()
        };

        store
            .validate(validation(&license.key, 1_001))
            .await
            .unwrap();
        store.settle_usage().await.unwrap();
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 2, "copied");
        assert_eq!(counters_row(&path), Some((2, Some(1_001))));

        block("license_counters");
        store
            .validate(validation(&license.key, 1_002))
            .await
            .unwrap();
        let other = store
            .create_license(new_license(1), Utc::now())
            .await
            .expect("a write commits while the journal cannot be copied");
        assert_eq!(count(&path, "SELECT COUNT(*) FROM licenses"), 2);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 2, "not copied");

        assert_eq!(counters_row(&path), Some((2, Some(1_001))), "not counted");

        unblock("license_counters");
        assert_eq!(
            counted(&store.get_license(license.id.clone()).await.unwrap()),
            (3, Some(1_002))
        );
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 3);
        assert_eq!(counters_row(&path), Some((3, Some(1_002))));
        assert_eq!(
            store.get_license(other.id).await.unwrap().validation_count,
            0
        );
    }

    /// A license's `seats` column: its seats, as the seat tables hold them
    /// (`None`: not kept).
    fn kept_and_held(path: &Path, id: &str) -> (Option<Vec<String>>, Vec<String>) {
        let conn = Connection::open(path).unwrap();
        let (seq, kept): (i64, Option<String>) = conn
            .query_row("SELECT seq, seats FROM licenses WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let held = conn
            .prepare(
                "SELECT 'd:' || domain FROM license_domains WHERE license_seq = ?1 \
                 UNION ALL SELECT 'm:' || fingerprint FROM license_machines WHERE license_seq = ?1",
            )
            .unwrap()
            .query_map([seq], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let kept = kept.map(|k| sorted(serde_json::from_str(&k).unwrap()));
        (kept, sorted(held))
    }

    fn seat_validation(
        key: &str,
        domain: Option<&str>,
        fingerprint: Option<&str>,
    ) -> ValidationInput {
        ValidationInput {
            domain: domain.map(str::to_owned),
            fingerprint: fingerprint.map(str::to_owned),
            ..validation(key, 1_000)
        }
    }

    /// Each seat taken used to recount every seat of its license: on an
    /// unlimited plan, whoever holds a key could add domains until each new
    /// one cost a scan of tens of thousands, holding up the one writer. The
    /// count now stops past `KEPT_SEATS`.
    #[tokio::test]
    async fn a_new_seat_costs_the_same_with_ten_thousand_taken() {
        let (_dir, path, store, license) = store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        drop(store);
        let mut conn = Connection::open(&path).unwrap();
        let seq: i64 = conn
            .query_row(
                "SELECT seq FROM licenses WHERE id = ?1",
                [&license.id],
                |r| r.get(0),
            )
            .unwrap();
        let mut take = |from: usize, n: usize| {
            let started = std::time::Instant::now();
            let tx = conn.transaction().unwrap();
            for i in from..from + n {
                tx.execute(
                    "INSERT INTO license_domains (license_seq, domain, added_at) VALUES (?1, ?2, 0)",
                    params![seq, format!("d{i}.example")],
                )
                .unwrap();
            }
            tx.commit().unwrap();
            started.elapsed()
        };
        let early = take(0, 300);
        take(300, 9_700);
        let late = take(10_000, 300);
        assert!(
            late < early * 4 + Duration::from_millis(50),
            "300 seats took {early:?} at first, {late:?} past 10,000"
        );
        let kept: Option<String> = conn
            .query_row("SELECT seats FROM licenses WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kept, None, "past the kept seats");
    }

    /// Seats taken by validations and freed by the API and by deactivation
    /// are kept in the license's row, up to `KEPT_SEATS`; past that the
    /// column is NULL and validations read the tables, with the same answers.
    #[tokio::test]
    async fn a_license_keeps_its_seats_in_its_row_in_step_with_the_tables() {
        let (_dir, path, store, license) = store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        let in_step = |kept: bool| {
            let (k, held) = kept_and_held(&path, &license.id);
            if kept {
                assert_eq!(k.as_ref(), Some(&held));
            } else {
                assert_eq!(k, None, "{} seats", held.len());
            }
            held.len()
        };
        assert_eq!(in_step(true), 0);
        let code = |v: ValidationInput| {
            let store = &store;
            async move { store.validate(v).await.unwrap().code }
        };
        let key = license.key.as_str();
        assert_eq!(
            code(seat_validation(key, Some("a.example"), Some("fp-1"))).await,
            Code::Valid
        );
        assert_eq!(in_step(true), 2);
        for n in 2..KEPT_SEATS {
            let domain = format!("d{n}.example");
            assert_eq!(
                code(seat_validation(key, Some(&domain), None)).await,
                Code::Valid
            );
        }
        assert_eq!(in_step(true), KEPT_SEATS);
        assert_eq!(
            code(seat_validation(key, Some("last.example"), None)).await,
            Code::Valid
        );
        assert_eq!(in_step(false), KEPT_SEATS + 1);
        // Read from the tables: held seats are still held.
        assert_eq!(
            code(seat_validation(key, Some("a.example"), Some("fp-1"))).await,
            Code::Valid
        );
        assert_eq!(in_step(false), KEPT_SEATS + 1);

        store
            .free_domain(license.id.clone(), "last.example".into(), Utc::now())
            .await
            .unwrap();
        assert_eq!(in_step(true), KEPT_SEATS);
        store
            .deactivate(license.key.clone(), None, Some("fp-1".into()), Utc::now())
            .await
            .unwrap();
        assert_eq!(in_step(true), KEPT_SEATS - 1);

        // With a limit, the kept seats count: the limit is reached from them.
        let limited = store
            .create_license(
                NewLicense {
                    max_domains: Some(Some(2)),
                    max_machines: Some(Some(1)),
                    ..new_license(1)
                },
                Utc::now(),
            )
            .await
            .unwrap();
        let key = limited.key.as_str();
        for (domain, want) in [
            ("a.example", Code::Valid),
            ("b.example", Code::Valid),
            ("c.example", Code::DomainLimitReached),
            ("a.example", Code::Valid),
        ] {
            assert_eq!(
                code(seat_validation(key, Some(domain), None)).await,
                want,
                "{domain}"
            );
        }
        assert_eq!(
            code(seat_validation(key, None, Some("m1"))).await,
            Code::Valid
        );
        assert_eq!(
            code(seat_validation(key, None, Some("m2"))).await,
            Code::MachineLimitReached
        );
        let (kept, held) = kept_and_held(&path, &limited.id);
        assert_eq!(kept, Some(held));
    }

    thread_local! {
        static TRACED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// The statements `look_up_read` runs for `v` on a read connection:
    /// `row` for the license's row, `seats` for a seat table, else the SQL.
    fn statements_of_a_read_look_up(path: &Path, v: &ValidationInput) -> (Code, Vec<String>) {
        let mut conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        TRACED.with_borrow_mut(Vec::clear);
        conn.trace(Some(|sql| {
            TRACED.with_borrow_mut(|t| t.push(sql.to_owned()))
        }));
        let seen = look_up_read(&conn, v).unwrap().unwrap();
        conn.trace(None);
        assert!(conn.is_autocommit(), "no transaction left open");
        let label = |sql: String| match sql {
            _ if sql.contains("INDEXED BY licenses_validate") => "row".to_owned(),
            _ if sql.contains("FROM license_domains") || sql.contains("FROM license_machines") => {
                "seats".to_owned()
            }
            _ => sql,
        };
        let run = TRACED.with_borrow_mut(std::mem::take);
        (seen.decision.code, run.into_iter().map(label).collect())
    }

    /// A look-up on a read connection is one statement when the license
    /// keeps its seats in its row (every license up to `KEPT_SEATS`); past
    /// that it reads the row and the seat tables in one transaction.
    #[tokio::test]
    async fn a_read_look_up_is_one_statement_unless_it_needs_the_seat_tables() {
        let (_dir, path, store, license) = store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        let key = license.key.as_str();
        let with_seat = seat_validation(key, Some("a.example"), Some("fp-1"));
        assert_eq!(
            store.validate(with_seat.clone()).await.unwrap().code,
            Code::Valid
        );
        let (code, run) = statements_of_a_read_look_up(&path, &with_seat);
        assert_eq!((code, run), (Code::Valid, vec!["row".to_owned()]));

        for n in 0..KEPT_SEATS {
            let domain = format!("d{n}.example");
            let v = seat_validation(key, Some(&domain), None);
            assert_eq!(store.validate(v).await.unwrap().code, Code::Valid);
        }
        assert_eq!(
            kept_and_held(&path, &license.id).0,
            None,
            "seats no longer kept"
        );
        let (code, run) = statements_of_a_read_look_up(&path, &with_seat);
        assert_eq!(code, Code::Valid);
        assert_eq!(
            run,
            ["row", "BEGIN", "row", "seats", "seats", "COMMIT"],
            "{run:?}"
        );
        // Without a seat asked about, the row alone decides.
        let (code, run) = statements_of_a_read_look_up(&path, &validation(key, 1_000));
        assert_eq!((code, run.len()), (Code::Valid, 1));
    }

    /// A database at schema `version` (the first `version` migrations),
    /// then `sql`.
    fn database_at_version(path: &Path, version: usize, sql: &str) {
        let conn = Connection::open(path).unwrap();
        for step in &MIGRATIONS[..version] {
            conn.execute_batch(step).unwrap();
        }
        conn.pragma_update(None, "user_version", version as i64)
            .unwrap();
        conn.execute_batch(sql).unwrap();
    }

    /// The migration fills the column of licenses that hold seats (NULL
    /// past `KEPT_SEATS`) and validations answer as before.
    #[tokio::test]
    async fn the_kept_seats_migration_fills_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        database_at_version(
            &path,
            5,
            "INSERT INTO plans VALUES ('p', '[]', NULL, NULL, NULL, 7);
                 INSERT INTO licenses (id, key, status, plan, customer_email, metadata,
                     created_at, updated_at, max_domains)
                 VALUES ('lic_A', 'KS-A', 'active', 'p', 'a@example.com', '{}', 1, 1, 1),
                        ('lic_B', 'KS-B', 'active', 'p', 'b@example.com', '{}', 1, 1, NULL),
                        ('lic_C', 'KS-C', 'active', 'p', 'c@example.com', '{}', 1, 1, NULL);
                 INSERT INTO license_domains VALUES (1, 'a.example', 1);
                 INSERT INTO license_machines VALUES (1, 'fp-a', 1);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 17)
                 INSERT INTO license_domains SELECT 2, 'd' || i || '.example', 1 FROM n;",
        );
        let store = store_with_plan(&path, WAL_RESTART_PAGES).await;
        let kept = |id: &str| kept_and_held(&path, id);
        let (a, held) = kept("lic_A");
        assert_eq!(a, Some(held));
        assert_eq!(kept("lic_B").0, None);
        assert_eq!(kept("lic_C"), (Some(vec![]), vec![]));
        for (key, domain, want) in [
            ("KS-A", "a.example", Code::Valid),
            ("KS-A", "b.example", Code::DomainLimitReached),
            ("KS-B", "d17.example", Code::Valid),
            ("KS-C", "c.example", Code::Valid),
        ] {
            let v = seat_validation(key, Some(domain), None);
            assert_eq!(
                store.validate(v).await.unwrap().code,
                want,
                "{key} {domain}"
            );
        }
        assert_eq!(kept("lic_C").0, Some(vec!["d:c.example".to_owned()]));
    }

    /// `keysmith.db` restored from a backup next to the live journal: the
    /// journal holds usage of licenses created after the backup, which the
    /// database does not have. The server starts, copies the usage of the
    /// licenses it has, leaves out the rest (with a warning), and goes on
    /// recording usage.
    #[tokio::test]
    async fn journal_records_of_licenses_the_database_lacks_are_left_out() {
        let (_dir, path, store, license) = store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        drop(store);
        let seq = count(&path, "SELECT seq FROM licenses");
        let live = Journal::open(&path, false).unwrap();
        for license_seq in [seq, seq + 1_000, seq] {
            live.append(&valid_usage(license_seq, 2_000)).unwrap();
        }
        drop(live);

        let store = store_tuned(&path, test_tuning(WAL_RESTART_PAGES)).await;
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 2);
        store
            .validate(validation(&license.key, 2_001))
            .await
            .unwrap();
        assert_eq!(
            counted(&store.get_license(license.id.clone()).await.unwrap()),
            (3, Some(2_001))
        );
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 3);
    }

    /// A writer connection and the journal of a database with one license,
    /// and `records` usage records of it in the journal, none copied.
    async fn writer_with_journal(
        records: i64,
    ) -> (tempfile::TempDir, std::path::PathBuf, Journal, Connection) {
        let (dir, path, store, _license) = store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        drop(store);
        let seq = count(&path, "SELECT seq FROM licenses");
        let journal = Journal::open(&path, false).unwrap();
        let conn = open_writer(&path, Synchronous::Normal).unwrap();
        for at in 0..records {
            journal.append(&valid_usage(seq, 2_000 + at)).unwrap();
        }
        (dir, path, journal, conn)
    }

    /// What start-up does with the journal: cuts it, then copies it.
    fn recover(conn: &Connection, journal: &Journal, db: &Path) {
        cut_torn_journal(conn, journal).unwrap();
        recover_usage(conn, journal, &db.with_extension("db-wal")).unwrap();
    }

    /// Appends half a record to the journal of the database at `db`, as
    /// a crash in the middle of a write leaves it.
    fn tear_journal(db: &Path) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(journal::path_for(db))
            .unwrap();
        std::io::Write::write_all(&mut file, &[90, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
    }

    /// A license's chain as `(seq, at)`, newest first.
    fn chain_of(path: &Path) -> Vec<(i64, i64)> {
        let conn = Connection::open(path).unwrap();
        let mut rows = conn
            .prepare(
                "WITH RECURSIVE chain(seq) AS \
                 (SELECT last_seq FROM license_counters \
                  UNION ALL SELECT u.prev_seq FROM usage u JOIN chain c ON u.seq = c.seq) \
                 SELECT u.seq, u.at FROM chain JOIN usage u ON u.seq = chain.seq",
            )
            .unwrap();
        rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// A backlog of several pieces (`INGEST_PIECE_BYTES`) is copied in one
    /// transaction, every record once, in order on its license's chain.
    #[tokio::test]
    async fn a_backlog_of_many_pieces_is_copied_whole_and_in_order() {
        let records = 20_000;
        let (_dir, path, journal, conn) = writer_with_journal(records).await;
        let end = journal.len();
        assert!(
            end > 2 * INGEST_PIECE_BYTES,
            "{end} bytes is not several pieces"
        );
        assert_eq!(
            in_transaction(&conn, |c| ingest(c, &journal, None)).unwrap(),
            end
        );
        assert_eq!(ingested_through(&conn).unwrap(), end);
        let chain = chain_of(&path);
        let ats: Vec<i64> = chain.iter().map(|&(_, at)| at).collect();
        assert_eq!(
            ats,
            (0..records).rev().map(|at| 2_000 + at).collect::<Vec<_>>()
        );
        assert_eq!(
            count(&path, "SELECT validations FROM license_counters"),
            records
        );
    }

    /// At start-up a backlog of several pieces with a record torn by a
    /// crash at its end is copied up to that record, which is cut off.
    #[tokio::test]
    async fn a_backlog_of_many_pieces_with_a_torn_end_is_recovered() {
        let records = 20_000;
        let (_dir, path, journal, conn) = writer_with_journal(records).await;
        drop((journal, conn));
        let whole = journal_bytes(&path);
        tear_journal(&path);
        let store = store_tuned(&path, test_tuning(WAL_RESTART_PAGES)).await;
        assert_eq!(journal_bytes(&path), whole, "the torn record is cut off");
        drop(store);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), records);
        assert_eq!(chain_of(&path).len() as i64, records);
    }

    /// A crash that left a backlog in the journal does not hold start-up
    /// back: the store opens while another connection holds the database's
    /// write lock, with the torn record already cut off and nothing copied
    /// yet, and answers a validation that takes no seat meanwhile; the
    /// writer copies the backlog once it gets the lock, before the writes
    /// queued behind it.
    #[tokio::test]
    async fn start_up_cuts_a_torn_journal_and_leaves_the_copy_to_the_writer() {
        let (_dir, path, store, license) = store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        // Activated: its next validation takes no seat and needs no writer.
        store
            .validate(validation(&license.key, 1_000))
            .await
            .unwrap();
        drop(store);
        let seq = count(&path, "SELECT seq FROM licenses");
        let records = 20_000;
        let journal = Journal::open(&path, false).unwrap();
        for at in 0..records {
            journal.append(&valid_usage(seq, 2_000 + at)).unwrap();
        }
        drop(journal);
        let whole = journal_bytes(&path);
        tear_journal(&path);
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let store =
            SqliteStore::open_tuned(&path, Synchronous::Normal, test_tuning(WAL_RESTART_PAGES))
                .expect("opens without the write lock");
        assert_eq!(journal_bytes(&path), whole, "the torn record is cut off");
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 1);
        let answered = store.validate(validation(&license.key, 30_000));
        let answered = tokio::time::timeout(Duration::from_secs(2), answered)
            .await
            .expect("answered while the writer waits for the lock")
            .unwrap();
        assert_eq!(answered.code, Code::Valid);
        // What `serve` asks before it listens does not wait for the copy.
        let asked = tokio::time::timeout(Duration::from_secs(2), store.has_licenses())
            .await
            .expect("answered while the writer waits for the lock")
            .unwrap();
        assert!(asked);
        holder.execute_batch("ROLLBACK").unwrap();
        store.settle_usage().await.unwrap();
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), records + 2);
        assert_eq!(chain_of(&path).len() as i64, records + 2);
    }

    /// Moving appends to a new journal file copies every record of the
    /// old one before the old one goes.
    #[tokio::test]
    async fn moving_the_journal_copies_every_record_of_the_old_file() {
        let (_dir, path, journal, conn) = writer_with_journal(1_000).await;
        let end = journal.len();
        let wal = path.with_extension("db-wal");
        rotate_journal(&conn, &journal, &wal).unwrap();
        assert_eq!((journal.start(), journal.len()), (end, end));
        assert_eq!(journal.switching(), None, "the new file has the name");
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 1_000);
        assert_eq!(ingested_through(&conn).unwrap(), end);
    }

    /// A write that fails while appends move to a new journal file (a full disk) holds
    /// no append: every validation that records usage would wait, on both
    /// tokio workers, for as long as it failed. Here the watermark cannot
    /// go back to 0 (the reset the emptying used to need).
    #[tokio::test]
    async fn a_failing_write_while_moving_the_journal_holds_no_append() {
        let (_dir, path, journal, conn) = writer_with_journal(1_000).await;
        conn.execute_batch(
            "CREATE TRIGGER full_disk BEFORE UPDATE ON usage_journal \
             WHEN NEW.ingested_through = 0 BEGIN SELECT RAISE(FAIL, 'disk full'); END",
        )
        .unwrap();
        let journal = Arc::new(journal);
        let (done, rotated) = std::sync::mpsc::channel();
        let wal = path.with_extension("db-wal");
        let theirs = journal.clone();
        std::thread::spawn(move || {
            let _ = done.send(rotate_journal(&conn, &theirs, &wal).map(|_| conn));
        });
        let seq = count(&path, "SELECT seq FROM licenses");
        let (appended, append) = std::sync::mpsc::channel();
        let theirs = journal.clone();
        std::thread::spawn(move || {
            for at in 1_000..1_010 {
                std::thread::sleep(Duration::from_millis(20));
                let _ = appended.send(theirs.append(&valid_usage(seq, 2_000 + at)).is_ok());
            }
        });
        for n in 0..10 {
            let ok = append.recv_timeout(Duration::from_secs(5));
            assert_eq!(ok, Ok(true), "append {n} held");
        }
        let conn = rotated
            .recv_timeout(Duration::from_secs(5))
            .expect("the emptying ends")
            .unwrap();
        conn.execute_batch("DROP TRIGGER full_disk").unwrap();
        in_transaction(&conn, |c| ingest(c, &journal, None)).unwrap();
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 1_010);
    }

    /// Sends the writer a job that does nothing; the receiver gets whether
    /// its batch committed.
    fn empty_write(jobs: &mpsc::Sender<Job>) -> mpsc::Receiver<bool> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |_| {
            Box::new(move |commit: Result<()>| {
                let _ = tx.send(commit.is_ok());
            })
        });
        jobs.send(job).unwrap();
        rx
    }

    /// The fsync of the log before a switched journal's new file takes its
    /// name runs beside the writer, not on it: it took ~100 ms on a busy
    /// disk, and every write (a seat taken, an admin change) waited that
    /// long. Here the "log" is a FIFO, so the fsync's open blocks until
    /// the test lets it go; it then fails (no fsync of a pipe). A failed
    /// naming is tried again a while later, beside the writer too, until a
    /// try (with a real file there) finishes the switch.
    #[tokio::test]
    async fn writes_go_on_while_the_log_is_synced_for_a_journal_switch() {
        let (dir, path, journal, conn) = writer_with_journal(1_000).await;
        let slow_wal = dir.path().join("slow-wal");
        let made = std::process::Command::new("mkfifo")
            .arg(&slow_wal)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo");
        let journal = Arc::new(journal);
        let (jobs, rx) = mpsc::channel::<Job>();
        let tuning = Tuning {
            rotate_bytes: 1,
            ..test_tuning(WAL_RESTART_PAGES)
        };
        let writer = {
            let (journal, wal) = (journal.clone(), slow_wal.clone());
            let restart = Arc::new(AtomicBool::new(false));
            let queued = Arc::new(AtomicUsize::new(0));
            std::thread::spawn(move || run_writer(conn, rx, queued, restart, journal, wal, tuning))
        };
        let five_s = Duration::from_secs(5);
        assert_eq!(empty_write(&jobs).recv_timeout(five_s), Ok(true));
        let switched = std::time::Instant::now();
        while journal.switching().is_none() && switched.elapsed() < five_s {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(journal.switching().is_some(), "the journal was switched");
        for n in 0..5 {
            let committed = empty_write(&jobs).recv_timeout(five_s);
            assert_eq!(committed, Ok(true), "write {n} waited for the log's fsync");
        }
        assert!(journal.switching().is_some(), "named only after the fsync");
        // Let the open through: its fsync fails (a pipe). The writer tries
        // again a while later, beside it too: writes go on while that
        // try's open blocks in turn.
        let let_through = {
            let fifo = slow_wal.clone();
            move || drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap())
        };
        let_through.clone()();
        let failed = std::time::Instant::now();
        while failed.elapsed() < Duration::from_millis(300) {
            let committed = empty_write(&jobs).recv_timeout(five_s);
            assert_eq!(committed, Ok(true), "a write waited for the second try");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Fail that try too, then put a file there: a third try finishes
        // the switch. The open waits for the try, which comes after a
        // batch: writes go on meanwhile.
        let released = std::thread::spawn(let_through);
        let waiting = std::time::Instant::now();
        while !released.is_finished() && waiting.elapsed() < five_s {
            assert_eq!(empty_write(&jobs).recv_timeout(five_s), Ok(true));
            std::thread::sleep(Duration::from_millis(10));
        }
        released.join().expect("the writer tried again");
        std::thread::sleep(Duration::from_millis(50));
        std::fs::remove_file(&slow_wal).unwrap();
        std::fs::write(&slow_wal, b"").unwrap();
        let failed = std::time::Instant::now();
        while journal.switching().is_some() && failed.elapsed() < five_s {
            assert_eq!(empty_write(&jobs).recv_timeout(five_s), Ok(true));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(journal.switching(), None, "the switch was finished later");
        drop(jobs);
        writer.join().unwrap();
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 1_000);
        let next = journal::next_path(&journal::path_for(&path));
        assert!(!next.exists(), "no file left unnamed");
    }

    /// After appends move to a new file, the old one (its name taken) is
    /// gone and its space given back; new records go to the new file and
    /// are copied once, also across a restart.
    #[tokio::test]
    async fn appends_go_on_in_the_new_journal_file_and_count_once() {
        let (_dir, path, journal, conn) = writer_with_journal(1_000).await;
        let full = journal_bytes(&path);
        let wal = path.with_extension("db-wal");
        rotate_journal(&conn, &journal, &wal).unwrap();
        assert_eq!(journal_bytes(&path), 0, "of {full} bytes");
        let seq = count(&path, "SELECT seq FROM licenses");
        for at in 1_000..1_100 {
            journal.append(&valid_usage(seq, 2_000 + at)).unwrap();
        }
        in_transaction(&conn, |c| ingest(c, &journal, None)).unwrap();
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 1_100);
        for at in 1_100..1_110 {
            journal.append(&valid_usage(seq, 2_000 + at)).unwrap();
        }
        drop((journal, conn));
        let journal = Journal::open(&path, false).unwrap();
        let conn = open_writer(&path, Synchronous::Normal).unwrap();
        recover(&conn, &journal, &path);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 1_110);
        assert_eq!(
            count(&path, "SELECT COUNT(DISTINCT at) FROM usage"),
            1_110,
            "no record copied twice"
        );
    }

    /// A crash between a switch to a new journal file and its rename, the
    /// old file's records not copied yet: the restart copies both files'
    /// records once and gives the new file the name.
    #[tokio::test]
    async fn a_switch_cut_short_by_a_crash_is_copied_and_finished_at_start() {
        let (_dir, path, journal, conn) = writer_with_journal(100).await;
        let seq = count(&path, "SELECT seq FROM licenses");
        let next = journal.next_file().unwrap();
        let retired = journal.lock().switch_to(&journal, next).unwrap();
        journal.retire(retired);
        for at in 100..110 {
            journal.append(&valid_usage(seq, 2_000 + at)).unwrap();
        }
        drop((journal, conn));
        let journal = Journal::open(&path, false).unwrap();
        let conn = open_writer(&path, Synchronous::Normal).unwrap();
        recover(&conn, &journal, &path);
        assert_eq!(count(&path, "SELECT COUNT(DISTINCT at) FROM usage"), 110);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 110);
        assert_eq!(journal.switching(), None);
        assert_eq!(journal_bytes(&path), journal.len() - journal.start());
    }

    /// A journal written before files had a header, with records not yet
    /// copied, is read from offset 0 as before; the first move gives the
    /// next file a header, and the offsets go on.
    #[tokio::test]
    async fn a_journal_from_before_the_header_is_read_and_moved_on_from() {
        let (_dir, path, journal, conn) = writer_with_journal(0).await;
        drop(journal);
        let seq = count(&path, "SELECT seq FROM licenses");
        // Two records as a server from before wrote them: no header.
        let mut legacy = Vec::new();
        for at in [2_000, 2_001] {
            let payload = serde_json::to_vec(&valid_usage(seq, at)).unwrap();
            legacy.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            legacy.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            legacy.extend_from_slice(&payload);
        }
        std::fs::write(journal::path_for(&path), &legacy).unwrap();
        let journal = Journal::open(&path, false).unwrap();
        assert_eq!((journal.start(), journal.len()), (0, legacy.len() as u64));
        recover(&conn, &journal, &path);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 2);
        let wal = path.with_extension("db-wal");
        rotate_journal(&conn, &journal, &wal).unwrap();
        journal.append(&valid_usage(seq, 2_002)).unwrap();
        in_transaction(&conn, |c| ingest(c, &journal, None)).unwrap();
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 3);
        assert_eq!(journal.start(), legacy.len() as u64);
    }

    /// A store whose writer copies the journal only when asked to, with an
    /// activated license and a validation waiting in the journal; returns
    /// the usage rows in the table.
    async fn store_with_usage_in_the_journal() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        SqliteStore,
        License,
        i64,
    ) {
        let tuning = Tuning {
            ingest_every: Duration::from_secs(3600),
            ..test_tuning(WAL_RESTART_PAGES)
        };
        let (dir, path, store, license) = store_with_license(tuning).await;
        // The first validation activates the license (a write); the second
        // goes to the journal.
        for at in [1_000, 1_001] {
            store.validate(validation(&license.key, at)).await.unwrap();
        }
        assert!(journal_bytes(&path) > 0);
        let usage_rows = count(&path, "SELECT COUNT(*) FROM usage");
        (dir, path, store, license, usage_rows)
    }

    /// Registers an endpoint for `license.updated` and updates `license`:
    /// one delivery due now. Returns the endpoint.
    async fn a_delivery_due(store: &SqliteStore, license: &License) -> Webhook {
        let hook = store
            .create_webhook(
                NewWebhook {
                    url: "http://127.0.0.1:9/hook".into(),
                    events: vec![EventType::Updated],
                    enabled: true,
                    secret: "whsec_test".into(),
                },
                Utc::now(),
            )
            .await
            .unwrap();
        let patch = LicensePatch {
            customer_email: Some("a@example.com".into()),
            ..LicensePatch::default()
        };
        store
            .update_license(license.id.clone(), patch, Utc::now())
            .await
            .unwrap();
        hook
    }

    /// The webhook worker asks for due deliveries four times a second. With
    /// none due, asking must not make the writer commit: each commit copies
    /// the usage journal and empties every reader's page cache.
    #[tokio::test]
    async fn asking_for_deliveries_when_none_are_due_writes_nothing() {
        let (_dir, path, store, license, usage_rows) = store_with_usage_in_the_journal().await;
        let lease = chrono::Duration::seconds(40);
        for _ in 0..3 {
            let jobs = store
                .claim_deliveries(Utc::now(), 64, 64, lease)
                .await
                .unwrap();
            assert!(jobs.is_empty());
        }
        assert_eq!(
            count(&path, "SELECT COUNT(*) FROM usage"),
            usage_rows,
            "a poll with nothing due went through the writer"
        );

        // A due delivery is still claimed, once, with the journal copied.
        let hook = a_delivery_due(&store, &license).await;
        let jobs = store
            .claim_deliveries(Utc::now(), 64, 64, lease)
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "{hook:?}");
        assert!(
            jobs[0].data.contains("\"validation_count\":2"),
            "{}",
            jobs[0].data
        );
        assert!(store
            .claim_deliveries(Utc::now(), 64, 64, lease)
            .await
            .unwrap()
            .is_empty());
    }

    /// Due deliveries that cannot be claimed — held behind the license's
    /// earlier event still in flight, to an endpoint at its in-flight cap,
    /// or to a disabled endpoint — are not work either: the read
    /// connection's look used to find them, and every poll went through
    /// the writer for nothing, four times a second.
    #[tokio::test]
    async fn deliveries_that_cannot_be_claimed_make_no_write() {
        let tuning = Tuning {
            ingest_every: Duration::from_secs(3600),
            ..test_tuning(WAL_RESTART_PAGES)
        };
        let (_dir, path, store, license) = store_with_license(tuning).await;
        let lease = chrono::Duration::seconds(40);
        let hook = a_delivery_due(&store, &license).await;
        let claimed = store.claim_deliveries(Utc::now(), 64, 8, lease).await;
        assert_eq!(claimed.unwrap().len(), 1);
        // A second event of the license waits for the first; another
        // license's event waits for the endpoint's one slot.
        let patch = |email: &str| LicensePatch {
            customer_email: Some(email.into()),
            ..LicensePatch::default()
        };
        store
            .update_license(license.id.clone(), patch("b@example.com"), Utc::now())
            .await
            .unwrap();
        let other = store
            .create_license(new_license(0), Utc::now())
            .await
            .unwrap();
        store
            .update_license(other.id.clone(), patch("c@example.com"), Utc::now())
            .await
            .unwrap();
        let journaled = |at| {
            let (store, path) = (&store, &path);
            let key = license.key.clone();
            async move {
                store.validate(validation(&key, at)).await.unwrap();
                count(path, "SELECT COUNT(*) FROM usage")
            }
        };
        // The first validation activates (a write); the next goes to the journal.
        journaled(1_000).await;
        let usage_rows = journaled(1_001).await;
        assert!(journal_bytes(&path) > 0);
        for _ in 0..3 {
            let jobs = store.claim_deliveries(Utc::now(), 64, 1, lease).await;
            assert!(jobs.unwrap().is_empty());
        }
        assert_eq!(
            count(&path, "SELECT COUNT(*) FROM usage"),
            usage_rows,
            "a poll with nothing claimable went through the writer"
        );
        // The other license's event, once the cap allows a second.
        let jobs = store.claim_deliveries(Utc::now(), 64, 8, lease).await;
        assert_eq!(jobs.unwrap().len(), 1);

        // A disabled endpoint's events wait for it, without writes.
        let off = WebhookPatch {
            enabled: Some(false),
            ..WebhookPatch::default()
        };
        store.update_webhook(hook.id.clone(), off).await.unwrap();
        let third = store
            .create_license(new_license(0), Utc::now())
            .await
            .unwrap();
        store
            .update_license(third.id.clone(), patch("d@example.com"), Utc::now())
            .await
            .unwrap();
        let usage_rows = journaled(1_002).await;
        assert!(journal_bytes(&path) > 0);
        for _ in 0..3 {
            let jobs = store.claim_deliveries(Utc::now(), 64, 8, lease).await;
            assert!(jobs.unwrap().is_empty());
        }
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), usage_rows);
    }

    /// A delivery claimed when the server was killed is not waited for
    /// until its lease runs out: one SQLite database has one server (the
    /// journal's lock), so at start-up no lease is anyone's.
    #[tokio::test]
    async fn leases_of_a_killed_server_are_released_at_start_up() {
        let tuning = test_tuning(WAL_RESTART_PAGES);
        let (_dir, path, store, license) = store_with_license(tuning).await;
        a_delivery_due(&store, &license).await;
        let lease = chrono::Duration::hours(1);
        let claimed = store
            .claim_deliveries(Utc::now(), 64, 64, lease)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        // The worker was killed with its delivery in flight.
        drop(store);
        let store = store_tuned(&path, tuning).await;
        let again = store
            .claim_deliveries(Utc::now(), 64, 64, lease)
            .await
            .unwrap();
        assert_eq!(again.len(), 1, "the delivery waits for a dead lease");
        assert_eq!(again[0].delivery, claimed[0].delivery);
    }

    /// A history's totals are counted once: its next page, and a page
    /// after more validations, walk only the rows added since; after
    /// retention deleted rows, all of them again.
    #[tokio::test]
    async fn usage_totals_walk_only_the_rows_added_since() {
        let (_dir, _path, store, license) =
            store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        let on = |domain: &str, at| ValidationInput {
            domain: Some(domain.into()),
            ..validation(&license.key, at)
        };
        for at in 1_001..=1_005 {
            store.validate(on("a.example.com", at)).await.unwrap();
        }
        let page = |before| store.usage(license.id.clone(), PageRequest { before, limit: 2 });
        let first = page(None).await.unwrap();
        assert_eq!((first.totals.validations, first.totals.valid), (5, 5));
        assert_eq!(store.counted.walked(), 5);
        let second = page(first.next_before).await.unwrap();
        assert_eq!(second.records.len(), 2);
        assert_eq!(second.totals.validations, 5);
        assert_eq!(store.counted.walked(), 5, "the next page walked no row");

        for at in [1_006, 1_007] {
            store.validate(on("b.example.com", at)).await.unwrap();
        }
        let third = page(None).await.unwrap();
        assert_eq!(third.totals.validations, 7);
        assert_eq!(third.totals.by_code.get("VALID"), Some(&7));
        let domains: Vec<_> = third.totals.domains.into_iter().collect();
        assert_eq!(
            domains,
            [("a.example.com".into(), 5), ("b.example.com".into(), 2)]
        );
        assert_eq!(store.counted.walked(), 7, "only the two new rows");

        let before = DateTime::from_timestamp(1_003, 0).unwrap();
        assert_eq!(store.prune_usage(before, 100).await.unwrap(), 2);
        let pruned = page(None).await.unwrap();
        assert_eq!(pruned.totals.validations, 5);
        assert_eq!(pruned.totals.domains.get("a.example.com"), Some(&3));
        assert_eq!(store.counted.walked(), 12, "all five left, again");
    }

    /// The totals of a license with more domains than an entry keeps are
    /// counted whole every time (and right).
    #[tokio::test]
    async fn usage_totals_of_many_domains_are_counted_whole_each_time() {
        let (_dir, _path, store, license) =
            store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        let domains = totals::CACHED_DOMAINS as i64 + 1;
        for n in 0..domains {
            let input = ValidationInput {
                domain: Some(format!("d{n}.example.com")),
                ..validation(&license.key, 1_000 + n)
            };
            store.validate(input).await.unwrap();
        }
        let page = PageRequest {
            before: None,
            limit: 1,
        };
        for read in 1..=2 {
            let got = store.usage(license.id.clone(), page).await.unwrap();
            assert_eq!(got.totals.domains.len() as i64, domains);
            assert_eq!(store.counted.walked() as i64, read * domains);
        }
    }

    /// The totals of the licenses read last are kept; reading one more
    /// than that many drops the one read longest ago.
    #[tokio::test]
    async fn usage_totals_of_the_licenses_read_last_are_kept() {
        let (_dir, _path, store, first) = store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        let mut licenses = vec![first];
        for n in 1..=totals::CACHED_LICENSES {
            let license = store.create_license(new_license(n), Utc::now());
            licenses.push(license.await.unwrap());
        }
        for license in &licenses {
            store
                .validate(validation(&license.key, 1_000))
                .await
                .unwrap();
        }
        let page = PageRequest {
            before: None,
            limit: 1,
        };
        let read = |n: usize| store.usage(licenses[n].id.clone(), page);
        for n in 0..licenses.len() {
            read(n).await.unwrap();
        }
        let walked = store.counted.walked();
        assert_eq!(walked as usize, licenses.len());
        read(licenses.len() - 1).await.unwrap();
        read(1).await.unwrap();
        assert_eq!(store.counted.walked(), walked, "both were kept");
        read(0).await.unwrap();
        assert_eq!(store.counted.walked(), walked + 1, "the first was dropped");
    }

    /// Retention deletes the oldest records recorded before the cut-off,
    /// never the newest one, and leaves every count as it was.
    #[tokio::test]
    async fn pruning_usage_keeps_the_counts_and_the_newest_row() {
        let (_dir, path, store, license) = store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        for at in [1_000, 2_000, 3_000] {
            store.validate(validation(&license.key, at)).await.unwrap();
        }
        let before = |at| DateTime::from_timestamp(at, 0).unwrap();
        assert_eq!(store.prune_usage(before(2_500), 100).await.unwrap(), 2);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 1);
        let id = license.id.clone();
        assert_eq!(
            counted(&store.get_license(id.clone()).await.unwrap()),
            (3, Some(3_000))
        );
        // Everything is past the cut-off now, but the newest row stays.
        assert_eq!(store.prune_usage(before(10_000), 100).await.unwrap(), 0);
        store
            .validate(validation(&license.key, 4_000))
            .await
            .unwrap();
        assert_eq!(
            counted(&store.get_license(id.clone()).await.unwrap()),
            (4, Some(4_000))
        );
        let page = store
            .usage(
                id,
                PageRequest {
                    limit: 10,
                    before: None,
                },
            )
            .await
            .unwrap();
        let at: Vec<i64> = page.records.iter().map(|r| r.at.timestamp()).collect();
        assert_eq!(at, [4_000, 3_000]);
        // A step takes at most `limit` records.
        for at in [5_000, 6_000, 7_000] {
            store.validate(validation(&license.key, at)).await.unwrap();
        }
        assert_eq!(store.prune_usage(before(10_000), 2).await.unwrap(), 2);
        assert_eq!(store.prune_usage(before(10_000), 2).await.unwrap(), 2);
        assert_eq!(store.prune_usage(before(10_000), 2).await.unwrap(), 0);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 1);
        assert_eq!(
            counted(&store.get_license(license.id).await.unwrap()),
            (7, Some(7_000))
        );
    }

    /// A write sent while the writer spreads out a long copy of the journal
    /// waits for the copy's rows, not for its pauses.
    #[tokio::test]
    async fn a_write_does_not_wait_for_the_pauses_of_a_copy() {
        let tuning = Tuning {
            pace_pause: Duration::from_millis(100),
            pace_budget: Duration::from_secs(60),
            ..test_tuning(WAL_RESTART_PAGES)
        };
        let (_dir, path, store, license) = store_with_license(tuning).await;
        let seq = count(&path, "SELECT seq FROM licenses");
        // 60 pauses of 100 ms: a copy of 6 s and more if none were skipped.
        let records = 60 * PACE_ROWS as i64;
        for at in 0..records {
            store.journal.append(&valid_usage(seq, at)).unwrap();
        }
        // The writer's next wait (100 ms) ends in that copy.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let sent = std::time::Instant::now();
        store
            .create_license(new_license(1), Utc::now())
            .await
            .unwrap();
        let took = sent.elapsed();
        assert!(
            took < Duration::from_millis(3000),
            "the write took {took:?}"
        );
        let got = store.get_license(license.id).await.unwrap();
        assert_eq!(got.validation_count, records as u64);
    }

    /// Every usage record of license `id`, newest first, read `limit` at a
    /// time by following each page's cursor.
    async fn history(store: &SqliteStore, id: &str, limit: u32) -> Vec<i64> {
        let mut at = Vec::new();
        let mut before = None;
        loop {
            let page = store
                .usage(id.into(), PageRequest { before, limit })
                .await
                .unwrap();
            assert!(page.records.len() <= limit as usize);
            at.extend(page.records.iter().map(|r| r.at.timestamp()));
            match page.next_before {
                Some(next) => before = Some(next),
                None => return at,
            }
        }
    }

    /// Licenses `a` and `b` of a new store, validated in turns (`a` at
    /// 1_001, `b` at 2_001, `a` at 1_002, …), each turn copied in before the
    /// next, so that their usage rows alternate.
    async fn two_licenses_in_turns(
        turns: i64,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        SqliteStore,
        License,
        License,
    ) {
        let (dir, path, store, a) = store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        let b = store
            .create_license(new_license(1), Utc::now())
            .await
            .unwrap();
        for turn in 1..=turns {
            store
                .validate(validation(&a.key, 1_000 + turn))
                .await
                .unwrap();
            store
                .validate(validation(&b.key, 2_000 + turn))
                .await
                .unwrap();
            store.settle_usage().await.unwrap();
        }
        (dir, path, store, a, b)
    }

    /// A license's history is its own rows only, newest first, across pages
    /// of any size; a cursor that is another license's row still gives the
    /// rows below it; retention shortens each history from its oldest end
    /// and leaves the counts as they were.
    #[tokio::test]
    async fn each_license_history_is_its_own_across_pages_and_retention() {
        let (_dir, path, store, a, b) = two_licenses_in_turns(6).await;
        let c = store
            .create_license(new_license(2), Utc::now())
            .await
            .unwrap();
        for limit in [1, 4, 6, 100] {
            assert_eq!(
                history(&store, &a.id, limit).await,
                [1_006, 1_005, 1_004, 1_003, 1_002, 1_001]
            );
            assert_eq!(
                history(&store, &b.id, limit).await,
                [2_006, 2_005, 2_004, 2_003, 2_002, 2_001]
            );
        }
        assert!(history(&store, &c.id, 10).await.is_empty());
        let totals = store
            .usage(
                a.id.clone(),
                PageRequest {
                    before: None,
                    limit: 1,
                },
            )
            .await
            .unwrap()
            .totals;
        assert_eq!(totals.validations, 6);

        let of_b = count(&path, "SELECT seq FROM usage WHERE at = 2_004");
        let below = store
            .usage(
                a.id.clone(),
                PageRequest {
                    before: Some(of_b),
                    limit: 10,
                },
            )
            .await
            .unwrap();
        let at: Vec<i64> = below.records.iter().map(|r| r.at.timestamp()).collect();
        assert_eq!(at, [1_004, 1_003, 1_002, 1_001]);

        // In seq order: a 1_001, b 2_001, a 1_002, b 2_002, a 1_003, b 2_003:
        // the leading run before 2_003 is five rows.
        let cut = DateTime::from_timestamp(2_003, 0).unwrap();
        assert_eq!(store.prune_usage(cut, 100).await.unwrap(), 5);
        assert_eq!(history(&store, &a.id, 2).await, [1_006, 1_005, 1_004]);
        assert_eq!(
            history(&store, &b.id, 2).await,
            [2_006, 2_005, 2_004, 2_003]
        );
        assert_eq!(
            counted(&store.get_license(a.id.clone()).await.unwrap()),
            (6, Some(1_006))
        );
        // New rows go on the shortened chains.
        store.validate(validation(&a.key, 1_007)).await.unwrap();
        assert_eq!(
            history(&store, &a.id, 3).await,
            [1_007, 1_006, 1_005, 1_004]
        );
    }

    /// A database of the schema before usage chains (rows indexed by
    /// license, counters folded up to a watermark) keeps every count, last
    /// time and history through the migration, and goes on from there.
    /// The version (1-based) that brought the usage chains.
    fn chains_migration() -> usize {
        1 + MIGRATIONS
            .iter()
            .position(|m| m.contains("ADD COLUMN prev_seq"))
            .expect("the chains' migration")
    }

    #[tokio::test]
    async fn usage_of_a_database_from_before_the_chains_survives_the_migration() {
        let (_dir, path, store, a, b) = two_licenses_in_turns(3).await;
        drop(store);
        // Back to the schema before: an index instead of the chains, and
        // the counters folded up to the third row (a 1_001, b 2_001, a 1_002).
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "CREATE INDEX usage_by_license ON usage(license_seq, seq);
             ALTER TABLE usage DROP COLUMN prev_seq;
             ALTER TABLE license_counters DROP COLUMN last_seq;
             CREATE TABLE usage_folded (one INTEGER PRIMARY KEY CHECK (one = 1), through_seq INTEGER NOT NULL);
             INSERT INTO usage_folded VALUES (1, (SELECT seq FROM usage WHERE at = 1_002));
             DELETE FROM license_counters;
             INSERT INTO license_counters
                 SELECT license_seq, COUNT(*), MAX(at) FROM usage
                 WHERE seq <= (SELECT through_seq FROM usage_folded) GROUP BY license_seq;
             PRAGMA user_version = {};",
            chains_migration() - 1
        ))
        .unwrap();
        drop(conn);

        let store = store_tuned(&path, test_tuning(WAL_RESTART_PAGES)).await;
        for (license, first) in [(&a, 1_000), (&b, 2_000)] {
            let got = store.get_license(license.id.clone()).await.unwrap();
            assert_eq!(counted(&got), (3, Some(first + 3)));
            assert_eq!(
                history(&store, &license.id, 2).await,
                [first + 3, first + 2, first + 1]
            );
        }
        let gone =
            "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('usage_by_license', 'usage_folded')";
        assert_eq!(count(&path, gone), 0);
        store.validate(validation(&b.key, 2_004)).await.unwrap();
        assert_eq!(
            history(&store, &b.id, 10).await,
            [2_004, 2_003, 2_002, 2_001]
        );
        assert_eq!(
            counted(&store.get_license(b.id.clone()).await.unwrap()),
            (4, Some(2_004))
        );
    }

    /// Same for the expiry sweep (every 15 s): nothing due, nothing written;
    /// a license past its date is still expired.
    #[tokio::test]
    async fn a_sweep_with_nothing_due_writes_nothing() {
        let (_dir, path, store, _license, usage_rows) = store_with_usage_in_the_journal().await;
        assert_eq!(store.expire_due(Utc::now()).await.unwrap(), 0);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), usage_rows);

        let past = Utc::now() - chrono::Duration::seconds(5);
        let due = store
            .create_license(
                NewLicense {
                    expires_at: Some(Some(past)),
                    ..new_license(1)
                },
                past - chrono::Duration::seconds(5),
            )
            .await
            .unwrap();
        assert_eq!(store.expire_due(Utc::now()).await.unwrap(), 1);
        let expired = store.get_license(due.id).await.unwrap();
        assert_eq!(expired.status, Status::Expired);
    }

    /// A validation that takes a seat (or activates the license) commits
    /// its usage row with the seat, in the writer's transaction: a crash
    /// right after that commit cannot leave a seat with no usage row. Only
    /// validations that write nothing else go through the journal.
    #[tokio::test]
    async fn a_validation_that_takes_a_seat_commits_its_usage_row_with_it() {
        let tuning = Tuning {
            ingest_every: Duration::from_secs(3600),
            ..test_tuning(WAL_RESTART_PAGES)
        };
        let (_dir, path, store, license) = store_with_license(tuning).await;
        let on = |domain: &str, at| ValidationInput {
            domain: Some(domain.into()),
            ..validation(&license.key, at)
        };
        // Activates the license and takes a seat.
        store.validate(on("a.example.com", 1_001)).await.unwrap();
        // Takes a second seat.
        store.validate(on("b.example.com", 1_002)).await.unwrap();
        assert_eq!(count(&path, "SELECT COUNT(*) FROM license_domains"), 2);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 2);
        assert_eq!(journal_bytes(&path), 0, "nothing went through the journal");
        // The seat is held now: nothing to write but the usage row.
        store.validate(on("a.example.com", 1_003)).await.unwrap();
        assert!(journal_bytes(&path) > 0);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 2);
        let activated = store.get_license(license.id.clone()).await.unwrap();
        assert_eq!(counted(&activated), (3, Some(1_003)));
    }

    /// Only writes copy the journal.
    fn copying_at_writes_only() -> Tuning {
        Tuning {
            ingest_every: Duration::from_secs(3600),
            ..test_tuning(WAL_RESTART_PAGES)
        }
    }

    /// A batch that only copies the journal runs without SQLite's foreign-key
    /// checks; a batch with writes has them.
    #[tokio::test]
    async fn only_a_copy_without_writes_skips_the_foreign_key_checks() {
        // The writer copies the journal every few milliseconds on its own.
        let (_dir, path, store, license) = store_with_license(test_tuning(WAL_RESTART_PAGES)).await;
        // Each usage row notes whether the checks were on when it went in.
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE checked (at INTEGER, on_ INTEGER); \
                 CREATE TRIGGER note_checks AFTER INSERT ON usage BEGIN \
                   INSERT INTO checked SELECT NEW.at, foreign_keys FROM pragma_foreign_keys; \
                 END;",
            )
            .unwrap();
        let checked = || {
            let conn = Connection::open(&path).unwrap();
            let mut rows = conn
                .prepare("SELECT at, on_ FROM checked ORDER BY at")
                .unwrap();
            rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<rusqlite::Result<Vec<(i64, bool)>>>()
                .unwrap()
        };

        // The activation commits its row in a write batch; the next
        // validation's row waits in the journal for the writer's copy.
        for at in [1, 2] {
            store.validate(validation(&license.key, at)).await.unwrap();
        }
        let started = std::time::Instant::now();
        while checked().len() < 2 {
            assert!(started.elapsed() < Duration::from_secs(10), "not copied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(checked(), [(1, true), (2, false)]);

        // The next write is checked again.
        let insert = |license_seq: i64, at: i64| {
            store.write(move |conn| {
                conn.execute(
                    "INSERT INTO usage (license_seq, at, code) VALUES (?1, ?2, 'VALID')",
                    [license_seq, at],
                )?;
                Ok(())
            })
        };
        let seq = count(&path, "SELECT seq FROM licenses");
        insert(seq, 3).await.unwrap();
        assert_eq!(checked()[2], (3, true));
        let orphan = insert(seq + 1_000, 4).await;
        assert!(orphan.is_err(), "{orphan:?}");
    }

    /// Every license validated since the last copy gets its own count and
    /// last time, whether its counters row is new or already there.
    #[tokio::test]
    async fn a_copy_counts_each_license_of_the_journal() {
        let tuning = copying_at_writes_only();
        let (_dir, path, store, first) = store_with_license(tuning).await;
        let mut keys = vec![first.key];
        for n in 1..3 {
            keys.push(
                store
                    .create_license(new_license(n), Utc::now())
                    .await
                    .unwrap()
                    .key,
            );
        }
        let counters = || {
            let conn = Connection::open(&path).unwrap();
            let mut rows = conn
                .prepare(
                    "SELECT validations, last_validated_at FROM license_counters \
                     ORDER BY license_seq",
                )
                .unwrap();
            rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<rusqlite::Result<Vec<(i64, i64)>>>()
                .unwrap()
        };
        let write = || store.create_license(new_license(9), Utc::now());

        // License i is validated i + 1 times, at 100 i + 1, 100 i + 2, …
        for (i, key) in keys.iter().enumerate() {
            for n in 0..=i as i64 {
                store
                    .validate(validation(key, 100 * i as i64 + 1 + n))
                    .await
                    .unwrap();
            }
        }
        write().await.unwrap();
        write().await.unwrap();
        assert_eq!(counters(), [(1, 1), (2, 102), (3, 203)]);

        // Counters that exist are added to.
        for (key, at) in [(&keys[0], 1_001), (&keys[0], 1_002), (&keys[2], 1_003)] {
            store.validate(validation(key, at)).await.unwrap();
        }
        write().await.unwrap();
        assert_eq!(counters(), [(3, 1_002), (2, 102), (4, 1_003)]);
    }

    /// A validation's usage row waits in the journal until the writer's
    /// next batch copies it into `usage` and counts it.
    /// Before and after each step, after a restart and after a crash that
    /// left records (and half of one) in the journal, a license shows every
    /// validation and the latest time, each counted once.
    #[tokio::test]
    async fn validation_counters_are_exact_across_the_journal_copies_and_restarts() {
        let tuning = copying_at_writes_only();
        let (_dir, path, store, license) = store_with_license(tuning).await;
        for at in 1..=3 {
            store
                .validate(validation(&license.key, 1_000 + at))
                .await
                .unwrap();
        }
        // The first, activating, validation committed its row; the other
        // two are in the journal.
        assert!(journal_bytes(&path) > 0);
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 1);
        assert_eq!(
            counters_row(&path),
            Some((1, Some(1_001))),
            "the journal not counted yet"
        );
        assert_eq!(
            counted(&store.get_license(license.id.clone()).await.unwrap()),
            (3, Some(1_003))
        );
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 3);
        assert_eq!(counters_row(&path), Some((3, Some(1_003))));

        store
            .validate(validation(&license.key, 1_004))
            .await
            .unwrap();
        let listed = store
            .list_licenses(
                LicenseFilter::default(),
                PageRequest {
                    before: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(counted(&listed.0[0]), (4, Some(1_004)));
        drop(store);

        // A crash left two records and half of a third in the journal.
        let seq = count(&path, "SELECT seq FROM licenses");
        let left = Journal::open(&path, false).unwrap();
        for at in [1_005, 1_006] {
            left.append(&valid_usage(seq, at)).unwrap();
        }
        drop(left);
        let whole = journal_bytes(&path);
        tear_journal(&path);

        let store = store_tuned(&path, tuning).await;
        assert_eq!(journal_bytes(&path), whole, "the torn record is cut off");
        assert_eq!(
            counted(&store.get_license(license.id.clone()).await.unwrap()),
            (6, Some(1_006))
        );
        let usage = store
            .usage(
                license.id.clone(),
                PageRequest {
                    before: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(usage.totals.validations, 6);
        assert_eq!(usage.records[0].at.timestamp(), 1_006);
        drop(store);
        let store = store_tuned(&path, tuning).await;
        assert_eq!(
            counted(&store.get_license(license.id.clone()).await.unwrap()),
            (6, Some(1_006)),
            "no record is copied twice"
        );
    }

    /// A SQLite database belongs to one server: a second store on the same
    /// file is refused with a message that says why, and the first keeps
    /// working.
    #[tokio::test]
    async fn a_second_store_on_the_same_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_plan(&path, WAL_RESTART_PAGES).await;
        let refused = SqliteStore::open(&path).err().expect("refused");
        assert!(refused.to_string().contains("another server"), "{refused}");
        let license = store
            .create_license(new_license(0), Utc::now())
            .await
            .unwrap();
        store
            .validate(validation(&license.key, 1_001))
            .await
            .unwrap();
        drop(store);
        let reopened = SqliteStore::open(&path).unwrap();
        let got = reopened.get_license(license.id).await.unwrap();
        assert_eq!(got.validation_count, 1);
    }

    /// Once all of a large journal has been copied, the writer empties it;
    /// no validation is lost or counted twice on the way, nor after a
    /// restart.
    #[tokio::test]
    async fn the_journal_is_emptied_once_copied() {
        let tuning = Tuning {
            rotate_bytes: 2_000,
            ..test_tuning(WAL_RESTART_PAGES)
        };
        let (_dir, path, store, license) = store_with_license(tuning).await;
        let (mut largest, mut emptied) = (0, false);
        for at in 1..=300 {
            let before = journal_bytes(&path);
            store
                .validate(validation(&license.key, 1_000 + at))
                .await
                .unwrap();
            let bytes = journal_bytes(&path);
            emptied |= bytes < before;
            largest = largest.max(bytes);
            if at % 25 == 0 {
                let got = store.get_license(license.id.clone()).await.unwrap();
                assert_eq!(counted(&got), (at as u64, Some(1_000 + at)));
            }
        }
        // Never emptied, it would reach ~37,000 bytes (300 records). How
        // often it is emptied during the loop depends on how fast the
        // writer runs beside it (a loaded machine once let it reach 25,200
        // bytes); that it is emptied, once it holds more than the rotation
        // size, does not.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !emptied && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            emptied = journal_bytes(&path) < largest;
        }
        assert!(emptied, "the journal grew to {largest} bytes and stayed");
        assert!(largest < 37_000, "the journal grew to {largest} bytes");
        assert_eq!(count(&path, "SELECT COUNT(*) FROM usage"), 300);
        drop(store);
        let store = store_tuned(&path, tuning).await;
        let got = store.get_license(license.id.clone()).await.unwrap();
        assert_eq!(counted(&got), (300, Some(1_300)));
    }

    /// A database from before the counters left the license row keeps
    /// every count through the migration.
    #[tokio::test]
    async fn the_counters_migration_keeps_the_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        database_at_version(
            &path,
            2,
            "INSERT INTO plans VALUES ('p', '[]', NULL, NULL, NULL, 7);
                 INSERT INTO licenses (id, key, status, plan, customer_email, metadata, created_at,
                     updated_at, last_validated_at, validation_count)
                 VALUES ('lic_A', 'KS-A', 'active', 'p', 'a@example.com', '{}', 1, 1, 1500, 7),
                        ('lic_B', 'KS-B', 'active', 'p', 'b@example.com', '{}', 1, 1, NULL, 0);
                 INSERT INTO usage (license_seq, at, code) VALUES (1, 1500, 'VALID');",
        );
        let store = store_with_plan(&path, WAL_RESTART_PAGES).await;
        let a = store.get_license("lic_A".into()).await.unwrap();
        let b = store.get_license("lic_B".into()).await.unwrap();
        assert_eq!(
            (a.validation_count, a.last_validated_at),
            (7, Some(from_unix(1500)))
        );
        assert_eq!((b.validation_count, b.last_validated_at), (0, None));
        store.validate(validation("KS-A", 1_600)).await.unwrap();
        let a = store.get_license("lic_A".into()).await.unwrap();
        assert_eq!(
            (a.validation_count, a.last_validated_at),
            (8, Some(from_unix(1600)))
        );
    }

    /// Under steady writes the log starts over once it passes its limit,
    /// instead of growing for as long as the writes go on.
    ///
    /// Counted by the restarts themselves (the log header's checkpoint
    /// sequence number goes up by one at each), not by the log's largest
    /// size: that is the writes of one checkpoint period and depends on how
    /// fast this machine writes (a bound of 24 MB failed every run on a VM
    /// that wrote 4,000 licenses in 0.3 s, 28 MB of log before the first
    /// checkpoint at 100 ms). Without restarts the number stays 0 and the
    /// log reaches ~60 MB here; with them, ~20 restarts and ~3 MB.
    #[tokio::test]
    async fn the_wal_starts_over_under_steady_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let tuning = Tuning {
            checkpoint_every: Duration::from_millis(10),
            ..test_tuning(64)
        };
        let store = Arc::new(store_tuned(&path, tuning).await);
        const LICENSES: usize = 4_000;
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut writers = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (store, written) = (store.clone(), written.clone());
            writers.spawn(async move {
                loop {
                    let n = written.fetch_add(1, Ordering::Relaxed);
                    if n >= LICENSES {
                        break;
                    }
                    store
                        .create_license(new_license(n), Utc::now())
                        .await
                        .unwrap();
                }
            });
        }
        let mut largest = 0;
        while !writers.is_empty() {
            largest = largest.max(wal_bytes(&path));
            tokio::select! {
                done = writers.join_next() => done.unwrap().unwrap(),
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        let restarts = wal_restarts(&path);
        assert!(
            restarts >= 2,
            "the WAL started over {restarts} times for {LICENSES} licenses \
             and grew to {largest} bytes"
        );
        let conn = Connection::open(&path).unwrap();
        let count: i64 = conn
            .query_row("SELECT COUNT(*) FROM licenses", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, LICENSES as i64);
    }
}
