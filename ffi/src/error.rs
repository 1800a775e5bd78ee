//! Result codes, the thread-local last error, and how SDK errors map to
//! them.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

use crate::panic::{ffi_panic_boundary, static_c_str};

/// What a libkeysmith call did. `KS_OK` is success; every other value says
/// why there is no answer, and `ks_last_error()` has the details.
///
/// The numbers are part of the ABI: they are never renumbered and never
/// reused, and new ones may be added, so treat unknown values as errors.
///
/// A decided answer — a valid license, a revoked one, a mistyped key,
/// `OFFLINE_GRACE_EXPIRED`, `CLOCK_TAMPERED` — is `KS_OK` from
/// `ks_client_validate` with a `ks_validation` saying which, never one of
/// these errors.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ks_result {
    /// Success (for `ks_client_validate`: an answer was reached).
    KS_OK = 0,
    /// A required pointer argument was `NULL`.
    KS_NULL_PARAMETER = 1,
    /// An argument is unusable: a string that is not UTF-8, a domain that is
    /// not a host name, a fingerprint outside `A-Z a-z 0-9 . _ : -` (1 to
    /// 128 characters), a zero timeout.
    KS_INVALID_ARGUMENT = 2,
    /// The caller's buffer is too small for the string and its `NUL`.
    KS_INSUFFICIENT_SIZE = 3,
    /// `ks_key_check*`: the string is not a well-formed license key.
    KS_KEY_MALFORMED = 4,
    /// `ks_client_new*`: the public key is not a comma-separated list of
    /// base64 Ed25519 public keys.
    KS_INVALID_PUBLIC_KEY = 5,
    /// `ks_client_new*`: another setting is unusable — a server URL that is
    /// not `http(s)://host` or that ends in the API's own `/api/v1`, a bad
    /// app id or key prefix or user agent, a cache dir (the one given, else
    /// the platform's) that is empty or where no file can be written, no
    /// cache dir given and no home directory to default to.
    KS_INVALID_CONFIG = 6,
    /// No answer: the server could not be reached (or answered 5xx / 429)
    /// and no usable cached answer exists for this request.
    KS_NETWORK = 7,
    /// Like `KS_NETWORK`, and the request timed out (or the server answered
    /// 408 Request Timeout).
    KS_TIMEOUT = 8,
    /// No answer: the server's answer did not verify against the pinned
    /// public keys (forged, replayed or meant for another request) and no
    /// usable cached answer exists.
    KS_UNTRUSTED_ANSWER = 9,
    /// No answer: the server answered something that is not a Keysmith
    /// answer (e.g. a proxy's error page) and no usable cached answer exists.
    KS_PROTOCOL = 10,
    /// `ks_client_validate_offline`: no cached answer for this request.
    KS_NO_CACHE = 11,
    /// `ks_machine_fingerprint`: this machine has no machine id.
    KS_NO_MACHINE_ID = 12,
    /// `ks_client_deactivate`: no license has this key.
    KS_LICENSE_NOT_FOUND = 13,
    /// An error libkeysmith does not know how to classify (a newer SDK
    /// error kind). See `ks_last_error()`.
    KS_INTERNAL_ERROR = 100,
    /// A bug: libkeysmith panicked. The call had no effect on its
    /// out-params; `ks_last_error()` has the panic message.
    KS_PANIC = 101,
}

impl ks_result {
    /// Every result, for tables and tests.
    const ALL: [ks_result; 16] = [
        ks_result::KS_OK,
        ks_result::KS_NULL_PARAMETER,
        ks_result::KS_INVALID_ARGUMENT,
        ks_result::KS_INSUFFICIENT_SIZE,
        ks_result::KS_KEY_MALFORMED,
        ks_result::KS_INVALID_PUBLIC_KEY,
        ks_result::KS_INVALID_CONFIG,
        ks_result::KS_NETWORK,
        ks_result::KS_TIMEOUT,
        ks_result::KS_UNTRUSTED_ANSWER,
        ks_result::KS_PROTOCOL,
        ks_result::KS_NO_CACHE,
        ks_result::KS_NO_MACHINE_ID,
        ks_result::KS_LICENSE_NOT_FOUND,
        ks_result::KS_INTERNAL_ERROR,
        ks_result::KS_PANIC,
    ];

