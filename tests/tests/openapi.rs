//! The OpenAPI document (`server/openapi.json`, served at
//! `/api/v1/openapi.json`) against the code: the router serves exactly the
//! documented routes and methods, and real answers of a live server — success
//! and error alike — match the documented status codes and schemas.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use keysmith_core::LicenseKey;
use keysmith_tests::receiver::Receiver;
use keysmith_tests::{ServerOptions, TestServer, ADMIN_TOKEN};
use serde_json::{json, Value};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

fn document() -> Value {
    let text = include_str!("../../server/openapi.json");
    serde_json::from_str(text).expect("server/openapi.json is JSON")
}

/// Every (method, path) the document lists.
fn documented_operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if METHODS.contains(&method.to_uppercase().as_str()) {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// The route paths the router registers, read from `server/src/api/mod.rs`
/// (every route is registered with its full path).
fn router_paths() -> BTreeSet<String> {
    let source = include_str!("../../server/src/api/mod.rs");
    let mut paths = BTreeSet::new();
    for (at, _) in source.match_indices(".route(") {
        let rest = source[at + ".route(".len()..].trim_start();
        let literal = rest.strip_prefix('"').expect("route path is a literal");
        paths.insert(literal[..literal.find('"').expect("closing quote")].to_owned());
    }
    paths
}

/// A concrete path for a template: every `{param}` becomes `x`.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in template.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push('x');
            }
            '}' => in_param = false,
            _ if !in_param => out.push(c),
            _ => {}
        }
    }
    out
}

#[test]
fn the_router_serves_exactly_the_documented_routes() {
    let doc = document();
    let documented = documented_operations(&doc);
    let doc_paths: BTreeSet<String> = documented.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(
        router_paths(),
        doc_paths,
        "the router's paths (left) and the document's (right) differ"
    );

    // Which methods each path answers, asked of a live server: an unserved
    // method gets 405, an unknown path NOT_FOUND.
    let server = TestServer::start();
    let mut served = BTreeSet::new();
    for path in &doc_paths {
        for method in METHODS {
            let (status, body) = server.request(method, &concrete(path), Some(ADMIN_TOKEN), None);
            let code = body["error"]["code"].as_str().unwrap_or_default();
            assert!(
                !(status == 404 && code == "NOT_FOUND"),
                "{method} {path}: no such route"
            );
            // (On `/validate` in its own shape, so by the status alone.)
            if status != 405 {
                served.insert((method.to_owned(), path.clone()));
            }
        }
    }
    assert_eq!(
        served, documented,
        "served (left) and documented (right) operations differ"
    );
    let (status, body) = server.request("GET", "/api/v1/nope", None, None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
}

#[test]
fn the_served_document_is_the_file() {
    let server = TestServer::start();
    let (status, served) = server.request("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(served, document());
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1."));
}

/// Regression: a path parameter that is not UTF-8 once percent-decoded was
/// answered by axum in plain text, not in the API's error shape.
#[test]
fn undecodable_path_parameters_are_answered_in_the_error_shape() {
    let c = Contract::new();
    let server = TestServer::start();
    let http = reqwest::blocking::Client::new();
    for (method, template, path) in [
        ("GET", "/api/v1/licenses/{id}", "/api/v1/licenses/%FF"),
        ("PUT", "/api/v1/plans/{name}", "/api/v1/plans/%FF"),
        (
            "DELETE",
            "/api/v1/licenses/{id}/machines/{fingerprint}",
            "/api/v1/licenses/x/machines/%FF%FE",
        ),
        (
            "POST",
            "/api/v1/webhooks/{id}/deliveries/{event_id}/redeliver",
            "/api/v1/webhooks/x/deliveries/%C3%28/redeliver",
        ),
    ] {
        let resp = http
            .request(method.parse().unwrap(), format!("{}{path}", server.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"features": []}))
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        let body: Value = resp.json().unwrap_or(Value::Null);
        assert_eq!(
            (status, content_type.as_str()),
            (400, "application/json"),
            "{method} {path}: {body}"
        );
        assert_eq!(body["error"]["code"], "BAD_REQUEST");
        c.check(method, template, status, &body);
    }
}

/// Checks answers against the document and remembers which operations and
/// statuses were seen.
struct Contract {
    doc: Value,
    seen: Mutex<BTreeMap<(String, String), BTreeSet<u16>>>,
}

impl Contract {
    fn new() -> Contract {
        Contract {
            doc: document(),
            seen: Mutex::default(),
        }
    }

    fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
            let pointer = reference.strip_prefix('#').expect("local $ref");
            value = self.doc.pointer(pointer).expect("$ref resolves");
        }
        value
    }

    /// Sends a request and checks its answer: the status is documented for
    /// the operation, and the body matches that status's schema (or is empty
    /// when the document gives no content).
    fn call(
        &self,
        server: &TestServer,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, answer) = server.request(method, path, token, body.as_ref());
        self.check(method, template, status, &answer);
        (status, answer)
    }

    fn check(&self, method: &str, template: &str, status: u16, answer: &Value) {
        let operation = &self.doc["paths"][template][method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not documented"
        );
        let response = operation["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| {
                panic!("{method} {template}: status {status} is not documented; body {answer}")
            });
        let response = self.resolve(response);
        match response.pointer("/content/application~1json/schema") {
            Some(schema) => {
                let mut root = schema.clone();
                root["components"] = self.doc["components"].clone();
                let validator = jsonschema::options()
                    .should_validate_formats(true)
                    .build(&root)
                    .unwrap_or_else(|e| panic!("{method} {template} {status}: bad schema: {e}"));
                let errors: Vec<String> = validator
                    .iter_errors(answer)
                    .map(|e| format!("{} at {}", e, e.instance_path()))
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{method} {template} {status}: the answer does not match the document:\n{}\nanswer: {answer}",
                    errors.join("\n")
                );
            }
            None => assert_eq!(
                *answer,
                Value::Null,
                "{method} {template} {status}: documented without a body"
            ),
        }
        self.seen
            .lock()
            .unwrap()
            .entry((method.to_owned(), template.to_owned()))
            .or_default()
            .insert(status);
    }
}

