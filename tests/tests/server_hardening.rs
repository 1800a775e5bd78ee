//! Abuse resistance end to end: key guessing, slowloris, oversized and
//! hostile requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keysmith_core::LicenseKey;
use keysmith_tests::{Backend, ServerOptions, TestServer, ADMIN_TOKEN};
use serde_json::{json, Value};

keysmith_tests::on_both_backends!(
    a_key_guesser_is_cut_off_while_other_clients_keep_their_answers,
    without_a_trusted_proxy_header_forwarded_for_is_ignored,
    admin_token_guesses_are_cut_off_per_client,
    oversized_headers_get_431_and_hold_no_memory,
    one_client_cannot_hold_every_connection,
    slow_clients_are_dropped_and_do_not_starve_others,
    hostile_bodies_get_clear_errors_never_500,
    text_with_a_nul_character_is_refused_never_500,
    validate_answers_a_timeout_and_a_storage_failure_in_its_own_shape,
    metadata_numbers_at_the_ends_of_json_read_back_as_sent,
);

fn rand_octet() -> u8 {
    use std::sync::atomic::{AtomicU8, Ordering};
    static NEXT: AtomicU8 = AtomicU8::new(1);
    NEXT.fetch_add(37, Ordering::Relaxed)
}

fn validate_as(server: &TestServer, ip: &str, key: &str) -> (u16, Value, Option<String>) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/validate", server.url))
        // What a client sends in front of the address an appending proxy
        // adds: a new address each time, which must not buy a new budget.
        .header(
            "x-forwarded-for",
            format!("198.18.{}.{}, {ip}", rand_octet(), rand_octet()),
        )
        .json(&json!({"key": key}))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, resp.json().unwrap(), retry)
}

