//! The panic boundary every export sits behind (rustls-ffi's `panic.rs`).
//!
//! Unwinding out of an `extern "C"` function aborts the process, so each
//! export wraps its whole body in [`ffi_panic_boundary!`]: a panic becomes
//! `KS_PANIC` (or `NULL`, `false`, `-1`, `0`, nothing — whatever the return
//! type's "no answer" is) and the panic's message becomes the thread's
//! `ks_last_error()`. `tests/panic_boundary.rs` checks that no export
//! forgets it.

use std::ffi::c_char;

use crate::error::{ks_result, set_last_error};

/// What an export returns when its body panicked.
pub(crate) trait PanicValue {
    fn panic_value() -> Self;
}

impl PanicValue for ks_result {
    fn panic_value() -> Self {
        ks_result::KS_PANIC
    }
}

impl<T> PanicValue for *const T {
    fn panic_value() -> Self {
        std::ptr::null()
    }
}

impl<T> PanicValue for *mut T {
    fn panic_value() -> Self {
        std::ptr::null_mut()
    }
}

impl PanicValue for bool {
    fn panic_value() -> Self {
        false
    }
}

impl PanicValue for i64 {
    fn panic_value() -> Self {
        -1
    }
}

impl PanicValue for usize {
    fn panic_value() -> Self {
        0
    }
}

impl PanicValue for () {
    fn panic_value() -> Self {}
}

/// Records a caught panic as the thread's last error.
pub(crate) fn record_panic(payload: Box<dyn std::any::Any + Send>) {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".to_owned());
    set_last_error(&format!("internal error (a panic in libkeysmith): {what}"));
}

/// Runs the body of an export, turning a panic into the return type's
/// [`PanicValue`]. Must be the first (and only) statement of every
/// `#[no_mangle]` function.
macro_rules! ffi_panic_boundary {
    ( $($body:tt)* ) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| { $($body)* })) {
            Ok(value) => value,
            Err(payload) => {
                $crate::panic::record_panic(payload);
                $crate::panic::PanicValue::panic_value()
            }
        }
    };
}
pub(crate) use ffi_panic_boundary;

/// A `NUL`-terminated string with static lifetime, as a C pointer.
pub(crate) fn static_c_str(s: &'static std::ffi::CStr) -> *const c_char {
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panics() -> ks_result {
        ffi_panic_boundary! {
            if std::hint::black_box(true) {
                panic!("boom");
            }
            ks_result::KS_OK
        }
    }

    fn panics_ptr() -> *const c_char {
        ffi_panic_boundary! {
            let v: Vec<u8> = Vec::new();
            static_c_str(if v[std::hint::black_box(3)] == 0 { c"x" } else { c"y" })
        }
    }

    #[test]
    fn a_panic_becomes_ks_panic_and_the_last_error() {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        assert_eq!(panics(), ks_result::KS_PANIC);
        let message = crate::error::last_error_string();
        assert!(message.contains("boom"), "{message}");
        assert!(panics_ptr().is_null());
        std::panic::set_hook(hook);
    }
}
