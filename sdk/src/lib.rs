//! Keysmith client SDK: check license keys locally, validate them against a
//! Keysmith server, verify the signed answer, and keep working offline from a
//! cached answer.
//!
//! # Quick start
//!
//! ```no_run
//! use keysmith::{Client, ValidateOptions};
//!
//! # async fn run() -> Result<(), keysmith::Error> {
//! // The server's public key, from `GET /api/v1/public-key`, compiled in.
//! const PUBLIC_KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
//!
//! let client = Client::builder("https://license.example.com")
//!     .public_key(PUBLIC_KEY)
//!     .app_id("acme-editor")
//!     .build()?;
//!
//! let license = client
//!     .validate("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9", &ValidateOptions::new().domain("example.com"))
//!     .await?;
//! if license.valid {
//!     println!("licensed ({}), SSO: {}", license.source, license.has_feature("sso"));
//! } else {
//!     eprintln!("not licensed: {}", license.message());
//! }
//! # Ok(()) }
//! ```
//!
//! Checking a key as a person types it needs no client and no network:
//!
//! ```
//! let key = keysmith::check_key("ks-7h2k q9wm 4xrt 8cvp n3fj vcz9")?;
//! assert_eq!(key.as_str(), "KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9");
//! assert!(keysmith::check_key("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ8").is_err()); // one typo
//! # Ok::<(), keysmith::KeyError>(())
//! ```
//!
//! Without a tokio runtime, use [`blocking::Client`] (feature `blocking`):
//! same builder, same answers.
//!
//! # Answers and errors
//!
//! [`Client::validate`] returns `Ok(`[`Validation`]`)` whenever it reached an
//! answer, valid or not: `KEY_MALFORMED`, `LICENSE_REVOKED`,
//! `OFFLINE_GRACE_EXPIRED`, `CLOCK_TAMPERED` are answers, told apart by
//! [`Validation::code`]. It returns `Err(`[`Error`]`)` only when there is no
//! answer at all: the server could not be reached (or its answer did not
//! verify) and no usable answer is cached, or an argument is unusable.
//!
//! # Rules
//!
//! Online:
//!
//! 1. The key is checked locally first ([`check_key`]; with
//!    [`ClientBuilder::key_prefix`], its prefix too). A key that fails is
//!    `KEY_MALFORMED` with source `local`, and no request is sent.
//! 2. The request carries a fresh random nonce. The answer is taken only from
//!    the server's signed token: its signature must verify with a pinned
//!    public key (picked by `kid`), and its `key_sha256`, `domain`,
//!    `fingerprint` and `nonce` must match the request. The rest of the
//!    response body is ignored. (An unsigned `KEY_MALFORMED` from the server,
//!    e.g. for a key of another prefix, is passed on when nothing is cached
//!    for the request; a cached answer, which a server signed for this very
//!    key, outranks it, so a forged one cannot deny a license within its
//!    grace period.)
//! 3. Every verified answer — valid *or invalid* — replaces the cached one
//!    for this key, domain and fingerprint at once, so a revocation is never
//!    hidden by the cache. (A concurrent, slower request carrying an older
//!    token does not put it back: the entry with the later `iat` wins.) The
//!    one write skipped: when the cached answer says exactly the same —
//!    validity, code, status, plan, features, expiry, grace — and is under a
//!    minute old, so an app validating in a loop does not fsync each time;
//!    its offline window then starts up to a minute earlier.
//!
//! Offline — the request failed to connect, timed out, or got a 5xx or 429,
//! or the answer did not verify — the cached token answers, if it verifies
//! with the pinned keys and matches the key, domain and fingerprint;
//! otherwise there is no answer (an [`Error`], [`Error::is_network`] or
//! [`Error::is_signature`]). With `now` the local clock (see
//! [`ClientBuilder::clock`]) and `newest` the largest of the times recorded
//! with the entry and the token's signed `iat` less 26 hours (the widest
//! gap between two time zones, for a clock that runs behind the server's):
//!
//! 1. a cached *invalid* answer is replayed as it is (`LICENSE_REVOKED`, …,
//!    source `cache`), whatever the clock; so is a refusal of the whole
//!    license (suspended, revoked, expired, not found) that this app was
//!    told for the key under another domain or fingerprint, if it is not
//!    older than the cached `VALID`;
//! 2. if `now` is more than [`CLOCK_TOLERANCE_SECS`] (10 minutes) before
//!    `newest`, the answer is `CLOCK_TAMPERED`;
//! 3. if `now` is before the token's `exp` — shortened to `iat + grace` by
//!    [`ClientBuilder::offline_grace`], which can never lengthen it — the
//!    cached `VALID` stands (source `cache`);
//! 4. otherwise the answer is `OFFLINE_GRACE_EXPIRED`.
//!
//! The server sets `exp = min(iat + the plan's offline grace, license
//! expiry)`, so a license that expires while the app is offline stops being
//! valid at its expiry.
//!
//! The times recorded with an entry start again at each online answer, from
//! its signed `iat` or the local clock, whichever is earlier: an answer
//! signed for this request's nonce says what time it is, so a clock that
//! ran ahead (even at that answer) and was put right is not taken for a
//! clock set back, and a clock that runs behind the server's is not taken
//! for one set back either, once
//! the app is next offline.
//!
//! A signed refusal (`LICENSE_REVOKED`, …) always replaces the cached
//! answer, even one with a later `iat` (a server whose clock runs ahead of
//! the one that refused); a `VALID` answer does not replace a refusal
//! issued after it (a slower request that was sent before the refusal).
//!
//! # The cache
//!
//! One file per (app id, canonical key, domain, fingerprint) in the cache
//! dir ([`ClientBuilder::cache_dir`], by default the platform's cache dir for
//! the app id), named by the SHA-256 of those: the key never appears in
//! clear. It holds the server's token exactly as received and `newest_seen`,
//! the newest time the SDK has seen for it (the answer's `iat`, or the
//! local clock if behind it, at each online validation, and offline the
//! local clock whenever it has moved on by a minute).
//! Files are written to a temporary file, fsynced and renamed over the old
//! one (mode 0600 in a 0700 dir on Unix): readers in any thread or process
//! see a whole old or a whole new file. Writers take the dir's lock (an
//! advisory lock on its `.lock` file) from reading the entry to replacing
//! it, so an older answer decided on before a newer one was written never
//! lands after it. A file that does not parse or whose
//! token does not verify is ignored, and replaced by the next online answer.
//! Editing `newest_seen` can only make the SDK stricter than the signed `iat`
//! (less 26 hours) already does.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cache;
mod client;
mod error;
mod fingerprint;
mod rules;
mod validation;

