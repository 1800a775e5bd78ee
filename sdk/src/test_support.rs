//! Keys for unit tests.

use ed25519_dalek::SigningKey;

/// A fixed signing key, so tests are reproducible.
pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The base64 public key of [`signing_key`].
pub fn public_key() -> String {
    keysmith_core::token::public_key_base64(&signing_key().verifying_key())
}