    fn from_u32(value: u32) -> Option<ks_result> {
        ks_result::ALL.into_iter().find(|r| *r as u32 == value)
    }

    fn describe(self) -> &'static std::ffi::CStr {
        match self {
            ks_result::KS_OK => c"success",
            ks_result::KS_NULL_PARAMETER => c"a required argument was NULL",
            ks_result::KS_INVALID_ARGUMENT => c"an argument is not usable",
            ks_result::KS_INSUFFICIENT_SIZE => c"the buffer is too small",
            ks_result::KS_KEY_MALFORMED => c"not a well-formed license key",
            ks_result::KS_INVALID_PUBLIC_KEY => c"the public key is not base64 Ed25519",
            ks_result::KS_INVALID_CONFIG => c"the client configuration is not usable",
            ks_result::KS_NETWORK => {
                c"the license server could not be reached and no cached answer is usable"
            }
            ks_result::KS_TIMEOUT => {
                c"the license server did not answer in time and no cached answer is usable"
            }
            ks_result::KS_UNTRUSTED_ANSWER => {
                c"the license server's answer did not verify and no cached answer is usable"
            }
            ks_result::KS_PROTOCOL => {
                c"the license server's answer was not understood and no cached answer is usable"
            }
            ks_result::KS_NO_CACHE => c"no cached answer for this request",
            ks_result::KS_NO_MACHINE_ID => c"this machine has no machine id",
            ks_result::KS_LICENSE_NOT_FOUND => c"no license has this key",
            ks_result::KS_INTERNAL_ERROR => c"internal error",
            ks_result::KS_PANIC => c"internal error (a panic in libkeysmith)",
        }
    }
}

/// A failed call: its result and the message for `ks_last_error()`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) result: ks_result,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(result: ks_result, message: impl Into<String>) -> Failure {
        Failure {
            result,
            message: message.into(),
        }
    }
}

impl From<sdk::Error> for Failure {
    fn from(e: sdk::Error) -> Failure {
        // Most specific first: a timeout is a network error too.
        let result = if e.is_timeout() {
            ks_result::KS_TIMEOUT
        } else if e.is_network() {
            ks_result::KS_NETWORK
        } else if e.is_signature() {
            ks_result::KS_UNTRUSTED_ANSWER
        } else if e.is_protocol() {
            ks_result::KS_PROTOCOL
        } else if e.is_public_key() {
            ks_result::KS_INVALID_PUBLIC_KEY
        } else if e.is_builder() {
            ks_result::KS_INVALID_CONFIG
        } else if e.is_invalid_argument() {
            ks_result::KS_INVALID_ARGUMENT
        } else if e.is_key_malformed() {
            ks_result::KS_KEY_MALFORMED
        } else if e.is_no_cache() {
            ks_result::KS_NO_CACHE
        } else if e.is_machine_id() {
            ks_result::KS_NO_MACHINE_ID
        } else if e.is_not_found() {
            ks_result::KS_LICENSE_NOT_FOUND
        } else {
            ks_result::KS_INTERNAL_ERROR
        };
        Failure::new(result, message_with_causes(&e))
    }
}

/// The error and its causes, each cause once: the SDK's messages often
/// quote their cause already.
fn message_with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}

/// Turns the outcome of an export's body into its result, recording the
/// message of a failure as the thread's last error.
pub(crate) fn into_result(body: impl FnOnce() -> Result<(), Failure>) -> ks_result {
    match body() {
        Ok(()) => ks_result::KS_OK,
        Err(failure) => {
            set_last_error(&failure.message);
            failure.result
        }
    }
}

thread_local! {
    /// The message of the last failed call on this thread.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Replaces this thread's last error message.
pub(crate) fn set_last_error(message: &str) {
    let message = crate::args::c_string_lossy(message);
    // `try_with`: during thread teardown the slot may be gone; the message
    // is then dropped, never a panic.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = message;
        }
    });
}

/// This thread's last error message, for tests.
#[cfg(test)]
pub(crate) fn last_error_string() -> String {
    LAST_ERROR.with(|slot| slot.borrow().to_string_lossy().into_owned())
}

