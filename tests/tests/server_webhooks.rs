//! Webhooks end to end: a real receiver on 127.0.0.1 gets signed events,
//! failures are retried and listed, restarts lose nothing, and a dead
//! endpoint does not slow validation.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use keysmith_tests::receiver::{Received, Receiver};
use keysmith_tests::{Backend, ServerOptions, TestServer, ALL_EVENTS};
use serde_json::{json, Value};
use sha2::Sha256;

keysmith_tests::on_both_backends!(
    every_event_type_arrives_in_order_signed_once,
    a_failing_receiver_gets_the_event_again_and_attempts_are_listed,
    after_giving_up_an_event_is_failed_and_can_be_redelivered,
    undelivered_events_go_out_after_a_restart,
    a_dead_endpoint_does_not_slow_validation,
    webhook_endpoints_are_managed_and_the_secret_is_shown_once,
    only_events_an_endpoint_subscribes_to_are_kept,
    settled_events_past_the_retention_are_deleted,
    a_refused_connection_is_listed_with_its_cause_and_logged_with_the_endpoint,
    a_rotated_secret_is_shown_once_and_signs_what_follows,
);

/// A server whose retries come fast: first retry after 100–200 ms.
fn fast_retry_server(backend: Backend, extra: &[&str]) -> TestServer {
    let mut args: Vec<String> = [
        "--webhook-retry-base-ms",
        "200",
        "--webhook-retry-max-ms",
        "400",
        "--webhook-timeout",
        "2",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    TestServer::start_with(ServerOptions {
        backend,
        args,
        ..Default::default()
    })
}

fn register(server: &TestServer, url: &str, events: &[&str]) -> Value {
    let (status, hook) = server.admin(
        "POST",
        "/webhooks",
        Some(json!({"url": url, "events": events})),
    );
    assert_eq!(status, 201, "{hook}");
    hook
}

/// Checks the `Keysmith-Signature` header the way a receiver would.
fn verify(secret: &str, r: &Received) -> Value {
    let header = r
        .headers
        .get("keysmith-signature")
        .expect("signature header");
    let (t, v1) = header.split_once(",v1=").expect("t=…,v1=…");
    let t = t.strip_prefix("t=").expect("t=");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", r.body).as_bytes());
    mac.verify_slice(&hex::decode(v1).expect("hex"))
        .expect("signature verifies");
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "fresh timestamp");
    serde_json::from_str(&r.body).expect("JSON body")
}

/// The Rust snippet of docs/webhooks.md, verbatim.
fn docs_verify(secret: &str, header: &str, body: &[u8], now: i64) -> bool {
    let Some((t, sig)) = header.strip_prefix("t=").and_then(|h| h.split_once(",v1=")) else {
        return false;
    };
    let (Ok(ts), Ok(sig)) = (t.parse::<i64>(), hex::decode(sig)) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    (now - ts).abs() <= 300 && mac.verify_slice(&sig).is_ok() // constant-time compare
}

