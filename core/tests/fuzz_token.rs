//! Property fuzzing of the token verifier the SDK trusts (proptest; `cargo
//! fuzz` needs nightly): no input makes it panic, and no change to a signed
//! token is accepted. `PROPTEST_CASES=100000 cargo test -p keysmith-core
//! --test fuzz_token` runs it longer.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::SigningKey;
use keysmith_core::token::{public_key_base64, sign, Claims, KeySet, TokenError};
use keysmith_core::{Code, Status};
use proptest::prelude::*;

/// Signing and verifying are slow in a debug build: 64 cases per property
/// unless `PROPTEST_CASES` says otherwise.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn trusted() -> KeySet {
    KeySet::from_base64_list(&public_key_base64(&signing_key().verifying_key())).unwrap()
}

fn code() -> impl Strategy<Value = Code> {
    proptest::sample::select(Code::ALL.to_vec())
}

fn status() -> impl Strategy<Value = Option<Status>> {
    proptest::option::of(proptest::sample::select(vec![
        Status::Active,
        Status::Suspended,
        Status::Expired,
        Status::Revoked,
    ]))
}

prop_compose! {
    fn claims()(
        iss in ".{0,20}",
        sub in proptest::option::of("lic_[0-9A-Z]{10}"),
        key_sha256 in "[0-9a-f]{64}",
        valid in any::<bool>(),
        code in code(),
        status in status(),
        plan in proptest::option::of(".{0,16}"),
        features in proptest::collection::vec(".{0,12}", 0..4),
        license_expires_at in proptest::option::of("20[0-9]{2}-0[1-9]-1[0-9]T00:00:00Z"),
        domain in proptest::option::of("[a-z0-9.-]{1,30}"),
        fingerprint in proptest::option::of("[A-Za-z0-9._:-]{1,40}"),
        nonce in proptest::option::of(".{0,40}"),
        iat in any::<i64>(),
        exp in any::<i64>(),
    ) -> Claims {
        Claims { iss, sub, key_sha256, valid, code, status, plan, features, license_expires_at, domain, fingerprint, nonce, iat, exp }
    }
}

/// A change to a token's text: replace, insert or delete one character, or
/// swap two.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, char),
    Insert(usize, char),
    Delete(usize),
    Swap(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let c = prop_oneof![
        4 => proptest::sample::select("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".chars().collect::<Vec<_>>()),
        1 => any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), c.clone()).prop_map(|(i, c)| Edit::Replace(i, c)),
        (any::<usize>(), c).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
    ]
}

fn apply(token: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let n = chars.len();
    match *edit {
        Edit::Replace(i, c) => chars[i % n] = c,
        Edit::Insert(i, c) => chars.insert(i % (n + 1), c),
        Edit::Delete(i) => {
            chars.remove(i % n);
        }
        Edit::Swap(i, j) => chars.swap(i % n, j % n),
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>()) {
        prop_assert!(trusted().verify(&s).is_err());
    }

    #[test]
    fn arbitrary_three_part_tokens_are_refused(
        h in "[A-Za-z0-9_-]{0,60}",
        c in "[A-Za-z0-9_-]{0,200}",
        s in "[A-Za-z0-9_-]{0,90}",
    ) {
        let token = format!("{h}.{c}.{s}");
        prop_assert!(trusted().verify(&token).is_err());
    }

    /// A real header and claims with any signature bytes: refused.
    #[test]
    fn a_forged_signature_is_refused(claims in claims(), sig in proptest::collection::vec(any::<u8>(), 64)) {
        let token = sign(&signing_key(), &claims);
        let (signed, _) = token.rsplit_once('.').unwrap();
        let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&sig));
        prop_assert_eq!(trusted().verify(&forged), Err(TokenError::Signature));
    }

    #[test]
    fn signed_claims_verify_to_themselves(claims in claims()) {
        let token = sign(&signing_key(), &claims);
        prop_assert_eq!(trusted().verify(&token), Ok(claims));
    }

    /// The SDK trusts a token only through `verify`: any edit of its text is
    /// refused, so no claim (code, exp, domain, nonce…) can be changed.
    #[test]
    fn an_edited_token_is_never_accepted(claims in claims(), edits in proptest::collection::vec(edit(), 1..4)) {
        let token = sign(&signing_key(), &claims);
        let mut edited = token.clone();
        for e in &edits {
            edited = apply(&edited, e);
        }
        prop_assume!(edited != token);
        prop_assert!(trusted().verify(&edited).is_err(), "accepted {edited}");
    }

    /// Other claims under the original header and signature: refused.
    #[test]
    fn swapped_claims_are_refused(claims in claims(), other in claims()) {
        prop_assume!(claims != other);
        let token = sign(&signing_key(), &claims);
        let parts: Vec<&str> = token.split('.').collect();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        let spliced = format!("{}.{body}.{}", parts[0], parts[2]);
        prop_assert_eq!(trusted().verify(&spliced), Err(TokenError::Signature));
    }

    /// A token from a key the app does not trust is refused, whatever it says.
    #[test]
    fn an_untrusted_key_is_refused(claims in claims(), seed in any::<[u8; 32]>()) {
        prop_assume!(seed != [7; 32]);
        let token = sign(&SigningKey::from_bytes(&seed), &claims);
        prop_assert!(trusted().verify(&token).is_err());
    }
}
