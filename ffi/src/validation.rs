//! `ks_validation`: one answer, with its strings owned by it.

use std::ffi::{c_char, CString};

use crate::args::{c_string_lossy, free, utf8};
use crate::panic::ffi_panic_boundary;

/// The answer of a validation: valid or not, why, where it came from, and
/// what the license grants. Opaque; read it with the `ks_validation_*`
/// functions and free it with `ks_validation_free`.
///
/// It owns every string its accessors return: they stay valid, unchanged,
/// until `ks_validation_free`. It does not refer to the client that made
/// it, so it may outlive that client. Reading one `ks_validation` from
/// several threads at once is safe; freeing it while another thread reads
/// it is not.
#[allow(non_camel_case_types)]
pub struct ks_validation {
    answer: sdk::Validation,
    code: CString,
    source: CString,
    message: CString,
    plan: Option<CString>,
    features: Vec<CString>,
}

impl ks_validation {
    pub(crate) fn new(answer: sdk::Validation) -> ks_validation {
        ks_validation {
            code: c_string_lossy(answer.code.as_str()),
            source: c_string_lossy(answer.source.as_str()),
            message: c_string_lossy(answer.message()),
            plan: answer.plan.as_deref().map(c_string_lossy),
            features: answer.features.iter().map(|f| c_string_lossy(f)).collect(),
            answer,
        }
    }
}

/// Borrows `v`, or `None` for `NULL`.
///
/// # Safety
///
/// `v` is `NULL` or a live `ks_validation` from this library.
unsafe fn get<'a>(v: *const ks_validation) -> Option<&'a ks_validation> {
    // SAFETY: the caller guarantees `v` is NULL or a live ks_validation.
    unsafe { v.as_ref() }
}

/// Whether the app may run: true exactly when the code is `"VALID"`.
/// False for `NULL`.
///
/// # Safety
///
/// `v` is `NULL` or a `ks_validation` that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn ks_validation_valid(v: *const ks_validation) -> bool {
    ffi_panic_boundary! {
        // SAFETY: `v` is NULL or live (the caller's contract).
        unsafe { get(v) }.is_some_and(|v| v.answer.valid)
    }
}

/// Why: `"VALID"`, `"KEY_MALFORMED"`, `"LICENSE_NOT_FOUND"`,
/// `"LICENSE_SUSPENDED"`, `"LICENSE_REVOKED"`, `"LICENSE_EXPIRED"`,
/// `"DOMAIN_LIMIT_REACHED"`, `"MACHINE_LIMIT_REACHED"`,
/// `"OFFLINE_GRACE_EXPIRED"` or `"CLOCK_TAMPERED"` (new codes may be
/// added: treat unknown ones as not licensed). A server that rate-limits
/// the app or refuses the request's domain gives no answer:
/// `ks_client_validate` fails instead (`KS_NETWORK`,
/// `KS_INVALID_ARGUMENT`). `NULL` for `NULL`.
///
/// Owned by `v`: valid until `ks_validation_free(v)`.
///
/// # Safety
///
/// `v` is `NULL` or a `ks_validation` that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn ks_validation_code(v: *const ks_validation) -> *const c_char {
    ffi_panic_boundary! {
        // SAFETY: `v` is NULL or live (the caller's contract).
        unsafe { get(v) }.map_or(std::ptr::null(), |v| v.code.as_ptr())
    }
}

/// Where the answer came from: `"online"` (the server, just now),
/// `"cache"` (the server was unreachable: a cached answer, or a verdict on
/// it such as `OFFLINE_GRACE_EXPIRED`) or `"local"` (`KEY_MALFORMED`
/// decided without asking anyone). `NULL` for `NULL`.
///
/// Owned by `v`: valid until `ks_validation_free(v)`.
///
/// # Safety
///
/// `v` is `NULL` or a `ks_validation` that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn ks_validation_source(v: *const ks_validation) -> *const c_char {
    ffi_panic_boundary! {
        // SAFETY: `v` is NULL or live (the caller's contract).
        unsafe { get(v) }.map_or(std::ptr::null(), |v| v.source.as_ptr())
    }
}

/// A sentence for a person about the code, in English, e.g. `"the license
/// has been revoked"`. `NULL` for `NULL`.
///
/// Owned by `v`: valid until `ks_validation_free(v)`.
///
/// # Safety
///
/// `v` is `NULL` or a `ks_validation` that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn ks_validation_message(v: *const ks_validation) -> *const c_char {
    ffi_panic_boundary! {
        // SAFETY: `v` is NULL or live (the caller's contract).
        unsafe { get(v) }.map_or(std::ptr::null(), |v| v.message.as_ptr())
    }
}

