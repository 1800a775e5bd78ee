//! The SDK against a real server, online: valid answers, local key checks,
//! revocation, and answers that must not be trusted.

mod common_sdk;

use common_sdk::{closed_url, FakeServer, Licensed};
use ed25519_dalek::SigningKey;
use keysmith::{Code, Source, ValidateOptions};
use keysmith_core::token::{self, public_key_base64};
use keysmith_tests::TestServer;
use serde_json::json;

#[test]
fn online_valid_through_the_async_client() {
    let l = Licensed::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = keysmith::Client::builder(&l.server.url)
        .public_key(&l.public_key)
        .app_id("e2e-app")
        .cache_dir(l.cache.path())
        .build()
        .unwrap();
    let options = ValidateOptions::new()
        .domain("Shop.Example.COM.")
        .fingerprint("m-1");
    let answer = runtime
        .block_on(client.validate(&l.key.to_lowercase(), &options))
        .unwrap();
    assert!(answer.valid, "{answer:?}");
    assert_eq!(answer.code, Code::Valid);
    assert_eq!(answer.source, Source::Online);
    assert_eq!(answer.plan.as_deref(), Some("pro"));
    assert_eq!(answer.features, ["sso", "audit-log"]);
    assert!(answer.has_feature("audit-log") && !answer.has_feature("sso-plus"));
    assert_eq!(
        answer.expires_at.unwrap().to_rfc3339(),
        "2099-01-01T00:00:00+00:00"
    );
    let claims = answer.claims.as_ref().unwrap();
    assert_eq!(claims.sub.as_deref(), Some(l.id.as_str()));
    assert_eq!(claims.domain.as_deref(), Some("shop.example.com"));
    assert_eq!(
        answer.offline_until.unwrap().timestamp(),
        claims.iat + 7 * 86_400
    );

    let license = l.license();
    assert_eq!(license["validation_count"], 1);
    assert_eq!(license["domains"], json!(["shop.example.com"]));
    assert_eq!(license["machines"], json!(["m-1"]));

    // The answer is cached in one file named by a hash, without the key.
    let files = l.cache_files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0], client.cache_path(&l.key, &options).unwrap());
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(!text.contains(&l.key) && !files[0].to_str().unwrap().contains(&l.key));
    assert!(!text
        .to_lowercase()
        .contains(&l.key.to_lowercase().replace('-', "")));
}

#[test]
fn online_valid_through_the_blocking_client_and_the_user_agent_is_recorded() {
    let l = Licensed::start();
    let client = l.client().user_agent("acme-editor/2.1").build().unwrap();
    let answer = client.validate(&l.key, &ValidateOptions::new()).unwrap();
    assert_eq!(
        (answer.valid, answer.code, answer.source),
        (true, Code::Valid, Source::Online)
    );
    let (status, usage) = l
        .server
        .admin("GET", &format!("/licenses/{}/usage", l.id), None);
    assert_eq!(status, 200);
    assert_eq!(usage["data"][0]["user_agent"], "acme-editor/2.1");
}

#[test]
fn a_typo_is_rejected_locally_without_any_request() {
    let l = Licensed::start();
    let fake = FakeServer::start(|_| (500, String::new()));
    let client = keysmith::blocking::Client::builder(&fake.url)
        .public_key(&l.public_key)
        .cache_dir(l.cache.path())
        .build()
        .unwrap();
    // Every position of the key body, mistyped.
    let body_start = l.key.find('-').unwrap() + 1;
    for (i, c) in l
        .key
        .char_indices()
        .skip(body_start)
        .filter(|(_, c)| *c != '-')
    {
        let mut typo = l.key.clone();
        let other = if c == 'X' { "Y" } else { "X" };
        typo.replace_range(i..i + 1, other);
        let answer = client.validate(&typo, &ValidateOptions::new()).unwrap();
        assert_eq!(
            (answer.valid, answer.code, answer.source),
            (false, Code::KeyMalformed, Source::Local),
            "{typo}"
        );
        assert!(answer.claims.is_none());
    }
    for junk in ["", "hello", "KS-1234"] {
        assert_eq!(
            client.validate(junk, &ValidateOptions::new()).unwrap().code,
            Code::KeyMalformed
        );
    }
    assert_eq!(fake.connections(), 0, "no request for a malformed key");
    assert!(l.cache_files().is_empty());

    // The same client does send a well-formed key (so the count can move).
    let err = client
        .validate(&l.key, &ValidateOptions::new())
        .unwrap_err();
    assert!(err.is_network(), "{err:#}");
    assert_eq!(fake.connections(), 1);
    assert_eq!(l.validation_count(), 0);
}

