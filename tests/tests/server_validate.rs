//! `/api/v1/validate` end to end: every code, the token, the seat race.

use std::sync::Arc;

use keysmith_core::token::KeySet;
use keysmith_core::LicenseKey;
use keysmith_tests::{Backend, ServerOptions, TestServer};
use serde_json::{json, Value};

keysmith_tests::on_both_backends!(
    a_valid_key_answers_valid_with_a_signed_token,
    a_tampered_token_is_rejected,
    every_decided_code_is_signed_and_every_other_is_not,
    idn_domains_take_seats_in_punycode,
    forty_concurrent_domains_take_exactly_three_seats,
    every_one_symbol_typo_and_neighbour_swap_of_an_issued_key_is_key_malformed,
    clients_over_the_rate_limit_get_429_with_retry_after,
    first_valid_fires_license_activated_once,
);

fn key_of(license: &Value) -> String {
    license["key"].as_str().unwrap().to_owned()
}

/// Verifies the answer's token with the server's published key and returns its claims.
fn claims(server: &TestServer, answer: &Value) -> keysmith_core::Claims {
    let keys = KeySet::from_base64_list(&server.public_key()).unwrap();
    keys.verify(answer["token"].as_str().expect("a token"))
        .expect("token verifies")
}

fn a_valid_key_answers_valid_with_a_signed_token(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan(
        "pro",
        json!({"features": ["sso", "audit-log"], "offline_grace_days": 3}),
    );
    let license = server.license("pro", json!({"expires_at": "2099-01-01T00:00:00Z"}));
    let key = key_of(&license);
    // Forgiving input: lower case, no dashes, O for 0.
    let typed = key.to_lowercase().replace('-', "");
    let (status, answer) = server.validate(
        json!({"key": typed, "domain": "WWW.Example.COM.", "fingerprint": "m-1", "nonce": "n-42"}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["code"], "VALID");
    assert!(answer.get("error").is_none());
    assert_eq!(answer["nonce"], "n-42");
    assert_eq!(answer["license"]["id"], license["id"]);
    assert_eq!(answer["license"]["features"], json!(["sso", "audit-log"]));
    assert_eq!(answer["license"]["expires_at"], "2099-01-01T00:00:00Z");

    let c = claims(&server, &answer);
    assert_eq!(c.sub.as_deref(), license["id"].as_str());
    assert_eq!(c.key_sha256, LicenseKey::parse(&key).unwrap().sha256_hex());
    assert!(c.valid);
    assert_eq!(c.domain.as_deref(), Some("www.example.com"));
    assert_eq!(c.fingerprint.as_deref(), Some("m-1"));
    assert_eq!(c.nonce.as_deref(), Some("n-42"));
    assert_eq!(c.plan.as_deref(), Some("pro"));
    assert_eq!(
        c.exp - c.iat,
        3 * 86_400,
        "exp is iat + the plan's offline grace"
    );
    assert_eq!(
        c.license_expires_at.as_deref(),
        Some("2099-01-01T00:00:00Z")
    );

    let (_, after) = server.admin(
        "GET",
        &format!("/licenses/{}", license["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(after["validation_count"], 1);
    assert_eq!(after["domains"], json!(["www.example.com"]));
    assert_eq!(after["machines"], json!(["m-1"]));
    assert!(after["last_validated_at"].is_string());
}

/// SPEC §5: "any JWT library can verify it". `jsonwebtoken` (not this
/// project's verifier) checks a real answer's token against the key of the
/// server's JWKS: the header (`alg`, `typ`, `kid`), the encoding, the
/// signature and the registered claims.
#[test]
fn a_token_verifies_with_an_independent_jwt_library() {
    use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
    let server = TestServer::start();
    server.plan("pro", json!({"features": ["sso"], "offline_grace_days": 2}));
    let license = server.license("pro", json!({}));
    let (status, answer) = server.validate(json!({"key": key_of(&license), "nonce": "n-1"}));
    assert_eq!(status, 200, "{answer}");
    let token = answer["token"].as_str().expect("a token");

    let (_, jwks) = server.request("GET", "/.well-known/jwks.json", None, None);
    let jwks: JwkSet = serde_json::from_value(jwks).expect("the JWKS is a JWK set");
    let header = decode_header(token).expect("a JWS header");
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let kid = header.kid.expect("a kid");
    let jwk = jwks.find(&kid).expect("the kid names a key of the JWKS");
    let key = DecodingKey::from_jwk(jwk).expect("an Ed25519 JWK");
    let (_, pk) = server.request("GET", "/api/v1/public-key", None, None);
    assert_eq!(pk["key_id"], kid.as_str());

    let mut rules = Validation::new(Algorithm::EdDSA);
    rules.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
    rules.set_issuer(&[claims(&server, &answer).iss]);
    let data = decode::<Value>(token, &key, &rules).expect("jsonwebtoken verifies the token");
    assert_eq!(data.claims["sub"], license["id"]);
    assert_eq!(data.claims["valid"], true);
    assert_eq!(data.claims["code"], "VALID");
    assert_eq!(data.claims["nonce"], "n-1");
    assert_eq!(data.claims["features"], json!(["sso"]));
    let (iat, exp) = (&data.claims["iat"], &data.claims["exp"]);
    assert!(
        iat.is_i64() && exp.is_i64(),
        "NumericDate integers: {iat} {exp}"
    );
    assert_eq!(exp.as_i64().unwrap() - iat.as_i64().unwrap(), 2 * 86_400);

    // One byte of the payload changed: the same library refuses it.
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    let flipped = if parts[1].ends_with('A') { 'B' } else { 'A' };
    parts[1].pop();
    parts[1].push(flipped);
    assert!(decode::<Value>(&parts.join("."), &key, &rules).is_err());
}

fn a_tampered_token_is_rejected(backend: Backend) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let server = TestServer::start_on(backend);
    server.plan("pro", json!({"features": []}));
    let license = server.license("pro", json!({}));
    server.admin(
        "PUT",
        &format!("/licenses/{}", license["id"].as_str().unwrap()),
        Some(json!({"status": "suspended"})),
    );
    let (_, answer) = server.validate(json!({"key": key_of(&license)}));
    assert_eq!(answer["code"], "LICENSE_SUSPENDED");
    let token = answer["token"].as_str().unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut body: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    body["valid"] = json!(true);
    body["code"] = json!("VALID");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(body.to_string()),
        parts[2]
    );
    let keys = KeySet::from_base64_list(&server.public_key()).unwrap();
    assert!(keys.verify(token).is_ok());
    assert_eq!(
        keys.verify(&forged),
        Err(keysmith_core::TokenError::Signature)
    );
    // And a key of another server does not verify this one's tokens.
    let other = TestServer::start_on(backend);
    let other_keys = KeySet::from_base64_list(&other.public_key()).unwrap();
    assert!(other_keys.verify(token).is_err());
}

fn every_decided_code_is_signed_and_every_other_is_not(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan(
        "one",
        json!({"features": ["x"], "max_domains": 1, "max_machines": 1}),
    );
    let prefix_key = |l: &Value| key_of(l);

    // LICENSE_NOT_FOUND: 404, signed, no license.
    let unknown = LicenseKey::generate("KS").unwrap();
    let (status, answer) = server.validate(json!({"key": unknown.as_str(), "nonce": "q"}));
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("LICENSE_NOT_FOUND")),
        "{answer}"
    );
    assert_eq!(answer["error"], "LICENSE_NOT_FOUND");
    let c = claims(&server, &answer);
    assert_eq!(
        (c.sub, c.status, c.valid, c.exp - c.iat),
        (None, None, false, 0)
    );
    assert_eq!(c.key_sha256, unknown.sha256_hex());

    // Suspended, revoked, expired: 200, signed, invalid, exp = iat.
    let suspended = server.license("one", json!({}));
    server.admin(
        "PUT",
        &format!("/licenses/{}", suspended["id"].as_str().unwrap()),
        Some(json!({"status": "suspended"})),
    );
    let revoked = server.license("one", json!({}));
    server.admin(
        "DELETE",
        &format!("/licenses/{}", revoked["id"].as_str().unwrap()),
        None,
    );
    let expired = server.license("one", json!({"expires_at": "2020-01-01T00:00:00Z"}));
    for (license, code, status) in [
        (&suspended, "LICENSE_SUSPENDED", "suspended"),
        (&revoked, "LICENSE_REVOKED", "revoked"),
        (&expired, "LICENSE_EXPIRED", "expired"),
    ] {
        let (http, answer) = server.validate(json!({"key": prefix_key(license)}));
        assert_eq!(http, 200);
        assert_eq!(
            (answer["valid"].as_bool(), answer["code"].as_str()),
            (Some(false), Some(code)),
            "{answer}"
        );
        assert_eq!(answer["error"], code);
        assert_eq!(answer["license"]["status"], status);
        let c = claims(&server, &answer);
        assert_eq!(
            (c.valid, c.exp, c.status.unwrap().as_str()),
            (false, c.iat, status)
        );
    }

    // Seat limits.
    let seats = server.license("one", json!({}));
    let key = prefix_key(&seats);
    assert_eq!(
        server
            .validate(json!({"key": key, "domain": "a.example", "fingerprint": "m1"}))
            .1["code"],
        "VALID"
    );
    let (http, answer) = server.validate(json!({"key": key, "domain": "b.example"}));
    assert_eq!(
        (http, answer["code"].as_str()),
        (200, Some("DOMAIN_LIMIT_REACHED"))
    );
    assert_eq!(
        claims(&server, &answer).domain.as_deref(),
        Some("b.example")
    );
    let (http, answer) = server.validate(json!({"key": key, "fingerprint": "m2"}));
    assert_eq!(
        (http, answer["code"].as_str()),
        (200, Some("MACHINE_LIMIT_REACHED"))
    );
    assert!(!claims(&server, &answer).valid);
    // A held seat keeps validating.
    assert_eq!(
        server
            .validate(json!({"key": key, "domain": "A.example", "fingerprint": "m1"}))
            .1["code"],
        "VALID"
    );

    // Undecided answers: 400, same shape, no token.
    let mut typo = key.clone().into_bytes();
    typo[3] = if typo[3] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();
    for (body, code) in [
        (json!({"key": typo}), "KEY_MALFORMED"),
        (json!({"key": "XX-" }), "KEY_MALFORMED"),
        (
            json!({"key": key, "domain": "not a host"}),
            "INVALID_DOMAIN",
        ),
        (
            json!({"key": key, "domain": "http://example.com/"}),
            "INVALID_DOMAIN",
        ),
        (json!({"domain": "example.com"}), "BAD_REQUEST"),
        (json!({"key": 42}), "BAD_REQUEST"),
        (
            json!({"key": key, "fingerprint": "has spaces"}),
            "BAD_REQUEST",
        ),
        (json!({"key": key, "nonce": "n".repeat(200)}), "BAD_REQUEST"),
    ] {
        let (http, answer) = server.validate(body.clone());
        assert_eq!(http, 400, "{body} → {answer}");
        assert_eq!(answer["valid"], false);
        assert_eq!(answer["code"], code, "{body}");
        assert_eq!(answer["error"], code);
        assert!(answer["token"].is_null(), "{code} is not signed");
        assert!(answer["message"].is_string());
    }
    let (http, answer) = server.raw("POST", "/api/v1/validate", b"{not json".to_vec());
    assert_eq!(
        (http, answer["code"].as_str(), answer["valid"].as_bool()),
        (400, Some("BAD_REQUEST"), Some(false))
    );

    // A key of another prefix is not this server's format.
    let foreign = LicenseKey::generate("ACME").unwrap();
    assert_eq!(
        server.validate(json!({"key": foreign.as_str()})).1["code"],
        "KEY_MALFORMED"
    );
}

