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
//! The file starts with a header, `KSUSAGE2` and the offset of its first
//! record (u64 LE), then records `[len: u32 LE][crc32 of the payload: u32
//! LE][payload: JSON]`. Offsets count the records ever appended and never
//! go back: the watermark says how far they have been copied, whichever
//! file holds them. Once a file is large, the writer moves appends to a
//! fresh one (`Appender::switch_to`), copies what the old one still holds,
//! then renames the new one over the old one's name (`Journal::name`),
//! instead of emptying the file in place: appends are held only while the
//! file handles are swapped, with no copy, fsync, rename or watermark
//! reset among them. A crash before the rename leaves the new file under
//! `<journal>.next`, which `open` recognises by its header; the old file
//! is then read too until its records are copied. A file written before
//! the header existed has none: its offsets start at 0.
//!
//! Appends are serialised by a mutex that also keeps the end of the
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

/// Records read by [`Journal::read`].
#[derive(Debug)]
pub struct Piece {
    pub entries: Vec<Entry>,
    /// Where the next read goes on: past the last whole record read, or
    /// the new file's first record once the old one is read.
    pub next: u64,
    /// Whether the read stopped at a damaged record. (A record cut off by
    /// the end of the range is not damage: it is read whole next time.)
    pub damaged: bool,
}

const HEADER: usize = 8;
/// No record comes near this; a larger length is damage, not a record.
const MAX_RECORD: usize = 64 * 1024;
/// The file's header: these 8 bytes, then the offset of its first record.
/// (A record of a file without the header starts with a length far above
/// `MAX_RECORD` only if it is damaged, so the two cannot be confused.)
const MAGIC: &[u8; 8] = b"KSUSAGE2";
const FILE_HEADER: u64 = 16;
/// Bytes read at a time by `Journal::whole_through`; larger than any
/// record, so that every piece but a torn last one holds one.
const SCAN_PIECE: u64 = 1 << 20;

/// Where a file's records sit in the offsets that never go back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// The offset of the file's first record.
    start: u64,
    /// Bytes before it in the file: `FILE_HEADER`, or 0 in a file written
    /// before the header existed.
    header: u64,
}

impl Layout {
    /// The position in the file of the record at `offset`.
    fn position(self, offset: u64) -> u64 {
        offset - self.start + self.header
    }

    /// The offset past the last record `file` (of this layout) holds.
    fn end_of(self, file: &File) -> std::io::Result<u64> {
        Ok(self.start + (file.metadata()?.len() - self.header))
    }
}

