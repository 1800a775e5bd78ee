//! The writer thread and its helpers: group commit of queued writes, the
//! copy of the usage journal into `usage` (paced while no write waits), the
//! journal's rotation to a new file, recovery of what a crash left in the
//! journal, and the checkpointer thread that copies the WAL back into the
//! database off the commit path.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keysmith_core::Code;
use rusqlite::{params, Connection, Transaction, TransactionBehavior};

use super::journal::{Entry, Journal};
use super::schema::migrate;
use super::{newest_usage, Completion, Job, Result, StoreError, Synchronous, ValidationInput};

/// The most writes one transaction commits.
const MAX_BATCH: usize = 1024;

/// The writer's page cache, as SQLite takes it (negative: KiB): with the
/// readers' (`READER_CACHE_KIB`), well under the 150 MB memory budget.
const WRITER_CACHE_KIB: i64 = -32 * 1024;

/// Pages of WAL past which the writer finishes a checkpoint itself, between
/// two batches, so that the log starts over (65,536 pages of 4 KiB: 256 MiB).
/// That last copy and its fsync pause the writer (see `run_checkpointer`),
/// so the log is allowed to grow large enough that this happens every few
/// seconds under full load, not constantly.
pub(super) const WAL_RESTART_PAGES: i64 = 65_536;
/// How often the checkpointer copies committed WAL pages into the database.
/// A page written by several commits in that time is copied and written
/// back once, with one fsync: at 1M licenses, 1 s instead of 100 ms gave
/// 4–11% more validations a second, and 5 s instead of 1 s cut the
/// checkpointer's CPU from 3.1–4.5 to 1.1–1.9 µs per validation, with the
/// tails unchanged (A/B runs, docs/performance.md). The writer commits
/// about once a second, so most pages change in every commit.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(5000);
/// Before letting the writer restart the log, the checkpointer repeats its
/// pass until one takes at most this long (or `CATCH_UP_PASSES` ran), so
/// that what the writer is left to copy, while every write waits, is small.
const CAUGHT_UP: Duration = Duration::from_millis(20);
const CATCH_UP_PASSES: usize = 8;
/// How often, at the least, the writer copies the usage journal into the
/// `usage` table (it also does at every batch of writes).
pub(super) const INGEST_EVERY: Duration = Duration::from_millis(1000);
/// A copy of the journal that no write waits for pauses `PACE_PAUSE` after
/// every `PACE_ROWS` rows, `PACE_BUDGET` at most in all (`Pace`).
pub(super) const PACE_ROWS: usize = 64;
pub(super) const PACE_PAUSE: Duration = Duration::from_micros(750);
pub(super) const PACE_BUDGET: Duration = Duration::from_millis(400);
/// Journal bytes past which the writer moves appends to a new file once
/// all of the current one has been copied (about 400,000 validations).
pub(super) const JOURNAL_ROTATE_BYTES: u64 = 64 << 20;
/// How long after a failed naming of a switched journal's new file (its
/// fsync or rename) the writer tries again.
pub(super) const RETRY_NAMING: Duration = Duration::from_secs(10);

/// The checkpoint and journal settings (tests use smaller ones than
/// `open`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Tuning {
    pub(super) restart_pages: i64,
    pub(super) checkpoint_every: Duration,
    pub(super) ingest_every: Duration,
    /// `Pace`'s pause and budget.
    pub(super) pace_pause: Duration,
    pub(super) pace_budget: Duration,
    pub(super) rotate_bytes: u64,
    /// How long after a failed naming of a switched journal's new file
    /// the writer tries again.
    pub(super) retry_naming: Duration,
}

pub(super) fn open_writer(path: &Path, synchronous: Synchronous) -> Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // WAL: a commit is in the log before any answer that depends on it
    // leaves the server; group commit keeps that cheap. Checkpoints are the
    // checkpointer thread's, not the commit's (wal_autocheckpoint = 0). The
    // log file keeps its size when the log starts over (up to 4× the restart
    // size): regrowing it each time makes every fsync flush its new blocks
    // too. Only a clean stop cuts it to nothing (`close_writer`).
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; \
         PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {};",
        synchronous.pragma(),
        WAL_RESTART_PAGES * 4096 * 4,
    ))?;
    // SQLite's 2 MB default misses on most look-ups once the table is large.
    conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Copies committed WAL pages into the database every `checkpoint_every`
