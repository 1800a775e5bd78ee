//! Property fuzzing of the key parser (proptest; `cargo fuzz` needs nightly).
//! `PROPTEST_CASES=100000 cargo test -p keysmith-core --test fuzz_key` runs
//! it longer.

use keysmith_core::key::{check_key, check_symbols, KeyError, LicenseKey, ALPHABET};
use proptest::prelude::*;

/// A canonical key built from a prefix and 20 data symbol values.
fn canonical(prefix: &str, data: &[u8; 20]) -> String {
    let check = check_symbols(data);
    let symbols: Vec<char> = data
        .iter()
        .chain(check.iter())
        .map(|&v| ALPHABET[v as usize] as char)
        .collect();
    let groups: Vec<String> = symbols.chunks(4).map(|g| g.iter().collect()).collect();
    format!("{prefix}-{}", groups.join("-"))
}

fn prefix() -> impl Strategy<Value = String> {
    "[A-Z0-9]{2,8}"
}

fn data() -> impl Strategy<Value = [u8; 20]> {
    proptest::array::uniform20(0u8..32)
}

/// Strings that look like keys: key symbols, look-alikes, separators, junk.
fn keyish() -> impl Strategy<Value = String> {
    "[0-9A-Za-z \\-_OoIiLlUu\u{e9}\u{130}\u{212a}]{0,48}"
}

fn is_canonical_shape(key: &str) -> bool {
    let Some((prefix, body)) = key.split_once('-') else {
        return false;
    };
    (2..=8).contains(&prefix.len())
        && prefix
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && body.len() == 29
        && body
            .split('-')
            .all(|g| g.len() == 4 && g.bytes().all(|b| ALPHABET.contains(&b)))
        && body.split('-').count() == 6
}

/// Checks everything an accepted input must satisfy.
fn accepted(key: &LicenseKey) {
    assert!(is_canonical_shape(key.as_str()), "{key}");
    assert_eq!(key.to_string(), key.as_str());
    assert_eq!(LicenseKey::parse(key.as_str()).as_ref(), Ok(key));
    assert_eq!(check_key(key.as_str()), Ok(()));
    assert_eq!(
        LicenseKey::parse_with_prefix(key.as_str(), key.prefix()).as_ref(),
        Ok(key)
    );
}

proptest! {
    #[test]
    fn any_string_parses_without_panicking(s in any::<String>()) {
        let parsed = LicenseKey::parse(&s);
        prop_assert_eq!(check_key(&s).is_ok(), parsed.is_ok());
        let _ = LicenseKey::parse_with_prefix(&s, "KS");
        if let Ok(key) = parsed {
            accepted(&key);
        }
    }

    #[test]
    fn keyish_strings_that_parse_are_canonical_keys(s in keyish()) {
        if let Ok(key) = LicenseKey::parse(&s) {
            accepted(&key);
        }
    }

    #[test]
    fn display_then_parse_is_identity(prefix in prefix(), data in data()) {
        let text = canonical(&prefix, &data);
        let key = LicenseKey::parse(&text).expect("a key with its own check symbols parses");
        prop_assert_eq!(key.as_str(), text.as_str());
        prop_assert_eq!(key.prefix(), prefix.as_str());
        accepted(&key);
        let again: LicenseKey = key.to_string().parse().unwrap();
        prop_assert_eq!(again, key);
    }

    #[test]
    fn forgiving_input_reads_as_the_same_key(
        prefix in prefix(),
        data in data(),
        lower in any::<bool>(),
        spaces in any::<bool>(),
        drop_dashes in any::<bool>(),
        look_alikes in any::<bool>(),
    ) {
        let text = canonical(&prefix, &data);
        let key = LicenseKey::parse(&text).unwrap();
        let (head, body) = text.split_at(prefix.len());
        let mut body = body.to_owned();
        if look_alikes {
            body = body.replace('0', "O").replace('1', if data[0] % 2 == 0 { "I" } else { "l" });
        }
        if drop_dashes {
            body = body.replace('-', "");
        }
        if spaces {
            body = body.replace('-', " - ");
        }
        let mut typed = format!(" {head}{body} ");
        if lower {
            typed = typed.to_lowercase();
        }
        prop_assert_eq!(LicenseKey::parse(&typed), Ok(key));
    }

    /// RS(24,20) has distance 5: every change of one to four body symbols is
    /// caught by the check, whatever the key and the changes.
    #[test]
    fn up_to_four_wrong_symbols_are_always_caught(
        prefix in prefix(),
        data in data(),
        changes in proptest::collection::btree_map(0usize..24, 1u8..32, 1..=4),
    ) {
        let text = canonical(&prefix, &data);
        let mut symbols: Vec<u8> = text[prefix.len()..].bytes().filter(|&b| b != b'-').collect();
        for (&at, &delta) in &changes {
            let value = ALPHABET.iter().position(|&c| c == symbols[at]).unwrap() as u8;
            symbols[at] = ALPHABET[((value + delta) % 32) as usize];
        }
        let typo = format!("{prefix}-{}", String::from_utf8(symbols).unwrap());
        prop_assert_eq!(LicenseKey::parse(&typo), Err(KeyError::Checksum));
    }

    #[test]
    fn a_wrong_prefix_is_refused(data in data(), prefix in prefix(), other in prefix()) {
        prop_assume!(!prefix.eq_ignore_ascii_case(&other));
        let text = canonical(&prefix, &data);
        let refused = matches!(
            LicenseKey::parse_with_prefix(&text, &other),
            Err(KeyError::WrongPrefix { .. })
        );
        prop_assert!(refused);
    }
}

#[test]
fn generated_keys_are_accepted() {
    for _ in 0..1000 {
        accepted(&LicenseKey::generate("KS").unwrap());
    }
}
