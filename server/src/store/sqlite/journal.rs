//! The usage journal: an append-only file beside the database
//! (`<database>-usage`) that holds the usage rows of validations the writer
//! has not taken in yet.
//!
//! Most validations change nothing but the history: the key's seats are
//! already held and the license is already activated. Such a validation is
//! decided on a read connection and its usage row is appended here, with one
//! `write(2)` by the request's own thread, before its answer leaves: in the
//! OS's page cache it survives `kill -9` (SPEC §3), as a WAL commit with
//! `synchronous = NORMAL` does. The writer copies the new records into the
//! `usage` table at each batch and at least every `ingest_every`, in the
//! transaction that moves the watermark (`usage_journal.ingested_through`),
//! so a record lands in the table exactly once, whatever crashes when.
//!
//! A record is `[len: u32 LE][crc32 of the payload: u32 LE][payload: JSON]`.
//! Appends are serialised by a mutex that also keeps the length of the
//! complete records; the writer reads only that far, so it never sees a
//! record being written. A record torn by a crash can only be the last one
//! (its answer never left): opening the journal cuts it off.
//!
//! With `--sqlite-synchronous full` an append also waits for an fsync that
//! covers it. The fsyncs are grouped: a syncer thread fsyncs whatever has
//! been written since its last fsync, so appends that arrive while one runs
//! share the next, and the requests wait for it as tasks (a `watch`), not
//! as threads (group commit).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// One usage row, as the `usage` table holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub license_seq: i64,
    pub at: i64,
    pub code: String,
    pub domain: Option<String>,
    pub fingerprint: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub country: Option<String>,
}

const HEADER: usize = 8;
/// No record comes near this; a larger length is damage, not a record.
const MAX_RECORD: usize = 64 * 1024;

pub struct Journal {
    /// The writer's handle for reading (`pread`: no lock needed) and for
    /// freeing copied blocks (`free_through`); it never writes.
    reader: File,
    appender: Mutex<Appender>,
    /// Bytes of complete records (the appender's `len`, readable without
    /// its lock).
    complete: AtomicU64,
    /// `--sqlite-synchronous full`: the syncer appends wait for.
    syncer: Option<Syncer>,
}

/// The syncer thread and what appends share with it.
struct Syncer {
    shared: Arc<SyncShared>,
    synced: tokio::sync::watch::Receiver<Synced>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct SyncShared {
    /// Bytes ever appended (`Appender::total`).
    appended: AtomicU64,
    /// Whether the journal is closing; the syncer waits on `wake`.
    stop: Mutex<bool>,
    wake: Condvar,
    /// Held while an fsync runs (a test holds it to queue appends).
    running: Mutex<()>,
    /// fsyncs run (grouping makes it fewer than the appends).
    fsyncs: AtomicU64,
}

/// What the syncer has made durable, as appends watch it.
#[derive(Debug, Clone, Default)]
struct Synced {
    /// Bytes ever appended that an fsync has covered.
    through: u64,
    /// Bytes ever appended that a failed fsync was to cover, and its error.
    failed_through: u64,
    error: String,
}

pub struct Appender {
    file: File,
    len: u64,
    /// Bytes ever appended: unlike `len`, never goes back when the journal
    /// is emptied, so it orders appends for the fsyncs.
    total: u64,
    buf: Vec<u8>,
}

/// The journal's path for the database at `db`.
pub fn path_for(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-usage");
    PathBuf::from(name)
}

impl Journal {
    /// Opens (creating) the journal of the database at `db` and locks it,
    /// so that a second server on the same database fails to start instead
    /// of mixing two journals.
    pub fn open(db: &Path, sync: bool) -> std::io::Result<Journal> {
        let path = path_for(db);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        if let Err(e) = file.try_lock() {
            return Err(std::io::Error::other(format!(
                "{} is locked: is another server running on this database? ({e})",
                path.display()
            )));
        }
        let len = file.metadata()?.len();
        let syncer = if sync {
            Some(Syncer::start(file.try_clone()?)?)
        } else {
            None
        };
        Ok(Journal {
            // Writable only so that `free_through` may punch holes in it.
            reader: OpenOptions::new().read(true).write(true).open(&path)?,
            appender: Mutex::new(Appender {
                file,
                len,
                total: 0,
                buf: Vec::with_capacity(512),
            }),
            complete: AtomicU64::new(len),
            syncer,
        })
    }

    /// Bytes of complete records.
    pub fn len(&self) -> u64 {
        self.complete.load(Ordering::Acquire)
    }