pub struct Journal {
    path: PathBuf,
    /// After a switch, until the new file has the journal's name: the old
    /// file.
    unnamed: Mutex<Option<Retired>>,
    /// The writer's handle for reading (`pread`) the current file, with its
    /// layout; it never writes. Locked only by the writer (and by a switch,
    /// which the writer makes).
    reader: Mutex<(File, Layout)>,
    appender: Mutex<Appender>,
    /// The end of the complete records (the appender's `end`, readable
    /// without its lock).
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
    /// The files to fsync.
    files: Mutex<SyncFiles>,
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

struct SyncFiles {
    /// The file appends go to.
    current: Arc<File>,
    /// The file they went to before a switch, until a pass fsyncs it.
    previous: Option<Arc<File>>,
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
    layout: Layout,
    /// The offset past the last complete record.
    end: u64,
    /// Bytes appended since the journal was opened, which order appends
    /// for the fsyncs.
    total: u64,
    buf: Vec<u8>,
}

/// A fresh file that appends can be moved to (`Appender::switch_to`),
/// made before appends are held.
pub struct NextFile {
    file: File,
    reader: File,
    /// The syncer's handle of it.
    synced: Arc<File>,
}

/// `path` with `suffix` added to its file name (as SQLite names its
/// `-wal` and `-shm` files).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The journal's path for the database at `db`.
pub fn path_for(db: &Path) -> PathBuf {
    with_suffix(db, "-usage")
}

/// Where a switch makes the next file before it takes the journal's name.
pub fn next_path(journal: &Path) -> PathBuf {
    with_suffix(journal, ".next")
}

fn file_header(start: u64) -> [u8; FILE_HEADER as usize] {
    let mut header = [0; FILE_HEADER as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&start.to_le_bytes());
    header
}

/// The offset of the first record that `file`'s header gives, if it has
/// a whole one.
fn header_start(file: &File) -> std::io::Result<Option<u64>> {
    let mut header = [0; FILE_HEADER as usize];
    if file.metadata()?.len() < FILE_HEADER {
        return Ok(None);
    }
    file.read_exact_at(&mut header, 0)?;
    Ok((&header[..8] == MAGIC)
        .then(|| u64::from_le_bytes(header[8..].try_into().expect("8 bytes"))))
}

/// Reads the layout of `file`, giving an empty one its header.
fn layout_of(file: &mut File) -> std::io::Result<Layout> {
    if file.metadata()?.len() == 0 {
        file.write_all(&file_header(0))?;
        return Ok(Layout {
            start: 0,
            header: FILE_HEADER,
        });
    }
    Ok(match header_start(file)? {
        Some(start) => Layout {
            start,
            header: FILE_HEADER,
        },
        None => Layout {
            start: 0,
            header: 0,
        },
    })
}

/// Whether the file at `path` exists and starts with a whole header: a
/// switch wrote it, under the append lock.
fn has_header(path: &Path) -> std::io::Result<bool> {
    match File::open(path) {
        Ok(file) => Ok(header_start(&file)?.is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `path`, a next file left by a switch that did not happen (it
/// is never read), if there is one.
fn remove_unused(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Opens `path` for appending (creating it, for this user alone: it holds
/// keys' usage) and locks it for this process.
fn open_locked(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    if let Err(e) = file.try_lock() {
        return Err(std::io::Error::other(format!(
            "{} is locked: is another server running on this database? ({e})",
            path.display()
        )));
    }
    Ok(file)
}

impl Journal {
    /// Opens (creating) the journal of the database at `db` and locks it,
    /// so that a second server on the same database fails to start instead
    /// of mixing two journals.
    pub fn open(db: &Path, sync: bool) -> std::io::Result<Journal> {
        let path = path_for(db);
        let mut old = open_locked(&path)?;
        let next = next_path(&path);
        let (mut file, current, unnamed) = if has_header(&next)? {
            // A switch that stopped before its rename: appends went to the
            // new file. The old one may hold records not copied yet; it
            // keeps its name until they are (`name`).
            let old_layout = layout_of(&mut old)?;
            let retired = Retired {
                end: old_layout.end_of(&old)?,
                _appender: old,
                reader: File::open(&path)?,
                layout: old_layout,
            };
            (open_locked(&next)?, next, Some(retired))
        } else {
            remove_unused(&next)?;
            (old, path.clone(), None)
        };
        let layout = layout_of(&mut file)?;
        let end = layout.end_of(&file)?;
        let syncer = if sync {
            Some(Syncer::start(file.try_clone()?)?)
        } else {
            None
        };
        Ok(Journal {
            reader: Mutex::new((File::open(&current)?, layout)),
            path,
            unnamed: Mutex::new(unnamed),
            appender: Mutex::new(Appender {
                file,
                layout,
                end,
                total: 0,
                buf: Vec::with_capacity(512),
            }),
            complete: AtomicU64::new(end),
            syncer,
        })
    }

    /// The offset past the last complete record.
    pub fn len(&self) -> u64 {
        self.complete.load(Ordering::Acquire)
    }

    /// The offset of the first record still readable: the old file's
    /// while a switch has not given the new one its name, else the
    /// current file's (the records before it were copied).
    pub fn start(&self) -> u64 {
        let unnamed = self.unnamed.lock().unwrap_or_else(|p| p.into_inner());
        match &*unnamed {
            Some(old) => old.layout.start,
            None => {
                self.reader
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .1
                    .start
            }
        }
    }

    /// The offset past the old file's last record while a switch has not
    /// given the new file its name (see `name`).
    pub fn switching(&self) -> Option<u64> {
        let unnamed = self.unnamed.lock().unwrap_or_else(|p| p.into_inner());
        unnamed.as_ref().map(|old| old.end)
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
                layout,
                end,
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
                let _ = file.set_len(layout.position(*end));
                return Err(e);
            }
            *end += buf.len() as u64;
            *total += buf.len() as u64;
            self.complete.store(*end, Ordering::Release);
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

    /// Holds off every append while the writer moves them to a new file
    /// or cuts off a torn record.
    pub fn lock(&self) -> MutexGuard<'_, Appender> {
        self.appender.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the whole records in `from..to`, at most `max` bytes of them
    /// and from one file (the old one first, while a switch has not given
    /// the new one its name), so that a long backlog is copied a piece at a
    /// time, in bounded memory. The caller goes on from [`Piece::next`].
    /// Damage in the old file is logged and skipped here: `next` is then
    /// the new file's first record.
    pub fn read(&self, from: u64, to: u64, max: u64) -> std::io::Result<Piece> {
        let unnamed = self.unnamed.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let (file, layout) = &*current;
        let to = to.min(from.saturating_add(max));
        if from >= layout.start {
            return read_records(file, *layout, from, to);
        }
        let Some(old) = unnamed.as_ref().filter(|old| from >= old.layout.start) else {
            return Err(std::io::Error::other(format!(
                "offset {from} is before the journal's first record ({})",
                layout.start
            )));
        };
        let mut piece = read_records(&old.reader, old.layout, from, to.min(old.end))?;
        // The old file ends with a whole record, so a record cut off at its
        // end is damage (one cut off by `max` is read whole next time).
        let cut_short = piece.next < to.min(old.end) && to >= old.end;
        if piece.damaged || cut_short {
            tracing::error!(
                from = piece.next,
                to = old.end,
                "damaged records in the usage journal's old file were skipped"
            );
            piece.next = old.end;
            piece.damaged = false;
        }
        if piece.next == old.end {
            piece.next = layout.start;
        }
        Ok(piece)
    }

    /// The offset past the last whole record of the file appends go to,
    /// read from `from` (or the file's first record, if later) on: where
    /// a record torn by a crash, or damage, begins. Only the framing and
    /// checksums are read, a piece at a time (`SCAN_PIECE`), not the
    /// records: at start-up this finds where to cut the file in tens of
    /// milliseconds, and the writer copies the records after the server
    /// listens.
    pub fn whole_through(&self, from: u64) -> std::io::Result<u64> {
        let current = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let (file, layout) = &*current;
        let end = self.len();
        let mut at = from.max(layout.start);
        let mut bytes = Vec::new();
        while at < end {
            bytes.resize((end - at).min(SCAN_PIECE) as usize, 0);
            file.read_exact_at(&mut bytes, layout.position(at))?;
            let mut frames = Frames::new(&bytes);
            frames.by_ref().for_each(drop);
            at += frames.at as u64;
            if frames.damaged || frames.at == 0 {
                break;
            }
        }
        Ok(at)
    }

    /// Makes the file that appends will move to (see `Appender::switch_to`),
    /// without holding them.
    pub fn next_file(&self) -> std::io::Result<NextFile> {
        if self.switching().is_some() {
            return Err(std::io::Error::other(
                "the last switch of the usage journal is not finished",
            ));
        }
        let path = next_path(&self.path);
        remove_unused(&path)?;
        let file = open_locked(&path)?;
        let reader = File::open(&path)?;
        let synced = Arc::new(file.try_clone()?);
        Ok(NextFile {
            file,
            reader,
            synced,
        })
    }

    /// Keeps the old file of a switch until `name`.
    pub fn retire(&self, retired: Retired) {
        *self.unnamed.lock().unwrap_or_else(|p| p.into_inner()) = Some(retired);
    }

    /// Gives the file appends were switched to the journal's name (a
    /// rename over the old file's) once the old file's records are copied
    /// (`copied_through` is past its end), then closes the old file: the
    /// file system frees its blocks then, appends going on. If the rename
    /// fails, the old file stays, and so does its name.
    pub fn name(&self, copied_through: u64) -> std::io::Result<()> {
        let mut unnamed = self.unnamed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(old) = unnamed.as_ref() else {
            return Ok(());
        };
        if copied_through < old.end {
            return Err(std::io::Error::other(format!(
                "the usage journal's old file is copied through {copied_through}, not {}",
                old.end
            )));
        }
        std::fs::rename(next_path(&self.path), &self.path)?;
        drop(unnamed.take());
        Ok(())
    }
}

impl Syncer {
    fn start(file: File) -> std::io::Result<Syncer> {
        let shared = Arc::new(SyncShared {
            files: Mutex::new(SyncFiles {
                current: Arc::new(file),
                previous: None,
            }),
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
            .spawn(move || run_syncer(&theirs, &tx))?;
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
fn run_syncer(shared: &SyncShared, synced: &tokio::sync::watch::Sender<Synced>) {
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
        // Taken after `covered`: an append it counts went to one of these.
        let (previous, current) = {
            let mut files = shared.files.lock().unwrap_or_else(|p| p.into_inner());
            (files.previous.take(), files.current.clone())
        };
        let result = previous
            .map_or(Ok(()), |f| f.sync_data())
            .and_then(|()| current.sync_data());
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
    /// Cuts the journal at the offset `end` (with the lock held, so no
    /// append runs meanwhile).
    pub fn truncate(&mut self, journal: &Journal, end: u64) -> std::io::Result<()> {
        self.file.set_len(self.layout.position(end))?;
        self.file.sync_all()?;
        self.end = end;
        journal.complete.store(end, Ordering::Release);
        Ok(())
    }

    /// Moves appends to `next`, whose first record will be at the current
    /// end, and returns the old file, to be kept (`Journal::retire`) until
    /// its records are copied. Only the new file's header is written here:
    /// no copy, no fsync, no rename (a file-system metadata change can
    /// wait tens of ms for the file system's journal), nothing in the
    /// database, so that appends are held for as little as possible and a
    /// full disk cannot hold them.
    pub fn switch_to(&mut self, journal: &Journal, next: NextFile) -> std::io::Result<Retired> {
        let NextFile {
            file: mut next_file,
            reader,
            synced,
        } = next;
        next_file.write_all(&file_header(self.end))?;
        let layout = Layout {
            start: self.end,
            header: FILE_HEADER,
        };
        let old_layout = std::mem::replace(&mut self.layout, layout);
        let appender = std::mem::replace(&mut self.file, next_file);
        let mut current = journal.reader.lock().unwrap_or_else(|p| p.into_inner());
        let (reader, _) = std::mem::replace(&mut *current, (reader, layout));
        drop(current);
        if let Some(syncer) = &journal.syncer {
            // The syncer's next pass fsyncs what the old file still holds
            // unsynced, then the new one (its header with it).
            let mut files = syncer
                .shared
                .files
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let old = std::mem::replace(&mut files.current, synced);
            files.previous = Some(old);
        }
        Ok(Retired {
            _appender: appender,
            reader,
            layout: old_layout,
            end: self.end,
        })
    }
}

/// A file appends have left, kept (and locked, so that no second server
/// takes the journal meanwhile) until its records are copied and the new
/// file has the journal's name.
pub struct Retired {
    _appender: File,
    reader: File,
    layout: Layout,
    /// The offset past its last record: the new file's first.
    end: u64,
}

/// Reads the complete records at the offsets `from..to` of `file`.
fn read_records(file: &File, layout: Layout, from: u64, to: u64) -> std::io::Result<Piece> {
    let mut bytes = vec![0; (to.saturating_sub(from)) as usize];
    file.read_exact_at(&mut bytes, layout.position(from))?;
    let (entries, used, damaged) = parse(&bytes);
    Ok(Piece {
        entries,
        next: from + used as u64,
        damaged,
    })
}

/// The payloads of the records in `bytes`, up to the first one that is
/// damaged or runs past the end of `bytes`.
struct Frames<'a> {
    bytes: &'a [u8],
    /// Past the last record returned.
    at: usize,
    /// Whether it stopped at damage.
    damaged: bool,
}

impl<'a> Frames<'a> {
    fn new(bytes: &'a [u8]) -> Frames<'a> {
        Frames {
            bytes,
            at: 0,
            damaged: false,
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (bytes, at) = (self.bytes, self.at);
        if self.damaged || bytes.len() - at < HEADER {
            return None;
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + HEADER].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            self.damaged = true;
            return None;
        }
        let payload = bytes.get(at + HEADER..at + HEADER + len)?;
        if crc32fast::hash(payload) != crc {
            self.damaged = true;
            return None;
        }
        self.at = at + HEADER + len;
        Some(payload)
    }
}

/// Splits `bytes` into records; stops at the first one that is damaged or
/// runs past the end of `bytes`. Returns the records, how many bytes they
/// took, and whether it stopped at damage.
fn parse(bytes: &[u8]) -> (Vec<Entry>, usize, bool) {
    let mut frames = Frames::new(bytes);
    let mut entries = Vec::new();
    let mut used = 0;
    while let Some(payload) = frames.next() {
        let Ok(entry) = serde_json::from_slice(payload) else {
            return (entries, used, true);
        };
        entries.push(entry);
        used = frames.at;
    }
    (entries, used, frames.damaged)
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

    /// Reads `from..to` as the writer does, piece by piece of at most
    /// `MAX_PIECE` bytes; returns the records and where reading stopped.
    fn read_all(journal: &Journal, from: u64, to: u64) -> (Vec<Entry>, u64) {
        read_in_pieces(journal, from, to, MAX_PIECE)
    }

    const MAX_PIECE: u64 = 1 << 20;

    fn read_in_pieces(journal: &Journal, from: u64, to: u64, max: u64) -> (Vec<Entry>, u64) {
        let mut entries = Vec::new();
        let mut at = from;
        while at < to {
            let mut piece = journal.read(at, to, max).unwrap();
            assert!(!piece.damaged);
            if piece.next == at {
                break;
            }
            at = piece.next;
            entries.append(&mut piece.entries);
        }
        (entries, at)
    }

    /// `whole_through` finds where the whole records end, across pieces
    /// of its scan: at a torn last record, at a damaged one in the middle
    /// (whatever follows it), or at the end; from an offset past the
    /// start, it reads from there.
    #[test]
    fn whole_records_end_at_a_torn_or_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let journal = Journal::open(&db, false).unwrap();
        let mut ends = vec![journal.len()];
        // Several scan pieces' worth of records.
        for n in 0..20_000 {
            journal.append(&entry(n)).unwrap();
            ends.push(journal.len());
        }
        let end = journal.len();
        assert!(end - ends[0] > 2 * SCAN_PIECE);
        assert_eq!(journal.whole_through(0).unwrap(), end);
        assert_eq!(journal.whole_through(ends[17_000]).unwrap(), end);
        drop(journal);

        let path = path_for(&db);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[90, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(file);
        let journal = Journal::open(&db, false).unwrap();
        assert_eq!(journal.whole_through(0).unwrap(), end, "torn at the end");
        drop(journal);

        // One byte of a payload in the middle changed: its checksum fails.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let damaged = ends[12_345];
        file.write_all_at(b"#", FILE_HEADER + damaged + HEADER as u64 + 2)
            .unwrap();
        drop(file);
        let journal = Journal::open(&db, false).unwrap();
        assert_eq!(journal.whole_through(0).unwrap(), damaged);
    }

    /// A piece ends where its bytes do, even inside a record: that record
    /// is read whole by the next piece, and the pieces together are the
    /// records, in order, with nothing taken for damage. No piece reads
    /// more than its size.
    #[test]
    fn pieces_end_inside_records_and_read_them_next_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let journal = Journal::open(&db, false).unwrap();
        for n in 0..40 {
            journal.append(&entry(n)).unwrap();
        }
        let end = journal.len();
        let record = end / 40;
        let max = record * 5 / 2;
        let piece = journal.read(0, end, max).unwrap();
        assert_eq!(piece.entries, vec![entry(0), entry(1)]);
        assert!(!piece.damaged);
        let piece = journal.read(piece.next, end, max).unwrap();
        assert_eq!(piece.entries, vec![entry(2), entry(3)]);
        let (read, used) = read_in_pieces(&journal, 0, end, max);
        assert_eq!(read, (0..40).map(entry).collect::<Vec<_>>());
        assert_eq!(used, end);

        // Across a switch: the old file's pieces, then the new file's.
        switch(&journal);
        for n in 40..80 {
            journal.append(&entry(n)).unwrap();
        }
        let (read, used) = read_in_pieces(&journal, 0, journal.len(), max);
        assert_eq!(read, (0..80).map(entry).collect::<Vec<_>>());
        assert_eq!(used, journal.len());
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
        let (read, used) = read_all(&journal, 0, end);
        assert_eq!(read, vec![entry(1), entry(2), entry(3)]);
        assert_eq!(used, end);

        // Half a record at the end, as a crash during a write leaves it,
        // then a record whose payload was damaged.
        let file = std::fs::read(path_for(&db)).unwrap();
        assert_eq!(file[..FILE_HEADER as usize], file_header(0));
        let mut bytes = file[FILE_HEADER as usize..].to_vec();
        let whole = bytes.clone();
        bytes.truncate(bytes.len() - 5);
        let (read, used, stopped_at_damage) = parse(&bytes);
        assert!(!stopped_at_damage, "a torn record is not damage");
        assert_eq!(read.len(), 2);
        let second_end = used;
        let mut damaged = whole.clone();
        damaged[second_end + HEADER + 3] ^= 0x20;
        assert_eq!(parse(&damaged), (read, second_end, true));
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
        let (read, _) = read_all(&journal, 0, journal.len());
        assert_eq!(read.len(), 9);
    }

    /// Switches `journal` to a new file, as the writer does; returns the
    /// old file's end.
    fn switch(journal: &Journal) -> u64 {
        let end = journal.len();
        let next = journal.next_file().unwrap();
        let retired = journal.lock().switch_to(journal, next).unwrap();
        journal.retire(retired);
        end
    }

    /// A switch moves appends to a new file whose offsets go on from the
    /// old one's end; the old file is read too until it is copied, and
    /// the new file takes the journal's name only then; a reopen finds
    /// where the offsets stand.
    #[test]
    fn a_switch_moves_appends_to_a_new_file_and_the_offsets_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let journal = Journal::open(&db, false).unwrap();
        for n in 0..1_000 {
            journal.append(&entry(n)).unwrap();
        }
        let end = switch(&journal);
        for n in 1_000..1_003 {
            journal.append(&entry(n)).unwrap();
        }
        // Both files, read as one.
        assert_eq!(journal.start(), 0);
        assert_eq!(journal.switching(), Some(end));
        let (read, used) = read_all(&journal, 0, journal.len());
        assert_eq!(read, (0..1_003).map(entry).collect::<Vec<_>>());
        assert_eq!(used, journal.len());
        // Not named before the old file is copied.
        assert!(journal.name(end - 1).is_err());
        journal.name(end).unwrap();
        let file = path_for(&db);
        assert!(!next_path(&file).exists());
        assert_eq!((journal.start(), journal.switching()), (end, None));
        assert!(
            journal.read(0, end, u64::MAX).is_err(),
            "the old records are gone"
        );
        let (read, _) = read_all(&journal, end, journal.len());
        assert_eq!(read, (1_000..1_003).map(entry).collect::<Vec<_>>());
        let len = journal.len();
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            FILE_HEADER + (len - end)
        );
        drop(journal);
        let journal = Journal::open(&db, false).unwrap();
        assert_eq!((journal.start(), journal.len()), (end, len));
    }

    /// With `sync`, the syncer's next pass after a switch fsyncs the old
    /// file's last appends and then the new file.
    #[tokio::test]
    async fn after_a_switch_the_syncer_syncs_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let journal = Journal::open(&db, true).unwrap();
        let end = journal.append(&entry(0)).unwrap();
        journal.synced(end).await.unwrap();
        let copied = switch(&journal);
        let end = journal.append(&entry(1)).unwrap();
        journal.synced(end).await.unwrap();
        journal.name(copied).unwrap();
        let syncer = journal.syncer.as_ref().unwrap();
        let files = syncer.shared.files.lock().unwrap();
        assert!(files.previous.is_none(), "the old file was synced");
        let current = std::fs::metadata(path_for(&db)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(files.current.metadata().unwrap().ino(), current.ino());
    }

    /// A crash after a switch but before the rename: appends went to the
    /// new file, still named `.next`; opening the journal finds it by its
    /// header and reads both files until the old one is copied. A `.next`
    /// with no header was made for a switch that did not happen, and goes.
    #[test]
    fn a_switch_cut_short_before_the_rename_is_finished_after_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("k.db");
        let journal = Journal::open(&db, false).unwrap();
        journal.append(&entry(0)).unwrap();
        let end = switch(&journal);
        journal.append(&entry(1)).unwrap();
        let len = journal.len();
        drop(journal);
        assert!(next_path(&path_for(&db)).exists());
        let journal = Journal::open(&db, false).unwrap();
        assert_eq!(journal.switching(), Some(end));
        assert_eq!((journal.start(), journal.len()), (0, len));
        let (read, _) = read_all(&journal, 0, len);
        assert_eq!(read, vec![entry(0), entry(1)]);
        journal.name(end).unwrap();
        assert!(!next_path(&path_for(&db)).exists());
        // A next file made, never switched to.
        drop(journal.next_file().unwrap());
        drop(journal);
        let journal = Journal::open(&db, false).unwrap();
        assert!(!next_path(&path_for(&db)).exists());
        assert_eq!((journal.start(), journal.len()), (end, len));
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