fn a_key_guesser_is_cut_off_while_other_clients_keep_their_answers(backend: Backend) {
    let server = TestServer::start_with(ServerOptions {
        backend,
        args: [
            "--failed-lookup-limit",
            "10",
            "--client-ip-header",
            "X-Forwarded-For",
            "--rate-limit",
            "1000",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    server.plan("p", json!({"features": []}));
    let license = server.license("p", json!({}));
    let good_key = license["key"].as_str().unwrap();

    let mut cut_off_after = None;
    for attempt in 1..=40 {
        let guess = LicenseKey::generate("KS").unwrap();
        let guess = if attempt % 2 == 0 {
            guess.as_str().to_owned()
        } else {
            guess.as_str().replace('-', "").to_lowercase() + "0"
        };
        let (status, answer, retry) = validate_as(&server, "203.0.113.7", &guess);
        if status == 429 {
            assert_eq!(answer["code"], "RATE_LIMITED");
            assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
            cut_off_after = Some(attempt);
            break;
        }
        assert!(
            matches!(
                answer["code"].as_str(),
                Some("LICENSE_NOT_FOUND" | "KEY_MALFORMED")
            ),
            "{answer}"
        );
    }
    let cut_off_after = cut_off_after.expect("the guesser is refused");
    assert!(
        cut_off_after <= 12,
        "refused after {cut_off_after} guesses with a budget of 10"
    );
    // Refused everything, even a real key, until the budget refills.
    assert_eq!(validate_as(&server, "203.0.113.7", good_key).0, 429);
    // A well-behaved client on another address is untouched.
    for _ in 0..20 {
        let (status, answer, _) = validate_as(&server, "198.51.100.20", good_key);
        assert_eq!((status, answer["code"].as_str()), (200, Some("VALID")));
    }
    // Usage records the proxy-supplied client address.
    let (_, usage) = server.admin(
        "GET",
        &format!(
            "/licenses/{}/usage?limit=1",
            license["id"].as_str().unwrap()
        ),
        None,
    );
    assert_eq!(usage["data"][0]["ip"], "198.51.100.20");
}

fn without_a_trusted_proxy_header_forwarded_for_is_ignored(backend: Backend) {
    let server = TestServer::start_with(ServerOptions {
        backend,
        args: ["--failed-lookup-limit", "3"].map(String::from).to_vec(),
        ..Default::default()
    });
    for i in 0..6 {
        // A spoofed header per request does not buy a fresh budget.
        validate_as(
            &server,
            &format!("192.0.2.{i}"),
            LicenseKey::generate("KS").unwrap().as_str(),
        );
    }
    let (status, _, _) = validate_as(
        &server,
        "192.0.2.200",
        LicenseKey::generate("KS").unwrap().as_str(),
    );
    assert_eq!(status, 429);
}

/// An admin token chosen by a person (`KEYSMITH_ADMIN_TOKEN`) could be
/// guessed at tens of thousands of tries a second: wrong tokens now count
/// against the client's failed-lookup budget, and past it the client gets
/// 429, even with the right token, while other clients are untouched.
fn admin_token_guesses_are_cut_off_per_client(backend: Backend) {
    let server = TestServer::start_with(ServerOptions {
        backend,
        args: [
            "--failed-lookup-limit",
            "5",
            "--client-ip-header",
            "X-Forwarded-For",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    let plans_as = |ip: &str, token: &str| {
        let resp = reqwest::blocking::Client::new()
            .get(format!("{}/api/v1/plans", server.url))
            .header("x-forwarded-for", ip)
            .bearer_auth(token)
            .send()
            .unwrap();
        (
            resp.status().as_u16(),
            resp.headers().contains_key("retry-after"),
        )
    };
    let mut cut_off_after = None;
    for guess in 1..=20 {
        match plans_as("203.0.113.9", &format!("guess-{guess:012}")) {
            (401, _) => {}
            (429, retry_after) => {
                assert!(retry_after);
                cut_off_after = Some(guess);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let cut_off_after = cut_off_after.expect("the guesser is cut off");
    assert!(cut_off_after <= 7, "after {cut_off_after} guesses");
    assert_eq!(
        plans_as("203.0.113.9", ADMIN_TOKEN).0,
        429,
        "until it refills"
    );
    assert_eq!(plans_as("198.51.100.9", ADMIN_TOKEN).0, 200);
    assert!(
        server.log().contains("203.0.113.9"),
        "the guesser is named in the log"
    );

    // A request with no token at all guesses nothing: it does not use up
    // the budget, so a browser or a health check behind the admin's own
    // NAT cannot lock the admin out.
    for _ in 0..20 {
        let resp = reqwest::blocking::Client::new()
            .get(format!("{}/api/v1/plans", server.url))
            .header("x-forwarded-for", "192.0.2.44")
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
    }
    assert_eq!(plans_as("192.0.2.44", ADMIN_TOKEN).0, 200);
}

/// A request's head may take 64 KiB: one of 100 KiB gets 431 (hyper's
/// default, ~400 KiB a connection, let connections that never end their
/// headers hold gigabytes), while ordinary requests go on.
fn oversized_headers_get_431_and_hold_no_memory(backend: Backend) {
    use std::io::{Read, Write};
    let server = TestServer::start_on(backend);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let big = "x".repeat(100 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: k\r\nX-Big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    let within = format!("x{}", "y".repeat(30 * 1024));
    let resp = reqwest::blocking::Client::new()
        .get(format!("{}/healthz", server.url))
        .header("x-ok", within)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// One address holding connections (10,050 kept alive with a request every
/// 5 s took all 10,000 slots, and no one else got an answer): past
/// `--max-connections-per-ip` its further connections are closed at once.
fn one_client_cannot_hold_every_connection(backend: Backend) {
    use std::io::{Read, Write};
    let server = TestServer::start_with(ServerOptions {
        backend,
        args: ["--max-connections-per-ip", "3"].map(String::from).to_vec(),
        ..Default::default()
    });
    let addr = server.url.trim_start_matches("http://").to_owned();
    let ask = |stream: &mut std::net::TcpStream| -> Option<String> {
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n")
            .ok()?;
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let mut held: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    for stream in &mut held {
        assert!(ask(stream).is_some_and(|a| a.starts_with("HTTP/1.1 200")));
    }
    let mut fourth = std::net::TcpStream::connect(&addr).unwrap();
    assert_eq!(ask(&mut fourth), None, "closed at once");
    drop(held.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut again = std::net::TcpStream::connect(&addr).unwrap();
        if ask(&mut again).is_some_and(|a| a.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the freed slot is not given back"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn slow_clients_are_dropped_and_do_not_starve_others(backend: Backend) {
    let server = TestServer::start_with(ServerOptions {
        backend,
        args: ["--header-timeout", "1"].map(String::from).to_vec(),
        ..Default::default()
    });
    let addr = server.url.trim_start_matches("http://").to_owned();
    // Slowloris: many connections that send half a request and stall.
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"POST /api/v1/validate HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(server.request("GET", "/healthz", None, None).0, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "healthy clients are served while slow ones stall"
    );
    std::thread::sleep(Duration::from_millis(1800));
    for s in slow.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        // The server answers 408 or just closes; either way the connection ends.
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => panic!("slow connection still open after the header timeout: {e}"),
            }
        }
    }
}

fn hostile_bodies_get_clear_errors_never_500(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan("p", json!({"features": []}));
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"KS\"".to_vec(),
        b"{\"key\": null}".to_vec(),
        b"{\"key\": \"\\u0000\"}".to_vec(),
        "{\"key\": \"KS-ÄÖÜ-💥\"}".as_bytes().to_vec(),
        vec![0xff, 0xfe, 0x00],
        format!("{{\"key\": \"{}\"}}", "A".repeat(60_000)).into_bytes(),
        b"{\"key\": \"KS-0000\", \"domain\": {\"nested\": true}}".to_vec(),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
    ];
    for body in cases {
        for path in [
            "/api/v1/validate",
            "/api/v1/deactivate",
            "/api/v1/licenses",
            "/api/v1/plans/p",
        ] {
            let method = if path.ends_with("/p") { "PUT" } else { "POST" };
            let (status, answer) = server.raw(method, path, body.clone());
            assert!((400..500).contains(&status), "{path} {status} {answer}");
            let code = if path.ends_with("validate") {
                &answer["code"]
            } else {
                &answer["error"]["code"]
            };
            assert!(code.is_string(), "{path}: error shape: {answer}");
            let message = answer["error"]["message"]
                .as_str()
                .or(answer["message"].as_str())
                .unwrap_or_default();
            assert!(
                !message.contains("struct"),
                "{path}: no Rust type in a message: {message}"
            );
        }
    }
    let (_, list) = server.admin("GET", "/licenses", None);
    assert_eq!(list["data"], json!([]), "nothing was stored");
}

/// PostgreSQL refuses a NUL character in text and in `jsonb`, SQLite takes
/// it: both backends answer 400 before storage instead (a NUL got a 500 on
/// PostgreSQL), and nothing is stored.
fn text_with_a_nul_character_is_refused_never_500(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan("p", json!({"features": []}));
    let license = server.license("p", json!({}));
    let id = license["id"].as_str().expect("id");
    let before = server.admin("GET", &format!("/licenses/{id}"), None).1;
    let nul = "\u{0}";
    let bodies = [
        (
            "POST",
            "/api/v1/licenses".to_owned(),
            json!({"plan": nul, "customer_email": "a@b.example"}),
        ),
        (
            "POST",
            "/api/v1/licenses".to_owned(),
            json!({"plan": "p", "customer_email": "a@b.example", "metadata": {"k": nul}}),
        ),
        (
            "POST",
            "/api/v1/licenses".to_owned(),
            json!({"plan": "p", "customer_email": "a@b.example", "metadata": {nul: 1}}),
        ),
        (
            "PUT",
            format!("/api/v1/licenses/{id}"),
            json!({"plan": nul}),
        ),
        (
            "PUT",
            format!("/api/v1/licenses/{id}"),
            json!({"metadata": {"nested": [nul]}}),
        ),
        (
            "PUT",
            "/api/v1/plans/q".to_owned(),
            json!({"features": [nul]}),
        ),
        (
            "POST",
            "/api/v1/webhooks".to_owned(),
            json!({"url": format!("http://127.0.0.1:9/{nul}")}),
        ),
        (
            "POST",
            "/api/v1/deactivate".to_owned(),
            json!({"key": license["key"], "fingerprint": nul}),
        ),
    ];
    for (method, path, body) in bodies {
        let raw = serde_json::to_vec(&body).expect("json");
        assert!(raw.windows(6).any(|w| w == b"\\u0000"), "{body}");
        let (status, answer) = server.raw(method, &path, raw);
        assert_eq!(status, 400, "{method} {path} {body}: {answer}");
        assert_eq!(answer["error"]["code"], "BAD_REQUEST", "{answer}");
        let message = answer["error"]["message"].as_str().expect("message");
        assert!(message.contains("NUL"), "{message}");
    }
    // An escaped backslash before `u0000` is text, not a NUL.
    let (status, created) = server.admin(
        "POST",
        "/licenses",
        Some(json!({"plan": "p", "customer_email": "a@b.example", "metadata": {"k": "\\u0000"}})),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["metadata"]["k"], "\\u0000");
    for path in [
        "/api/v1/licenses/%00".to_owned(),
        format!("/api/v1/licenses/{id}%00"),
        "/api/v1/licenses/%00/usage".to_owned(),
        format!("/api/v1/licenses/{id}/domains/a%00.example"),
        format!("/api/v1/licenses/{id}/machines/%00"),
        "/api/v1/plans/%00".to_owned(),
        "/api/v1/webhooks/%00".to_owned(),
        "/api/v1/webhooks/%00/deliveries".to_owned(),
        "/api/v1/licenses?plan=%00".to_owned(),
        "/api/v1/licenses?customer_email=a%00".to_owned(),
        "/api/v1/licenses?status=%00".to_owned(),
    ] {
        for method in ["GET", "DELETE", "PUT"] {
            let (status, answer) = server.raw(method, &path, b"{}".to_vec());
            assert!(
                (400..500).contains(&status),
                "{method} {path}: {status} {answer}"
            );
            assert!(
                answer["error"]["code"].is_string(),
                "{method} {path}: {answer}"
            );
        }
    }
    let (_, list) = server.admin("GET", "/licenses", None);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(
        server.admin("GET", &format!("/licenses/{id}"), None).1,
        before
    );
    let (status, plans) = server.admin("GET", "/plans", None);
    assert_eq!(status, 200);
    assert_eq!(plans["data"].as_array().map(Vec::len), Some(1), "{plans}");
}

/// Every `/validate` answer has the `/validate` shape (SPEC §3), also the
/// ones no decision was reached for: a request that times out, and one
/// whose storage fails. Management routes keep their own error shape.
fn validate_answers_a_timeout_and_a_storage_failure_in_its_own_shape(backend: Backend) {
    let server = TestServer::start_with(ServerOptions {
        backend,
        args: ["--request-timeout", "1"].map(String::from).to_vec(),
        ..Default::default()
    });
    server.plan("p", json!({"features": []}));
    let license = server.license("p", json!({}));
    let undecided = |answer: &Value, code: &str| {
        assert_eq!(answer["valid"], false, "{answer}");
        assert_eq!(answer["code"], code, "{answer}");
        assert_eq!(answer["error"], code, "{answer}");
        assert!(answer["message"].is_string(), "{answer}");
        assert!(answer["token"].is_null(), "{answer}");
    };
    // A body that never arrives in full: 408 once the request's second is up.
    for (path, validate_shape) in [("/api/v1/validate", true), ("/api/v1/licenses", false)] {
        let addr = server.url.trim_start_matches("http://");
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            conn,
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"key\":",
            keysmith_tests::ADMIN_TOKEN
        )
        .unwrap();
        let mut raw = String::new();
        let _ = conn.read_to_string(&mut raw);
        assert!(raw.starts_with("HTTP/1.1 408"), "{path}: {raw}");
        let body: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap_or(""))
            .unwrap_or_else(|e| panic!("{path}: {e}: {raw}"));
        if validate_shape {
            undecided(&body, "TIMEOUT");
        } else {
            assert_eq!(body["error"]["code"], "TIMEOUT", "{body}");
        }
    }
    // Storage that fails under the look-up (its plans table gone): 500.
    server.execute_sql("ALTER TABLE plans RENAME TO plans_gone");
    let (status, answer) = server.validate(json!({"key": license["key"]}));
    assert_eq!(status, 500, "{answer}");
    undecided(&answer, "INTERNAL");
    assert!(
        !answer.to_string().contains("plans"),
        "no SQL in an answer: {answer}"
    );
}

/// An error message quotes a bad value, not kilobytes of it.
#[test]
fn error_messages_quote_at_most_the_start_of_a_long_value() {
    let server = TestServer::start();
    server.plan("p", json!({"features": []}));
    let long = "x".repeat(5_000);
    let answers = [
        server.admin(
            "POST",
            "/licenses",
            Some(json!({"plan": "p", "customer_email": long})),
        ),
        server.admin("GET", &format!("/licenses/lic_{long}"), None),
        server.admin("GET", &format!("/webhooks/wh_{long}"), None),
        server.admin("DELETE", &format!("/licenses/lic_X/domains/{long}!"), None),
        server.validate(json!({"key": "KS-0000", "domain": format!("{long}!")})),
    ];
    for (status, answer) in answers {
        assert!((400..500).contains(&status), "{status} {answer}");
        let message = answer["error"]["message"]
            .as_str()
            .or(answer["message"].as_str())
            .unwrap_or_else(|| panic!("a message: {answer}"));
        assert!(
            message.len() < 300,
            "{status}: {} bytes: {message:.200}",
            message.len()
        );
    }
}

/// SPEC §3: every answer of `/validate` has its shape, a wrong method's too.
#[test]
fn a_wrong_method_on_validate_is_answered_in_its_shape() {
    let server = TestServer::start();
    for method in ["GET", "PUT", "DELETE"] {
        let (status, answer) = server.request(method, "/api/v1/validate", None, None);
        assert_eq!(status, 405, "{method}: {answer}");
        assert_eq!(
            (&answer["valid"], &answer["code"], &answer["error"]),
            (&json!(false), &json!("BAD_REQUEST"), &json!("BAD_REQUEST")),
            "{method}: {answer}"
        );
    }
    // The management routes keep theirs.
    let (status, answer) = server.request("PATCH", "/api/v1/plans", None, None);
    assert_eq!(
        (status, &answer["error"]["code"]),
        (405, &json!("METHOD_NOT_ALLOWED"))
    );
}

/// A body declared larger than `--max-body-bytes` is refused at once with
/// 413, in the route's own shape, not after the request timeout waiting
/// for bytes that never come (it was 408 after 30 s).
#[test]
fn a_body_declared_too_large_is_refused_at_once() {
    let server = TestServer::start();
    let addr = server.url.trim_start_matches("http://").to_owned();
    for (path, validate_shape) in [("/api/v1/validate", true), ("/api/v1/licenses", false)] {
        let mut conn = TcpStream::connect(&addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            conn,
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 99999999\r\n\r\n{{}}",
            keysmith_tests::ADMIN_TOKEN
        )
        .unwrap();
        let mut raw = Vec::new();
        let _ = conn.read_to_end(&mut raw);
        let raw = String::from_utf8_lossy(&raw);
        assert!(raw.starts_with("HTTP/1.1 413"), "{path}: {raw}");
        let body: Value = serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap_or(""))
            .unwrap_or_else(|e| panic!("{path}: {e}: {raw}"));
        if validate_shape {
            assert_eq!(
                (&body["valid"], &body["code"]),
                (&json!(false), &json!("BAD_REQUEST")),
                "{body}"
            );
        } else {
            assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE", "{body}");
        }
    }
}

/// Metadata numbers at the ends of what JSON (as an f64) holds are stored
/// and read back as sent, on both backends: PostgreSQL's `jsonb` keeps
/// them as exact decimals (`-1.7976931348623157e308` comes back as 309
/// digits), and reading those back once failed ("number out of range": a
/// 500 for the write, and for every later list holding the license).
fn metadata_numbers_at_the_ends_of_json_read_back_as_sent(backend: Backend) {
    let server = TestServer::start_on(backend);
    server.plan("p", json!({"features": []}));
    let numbers = [
        f64::MAX,
        -f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        -1.998864320788892e293,
        0.1,
        1e21,
        -3.06123687044375e-177,
        123456789012345680000000000000.0,
    ];
    let metadata = json!({"numbers": numbers, "nested": {"max": f64::MAX}});
    let (status, created) = server.admin(
        "POST",
        "/licenses",
        Some(json!({"plan": "p", "customer_email": "a@b.example", "metadata": metadata})),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id");
    let read_back = |answer: &Value| -> Vec<f64> {
        answer["metadata"]["numbers"]
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"))
            .iter()
            .map(|n| n.as_f64().expect("a number"))
            .collect()
    };
    assert_eq!(read_back(&created), numbers);
    let (status, got) = server.admin("GET", &format!("/licenses/{id}"), None);
    assert_eq!(status, 200, "{got}");
    assert_eq!(read_back(&got), numbers);
    assert_eq!(got["metadata"]["nested"]["max"].as_f64(), Some(f64::MAX));
    let (status, updated) = server.admin(
        "PUT",
        &format!("/licenses/{id}"),
        Some(json!({"metadata": {"numbers": numbers.map(|n| -n)}})),
    );
    assert_eq!(status, 200, "{updated}");
    let (status, list) = server.admin("GET", "/licenses", None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(read_back(&list["data"][0]), numbers.map(|n| -n));
}