/// The license's plan (e.g. `"professional"`), or `NULL` when there is no
/// license (`KEY_MALFORMED`, `LICENSE_NOT_FOUND`) or `v` is `NULL`.
///
/// Owned by `v`: valid until `ks_validation_free(v)`.
///
/// # Safety
///
/// `v` is `NULL` or a `ks_validation` that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn ks_validation_plan(v: *const ks_validation) -> *const c_char {
    ffi_panic_boundary! {
        // SAFETY: `v` is NULL or live (the caller's contract).
        unsafe { get(v) }
            .and_then(|v| v.plan.as_ref())
            .map_or(std::ptr::null(), |plan| plan.as_ptr())
    }
}

/// When the license itself expires, in Unix seconds (UTC); `-1` for a
/// perpetual license, when there is no license, or for `NULL`.
///
/// # Safety
///
/// `v` is `NULL` or a `ks_validation` that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn ks_validation_expires_at(v: *const ks_validation) -> i64 {
    ffi_panic_boundary! {
        // SAFETY: `v` is NULL or live (the caller's contract).
        unsafe { get(v) }
            .and_then(|v| v.answer.expires_at)
            .map_or(-1, |t| t.timestamp())
    }
}

/// Until when this answer may be trusted offline, in Unix seconds (UTC):
/// the server's signed limit, shortened by the client's offline grace.
/// `-1` for `KEY_MALFORMED` (no signed answer) or `NULL`. For an invalid
/// answer (revoked, suspended, …) it is the time it was issued: a cached
/// invalid answer is replayed offline whatever the time, never turned valid.
///
/// # Safety
///
/// `v` is `NULL` or a `ks_validation` that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn ks_validation_offline_until(v: *const ks_validation) -> i64 {
    ffi_panic_boundary! {
        // SAFETY: `v` is NULL or live (the caller's contract).
        unsafe { get(v) }
            .and_then(|v| v.answer.offline_until)
            .map_or(-1, |t| t.timestamp())
    }
}

/// Whether the license is valid *and* its plan grants `feature` (e.g.
/// `"sso"`). False whenever the answer is not valid, so gating a feature on
/// this alone is safe. False for `NULL` arguments.
///
/// # Safety
///
/// `v` is `NULL` or a `ks_validation` that has not been freed; `feature`
/// is `NULL` or `NUL`-terminated.
#[no_mangle]
pub unsafe extern "C" fn ks_validation_has_feature(
    v: *const ks_validation,
    feature: *const c_char,
) -> bool {
    ffi_panic_boundary! {
        // SAFETY: `v` is NULL or live (the caller's contract).
        let Some(v) = (unsafe { get(v) }) else {
            return false;
        };
        // SAFETY: `feature` is NULL or NUL-terminated (the caller's contract).
        unsafe { utf8(feature, "feature") }.is_ok_and(|feature| v.answer.has_feature(feature))
    }
}

/// How many features the license's plan lists (also when the answer is
/// not valid: use `ks_validation_has_feature` to gate). 0 for `NULL`.
///
/// # Safety
///
/// `v` is `NULL` or a `ks_validation` that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn ks_validation_features_len(v: *const ks_validation) -> usize {
    ffi_panic_boundary! {
        // SAFETY: `v` is NULL or live (the caller's contract).
        unsafe { get(v) }.map_or(0, |v| v.features.len())
    }
}

/// The feature at `index` (0-based, below `ks_validation_features_len`);
/// `NULL` past the end or for `NULL`.
///
/// Owned by `v`: valid until `ks_validation_free(v)`.
///
/// # Safety
///
/// `v` is `NULL` or a `ks_validation` that has not been freed.
#[no_mangle]
pub unsafe extern "C" fn ks_validation_feature(
    v: *const ks_validation,
    index: usize,
) -> *const c_char {
    ffi_panic_boundary! {
        // SAFETY: `v` is NULL or live (the caller's contract).
        unsafe { get(v) }
            .and_then(|v| v.features.get(index))
            .map_or(std::ptr::null(), |f| f.as_ptr())
    }
}

/// Frees a validation and every string it returned. `NULL` is a no-op.
///
/// # Safety
///
/// `v` is `NULL` or a `ks_validation` from this library that has not been
/// freed and that no other thread is reading.
#[no_mangle]
pub unsafe extern "C" fn ks_validation_free(v: *mut ks_validation) {
    ffi_panic_boundary! {
        // SAFETY: `v` is NULL or came from `Out::write` and is freed once
        // (the caller's contract).
        unsafe { free(v) }
    }
}
