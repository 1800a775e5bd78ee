//! Admin authentication: a bearer token whose SHA-256 is compared in
//! constant time. The token itself is never stored or logged.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::Store;

/// The environment variable that sets the admin token.
pub const ADMIN_TOKEN_ENV: &str = "KEYSMITH_ADMIN_TOKEN";

/// How often a server looks for a rotated admin token in the database.
pub const ROTATION_CHECK_EVERY: Duration = Duration::from_secs(5);

/// Knows the admin token's hash, never the token. Clones share the hash,
/// which `follow_rotations` replaces when the stored one changes.
#[derive(Clone)]
pub struct AdminAuth {
    hash: Arc<RwLock<[u8; 32]>>,
    /// The hash is the stored one (not `KEYSMITH_ADMIN_TOKEN`'s).
    stored: bool,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminAuth(<hash>)")
    }
}

/// A new random admin token: `ksa_` and 256 bits from the OS, base64url.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("ksa_{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A stored hash's bytes.
fn parse_hex(stored: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(stored)
        .ok()
        .and_then(|b| b.try_into().ok())
        .context("the stored admin token hash is corrupt")
}

/// A new random token and the hash to store (hex).
pub fn new_token_and_hash() -> (String, String) {
    let token = new_token();
    let hash = hex::encode(sha256(&token));
    (token, hash)
}

impl AdminAuth {
    /// The token given in clear (`KEYSMITH_ADMIN_TOKEN`, tests).
    pub fn from_token(token: &str) -> AdminAuth {
        AdminAuth {
            hash: Arc::new(RwLock::new(sha256(token))),
            stored: false,
        }
    }

    fn from_hex(stored: &str) -> anyhow::Result<AdminAuth> {
        Ok(AdminAuth {
            hash: Arc::new(RwLock::new(parse_hex(stored)?)),
            stored: true,
        })
    }

    fn current(&self) -> [u8; 32] {
        *self.hash.read().unwrap_or_else(|p| p.into_inner())
    }

    /// `KEYSMITH_ADMIN_TOKEN` if set; else the stored hash; else a new random
    /// token, printed once on stdout, of which only the hash is stored.
    pub async fn establish(store: &dyn Store) -> anyhow::Result<AdminAuth> {
        if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV) {
            if token.trim().len() < 16 {
                anyhow::bail!("{ADMIN_TOKEN_ENV} must be at least 16 characters");
            }
            return Ok(AdminAuth::from_token(token.trim()));
        }
        if let Some(hex_hash) = store.admin_token_hash().await? {
            return AdminAuth::from_hex(&hex_hash);
        }
        let (token, mine) = new_token_and_hash();
        let stored = store.keep_first_admin_token_hash(mine.clone()).await?;
        if stored != mine {
            // Another server on this database generated one first.
            println!("Another server generated the admin token at the same time; use the one it printed.");
        } else {
            println!("Generated admin token (shown once; only its hash is stored): {token}");
        }
        AdminAuth::from_hex(&stored)
    }

    /// Every `every`, reads the stored hash and, when a rotation
    /// (`keysmith-server rotate-admin-token`) changed it, takes the new one
    /// in place of the old, so that the old token stops working on running
    /// servers too. Does nothing for a token from `KEYSMITH_ADMIN_TOKEN`.
    pub async fn follow_rotations(self, store: Arc<dyn Store>, every: Duration) {
        if !self.stored {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let stored = match store.admin_token_hash().await {
                Ok(Some(hex)) => parse_hex(&hex),
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the admin token hash failed");
                    continue;
                }
            };
            match stored {
                Ok(hash) if hash != self.current() => {
                    *self.hash.write().unwrap_or_else(|p| p.into_inner()) = hash;
                    tracing::info!("the admin token was rotated: the new one is in effect");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "ignoring the stored admin token hash"),
            }
        }
    }

    /// Checks an `Authorization` header value `Bearer <token>` (the scheme
    /// in any case, as RFC 9110 has it).
    pub fn check_header(&self, header: Option<&str>) -> bool {
        let Some((scheme, token)) = header.and_then(|h| h.split_once(' ')) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        sha256(token.trim()).ct_eq(&self.current()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_bearer_tokens() {
        let auth = AdminAuth::from_token("correct horse battery staple");
        assert!(auth.check_header(Some("Bearer correct horse battery staple")));
        assert!(auth.check_header(Some("bearer correct horse battery staple")));
        assert!(auth.check_header(Some("BEARER  correct horse battery staple")));
        assert!(!auth.check_header(Some("Basic correct horse battery staple")));
        assert!(!auth.check_header(Some("Bearer wrong")));
        assert!(!auth.check_header(Some("correct horse battery staple")));
        assert!(!auth.check_header(None));
        assert!(!format!("{auth:?}").contains("horse"));
    }
}
