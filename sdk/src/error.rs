//! The SDK's error: "no answer at all". A decided answer — a valid license,
//! a revoked one, a mistyped key, an expired offline grace — is a
//! [`Validation`](crate::Validation), never an error.

use std::fmt;

use keysmith_core::key::KeyError;
use keysmith_core::token::TokenError;

/// Why the SDK has no answer.
///
/// Opaque on purpose: ask it with the `is_*` predicates, print it with
/// `Display` (add `{:#}` in `anyhow` style to include the cause chain through
/// [`source`](std::error::Error::source)).
///
/// ```
/// let err = keysmith::Client::builder("http://127.0.0.1:1")
///     .public_key("not a key")
///     .build()
///     .unwrap_err();
/// assert!(err.is_public_key());
/// assert!(!err.is_network());
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The builder was given something unusable (URL, cache dir, runtime).
    Builder,
    /// The pinned public key is not a list of base64 Ed25519 keys.
    PublicKey,
    /// A validation argument other than the key is unusable (domain,
    /// fingerprint).
    InvalidArgument,
    /// A string is not a well-formed key (only from `?` on
    /// [`check_key`](crate::check_key)).
    KeyMalformed,
    /// The server could not be reached, timed out, or answered 5xx / 429.
    Network { timeout: bool },
    /// The server answered something that is not a Keysmith answer.
    Protocol,
    /// The answer's token failed verification: bad signature, a key the app
    /// does not pin, or claims that do not match the request.
    Signature,
    /// Offline and no cached answer usable for this request.
    NoCache,
    /// The machine id could not be read.
    MachineId,
    /// The server has no license with this key (deactivation).
    NotFound,
}

impl Error {
    pub(crate) fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                source: None,
            }),
        }
    }

    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Error {
        self.inner.source = Some(Box::new(source));
        self
    }

    pub(crate) fn kind(&self) -> Kind {
        self.inner.kind
    }

    /// Offline: the online attempt failed with `self`, and no cached answer
    /// could stand in. The message says both.
    pub(crate) fn without_cache(self) -> Error {
        let message = format!(
            "{}, and there is no usable cached answer for this key",
            self.inner.message
        );
        let mut error = self;
        error.inner.message = message;
        error
    }

    /// The server could not be reached, did not answer in time, or answered
    /// with a server error (5xx), `408 Request Timeout` or `429 Too Many
    /// Requests` — and no cached answer could stand in.
    pub fn is_network(&self) -> bool {
        matches!(self.inner.kind, Kind::Network { .. })
    }

    /// Like [`is_network`](Self::is_network), and it was a time-out: no
    /// answer in time, or the server's own `408 Request Timeout`.
    pub fn is_timeout(&self) -> bool {
        matches!(self.inner.kind, Kind::Network { timeout: true })
    }

    /// The server's token did not verify against the pinned public keys, or
    /// its claims did not match the request (key, domain, fingerprint,
    /// nonce): the answer was forged, replayed or meant for someone else.
    pub fn is_signature(&self) -> bool {
        self.inner.kind == Kind::Signature
    }

    /// The server answered something that is not a Keysmith answer (e.g. a
    /// proxy's error page, or a redirect: redirects are not followed).
    pub fn is_protocol(&self) -> bool {
        self.inner.kind == Kind::Protocol
    }

    /// The public key given to the builder is not a comma-separated list of
    /// base64 Ed25519 public keys.
    pub fn is_public_key(&self) -> bool {
        self.inner.kind == Kind::PublicKey
    }

    /// The builder could not make a client (bad server URL, no cache dir).
    pub fn is_builder(&self) -> bool {
        self.inner.kind == Kind::Builder
    }

    /// A validation argument (domain, fingerprint) is unusable.
    pub fn is_invalid_argument(&self) -> bool {
        self.inner.kind == Kind::InvalidArgument
    }

    /// A string is not a well-formed key. [`Client::validate`] answers
    /// `KEY_MALFORMED` instead of failing; this is for `?` on
    /// [`check_key`](crate::check_key) in functions returning this error.
    ///
    /// [`Client::validate`]: crate::Client::validate
    pub fn is_key_malformed(&self) -> bool {
        self.inner.kind == Kind::KeyMalformed
    }

    /// Offline (see [`is_network`](Self::is_network)) there was no cached
    /// answer at all for this request, or none that verified. Only
    /// [`Client::validate_offline`](crate::Client::validate_offline) fails
    /// with this alone; `validate` reports the network failure.
    pub fn is_no_cache(&self) -> bool {
        self.inner.kind == Kind::NoCache
    }

    /// [`Client::deactivate`](crate::Client::deactivate): the server has no
    /// license with this key.
    pub fn is_not_found(&self) -> bool {
        self.inner.kind == Kind::NotFound
    }

    /// [`machine_fingerprint`](crate::machine_fingerprint) found no machine
    /// id to derive a fingerprint from.
    pub fn is_machine_id(&self) -> bool {
        self.inner.kind == Kind::MachineId
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)?;
        if f.alternate() {
            let mut source = std::error::Error::source(self);
            while let Some(cause) = source {
                write!(f, ": {cause}")?;
                source = cause.source();
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("keysmith::Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Error {
        // The message says the cause; chained too, `{:#}` would say it twice.
        Error::new(Kind::KeyMalformed, format!("not a license key: {e}"))
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Error {
        Error::new(
            Kind::Signature,
            format!("the server's answer is not trusted: {e}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_send_sync_and_small() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }

    /// A message that already says its cause does not also chain it, or
    /// `{:#}` (and anyhow) print the cause twice.
    #[test]
    fn the_alternate_form_says_each_cause_once() {
        let key: Error = KeyError::Checksum.into();
        let token: Error = TokenError::Signature.into();
        for e in [key, token] {
            assert_eq!(format!("{e:#}"), e.to_string());
        }
        let public_key = crate::Client::builder("http://127.0.0.1:9")
            .public_key("not base64!")
            .cache_dir(std::env::temp_dir())
            .build()
            .unwrap_err();
        assert_eq!(format!("{public_key:#}"), public_key.to_string());
        let file = tempfile::NamedTempFile::new().unwrap();
        let cache_dir = crate::Client::builder("http://127.0.0.1:9")
            .public_key(crate::test_support::public_key())
            .cache_dir(file.path())
            .build()
            .unwrap_err();
        assert_eq!(format!("{cache_dir:#}"), cache_dir.to_string());
    }

    #[test]
    fn predicates_follow_the_kind() {
        let net = Error::new(Kind::Network { timeout: true }, "x");
        assert!(net.is_network() && net.is_timeout() && !net.is_signature());
        let sig: Error = TokenError::Signature.into();
        assert!(sig.is_signature() && !sig.is_network());
        let key: Error = KeyError::Checksum.into();
        assert!(key.is_key_malformed());
        assert!(Error::new(Kind::NoCache, "x").is_no_cache());
    }

    #[test]
    fn alternate_display_shows_the_cause() {
        let e: Error = TokenError::Signature.into();
        assert_eq!(
            e.to_string(),
            "the server's answer is not trusted: the token's signature does not verify"
        );
        assert!(format!("{e:#}").ends_with(": the token's signature does not verify"));
        let offline =
            Error::new(Kind::Network { timeout: false }, "cannot reach http://x").without_cache();
        assert_eq!(
            offline.to_string(),
            "cannot reach http://x, and there is no usable cached answer for this key"
        );
    }
}
