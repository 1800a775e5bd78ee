//! Abuse resistance end to end: key guessing, slowloris, oversized and
//! hostile requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keysmith_core::LicenseKey;
use keysmith_tests::{Backend, ServerOptions, TestServer};
use serde_json::{json, Value};

keysmith_tests::on_both_backends!(
    a_key_guesser_is_cut_off_while_other_clients_keep_their_answers,
    without_a_trusted_proxy_header_forwarded_for_is_ignored,
    slow_clients_are_dropped_and_do_not_starve_others,
    hostile_bodies_get_clear_errors_never_500,
);

fn validate_as(server: &TestServer, ip: &str, key: &str) -> (u16, Value, Option<String>) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/validate", server.url))
        .header("x-forwarded-for", format!("{ip}, 10.9.9.9"))
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
        }
    }
    let (_, list) = server.admin("GET", "/licenses", None);
    assert_eq!(list["data"], json!([]), "nothing was stored");
}
