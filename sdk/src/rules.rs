//! The SDK's rules as plain functions of their inputs: does a verified token
//! answer this request, and what does a cached one say at time `now`. No
//! I/O, so every rule is unit-tested here; the crate docs state them.

use keysmith_core::token::Claims;
use keysmith_core::Code;

use crate::error::{Error, Kind};
use crate::validation::{Source, Validation};

/// How far the clock may go back behind the newest time seen before the SDK
/// calls it tampering: ordinary adjustments (NTP steps, a drifting RTC
/// corrected) are minutes; rolling the clock back to stretch a grace is days.
pub const CLOCK_TOLERANCE_SECS: i64 = 10 * 60;

/// What a request asked about, as the token names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected<'a> {
    pub key_sha256: &'a str,
    /// Normalised.
    pub domain: Option<&'a str>,
    pub fingerprint: Option<&'a str>,
}

/// Checks that a verified token answers this request. `nonce` is the one
/// sent with an online request; cached tokens are checked without it (their
/// nonce was checked when they arrived).
pub(crate) fn check_claims(
    claims: &Claims,
    expected: &Expected<'_>,
    nonce: Option<&str>,
) -> Result<(), Error> {
    let mismatch = |what: &str| {
        Err(Error::new(
            Kind::Signature,
            format!("the server's answer is not trusted: its {what} does not match the request"),
        ))
    };
    if claims.key_sha256 != expected.key_sha256 {
        return mismatch("key");
    }
    if claims.domain.as_deref() != expected.domain {
        return mismatch("domain");
    }
    if claims.fingerprint.as_deref() != expected.fingerprint {
        return mismatch("fingerprint");
    }
    if nonce.is_some() && claims.nonce.as_deref() != nonce {
        return mismatch("nonce");
    }
    if !claims.code.is_signed() || claims.valid != (claims.code == Code::Valid) {
        return Err(Error::new(
            Kind::Signature,
            format!(
                "the server's answer is not trusted: code {} in a token",
                claims.code
            ),
        ));
    }
    Ok(())
}

/// Until when (Unix seconds, exclusive) a token may be trusted offline: its
/// `exp`, shortened to `iat + offline_grace` when the app asks for less.
pub(crate) fn offline_until(claims: &Claims, offline_grace_secs: Option<i64>) -> i64 {
    match offline_grace_secs {
        Some(grace) => claims.exp.min(claims.iat.saturating_add(grace)),
        None => claims.exp,
    }
}

/// How far behind the server's a machine's clock may run and still be
/// trusted offline right after an online answer: the widest gap between
/// two time zones (a clock set by hand for the wrong one, a hardware clock
/// kept in local time). The signed `iat` less this is the floor of the
/// newest time seen, whatever a cache file says.
pub(crate) const CLOCK_BEHIND_SECS: i64 = 26 * 3600;

/// The newest time the SDK has seen, given a cache entry's record and the
/// token's own (signed) issue time: the record, but never more than
/// [`CLOCK_BEHIND_SECS`] before that.
pub(crate) fn newest_seen(recorded: i64, claims: &Claims) -> i64 {
    recorded.max(claims.iat.saturating_sub(CLOCK_BEHIND_SECS))
}

/// What a verified cached token answers at `now` when the server cannot be
/// reached. The rules, in order:
///
/// 1. a signed invalid answer is replayed as it is — whatever the clock;
/// 2. `now` more than [`CLOCK_TOLERANCE_SECS`] before the newest time seen
///    is `CLOCK_TAMPERED`;
/// 3. `now` before [`offline_until`] is the cached `VALID`;
/// 4. otherwise `OFFLINE_GRACE_EXPIRED`.
pub(crate) fn offline_answer(
    claims: Claims,
    recorded_newest: i64,
    now: i64,
    offline_grace_secs: Option<i64>,
) -> Validation {
    let until = offline_until(&claims, offline_grace_secs);
    let code = if !claims.valid {
        claims.code
    } else if now.saturating_add(CLOCK_TOLERANCE_SECS) < newest_seen(recorded_newest, &claims) {
        Code::ClockTampered
    } else if now < until {
        Code::Valid
    } else {
        Code::OfflineGraceExpired
    };
    Validation::from_claims(claims, code, Source::Cache, until)
}

/// Whether a signed answer refuses the license as a whole, whatever the
/// request's domain and fingerprint: suspended, revoked, expired or not
/// found (not a seat limit, which is about this request).
pub(crate) fn is_license_wide(claims: &Claims) -> bool {
    matches!(
        claims.code,
        Code::LicenseSuspended
            | Code::LicenseRevoked
            | Code::LicenseExpired
            | Code::LicenseNotFound
    )
}

