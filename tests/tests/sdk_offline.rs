//! The SDK against a real server that goes away: answers from the cache
//! within the grace, and the rules that stop the cache from being abused.

mod common_sdk;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common_sdk::{shifted_clock, FakeServer, Licensed, MOVED_TO};
use ed25519_dalek::SigningKey;
use keysmith::{Code, Source, ValidateOptions};
use serde_json::Value;

const DAY: i64 = 86_400;

#[test]
fn server_stopped_answers_from_the_cache_within_the_grace() {
    let mut l = Licensed::start();
    let opts = ValidateOptions::new().domain("example.com");
    let client = l.client().build().unwrap();
    let online = client.validate(&l.key, &opts).unwrap();
    assert_eq!(online.source, Source::Online);

    l.server.kill9();
    let cached = client.validate(&l.key, &opts).unwrap();
    assert_eq!(
        (cached.valid, cached.code, cached.source),
        (true, Code::Valid, Source::Cache)
    );
    assert_eq!(cached.plan.as_deref(), Some("pro"));
    assert!(cached.has_feature("sso"));
    assert_eq!(cached.expires_at, online.expires_at);
    assert_eq!(cached.claims, online.claims);

    // Six days later, still within the 7-day grace; a new client (a restart
    // of the app) reads the same cache.
    let later = l.client().clock(shifted_clock(6 * DAY)).build().unwrap();
    let answer = later.validate(&l.key, &opts).unwrap();
    assert_eq!((answer.valid, answer.source), (true, Source::Cache));

    // The cache is per domain: another domain has no cached answer.
    let err = client
        .validate(&l.key, &ValidateOptions::new().domain("other.com"))
        .unwrap_err();
    assert!(err.is_network(), "{err:#}");
}

#[test]
fn past_the_grace_is_offline_grace_expired() {
    let mut l = Licensed::start();
    let opts = ValidateOptions::new();
    l.client().build().unwrap().validate(&l.key, &opts).unwrap();
    l.server.kill9();

    let just_before = l
        .client()
        .clock(shifted_clock(7 * DAY - 120))
        .build()
        .unwrap();
    assert_eq!(
        just_before.validate(&l.key, &opts).unwrap().code,
        Code::Valid
    );

    let eight_days = l.client().clock(shifted_clock(8 * DAY)).build().unwrap();
    let answer = eight_days.validate(&l.key, &opts).unwrap();
    assert_eq!(
        (answer.valid, answer.code, answer.source),
        (false, Code::OfflineGraceExpired, Source::Cache)
    );
    assert!(!answer.has_feature("sso"));
}

#[test]
fn the_app_can_shorten_the_grace_but_not_lengthen_it() {
    let mut l = Licensed::start_with(3, Default::default());
    let opts = ValidateOptions::new();
    l.client().build().unwrap().validate(&l.key, &opts).unwrap();
    l.server.kill9();

    // In increasing time, since each offline check records the time it saw.
    let shorter = l
        .client()
        .offline_grace(std::time::Duration::from_secs(DAY as u64))
        .clock(shifted_clock(DAY + 60));
    assert_eq!(
        shorter
            .build()
            .unwrap()
            .validate(&l.key, &opts)
            .unwrap()
            .code,
        Code::OfflineGraceExpired
    );
    let within = l.client().clock(shifted_clock(2 * DAY));
    assert_eq!(
        within
            .build()
            .unwrap()
            .validate(&l.key, &opts)
            .unwrap()
            .code,
        Code::Valid
    );
    let longer = l
        .client()
        .offline_grace(std::time::Duration::from_secs(30 * DAY as u64))
        .clock(shifted_clock(4 * DAY));
    assert_eq!(
        longer
            .build()
            .unwrap()
            .validate(&l.key, &opts)
            .unwrap()
            .code,
        Code::OfflineGraceExpired
    );
}

#[test]
fn a_clock_set_back_is_clock_tampered() {
    let mut l = Licensed::start();
    let opts = ValidateOptions::new();
    l.client().build().unwrap().validate(&l.key, &opts).unwrap();
    l.server.kill9();

    // Back before the server issued the answer.
    let back = l.client().clock(shifted_clock(-2 * DAY)).build().unwrap();
    let answer = back.validate(&l.key, &opts).unwrap();
    assert_eq!(
        (answer.valid, answer.code, answer.source),
        (false, Code::ClockTampered, Source::Cache)
    );

    // An ordinary adjustment of a few minutes is tolerated.
    let nudged = l.client().clock(shifted_clock(-5 * 60)).build().unwrap();
    assert_eq!(nudged.validate(&l.key, &opts).unwrap().code, Code::Valid);

    // Offline use moves the newest time seen forward: three days on, then
    // back to today (still inside the grace) is tampering.
    let ahead = l.client().clock(shifted_clock(3 * DAY)).build().unwrap();
    assert_eq!(ahead.validate(&l.key, &opts).unwrap().code, Code::Valid);
    let today = l.client().build().unwrap();
    assert_eq!(
        today.validate(&l.key, &opts).unwrap().code,
        Code::ClockTampered
    );
}

