//! `ks_client`: the blocking SDK client behind a C handle, and its options.

use std::ffi::c_char;
use std::time::Duration;

use crate::args::{c_str, free, obj, obj_mut, opt_utf8, utf8, Out};
use crate::error::{into_result, ks_result, Failure};
use crate::panic::ffi_panic_boundary;
use crate::validation::ks_validation;

/// A license client: validates keys against one Keysmith server, verifies
/// every answer with the pinned public key, and answers from its cache
/// when the server cannot be reached. Opaque; make it with `ks_client_new`,
/// free it with `ks_client_free`.
///
/// Thread-safe: one client may be used by any number of threads at once
/// (each `ks_client_validate` blocks only its own thread). Make one at
/// start-up and share it. Free it only once no thread uses it any more.
#[allow(non_camel_case_types)]
pub struct ks_client {
    inner: sdk::blocking::Client,
}

/// Optional settings for `ks_client_new_with_options`. Opaque; make it with
/// `ks_client_options_new`, free it with `ks_client_options_free` (the
/// client does not keep it). Not thread-safe: set it up on one thread.
#[allow(non_camel_case_types)]
#[derive(Default)]
pub struct ks_client_options {
    timeout: Option<Duration>,
    offline_grace: Option<Duration>,
    user_agent: Option<String>,
    key_prefix: Option<String>,
}

/// Makes a set of client options, all at their defaults.
///
/// # Safety
///
/// `out` is `NULL` (`KS_NULL_PARAMETER`) or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn ks_client_options_new(out: *mut *mut ks_client_options) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: `out` is NULL or valid for one write (the caller's contract).
            let out = unsafe { Out::new(out, "out") }?;
            out.write(ks_client_options::default());
            Ok(())
        })
    }
}

/// How long one request to the server may take, connecting included,
/// before the client answers from its cache. Default 10 000 ms; 0 is
/// `KS_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `options` is `NULL` or live and not used by another thread meanwhile.
#[no_mangle]
pub unsafe extern "C" fn ks_client_options_set_timeout_ms(
    options: *mut ks_client_options,
    timeout_ms: u64,
) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: `options` is NULL or live and unaliased (the caller's contract).
            let options = unsafe { obj_mut(options, "options") }?;
            if timeout_ms == 0 {
                return Err(Failure::new(ks_result::KS_INVALID_ARGUMENT, "the timeout must be above 0 ms"));
            }
            options.timeout = Some(Duration::from_millis(timeout_ms));
            Ok(())
        })
    }
}

/// Trusts cached answers offline for at most `grace_secs` seconds after the
/// server issued them. This can only shorten the grace the server grants
/// (the plan's `offline_grace_days`), never lengthen it. 0 trusts no cached
/// valid answer.
///
/// # Safety
///
/// `options` is `NULL` or live and not used by another thread meanwhile.
#[no_mangle]
pub unsafe extern "C" fn ks_client_options_set_offline_grace_secs(
    options: *mut ks_client_options,
    grace_secs: u64,
) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: `options` is NULL or live and unaliased (the caller's contract).
            let options = unsafe { obj_mut(options, "options") }?;
            options.offline_grace = Some(Duration::from_secs(grace_secs));
            Ok(())
        })
    }
}

/// The `User-Agent` of requests (the server records it in the license's
/// usage history), e.g. `"acme-editor/2.1"`. Default `keysmith-c/<version>`
/// (`keysmith-python/<version>` from the Python package).
///
/// # Safety
///
/// `options` is `NULL` or live and not used by another thread meanwhile;
/// `user_agent` is `NULL` or `NUL`-terminated (copied).
#[no_mangle]
pub unsafe extern "C" fn ks_client_options_set_user_agent(
    options: *mut ks_client_options,
    user_agent: *const c_char,
) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: `options` is NULL or live and unaliased (the caller's contract).
            let options = unsafe { obj_mut(options, "options") }?;
            // SAFETY: `user_agent` is NULL or NUL-terminated (the caller's contract).
            let user_agent = unsafe { utf8(user_agent, "user_agent") }?;
            // What an HTTP header may hold: no control character but a tab.
            if user_agent.chars().any(|c| c.is_control() && c != '\t') {
                return Err(Failure::new(
                    ks_result::KS_INVALID_ARGUMENT,
                    "the user agent must not contain control characters (a line break, …)",
                ));
            }
            options.user_agent = Some(user_agent.to_owned());
            Ok(())
        })
    }
}