/// How stale a cache entry may be before it is written again when nothing
/// but time has changed: an unchanged online answer is not rewritten within
/// it, and an offline check records the passing of time only past it. Cheap
/// checks, and still far finer than [`CLOCK_TOLERANCE_SECS`].
pub(crate) const REFRESH_SECS: i64 = 60;

/// Whether the cached answer `old` (whose newest time seen is `old_newest`)
/// already says what `new` says, and is recent enough that rewriting it
/// would only move its offline window by under [`REFRESH_SECS`]. Any change
/// of outcome — validity, code, status, plan, features, expiry, grace — is
/// never a fresh copy: a revocation is written at once.
pub(crate) fn is_fresh_copy(old: &Claims, old_newest: i64, new: &Claims, now: i64) -> bool {
    old.valid == new.valid
        && old.code == new.code
        && old.status == new.status
        && old.sub == new.sub
        && old.plan == new.plan
        && old.features == new.features
        && old.license_expires_at == new.license_expires_at
        && old.exp.saturating_sub(old.iat) == new.exp.saturating_sub(new.iat)
        && (0..REFRESH_SECS).contains(&new.iat.saturating_sub(old.iat))
        && (0..REFRESH_SECS).contains(&now.saturating_sub(old_newest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keysmith_core::Status;

    const IAT: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    fn claims() -> Claims {
        Claims {
            iss: "keysmith".into(),
            sub: Some("lic_1".into()),
            key_sha256: "ab".repeat(32),
            valid: true,
            code: Code::Valid,
            status: Some(Status::Active),
            plan: Some("pro".into()),
            features: vec!["sso".into()],
            license_expires_at: None,
            domain: Some("example.com".into()),
            fingerprint: Some("fp-1".into()),
            nonce: Some("n-1".into()),
            iat: IAT,
            exp: IAT + 7 * DAY,
        }
    }

    fn expected(key: &str) -> Expected<'_> {
        Expected {
            key_sha256: key,
            domain: Some("example.com"),
            fingerprint: Some("fp-1"),
        }
    }

    #[test]
    fn claims_must_match_the_request() {
        let key = "ab".repeat(32);
        assert!(check_claims(&claims(), &expected(&key), Some("n-1")).is_ok());
        assert!(
            check_claims(&claims(), &expected(&key), None).is_ok(),
            "cached: no nonce"
        );

        let other_key = "cd".repeat(32);
        let cases: [(Expected<'_>, Option<&str>, &str); 5] = [
            (expected(&other_key), Some("n-1"), "key"),
            (
                Expected {
                    domain: Some("evil.com"),
                    ..expected(&key)
                },
                Some("n-1"),
                "domain",
            ),
            (
                Expected {
                    domain: None,
                    ..expected(&key)
                },
                Some("n-1"),
                "domain",
            ),
            (
                Expected {
                    fingerprint: Some("fp-2"),
                    ..expected(&key)
                },
                Some("n-1"),
                "fingerprint",
            ),
            (expected(&key), Some("n-2"), "nonce"),
        ];
        for (exp, nonce, what) in cases {
            let err = check_claims(&claims(), &exp, nonce).unwrap_err();
            assert!(err.is_signature(), "{what}");
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn a_token_that_contradicts_itself_is_refused() {
        let key = "ab".repeat(32);
        let mut c = claims();
        c.valid = false;
        assert!(check_claims(&c, &expected(&key), None)
            .unwrap_err()
            .is_signature());
        let mut c = claims();
        c.code = Code::OfflineGraceExpired;
        c.valid = false;
        assert!(check_claims(&c, &expected(&key), None).is_err());
    }

    #[test]
    fn valid_from_cache_until_exp_then_grace_expired() {
        let at = |now| offline_answer(claims(), IAT, now, None);
        assert_eq!(at(IAT).code, Code::Valid);
        assert_eq!(at(IAT).source, Source::Cache);
        assert_eq!(at(IAT + 7 * DAY - 1).code, Code::Valid);
        assert_eq!(at(IAT + 7 * DAY).code, Code::OfflineGraceExpired);
        assert!(!at(IAT + 7 * DAY).valid);
        assert_eq!(
            at(IAT + 7 * DAY).offline_until.unwrap().timestamp(),
            IAT + 7 * DAY
        );
    }

    /// Offline past the license's own end, the code is still
    /// `OFFLINE_GRACE_EXPIRED` (SPEC §7: a renewal may be on the server),
    /// but the message says the term ended rather than blaming the network.
    #[test]
    fn offline_past_the_license_end_says_so() {
        let mut ending = claims();
        ending.license_expires_at = Some(keysmith_core::time::format_rfc3339(
            keysmith_core::time::from_unix(IAT + DAY).unwrap(),
        ));
        ending.exp = IAT + DAY;
        let past = offline_answer(ending, IAT, IAT + 2 * DAY, None);
        assert_eq!(past.code, Code::OfflineGraceExpired);
        assert!(past.message().contains("term"), "{}", past.message());
        let grace = offline_answer(claims(), IAT, IAT + 8 * DAY, None);
        assert!(
            grace.message().contains("unreachable"),
            "{}",
            grace.message()
        );
    }

    #[test]
    fn offline_grace_can_only_shorten() {
        let one_day = offline_answer(claims(), IAT, IAT + DAY, Some(DAY));
        assert_eq!(one_day.code, Code::OfflineGraceExpired);
        assert_eq!(
            offline_answer(claims(), IAT, IAT + DAY - 1, Some(DAY)).code,
            Code::Valid
        );
        let longer = offline_answer(claims(), IAT, IAT + 8 * DAY, Some(30 * DAY));
        assert_eq!(
            longer.code,
            Code::OfflineGraceExpired,
            "a longer grace is ignored"
        );
    }

    #[test]
    fn clock_set_back_is_tampering_beyond_the_tolerance() {
        let newest = IAT + 3 * DAY;
        let at = |now| offline_answer(claims(), newest, now, None).code;
        assert_eq!(
            at(newest - CLOCK_TOLERANCE_SECS),
            Code::Valid,
            "within tolerance"
        );
        assert_eq!(at(newest - CLOCK_TOLERANCE_SECS - 1), Code::ClockTampered);
        assert_eq!(at(IAT), Code::ClockTampered);
        // The signed iat counts even when the recorded time was edited
        // down, less the widest time-zone gap a clock may be behind by.
        assert_eq!(
            offline_answer(
                claims(),
                0,
                IAT - CLOCK_BEHIND_SECS - CLOCK_TOLERANCE_SECS - 1,
                None
            )
            .code,
            Code::ClockTampered
        );
        assert_eq!(
            offline_answer(claims(), 0, IAT - DAY, None).code,
            Code::Valid,
            "a clock a day behind the server's"
        );
    }

    #[test]
    fn only_a_recent_identical_answer_is_a_fresh_copy() {
        let old = claims();
        let later = |secs: i64| {
            let mut c = claims();
            c.iat += secs;
            c.exp += secs;
            c.nonce = Some("n-2".into());
            c
        };
        assert!(is_fresh_copy(&old, IAT, &later(30), IAT + 30));
        assert!(
            !is_fresh_copy(&old, IAT, &later(REFRESH_SECS), IAT + REFRESH_SECS),
            "stale"
        );
        assert!(
            !is_fresh_copy(&old, IAT - 120, &later(30), IAT + 30),
            "not seen lately"
        );
        assert!(!is_fresh_copy(&old, IAT, &later(-30), IAT), "older token");
        let changes: [fn(&mut Claims); 7] = [
            |c| {
                c.valid = false;
                c.code = Code::LicenseRevoked;
            },
            |c| c.status = Some(Status::Suspended),
            |c| c.plan = Some("enterprise".into()),
            |c| c.features.push("audit-log".into()),
            |c| c.license_expires_at = Some("2030-01-01T00:00:00Z".into()),
            |c| c.exp -= DAY,
            |c| c.sub = Some("lic_2".into()),
        ];
        for change in changes {
            let mut new = later(1);
            change(&mut new);
            assert!(!is_fresh_copy(&old, IAT, &new, IAT + 1), "{new:?}");
        }
    }

    #[test]
    fn signed_invalid_answers_are_replayed_whatever_the_clock() {
        let mut revoked = claims();
        revoked.valid = false;
        revoked.code = Code::LicenseRevoked;
        revoked.status = Some(Status::Revoked);
        revoked.exp = revoked.iat;
        for now in [IAT - 30 * DAY, IAT, IAT + 365 * DAY] {
            let v = offline_answer(revoked.clone(), IAT, now, None);
            assert_eq!(
                (v.valid, v.code, v.source),
                (false, Code::LicenseRevoked, Source::Cache)
            );
        }
    }
}