#[cfg(feature = "blocking")]
pub mod blocking;

#[cfg(feature = "cli")]
pub mod cli;

#[cfg(test)]
mod test_support;

pub use client::{
    Client, ClientBuilder, Deactivation, ValidateOptions, DEFAULT_APP_ID, DEFAULT_TIMEOUT,
    DEFAULT_USER_AGENT,
};
pub use error::Error;
pub use fingerprint::machine_fingerprint;
pub use keysmith_core::key::{is_valid_prefix, KeyError, LicenseKey};
pub use keysmith_core::token::Claims;
pub use keysmith_core::wire::{Code, Status};
pub use rules::CLOCK_TOLERANCE_SECS;
pub use validation::{describe, Source, Validation};

/// Checks a key locally — no client, no network — and returns it in
/// canonical form.
///
/// Forgiving as people type: case, spaces and missing dashes are ignored, and
/// `O` reads as `0`, `I`/`L` as `1`. Every single mistyped symbol and every
/// swap of two neighbours is caught by the key's check symbols. Any prefix of
/// 2–8 letters or digits is accepted; the server (or
/// [`ClientBuilder::key_prefix`]) judges the prefix.
///
/// ```
/// use keysmith::{check_key, KeyError};
///
/// assert_eq!(check_key("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9")?.prefix(), "KS");
/// assert_eq!(check_key("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VZC9"), Err(KeyError::Checksum));
/// # Ok::<(), KeyError>(())
/// ```
pub fn check_key(key: &str) -> Result<LicenseKey, KeyError> {
    LicenseKey::parse(key)
}