#[test]
fn a_key_of_another_prefix_is_answered_by_the_server_unsigned() {
    let l = Licensed::start();
    let client = l.client().build().unwrap();
    let foreign = keysmith::LicenseKey::generate("ACME").unwrap();
    let answer = client
        .validate(foreign.as_str(), &ValidateOptions::new())
        .unwrap();
    assert_eq!(
        (answer.valid, answer.code, answer.source),
        (false, Code::KeyMalformed, Source::Online)
    );
    // With the prefix pinned in the app, nothing is sent.
    let pinned = l.client().key_prefix("KS").build().unwrap();
    let answer = pinned
        .validate(foreign.as_str(), &ValidateOptions::new())
        .unwrap();
    assert_eq!(
        (answer.code, answer.source),
        (Code::KeyMalformed, Source::Local)
    );
}

#[test]
fn a_revoked_license_is_invalid_at_once_despite_a_valid_cache() {
    let mut l = Licensed::start();
    let client = l.client().build().unwrap();
    let opts = ValidateOptions::new();
    assert!(client.validate(&l.key, &opts).unwrap().valid);
    assert!(
        client.validate_offline(&l.key, &opts).unwrap().valid,
        "a valid answer is cached"
    );

    l.revoke();
    let answer = client.validate(&l.key, &opts).unwrap();
    assert_eq!(
        (answer.valid, answer.code, answer.source),
        (false, Code::LicenseRevoked, Source::Online)
    );
    assert!(!answer.has_feature("sso"));

    // The revocation replaced the cache: offline it is replayed, not hidden.
    l.server.kill9();
    let offline = client.validate(&l.key, &opts).unwrap();
    assert_eq!(
        (offline.valid, offline.code, offline.source),
        (false, Code::LicenseRevoked, Source::Cache)
    );
    // Whatever the clock says.
    let later = l
        .client()
        .clock(common_sdk::shifted_clock(-3 * 86_400))
        .build()
        .unwrap();
    assert_eq!(
        later.validate(&l.key, &opts).unwrap().code,
        Code::LicenseRevoked
    );
}