/// Also requires keys to carry this prefix (e.g. `"KS"`), so that a key of
/// another vendor is `KEY_MALFORMED` without a request. By default any
/// well-formed key is sent and the server judges its prefix. A prefix that
/// is not 2 to 8 uppercase letters or digits is `KS_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `options` is `NULL` or live and not used by another thread meanwhile;
/// `prefix` is `NULL` or `NUL`-terminated (copied).
#[no_mangle]
pub unsafe extern "C" fn ks_client_options_set_key_prefix(
    options: *mut ks_client_options,
    prefix: *const c_char,
) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: `options` is NULL or live and unaliased (the caller's contract).
            let options = unsafe { obj_mut(options, "options") }?;
            // SAFETY: `prefix` is NULL or NUL-terminated (the caller's contract).
            let prefix = unsafe { utf8(prefix, "prefix") }?;
            if !sdk::is_valid_prefix(prefix) {
                return Err(Failure::new(
                    ks_result::KS_INVALID_ARGUMENT,
                    format!("key prefix {prefix:?} must be 2 to 8 uppercase letters or digits"),
                ));
            }
            options.key_prefix = Some(prefix.to_owned());
            Ok(())
        })
    }
}

/// Frees client options. `NULL` is a no-op.
///
/// # Safety
///
/// `options` is `NULL` or came from `ks_client_options_new` and was not
/// freed.
#[no_mangle]
pub unsafe extern "C" fn ks_client_options_free(options: *mut ks_client_options) {
    ffi_panic_boundary! {
        // SAFETY: `options` is NULL or from `Out::write`, freed once (the
        // caller's contract).
        unsafe { free(options) }
    }
}

/// Makes a client for the Keysmith server at `server_url`
/// (`"https://license.example.com"`), with default options. See
/// `ks_client_new_with_options`.
///
/// # Safety
///
/// As `ks_client_new_with_options` with `options` `NULL`.
#[no_mangle]
pub unsafe extern "C" fn ks_client_new(
    server_url: *const c_char,
    public_key_b64: *const c_char,
    app_id: *const c_char,
    cache_dir: *const c_char,
    out: *mut *mut ks_client,
) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: the caller's contract is the one `new_client` needs.
            unsafe { new_client(server_url, public_key_b64, app_id, cache_dir, std::ptr::null(), out) }
        })
    }
}

/// Makes a client for the Keysmith server at `server_url` and writes it to
/// `*out`; free it with `ks_client_free`.
///
/// - `public_key_b64`: the server's Ed25519 public key, base64 as
///   `GET /api/v1/public-key` shows it — compile it into the app, never
///   fetch it at run time. Several keys separated by commas are all
///   trusted (key rotation). A malformed key is `KS_INVALID_PUBLIC_KEY`.
/// - `app_id`: names the app (1–64 of `A-Z a-z 0-9 . _ -`); it picks the
///   default cache dir and salts the cache file names.
/// - `cache_dir`: where cached answers live; `NULL` for the platform's cache
///   dir for `app_id` (`~/.cache/<app_id>` on Linux).
/// - `options`: `NULL` for the defaults; not kept after the call.
///
/// Sends nothing: the first request is made by `ks_client_validate`.
/// `KS_INVALID_CONFIG` for a bad URL, app id or key prefix, or a cache dir
/// that is empty or not writable (`NULL` picks the platform's).
///
/// # Safety
///
/// Each string is `NULL` or `NUL`-terminated (all are copied); `options` is
/// `NULL` or live; `out` is `NULL` or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn ks_client_new_with_options(
    server_url: *const c_char,
    public_key_b64: *const c_char,
    app_id: *const c_char,
    cache_dir: *const c_char,
    options: *const ks_client_options,
    out: *mut *mut ks_client,
) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: the caller's contract is the one `new_client` needs.
            unsafe { new_client(server_url, public_key_b64, app_id, cache_dir, options, out) }
        })
    }
}

