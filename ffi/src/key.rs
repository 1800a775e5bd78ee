//! Local key checks and the machine fingerprint: no client, no network.

use std::ffi::c_char;

use crate::args::{c_str, null, utf8, write_c_buffer};
use crate::error::{into_result, ks_result, Failure};
use crate::panic::ffi_panic_boundary;

/// The longest canonical key, in bytes without the `NUL`: an 8-symbol
/// prefix, then six groups of four, dash-separated. A buffer of
/// `KS_KEY_MAX_LEN + 1` bytes holds any key `ks_key_canonicalize` writes.
pub const KS_KEY_MAX_LEN: usize = 38;

/// The length of a `ks_machine_fingerprint`, in bytes without the `NUL`
/// (64 hex digits). A buffer needs `KS_FINGERPRINT_LEN + 1` bytes.
pub const KS_FINGERPRINT_LEN: usize = 64;

fn check(key: &[u8]) -> Result<sdk::LicenseKey, Failure> {
    // Bytes that are not UTF-8 cannot spell a key: malformed, like a typo.
    let key = std::str::from_utf8(key).map_err(|_| {
        Failure::new(
            ks_result::KS_KEY_MALFORMED,
            "not a license key: it is not UTF-8 text",
        )
    })?;
    sdk::check_key(key).map_err(|e| sdk::Error::from(e).into())
}

/// Checks a license key locally, as a person types it — no client, no
/// network: `KS_OK` if it is well-formed, `KS_KEY_MALFORMED` if not (a
/// typo, a swapped pair, a wrong length; `ks_last_error()` says which).
///
/// Forgiving like the server: case, spaces and missing dashes are ignored,
/// `O` reads as `0` and `I`/`L` as `1`. Any prefix of 2–8 letters or digits
/// passes; the server judges the prefix.
///
/// # Safety
///
/// `key` is `NULL` (`KS_NULL_PARAMETER`) or a `NUL`-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ks_key_check(key: *const c_char) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: `key` is NULL or NUL-terminated (the caller's contract).
            let key = unsafe { c_str(key, "key") }?;
            check(key.to_bytes()).map(drop)
        })
    }
}

/// `ks_key_check` for a buffer that need not end in `NUL`: the `len` bytes
/// at `key` (e.g. straight from a text field).
///
/// # Safety
///
/// `key` is `NULL` (`KS_NULL_PARAMETER`) or valid for reads of `len`
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn ks_key_check_len(key: *const c_char, len: usize) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            if key.is_null() {
                return Err(null("key"));
            }
            // SAFETY: `key` is not NULL and valid for `len` bytes (the
            // caller's contract); the slice is only read during this call.
            let bytes = unsafe { std::slice::from_raw_parts(key.cast::<u8>(), len) };
            check(bytes).map(drop)
        })
    }
}

/// Checks `key` like `ks_key_check` and writes its canonical form
/// (uppercase, dashes, `O`→`0`, `I`/`L`→`1`: `"KS-7H2K-Q9WM-…"`) and a
/// `NUL` into `buf`, which holds `buf_len` bytes; then the length without
/// the `NUL` into `*out_len` unless `out_len` is `NULL`.
///
/// `KS_KEY_MALFORMED` if the key is not well-formed, `KS_INSUFFICIENT_SIZE`
/// if `buf` is too small (`KS_KEY_MAX_LEN + 1` always suffices); then
/// nothing is written.
///
/// # Safety
///
/// `key` is `NULL` or `NUL`-terminated; `buf` is `NULL` or valid for writes
/// of `buf_len` bytes; `out_len` is `NULL` or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn ks_key_canonicalize(
    key: *const c_char,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: `key` is NULL or NUL-terminated (the caller's contract).
            let key = unsafe { c_str(key, "key") }?;
            if buf.is_null() {
                return Err(null("buf"));
            }
            let canonical = check(key.to_bytes())?;
            // SAFETY: `buf` and `out_len` are as `write_c_buffer` needs
            // (the caller's contract).
            unsafe { write_c_buffer(canonical.as_str(), buf, buf_len, out_len) }
        })
    }
}