/// A sentence describing a result number, e.g. for logs:
/// `ks_result_str(KS_NETWORK)`.
///
/// Takes the number as a plain `uint32_t` (which is what `ks_result` is), so
/// any value is safe to pass: an unknown one gives `"unknown ks_result"`.
/// The string is static: never free it.
#[no_mangle]
pub extern "C" fn ks_result_str(result: u32) -> *const c_char {
    ffi_panic_boundary! {
        static_c_str(match ks_result::from_u32(result) {
            Some(known) => known.describe(),
            None => c"unknown ks_result",
        })
    }
}

/// The message of the last call on this thread that failed, in English,
/// with the cause (e.g. `"cannot reach http://…: connection refused, and
/// there is no usable cached answer for this key"`). `""` when no call has
/// failed on this thread yet. Never `NULL`.
///
/// The string belongs to libkeysmith: valid until the next libkeysmith call
/// on this thread; copy it to keep it. Calls that succeed leave it as it
/// was, so read it right after the failure.
#[no_mangle]
pub extern "C" fn ks_last_error() -> *const c_char {
    ffi_panic_boundary! {
        LAST_ERROR
            .try_with(|slot| match slot.try_borrow() {
                // The buffer lives in the thread-local until the next
                // failure on this thread replaces it.
                Ok(message) => message.as_ptr(),
                Err(_) => static_c_str(c""),
            })
            .unwrap_or_else(|_| static_c_str(c""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn numbers_are_stable() {
        // The ABI: these numbers must never change.
        let expected: [(ks_result, u32); 16] = [
            (ks_result::KS_OK, 0),
            (ks_result::KS_NULL_PARAMETER, 1),
            (ks_result::KS_INVALID_ARGUMENT, 2),
            (ks_result::KS_INSUFFICIENT_SIZE, 3),
            (ks_result::KS_KEY_MALFORMED, 4),
            (ks_result::KS_INVALID_PUBLIC_KEY, 5),
            (ks_result::KS_INVALID_CONFIG, 6),
            (ks_result::KS_NETWORK, 7),
            (ks_result::KS_TIMEOUT, 8),
            (ks_result::KS_UNTRUSTED_ANSWER, 9),
            (ks_result::KS_PROTOCOL, 10),
            (ks_result::KS_NO_CACHE, 11),
            (ks_result::KS_NO_MACHINE_ID, 12),
            (ks_result::KS_LICENSE_NOT_FOUND, 13),
            (ks_result::KS_INTERNAL_ERROR, 100),
            (ks_result::KS_PANIC, 101),
        ];
        for (result, number) in expected {
            assert_eq!(result as u32, number, "{result:?}");
            assert_eq!(ks_result::from_u32(number), Some(result));
        }
    }

    #[test]
    fn every_number_has_a_string_and_garbage_is_safe() {
        for value in [0, 1, 7, 12, 13, 99, 100, 101, 102, u32::MAX] {
            let s = ks_result_str(value);
            assert!(!s.is_null());
            // SAFETY: ks_result_str returns static NUL-terminated strings.
            let s = unsafe { CStr::from_ptr(s) }.to_str().unwrap();
            assert!(!s.is_empty());
            let known = ks_result::from_u32(value).is_some();
            assert_eq!(s == "unknown ks_result", !known, "{value}: {s}");
        }
    }

    #[test]
    fn last_error_is_per_thread_and_never_null() {
        std::thread::spawn(|| {
            // SAFETY: ks_last_error never returns NULL and the string
            // stays valid until the next failure on this thread.
            assert_eq!(unsafe { CStr::from_ptr(ks_last_error()) }.to_bytes(), b"");
            set_last_error("first\0with a nul");
            // SAFETY: as above.
            let message = unsafe { CStr::from_ptr(ks_last_error()) };
            assert_eq!(message.to_str().unwrap(), "first\u{fffd}with a nul");
            std::thread::spawn(|| {
                // SAFETY: as above.
                assert_eq!(unsafe { CStr::from_ptr(ks_last_error()) }.to_bytes(), b"");
            })
            .join()
            .unwrap();
        })
        .join()
        .unwrap();
    }
}
