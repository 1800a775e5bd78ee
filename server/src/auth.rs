//! Admin authentication: a bearer token whose SHA-256 is compared in
//! constant time. The token itself is never stored or logged.

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

/// Knows the admin token's hash, never the token.
#[derive(Clone)]
pub struct AdminAuth {
    hash: [u8; 32],
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

impl AdminAuth {
    pub fn from_token(token: &str) -> AdminAuth {
        AdminAuth {
            hash: sha256(token),
        }
    }

    fn from_hex(stored: &str) -> anyhow::Result<AdminAuth> {
        let hash: [u8; 32] = hex::decode(stored)
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("the stored admin token hash is corrupt")?;
        Ok(AdminAuth { hash })
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
        let token = new_token();
        let auth = AdminAuth::from_token(&token);
        let mine = hex::encode(auth.hash);
        let stored = store.keep_first_admin_token_hash(mine.clone()).await?;
        if stored != mine {
            // Another server on this database generated one first.
            println!("Another server generated the admin token at the same time; use the one it printed.");
            return AdminAuth::from_hex(&stored);
        }
        println!("Generated admin token (shown once; only its hash is stored): {token}");
        Ok(auth)
    }

    /// Replaces the stored admin token with a new random one and returns
    /// it, to be shown once (`keysmith-server rotate-admin-token`). Servers
    /// already running keep the hash they read at start-up.
    pub async fn rotate(store: &dyn Store) -> anyhow::Result<String> {
        if std::env::var_os(ADMIN_TOKEN_ENV).is_some() {
            anyhow::bail!(
                "{ADMIN_TOKEN_ENV} is set, and while it is, it is the admin token: \
                 change it there, or unset it to use a stored one"
            );
        }
        let token = new_token();
        store
            .replace_admin_token_hash(hex::encode(sha256(&token)))
            .await?;
        Ok(token)
    }

    /// Checks an `Authorization` header value `Bearer <token>`.
    pub fn check_header(&self, header: Option<&str>) -> bool {
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        sha256(token.trim()).ct_eq(&self.hash).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_bearer_tokens() {
        let auth = AdminAuth::from_token("correct horse battery staple");
        assert!(auth.check_header(Some("Bearer correct horse battery staple")));
        assert!(!auth.check_header(Some("Bearer wrong")));
        assert!(!auth.check_header(Some("correct horse battery staple")));
        assert!(!auth.check_header(None));
        assert!(!format!("{auth:?}").contains("horse"));
    }
}