/// (PASSIVE: it never blocks the writer or a reader), until `stop` closes.
/// When the log has grown past `restart_pages`, it repeats the pass until it
/// has caught up with the writer, then asks the writer to finish the copy
/// between two batches, which lets the log start over.
///
/// SQLite fsyncs the database file only at the end of a pass that copied
/// the whole log, which under steady writes is only the writer's last one
/// before a restart: that fsync then wrote back every page copied since the
/// previous restart (≈ 300 ms at 1M licenses here, a stall of every
/// request). So after each pass that copied pages, `db` (the database file)
/// is synced here, off the writer, and the writer's fsync finds little left.
pub(super) fn run_checkpointer(
    conn: Connection,
    db: std::fs::File,
    stop: mpsc::Receiver<()>,
    restart: Arc<AtomicBool>,
    tuning: Tuning,
) {
    let mut synced_through = 0;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(tuning.checkpoint_every) {
        for pass in 1..=CATCH_UP_PASSES {
            let Some((log, took)) = checkpoint_pass(&conn, &db, &mut synced_through) else {
                break;
            };
            if log <= tuning.restart_pages {
                break;
            }
            // Caught up, or not catching up at this write rate: then the
            // writer's pause is longer, but the log does not grow for ever.
            if took <= CAUGHT_UP || pass == CATCH_UP_PASSES {
                restart.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// One PASSIVE pass and the fsync of what it copied; returns the pages in
/// the log and how long the pass took, or `None` if it failed.
fn checkpoint_pass(
    conn: &Connection,
    db: &std::fs::File,
    synced_through: &mut i64,
) -> Option<(i64, Duration)> {
    let started = std::time::Instant::now();
    match passive_checkpoint(conn) {
        Ok((log, copied)) => {
            // `copied` counts from the log's start, which moves back to 0
            // when the writer restarts it.
            if copied != *synced_through && copied > 0 {
                if let Err(e) = db.sync_data() {
                    tracing::warn!(error = %e, "syncing the database file failed");
                }
                *synced_through = copied;
            }
            let took = started.elapsed();
            tracing::trace!(log, copied, ms = took.as_millis() as u64, "checkpoint pass");
            Some((log, took))
        }
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
            None
        }
    }
}

/// Runs a PASSIVE checkpoint; returns the pages in the log and how many of
/// them are in the database (-1, -1 when another checkpoint was running).
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

/// How far the journal has been copied into `usage`.
pub(super) fn ingested_through(conn: &Connection) -> Result<u64> {
    let through: i64 = conn
        .prepare_cached("SELECT ingested_through FROM usage_journal")?
        .query_row([], |r| r.get(0))?;
    Ok(through as u64)
}

fn set_ingested_through(conn: &Connection, through: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE usage_journal SET ingested_through = ?1")?
        .execute([through as i64])?;
    Ok(())
}

/// Copies the journal's records past `usage_journal.ingested_through` into
/// `usage` and moves the watermark past them, in the caller's transaction;
/// returns the new watermark. With `pace`, the copy spreads itself out.
pub(super) fn ingest(conn: &Connection, journal: &Journal, pace: Option<&mut Pace>) -> Result<u64> {
    let at = ingested_through(conn)?;
    let end = journal.len();
    if end <= at {
        return Ok(at);
    }
    copy_journal(conn, journal, at, end, pace)?;
    Ok(end)
}

/// Copies the journal's records in `from..to` into `usage` and moves the
/// watermark to `to`, in the caller's transaction.
fn copy_journal(
    conn: &Connection,
    journal: &Journal,
    from: u64,
    to: u64,
    pace: Option<&mut Pace>,
) -> Result<()> {
    let mut copy = UsageCopy::default();
    let good = copy.pieces(conn, journal, from, to, pace)?;
    if good < to {
        // Appends are whole records, and start-up cut off a torn one, so
        // this is damage to the file: skip it rather than stop recording
        // usage.
        tracing::error!(
            from = good,
            to,
            "damaged records in the usage journal were skipped"
        );
    }
    copy.finish(conn, to)
}

/// Journal bytes read and copied at a time (about 5,500 records): the
/// writer's memory for a copy stays a few MB whatever the backlog, where a
/// second of records at 50,000 validations a second is ~8 MB of journal
/// and about twice that parsed, and a backlog after a stop can be far more.
/// Larger than any record (`journal::MAX_RECORD`), so every read gets at
/// least one.
pub(super) const INGEST_PIECE_BYTES: u64 = 1 << 20;

/// A copy of journal records into `usage`, piece by piece, in the caller's
/// transaction.
#[derive(Default)]
pub(super) struct UsageCopy {
    /// Records of licenses this database does not have.
    unknown: usize,
}

impl UsageCopy {
    /// Copies the journal's records in `from..to`, a piece at a time, up to
    /// the first damaged or incomplete one; returns the offset it reached.
    fn pieces(
        &mut self,
        conn: &Connection,
        journal: &Journal,
        from: u64,
        to: u64,
        mut pace: Option<&mut Pace>,
    ) -> Result<u64> {
        let mut at = from;
        while at < to {
            let piece = journal
                .read(at, to, INGEST_PIECE_BYTES)
                .map_err(|e| StoreError::Storage(format!("reading the usage journal: {e}")))?;
            let stuck = piece.next == at;
            self.rows(conn, piece.entries, pace.as_deref_mut())?;
            at = piece.next;
            if piece.damaged || stuck {
                break;
            }
        }
        Ok(at)
    }

    /// Inserts records into `usage` and adds them to their licenses'
    /// counters. With `pace`, it pauses now and then (`Pace`).
    fn rows(
        &mut self,
        conn: &Connection,
        mut entries: Vec<Entry>,
        mut pace: Option<&mut Pace>,
    ) -> Result<()> {
        // In license order (stable: each license's rows keep their order),
        // so that `license_counters` is walked once, from its first page to
        // its last, with each license's rows together.
        entries.sort_by_key(|e| e.license_seq);
        // A license's rows in parts of at most `PACE_ROWS`, so that a pause
        // comes as often for one license with many rows as for many.
        let parts = entries
            .chunk_by(|a, b| a.license_seq == b.license_seq)
            .flat_map(|rows| rows.chunks(PACE_ROWS));
        for rows in parts {
            if let Some(pace) = pace.as_deref_mut() {
                pace.copied(rows.len());
            }
            match append_usage(conn, rows) {
                // Licenses are never deleted, so this is a database restored
                // from a backup beside a newer journal: usage of licenses
                // made after the backup has nowhere to go.
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
                {
                    self.unknown += rows.len()
                }
                done => done?,
            }
        }
        Ok(())
    }

    /// Moves the watermark to `through` once every piece is in.
    fn finish(self, conn: &Connection, through: u64) -> Result<()> {
        if self.unknown > 0 {
            tracing::warn!(
                records = self.unknown,
                "usage journal records of licenses this database does not have were left out \
                 (was the database restored from a backup without its journal?)"
            );
        }
        set_ingested_through(conn, through)?;
        Ok(())
    }
}

/// Deletes at most `limit` of the oldest usage rows, those recorded before
/// `before`: the leading run of them, so that what is left of each
/// license's chain is whole (`append_usage`). Never the newest row: without
/// it SQLite would hand out its seq again, and a chain could point at it.
pub(super) fn prune_usage_in(conn: &Connection, before: DateTime<Utc>, limit: u32) -> Result<u64> {
    let rows: Vec<(i64, i64)> = conn
        .prepare_cached(
            "SELECT seq, at FROM usage WHERE seq < (SELECT MAX(seq) FROM usage) \
             ORDER BY seq LIMIT ?1",
        )?
        .query_map([limit], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let cutoff = before.timestamp();
    let Some(last) = rows.iter().take_while(|(_, at)| *at < cutoff).last() else {
        return Ok(0);
    };
    let deleted = conn
        .prepare_cached("DELETE FROM usage WHERE seq <= ?1 AND at < ?2")?
        .execute(params![last.0, cutoff])?;
    Ok(deleted as u64)
}

/// Appends one license's usage rows (oldest first) to its chain and to its
/// counters.
///
/// A license's rows are found from its counters row: `last_seq` is its
/// newest row and each row's `prev_seq` the one before (`USAGE_CHAIN`).
/// Rows are appended in `seq` order, so a row only ever points down, and
/// retention deletes the oldest rows first, so a pointer to a deleted row
/// ends the chain. An index by license would cost a random page write per
/// row at 1M licenses; the counters row changes anyway.
pub(super) fn append_usage(conn: &Connection, rows: &[Entry]) -> rusqlite::Result<()> {
    let (Some(first), Some(newest)) = (rows.first(), rows.last()) else {
        return Ok(());
    };
    let license = first.license_seq;
    let mut prev = newest_usage(conn, license)?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO usage \
         (license_seq, at, code, domain, fingerprint, ip, user_agent, country, prev_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for e in rows {
        insert.execute(params![
            license,
            e.at,
            e.code,
            e.domain,
            e.fingerprint,
            e.ip,
            e.user_agent,
            e.country,
            prev
        ])?;
        prev = Some(conn.last_insert_rowid());
    }
    conn.prepare_cached(
        "INSERT INTO license_counters (license_seq, validations, last_validated_at, last_seq) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (license_seq) DO UPDATE SET \
           validations = validations + excluded.validations, \
           last_validated_at = excluded.last_validated_at, \
           last_seq = excluded.last_seq",
    )?
    .execute(params![license, rows.len() as i64, newest.at, prev])?;
    Ok(())
}

/// The usage row of a validation of the license `license_seq`.
pub(super) fn usage_entry(v: &ValidationInput, license_seq: i64, code: Code) -> Entry {
    Entry {
        license_seq,
        at: v.now.timestamp(),
        code: code.as_str().to_owned(),
        domain: v.domain.clone(),
        fingerprint: v.fingerprint.clone(),
        ip: v.ip.clone(),
        user_agent: v.user_agent.clone(),
        country: v.country.clone(),
    }
}

/// Runs `f` in a transaction of its own (rolled back if `f` fails).
pub(super) fn in_transaction<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<R>,
) -> Result<R> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let result = f(&tx)?;
    tx.commit()?;
    Ok(result)
}

/// A failed read or write of the usage journal's file, as a store error.
fn journal_error(e: std::io::Error) -> StoreError {
    StoreError::Storage(format!("usage journal: {e}"))
}

/// At start-up, before anything appends: cuts off a record torn by a crash
/// at the end of the journal (its validation was never answered), or
/// whatever follows damage to the file. Only the records' framing is read
/// (`Journal::whole_through`); copying them is left to the writer
/// (`recover_usage`), so that a crash that left a full journal (64 MiB,
/// ~350,000 records: 1.5 s of copying at 1M licenses) does not hold the
/// server back from listening.
pub(super) fn cut_torn_journal(conn: &Connection, journal: &Journal) -> Result<()> {
    let len = journal.len();
    let from = resume_from(journal, ingested_through(conn)?);
    let good = journal.whole_through(from).map_err(journal_error)?;
    if good < len {
        tracing::warn!(
            bytes = len - good,
            "cutting off a record torn by a crash at the end of the usage journal"
        );
        journal
            .lock()
            .truncate(journal, good)
            .map_err(journal_error)?;
    }
    Ok(())
}

/// Where a copy of the journal goes on from after a watermark of
/// `through`: there, unless the watermark does not fit the journal
/// (`recover_usage` says when), and then from its first record.
fn resume_from(journal: &Journal, through: u64) -> u64 {
    let start = journal.start();
    if (start..=journal.len()).contains(&through) {
        through
    } else {
        start
    }
}

/// The writer's first work: copies into `usage` what the journal still
/// holds from before the server started (after a crash), finishes a
/// switch to a new journal file that a crash cut short, and frees webhook
/// deliveries a killed server left claimed (`release_leases`). Returns the
/// watermark. Writes queued meanwhile wait for it; validations that take
/// no seat are answered meanwhile.
///
/// A journal that ends before the watermark was emptied in place after its
/// records had been copied, by a server from before the journal's header
/// (a crash inside its emptying), or was replaced: everything in it is new.
/// One that starts past the watermark lost the records in between (a
/// power cut that kept the switch to a new file but not the commit of the
/// copy before it): they are gone, the rest is copied.
pub(super) fn recover_usage(conn: &Connection, journal: &Journal, wal: &Path) -> Result<u64> {
    let started = std::time::Instant::now();
    let mut copied = 0;
    let through = in_transaction(conn, |c| {
        let watermark = ingested_through(c)?;
        let (start, len) = (journal.start(), journal.len());
        if watermark < start {
            tracing::error!(
                from = watermark,
                to = start,
                "usage journal records were lost; the rest is copied"
            );
        }
        let through = resume_from(journal, watermark);
        copied = len.saturating_sub(through);
        if copied > 0 {
            tracing::info!(
                bytes = copied,
                "copying the usage journal a stopped server left"
            );
        }
        copy_journal(c, journal, through, len, None)?;
        Ok(len)
    })?;
    // A switch cut short by a crash: its old file is copied now.
    finish_switch(journal, wal, through)?;
    release_leases(conn)?;
    let ms = started.elapsed().as_millis() as u64;
    if copied > 0 {
        tracing::info!(bytes = copied, ms, "usage journal copied");
    }
    Ok(through)
}

/// At start-up: frees the deliveries claimed by a server that was killed
/// with them in flight, so they are retried now rather than when their
/// lease runs out (up to the delivery timeout + 30 s). A SQLite database
/// has one server (the journal is locked), so no lease is anyone's now.
fn release_leases(conn: &Connection) -> Result<()> {
    let released = conn.execute(
        "UPDATE deliveries INDEXED BY deliveries_due SET locked_until_ms = 0 \
         WHERE state = 'pending' AND locked_until_ms > 0",
        [],
    )?;
    if released > 0 {
        tracing::info!(
            released,
            "webhook deliveries in flight when the server stopped will be retried"
        );
    }
    Ok(())
}

/// Moves appends to a fresh journal file (the writer, once the current
/// one is large, does it in two steps: `switch_journal`, then
/// `name_beside`; the stop in one): with appends held off for a moment,
/// only the file handles are swapped (`Appender::switch_to`); then the
/// records the old file still holds are copied from it, and the new file
/// takes the journal's name (`finish_switch`). The old file's blocks are
/// freed as its last handle closes. The watermark needs no reset: offsets
/// go on from where the old file ended. Returns the watermark after the
/// copy.
///
/// Every validation that takes no seat appends to the journal on its tokio
/// worker, so the time appends are held is a stall of every request on
/// both workers. Emptying the file in place held them while the last
/// records were copied and committed, the file cut (ext4 freeing its
/// blocks) and the watermark reset: 3–5 ms, 28 ms once when the disk was
/// busy, and for as long as the reset failed (a full disk: the whole
/// server hung). A switch holds them for microseconds.
pub(super) fn rotate_journal(conn: &Connection, journal: &Journal, wal: &Path) -> Result<u64> {
    let through = switch_journal(conn, journal, wal)?;
    finish_switch(journal, wal, through)?;
    Ok(through)
}

/// `rotate_journal` without the last step: the new file does not have the
/// journal's name yet (`finish_switch`, which the writer leaves to a
/// thread of its own, see `name_beside`).
fn switch_journal(conn: &Connection, journal: &Journal, wal: &Path) -> Result<u64> {
    if journal.switching().is_some() {
        // The last switch did not finish (its rename failed): finish it.
        let through = in_transaction(conn, |c| ingest(c, journal, None))?;
        finish_switch(journal, wal, through)?;
    }
    let next = journal.next_file().map_err(journal_error)?;
    let held = std::time::Instant::now();
    let retired = journal
        .lock()
        .switch_to(journal, next)
        .map_err(journal_error)?;
    let held_us = held.elapsed().as_micros() as u64;
    journal.retire(retired);
    let through = in_transaction(conn, |c| ingest(c, journal, None))?;
    tracing::debug!(held_us, "usage journal moved to a new file");
    Ok(through)
}

/// Runs `finish_switch` on a thread of its own, so that the writer goes on
/// committing while the log is fsynced (~100 ms on a busy disk: every
/// seat-taking validation and admin write waited that long on the writer);
/// the thread's result says whether it did. If it fails, or no thread can
/// be started, the switch stays unfinished: the writer tries again
/// (`Tuning::retry_naming`), and the stop finishes it.
fn name_beside(
    journal: Arc<Journal>,
    wal: std::path::PathBuf,
    through: u64,
) -> Option<std::thread::JoinHandle<bool>> {
    let started = std::thread::Builder::new()
        .name("journal-namer".into())
        .spawn(move || match finish_switch(&journal, &wal, through) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "naming the usage journal's new file failed");
                false
            }
        });
    match started {
        Ok(thread) => Some(thread),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a thread to name the usage journal's new file");
            None
        }
    }
}

