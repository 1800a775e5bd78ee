//! The signed validation token (SPEC §5): a compact JWS, EdDSA over Ed25519,
//! that any JWT library can verify with the key from `/.well-known/jwks.json`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::wire::{Code, Status};

/// The claims of a validation token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// License id; `None` when the license was not found.
    pub sub: Option<String>,
    /// Lowercase hex SHA-256 of the canonical key.
    pub key_sha256: String,
    pub valid: bool,
    pub code: Code,
    pub status: Option<Status>,
    pub plan: Option<String>,
    pub features: Vec<String>,
    /// RFC 3339, or `None` for a perpetual license.
    pub license_expires_at: Option<String>,
    pub domain: Option<String>,
    pub fingerprint: Option<String>,
    pub nonce: Option<String>,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Trusted offline until, Unix seconds.
    pub exp: i64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    kid: String,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a compact JWS")]
    Malformed,
    #[error("the token's algorithm is not EdDSA")]
    Algorithm,
    #[error("the token was signed with key {0:?}, which this app does not trust")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token's claims are not Keysmith claims")]
    Claims,
}

/// The key id of a public key: the first 16 hex digits of SHA-256 of its
/// 32 raw bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..8])
}

/// Signs `claims` as a compact JWS with `key`. A server signing many
/// tokens keeps a [`TokenSigner`] instead, which encodes the header once.
pub fn sign(key: &SigningKey, claims: &Claims) -> String {
    TokenSigner::new(key.clone()).sign(claims)
}

/// A signing key with its JWS header (`alg`, `typ`, `kid`) encoded once.
pub struct TokenSigner {
    key: SigningKey,
    /// The same key in AWS-LC, which signs in about half ed25519-dalek's
    /// time (the signature is the largest part of a validation's CPU on the
    /// server; docs/performance.md). Ed25519 is deterministic, so the
    /// signatures are the same bytes.
    #[cfg(feature = "aws-lc")]
    fast: aws_lc_rs::signature::Ed25519KeyPair,
    key_id: String,
    /// base64url of the header JSON, then the `.` before the claims.
    header: String,
}

impl TokenSigner {
    pub fn new(key: SigningKey) -> TokenSigner {
        let header = Header {
            alg: "EdDSA".into(),
            typ: "JWT".into(),
            kid: key_id(&key.verifying_key()),
        };
        let mut encoded =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header serialises"));
        encoded.push('.');
        TokenSigner {
            #[cfg(feature = "aws-lc")]
            fast: aws_lc_rs::signature::Ed25519KeyPair::from_seed_and_public_key(
                key.as_bytes(),
                key.verifying_key().as_bytes(),
            )
            .expect("AWS-LC takes every Ed25519 seed with its own public key"),
            key,
            key_id: header.kid,
            header: encoded,
        }
    }

    /// Signs `claims` as a compact JWS.
    pub fn sign(&self, claims: &Claims) -> String {
        // Sized for a typical token's claims (~300 bytes), not grown by doubling.
        let mut json = Vec::with_capacity(512);
        serde_json::to_writer(&mut json, claims).expect("claims serialise");
        let claims = json;
        let mut out = String::with_capacity(self.header.len() + claims.len() * 4 / 3 + 92);
        out.push_str(&self.header);
        URL_SAFE_NO_PAD.encode_string(claims, &mut out);
        let signature = self.signature(out.as_bytes());
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut out);
        out
    }

    #[cfg(feature = "aws-lc")]
    fn signature(&self, message: &[u8]) -> [u8; 64] {
        let signature = self.fast.sign(message);
        signature
            .as_ref()
            .try_into()
            .expect("an Ed25519 signature is 64 bytes")
    }

    #[cfg(not(feature = "aws-lc"))]
    fn signature(&self, message: &[u8]) -> [u8; 64] {
        ed25519_dalek::Signer::sign(&self.key, message).to_bytes()
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The `kid` of the tokens: [`key_id`] of the public key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("key_id", &self.key_id)
            .field("key", &"<secret>")
            .finish()
    }
}

/// The public keys an app trusts, picked by `kid` (rotation: ship the next
/// key in the app before the server switches to it).
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<(String, VerifyingKey)>,
}

/// A public key string that is not base64 of 32 bytes of an Ed25519 point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PublicKeyError(String);

