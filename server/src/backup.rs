//! `keysmith-server backup`: a consistent copy of a SQLite database in one
//! file, taken while the server runs or not.
//!
//! Copying the database, its write-ahead log and the usage journal file by
//! file while the server writes can give a copy that no server can read
//! (the log may start over between two copies). `VACUUM INTO` copies one
//! read transaction's snapshot instead: every license, seat, plan, webhook
//! and event committed when it starts. Usage records still in the journal
//! (up to about a second of validations, which the server copies into the
//! database once a second) are not in it.
//!
//! `keysmith-server restore` puts such a copy in place, with the server
//! stopped: the files it replaces (the database, its log and the usage
//! journal, which belong to the old database and must not be applied to
//! the copy) are moved aside into a folder of their own, not deleted.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use rusqlite::{Connection, OpenFlags};

use crate::store::sqlite::with_suffix;

/// What a backup wrote.
#[derive(Debug)]
pub struct Backup {
    pub bytes: u64,
    pub licenses: u64,
    pub seconds: f64,
}

/// Copies the database at `db` into a new file `to` (mode 0600: it holds
/// license keys and webhook secrets), through `to` + `.partial` renamed
/// once whole, so that `to` is never half a backup.
pub fn backup(db: &Path, to: &Path) -> anyhow::Result<Backup> {
    let started = Instant::now();
    if !db.exists() {
        bail!("no database at {}", db.display());
    }
    if to.exists() {
        bail!("{} exists; name a new file", to.display());
    }
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    must_be_keysmith(&conn, db)?;

    let partial = with_suffix(to, ".partial");
    let _ = std::fs::remove_file(&partial); // a failed earlier attempt's
    create_private(&partial)?;
    // The pages in use: about what the copy will take.
    let in_use: i64 = conn.query_row(
        "SELECT (page_count - freelist_count) * page_size \
         FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
        [],
        |r| r.get(0),
    )?;
    let copied = with_progress(&partial, in_use.max(0) as u64, || {
        conn.execute("VACUUM INTO ?1", [partial.to_string_lossy()])
    })
    .with_context(|| format!("copying into {}", partial.display()));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    drop(conn);

    let licenses = match checked(&partial) {
        Ok(licenses) => licenses,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.context("the copy failed its check; nothing was kept"));
        }
    };
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, to)
        .with_context(|| format!("renaming {} to {}", partial.display(), to.display()))?;
    crate::files::sync_parent(to)?;
    Ok(Backup {
        bytes: std::fs::metadata(to)?.len(),
        licenses,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub licenses: u64,
    /// Where the replaced files went, if there were any.
    pub moved_aside: Option<PathBuf>,
}

/// Puts the backup `from` in place of the database at `db`, which no
/// server may have open: the database's files are moved into a new folder
/// beside it (`replaced-<UTC time>`), then a checked copy of `from` takes
/// its name.
pub fn restore(from: &Path, db: &Path) -> anyhow::Result<Restored> {
    let licenses =
        checked(from).with_context(|| format!("{} is not a backup to restore", from.display()))?;
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // For the server's user alone, as `serve` makes it.
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let journal = with_suffix(db, "-usage");
    // The server holds this lock while it runs; holding it here keeps one
    // from starting until the copy is in place.
    let _lock = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&journal)
    {
        Ok(file) => {
            if file.try_lock().is_err() {
                bail!(
                    "a server is running on {} (it holds {}): stop it first",
                    db.display(),
                    journal.display()
                );
            }
            Some(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("opening {}", journal.display())),
    };

    let incoming = with_suffix(db, ".restoring");
    let _ = std::fs::remove_file(&incoming); // a failed earlier attempt's
                                             // The bytes into a file made 0600, not `fs::copy`, which would give it
                                             // the mode of the copy (0644 after a plain `cp` or `scp`).
    let mut target = create_private(&incoming)?;
    let mut source =
        std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    std::io::copy(&mut source, &mut target)
        .with_context(|| format!("copying {}", from.display()))?;
    target.sync_all()?;

    let replaced: Vec<PathBuf> = ["", "-wal", "-shm", "-usage", "-usage.next"]
        .iter()
        .map(|suffix| with_suffix(db, suffix))
        .filter(|p| p.exists())
        .collect();
    let moved_aside = if replaced.is_empty() {
        None
    } else {
        let aside = dir.join(format!(
            "replaced-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        std::fs::create_dir(&aside).with_context(|| format!("creating {}", aside.display()))?;
        for file in &replaced {
            let name = file.file_name().expect("a file name");
            std::fs::rename(file, aside.join(name))
                .with_context(|| format!("moving {} aside", file.display()))?;
        }
        Some(aside)
    };
    std::fs::rename(&incoming, db)
        .with_context(|| format!("renaming {} to {}", incoming.display(), db.display()))?;
    crate::files::sync_parent(db)?;
    Ok(Restored {
        licenses,
        moved_aside,
    })
}

/// Refuses a database that is not Keysmith's.
fn must_be_keysmith(conn: &Connection, path: &Path) -> anyhow::Result<()> {
    let schema: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let is_keysmith: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'licenses')",
        [],
        |r| r.get(0),
    )?;
    if schema == 0 || !is_keysmith {
        bail!("{} is not a Keysmith database", path.display());
    }
    Ok(())
}

/// Opens a single-file copy read-only, checks it whole and Keysmith's, and
/// counts its licenses.
fn checked(copy: &Path) -> anyhow::Result<u64> {
    if !copy.is_file() {
        bail!("no file at {}", copy.display());
    }
    let conn = Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    must_be_keysmith(&conn, copy)?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        bail!("{} is damaged: {check}", copy.display());
    }
    let licenses: i64 = conn.query_row("SELECT COUNT(*) FROM licenses", [], |r| r.get(0))?;
    Ok(licenses as u64)
}

/// Runs `copy` while a progress bar on a terminal shows how far `growing`
/// has come towards `expected` bytes.
fn with_progress<R>(growing: &Path, expected: u64, copy: impl FnOnce() -> R) -> R {
    let bar = indicatif::ProgressBar::new(expected);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes} of ~{total_bytes} ({elapsed}, ~{eta} left)",
        )
        .expect("a valid template"),
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(m) = std::fs::metadata(growing) {
                    bar.set_position(m.len().min(expected));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        let result = copy();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    });
    bar.finish_and_clear();
    result
}

/// An empty file only its owner can read.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    crate::files::create_private(path).with_context(|| format!("creating {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_keysmith_database_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); PRAGMA user_version = 3;")
            .unwrap();
        let to = dir.path().join("copy.db");
        let e = backup(&other, &to).unwrap_err().to_string();
        assert!(e.contains("not a Keysmith database"), "{e}");
        assert!(!to.exists() && !with_suffix(&to, ".partial").exists());

        let e = backup(&dir.path().join("missing.db"), &to)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no database at"), "{e}");

        std::fs::write(&to, b"keep me").unwrap();
        let e = backup(&other, &to).unwrap_err().to_string();
        assert!(e.contains("exists"), "{e}");
        assert_eq!(std::fs::read(&to).unwrap(), b"keep me");
    }
}