/// Gives the journal's new file its name, which removes the old file,
/// once the old file's records are copied (the watermark, `through`, is
/// past them). What the old file held should be in the database across a
/// power cut too, as far as `synchronous` promises: the WAL is fsynced
/// first.
fn finish_switch(journal: &Journal, wal: &Path, through: u64) -> Result<()> {
    if journal.switching().is_none() {
        return Ok(());
    }
    std::fs::File::open(wal)
        .and_then(|f| f.sync_data())
        .map_err(journal_error)?;
    journal.name(through).map_err(journal_error)
}

/// How the writer spreads out a copy of the journal that no write waits
/// for: after every `PACE_ROWS` rows it sleeps `pause`, at most `budget` in
/// all, and not at all once a job is queued (a write, or a read settling
/// the journal), so that nothing waits on a pause for longer than one.
///
/// In one go, a second of records at 1M licenses takes a core for ~150 ms,
/// and at 64 connections most of the slowest 1% of requests came from
/// those bursts; spread over a few hundred milliseconds, the copy leaves
/// the tokio workers their cores (docs/performance.md has the A/B runs).
/// Short pauses, often: 256 rows and 3 ms did as well at 64 connections
/// but raised the 4-connection p99 by 70% (a request behind a chunk of
/// the copy waits for all of it). The budget keeps the copy ahead of the
/// journal: at 64 rows per pause it covers ~34,000 rows, and past it the
/// copy runs in one go.
pub(super) struct Pace<'a> {
    queued: &'a AtomicUsize,
    pause: Duration,
    budget: Duration,
    rows: usize,
    slept: Duration,
}

