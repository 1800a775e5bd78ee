//! The on-disk cache of server answers: one small JSON file per (app, key,
//! domain, fingerprint), named by a hash so the key never appears in clear,
//! and replaced atomically (temp file, fsync, rename) so that any number of
//! threads and processes can read and write it at once.
//!
//! Only the token in a file is trusted, and only after its signature and
//! claims are verified; `newest_seen` is a hint that can only make the SDK
//! stricter (see the crate docs, "Offline rules").

use std::io::Write;
use std::path::{Path, PathBuf};

use keysmith_core::LicenseKey;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The format version written into every file; files of another version are
/// ignored.
const VERSION: u32 = 1;

/// What one cache file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub version: u32,
    /// The server's signed token (compact JWS), exactly as received.
    pub token: String,
    /// The newest time (Unix seconds) this SDK has seen for this entry: the
    /// local clock at each validation, and the token's `iat`.
    pub newest_seen: i64,
}

impl Entry {
    pub fn new(token: String, newest_seen: i64) -> Entry {
        Entry {
            version: VERSION,
            token,
            newest_seen,
        }
    }
}

/// The cache file for `key` as validated by `app_id` with these options.
pub(crate) fn file_path(
    dir: &Path,
    app_id: &str,
    key: &LicenseKey,
    domain: Option<&str>,
    fingerprint: Option<&str>,
) -> PathBuf {
    hashed_path(
        dir,
        [
            "keysmith-cache-v1",
            app_id,
            key.as_str(),
            domain.unwrap_or(""),
            fingerprint.unwrap_or(""),
        ],
    )
}

/// The file of the latest refusal about the license as a whole (suspended,
/// revoked, expired, not found) that `app_id` was told for `key`, whatever
/// the request's domain and fingerprint: offline, it outranks a VALID
/// cached for any of them before it.
pub(crate) fn refusal_path(dir: &Path, app_id: &str, key: &LicenseKey) -> PathBuf {
    hashed_path(dir, ["keysmith-refusal-v1", app_id, key.as_str(), "", ""])
}

/// `dir`/<SHA-256 of the parts>.license: the key never appears in clear.
fn hashed_path(dir: &Path, parts: [&str; 5]) -> PathBuf {
    let mut hash = Sha256::new();
    // NUL separators: none of the parts can contain one, so no two
    // different requests hash the same input.
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    dir.join(format!("{}.license", hex::encode(hash.finalize())))
}

/// Reads an entry; `None` when the file is missing, unreadable, not an
/// entry or of another version. Verifying its token is the caller's job.
pub(crate) fn load(path: &Path) -> Option<Entry> {
    let bytes = std::fs::read(path).ok()?;
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    (entry.version == VERSION).then_some(entry)
}

/// Writes `entry` to `path` atomically: readers see the old file or the new
/// one, never a mix, and a crash leaves one of the two.
pub(crate) fn store(path: &Path, entry: &Entry) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let mut suffix = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut suffix);
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
    let tmp = dir.join(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        hex::encode(suffix)
    ));
    let result = write_new(&tmp, &serde_json::to_vec(entry).expect("entry serialises"))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir);
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The cache dir's lock file: an advisory lock, never read or written.
const LOCK_FILE: &str = ".lock";

/// Holds `dir`'s lock while the returned file is open: one thread or
/// process at a time reads an entry, decides what to write and writes it,
/// so that an older answer decided on before a newer one was written
/// cannot land after it. `None` when the lock cannot be had (a dir that
/// cannot be written, where nothing is written either).
pub(crate) fn lock(dir: &Path) -> Option<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(dir.join(LOCK_FILE)).ok()?;
    file.lock().ok()?;
    Some(file)
}

/// Removes the entry at `path`, if there is one; durably.
pub(crate) fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir);
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `dir` (0700) if missing and makes sure a file can be written
/// there (a probe, removed at once).
pub(crate) fn check_dir(dir: &Path) -> std::io::Result<()> {
    create_private_dir(dir)?;
    let mut suffix = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut suffix);
    let probe = dir.join(format!(".probe-{}.tmp", hex::encode(suffix)));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Makes the rename itself durable. Best effort: not every platform can
/// open a directory.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LicenseKey {
        LicenseKey::generate("KS").unwrap()
    }

    #[test]
    fn file_names_hide_the_key_and_separate_requests() {
        let dir = Path::new("/cache");
        let k = key();
        let p = file_path(dir, "app", &k, None, None);
        let name = p.file_name().unwrap().to_str().unwrap();
        let stem = name.strip_suffix(".license").unwrap();
        assert!(
            stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}"
        );
        assert!(!p.to_str().unwrap().contains(k.as_str()));
        assert_eq!(p, file_path(dir, "app", &k, None, None), "stable");
        let others = [
            file_path(dir, "other-app", &k, None, None),
            file_path(dir, "app", &key(), None, None),
            file_path(dir, "app", &k, Some("example.com"), None),
            file_path(dir, "app", &k, None, Some("example.com")),
        ];
        for other in others {
            assert_ne!(p, other);
        }
    }

    #[test]
    fn store_replaces_atomically_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_path(&dir.path().join("nested"), "app", &key(), None, None);
        assert_eq!(load(&path), None);
        store(&path, &Entry::new("t1".into(), 1)).unwrap();
        assert_eq!(load(&path), Some(Entry::new("t1".into(), 1)));
        store(&path, &Entry::new("t2".into(), 2)).unwrap();
        assert_eq!(load(&path), Some(Entry::new("t2".into(), 2)));
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(files.len(), 1, "{files:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn unreadable_or_foreign_files_are_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.license");
        std::fs::write(&path, b"{\"version\":1,\"tok").unwrap();
        assert_eq!(load(&path), None);
        std::fs::write(&path, br#"{"version":2,"token":"t","newest_seen":1}"#).unwrap();
        assert_eq!(load(&path), None);
    }
}