#[test]
fn a_clock_set_back_does_not_matter_while_the_server_answers() {
    let l = Licensed::start();
    let opts = ValidateOptions::new();
    l.client()
        .clock(shifted_clock(3 * DAY))
        .build()
        .unwrap()
        .validate(&l.key, &opts)
        .unwrap();
    let back = l.client().clock(shifted_clock(-30 * DAY)).build().unwrap();
    let answer = back.validate(&l.key, &opts).unwrap();
    assert_eq!((answer.code, answer.source), (Code::Valid, Source::Online));
}

/// A clock that ran days ahead and was put right: the next online answer,
/// signed now for this request, says what time it is, so offline use is
/// not taken for tampering afterwards (it was, until real time caught up
/// with the fast clock's record). Setting the clock back still is.
#[test]
fn a_clock_put_right_while_online_is_trusted_offline_again() {
    offline_after_an_answer(3 * DAY, true, 0);
}

/// A clock hours ahead at the last online answer, put right before the app
/// goes offline: the answer's signed `iat` said what time it was, so the
/// right clock is not taken for one set back.
#[test]
fn a_clock_ahead_at_the_last_answer_and_put_right_offline_is_trusted() {
    offline_after_an_answer(3 * 3600, false, 0);
}

/// A machine whose clock runs twenty minutes slow (set by hand, a hardware
/// clock kept in local time) was `CLOCK_TAMPERED` offline for its first
/// twenty minutes after each online answer: the server's `iat` was taken
/// for a time this clock had seen. A clock set back from there still is.
#[test]
fn a_slow_clock_is_trusted_offline_right_after_an_online_answer() {
    offline_after_an_answer(-20 * 60, false, -20 * 60);
}

/// A license-wide refusal (suspended, revoked, expired) that the app was
/// told for one fingerprint stands offline for every other request of the
/// key: it was kept for that request alone, so the app offline without a
/// fingerprint (its machine id unreadable, say) went on VALID until that
/// entry's grace ran out. A VALID signed after it still counts where it
/// was given.
#[test]
fn a_suspension_seen_for_one_fingerprint_stands_offline_for_the_others() {
    let mut l = Licensed::start();
    let client = l.client().build().unwrap();
    let this = ValidateOptions::new().fingerprint("machine-a");
    let other = ValidateOptions::new();
    assert!(client.validate(&l.key, &this).unwrap().valid);
    assert!(client.validate(&l.key, &other).unwrap().valid);
    let status = |status: &str| {
        let (code, _) = l.server.admin(
            "PUT",
            &format!("/licenses/{}", l.id),
            Some(serde_json::json!({"status": status})),
        );
        assert_eq!(code, 200);
    };
    status("suspended");
    let refused = client.validate(&l.key, &this).unwrap();
    assert_eq!(refused.code, Code::LicenseSuspended);
    // Reinstated, and validated again for this fingerprint only, a second
    // later (times are in seconds).
    status("active");
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    assert!(client.validate(&l.key, &this).unwrap().valid);

    l.server.kill9();
    let answer = client.validate(&l.key, &other).unwrap();
    assert_eq!(
        (answer.code, answer.source),
        (Code::LicenseSuspended, Source::Cache)
    );
    let answer = client.validate(&l.key, &this).unwrap();
    assert_eq!((answer.code, answer.source), (Code::Valid, Source::Cache));
}

/// Validates online with a clock `shift_secs` off, then (if
/// `right_online`) once more with the right clock; offline, a clock
/// `offline_shift_secs` off gets the cached VALID and one set back a day
/// CLOCK_TAMPERED.
fn offline_after_an_answer(shift_secs: i64, right_online: bool, offline_shift_secs: i64) {
    let mut l = Licensed::start();
    let opts = ValidateOptions::new();
    let shifted = l.client().clock(shifted_clock(shift_secs)).build().unwrap();
    assert_eq!(
        shifted.validate(&l.key, &opts).unwrap().source,
        Source::Online
    );
    if right_online {
        let right = l.client().build().unwrap();
        assert_eq!(
            right.validate(&l.key, &opts).unwrap().source,
            Source::Online
        );
    }
    l.server.kill9();
    let offline = l
        .client()
        .clock(shifted_clock(offline_shift_secs))
        .build()
        .unwrap();
    let answer = offline.validate(&l.key, &opts).unwrap();
    assert_eq!(
        (answer.code, answer.source),
        (Code::Valid, Source::Cache),
        "{}",
        answer.message()
    );
    let back = l.client().clock(shifted_clock(-2 * DAY)).build().unwrap();
    assert_eq!(
        back.validate(&l.key, &opts).unwrap().code,
        Code::ClockTampered
    );
}

