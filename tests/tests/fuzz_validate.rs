//! Property fuzzing of `POST /api/v1/validate` request parsing through a live
//! server: arbitrary JSON values, arbitrary bytes and near-miss requests
//! never get a 5xx, and every refusal is a 4xx in the documented
//! `ValidateResponse` shape. `PROPTEST_CASES=20000 cargo test -p
//! keysmith-tests --test fuzz_validate` runs it longer.

use std::sync::OnceLock;

use keysmith_tests::{ServerOptions, TestServer};
use proptest::prelude::*;
use serde_json::{json, Value};

struct Fixture {
    server: TestServer,
    key: String,
    http: reqwest::blocking::Client,
    response_schema: jsonschema::Validator,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
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
        server.plan(
            "p",
            json!({"features": ["x"], "max_domains": 2, "max_machines": 2}),
        );
        let key = server.license("p", json!({}))["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let doc: Value = serde_json::from_str(include_str!("../../server/openapi.json")).unwrap();
        let schema = json!({
            "$ref": "#/components/schemas/ValidateResponse",
            "components": doc["components"],
        });
        Fixture {
            server,
            key,
            http: reqwest::blocking::Client::new(),
            response_schema: jsonschema::validator_for(&schema).unwrap(),
        }
    })
}

/// Posts raw bytes; returns the status and the answer, which must be JSON in
/// the documented shape whatever was sent.
fn post(body: Vec<u8>) -> (u16, Value) {
    let f = fixture();
    let resp = f
        .http
        .post(format!("{}/api/v1/validate", f.server.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .expect("the server answers");
    let status = resp.status().as_u16();
    let answer: Value = serde_json::from_slice(&resp.bytes().unwrap()).expect("a JSON answer");
    let errors: Vec<String> = f
        .response_schema
        .iter_errors(&answer)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{status} {answer}: {errors:?}");
    assert!(status < 500, "{status} {answer}");
    (status, answer)
}

/// A refusal: 4xx, `valid` false, `error` = `code`, no token.
fn assert_refused(status: u16, answer: &Value) {
    assert!((400..500).contains(&status), "{status} {answer}");
    assert_eq!(answer["valid"], false);
    assert_eq!(answer["error"], answer["code"]);
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[A-Za-z0-9 .:_-]{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof!["key|domain|fingerprint|nonce", any::<String>()],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for one field of a request: mostly strings, some of them huge or
/// odd, sometimes another type.
fn field() -> impl Strategy<Value = Option<Value>> {
    proptest::option::of(prop_oneof![
        4 => any::<String>().prop_map(Value::from),
        2 => "[a-zA-Z0-9.-]{1,70}".prop_map(Value::from),
        1 => "[a-z\u{e0}-\u{ff}.]{1,20}".prop_map(Value::from),
        1 => "x{120,300}".prop_map(Value::from),
        1 => json_value(),
    ])
}

proptest! {
    #[test]
    fn arbitrary_json_is_refused_in_the_documented_shape(value in json_value()) {
        let (status, answer) = post(serde_json::to_vec(&value).unwrap());
        assert_refused(status, &answer);
    }

    #[test]
    fn arbitrary_bytes_are_refused_in_the_documented_shape(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (status, answer) = post(bytes);
        assert_refused(status, &answer);
    }

    /// The real key with arbitrary other fields: a decided answer (always
    /// signed) or a 4xx refusal, never anything else.
    #[test]
    fn a_real_key_with_arbitrary_fields_is_answered_or_refused(
        domain in field(),
        fingerprint in field(),
        nonce in field(),
    ) {
        let mut request = serde_json::Map::new();
        request.insert("key".into(), Value::from(fixture().key.clone()));
        for (name, value) in [("domain", domain), ("fingerprint", fingerprint), ("nonce", nonce)] {
            if let Some(value) = value {
                request.insert(name.into(), value);
            }
        }
        let (status, answer) = post(serde_json::to_vec(&request).unwrap());
        if status == 200 {
            prop_assert!(answer["token"].is_string(), "{}", answer);
        } else {
            assert_refused(status, &answer);
        }
    }

    #[test]
    fn arbitrary_keys_are_refused_or_not_found(key in any::<String>()) {
        let (status, answer) = post(serde_json::to_vec(&json!({"key": key})).unwrap());
        assert_refused(status, &answer);
        prop_assert!(matches!(status, 400 | 404), "{}", status);
    }
}