fn every_event_type_arrives_in_order_signed_once(backend: Backend) {
    let receiver = Receiver::start();
    let server = fast_retry_server(backend, &[]);
    let hook = register(&server, &receiver.url, &ALL_EVENTS);
    let secret = hook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));

    server.plan("p", json!({"features": []}));
    server.plan("q", json!({"features": []}));
    let license = server.license("p", json!({}));
    let path = format!("/licenses/{}", license["id"].as_str().unwrap());
    for _ in 0..3 {
        assert_eq!(
            server.validate(json!({"key": license["key"]})).1["code"],
            "VALID"
        );
    }
    server.admin("PUT", &path, Some(json!({"plan": "q"})));
    server.admin("PUT", &path, Some(json!({"status": "suspended"})));
    server.admin("PUT", &path, Some(json!({"status": "active"})));
    server.admin(
        "PUT",
        &path,
        Some(json!({"expires_at": "2020-01-01T00:00:00Z"})),
    );
    server.admin("DELETE", &path, None);

    let got = receiver.wait_until(Duration::from_secs(20), "7 events", |r| r.len() >= 7);
    std::thread::sleep(Duration::from_millis(500));
    let got = if receiver.received().len() > got.len() {
        receiver.received()
    } else {
        got
    };
    let events: Vec<Value> = got.iter().map(|r| verify(&secret, r)).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    // The test raises them in the order ALL_EVENTS lists them.
    assert_eq!(types, ALL_EVENTS, "each once, in order");
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|id| id.starts_with("evt_")));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 7, "unique event ids");
    assert_eq!(events[0]["data"]["license"]["id"], license["id"]);
    assert_eq!(events[6]["data"]["license"]["status"], "revoked");
    // The activating validation counts in its own event, and a later change
    // sees every validation answered before it.
    assert_eq!(events[1]["data"]["license"]["validation_count"], 1);
    assert_eq!(events[2]["data"]["license"]["validation_count"], 3);
    assert_eq!(events[3]["data"]["license"]["status"], "suspended");
    assert_eq!(
        got[0].headers.get("keysmith-event-id").map(String::as_str),
        Some(events[0]["id"].as_str().unwrap())
    );

    let now = chrono::Utc::now().timestamp();
    let header = &got[0].headers["keysmith-signature"];
    assert!(docs_verify(&secret, header, got[0].body.as_bytes(), now));
    assert!(!docs_verify(
        "whsec_other",
        header,
        got[0].body.as_bytes(),
        now
    ));
    assert!(
        !docs_verify(&secret, header, got[0].body.as_bytes(), now + 3600),
        "stale"
    );

    // A forged body does not verify.
    let mut forged = got[0].clone();
    forged.body = forged.body.replace("license.created", "license.revoked");
    assert!(std::panic::catch_unwind(|| verify(&secret, &forged)).is_err());
}

fn a_failing_receiver_gets_the_event_again_and_attempts_are_listed(backend: Backend) {
    let receiver = Receiver::start();
    receiver.set_status(500);
    let server = fast_retry_server(backend, &[]);
    let hook = register(
        &server,
        &receiver.url,
        &["license.created", "license.updated"],
    );
    let id = hook["id"].as_str().unwrap();
    server.plan("p", json!({"features": []}));
    let license = server.license("p", json!({}));
    server.admin(
        "PUT",
        &format!("/licenses/{}", license["id"].as_str().unwrap()),
        Some(json!({"metadata": {"a": 1}})),
    );

    receiver.wait_until(Duration::from_secs(20), "three failed attempts", |r| {
        r.len() >= 3
    });
    receiver.set_status(204);
    let got = receiver.wait_until(Duration::from_secs(20), "both delivered", |r| {
        r.iter().filter(|x| x.status == 204).count() >= 2
    });
    // Per license, in order: the update never overtakes the failing create.
    let bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let first_update = bodies
        .iter()
        .position(|b| b["type"] == "license.updated")
        .unwrap();
    assert!(
        got[..first_update].iter().any(|r| r.status == 204),
        "created was delivered before updated was sent"
    );
    assert!(bodies[..first_update]
        .iter()
        .all(|b| b["type"] == "license.created"));

    std::thread::sleep(Duration::from_millis(300));
    let (status, deliveries) =
        server.admin("GET", &format!("/webhooks/{id}/deliveries?limit=500"), None);
    assert_eq!(status, 200);
    let attempts = deliveries["data"].as_array().unwrap();
    let failed: Vec<&Value> = attempts
        .iter()
        .filter(|a| a["status_code"] == 500)
        .collect();
    assert!(failed.len() >= 3, "{deliveries}");
    let a = failed[0];
    assert_eq!(a["type"], "license.created");
    assert!(a["event_id"].as_str().unwrap().starts_with("evt_"));
    assert!(
        a["attempt"].as_u64().unwrap() >= 1 && a["at"].is_string() && a["duration_ms"].is_u64()
    );
    assert!(a["error"].is_null());
    let ok: Vec<&Value> = attempts
        .iter()
        .filter(|a| a["status_code"] == 204)
        .collect();
    assert_eq!(ok.len(), 2);
    assert!(ok.iter().all(|a| a["state"] == "delivered"));
    let created_attempts: Vec<u64> = attempts
        .iter()
        .filter(|a| a["type"] == "license.created")
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(
        created_attempts[0] as usize,
        created_attempts.len(),
        "attempts count up, newest first"
    );
}

