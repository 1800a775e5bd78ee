//! Files for the server's user alone (the signing key, the database, a
//! backup), and making a new file's name survive a power cut.

use std::fs::File;
use std::path::Path;

/// Creates `path`, which must not exist yet, readable and writable by its
/// owner alone (0600 on Unix, whatever the umask).
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// The permission bits of `path` when its group or other users may read
/// or write it; `None` when only its owner may (or where there are no
/// Unix modes).
pub fn open_to_others(path: &Path) -> std::io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        Ok((mode & 0o077 != 0).then_some(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(None)
    }
}

/// Makes a new name in `path`'s directory durable (fsyncs the directory).
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}
