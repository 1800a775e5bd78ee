//! Checked conversions of the raw arguments of exports: every pointer is
//! checked for `NULL` here, and out-params are written in one place, only
//! on success.

use std::ffi::{c_char, CStr, CString};

use crate::error::{ks_result, Failure};

/// The failure for a required pointer that is `NULL`.
pub(crate) fn null(name: &str) -> Failure {
    Failure::new(
        ks_result::KS_NULL_PARAMETER,
        format!("`{name}` must not be NULL"),
    )
}

/// A required C string argument.
///
/// # Safety
///
/// `ptr` is `NULL` or points to a `NUL`-terminated string that stays valid
/// and unchanged for `'a`.
pub(crate) unsafe fn c_str<'a>(ptr: *const c_char, name: &str) -> Result<&'a CStr, Failure> {
    if ptr.is_null() {
        return Err(null(name));
    }
    // SAFETY: not NULL (checked above); the caller guarantees the rest.
    Ok(unsafe { CStr::from_ptr(ptr) })
}

/// A required UTF-8 string argument.
///
/// # Safety
///
/// As [`c_str`].
pub(crate) unsafe fn utf8<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Failure> {
    // SAFETY: the caller's guarantee is the one `c_str` needs.
    let s = unsafe { c_str(ptr, name) }?;
    s.to_str().map_err(|_| {
        Failure::new(
            ks_result::KS_INVALID_ARGUMENT,
            format!("`{name}` is not UTF-8"),
        )
    })
}

/// An optional UTF-8 string argument: `NULL` means none.
///
/// # Safety
///
/// As [`c_str`].
pub(crate) unsafe fn opt_utf8<'a>(
    ptr: *const c_char,
    name: &str,
) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's guarantee is the one `utf8` needs.
    unsafe { utf8(ptr, name) }.map(Some)
}

/// A shared reference to an object libkeysmith handed out.
///
/// # Safety
///
/// `ptr` is `NULL` or a pointer this library returned for a `T` and that
/// has not been freed; it stays valid for `'a`.
pub(crate) unsafe fn obj<'a, T>(ptr: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller guarantees `ptr` is NULL or a live `T`.
    unsafe { ptr.as_ref() }.ok_or_else(|| null(name))
}

/// A mutable reference to an object libkeysmith handed out.
///
/// # Safety
///
/// As [`obj`], and no other reference to the object is used during `'a`.
pub(crate) unsafe fn obj_mut<'a, T>(ptr: *mut T, name: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: the caller guarantees `ptr` is NULL or a live, unaliased `T`.
    unsafe { ptr.as_mut() }.ok_or_else(|| null(name))
}

/// An out-param `T **out`, checked before any work is done and written
/// only at the end, on success.
pub(crate) struct Out<T> {
    ptr: *mut *mut T,
}

impl<T> Out<T> {
    /// # Safety
    ///
    /// `ptr` is `NULL` or valid for a write of one `*mut T`.
    pub(crate) unsafe fn new(ptr: *mut *mut T, name: &str) -> Result<Out<T>, Failure> {
        if ptr.is_null() {
            return Err(null(name));
        }
        Ok(Out { ptr })
    }

    /// Hands `value` to the caller, who frees it with the type's `_free`.
    pub(crate) fn write(self, value: T) {
        let raw = Box::into_raw(Box::new(value));
        // SAFETY: `ptr` is not NULL and valid for writes (`Out::new`'s
        // contract); `write` does not read or drop what was there.
        unsafe { self.ptr.write(raw) };
    }
}

/// Frees an object handed out by [`Out::write`]; `NULL` is a no-op.
///
/// # Safety
///
/// `ptr` is `NULL` or came from [`Out::write`] for a `T` and was not freed.
pub(crate) unsafe fn free<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: `ptr` came from `Box::into_raw` in `Out::write` and is
        // freed once (the caller's contract).
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// Copies `s` and a `NUL` into the caller's buffer `buf` of `buf_len` bytes,
/// then writes the length without the `NUL` to `out_len` if that is not
/// `NULL`. Nothing is written unless everything fits.
///
/// # Safety
///
/// `buf` is `NULL` or valid for writes of `buf_len` bytes; `out_len` is
/// `NULL` or valid for a write of one `size_t`.
pub(crate) unsafe fn write_c_buffer(
    s: &str,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> Result<(), Failure> {
    if buf.is_null() {
        return Err(null("buf"));
    }
    if buf_len < s.len() + 1 {
        return Err(Failure::new(
            ks_result::KS_INSUFFICIENT_SIZE,
            format!(
                "the buffer holds {buf_len} bytes; {} are needed",
                s.len() + 1
            ),
        ));
    }
    // SAFETY: `buf` is valid for `buf_len >= s.len() + 1` bytes (checked
    // above, the rest is the caller's contract), and a Rust string cannot
    // overlap a buffer the caller lent us for writing.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        buf.add(s.len()).write(0);
    }
    if !out_len.is_null() {
        // SAFETY: not NULL, and valid for writes by the caller's contract.
        unsafe { out_len.write(s.len()) };
    }
    Ok(())
}

/// `s` as a C string; a `NUL` inside (which no Keysmith string has) becomes
/// U+FFFD rather than cutting the string short or failing.
pub(crate) fn c_string_lossy(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| {
        CString::new(s.replace('\0', "\u{fffd}")).expect("no NUL left after replacing them")
    })
}