/// # Safety
///
/// As `ks_client_new_with_options`.
unsafe fn new_client(
    server_url: *const c_char,
    public_key_b64: *const c_char,
    app_id: *const c_char,
    cache_dir: *const c_char,
    options: *const ks_client_options,
    out: *mut *mut ks_client,
) -> Result<(), Failure> {
    // SAFETY: `out` is NULL or valid for one write (the caller's contract).
    let out = unsafe { Out::new(out, "out") }?;
    // SAFETY: each string is NULL or NUL-terminated (the caller's contract).
    let (server_url, public_key, app_id, cache_dir) = unsafe {
        (
            utf8(server_url, "server_url")?,
            utf8(public_key_b64, "public_key_b64")?,
            utf8(app_id, "app_id")?,
            opt_utf8(cache_dir, "cache_dir")?,
        )
    };
    let mut builder = sdk::blocking::Client::builder(server_url)
        .public_key(public_key)
        .app_id(app_id)
        .user_agent(concat!("keysmith-c/", env!("CARGO_PKG_VERSION")));
    if let Some(dir) = cache_dir {
        builder = builder.cache_dir(dir);
    }
    // SAFETY: NULL or a live ks_client_options (the caller's contract).
    if let Some(options) = unsafe { options.as_ref() } {
        if let Some(timeout) = options.timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(grace) = options.offline_grace {
            builder = builder.offline_grace(grace);
        }
        if let Some(user_agent) = &options.user_agent {
            builder = builder.user_agent(user_agent.clone());
        }
        if let Some(prefix) = &options.key_prefix {
            builder = builder.key_prefix(prefix.clone());
        }
    }
    out.write(ks_client {
        inner: builder.build()?,
    });
    Ok(())
}

/// Validates `key` for this app and writes the answer to `*out`; free it
/// with `ks_validation_free`.
///
/// Returns `KS_OK` whenever it reached an answer, valid or not — read
/// `ks_validation_valid` and `ks_validation_code`: a mistyped key is
/// `KEY_MALFORMED` (decided locally, nothing sent), a revoked license
/// `LICENSE_REVOKED`, and offline the cached answer stands until its grace
/// runs out (`OFFLINE_GRACE_EXPIRED`) or the clock was set back
/// (`CLOCK_TAMPERED`). Returns an error, and writes nothing, only when
/// there is no answer: bad arguments (`KS_NULL_PARAMETER`,
/// `KS_INVALID_ARGUMENT`), or the server is unreachable (`KS_NETWORK`,
/// `KS_TIMEOUT`) or untrusted (`KS_UNTRUSTED_ANSWER`, `KS_PROTOCOL`) and
/// no usable answer is cached.
///
/// - `domain`: the domain the license is used on, taking a domain seat;
///   `NULL` for none.
/// - `fingerprint`: the machine, taking a machine seat (see
///   `ks_machine_fingerprint`); `NULL` for none.
///
/// Blocks the calling thread for up to about the client's timeout. Any
/// number of threads may call it on one client at once.
///
/// # Safety
///
/// `client` is `NULL` or a live client; `key`, `domain` and `fingerprint`
/// are `NULL` or `NUL`-terminated; `out` is `NULL` or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn ks_client_validate(
    client: *const ks_client,
    key: *const c_char,
    domain: *const c_char,
    fingerprint: *const c_char,
    out: *mut *mut ks_validation,
) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: the caller's contract is the one `validate` needs.
            unsafe { validate(client, key, domain, fingerprint, out, Mode::Online) }
        })
    }
}

/// Like `ks_client_validate` but never touches the network: answers from
/// the cache alone, by the same offline rules (`OFFLINE_GRACE_EXPIRED`,
/// `CLOCK_TAMPERED`, a cached revocation replayed). `KS_NO_CACHE` when no
/// answer is cached for this key, domain and fingerprint. For a quick
/// check at start-up before the online one.
///
/// # Safety
///
/// As `ks_client_validate`.
#[no_mangle]
pub unsafe extern "C" fn ks_client_validate_offline(
    client: *const ks_client,
    key: *const c_char,
    domain: *const c_char,
    fingerprint: *const c_char,
    out: *mut *mut ks_validation,
) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: the caller's contract is the one `validate` needs.
            unsafe { validate(client, key, domain, fingerprint, out, Mode::Offline) }
        })
    }
}

