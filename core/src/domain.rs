//! Domain and fingerprint normalisation, identical on server and SDK so that a
//! token's `domain` claim can be compared with what the app asked for.

/// Normalises a host name: trims, lowercases, drops one trailing dot and turns
/// an internationalised name into punycode (`bücher.example` →
/// `xn--bcher-kva.example`). Anything that is not a host name is `None`.
///
/// ```
/// use keysmith_core::domain::normalize_domain;
/// assert_eq!(normalize_domain("Example.COM.").as_deref(), Some("example.com"));
/// assert_eq!(normalize_domain("bücher.example").as_deref(), Some("xn--bcher-kva.example"));
/// assert_eq!(normalize_domain("not a host"), None);
/// ```
pub fn normalize_domain(input: &str) -> Option<String> {
    let trimmed = input.trim();
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if trimmed.is_empty() || trimmed.len() > 253 * 4 {
        return None;
    }
    let ascii = idna::domain_to_ascii(trimmed).ok()?;
    is_host_name(&ascii).then_some(ascii)
}

fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        })
}

/// The longest machine fingerprint the API accepts.
pub const MAX_FINGERPRINT_LEN: usize = 128;

/// Checks a machine fingerprint: 1 to 128 characters of `A-Z a-z 0-9 . _ : -`.
/// Fingerprints are compared exactly, so none is rewritten.
pub fn is_valid_fingerprint(fp: &str) -> bool {
    !fp.is_empty()
        && fp.len() <= MAX_FINGERPRINT_LEN
        && fp
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_dot_and_idn() {
        assert_eq!(
            normalize_domain(" Staging.Example.com. ").unwrap(),
            "staging.example.com"
        );
        assert_eq!(normalize_domain("MÜNCHEN.de").unwrap(), "xn--mnchen-3ya.de");
        assert_eq!(normalize_domain("localhost").unwrap(), "localhost");
        assert_eq!(
            normalize_domain("xn--mnchen-3ya.de").unwrap(),
            "xn--mnchen-3ya.de"
        );
    }

    #[test]
    fn rejects_what_is_not_a_host() {
        for bad in [
            "",
            ".",
            "a..b",
            "exa mple.com",
            "-a.com",
            "a-.com",
            "a_b.com",
            "http://x.com",
            "x.com/path",
            "x.com:80",
            &"a".repeat(64),
        ] {
            assert_eq!(normalize_domain(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fingerprints() {
        assert!(is_valid_fingerprint("3f2a:9c_0.b-1"));
        assert!(!is_valid_fingerprint(""));
        assert!(!is_valid_fingerprint("has space"));
        assert!(!is_valid_fingerprint(&"a".repeat(129)));
    }
}
