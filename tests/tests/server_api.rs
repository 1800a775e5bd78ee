//! The management API end to end: plans, licenses, lists, updates, status
//! changes, usage, seats, deactivation and the error shape.

use keysmith_tests::{Backend, TestServer, ADMIN_TOKEN};
use serde_json::{json, Value};

keysmith_tests::on_both_backends!(
    health_and_public_keys,
    management_routes_need_the_admin_token,
    plans_are_created_replaced_listed_and_deleted,
    licenses_take_plan_defaults_and_explicit_values,
    bad_license_input_is_refused_and_changes_nothing,
    updates_change_only_what_is_sent_and_status_moves_by_the_rules,
    conditional_updates_refuse_a_version_changed_since_it_was_read,
    lists_filter_and_page_through_every_item_once,
    usage_history_is_newest_first_paginated_with_totals,
    seats_are_freed_by_admins_and_by_apps,
    the_expiry_sweep_marks_licenses_expired_within_its_interval,
    usage_past_the_retention_is_deleted_and_counts_stay,
);

fn id(license: &Value) -> String {
    license["id"].as_str().unwrap().to_owned()
}

fn assert_error(answer: &(u16, Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
    assert!(answer.1["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

fn health_and_public_keys(backend: Backend) {
    let server = TestServer::start_on(backend);
    assert_eq!(server.request("GET", "/healthz", None, None).0, 200);
    let (status, pk) = server.request("GET", "/api/v1/public-key", None, None);
    assert_eq!(status, 200);
    assert_eq!(
        (pk["algorithm"].as_str(), pk["curve"].as_str()),
        (Some("EdDSA"), Some("Ed25519"))
    );
    assert_eq!(pk["key_id"].as_str().unwrap().len(), 16);
    let (status, jwks) = server.request("GET", "/.well-known/jwks.json", None, None);
    assert_eq!(status, 200);
    let jwk = &jwks["keys"][0];
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    assert_eq!(jwk["kid"], pk["key_id"]);
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(pk["public_key"].as_str().unwrap())
        .unwrap();
    assert_eq!(x, raw);
}

fn management_routes_need_the_admin_token(backend: Backend) {
    let server = TestServer::start_on(backend);
    for (method, path) in [
        ("GET", "/api/v1/licenses"),
        ("POST", "/api/v1/licenses"),
        ("GET", "/api/v1/licenses/lic_X"),
        ("PUT", "/api/v1/licenses/lic_X"),
        ("DELETE", "/api/v1/licenses/lic_X"),
        ("GET", "/api/v1/licenses/lic_X/usage"),
        ("DELETE", "/api/v1/licenses/lic_X/domains/a.com"),
        ("DELETE", "/api/v1/licenses/lic_X/machines/m1"),
        ("GET", "/api/v1/plans"),
        ("PUT", "/api/v1/plans/p"),
        ("GET", "/api/v1/plans/p"),
        ("DELETE", "/api/v1/plans/p"),
    ] {
        assert_error(
            &server.request(method, path, None, Some(&json!({}))),
            401,
            "UNAUTHORIZED",
        );
        assert_error(
            &server.request(method, path, Some("wrong-token"), Some(&json!({}))),
            401,
            "UNAUTHORIZED",
        );
    }
    assert_eq!(
        server
            .request("GET", "/api/v1/plans", Some(ADMIN_TOKEN), None)
            .0,
        200
    );
    // The scheme in any case (RFC 9110); a 401 names the scheme it wants.
    let http = reqwest::blocking::Client::new();
    let with = |authorization: String| {
        http.get(format!("{}/api/v1/plans", server.url))
            .header("authorization", authorization)
            .send()
            .unwrap()
    };
    assert_eq!(with(format!("bearer {ADMIN_TOKEN}")).status(), 200);
    let refused = with("Basic x".into());
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
}

fn plans_are_created_replaced_listed_and_deleted(backend: Backend) {
    let server = TestServer::start_on(backend);
    let (status, plan) = server.admin(
        "PUT",
        "/plans/pro",
        Some(json!({"features": ["sso", "sso", "audit-log"], "max_domains": 3, "duration_days": 365})),
    );
    assert_eq!(status, 201);
    assert_eq!(
        plan,
        json!({"name": "pro", "features": ["sso", "audit-log"], "max_domains": 3, "max_machines": null,
               "duration_days": 365, "offline_grace_days": 7})
    );
    let (status, plan) = server.admin(
        "PUT",
        "/plans/pro",
        Some(json!({"features": ["sso"], "offline_grace_days": 2})),
    );
    assert_eq!(status, 200);
    assert_eq!(plan["max_domains"], Value::Null, "PUT replaces the plan");
    assert_eq!(server.admin("GET", "/plans/pro", None).1, plan);
    server.plan("basic", json!({"features": []}));
    let (_, list) = server.admin("GET", "/plans", None);
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["basic", "pro"]);
    assert_eq!(list["next_cursor"], Value::Null);

    assert_error(
        &server.admin("PUT", "/plans/x", Some(json!({"max_domains": 1}))),
        400,
        "BAD_REQUEST",
    );
    // A term of 0 days would make every license on the plan expired at
    // birth; no term at all is `null`.
    assert_error(
        &server.admin(
            "PUT",
            "/plans/x",
            Some(json!({"features": [], "duration_days": 0})),
        ),
        422,
        "INVALID_PLAN",
    );
    assert_error(
        &server.admin(
            "PUT",
            "/plans/x",
            Some(json!({"features": [], "max_domains": -1})),
        ),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &server.admin("PUT", "/plans/x", Some(json!({"features": [""]}))),
        422,
        "INVALID_FEATURES",
    );
    assert_error(
        &server.admin("PUT", "/plans/bad%20name", Some(json!({"features": []}))),
        400,
        "BAD_REQUEST",
    );
    // "." and ".." are path segments URL libraries remove (this client
    // too: `check_name`'s unit test has them), so a plan so named could not
    // be read or deleted by most clients; no name is only dots.
    for dots in ["...", "...."] {
        assert_error(
            &server.admin(
                "PUT",
                &format!("/plans/{dots}"),
                Some(json!({"features": []})),
            ),
            400,
            "BAD_REQUEST",
        );
    }
    assert_error(
        &server.admin("GET", "/plans/nope", None),
        404,
        "PLAN_NOT_FOUND",
    );

    server.license("pro", json!({}));
    assert_error(
        &server.admin("DELETE", "/plans/pro", None),
        409,
        "PLAN_IN_USE",
    );
    assert_eq!(server.admin("DELETE", "/plans/basic", None).0, 204);
    assert_error(
        &server.admin("DELETE", "/plans/basic", None),
        404,
        "PLAN_NOT_FOUND",
    );
}

fn licenses_take_plan_defaults_and_explicit_values(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan(
        "pro",
        json!({"features": ["sso"], "max_domains": 3, "max_machines": 2, "duration_days": 30}),
    );
    let license = server.license("pro", json!({"metadata": {"order_id": "1042"}}));
    assert!(id(&license).starts_with("lic_"));
    assert!(keysmith_core::LicenseKey::parse(license["key"].as_str().unwrap()).is_ok());
    assert_eq!(license["status"], "active");
    assert_eq!(
        (
            license["max_domains"].as_u64(),
            license["max_machines"].as_u64()
        ),
        (Some(3), Some(2))
    );
    assert_eq!(license["metadata"], json!({"order_id": "1042"}));
    assert_eq!(
        (license["domains"].clone(), license["machines"].clone()),
        (json!([]), json!([]))
    );
    assert_eq!(license["validation_count"], 0);
    let created =
        chrono::DateTime::parse_from_rfc3339(license["created_at"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(license["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_days(), 30);

    let explicit = server.license(
        "pro",
        json!({"max_domains": null, "max_machines": 9, "expires_at": null, "customer_email": "Buyer@Example.org"}),
    );
    assert_eq!(explicit["max_domains"], Value::Null, "null is unlimited");
    assert_eq!(explicit["max_machines"], 9);
    assert_eq!(explicit["expires_at"], Value::Null, "null is perpetual");
    assert_ne!(explicit["key"], license["key"]);
    assert_eq!(
        server
            .admin("GET", &format!("/licenses/{}", id(&explicit)), None)
            .1,
        explicit
    );
}

fn bad_license_input_is_refused_and_changes_nothing(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan("pro", json!({"features": []}));
    let license = server.license("pro", json!({}));
    let path = format!("/licenses/{}", id(&license));
    let create = |body: Value| server.admin("POST", "/licenses", Some(body));
    assert_error(
        &create(json!({"plan": "nope", "customer_email": "a@b.co"})),
        422,
        "PLAN_NOT_FOUND",
    );
    assert_error(
        &create(json!({"plan": "pro", "customer_email": "not-an-email"})),
        422,
        "INVALID_EMAIL",
    );
    assert_error(&create(json!({"plan": "pro"})), 400, "BAD_REQUEST");
    assert_error(
        &create(json!({"plan": "pro", "customer_email": "a@b.co", "max_domains": "3"})),
        400,
        "BAD_REQUEST",
    );
    // Year 10000 in UTC: no RFC 3339 time to answer with, and every SDK
    // refused the license's answers.
    for expires_at in ["tomorrow", "9999-12-31T23:59:59-23:59"] {
        assert_error(
            &create(json!({"plan": "pro", "customer_email": "a@b.co", "expires_at": expires_at})),
            400,
            "BAD_REQUEST",
        );
    }
    assert_error(
        &create(json!({"plan": "pro", "customer_email": "a@b.co", "metadata": [1]})),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &create(json!({"plan": "pro", "customer_email": "a@b.co", "key": "KS-X"})),
        400,
        "BAD_REQUEST",
    );
    let huge = json!({"plan": "pro", "customer_email": "a@b.co", "metadata": {"blob": "x".repeat(20_000)}});
    assert_error(&create(huge), 422, "METADATA_TOO_LARGE");
    assert_error(
        &server.raw("POST", "/api/v1/licenses", b"{\"plan\":".to_vec()),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &server.raw("POST", "/api/v1/licenses", vec![b' '; 200_000]),
        413,
        "PAYLOAD_TOO_LARGE",
    );

    for body in [
        json!({"customer_email": "nope"}),
        json!({"plan": "missing"}),
        json!({"status": "revoked"}),
        json!({"status": "expired"}),
        json!({"status": "sleeping"}),
        json!({"max_domains": -2}),
        json!({"unknown_field": 1}),
    ] {
        let answer = server.admin("PUT", &path, Some(body.clone()));
        assert!(matches!(answer.0, 400 | 422), "{body} → {answer:?}");
    }
    assert_error(
        &server.raw("PUT", &format!("/api/v1{path}"), b"[".to_vec()),
        400,
        "BAD_REQUEST",
    );
    assert_eq!(
        server.admin("GET", &path, None).1,
        license,
        "nothing changed"
    );
    let (_, list) = server.admin("GET", "/licenses", None);
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "no license was created"
    );

    assert_error(
        &server.admin("GET", "/licenses/lic_NOPE", None),
        404,
        "LICENSE_NOT_FOUND",
    );
    assert_error(
        &server.admin("PUT", "/licenses/lic_NOPE", Some(json!({}))),
        404,
        "LICENSE_NOT_FOUND",
    );
    assert_error(
        &server.admin("DELETE", "/licenses/lic_NOPE", None),
        404,
        "LICENSE_NOT_FOUND",
    );
    assert_error(
        &server.admin("GET", "/licenses/lic_NOPE/usage", None),
        404,
        "LICENSE_NOT_FOUND",
    );
    assert_error(
        &server.request("GET", "/api/v1/nowhere", None, None),
        404,
        "NOT_FOUND",
    );
    assert_error(
        &server.request("PATCH", "/api/v1/licenses", Some(ADMIN_TOKEN), None),
        405,
        "METHOD_NOT_ALLOWED",
    );
}

fn conditional_updates_refuse_a_version_changed_since_it_was_read(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan("pro", json!({"features": ["a"]}));
    let license = server.license("pro", json!({"metadata": {"k": 1}}));
    let path = format!("/licenses/{}", id(&license));

    // Every answer that holds a license carries its tag.
    let (status, read, _) = server.admin_with("GET", &path, &[], None);
    assert_eq!(status, 200);
    let read = read.expect("a license's ETag");
    assert!(read.starts_with('"') && read.ends_with('"'), "{read}");
    let (_, created_tag, _) = server.admin_with(
        "POST",
        "/licenses",
        &[],
        Some(json!({"plan": "pro", "customer_email": "a@example.com"})),
    );
    assert!(created_tag.is_some(), "create answers with the tag too");

    // A validation that takes a seat does not change it.
    let (_, answer) = server.validate(json!({"key": license["key"], "domain": "a.example"}));
    assert_eq!(answer["code"], "VALID", "{answer}");
    assert_eq!(
        server.admin_with("GET", &path, &[], None).1,
        Some(read.clone())
    );

    // The first editor's write lands, the second's (same read) is refused
    // and changes nothing.
    let (status, after_first, first) = server.admin_with(
        "PUT",
        &path,
        &[("If-Match", &read)],
        Some(json!({"metadata": {"k": 1, "a": true}})),
    );
    assert_eq!(status, 200, "{first}");
    assert_ne!(after_first.as_deref(), Some(read.as_str()));
    let (status, _, refused) = server.admin_with(
        "PUT",
        &path,
        &[("If-Match", &read)],
        Some(json!({"metadata": {"k": 1, "b": true}})),
    );
    assert_error(&(status, refused), 412, "PRECONDITION_FAILED");
    assert_eq!(
        server.admin("GET", &path, None).1["metadata"],
        json!({"k": 1, "a": true})
    );
    // A list of tags, one of them current; `*`; a weak tag never matches.
    let list = format!("\"000000000000000000000000\", {}", after_first.unwrap());
    let (status, _, _) = server.admin_with(
        "PUT",
        &path,
        &[("If-Match", &list)],
        Some(json!({"customer_email": "b@example.com"})),
    );
    assert_eq!(status, 200);
    let (status, _, _) = server.admin_with(
        "PUT",
        &path,
        &[("If-Match", "*")],
        Some(json!({"customer_email": "c@example.com"})),
    );
    assert_eq!(status, 200);
    let (_, now, _) = server.admin_with("GET", &path, &[], None);
    let weak = format!("W/{}", now.unwrap());
    let answer = server.admin_with(
        "PUT",
        &path,
        &[("If-Match", &weak)],
        Some(json!({"customer_email": "d@example.com"})),
    );
    assert_error(&(answer.0, answer.2), 412, "PRECONDITION_FAILED");
    // A malformed condition is a 400, whatever the license.
    for (name, value) in [
        ("If-Match", "abc"),
        ("If-Match", "\"a\"b\""),
        ("If-None-Match", "\"x\""),
    ] {
        let answer = server.admin_with(
            "PUT",
            &path,
            &[(name, value)],
            Some(json!({"customer_email": "e@example.com"})),
        );
        assert_error(&(answer.0, answer.2), 400, "BAD_REQUEST");
    }
    assert_eq!(
        server.admin("GET", &path, None).1["customer_email"],
        "c@example.com"
    );

    // Plans: `If-None-Match: *` creates only; `If-Match` replaces only the
    // version read.
    let create = |name: &str| {
        server.admin_with(
            "PUT",
            &format!("/plans/{name}"),
            &[("If-None-Match", "*")],
            Some(json!({"features": ["x"]})),
        )
    };
    let (status, plan_tag, _) = create("team");
    assert_eq!(status, 201);
    let answer = create("team");
    assert_error(&(answer.0, answer.2), 412, "PRECONDITION_FAILED");
    let (_, read, plan) = server.admin_with("GET", "/plans/team", &[], None);
    assert_eq!(
        (read.clone(), plan["features"].clone()),
        (plan_tag, json!(["x"]))
    );
    let read = read.unwrap();
    let (status, _, _) = server.admin_with(
        "PUT",
        "/plans/team",
        &[("If-Match", &read)],
        Some(json!({"features": ["x", "y"]})),
    );
    assert_eq!(status, 200);
    let answer = server.admin_with(
        "PUT",
        "/plans/team",
        &[("If-Match", &read)],
        Some(json!({"features": []})),
    );
    assert_error(&(answer.0, answer.2), 412, "PRECONDITION_FAILED");
    assert_eq!(
        server.admin("GET", "/plans/team", None).1["features"],
        json!(["x", "y"])
    );
    let answer = server.admin_with(
        "PUT",
        "/plans/absent",
        &[("If-Match", "*")],
        Some(json!({"features": []})),
    );
    assert_error(&(answer.0, answer.2), 412, "PRECONDITION_FAILED");
    assert_error(
        &server.admin("GET", "/plans/absent", None),
        404,
        "PLAN_NOT_FOUND",
    );
}

fn updates_change_only_what_is_sent_and_status_moves_by_the_rules(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan("pro", json!({"features": ["a"]}));
    server.plan("team", json!({"features": ["a", "b"]}));
    let license = server.license("pro", json!({"max_domains": 2, "metadata": {"k": 1}}));
    let path = format!("/licenses/{}", id(&license));
    let key = license["key"].as_str().unwrap().to_owned();

    let (status, updated) = server.admin(
        "PUT",
        &path,
        Some(json!({"plan": "team", "max_domains": null})),
    );
    assert_eq!(status, 200);
    assert_eq!(
        (updated["plan"].as_str(), updated["max_domains"].clone()),
        (Some("team"), Value::Null)
    );
    assert_eq!(updated["metadata"], json!({"k": 1}), "fields not sent stay");
    assert_eq!(updated["customer_email"], license["customer_email"]);
    let (_, updated) = server.admin("PUT", &path, Some(json!({"metadata": {"new": true}})));
    assert_eq!(
        updated["metadata"],
        json!({"new": true}),
        "metadata is replaced"
    );
    assert_eq!(
        server.validate(json!({"key": key})).1["license"]["features"],
        json!(["a", "b"])
    );

    let (_, suspended) = server.admin("PUT", &path, Some(json!({"status": "suspended"})));
    assert_eq!(suspended["status"], "suspended");
    assert_eq!(
        server.validate(json!({"key": key})).1["code"],
        "LICENSE_SUSPENDED"
    );
    let (_, active) = server.admin("PUT", &path, Some(json!({"status": "active"})));
    assert_eq!(active["status"], "active");
    assert_eq!(server.validate(json!({"key": key})).1["code"], "VALID");

    // Expiry in the past: validates as expired at once; moving it into the
    // future makes the license active again.
    let (_, expired) = server.admin(
        "PUT",
        &path,
        Some(json!({"expires_at": "2021-01-01T00:00:00Z"})),
    );
    assert_eq!(expired["status"], "expired");
    assert_eq!(
        server.validate(json!({"key": key})).1["code"],
        "LICENSE_EXPIRED"
    );
    assert_error(
        &server.admin("PUT", &path, Some(json!({"status": "active"}))),
        409,
        "LICENSE_EXPIRED",
    );
    let (_, renewed) = server.admin(
        "PUT",
        &path,
        Some(json!({"expires_at": "2099-01-01T00:00:00+02:00"})),
    );
    assert_eq!(
        (renewed["status"].as_str(), renewed["expires_at"].as_str()),
        (Some("active"), Some("2098-12-31T22:00:00Z"))
    );
    assert_eq!(server.validate(json!({"key": key})).1["code"], "VALID");

    // Revocation is final and idempotent.
    let (status, revoked) = server.admin("DELETE", &path, None);
    assert_eq!((status, revoked["status"].as_str()), (200, Some("revoked")));
    assert_eq!(server.admin("DELETE", &path, None).1["status"], "revoked");
    assert_error(
        &server.admin("PUT", &path, Some(json!({"status": "active"}))),
        409,
        "LICENSE_REVOKED",
    );
    assert_error(
        &server.admin("PUT", &path, Some(json!({"status": "suspended"}))),
        409,
        "LICENSE_REVOKED",
    );
    let (_, still) = server.admin("PUT", &path, Some(json!({"expires_at": null})));
    assert_eq!(still["status"], "revoked", "no update un-revokes");
    assert_eq!(
        server.validate(json!({"key": key})).1["code"],
        "LICENSE_REVOKED"
    );
    assert_eq!(server.admin("GET", &path, None).1["status"], "revoked");
}

fn lists_filter_and_page_through_every_item_once(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan("a", json!({"features": []}));
    server.plan("b", json!({"features": []}));
    let mut ids = Vec::new();
    for i in 0..23 {
        let plan = if i % 3 == 0 { "b" } else { "a" };
        let license = server.license(
            plan,
            json!({"customer_email": format!("user{}@example.com", i % 2)}),
        );
        ids.push(id(&license));
    }
    server.admin(
        "PUT",
        &format!("/licenses/{}", ids[4]),
        Some(json!({"status": "suspended"})),
    );

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("/licenses?limit=5&cursor={c}"),
            None => "/licenses?limit=5".to_owned(),
        };
        let (status, page) = server.admin("GET", &q, None);
        assert_eq!(status, 200, "{page}");
        pages += 1;
        seen.extend(page["data"].as_array().unwrap().iter().map(id));
        if pages == 2 {
            // A license created mid-listing does not disturb the pages.
            server.license("a", json!({}));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each once");

    let count = |q: &str| {
        server.admin("GET", &format!("/licenses?{q}"), None).1["data"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count("plan=b&limit=500"), 8);
    assert_eq!(count("status=suspended"), 1);
    assert_eq!(count("customer_email=USER1@example.com&limit=500"), 11);
    assert_eq!(
        count("plan=a&customer_email=user0@example.com&limit=500"),
        8
    );
    let key = server
        .admin("GET", &format!("/licenses/{}", ids[7]), None)
        .1["key"]
        .as_str()
        .unwrap()
        .to_lowercase();
    let (_, by_key) = server.admin("GET", &format!("/licenses?key={key}"), None);
    assert_eq!(by_key["data"][0]["id"], ids[7].as_str());

    assert_error(
        &server.admin("GET", "/licenses?limit=501", None),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &server.admin("GET", "/licenses?limit=0", None),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &server.admin("GET", "/licenses?limit=ten", None),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &server.admin("GET", "/licenses?cursor=garbage", None),
        400,
        "BAD_CURSOR",
    );
    assert_error(
        &server.admin("GET", "/licenses?status=gone", None),
        400,
        "BAD_REQUEST",
    );
    assert_error(
        &server.admin("GET", "/licenses?key=KS-1234", None),
        400,
        "KEY_MALFORMED",
    );
}

fn usage_history_is_newest_first_paginated_with_totals(backend: Backend) {
    let server = TestServer::start_with(keysmith_tests::ServerOptions {
        backend,
        args: vec!["--country-header".into(), "CF-IPCountry".into()],
        ..Default::default()
    });
    server.plan("p", json!({"features": [], "max_domains": 2}));
    let license = server.license("p", json!({}));
    let key = license["key"].as_str().unwrap();
    let http = reqwest::blocking::Client::new();
    for domain in [
        "a.example",
        "b.example",
        "c.example",
        "a.example",
        "a.example",
    ] {
        http.post(format!("{}/api/v1/validate", server.url))
            .header(
                "user-agent",
                reqwest::header::HeaderValue::from_bytes("MyApp/1.2 (Zürich)".as_bytes()).unwrap(),
            )
            .header("CF-IPCountry", "DE")
            .json(&json!({"key": key, "domain": domain, "fingerprint": "fp-1"}))
            .send()
            .unwrap();
    }
    let path = format!("/licenses/{}/usage", id(&license));
    let (status, first) = server.admin("GET", &format!("{path}?limit=2"), None);
    assert_eq!(status, 200, "{first}");
    let rec = &first["data"][0];
    assert_eq!(rec["code"], "VALID");
    assert_eq!(
        (rec["domain"].as_str(), rec["fingerprint"].as_str()),
        (Some("a.example"), Some("fp-1"))
    );
    assert_eq!(
        (
            rec["ip"].as_str(),
            rec["user_agent"].as_str(),
            rec["country"].as_str()
        ),
        (Some("127.0.0.1"), Some("MyApp/1.2 (Zürich)"), Some("DE"))
    );
    assert!(rec["at"].is_string());
    assert_eq!(
        first["totals"],
        json!({"validations": 5, "valid": 4, "by_code": {"VALID": 4, "DOMAIN_LIMIT_REACHED": 1},
               "domains": {"a.example": 3, "b.example": 1, "c.example": 1}})
    );
    let mut codes: Vec<String> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["domain"].as_str().unwrap().to_owned())
        .collect();
    let mut cursor = first["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let (_, page) = server.admin("GET", &format!("{path}?limit=2&cursor={c}"), None);
        codes.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["domain"].as_str().unwrap().to_owned()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(
        codes,
        [
            "a.example",
            "a.example",
            "c.example",
            "b.example",
            "a.example"
        ]
    );
}

fn seats_are_freed_by_admins_and_by_apps(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan(
        "p",
        json!({"features": [], "max_domains": 1, "max_machines": 1}),
    );
    let license = server.license("p", json!({}));
    let key = license["key"].as_str().unwrap();
    let lid = id(&license);
    assert_eq!(
        server
            .validate(json!({"key": key, "domain": "one.example", "fingerprint": "m1"}))
            .1["code"],
        "VALID"
    );
    assert_eq!(
        server
            .validate(json!({"key": key, "domain": "two.example"}))
            .1["code"],
        "DOMAIN_LIMIT_REACHED"
    );

    let (status, freed) = server.admin(
        "DELETE",
        &format!("/licenses/{lid}/domains/ONE.example"),
        None,
    );
    assert_eq!((status, freed["domains"].clone()), (200, json!([])));
    assert_error(
        &server.admin(
            "DELETE",
            &format!("/licenses/{lid}/domains/one.example"),
            None,
        ),
        404,
        "DOMAIN_NOT_FOUND",
    );
    assert_error(
        &server.admin(
            "DELETE",
            &format!("/licenses/{lid}/domains/bad%20host"),
            None,
        ),
        400,
        "INVALID_DOMAIN",
    );
    assert_eq!(
        server
            .validate(json!({"key": key, "domain": "two.example"}))
            .1["code"],
        "VALID"
    );

    let (status, freed) = server.admin("DELETE", &format!("/licenses/{lid}/machines/m1"), None);
    assert_eq!((status, freed["machines"].clone()), (200, json!([])));
    assert_error(
        &server.admin("DELETE", &format!("/licenses/{lid}/machines/m1"), None),
        404,
        "MACHINE_NOT_FOUND",
    );

    // The app frees its own seat.
    assert_eq!(
        server.validate(json!({"key": key, "fingerprint": "m2"})).1["code"],
        "VALID"
    );
    let deactivate = |body: Value| server.request("POST", "/api/v1/deactivate", None, Some(&body));
    let (status, answer) = deactivate(
        json!({"key": key.to_lowercase(), "domain": "two.example", "fingerprint": "m2"}),
    );
    assert_eq!(
        (status, answer),
        (200, json!({"domain_freed": true, "machine_freed": true}))
    );
    assert_eq!(
        deactivate(json!({"key": key, "domain": "two.example"})).1,
        json!({"domain_freed": false, "machine_freed": false})
    );
    assert_error(&deactivate(json!({"key": "KS-0000"})), 400, "KEY_MALFORMED");
    assert_error(&deactivate(json!({"key": key})), 400, "BAD_REQUEST");
    assert_error(
        &deactivate(json!({"key": key, "domain": "a b"})),
        400,
        "INVALID_DOMAIN",
    );
    let unknown = keysmith_core::LicenseKey::generate("KS").unwrap();
    assert_error(
        &deactivate(json!({"key": unknown.as_str(), "domain": "a.example"})),
        404,
        "LICENSE_NOT_FOUND",
    );
    let (_, after) = server.admin("GET", &format!("/licenses/{lid}"), None);
    assert_eq!(
        (after["domains"].clone(), after["machines"].clone()),
        (json!([]), json!([]))
    );
}

fn the_expiry_sweep_marks_licenses_expired_within_its_interval(backend: Backend) {
    let server = TestServer::start_with(keysmith_tests::ServerOptions {
        backend,
        args: vec!["--expiry-interval".into(), "1".into()],
        ..Default::default()
    });
    let _receiver = server.keep_every_event();
    server.plan("p", json!({"features": []}));
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let license = server.license(
        "p",
        json!({"expires_at": keysmith_core::time::format_rfc3339(soon)}),
    );
    let path = format!("/licenses/{}", id(&license));
    assert_eq!(license["status"], "active");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (_, now) = server.admin("GET", &path, None);
        if now["status"] == "expired" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {} after 15 s",
            now["status"]
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        server.validate(json!({"key": license["key"]})).1["code"],
        "LICENSE_EXPIRED"
    );
    // Every sweep after the first finds nothing more to do.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let expired_events = server
        .event_types(&id(&license))
        .into_iter()
        .filter(|t| t == "license.expired")
        .count();
    assert_eq!(expired_events, 1);
}

fn usage_past_the_retention_is_deleted_and_counts_stay(backend: Backend) {
    let mut server = TestServer::start_with(keysmith_tests::ServerOptions {
        backend,
        args: vec!["--usage-retention-days".into(), "30".into()],
        ..Default::default()
    });
    server.plan("p", json!({"features": []}));
    let license = server.license("p", json!({}));
    let key = license["key"].clone();
    for _ in 0..2 {
        assert_eq!(server.validate(json!({"key": key})).1["code"], "VALID");
    }
    // History from before the server kept any: two records 40 days old and
    // one 20 days old, planted below the live rows' sequence numbers.
    assert_eq!(server.terminate(), Some(0));
    let now = chrono::Utc::now().timestamp();
    let day = 86_400;
    let rows: Vec<String> = [
        (-3, now - 40 * day),
        (-2, now - 40 * day),
        (-1, now - 20 * day),
    ]
    .iter()
    .map(|(seq, at)| {
        format!(
            "INSERT INTO usage (seq, license_seq, at, code) \
                 SELECT {seq}, seq, {at}, 'VALID' FROM licenses WHERE id = '{}';",
            id(&license)
        )
    })
    .collect();
    let mut sql = rows.concat();
    if backend == Backend::Sqlite {
        // SQLite finds a license's rows by following each row's `prev_seq`
        // down from the newest: hang the planted ones below the live ones.
        sql.push_str(&format!(
            "UPDATE usage SET prev_seq = seq - 1 WHERE seq IN (-2, -1); \
             UPDATE usage SET prev_seq = -1 WHERE seq = \
                 (SELECT MIN(seq) FROM usage WHERE seq > 0 AND license_seq = \
                     (SELECT seq FROM licenses WHERE id = '{}'));",
            id(&license)
        ));
    }
    server.execute_sql(&sql);
    let usage = |server: &TestServer| {
        let (status, page) =
            server.admin("GET", &format!("/licenses/{}/usage", id(&license)), None);
        assert_eq!(status, 200, "{page}");
        page["data"].as_array().unwrap().len()
    };
    server.restart();
    // The pass at start-up deletes the two records past 30 days.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while usage(&server) != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "still {} records",
            usage(&server)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(server
        .log()
        .contains("usage records past the retention deleted"));
    let (_, after) = server.admin("GET", &format!("/licenses/{}", id(&license)), None);
    assert_eq!(after["validation_count"], 2, "{after}");
    assert_eq!(server.validate(json!({"key": key})).1["code"], "VALID");
    assert_eq!(usage(&server), 4);
}