/// Behind a load balancer, one server's clock may run ahead of another's:
/// a VALID answer from the fast one carries a later `iat` than the
/// revocation the other signs next. The signed refusal must still replace
/// the cached VALID at once (SPEC §7), or the app keeps working offline.
#[test]
fn a_revocation_signed_by_a_server_whose_clock_is_behind_replaces_the_cache() {
    let mut l = Licensed::start();
    let opts = ValidateOptions::new();
    let client = l.client().build().unwrap();
    assert!(client.validate(&l.key, &opts).unwrap().valid);
    // The cached answer as a server two minutes ahead would have signed it.
    let path = client.cache_path(&l.key, &opts).unwrap();
    let seed = std::fs::read_to_string(l.server.data_path("signing.key")).unwrap();
    let seed: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(seed.trim())
        .unwrap()
        .try_into()
        .unwrap();
    let server_key = SigningKey::from_bytes(&seed);
    let entry: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut claims = keysmith_core::KeySet::from_base64_list(&l.public_key)
        .unwrap()
        .verify(entry["token"].as_str().unwrap())
        .unwrap();
    claims.iat += 120;
    claims.exp += 120;
    let ahead = serde_json::json!({
        "version": 1,
        "token": keysmith_core::token::sign(&server_key, &claims),
        "newest_seen": claims.iat,
    });
    std::fs::write(&path, ahead.to_string()).unwrap();
    assert!(client.validate_offline(&l.key, &opts).unwrap().valid);

    l.revoke();
    let answer = client.validate(&l.key, &opts).unwrap();
    assert_eq!(
        (answer.code, answer.source),
        (Code::LicenseRevoked, Source::Online)
    );
    l.server.kill9();
    let answer = client.validate(&l.key, &opts).unwrap();
    assert_eq!(
        (answer.code, answer.source),
        (Code::LicenseRevoked, Source::Cache),
        "{}",
        answer.message()
    );
}

/// A server URL that now redirects (http → https, a moved host) is not
/// the server's answer: the SDK does not follow it (a POST would come back
/// as a GET), answers from the cache while it can, and says where the
/// redirect points.
#[test]
fn a_redirect_is_not_followed_and_falls_back_to_the_cache() {
    let l = Licensed::start();
    let opts = ValidateOptions::new();
    assert!(
        l.client()
            .build()
            .unwrap()
            .validate(&l.key, &opts)
            .unwrap()
            .valid
    );
    let target = format!("{}/api/v1/validate", l.server.url);
    let moved = FakeServer::start(move |_| (MOVED_TO, target.clone()));
    let client = |cache: &std::path::Path| {
        keysmith::blocking::Client::builder(&moved.url)
            .public_key(&l.public_key)
            .app_id("e2e-app")
            .cache_dir(cache)
            .build()
            .unwrap()
    };
    let answer = client(l.cache.path()).validate(&l.key, &opts).unwrap();
    assert_eq!((answer.code, answer.source), (Code::Valid, Source::Cache));

    let empty = tempfile::tempdir().unwrap();
    let err = client(empty.path()).validate(&l.key, &opts).unwrap_err();
    assert!(err.is_protocol(), "{err:#}");
    assert!(
        err.to_string().contains(&l.server.url) && err.to_string().contains("redirect"),
        "{err}"
    );
    assert_eq!(
        moved.requests().len(),
        2,
        "asked once each time, never followed"
    );
}

/// Rewrites the cached token's claims (keeping its signature) with `edit`.
fn edit_cached_claims(path: &std::path::Path, edit: impl Fn(&mut Value)) {
    let mut entry: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let token = entry["token"].as_str().unwrap().to_owned();
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    edit(&mut claims);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    entry["token"] = Value::String(format!("{}.{body}.{}", parts[0], parts[2]));
    std::fs::write(path, serde_json::to_vec(&entry).unwrap()).unwrap();
}