fn after_giving_up_an_event_is_failed_and_can_be_redelivered(backend: Backend) {
    let receiver = Receiver::start();
    receiver.set_status(503);
    let server = fast_retry_server(backend, &["--webhook-give-up", "1"]);
    let hook = register(&server, &receiver.url, &["license.created"]);
    let id = hook["id"].as_str().unwrap();
    server.plan("p", json!({"features": []}));
    server.license("p", json!({}));
    let deadline = Instant::now() + Duration::from_secs(20);
    let event_id = loop {
        let (_, d) = server.admin("GET", &format!("/webhooks/{id}/deliveries"), None);
        if d["data"][0]["state"] == "failed" {
            break d["data"][0]["event_id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "never failed: {d}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let tries = receiver.received().len();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(receiver.received().len(), tries, "no attempts after failed");

    receiver.set_status(200);
    let (status, _) = server.admin(
        "POST",
        &format!("/webhooks/{id}/deliveries/{event_id}/redeliver"),
        None,
    );
    assert_eq!(status, 202);
    receiver.wait_until(Duration::from_secs(10), "redelivery", |r| {
        r.iter().any(|x| x.status == 200)
    });
    let (status, body) = server.admin(
        "POST",
        &format!("/webhooks/{id}/deliveries/evt_NOPE/redeliver"),
        None,
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("DELIVERY_NOT_FOUND"))
    );
}

fn undelivered_events_go_out_after_a_restart(backend: Backend) {
    let receiver = Receiver::start();
    receiver.set_status(503);
    let mut server = fast_retry_server(backend, &[]);
    let hook = register(&server, &receiver.url, &["license.created"]);
    server.plan("p", json!({"features": []}));
    let licenses: Vec<String> = (0..5)
        .map(|_| {
            server.license("p", json!({}))["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    receiver.wait_until(Duration::from_secs(10), "a first attempt", |r| {
        !r.is_empty()
    });
    server.kill9();
    receiver.set_status(200);
    server.restart();
    // A delivery that was in flight when the process died stays leased to
    // it for the attempt timeout (2 s here) + 30 s; then it goes out again.
    let got = receiver.wait_until(Duration::from_secs(2 + 30 + 15), "5 deliveries", |r| {
        r.iter().filter(|x| x.status == 200).count() >= 5
    });
    let secret = hook["secret"].as_str().unwrap();
    let mut delivered: Vec<String> = got
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| {
            verify(secret, r)["data"]["license"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    delivered.sort();
    delivered.dedup();
    let mut expected = licenses.clone();
    expected.sort();
    assert_eq!(delivered, expected);
}

fn a_dead_endpoint_does_not_slow_validation(backend: Backend) {
    fn median_validation_ms(server: &TestServer, keys: &[String]) -> f64 {
        let http = reqwest::blocking::Client::new();
        let mut times: Vec<f64> = keys
            .iter()
            .map(|key| {
                let start = Instant::now();
                let resp = http
                    .post(format!("{}/api/v1/validate", server.url))
                    .json(&json!({"key": key}))
                    .send()
                    .unwrap();
                assert_eq!(resp.status(), 200);
                start.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    }
    let setup = |server: &TestServer| -> Vec<String> {
        server.plan("p", json!({"features": []}));
        (0..40)
            .map(|_| {
                server.license("p", json!({}))["key"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let quiet = TestServer::start_on(backend);
    let quiet_keys = setup(&quiet);
    let busy = TestServer::start_with(ServerOptions {
        backend,
        args: vec!["--webhook-timeout".into(), "30".into()],
        ..Default::default()
    });
    // Many endpoints that never answer, each subscribed to the event every
    // first validation fires.
    for _ in 0..10 {
        register(&busy, &Receiver::black_hole(), &ALL_EVENTS);
    }
    let busy_keys = setup(&busy);
    std::thread::sleep(Duration::from_millis(500));
    let baseline = median_validation_ms(&quiet, &quiet_keys);
    let with_dead = median_validation_ms(&busy, &busy_keys);
    let (_, d) = busy.admin("GET", "/webhooks", None);
    assert_eq!(d["data"].as_array().unwrap().len(), 10);
    assert!(
        with_dead < baseline * 3.0 + 2.0,
        "median validation {with_dead:.2} ms with dead endpoints vs {baseline:.2} ms without"
    );
}

fn webhook_endpoints_are_managed_and_the_secret_is_shown_once(backend: Backend) {
    let receiver = Receiver::start();
    let server = fast_retry_server(backend, &[]);
    let hook = register(
        &server,
        &receiver.url,
        &["license.created", "license.created"],
    );
    let id = hook["id"].as_str().unwrap();
    assert!(id.starts_with("wh_"));
    assert_eq!(hook["events"], json!(["license.created"]));
    assert_eq!(hook["enabled"], true);
    let (_, got) = server.admin("GET", &format!("/webhooks/{id}"), None);
    assert!(
        got.get("secret").is_none(),
        "secret shown only at creation: {got}"
    );
    let (_, list) = server.admin("GET", "/webhooks", None);
    assert_eq!(list["data"][0]["id"], id);
    assert!(list["data"][0].get("secret").is_none());

    for (body, code) in [
        (
            json!({"url": "ftp://example.com", "events": ["license.created"]}),
            "INVALID_URL",
        ),
        (
            json!({"url": "not a url", "events": ["license.created"]}),
            "INVALID_URL",
        ),
        (
            json!({"url": "http://example.com", "events": []}),
            "INVALID_EVENTS",
        ),
        (
            json!({"url": "http://example.com", "events": ["license.exploded"]}),
            "INVALID_EVENTS",
        ),
    ] {
        let (status, err) = server.admin("POST", "/webhooks", Some(body));
        assert_eq!((status, err["error"]["code"].as_str()), (422, Some(code)));
    }
    assert_eq!(
        server
            .admin(
                "POST",
                "/webhooks",
                Some(json!({"url": "http://x.example"}))
            )
            .0,
        400
    );

    // Disabled: events wait; enabled again: they go out.
    let (_, off) = server.admin(
        "PUT",
        &format!("/webhooks/{id}"),
        Some(json!({"enabled": false})),
    );
    assert_eq!(off["enabled"], false);
    server.plan("p", json!({"features": []}));
    server.license("p", json!({}));
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        receiver.received().is_empty(),
        "a disabled endpoint gets nothing"
    );
    server.admin(
        "PUT",
        &format!("/webhooks/{id}"),
        Some(json!({"enabled": true})),
    );
    std::thread::sleep(Duration::from_millis(300));
    // Events raised while disabled are not queued for it.
    let before = receiver.received().len();
    server.license("p", json!({}));
    receiver.wait_until(Duration::from_secs(10), "a delivery", |r| r.len() > before);

    assert_eq!(
        server.admin("DELETE", &format!("/webhooks/{id}"), None).0,
        204
    );
    let (status, err) = server.admin("GET", &format!("/webhooks/{id}"), None);
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("WEBHOOK_NOT_FOUND"))
    );
    assert_eq!(
        server
            .admin("GET", &format!("/webhooks/{id}/deliveries"), None)
            .0,
        404
    );
}

fn only_events_an_endpoint_subscribes_to_are_kept(backend: Backend) {
    let receiver = Receiver::start();
    let server = fast_retry_server(backend, &[]);
    server.plan("p", json!({"features": []}));
    let before = server.license("p", json!({}));
    let before_id = before["id"].as_str().unwrap();
    assert_eq!(
        server.validate(json!({"key": before["key"]})).1["code"],
        "VALID"
    );
    assert!(
        server.event_types(before_id).is_empty(),
        "no endpoint: nothing kept"
    );

    register(&server, &receiver.url, &["license.suspended"]);
    let license = server.license("p", json!({}));
    let id = license["id"].as_str().unwrap();
    let path = format!("/licenses/{id}");
    server.admin("PUT", &path, Some(json!({"status": "suspended"})));
    server.admin("PUT", &path, Some(json!({"status": "active"})));
    assert_eq!(server.event_types(id), ["license.suspended"]);
    let got = receiver.wait_until(Duration::from_secs(20), "the suspension", |r| !r.is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.received().len(), 1, "{got:?}");
    assert!(got[0].body.contains("license.suspended"));
    assert!(server.event_types(before_id).is_empty());
}

/// The default `--webhook-retention-days` (30): at start-up, a delivered
/// event older than that goes with its attempts; a newer one stays.
fn settled_events_past_the_retention_are_deleted(backend: Backend) {
    let receiver = Receiver::start();
    let mut server = fast_retry_server(backend, &[]);
    let hook = register(&server, &receiver.url, &["license.created"]);
    let id = hook["id"].as_str().unwrap().to_owned();
    server.plan("p", json!({"features": []}));
    let old = server.license("p", json!({}));
    server.license("p", json!({}));
    let attempts = |server: &TestServer| {
        let (status, page) = server.admin("GET", &format!("/webhooks/{id}/deliveries"), None);
        assert_eq!(status, 200, "{page}");
        page["data"].as_array().unwrap().clone()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while attempts(&server)
        .iter()
        .filter(|a| a["state"] == "delivered")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "not delivered: {:?}",
            attempts(&server)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.terminate(), Some(0));
    // The first license's creation, 40 days old.
    server.execute_sql(&format!(
        "UPDATE events SET created_at = created_at - 40 * 86400 WHERE license_id = '{}';",
        old["id"].as_str().unwrap()
    ));
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while attempts(&server).len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the old event is still listed: {:?}",
            attempts(&server)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, left) = server.admin(
        "GET",
        &format!("/licenses/{}", old["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(left["id"], old["id"], "the license itself stays");
    let log = server.log();
    assert!(
        log.contains("webhook events past the retention deleted"),
        "the deletion is logged: {log}"
    );
}

/// An attempt that gets no HTTP answer says why (it was only "error
/// sending request"), without the URL's password; the log names the
/// endpoint, since one event goes to several.
fn a_refused_connection_is_listed_with_its_cause_and_logged_with_the_endpoint(backend: Backend) {
    let server = fast_retry_server(backend, &[]);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let hook = register(
        &server,
        &format!("http://user:hunter2@127.0.0.1:{closed}/hook"),
        &["license.created"],
    );
    let id = hook["id"].as_str().unwrap();
    server.plan("p", json!({"features": []}));
    server.license("p", json!({}));
    let deadline = Instant::now() + Duration::from_secs(20);
    let attempt = loop {
        let (status, deliveries) = server.admin("GET", &format!("/webhooks/{id}/deliveries"), None);
        assert_eq!(status, 200);
        if let Some(a) = deliveries["data"]
            .as_array()
            .and_then(|d| d.first())
            .cloned()
        {
            break a;
        }
        assert!(Instant::now() < deadline, "no attempt: {deliveries}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(attempt["status_code"].is_null(), "{attempt}");
    let error = attempt["error"].as_str().unwrap();
    assert!(error.to_lowercase().contains("connect"), "{error}");
    assert!(error.contains("refused"), "{error}");
    assert!(
        !error.contains("hunter2") && !error.contains("user:"),
        "{error}"
    );
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("webhook attempt") && l.contains(id)),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");

    // Still being retried: a redelivery is a conflict, not "no delivery".
    let event = attempt["event_id"].as_str().unwrap();
    let (status, body) = server.admin(
        "POST",
        &format!("/webhooks/{id}/deliveries/{event}/redeliver"),
        None,
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("DELIVERY_PENDING")),
        "{body}"
    );
}

/// A leaked secret is replaced without losing the endpoint's history:
/// `rotate_secret` shows the new one once, and what goes out next is
/// signed with it, not the old one.
fn a_rotated_secret_is_shown_once_and_signs_what_follows(backend: Backend) {
    let receiver = Receiver::start();
    let server = fast_retry_server(backend, &[]);
    let hook = register(&server, &receiver.url, &["license.created"]);
    let id = hook["id"].as_str().unwrap();
    let old = hook["secret"].as_str().unwrap().to_owned();
    let path = format!("/webhooks/{id}");
    let (status, rotated) = server.admin("PUT", &path, Some(json!({"rotate_secret": true})));
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"]
        .as_str()
        .expect("the new secret, once")
        .to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{rotated}");
    assert_eq!(rotated["url"], hook["url"], "nothing else changed");
    assert!(server.admin("GET", &path, None).1.get("secret").is_none());
    // Not rotated unless asked: no secret in an ordinary update's answer.
    let (_, updated) = server.admin("PUT", &path, Some(json!({"rotate_secret": false})));
    assert!(updated.get("secret").is_none(), "{updated}");

    server.plan("p", json!({"features": []}));
    server.license("p", json!({}));
    receiver.wait_until(Duration::from_secs(20), "the event", |r| !r.is_empty());
    let got = receiver.received();
    verify(&new, &got[0]);
    let header = got[0].headers["keysmith-signature"].clone();
    let now = chrono::Utc::now().timestamp();
    assert!(!docs_verify(&old, &header, got[0].body.as_bytes(), now));
}

/// A receiver whose HTTPS certificate comes from a private CA (an
/// internal endpoint) is delivered to once the server is given that CA
/// with `--webhook-ca-file`; without it the attempt is refused and says
/// why; a file that holds no certificate stops the server at start-up.
/// The receiver is Python's `http.server` behind `ssl`, the certificates
/// are made by `openssl`: skipped, saying so, without either.
#[test]
fn a_receiver_behind_a_private_ca_is_trusted_with_webhook_ca_file() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(
        path("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let made = openssl(
        &[
            &[
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=Keysmith test CA",
            ][..],
            &ec,
            &["-keyout", &path("ca.key"), "-out", &path("ca.pem")],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign"],
        ]
        .concat(),
    ) && openssl(
        &[
            &["req", "-nodes", "-subj", "/CN=127.0.0.1"][..],
            &ec,
            &["-keyout", &path("srv.key"), "-out", &path("srv.csr")],
        ]
        .concat(),
    ) && openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &path("srv.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &path("ext.cnf"),
        "-out",
        &path("srv.pem"),
    ]);
    if !made {
        eprintln!("skipped: openssl cannot make the test certificates");
        return;
    }
    const RECEIVER: &str = r#"
import http.server, ssl, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = tls.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
    let Ok(mut receiver) = Command::new("python3")
        .args(["-c", RECEIVER, &path("srv.pem"), &path("srv.key")])
        .stdout(Stdio::piped())
        .spawn()
    else {
        eprintln!("skipped: no python3 for the HTTPS receiver");
        return;
    };
    let mut port = String::new();
    std::io::BufReader::new(receiver.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let url = format!("https://127.0.0.1:{}/hook", port.trim());
    let first_attempt = |server: &TestServer| {
        let hook = register(server, &url, &["license.created"]);
        let id = hook["id"].as_str().unwrap().to_owned();
        server.plan("p", json!({"features": []}));
        server.license("p", json!({}));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (_, deliveries) = server.admin("GET", &format!("/webhooks/{id}/deliveries"), None);
            if let Some(attempt) = deliveries["data"].as_array().and_then(|d| d.last()) {
                break attempt.clone();
            }
            assert!(Instant::now() < deadline, "no attempt: {deliveries}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    let trusting = fast_retry_server(Backend::Sqlite, &["--webhook-ca-file", &path("ca.pem")]);
    let attempt = first_attempt(&trusting);
    assert_eq!(attempt["status_code"], 200, "{attempt}");

    let plain = fast_retry_server(Backend::Sqlite, &[]);
    let attempt = first_attempt(&plain);
    assert!(attempt["status_code"].is_null(), "{attempt}");
    let error = attempt["error"].as_str().unwrap();
    assert!(error.contains("UnknownIssuer"), "{error}");
    let _ = receiver.kill();
    let _ = receiver.wait();

    // Not a certificate: refused before the server listens.
    let out = keysmith_tests::server_command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &path("data"),
        "--webhook-ca-file",
        &path("srv.key"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--webhook-ca-file") && stderr.contains("no certificate"),
        "{stderr}"
    );
    assert!(!dir.path().join("data").exists(), "nothing made");
}