/// An app moving to a new machine frees its seat through the SDK: the new
/// machine can take it, and the old one's cached answer is gone, so it does
/// not go on working there offline.
#[test]
fn an_app_frees_its_own_seat_and_forgets_its_cached_answer() {
    let mut l = Licensed::start();
    l.server
        .plan("one-machine", json!({"features": [], "max_machines": 1}));
    let license = l.server.license("one-machine", json!({}));
    let key = license["key"].as_str().unwrap();
    let client = l.client().build().unwrap();
    let old = ValidateOptions::new().fingerprint("old-machine");
    let new = ValidateOptions::new().fingerprint("new-machine");
    assert!(client.validate(key, &old).unwrap().valid);
    assert_eq!(
        client.validate(key, &new).unwrap().code,
        Code::MachineLimitReached
    );
    let cached = client.cache_path(key, &old).unwrap();
    assert!(cached.exists());

    let freed = client.deactivate(key, &old).unwrap();
    assert_eq!(
        freed,
        keysmith::Deactivation {
            domain_freed: false,
            machine_freed: true
        }
    );
    assert!(!cached.exists(), "the old machine's answer is forgotten");
    assert!(client
        .validate_offline(key, &old)
        .unwrap_err()
        .is_no_cache());
    assert!(client.validate(key, &new).unwrap().valid);
    // Again: nothing left to free, which is not an error.
    assert_eq!(
        client.deactivate(key, &old).unwrap(),
        keysmith::Deactivation::default()
    );

    // What it refuses, and without a server.
    let unknown = keysmith::LicenseKey::generate("KS").unwrap();
    let err = client.deactivate(unknown.as_str(), &old).unwrap_err();
    assert!(err.is_not_found(), "{err:#}");
    let last = if key.ends_with('X') { 'Y' } else { 'X' };
    let typo = format!("{}{last}", &key[..key.len() - 1]);
    assert!(client
        .deactivate(&typo, &old)
        .unwrap_err()
        .is_key_malformed());
    let err = client.deactivate(key, &ValidateOptions::new()).unwrap_err();
    assert!(err.is_invalid_argument(), "{err:#}");
    // A 404 that is not the server's LICENSE_NOT_FOUND (a base URL with
    // a wrong path: no such route) is not "no such license": an app told
    // that might throw a good key away.
    let astray = keysmith::blocking::Client::builder(format!("{}/wrong", l.server.url))
        .public_key(&l.public_key)
        .app_id("e2e-app")
        .cache_dir(l.cache.path())
        .build()
        .unwrap();
    let err = astray.deactivate(key, &new).unwrap_err();
    assert!(!err.is_not_found() && err.is_protocol(), "{err:#}");

    // A cached answer that cannot be removed is said, not ignored: it
    // would keep the old machine working offline. (A directory where the
    // file goes: removing it fails even for root.)
    assert!(client.validate(key, &new).unwrap().valid);
    let stuck = client.cache_path(key, &new).unwrap();
    std::fs::remove_file(&stuck).unwrap();
    std::fs::create_dir(&stuck).unwrap();
    std::fs::write(stuck.join("inside"), b"x").unwrap();
    let err = client.deactivate(key, &new).unwrap_err();
    assert!(
        err.to_string().contains("seat was freed") && err.is_builder(),
        "{err:#}"
    );
    // Again: nothing left to free, the answer still there.
    assert!(client.deactivate(key, &new).unwrap_err().is_builder());
    std::fs::remove_dir_all(&stuck).unwrap();

    l.server.kill9();
    assert!(client.deactivate(key, &new).unwrap_err().is_network());
}

#[test]
fn an_unknown_license_is_a_signed_answer() {
    let l = Licensed::start();
    let client = l.client().build().unwrap();
    let unknown = keysmith::LicenseKey::generate("KS").unwrap();
    let answer = client
        .validate(unknown.as_str(), &ValidateOptions::new())
        .unwrap();
    assert_eq!(
        (answer.valid, answer.code, answer.source),
        (false, Code::LicenseNotFound, Source::Online)
    );
    assert!(answer.claims.unwrap().sub.is_none());
}

#[test]
fn a_token_signed_by_another_key_is_rejected() {
    let l = Licensed::start();
    let stranger = public_key_base64(&SigningKey::from_bytes(&[9; 32]).verifying_key());
    let client = l.client().public_key(&stranger).build().unwrap();
    let err = client
        .validate(&l.key, &ValidateOptions::new())
        .unwrap_err();
    assert!(err.is_signature(), "{err:#}");
    assert!(!err.is_network());
    assert!(l.cache_files().is_empty(), "nothing untrusted is cached");
    // The server did answer; only the app refused to believe it.
    assert_eq!(l.validation_count(), 1);

    // Rotation: the app pins the next key too, and either verifies.
    let both = format!("{stranger},{}", l.public_key);
    let rotated = l.client().public_key(both).build().unwrap();
    assert!(
        rotated
            .validate(&l.key, &ValidateOptions::new())
            .unwrap()
            .valid
    );
}