impl Pace<'_> {
    fn new(queued: &AtomicUsize, tuning: Tuning) -> Pace<'_> {
        Pace {
            queued,
            pause: tuning.pace_pause,
            budget: tuning.pace_budget,
            rows: 0,
            slept: Duration::ZERO,
        }
    }

    /// Counts `rows` more rows copied, pausing after every `PACE_ROWS`.
    fn copied(&mut self, rows: usize) {
        self.rows += rows;
        if self.rows < PACE_ROWS {
            return;
        }
        self.rows = 0;
        if self.queued.load(Ordering::Relaxed) == 0 && self.slept + self.pause <= self.budget {
            std::thread::sleep(self.pause);
            self.slept += self.pause;
        }
    }
}

pub(super) fn run_writer(
    conn: Connection,
    jobs: mpsc::Receiver<Job>,
    queued: Arc<AtomicUsize>,
    restart: Arc<AtomicBool>,
    journal: Arc<Journal>,
    wal: std::path::PathBuf,
    tuning: Tuning,
) {
    // One job fewer queued (`SqliteStore::write` counts them in).
    let taken = || {
        let _ = queued.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_sub(1))
        });
    };
    let mut ingested = 0;
    // Whether what the journal held at start-up is copied (`recover_usage`,
    // tried again before each batch until it succeeds): until it is, every
    // copy checks its rows' licenses (a database restored from a backup
    // may lack some) and none is paced.
    let mut recovered = false;
    // The thread naming the last switch's new file (`name_beside`), and
    // when naming one last failed.
    let mut naming: Option<std::thread::JoinHandle<bool>> = None;
    let mut naming_failed: Option<std::time::Instant> = None;
    loop {
        if !recovered {
            match recover_usage(&conn, &journal, &wal) {
                Ok(through) => (ingested, recovered) = (through, true),
                Err(e) => {
                    tracing::error!(error = %e, "copying the usage journal at start-up failed")
                }
            }
        }
        let first = match jobs.recv_timeout(tuning.ingest_every) {
            Ok(job) => {
                taken();
                Some(job)
            }
            Err(mpsc::RecvTimeoutError::Timeout) if journal.len() > ingested => None,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if restart.swap(false, Ordering::Relaxed) {
            // The checkpointer has copied most of the log; copying the rest
            // here, with no write in flight, lets the next batch restart it.
            let started = std::time::Instant::now();
            match passive_checkpoint(&conn) {
                Ok((log, copied)) => {
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::debug!(log, copied, ms, "checkpoint before a WAL restart");
                }
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint in the writer failed"),
            }
        }
        let mut batch: Vec<Job> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => {
                    taken();
                    batch.push(job)
                }
                Err(_) => break,
            }
        }
        // A batch without writes only copies the journal. Its rows were
        // appended after a look-up of their license, and licenses are never
        // deleted, so SQLite's check of each row's foreign key, a look-up
        // of the license (mostly a page read at 1M licenses), cannot fail:
        // skip it. Batches with writes keep it, and so does the copy at
        // start-up, where a database restored from a backup may lack a
        // record's license. Set before every batch: a write batch begins
        // only if no transaction is open, i.e. only if the checks were
        // turned back on.
        // Such a copy is also the one that spreads itself out (`Pace`).
        let mut pace = (batch.is_empty() && recovered).then(|| Pace::new(&queued, tuning));
        let begun = foreign_keys(&conn, !batch.is_empty() || !recovered)
            .and_then(|()| begin_with_usage(&conn, &journal, pace.as_mut()));
        let through = match begun {
            Ok(through) => through,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a write transaction");
                for job in batch {
                    // Answer each job with the failure without running it.
                    drop(job);
                }
                continue;
            }
        };
        let completions: Vec<Completion> = batch.into_iter().map(|job| job(&conn)).collect();
        let commit = conn.execute_batch("COMMIT").map_err(StoreError::from);
        if let Err(e) = &commit {
            tracing::error!(error = %e, "write transaction failed to commit");
            let _ = conn.execute_batch("ROLLBACK");
        }
        for done in completions {
            done(commit.clone());
        }
        if let (Ok(()), Some(through)) = (&commit, through) {
            ingested = through;
            if naming.as_ref().is_some_and(|n| n.is_finished()) {
                let named = naming.take().is_some_and(|n| n.join().unwrap_or(false));
                if !named {
                    naming_failed = Some(std::time::Instant::now());
                }
            }
            if naming.is_some() {
                // The last switch's new file is being named.
            } else if journal.switching().is_some() {
                // Its naming failed: try again, beside the writer, a while
                // after the failure (the old file's records are copied).
                if naming_failed.is_none_or(|at| at.elapsed() >= tuning.retry_naming) {
                    naming = name_beside(journal.clone(), wal.clone(), ingested);
                    naming_failed = naming.is_none().then(std::time::Instant::now);
                }
            } else if ingested.saturating_sub(journal.start()) >= tuning.rotate_bytes {
                match switch_journal(&conn, &journal, &wal) {
                    Ok(through) => {
                        ingested = through;
                        naming = name_beside(journal.clone(), wal.clone(), through);
                        naming_failed = naming.is_none().then(std::time::Instant::now);
                    }
                    Err(e) => tracing::warn!(error = %e, "moving the usage journal failed"),
                }
            }
        }
    }
    if let Some(namer) = naming.take() {
        let _ = namer.join();
    }
    close_writer(&conn, &journal, &wal);
}

