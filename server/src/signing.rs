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
        Ok(text) => {
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(e).with_context(|| format!("reading signing key {}", path.display())),
    }
}

fn create(path: &Path) -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating signing key {}", path.display()))?;
    file.write_all(format!("{}\n", STANDARD.encode(seed)).as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "created a new signing key");
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(unix)]
fn check_permissions(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "signing key {} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
