//! libkeysmith: the C ABI of the Keysmith SDK, for C, C++ and (through
//! ctypes) Python apps. The header is `include/keysmith.h`, generated from
//! this crate by cbindgen; `README.md` beside it has the conventions.
//!
//! This crate only adapts: every rule (key check, token verification,
//! cache, offline grace, clock tamper) is the `keysmith` SDK's, reached
//! through its blocking client.
//!
//! Conventions (rustls-ffi's): every export runs inside
//! [`panic::ffi_panic_boundary!`]; every pointer is checked; out-params are
//! written only on success; every `_new` has a `_free` that takes `NULL`;
//! failures set a thread-local message for `ks_last_error()`.
#![deny(unsafe_op_in_unsafe_fn)]

// cbindgen lists the exports in this order (blank lines keep rustfmt from
// sorting the modules): results and errors, keys, clients, validations.
mod error;

mod key;

mod client;

mod validation;

mod args;
mod panic;

use std::ffi::c_char;

pub use client::{
    ks_client, ks_client_free, ks_client_new, ks_client_new_with_options, ks_client_options,
    ks_client_options_free, ks_client_options_new, ks_client_options_set_key_prefix,
    ks_client_options_set_offline_grace_secs, ks_client_options_set_timeout_ms,
    ks_client_options_set_user_agent, ks_client_validate, ks_client_validate_offline,
};
pub use error::{ks_last_error, ks_result, ks_result_str};
pub use key::{
    ks_key_canonicalize, ks_key_check, ks_key_check_len, ks_machine_fingerprint,
    KS_FINGERPRINT_LEN, KS_KEY_MAX_LEN,
};
pub use validation::{
    ks_validation, ks_validation_code, ks_validation_expires_at, ks_validation_feature,
    ks_validation_features_len, ks_validation_free, ks_validation_has_feature,
    ks_validation_message, ks_validation_offline_until, ks_validation_plan, ks_validation_source,
    ks_validation_valid,
};

use panic::{ffi_panic_boundary, static_c_str};

/// libkeysmith's version, e.g. `"0.1.0"`. Static: never free it.
#[no_mangle]
pub extern "C" fn ks_version() -> *const c_char {
    ffi_panic_boundary! {
        static_c_str(
            match std::ffi::CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
                Ok(version) => version,
                Err(_) => c"unknown",
            },
        )
    }
}