    /// Appends `entry`; when this returns `Ok`, the record survives `kill -9`.
    /// With `sync`, it survives a power cut once `synced` with the returned
    /// position has returned `Ok`. A failed write leaves no partial record
    /// behind. (When the fsync fails, the record stays and will be counted,
    /// though its validation was answered with an error.)
    pub fn append(&self, entry: &Entry) -> std::io::Result<u64> {
        let end = {
            let mut a = self.lock();
            let Appender {
                file,
                len,
                total,
                buf,
            } = &mut *a;
            buf.clear();
            buf.extend_from_slice(&[0; HEADER]);
            serde_json::to_writer(&mut *buf, entry)?;
            let payload = (buf.len() - HEADER) as u32;
            let crc = crc32fast::hash(&buf[HEADER..]);
            buf[..4].copy_from_slice(&payload.to_le_bytes());
            buf[4..HEADER].copy_from_slice(&crc.to_le_bytes());
            if let Err(e) = file.write_all(buf) {
                // Cut off whatever part of the record reached the file, so the
                // next record starts where the writer expects one.
                let _ = file.set_len(*len);
                return Err(e);
            }
            *len += buf.len() as u64;
            *total += buf.len() as u64;
            self.complete.store(*len, Ordering::Release);
            if let Some(syncer) = &self.syncer {
                syncer.shared.appended.store(*total, Ordering::Release);
            }
            *total
        };
        if let Some(syncer) = &self.syncer {
            // Under the syncer's lock, so that it cannot miss the wake-up.
            let _stop = syncer.shared.stop.lock().unwrap_or_else(|p| p.into_inner());
            syncer.shared.wake.notify_one();
        }
        Ok(end)
    }

    /// Returns once an fsync has covered the first `end` bytes ever
    /// appended (at once without `sync`).
    pub async fn synced(&self, end: u64) -> std::io::Result<()> {
        let Some(syncer) = &self.syncer else {
            return Ok(());
        };
        let mut watch = syncer.synced.clone();
        let seen = watch
            .wait_for(|s| s.through >= end || s.failed_through >= end)
            .await
            .map_err(|_| std::io::Error::other("the journal's syncer stopped"))?;
        if seen.through >= end {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "fsync of the usage journal: {}",
                seen.error
            )))
        }
    }

    /// Gives the file system back the blocks of the first `end` bytes,
    /// which the writer has copied and committed: the file keeps its length
    /// and every offset, and reads there would see zeros. Emptying the
    /// journal then frees only what came after, with appends held (freeing
    /// 64 MiB of written-back blocks takes ~30 ms on ext4). Returns the
    /// bytes freed (whole 4 KiB blocks), 0 where the file system cannot:
    /// there emptying frees it all.
    pub fn free_through(&self, end: u64) -> u64 {
        const BLOCK: u64 = 4096;
        let end = end / BLOCK * BLOCK;
        if end == 0 {
            return 0;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use rustix::fs::{fallocate, FallocateFlags};
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            match fallocate(&self.reader, flags, 0, end) {
                Ok(()) => end,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot free the usage journal's copied blocks");
                    0
                }
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            0
        }
    }

    /// Holds off every append while the writer empties the journal.
    pub fn lock(&self) -> MutexGuard<'_, Appender> {
        self.appender.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the complete records in `from..to`; returns them and the
    /// offset just past the last one that was whole and intact.
    pub fn read(&self, from: u64, to: u64) -> std::io::Result<(Vec<Entry>, u64)> {
        let mut bytes = vec![0; (to.saturating_sub(from)) as usize];
        self.reader.read_exact_at(&mut bytes, from)?;
        let (entries, used) = parse(&bytes);
        Ok((entries, from + used as u64))
    }
}

