//! The Ed25519 signing key: created once with mode 0600, reused afterwards,
//! and refused when other users can read it.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};
use keysmith_core::token;
use rand::rngs::OsRng;
use rand::RngCore;

/// The server's signing key and the names it is published under.
#[derive(Debug)]
pub struct Signer {
    pub tokens: token::TokenSigner,
    pub issuer: String,
}

impl Signer {
    pub fn new(key: SigningKey, issuer: String) -> Signer {
        Signer {
            tokens: token::TokenSigner::new(key),
            issuer,
        }
    }

    pub fn public(&self) -> VerifyingKey {
        self.tokens.key().verifying_key()
    }

    pub fn key_id(&self) -> &str {
        self.tokens.key_id()
    }
}

/// Loads the key at `path`, creating it (0600) if the file does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(e).with_context(|| format!("reading signing key {}", path.display())),
    }
}

/// Loads the key at `path`; unlike `load_or_create`, never creates one.
pub fn load(path: &Path) -> anyhow::Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no signing key at {}: a server creates one on its first start",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("reading signing key {}", path.display())),
    }
}

/// The key in `text`, read from `path`, once `path` is found private.
fn parse(path: &Path, text: &str) -> anyhow::Result<SigningKey> {
    check_permissions(path)?;
    let seed: [u8; 32] = STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| {
            format!(
                "{} does not hold a base64 Ed25519 seed of 32 bytes",
                path.display()
            )
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Creates a new key at `path` (0600, fsynced) for a rotation; a file
/// already there is never replaced.
pub fn create_new(path: &Path) -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    match write_new(path, &seed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} already exists, and a signing key is never overwritten: name a new file",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("creating signing key {}", path.display()))
        }
    }
    sync_parent(path)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// `files::sync_parent`, with the directory named in its error.
fn sync_parent(path: &Path) -> anyhow::Result<()> {
    crate::files::sync_parent(path)
        .with_context(|| format!("syncing the directory of {}", path.display()))
}

/// The public key as `GET /api/v1/public-key` shows it.
pub fn public_key_json(key: &VerifyingKey) -> serde_json::Value {
    serde_json::json!({
        "algorithm": "EdDSA",
        "curve": "Ed25519",
        "key_id": token::key_id(key),
        "public_key": token::public_key_base64(key),
    })
}

/// Writes a new key to a temporary file beside `path` and links it into
/// place only once it is complete and on disk: a crash never leaves an
/// empty or half-written key behind, and of servers starting at once on a
/// fresh data dir the first link wins and the others load its key. Where
/// the file system has no hard links, the key is created in place with
/// `O_EXCL` instead (see `create_linking`).
fn create(path: &Path) -> anyhow::Result<SigningKey> {
    create_linking(path, |from, to| std::fs::hard_link(from, to))
}

/// `create`, with `link` in place of `hard_link`.
fn create_linking(
    path: &Path,
    link: impl Fn(&Path, &Path) -> std::io::Result<()>,
) -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(
        ".new-{}-{:016x}",
        std::process::id(),
        OsRng.next_u64()
    ));
    let temp = std::path::PathBuf::from(name);
    let written = write_new(&temp, &seed).and_then(|()| match link(&temp, path) {
        // A file system without hard links (FAT, some network and FUSE
        // ones): the key is created in place, still exclusively. A crash
        // while writing it leaves a short file, which the next start names.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            tracing::debug!(error = %e, "no hard links here: creating the signing key in place");
            write_new(path, &seed)
        }
        linked => linked,
    });
    let _ = std::fs::remove_file(&temp);
    match written {
        Ok(()) => {
            sync_parent(path)?;
            tracing::info!(path = %path.display(), "created a new signing key");
            Ok(SigningKey::from_bytes(&seed))
        }
        // Another server created it first: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(path),
        Err(e) => Err(e).with_context(|| format!("creating signing key {}", path.display())),
    }
}

/// Creates `path` (0600) holding `seed`, fsynced.
fn write_new(path: &Path, seed: &[u8; 32]) -> std::io::Result<()> {
    let mut file = crate::files::create_private(path)?;
    file.write_all(format!("{}\n", STANDARD.encode(seed)).as_bytes())?;
    file.sync_all()
}

fn check_permissions(path: &Path) -> anyhow::Result<()> {
    if let Some(mode) = crate::files::open_to_others(path)? {
        bail!(
            "signing key {} is readable by other users (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_system_without_hard_links_gets_the_key_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        for refusal in [libc_eperm(), std::io::ErrorKind::Unsupported.into()] {
            let _ = std::fs::remove_file(&path);
            let no_links = |_: &Path, _: &Path| Err(std::io::Error::new(refusal.kind(), "no"));
            let created = create_linking(&path, no_links).unwrap();
            assert_eq!(
                load_or_create(&path).unwrap().to_bytes(),
                created.to_bytes()
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
            // A second server finds it there and loads it.
            let again = create_linking(&path, no_links).unwrap();
            assert_eq!(again.to_bytes(), created.to_bytes());
            let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
        }
    }

    /// What `link(2)` answers on FAT: EPERM.
    fn libc_eperm() -> std::io::Error {
        std::io::Error::from_raw_os_error(1)
    }

    #[test]
    fn creates_0600_and_reuses() {
        let dir = std::env::temp_dir().join(format!("ks-sign-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("signing.key");
        let _ = std::fs::remove_file(&path);
        let first = load_or_create(&path).unwrap();
        let again = load_or_create(&path).unwrap();
        assert_eq!(first.to_bytes(), again.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(load_or_create(&path).is_err());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Servers started at once on a fresh data dir (or against one shared
    /// key path) all end up with one key, and none fails to start.
    #[test]
    fn concurrent_first_starts_share_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("signing.key");
            let together = std::sync::Arc::new(std::sync::Barrier::new(8));
            let starts: Vec<_> = (0..8)
                .map(|_| {
                    let (path, together) = (path.clone(), together.clone());
                    std::thread::spawn(move || {
                        together.wait();
                        load_or_create(&path).map(|k| k.to_bytes())
                    })
                })
                .collect();
            let keys: Vec<[u8; 32]> = starts
                .into_iter()
                .map(|s| s.join().unwrap().expect("every start loads a key"))
                .collect();
            assert!(keys.iter().all(|k| *k == keys[0]));
            // Nothing but the key is left in the directory.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }
}