/// A signing-key rotation as docs/security.md tells it: `public-key` prints
/// what the app pins now, `new-signing-key` makes the next key and prints
/// its public key; an app that pins both keeps working when the server
/// switches to the new key, one that pins only the old key refuses it.
#[test]
fn a_signing_key_rotation_with_the_server_commands() {
    let mut l = Licensed::start();
    let data_dir = l.server.data_dir.clone();
    let text = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout.clone()).unwrap()
    };
    let line = |text: &str, label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} in {text}"))
            .trim()
            .to_owned()
    };

    // `public-key` reads the running server's key file: what the API serves.
    let dir_arg = ["public-key", "--data-dir", data_dir.to_str().unwrap()];
    let shown = text(&keysmith_tests::server_command(&dir_arg));
    assert_eq!(line(&shown, "public key:"), l.public_key);
    let json_out = text(&keysmith_tests::server_command(
        &[&dir_arg[..], &["--json"]].concat(),
    ));
    let (_, served) = l.server.request("GET", "/api/v1/public-key", None, None);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json_out).unwrap(),
        served
    );

    // `new-signing-key` makes the next key, private, and never overwrites.
    let keys = tempfile::tempdir().unwrap();
    let next = keys.path().join("next.key");
    let created =
        keysmith_tests::server_command(&["new-signing-key", "--to", next.to_str().unwrap()]);
    let created = text(&created);
    let next_public = line(&created, "public key:");
    assert_ne!(next_public, l.public_key);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&next).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let bytes = std::fs::read(&next).unwrap();
    let again =
        keysmith_tests::server_command(&["new-signing-key", "--to", next.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
    assert_eq!(
        std::fs::read(&next).unwrap(),
        bytes,
        "the key file is untouched"
    );
    let by_path = ["public-key", "--signing-key", next.to_str().unwrap()];
    let by_path = text(&keysmith_tests::server_command(&by_path));
    assert_eq!(line(&by_path, "public key:"), next_public);
    assert_eq!(line(&by_path, "key id:"), line(&created, "key id:"));

    // The next release pins both keys: valid against the old key ...
    let both = format!("{},{next_public}", l.public_key);
    let options = ValidateOptions::new();
    let before = l.client().public_key(&both).build().unwrap();
    assert!(before.validate(&l.key, &options).unwrap().valid);

    // ... and after the switch, where the old release refuses the answer.
    assert_eq!(l.server.terminate(), Some(0));
    let switched = TestServer::start_with(keysmith_tests::ServerOptions {
        data_dir: Some(data_dir.clone()),
        args: vec!["--signing-key".into(), next.display().to_string()],
        ..Default::default()
    });
    assert_eq!(switched.public_key(), next_public);
    let client = |keys: &str| {
        let cache = tempfile::tempdir().unwrap();
        let client = keysmith::blocking::Client::builder(&switched.url)
            .public_key(keys)
            .cache_dir(cache.path())
            .build()
            .unwrap();
        (client, cache)
    };
    let (new_release, _cache) = client(&both);
    let after = new_release.validate(&l.key, &options).unwrap();
    assert!(after.valid && after.source == Source::Online, "{after:?}");
    let (old_release, _cache) = client(&l.public_key);
    let refused = old_release.validate(&l.key, &options).unwrap_err();
    assert!(refused.is_signature(), "{refused:#}");

    // `public-key` never creates a key where there is none.
    let empty = tempfile::tempdir().unwrap();
    let missing = keysmith_tests::server_command(&[
        "public-key",
        "--data-dir",
        empty.path().to_str().unwrap(),
    ]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no signing key at"));
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

#[test]
fn a_second_server_with_its_own_key_is_not_trusted() {
    let l = Licensed::start();
    let other = TestServer::start();
    other.plan("pro", json!({"features": ["sso"]}));
    let license = other.license("pro", json!({}));
    // Pinned to the first server's key, pointed at the second.
    let client = keysmith::blocking::Client::builder(&other.url)
        .public_key(&l.public_key)
        .cache_dir(l.cache.path())
        .build()
        .unwrap();
    let err = client
        .validate(license["key"].as_str().unwrap(), &ValidateOptions::new())
        .unwrap_err();
    assert!(err.is_signature(), "{err:#}");
}

/// A genuine token from the real server, replayed by a fake one: the nonce
/// (and the domain, fingerprint, key) must match the request.
#[test]
fn replayed_or_misdirected_tokens_are_rejected() {
    let l = Licensed::start();
    let (_, genuine) = l
        .server
        .validate(json!({"key": l.key, "domain": "a.example.com", "nonce": "old"}));
    assert_eq!(genuine["code"], "VALID");
    let reply = genuine.to_string();
    let fake = FakeServer::start(move |_| (200, reply.clone()));
    let client = keysmith::blocking::Client::builder(&fake.url)
        .public_key(&l.public_key)
        .cache_dir(l.cache.path())
        .build()
        .unwrap();
    let cases = [
        (ValidateOptions::new().domain("a.example.com"), "nonce"),
        (ValidateOptions::new().domain("b.example.com"), "domain"),
        (
            ValidateOptions::new()
                .domain("a.example.com")
                .fingerprint("m-1"),
            "fingerprint",
        ),
    ];
    for (options, what) in cases {
        let err = client.validate(&l.key, &options).unwrap_err();
        assert!(err.is_signature(), "{what}: {err:#}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
    let other_key = keysmith::LicenseKey::generate("KS").unwrap();
    let err = client
        .validate(
            other_key.as_str(),
            &ValidateOptions::new().domain("a.example.com"),
        )
        .unwrap_err();
    assert!(err.to_string().contains("key"), "{err}");
    // The client did send a nonce, a fresh one each time.
    let nonces: Vec<String> = fake
        .requests()
        .iter()
        .map(|r| r.body["nonce"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(nonces.len(), 4);
    assert!(nonces.iter().all(|n| n.len() == 32 && n != "old"));
    assert_eq!(
        nonces
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        4
    );
    assert!(l.cache_files().is_empty());
}

/// A server that says VALID without a token, or with a token that lies
/// about its own body, is not believed.
#[test]
fn unsigned_or_forged_answers_are_rejected() {
    let l = Licensed::start();
    let forger = SigningKey::from_bytes(&[9; 32]);
    let (_, genuine) = l.server.validate(json!({"key": l.key}));
    let genuine_claims = keysmith_core::KeySet::from_base64_list(&l.public_key)
        .unwrap()
        .verify(genuine["token"].as_str().unwrap())
        .unwrap();
    let fake = FakeServer::start(move |req| {
        let mut claims = genuine_claims.clone();
        claims.nonce = req.body["nonce"].as_str().map(str::to_owned);
        claims.exp = i64::MAX / 2;
        let unsigned =
            json!({"valid": true, "code": "VALID", "license": null, "nonce": req.body["nonce"]});
        match req.body["domain"].as_str() {
            Some("unsigned.example") => (200, unsigned.to_string()),
            _ => (
                200,
                json!({"valid": true, "code": "VALID", "token": token::sign(&forger, &claims)})
                    .to_string(),
            ),
        }
    });
    let client = keysmith::blocking::Client::builder(&fake.url)
        .public_key(&l.public_key)
        .cache_dir(l.cache.path())
        .build()
        .unwrap();
    for domain in ["unsigned.example", "forged.example"] {
        let err = client
            .validate(&l.key, &ValidateOptions::new().domain(domain))
            .unwrap_err();
        assert!(err.is_signature(), "{domain}: {err:#}");
    }
}

#[test]
fn no_server_and_no_cache_is_no_answer() {
    let l = Licensed::start();
    let client = keysmith::blocking::Client::builder(closed_url())
        .public_key(&l.public_key)
        .cache_dir(l.cache.path())
        .build()
        .unwrap();
    let err = client
        .validate(&l.key, &ValidateOptions::new())
        .unwrap_err();
    assert!(err.is_network() && !err.is_timeout(), "{err:#}");
    assert!(err.to_string().contains("no usable cached answer"), "{err}");
    let err = client
        .validate_offline(&l.key, &ValidateOptions::new())
        .unwrap_err();
    assert!(err.is_no_cache());
    // Bad arguments are errors too, before any request.
    let err = client
        .validate(&l.key, &ValidateOptions::new().domain("not a host"))
        .unwrap_err();
    assert!(err.is_invalid_argument());
}

#[test]
fn a_server_that_does_not_answer_in_time_or_answers_408_is_a_timeout() {
    let l = Licensed::start();
    let body = r#"{"valid":false,"code":"TIMEOUT","error":"TIMEOUT","message":"slow"}"#;
    let fake = FakeServer::start(move |_| (408, body.to_owned()));
    for url in [common_sdk::black_hole_url(), fake.url.clone()] {
        let client = keysmith::blocking::Client::builder(&url)
            .public_key(&l.public_key)
            .cache_dir(l.cache.path())
            .timeout(std::time::Duration::from_millis(300))
            .build()
            .unwrap();
        let err = client
            .validate(&l.key, &ValidateOptions::new())
            .unwrap_err();
        assert!(err.is_timeout(), "{url}: {err:#}");
    }
    assert_eq!(fake.connections(), 1);
}