/// Turns SQLite's foreign-key checks on or off for the writer's next
/// transaction (outside a transaction: inside one it changes nothing).
pub(super) fn foreign_keys(conn: &Connection, on: bool) -> Result<()> {
    let pragma = if on {
        "PRAGMA foreign_keys = ON"
    } else {
        "PRAGMA foreign_keys = OFF"
    };
    conn.prepare_cached(pragma)?.execute([])?;
    Ok(())
}

/// At a clean stop, with no request left to append: copies what the
/// journal holds into `usage` and empties it, then copies the whole log
/// into the database and cuts it to nothing. `keysmith.db` alone then
/// holds everything (a backup of that one file, taken with the server
/// stopped, is whole), and the next start has no log to read: SQLite
/// checkpoints on close only in the last connection, and the readers close
/// after the writer. A failure here loses nothing; the next start
/// recovers from the log and the journal as after a crash.
fn close_writer(conn: &Connection, journal: &Journal, wal: &Path) {
    if let Err(e) = rotate_journal(conn, journal, wal) {
        tracing::warn!(error = %e, "emptying the usage journal at shutdown failed");
        return;
    }
    let truncated = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    match truncated {
        Ok(0) => tracing::debug!("log copied into the database at shutdown"),
        Ok(_) => tracing::warn!("a reader kept the log from being copied in at shutdown"),
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint at shutdown failed"),
    }
}