fn idn_domains_take_seats_in_punycode(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan("p", json!({"features": []}));
    let license = server.license("p", json!({}));
    let (_, answer) = server.validate(json!({"key": key_of(&license), "domain": "Bücher.Example"}));
    assert_eq!(answer["code"], "VALID");
    assert_eq!(
        claims(&server, &answer).domain.as_deref(),
        Some("xn--bcher-kva.example")
    );
    let (_, after) = server.admin(
        "GET",
        &format!("/licenses/{}", license["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(after["domains"], json!(["xn--bcher-kva.example"]));
}

fn forty_concurrent_domains_take_exactly_three_seats(backend: Backend) {
    let server = Arc::new(TestServer::start_with(ServerOptions {
        backend,
        args: vec!["--rate-limit".into(), "0".into()],
        ..Default::default()
    }));
    server.plan("three", json!({"features": [], "max_domains": 3}));
    let license = server.license("three", json!({}));
    let key = key_of(&license);
    let barrier = Arc::new(std::sync::Barrier::new(40));
    let handles: Vec<_> = (0..40)
        .map(|i| {
            let (server, key, barrier) = (server.clone(), key.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                server
                    .validate(json!({"key": key, "domain": format!("d{i}.example")}))
                    .1["code"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
        })
        .collect();
    let codes: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        codes.iter().filter(|c| *c == "VALID").count(),
        3,
        "{codes:?}"
    );
    assert_eq!(
        codes
            .iter()
            .filter(|c| *c == "DOMAIN_LIMIT_REACHED")
            .count(),
        37,
        "{codes:?}"
    );
    let (_, after) = server.admin(
        "GET",
        &format!("/licenses/{}", license["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(after["domains"].as_array().unwrap().len(), 3);
    assert_eq!(after["validation_count"], 40);
}

fn every_one_symbol_typo_and_neighbour_swap_of_an_issued_key_is_key_malformed(backend: Backend) {
    let server = TestServer::start_with(ServerOptions {
        backend,
        args: ["--rate-limit", "0", "--failed-lookup-limit", "0"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    server.plan("p", json!({"features": []}));
    let license = server.license("p", json!({}));
    let key = key_of(&license);
    let (prefix, body) = key.split_once('-').unwrap();
    let symbols: Vec<u8> = body.bytes().filter(|b| *b != b'-').collect();
    assert_eq!(symbols.len(), 24);
    let mut variants = Vec::new();
    for pos in 0..24 {
        for &s in keysmith_core::key::ALPHABET.iter() {
            if s != symbols[pos] {
                let mut v = symbols.clone();
                v[pos] = s;
                variants.push(v);
            }
        }
        if pos < 23 && symbols[pos] != symbols[pos + 1] {
            let mut v = symbols.clone();
            v.swap(pos, pos + 1);
            variants.push(v);
        }
    }
    assert!(variants.len() >= 24 * 31);
    for v in variants {
        let typed = format!("{prefix}-{}", String::from_utf8(v).unwrap());
        let (status, answer) = server.validate(json!({"key": typed}));
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("KEY_MALFORMED")),
            "{typed}"
        );
    }
    let (_, after) = server.admin(
        "GET",
        &format!("/licenses/{}", license["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(
        after["validation_count"], 0,
        "malformed keys never reach storage"
    );
}

fn clients_over_the_rate_limit_get_429_with_retry_after(backend: Backend) {
    let server = TestServer::start_with(ServerOptions {
        backend,
        args: vec!["--rate-limit".into(), "2".into()],
        ..Default::default()
    });
    let key = LicenseKey::generate("KS").unwrap();
    let mut limited = None;
    for _ in 0..20 {
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/api/v1/validate", server.url))
            .json(&json!({"key": key.as_str()}))
            .send()
            .unwrap();
        if resp.status() == 429 {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("a client sending 20 requests at once is limited at 2/s");
    assert!(
        resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let answer: Value = resp.json().unwrap();
    assert_eq!(
        (answer["code"].as_str(), answer["valid"].as_bool()),
        (Some("RATE_LIMITED"), Some(false))
    );
    assert_eq!(answer["error"], "RATE_LIMITED");
}

fn first_valid_fires_license_activated_once(backend: Backend) {
    let server = TestServer::start_on(backend);
    let _receiver = server.keep_every_event();
    server.plan("p", json!({"features": []}));
    let license = server.license("p", json!({}));
    let key = key_of(&license);
    for _ in 0..3 {
        assert_eq!(server.validate(json!({"key": key})).1["code"], "VALID");
    }
    let types = server.event_types(license["id"].as_str().unwrap());
    assert_eq!(types, ["license.created", "license.activated"]);
}