#[test]
fn an_edited_cache_file_is_not_trusted_and_is_replaced() {
    let mut l = Licensed::start();
    let opts = ValidateOptions::new();
    let client = l.client().build().unwrap();
    client.validate(&l.key, &opts).unwrap();
    let path = client.cache_path(&l.key, &opts).unwrap();
    let original = std::fs::read(&path).unwrap();
    l.server.kill9();
    assert!(
        client.validate(&l.key, &opts).unwrap().valid,
        "untouched, it answers"
    );

    // Longer grace, another plan, valid again after a revocation…
    type Edit = fn(&mut Value);
    let edits: [(&str, Edit); 3] = [
        ("exp", |c| {
            c["exp"] = Value::from(c["exp"].as_i64().unwrap() + 365 * DAY)
        }),
        ("plan", |c| c["plan"] = Value::from("enterprise")),
        ("features", |c| {
            c["features"] = serde_json::json!(["sso", "audit-log", "everything"])
        }),
    ];
    for (what, edit) in edits {
        std::fs::write(&path, &original).unwrap();
        edit_cached_claims(&path, edit);
        let err = client.validate(&l.key, &opts).unwrap_err();
        assert!(err.is_network(), "{what}: {err:#}");
    }
    // A token re-signed by some other key, and plain garbage.
    let forger = SigningKey::from_bytes(&[9; 32]);
    let mut claims = keysmith_core::KeySet::from_base64_list(&l.public_key)
        .unwrap()
        .verify(
            serde_json::from_slice::<Value>(&original).unwrap()["token"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    claims.exp += 365 * DAY;
    let forged = serde_json::json!({"version": 1, "token": keysmith_core::token::sign(&forger, &claims), "newest_seen": 0});
    for bad in [
        forged.to_string().into_bytes(),
        b"{\"version\":1,".to_vec(),
        Vec::new(),
    ] {
        std::fs::write(&path, bad).unwrap();
        assert!(client.validate(&l.key, &opts).unwrap_err().is_network());
        assert!(client
            .validate_offline(&l.key, &opts)
            .unwrap_err()
            .is_no_cache());
    }

    // Back online (new port), the next answer replaces the bad file.
    l.server.restart();
    let client = l.client().build().unwrap();
    assert_eq!(
        client.validate(&l.key, &opts).unwrap().source,
        Source::Online
    );
    l.server.kill9();
    let answer = client.validate(&l.key, &opts).unwrap();
    assert_eq!((answer.valid, answer.source), (true, Source::Cache));
}

/// Anyone between the app and the server can answer an unsigned
/// `KEY_MALFORMED`; for a key the server signed an answer for, that must
/// not deny the license while the grace period holds. Without a cached
/// answer it is passed on (a key of another prefix).
#[test]
fn an_unsigned_key_malformed_does_not_override_a_valid_cache() {
    let l = Licensed::start();
    let opts = ValidateOptions::new();
    let forged = || {
        FakeServer::start(|_| {
            (
                400,
                r#"{"valid":false,"code":"KEY_MALFORMED","error":"KEY_MALFORMED"}"#.to_owned(),
            )
        })
    };
    let client = |url: &str, cache: &std::path::Path| {
        keysmith::blocking::Client::builder(url)
            .public_key(&l.public_key)
            .app_id("e2e-app")
            .cache_dir(cache)
            .build()
            .unwrap()
    };
    let fake = forged();
    let empty = tempfile::tempdir().unwrap();
    let answer = client(&fake.url, empty.path())
        .validate(&l.key, &opts)
        .unwrap();
    assert_eq!(
        (answer.code, answer.source),
        (Code::KeyMalformed, Source::Online)
    );

    l.client().build().unwrap().validate(&l.key, &opts).unwrap();
    let answer = client(&fake.url, l.cache.path())
        .validate(&l.key, &opts)
        .unwrap();
    assert_eq!(
        (answer.valid, answer.code, answer.source),
        (true, Code::Valid, Source::Cache)
    );
    assert_eq!(
        fake.connections(),
        2,
        "the fake server was asked both times"
    );
}

#[test]
fn a_server_error_or_rate_limit_falls_back_to_the_cache() {
    let l = Licensed::start();
    let opts = ValidateOptions::new();
    l.client().build().unwrap().validate(&l.key, &opts).unwrap();
    for (status, body) in [
        (503, "<html>down</html>"),
        (500, ""),
        (408, r#"{"valid":false,"code":"TIMEOUT","error":"TIMEOUT"}"#),
        (429, r#"{"valid":false,"code":"RATE_LIMITED"}"#),
        (200, "not json"),
    ] {
        let fake = FakeServer::start(move |_| (status, body.to_owned()));
        let client = keysmith::blocking::Client::builder(&fake.url)
            .public_key(&l.public_key)
            .app_id("e2e-app")
            .cache_dir(l.cache.path())
            .build()
            .unwrap();
        let answer = client.validate(&l.key, &opts).unwrap();
        assert_eq!(
            (answer.valid, answer.source),
            (true, Source::Cache),
            "{status}"
        );
        assert_eq!(fake.connections(), 1);
    }
}