/// Begins the writer's transaction with the usage journal copied in (and
/// counted), so that every write sees every usage row answered before it
/// was sent; returns the journal's new watermark.
///
/// The copy runs first in the transaction, not in a savepoint: in a
/// savepoint SQLite first saves each page it is about to change, which
/// doubled what the writer wrote (`strace` under load: more pages to the
/// savepoint's file than to the WAL). If the copy fails, the transaction is
/// rolled back and begun again without it (`None`): the batch's writes go
/// on, and the journal is copied at a later batch.
fn begin_with_usage(
    conn: &Connection,
    journal: &Journal,
    pace: Option<&mut Pace>,
) -> Result<Option<u64>> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    match ingest(conn, journal, pace) {
        Ok(through) => Ok(Some(through)),
        Err(e) => {
            tracing::warn!(error = %e, "copying the usage journal failed");
            conn.prepare_cached("ROLLBACK")?.execute([])?;
            conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            Ok(None)
        }
    }
}

/// Runs `f` inside a savepoint so that one failing write leaves the rest of
/// its batch alone; a panic rolls back too and surfaces as an error.
pub(super) fn in_savepoint<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<R>,
) -> Result<R> {
    // Cached statements: parsing these once per write showed in the profile.
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
        .unwrap_or_else(|_| Err(StoreError::Storage("a write panicked".into())));
    if result.is_err() {
        conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
    }
    conn.prepare_cached("RELEASE job")?.execute([])?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paced copy pauses after every `PACE_ROWS` rows, within its budget,
    /// and not at all while a job is queued.
    #[test]
    fn a_copy_pauses_within_its_budget_and_never_while_a_job_waits() {
        let tuning = Tuning {
            restart_pages: WAL_RESTART_PAGES,
            checkpoint_every: CHECKPOINT_EVERY,
            ingest_every: INGEST_EVERY,
            pace_pause: Duration::from_millis(1),
            pace_budget: Duration::from_millis(3),
            rotate_bytes: JOURNAL_ROTATE_BYTES,
            retry_naming: RETRY_NAMING,
        };
        let queued = AtomicUsize::new(0);
        let mut pace = Pace::new(&queued, tuning);
        pace.copied(PACE_ROWS - 1);
        assert_eq!(pace.slept, Duration::ZERO);
        pace.copied(1);
        assert_eq!(pace.slept, Duration::from_millis(1));
        for _ in 0..10 {
            pace.copied(PACE_ROWS);
        }
        assert_eq!(pace.slept, Duration::from_millis(3), "the budget");
        queued.store(1, Ordering::Relaxed);
        let mut waited_for = Pace::new(&queued, tuning);
        for _ in 0..10 {
            waited_for.copied(PACE_ROWS);
        }
        assert_eq!(waited_for.slept, Duration::ZERO);
    }
}