impl Syncer {
    fn start(file: File) -> std::io::Result<Syncer> {
        let shared = Arc::new(SyncShared {
            appended: AtomicU64::new(0),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            running: Mutex::new(()),
            fsyncs: AtomicU64::new(0),
        });
        let (tx, rx) = tokio::sync::watch::channel(Synced::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("usage-fsync".into())
            .spawn(move || run_syncer(&file, &theirs, &tx))?;
        Ok(Syncer {
            shared,
            synced: rx,
            thread: Some(thread),
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Fsyncs whatever was appended since the last fsync, until the journal
/// closes (after a last fsync of what is still pending).
fn run_syncer(file: &File, shared: &SyncShared, synced: &tokio::sync::watch::Sender<Synced>) {
    let mut through = 0;
    loop {
        {
            let mut stop = shared.stop.lock().unwrap_or_else(|p| p.into_inner());
            while shared.appended.load(Ordering::Acquire) <= through {
                if *stop {
                    return;
                }
                stop = shared.wake.wait(stop).unwrap_or_else(|p| p.into_inner());
            }
        }
        let _running = shared.running.lock().unwrap_or_else(|p| p.into_inner());
        // Everything written so far: the appends that woke this pass and
        // those that came in since.
        let covered = shared.appended.load(Ordering::Acquire);
        let result = file.sync_data();
        shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        // Past a failure too: its appends were answered with the error.
        through = covered;
        synced.send_modify(|s| match result {
            Ok(()) => s.through = covered,
            Err(e) => {
                s.failed_through = covered;
                s.error = e.to_string();
            }
        });
    }
}

impl Appender {
    /// Cuts the journal to `len` bytes (with the lock held, so no append
    /// runs meanwhile).
    pub fn truncate(&mut self, journal: &Journal, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()?;
        self.len = len;
        journal.complete.store(len, Ordering::Release);
        Ok(())
    }
}

/// Splits `bytes` into records; stops at the first one that is incomplete
/// or damaged and returns how many bytes the good ones took.
fn parse(bytes: &[u8]) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + HEADER].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if len > MAX_RECORD || crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice(payload) else {
            break;
        };
        entries.push(entry);
        at += HEADER + len;
    }
    (entries, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: i64) -> Entry {
        Entry {
            license_seq: n,
            at: 1_700_000_000 + n,
            code: "VALID".into(),
            domain: Some(format!("d{n}.example.com")),
            fingerprint: None,
            ip: Some("127.0.0.1".into()),
            user_agent: None,
            country: None,
        }
    }

    #[test]
    fn records_read_back_and_a_torn_tail_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let journal = Journal::open(&db, false).unwrap();
        for n in 1..=3 {
            journal.append(&entry(n)).unwrap();
        }
        let end = journal.len();
        let (read, used) = journal.read(0, end).unwrap();
        assert_eq!(read, vec![entry(1), entry(2), entry(3)]);
        assert_eq!(used, end);

        // Half a record at the end, as a crash during a write leaves it,
        // then a record whose payload was damaged.
        let mut bytes = std::fs::read(path_for(&db)).unwrap();
        let whole = bytes.clone();
        bytes.truncate(bytes.len() - 5);
        let (read, used) = parse(&bytes);
        assert_eq!(read.len(), 2);
        let second_end = used;
        let mut damaged = whole.clone();
        damaged[second_end + HEADER + 3] ^= 0x20;
        assert_eq!(parse(&damaged).1, second_end);
    }

    #[tokio::test]
    async fn appends_waiting_for_an_fsync_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let journal = Journal::open(&db, true).unwrap();
        let syncer = journal.syncer.as_ref().unwrap();
        let fsyncs = || syncer.shared.fsyncs.load(Ordering::Relaxed);
        let end = journal.append(&entry(0)).unwrap();
        journal.synced(end).await.unwrap();
        assert_eq!(fsyncs(), 1);

        // As if an fsync were running: eight appends are written and wait
        // behind it.
        let running = syncer.shared.running.lock().unwrap();
        let ends: Vec<u64> = (1..=8)
            .map(|n| journal.append(&entry(n)).unwrap())
            .collect();
        drop(running);
        for end in ends {
            journal.synced(end).await.unwrap();
        }
        // One fsync covered all eight: the syncer reads how far to sync once
        // the running one is over.
        assert_eq!(fsyncs(), 2);
        let (read, _) = journal.read(0, journal.len()).unwrap();
        assert_eq!(read.len(), 9);
    }

    #[test]
    fn copied_bytes_are_freed_and_the_rest_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let journal = Journal::open(&db, false).unwrap();
        for n in 0..20_000 {
            journal.append(&entry(n)).unwrap();
        }
        let copied = journal.len();
        for n in 20_000..20_010 {
            journal.append(&entry(n)).unwrap();
        }
        let file = path_for(&db);
        let allocated = || {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&file).unwrap().blocks() * 512
        };
        assert!(allocated() >= copied, "{} < {copied}", allocated());
        assert_eq!(
            journal.free_through(copied),
            copied / 4096 * 4096,
            "this file system punches holes"
        );
        // The length and every offset stay; only the copied blocks are gone.
        assert_eq!(std::fs::metadata(&file).unwrap().len(), journal.len());
        assert!(
            allocated() < 64 * 1024,
            "{} bytes still allocated",
            allocated()
        );
        let (rest, end) = journal.read(copied, journal.len()).unwrap();
        assert_eq!(rest, (20_000..20_010).map(entry).collect::<Vec<_>>());
        assert_eq!(end, journal.len());
        // Appends go on after the hole.
        journal.append(&entry(7)).unwrap();
        let (last, _) = journal.read(end, journal.len()).unwrap();
        assert_eq!(last, vec![entry(7)]);
    }

    #[test]
    fn a_second_open_of_the_same_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let _first = Journal::open(&db, false).unwrap();
        let second = Journal::open(&db, false).err().expect("locked");
        assert!(second.to_string().contains("another server"), "{second}");
    }
}