#[test]
fn real_answers_match_the_documented_schemas() {
    let c = Contract::new();
    let server = TestServer::start_with(ServerOptions {
        args: [
            "--rate-limit",
            "0",
            "--failed-lookup-limit",
            "0",
            "--max-body-bytes",
            "4096",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    let admin = Some(ADMIN_TOKEN);
    let s = &server;

    // Health, keys and the document itself.
    c.call(s, "GET", "/healthz", "/healthz", None, None);
    c.call(s, "GET", "/readyz", "/readyz", None, None);
    c.call(
        s,
        "GET",
        "/api/v1/public-key",
        "/api/v1/public-key",
        None,
        None,
    );
    c.call(
        s,
        "GET",
        "/.well-known/jwks.json",
        "/.well-known/jwks.json",
        None,
        None,
    );
    c.call(
        s,
        "GET",
        "/api/v1/openapi.json",
        "/api/v1/openapi.json",
        None,
        None,
    );

    // Plans.
    let plan_path = "/api/v1/plans/{name}";
    let plan =
        json!({"features": ["sso"], "max_domains": 1, "max_machines": 1, "duration_days": 365});
    assert_eq!(
        c.call(
            s,
            "PUT",
            plan_path,
            "/api/v1/plans/pro",
            admin,
            Some(plan.clone())
        )
        .0,
        201
    );
    assert_eq!(
        c.call(s, "PUT", plan_path, "/api/v1/plans/pro", admin, Some(plan))
            .0,
        200
    );
    c.call(
        s,
        "PUT",
        plan_path,
        "/api/v1/plans/spare",
        admin,
        Some(json!({"features": []})),
    );
    assert_eq!(
        c.call(
            s,
            "PUT",
            plan_path,
            "/api/v1/plans/bad%20name",
            admin,
            Some(json!({"features": []}))
        )
        .0,
        400
    );
    assert_eq!(
        c.call(
            s,
            "PUT",
            plan_path,
            "/api/v1/plans/pro",
            admin,
            Some(json!({"features": [""]}))
        )
        .0,
        422
    );
    assert_eq!(
        c.call(
            s,
            "PUT",
            plan_path,
            "/api/v1/plans/pro",
            None,
            Some(json!({"features": []}))
        )
        .0,
        401
    );
    assert_eq!(
        c.call(s, "GET", plan_path, "/api/v1/plans/pro", admin, None)
            .0,
        200
    );
    assert_eq!(
        c.call(s, "GET", plan_path, "/api/v1/plans/none", admin, None)
            .0,
        404
    );
    assert_eq!(
        c.call(s, "GET", "/api/v1/plans", "/api/v1/plans", admin, None)
            .0,
        200
    );
    assert_eq!(
        c.call(
            s,
            "GET",
            "/api/v1/plans",
            "/api/v1/plans",
            Some("wrong"),
            None
        )
        .0,
        401
    );
    assert_eq!(
        c.call(s, "DELETE", plan_path, "/api/v1/plans/spare", admin, None)
            .0,
        204
    );
    assert_eq!(
        c.call(s, "DELETE", plan_path, "/api/v1/plans/spare", admin, None)
            .0,
        404
    );

    // Webhooks first, so license events give them deliveries.
    let receiver = Receiver::start();
    let hooks = "/api/v1/webhooks";
    let (status, hook) = c.call(
        s,
        "POST",
        hooks,
        hooks,
        admin,
        Some(json!({"url": receiver.url, "events": ["license.created"]})),
    );
    assert_eq!(status, 201);
    assert!(hook["secret"].is_string());
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    assert_eq!(
        c.call(
            s,
            "POST",
            hooks,
            hooks,
            admin,
            Some(json!({"url": "ftp://x", "events": ["license.created"]}))
        )
        .0,
        422
    );
    assert_eq!(
        c.call(s, "POST", hooks, hooks, admin, Some(json!({"url": 1})))
            .0,
        400
    );
    let hook_path = "/api/v1/webhooks/{id}";
    let this_hook = format!("/api/v1/webhooks/{hook_id}");
    assert_eq!(c.call(s, "GET", hook_path, &this_hook, admin, None).0, 200);
    assert_eq!(
        c.call(
            s,
            "PUT",
            hook_path,
            &this_hook,
            admin,
            Some(json!({"enabled": true}))
        )
        .0,
        200
    );
    assert_eq!(
        c.call(
            s,
            "PUT",
            hook_path,
            &this_hook,
            admin,
            Some(json!({"events": []}))
        )
        .0,
        422
    );
    assert_eq!(
        c.call(s, "GET", hook_path, "/api/v1/webhooks/wh_nope", admin, None)
            .0,
        404
    );
    assert_eq!(
        c.call(s, "GET", hooks, "/api/v1/webhooks?limit=1", admin, None)
            .0,
        200
    );
    assert_eq!(
        c.call(s, "GET", hooks, "/api/v1/webhooks?cursor=%21", admin, None)
            .0,
        400
    );

    // Licenses.
    let licenses = "/api/v1/licenses";
    let (status, license) = c.call(
        s,
        "POST",
        licenses,
        licenses,
        admin,
        Some(
            json!({"plan": "pro", "customer_email": "dev@example.com", "metadata": {"order": "1"}}),
        ),
    );
    assert_eq!(status, 201);
    let (id, key) = (
        license["id"].as_str().unwrap().to_owned(),
        license["key"].as_str().unwrap().to_owned(),
    );
    c.call(s, "POST", licenses, licenses, admin, Some(json!({"plan": "pro", "customer_email": "b@example.com", "expires_at": null, "max_domains": null})));
    assert_eq!(
        c.call(
            s,
            "POST",
            licenses,
            licenses,
            admin,
            Some(json!({"plan": "nope", "customer_email": "dev@example.com"}))
        )
        .0,
        422
    );
    assert_eq!(
        c.call(
            s,
            "POST",
            licenses,
            licenses,
            admin,
            Some(json!({"plan": "pro"}))
        )
        .0,
        400
    );
    assert_eq!(s.raw("POST", licenses, vec![b' '; 8192]).0, 413);
    c.check(
        "POST",
        licenses,
        413,
        &s.raw("POST", licenses, vec![b' '; 8192]).1,
    );
    assert_eq!(
        c.call(s, "GET", licenses, "/api/v1/licenses?limit=1", admin, None)
            .0,
        200
    );
    assert_eq!(
        c.call(
            s,
            "GET",
            licenses,
            &format!("/api/v1/licenses?key={key}&status=active"),
            admin,
            None
        )
        .0,
        200
    );
    assert_eq!(
        c.call(s, "GET", licenses, "/api/v1/licenses?key=nope", admin, None)
            .0,
        400
    );
    assert_eq!(
        c.call(s, "GET", licenses, "/api/v1/licenses?limit=0", admin, None)
            .0,
        400
    );
    let one = "/api/v1/licenses/{id}";
    let this = format!("/api/v1/licenses/{id}");
    assert_eq!(c.call(s, "GET", one, &this, admin, None).0, 200);
    assert_eq!(
        c.call(s, "GET", one, "/api/v1/licenses/lic_NOPE", admin, None)
            .0,
        404
    );
    assert_eq!(c.call(s, "GET", one, &this, None, None).0, 401);
    assert_eq!(
        c.call(
            s,
            "PUT",
            one,
            &this,
            admin,
            Some(json!({"metadata": {"order": "2"}, "expires_at": "2099-01-01T00:00:00Z"}))
        )
        .0,
        200
    );
    assert_eq!(
        c.call(
            s,
            "PUT",
            one,
            &this,
            admin,
            Some(json!({"expires_at": "tomorrow"}))
        )
        .0,
        400
    );
    assert_eq!(
        c.call(
            s,
            "PUT",
            one,
            &this,
            admin,
            Some(json!({"customer_email": "nobody"}))
        )
        .0,
        422
    );

    // Validation, every answer shape.
    let validate = "/api/v1/validate";
    let v = |body: Value| c.call(s, "POST", validate, validate, None, Some(body));
    let (status, valid) =
        v(json!({"key": key, "domain": "Example.com", "fingerprint": "m-1", "nonce": "n"}));
    assert_eq!((status, valid["code"].as_str()), (200, Some("VALID")));
    assert_eq!(
        v(json!({"key": key, "domain": "other.example"})).1["code"],
        "DOMAIN_LIMIT_REACHED"
    );
    assert_eq!(
        v(json!({"key": key, "fingerprint": "m-2"})).1["code"],
        "MACHINE_LIMIT_REACHED"
    );
    assert_eq!(v(json!({"key": "KS-NOPE"})).0, 400);
    assert_eq!(
        v(json!({"key": key, "domain": "not a host"})).1["code"],
        "INVALID_DOMAIN"
    );
    assert_eq!(v(json!({"domain": "example.com"})).1["code"], "BAD_REQUEST");
    assert_eq!(
        v(json!({"key": LicenseKey::generate("KS").unwrap().as_str()})).0,
        404
    );
    let raw = s.raw("POST", validate, b"{not json".to_vec());
    c.check("POST", validate, raw.0, &raw.1);
    let raw = s.raw("POST", validate, vec![b' '; 8192]);
    c.check("POST", validate, raw.0, &raw.1);

    // Usage and seats.
    assert_eq!(
        c.call(
            s,
            "GET",
            "/api/v1/licenses/{id}/usage",
            &format!("{this}/usage?limit=2"),
            admin,
            None
        )
        .0,
        200
    );
    assert_eq!(
        c.call(
            s,
            "GET",
            "/api/v1/licenses/{id}/usage",
            "/api/v1/licenses/lic_NOPE/usage",
            admin,
            None
        )
        .0,
        404
    );
    let domain = "/api/v1/licenses/{id}/domains/{domain}";
    assert_eq!(
        c.call(
            s,
            "DELETE",
            domain,
            &format!("{this}/domains/example.com"),
            admin,
            None
        )
        .0,
        200
    );
    assert_eq!(
        c.call(
            s,
            "DELETE",
            domain,
            &format!("{this}/domains/example.com"),
            admin,
            None
        )
        .0,
        404
    );
    assert_eq!(
        c.call(
            s,
            "DELETE",
            domain,
            &format!("{this}/domains/not%20a%20host"),
            admin,
            None
        )
        .0,
        400
    );
    let machine = "/api/v1/licenses/{id}/machines/{fingerprint}";
    assert_eq!(
        c.call(
            s,
            "DELETE",
            machine,
            &format!("{this}/machines/m-1"),
            admin,
            None
        )
        .0,
        200
    );
    assert_eq!(
        c.call(
            s,
            "DELETE",
            machine,
            &format!("{this}/machines/m-1"),
            admin,
            None
        )
        .0,
        404
    );
    assert_eq!(
        c.call(
            s,
            "DELETE",
            machine,
            &format!("{this}/machines/a%20b"),
            admin,
            None
        )
        .0,
        400
    );
    let deactivate = "/api/v1/deactivate";
    v(json!({"key": key, "domain": "example.com"}));
    assert_eq!(
        c.call(
            s,
            "POST",
            deactivate,
            deactivate,
            None,
            Some(json!({"key": key, "domain": "example.com"}))
        )
        .0,
        200
    );
    assert_eq!(
        c.call(
            s,
            "POST",
            deactivate,
            deactivate,
            None,
            Some(json!({"key": key}))
        )
        .0,
        400
    );
    let unknown = LicenseKey::generate("KS").unwrap();
    assert_eq!(
        c.call(
            s,
            "POST",
            deactivate,
            deactivate,
            None,
            Some(json!({"key": unknown.as_str(), "fingerprint": "m"}))
        )
        .0,
        404
    );

    // Status changes: suspend, revoke, and the conflicts they bring.
    assert_eq!(
        c.call(
            s,
            "PUT",
            one,
            &this,
            admin,
            Some(json!({"status": "suspended"}))
        )
        .0,
        200
    );
    assert_eq!(v(json!({"key": key})).1["code"], "LICENSE_SUSPENDED");
    assert_eq!(
        c.call(
            s,
            "PUT",
            one,
            &this,
            admin,
            Some(json!({"status": "expired"}))
        )
        .0,
        422
    );
    assert_eq!(c.call(s, "DELETE", one, &this, admin, None).0, 200);
    assert_eq!(
        c.call(s, "DELETE", one, "/api/v1/licenses/lic_NOPE", admin, None)
            .0,
        404
    );
    assert_eq!(v(json!({"key": key})).1["code"], "LICENSE_REVOKED");
    assert_eq!(
        c.call(
            s,
            "PUT",
            one,
            &this,
            admin,
            Some(json!({"status": "active"}))
        )
        .0,
        409
    );
    assert_eq!(
        c.call(
            s,
            "PUT",
            one,
            "/api/v1/licenses/lic_NOPE",
            admin,
            Some(json!({}))
        )
        .0,
        404
    );
    assert_eq!(
        c.call(s, "DELETE", plan_path, "/api/v1/plans/pro", admin, None)
            .0,
        409
    );
    let (_, expired) = c.call(s, "POST", licenses, licenses, admin,
        Some(json!({"plan": "pro", "customer_email": "dev@example.com", "expires_at": "2020-01-01T00:00:00Z"})));
    assert_eq!(
        v(json!({"key": expired["key"]})).1["code"],
        "LICENSE_EXPIRED"
    );

    // Deliveries, once the worker has delivered an event.
    let deliveries = "/api/v1/webhooks/{id}/deliveries";
    let mut attempts = Value::Null;
    for _ in 0..200 {
        attempts = c
            .call(
                s,
                "GET",
                deliveries,
                &format!("{this_hook}/deliveries"),
                admin,
                None,
            )
            .1;
        if attempts["data"][0]["state"] == "delivered" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let event_id = attempts["data"][0]["event_id"]
        .as_str()
        .expect("a delivery attempt")
        .to_owned();
    assert_eq!(
        c.call(
            s,
            "GET",
            deliveries,
            "/api/v1/webhooks/wh_nope/deliveries",
            admin,
            None
        )
        .0,
        404
    );
    let redeliver = "/api/v1/webhooks/{id}/deliveries/{event_id}/redeliver";
    assert_eq!(
        c.call(
            s,
            "POST",
            redeliver,
            &format!("{this_hook}/deliveries/{event_id}/redeliver"),
            admin,
            None
        )
        .0,
        202
    );
    assert_eq!(
        c.call(
            s,
            "POST",
            redeliver,
            &format!("{this_hook}/deliveries/evt_nope/redeliver"),
            admin,
            None
        )
        .0,
        404
    );
    assert_eq!(
        c.call(s, "DELETE", hook_path, &this_hook, admin, None).0,
        204
    );
    assert_eq!(
        c.call(s, "DELETE", hook_path, &this_hook, admin, None).0,
        404
    );

    // Rate limits on the public routes.
    let limited = TestServer::start_with(ServerOptions {
        args: ["--rate-limit", "1"].map(String::from).to_vec(),
        ..Default::default()
    });
    let mut statuses = BTreeSet::new();
    for _ in 0..6 {
        statuses.insert(
            c.call(
                &limited,
                "POST",
                validate,
                validate,
                None,
                Some(json!({"key": key})),
            )
            .0,
        );
        statuses.insert(
            c.call(
                &limited,
                "POST",
                deactivate,
                deactivate,
                None,
                Some(json!({"key": key, "domain": "a.example"})),
            )
            .0,
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");

    // Every documented operation was exercised.
    let seen = c.seen.lock().unwrap();
    let missing: Vec<_> = documented_operations(&c.doc)
        .into_iter()
        .filter(|op| !seen.contains_key(op))
        .collect();
    assert!(missing.is_empty(), "not exercised: {missing:?}");
}