/// Writes this machine's fingerprint for `app_id` — 64 hex digits of a
/// salted SHA-256 of the machine id, the same on every run, different per
/// app id, never the raw machine id — and a `NUL` into `buf` (`buf_len`
/// bytes, at least `KS_FINGERPRINT_LEN + 1`), then its length into
/// `*out_len` unless `out_len` is `NULL`. Pass it to `ks_client_validate`
/// to take a machine seat.
///
/// The machine id is `/etc/machine-id` on Linux, the hardware UUID on
/// macOS, the `MachineGuid` on Windows, `/etc/hostid` on FreeBSD.
/// `KS_NO_MACHINE_ID` where the machine has none (e.g. a minimal
/// container): use a fingerprint of your own there. `KS_INVALID_ARGUMENT`
/// for an app id a client would refuse (1–64 of `A-Z a-z 0-9 . _ -`, not
/// starting with a dot).
///
/// # Safety
///
/// `app_id` is `NULL` or `NUL`-terminated; `buf` is `NULL` or valid for
/// writes of `buf_len` bytes; `out_len` is `NULL` or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn ks_machine_fingerprint(
    app_id: *const c_char,
    buf: *mut c_char,
    buf_len: usize,
    out_len: *mut usize,
) -> ks_result {
    ffi_panic_boundary! {
        into_result(|| {
            // SAFETY: `app_id` is NULL or NUL-terminated (the caller's contract).
            let app_id = unsafe { utf8(app_id, "app_id") }?;
            if buf.is_null() {
                return Err(null("buf"));
            }
            let fingerprint = sdk::machine_fingerprint(app_id)?;
            // SAFETY: `buf` and `out_len` are as `write_c_buffer` needs
            // (the caller's contract).
            unsafe { write_c_buffer(&fingerprint, buf, buf_len, out_len) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    const KEY: &str = "KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9";

    #[test]
    fn checks_keys_and_rejects_null_and_garbage() {
        let good = CString::new(KEY.to_lowercase().replace('-', " ")).unwrap();
        let typo = CString::new(KEY.replace("VCZ9", "VCZ8")).unwrap();
        let latin1 = [b'K', b'S', 0xE9, 0xFF, 0];
        // SAFETY: NUL-terminated strings and NULL, as ks_key_check accepts.
        unsafe {
            assert_eq!(ks_key_check(good.as_ptr()), ks_result::KS_OK);
            assert_eq!(ks_key_check(typo.as_ptr()), ks_result::KS_KEY_MALFORMED);
            assert_eq!(ks_key_check(c"".as_ptr()), ks_result::KS_KEY_MALFORMED);
            assert_eq!(
                ks_key_check(latin1.as_ptr().cast()),
                ks_result::KS_KEY_MALFORMED
            );
            assert_eq!(ks_key_check(std::ptr::null()), ks_result::KS_NULL_PARAMETER);
        }
        // SAFETY: buffers valid for the lengths given, and NULL.
        unsafe {
            assert_eq!(
                ks_key_check_len(KEY.as_ptr().cast(), KEY.len()),
                ks_result::KS_OK
            );
            assert_eq!(
                ks_key_check_len(KEY.as_ptr().cast(), KEY.len() - 1),
                ks_result::KS_KEY_MALFORMED
            );
            assert_eq!(
                ks_key_check_len(std::ptr::null(), 5),
                ks_result::KS_NULL_PARAMETER
            );
        }
    }

    #[test]
    fn canonicalizes_into_a_buffer_only_when_it_fits() {
        let sloppy = CString::new("ks 7h2k q9wm 4xrt 8cvp n3fj vcz9").unwrap();
        let mut buf = [b'#' as c_char; KS_KEY_MAX_LEN + 1];
        let mut len = 12345usize;
        // SAFETY: buffers valid for the lengths given.
        unsafe {
            let r = ks_key_canonicalize(sloppy.as_ptr(), buf.as_mut_ptr(), 10, &mut len);
            assert_eq!(r, ks_result::KS_INSUFFICIENT_SIZE);
            assert_eq!((buf[0], len), (b'#' as c_char, 12345), "nothing written");
            let r = ks_key_canonicalize(sloppy.as_ptr(), buf.as_mut_ptr(), buf.len(), &mut len);
            assert_eq!(r, ks_result::KS_OK);
            assert_eq!(len, KEY.len());
            assert_eq!(
                std::ffi::CStr::from_ptr(buf.as_ptr()).to_str().unwrap(),
                KEY
            );
            let r = ks_key_canonicalize(
                sloppy.as_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                std::ptr::null_mut(),
            );
            assert_eq!(r, ks_result::KS_OK);
            let r = ks_key_canonicalize(sloppy.as_ptr(), std::ptr::null_mut(), 64, &mut len);
            assert_eq!(r, ks_result::KS_NULL_PARAMETER);
        }
        let longest = sdk::LicenseKey::generate("ABCDEFGH").unwrap();
        assert_eq!(longest.as_str().len(), KS_KEY_MAX_LEN);
    }

    #[test]
    fn fingerprint_needs_an_app_id_and_a_buffer() {
        let mut buf = [0 as c_char; KS_FINGERPRINT_LEN + 1];
        // SAFETY: buffers valid for the lengths given, and NULLs.
        unsafe {
            let r = ks_machine_fingerprint(
                std::ptr::null(),
                buf.as_mut_ptr(),
                buf.len(),
                std::ptr::null_mut(),
            );
            assert_eq!(r, ks_result::KS_NULL_PARAMETER);
            let r = ks_machine_fingerprint(
                c"app".as_ptr(),
                std::ptr::null_mut(),
                65,
                std::ptr::null_mut(),
            );
            assert_eq!(r, ks_result::KS_NULL_PARAMETER);
            let mut len = 0;
            match ks_machine_fingerprint(c"app".as_ptr(), buf.as_mut_ptr(), buf.len(), &mut len) {
                ks_result::KS_OK => assert_eq!(len, KS_FINGERPRINT_LEN),
                other => assert_eq!(other, ks_result::KS_NO_MACHINE_ID),
            }
        }
    }
}