/// Frees the seat this app holds on `key`: the domain's and/or the
/// machine fingerprint's (at least one not `NULL`), so that another domain
/// or machine can take it — the app moves to a new machine — and removes
/// the cached answer for that key, domain and fingerprint, so that the app
/// does not go on working here offline. Writes whether each seat was held
/// (and is now free) to `*domain_freed` and `*machine_freed`, each `NULL`
/// if not wanted; a seat that was not held is not an error.
///
/// Needs the server; no cached answer stands in. Errors:
/// `KS_KEY_MALFORMED` (nothing sent), `KS_INVALID_ARGUMENT` (neither a
/// domain nor a fingerprint, or an unusable one), `KS_LICENSE_NOT_FOUND`
/// (no license has this key), `KS_NETWORK`, `KS_TIMEOUT`, `KS_PROTOCOL`,
/// and `KS_INVALID_CONFIG` when the seat was freed but the cached answer
/// cannot be removed (the cache dir became unusable).
///
/// # Safety
///
/// `client` is `NULL` or a live client; `key`, `domain` and `fingerprint`
/// are `NULL` or `NUL`-terminated; `domain_freed` and `machine_freed` are
/// `NULL` or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn ks_client_deactivate(
    client: *const ks_client,
    key: *const c_char,
    domain: *const c_char,
    fingerprint: *const c_char,
    domain_freed: *mut bool,
    machine_freed: *mut bool,
) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: `client` is NULL or live (the caller's contract).
            let client = unsafe { obj(client, "client") }?;
            // SAFETY: the strings are NULL or NUL-terminated (the caller's
            // contract).
            let (key, options) = unsafe { request(key, domain, fingerprint) }?;
            let freed = client.inner.deactivate(&key, &options)?;
            for (out, value) in [
                (domain_freed, freed.domain_freed),
                (machine_freed, freed.machine_freed),
            ] {
                if !out.is_null() {
                    // SAFETY: not NULL, and valid for one write (the
                    // caller's contract).
                    unsafe { out.write(value) };
                }
            }
            Ok(())
        })
    }
}

/// The key and options of a request from C strings.
///
/// # Safety
///
/// The strings are `NULL` or `NUL`-terminated.
unsafe fn request(
    key: *const c_char,
    domain: *const c_char,
    fingerprint: *const c_char,
) -> Result<(String, sdk::ValidateOptions), Failure> {
    // SAFETY: the caller's contract.
    let (key, domain, fingerprint) = unsafe {
        (
            c_str(key, "key")?,
            opt_utf8(domain, "domain")?,
            opt_utf8(fingerprint, "fingerprint")?,
        )
    };
    // A key that is not UTF-8 cannot be well-formed: handing the SDK its
    // lossy text gets the answer such a key deserves, KEY_MALFORMED.
    let key = key.to_string_lossy().into_owned();
    let mut options = sdk::ValidateOptions::new();
    if let Some(domain) = domain {
        options = options.domain(domain);
    }
    if let Some(fingerprint) = fingerprint {
        options = options.fingerprint(fingerprint);
    }
    Ok((key, options))
}

#[derive(Clone, Copy)]
enum Mode {
    Online,
    Offline,
}

/// # Safety
///
/// As `ks_client_validate`.
unsafe fn validate(
    client: *const ks_client,
    key: *const c_char,
    domain: *const c_char,
    fingerprint: *const c_char,
    out: *mut *mut ks_validation,
    mode: Mode,
) -> Result<(), Failure> {
    // SAFETY: `client` is NULL or live (the caller's contract).
    let client = unsafe { obj(client, "client") }?;
    // SAFETY: `out` is NULL or valid for one write (the caller's contract).
    let out = unsafe { Out::new(out, "out") }?;
    // SAFETY: the strings are NULL or NUL-terminated (the caller's contract).
    let (key, options) = unsafe { request(key, domain, fingerprint) }?;
    let answer = match mode {
        Mode::Online => client.inner.validate(&key, &options),
        Mode::Offline => client.inner.validate_offline(&key, &options),
    }?;
    out.write(ks_validation::new(answer));
    Ok(())
}

/// Frees a client. `NULL` is a no-op. Validations it returned stay valid.
///
/// # Safety
///
/// `client` is `NULL` or a client from this library that was not freed,
/// and no other thread is using it (or will).
#[no_mangle]
pub unsafe extern "C" fn ks_client_free(client: *mut ks_client) {
    ffi_panic_boundary! {
        // SAFETY: `client` is NULL or from `Out::write`, freed once, and
        // unused by other threads (the caller's contract).
        unsafe { free(client) }
    }
}
