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
//! covers it. The fsyncs are grouped: appends that arrive while one runs
//! are written at once and share the next, so concurrent validations pay
//! for one fsync between them instead of one each (group commit).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

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
    /// The writer's handle for reading (`pread`: no lock needed).
    reader: File,
    appender: Mutex<Appender>,
    /// Bytes of complete records (the appender's `len`, readable without
    /// its lock).
    complete: AtomicU64,
    /// `--sqlite-synchronous full`: each append waits for an fsync too.
    sync: bool,
    /// Bytes ever appended (`Appender::total`), readable without its lock.
    appended: AtomicU64,
    /// Of those, how many an fsync has covered. Held while an fsync runs,
    /// which is what groups the appends that wait behind it.
    synced: Mutex<u64>,
    /// fsyncs run for appends (grouping makes it fewer than the appends).
    fsyncs: AtomicU64,
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
        Ok(Journal {
            reader: File::open(&path)?,
            appender: Mutex::new(Appender {
                file,
                len,
                total: 0,
                buf: Vec::with_capacity(512),
            }),
            complete: AtomicU64::new(len),
            sync,
            appended: AtomicU64::new(0),
            synced: Mutex::new(0),
            fsyncs: AtomicU64::new(0),
        })
    }

    /// Whether each append waits for an fsync.
    pub fn syncs(&self) -> bool {
        self.sync
    }

    /// Bytes of complete records.
    pub fn len(&self) -> u64 {
        self.complete.load(Ordering::Acquire)
    }

    /// Appends `entry`; when this returns `Ok`, the record survives `kill -9`
    /// (and a power cut too with `sync`). A failed write leaves no partial
    /// record behind. (When the fsync fails, the record stays and will be
    /// counted, though its validation was answered with an error.)
    pub fn append(&self, entry: &Entry) -> std::io::Result<()> {
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
            self.appended.store(*total, Ordering::Release);
            *total
        };
        if self.sync {
            self.sync_through(end)?;
        }
        Ok(())
    }

    /// Returns once an fsync has covered the first `end` bytes ever
    /// appended. Appends written while another fsync runs wait for it to
    /// end, and then the first of them fsyncs for them all.
    fn sync_through(&self, end: u64) -> std::io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced >= end {
            return Ok(());
        }
        // Everything written so far, this record and those behind it.
        let covered = self.appended.load(Ordering::Acquire);
        self.reader.sync_data()?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        *synced = covered;
        Ok(())
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

    #[test]
    fn appends_waiting_for_an_fsync_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let journal = std::sync::Arc::new(Journal::open(&db, true).unwrap());
        journal.append(&entry(0)).unwrap();
        assert_eq!(journal.fsyncs.load(Ordering::Relaxed), 1);

        // As if an fsync were running: eight appends write their records
        // and wait behind it.
        let running = journal.synced.lock().unwrap();
        let before = journal.len();
        let appends: Vec<_> = (1..=8)
            .map(|n| {
                let journal = journal.clone();
                std::thread::spawn(move || journal.append(&entry(n)))
            })
            .collect();
        while journal.read(before, journal.len()).unwrap().0.len() < 8 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(running);
        for append in appends {
            append.join().unwrap().unwrap();
        }
        // One fsync covered all eight.
        assert_eq!(journal.fsyncs.load(Ordering::Relaxed), 2);
        let (read, _) = journal.read(0, journal.len()).unwrap();
        assert_eq!(read.len(), 9);
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