impl KeySet {
    /// Builds a set from base64 public keys (standard alphabet as
    /// `/api/v1/public-key` gives them, or base64url as the JWKS's `x`;
    /// padding optional), separated by commas.
    pub fn from_base64_list(list: &str) -> Result<KeySet, PublicKeyError> {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
        let mut set = KeySet::default();
        for (i, part) in list.split(',').map(str::trim).enumerate() {
            if part.is_empty() {
                return Err(PublicKeyError(format!("public key #{} is empty", i + 1)));
            }
            let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(part).ok())
                .ok_or_else(|| PublicKeyError(format!("public key #{} is not base64", i + 1)))?;
            let raw: [u8; 32] = bytes
                .try_into()
                .map_err(|_| PublicKeyError(format!("public key #{} is not 32 bytes", i + 1)))?;
            let key = VerifyingKey::from_bytes(&raw).map_err(|_| {
                PublicKeyError(format!("public key #{} is not an Ed25519 key", i + 1))
            })?;
            set.push(key);
        }
        Ok(set)
    }

    /// Adds a key.
    pub fn push(&mut self, key: VerifyingKey) {
        self.keys.push((key_id(&key), key));
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies the token's signature with the key its `kid` names and
    /// returns its claims. Checks nothing else: matching the claims to the
    /// request is the caller's job.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm);
        }
        let key = self
            .keys
            .iter()
            .find(|(kid, _)| *kid == header.kid)
            .map(|(_, k)| k)
            .ok_or_else(|| TokenError::UnknownKey(header.kid.clone()))?;
        let sig_bytes: [u8; 64] = URL_SAFE_NO_PAD
            .decode(s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(TokenError::Malformed)?;
        let signed_len = h.len() + 1 + c.len();
        key.verify(
            &token.as_bytes()[..signed_len],
            &Signature::from_bytes(&sig_bytes),
        )
        .map_err(|_| TokenError::Signature)?;
        let claims = URL_SAFE_NO_PAD.decode(c).map_err(|_| TokenError::Claims)?;
        serde_json::from_slice(&claims).map_err(|_| TokenError::Claims)
    }
}

/// The public key in the base64 form the API and SDK use.
pub fn public_key_base64(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// The public key in the base64url (no padding) form JWKS uses.
pub fn public_key_base64url(key: &VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "keysmith".into(),
            sub: Some("lic_8J2K4M6P9Q".into()),
            key_sha256: "00".repeat(32),
            valid: true,
            code: Code::Valid,
            status: Some(Status::Active),
            plan: Some("pro".into()),
            features: vec!["sso".into()],
            license_expires_at: None,
            domain: Some("example.com".into()),
            fingerprint: None,
            nonce: Some("n1".into()),
            iat: 1_800_000_000,
            exp: 1_800_604_800,
        }
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// The server signs with AWS-LC; apps check with ed25519-dalek. Both
    /// must give the one deterministic Ed25519 signature, for every key.
    #[cfg(feature = "aws-lc")]
    #[test]
    fn aws_lc_signs_the_same_bytes_as_ed25519_dalek() {
        for seed in [0u8, 1, 7, 255] {
            let k = key(seed);
            let signer = TokenSigner::new(k.clone());
            for message in [&b""[..], b"eyJ.eyJ", &[0xa5; 1000]] {
                let expected = ed25519_dalek::Signer::sign(&k, message).to_bytes();
                assert_eq!(signer.signature(message), expected, "seed {seed}");
            }
        }
    }

    #[test]
    fn signs_and_verifies() {
        let k = key(1);
        let token = sign(&k, &claims());
        let set = KeySet::from_base64_list(&public_key_base64(&k.verifying_key())).unwrap();
        assert_eq!(set.verify(&token).unwrap(), claims());
    }

    #[test]
    fn picks_the_key_by_kid() {
        let (old, new) = (key(1), key(2));
        let list = format!(
            "{}, {}",
            public_key_base64(&old.verifying_key()),
            public_key_base64(&new.verifying_key())
        );
        let set = KeySet::from_base64_list(&list).unwrap();
        assert!(set.verify(&sign(&old, &claims())).is_ok());
        assert!(set.verify(&sign(&new, &claims())).is_ok());
        let only_old = KeySet::from_base64_list(&public_key_base64(&old.verifying_key())).unwrap();
        assert!(matches!(
            only_old.verify(&sign(&new, &claims())),
            Err(TokenError::UnknownKey(_))
        ));
    }

    #[test]
    fn rejects_tampering() {
        let k = key(1);
        let set = KeySet::from_base64_list(&public_key_base64(&k.verifying_key())).unwrap();
        let token = sign(&k, &claims());
        let mut forged = claims();
        forged.code = Code::Valid;
        forged.exp += 1;
        let parts: Vec<&str> = token.split('.').collect();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], body, parts[2]);
        assert_eq!(set.verify(&tampered), Err(TokenError::Signature));
        assert_eq!(set.verify("a.b"), Err(TokenError::Malformed));
        assert_eq!(set.verify(""), Err(TokenError::Malformed));
    }

    #[test]
    fn takes_the_jwks_base64url_form_too() {
        // A key whose base64 has both `+` and `/`, so base64url differs.
        let k = (0u8..=255)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .find(|k| {
                let b = public_key_base64(&k.verifying_key());
                b.contains('+') && b.contains('/')
            })
            .expect("some key");
        let standard = public_key_base64(&k.verifying_key());
        let url =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.verifying_key().as_bytes());
        assert_ne!(standard.trim_end_matches('='), url);
        let token = sign(&k, &claims());
        for form in [standard.clone(), url] {
            let set = KeySet::from_base64_list(&form).unwrap();
            assert!(set.verify(&token).is_ok(), "{form}");
        }
    }

    #[test]
    fn rejects_bad_public_keys() {
        assert!(KeySet::from_base64_list("").is_err());
        assert!(KeySet::from_base64_list("not base64!").is_err());
        assert!(KeySet::from_base64_list("AAAA").is_err());
    }
}
