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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use rusqlite::{Connection, OpenFlags};

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
    let schema: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let is_keysmith: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'licenses')",
        [],
        |r| r.get(0),
    )?;
    if schema == 0 || !is_keysmith {
        bail!("{} is not a Keysmith database", db.display());
    }

    let partial = partial_path(to);
    let _ = std::fs::remove_file(&partial); // a failed earlier attempt's
    create_private(&partial)?;
    let copied = conn
        .execute("VACUUM INTO ?1", [partial.to_string_lossy()])
        .with_context(|| format!("copying into {}", partial.display()));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    drop(conn);

    let copy = Connection::open_with_flags(&partial, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let check: String = copy.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    let licenses: i64 = copy.query_row("SELECT COUNT(*) FROM licenses", [], |r| r.get(0))?;
    drop(copy);
    if check != "ok" {
        let _ = std::fs::remove_file(&partial);
        bail!("the copy failed its check ({check}); nothing was kept");
    }
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, to)
        .with_context(|| format!("renaming {} to {}", partial.display(), to.display()))?;
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(Backup {
        bytes: std::fs::metadata(to)?.len(),
        licenses: licenses as u64,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn partial_path(to: &Path) -> PathBuf {
    let mut name = to.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// An empty file only its owner can read.
fn create_private(path: &Path) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.flush()?;
    Ok(())
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
        assert!(!to.exists() && !partial_path(&to).exists());

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
