//! Scale-out (SPEC §10): several `keysmith-server` processes on one
//! PostgreSQL and one signing key answer as one server — seat limits,
//! counters, first activation, webhook delivery and the expiry sweep stay
//! correct across them, with nothing coordinated in memory.
//!
//! PostgreSQL only: skipped, saying so, unless `KEYSMITH_TEST_DATABASE_URL` is set.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use keysmith_core::token::KeySet;
use keysmith_tests::receiver::Receiver;
use keysmith_tests::{Backend, PgDatabase, ServerOptions, TestServer, ALL_EVENTS};
use serde_json::{json, Value};

fn options(db: &PgDatabase, signing_key: &std::path::Path) -> ServerOptions {
    ServerOptions {
        database: Some(db.url()),
        args: [
            "--signing-key",
            &signing_key.display().to_string(),
            "--rate-limit",
            "0",
            "--expiry-interval",
            "1",
            "--webhook-retry-base-ms",
            "200",
            "--webhook-retry-max-ms",
            "400",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    }
}

/// A temporary dir holding a signing key file (`write_signing_key`), and
/// the file's path: the key every server of a test shares.
fn shared_signing_key() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("signing.key");
    write_signing_key(&key_path);
    (dir, key_path)
}

/// A signing key file as the server writes it: base64 of a 32-byte seed, mode 0600.
fn write_signing_key(path: &std::path::Path) {
    use base64::Engine;
    let seed: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    std::fs::write(
        path,
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(seed)
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

#[test]
fn three_servers_on_one_database_act_as_one() {
    if !Backend::Postgres.available() {
        return;
    }
    let db = PgDatabase::create();
    let (_dir, key_path) = shared_signing_key();
    let receiver = Receiver::start();
    let servers: Vec<TestServer> = (0..3)
        .map(|_| TestServer::start_with(options(&db, &key_path)))
        .collect();
    let (a, b, c) = (&servers[0], &servers[1], &servers[2]);

    // One public key: tokens from any process verify with it.
    let public = a.public_key();
    assert!(servers.iter().all(|s| s.public_key() == public));
    let keys = KeySet::from_base64_list(&public).unwrap();

    // Whatever one server writes, the others see.
    let (status, hook) = a.admin(
        "POST",
        "/webhooks",
        Some(json!({"url": receiver.url, "events": ALL_EVENTS})),
    );
    assert_eq!(status, 201, "{hook}");
    b.plan("five", json!({"features": ["sso"], "max_domains": 5}));
    let license = c.license("five", json!({}));
    let key = license["key"].as_str().unwrap().to_owned();
    assert_eq!(
        a.admin("GET", &format!("/licenses/{}", id(&license)), None)
            .1,
        license
    );

    // 60 validations of distinct domains at once, spread over the servers.
    let servers = Arc::new(servers);
    let barrier = Arc::new(Barrier::new(60));
    let handles: Vec<_> = (0..60)
        .map(|i| {
            let (servers, key, barrier) = (servers.clone(), key.clone(), barrier.clone());
            std::thread::spawn(move || {
                let domain = format!("d{i}.example");
                barrier.wait();
                let (status, answer) =
                    servers[i % 3].validate(json!({"key": key, "domain": domain}));
                (status, domain, answer)
            })
        })
        .collect();
    let answers: Vec<(u16, String, Value)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (a, b, c) = (&servers[0], &servers[1], &servers[2]);
    assert!(
        answers.iter().all(|(status, _, _)| *status == 200),
        "every request answered"
    );
    let codes: Vec<&str> = answers
        .iter()
        .map(|(_, _, v)| v["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes.iter().filter(|c| **c == "VALID").count(),
        5,
        "{codes:?}"
    );
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == "DOMAIN_LIMIT_REACHED")
            .count(),
        55
    );
    for (_, domain, answer) in &answers {
        let claims = keys
            .verify(answer["token"].as_str().unwrap())
            .expect("token verifies");
        assert_eq!(claims.domain.as_deref(), Some(domain.as_str()));
        assert_eq!(claims.code.as_str(), answer["code"].as_str().unwrap());
    }
    let (_, after) = b.admin("GET", &format!("/licenses/{}", id(&license)), None);
    assert_eq!(after["domains"].as_array().unwrap().len(), 5, "{after}");
    assert_eq!(
        after["validation_count"], 60,
        "one count per answered request"
    );
    let (_, usage) = c.admin(
        "GET",
        &format!("/licenses/{}/usage?limit=1", id(&license)),
        None,
    );
    assert_eq!(usage["totals"]["validations"], 60);
    assert_eq!(usage["totals"]["valid"], 5);

    // Many events from all servers at once: created everywhere, then status
    // changes through different servers.
    let created: Vec<Value> = std::thread::scope(|scope| {
        let makers: Vec<_> = (0..3)
            .map(|s| {
                let server = &servers[s];
                scope.spawn(move || {
                    (0..8)
                        .map(|_| server.license("five", json!({})))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        makers.into_iter().flat_map(|m| m.join().unwrap()).collect()
    });
    for (i, l) in created.iter().enumerate().take(6) {
        let path = format!("/licenses/{}", id(l));
        servers[i % 3].admin("PUT", &path, Some(json!({"status": "suspended"})));
        servers[(i + 1) % 3].admin("PUT", &path, Some(json!({"status": "active"})));
        servers[(i + 2) % 3].admin("PUT", &path, Some(json!({"metadata": {"step": i}})));
    }

    // The expiry sweep runs in every process; the license expires once.
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let expiring = a.license(
        "five",
        json!({"expires_at": keysmith_core::time::format_rfc3339(soon)}),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while b
        .admin("GET", &format!("/licenses/{}", id(&expiring)), None)
        .1["status"]
        != "expired"
    {
        assert!(Instant::now() < deadline, "never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(2500));
    let expired = db.query_texts(
        "SELECT id FROM events WHERE type = 'license.expired' AND license_id = $1",
        &[&id(&expiring)],
    );
    assert_eq!(expired.len(), 1, "license.expired fired once");

    // Each event delivered exactly once, in order per license.
    let recorded = db.query_texts("SELECT id FROM events ORDER BY seq", &[]);
    let want: HashSet<String> = recorded.iter().cloned().collect();
    assert_eq!(want.len(), 2 + 24 + 6 * 3 + 2, "events recorded");
    receiver.wait_until(Duration::from_secs(30), "every event delivered", |got| {
        let ids: HashSet<String> = got
            .iter()
            .map(|r| r.headers["keysmith-event-id"].clone())
            .collect();
        ids.is_superset(&want)
    });
    std::thread::sleep(Duration::from_secs(1));
    let got = receiver.delivered();
    let mut seen = HashSet::new();
    for r in &got {
        assert!(
            seen.insert(r.headers["keysmith-event-id"].clone()),
            "delivered twice: {}",
            r.body
        );
    }
    assert_eq!(seen, want);

    let mut delivered_per_license: HashMap<String, Vec<String>> = HashMap::new();
    for r in &got {
        let event: Value = serde_json::from_str(&r.body).unwrap();
        delivered_per_license
            .entry(event["data"]["license"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["type"].as_str().unwrap().to_owned());
    }
    for (license_id, delivered) in &delivered_per_license {
        let stored = db.query_texts(
            "SELECT type FROM events WHERE license_id = $1 ORDER BY seq",
            &[license_id],
        );
        assert_eq!(delivered, &stored, "in order for {license_id}");
    }
    assert_eq!(
        delivered_per_license[&id(&license)],
        ["license.created", "license.activated"]
    );
    assert_eq!(
        delivered_per_license[&id(&created[0])],
        [
            "license.created",
            "license.suspended",
            "license.reinstated",
            "license.updated"
        ]
    );
    assert_eq!(
        delivered_per_license[&id(&expiring)],
        ["license.created", "license.expired"]
    );
}

#[test]
fn servers_starting_together_migrate_once() {
    if !Backend::Postgres.available() {
        return;
    }
    let db = PgDatabase::create();
    let (_dir, key_path) = shared_signing_key();
    let servers: Vec<TestServer> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| TestServer::start_with(options(&db, &key_path))))
            .collect();
        starting.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let versions = db.query_texts(
        "SELECT version::text FROM schema_version ORDER BY version",
        &[],
    );
    assert_eq!(versions, ["1", "2", "3"]);
    servers[0].plan("p", json!({"features": []}));
    let license = servers[1].license("p", json!({}));
    assert_eq!(
        servers[2].validate(json!({"key": license["key"]})).1["code"],
        "VALID"
    );
}

/// Least privilege: a role that may read and write Keysmith's tables but
/// create nothing serves a database a server has set up (it was refused:
/// every start created the schema_version table "if not exists").
#[test]
fn a_role_that_may_only_read_and_write_serves_a_set_up_database() {
    if !Backend::Postgres.available() {
        return;
    }
    let db = PgDatabase::create();
    let (_dir, key_path) = shared_signing_key();
    let mut owner = TestServer::start_with(options(&db, &key_path));
    owner.plan("p", json!({"features": []}));
    let license = owner.license("p", json!({}));
    owner.terminate();

    let Some(schema) = db.query_texts("SELECT current_schema()::text", &[]).pop() else {
        panic!("no schema");
    };
    let role = format!("{schema}_rw");
    let Some(url) = db
        .url()
        .split_once("://postgres@")
        .map(|(scheme, rest)| format!("{scheme}://{role}@{rest}"))
    else {
        eprintln!("skipped: the test database URL's user is not postgres");
        return;
    };
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN; \
         GRANT USAGE ON SCHEMA {schema} TO {role}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}; \
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"
    ));
    let served = std::panic::catch_unwind(|| {
        let server = TestServer::start_with(ServerOptions {
            database: Some(url.clone()),
            ..options(&db, &key_path)
        });
        let again = server.license("p", json!({}));
        for key in [&license["key"], &again["key"]] {
            assert_eq!(server.validate(json!({"key": key})).1["code"], "VALID");
        }
    });
    db.execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"));
    if let Err(panic) = served {
        std::panic::resume_unwind(panic);
    }
}

/// A license row locked elsewhere (an operator's open transaction) used to
/// stall every license: the validations waiting on it timed out for their
/// clients but kept their statements, and so the pool's connections, until
/// the lock went. Statements now give up on a lock after 5 s.
#[test]
fn a_license_locked_elsewhere_does_not_stall_the_others() {
    if !Backend::Postgres.available() {
        return;
    }
    let db = PgDatabase::create();
    let (_dir, key_path) = shared_signing_key();
    let mut opts = options(&db, &key_path);
    opts.database = Some(db.url().replace("pool_size=8", "pool_size=2"));
    opts.args.extend(["--request-timeout".into(), "2".into()]);
    let server = TestServer::start_with(opts);
    server.plan("p", json!({"features": []}));
    let locked = server.license("p", json!({}));
    let other = server.license("p", json!({}));
    let start = std::time::Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            db.execute(&format!(
                "BEGIN; SELECT 1 FROM licenses WHERE id = '{}' FOR UPDATE; \
                 SELECT pg_sleep(10); COMMIT;",
                id(&locked)
            ));
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        // Seat-taking validations of the locked license: every pool
        // connection ends up waiting on its row.
        for i in 0..2 {
            let key = locked["key"].clone();
            let server = &server;
            scope.spawn(move || {
                server.validate(json!({"key": key, "domain": format!("d{i}.example.com")}));
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        let answered = loop {
            let (status, answer) = server.validate(json!({"key": other["key"]}));
            if status == 200 {
                assert_eq!(answer["code"], "VALID");
                break start.elapsed();
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        assert!(
            answered < std::time::Duration::from_secs(8),
            "another license waited {answered:?} for the lock to go"
        );
    });
}

/// Behind a load balancer: `/readyz` answers 503 once the server cannot
/// read its database, while `/healthz` (the process serves) stays 200.
#[test]
fn readyz_follows_the_database_and_healthz_the_process() {
    if !Backend::Postgres.available() {
        return;
    }
    let db = PgDatabase::create();
    let (_dir, key_path) = shared_signing_key();
    let server = TestServer::start_with(options(&db, &key_path));
    assert_eq!(
        server.request("GET", "/readyz", None, None),
        (200, json!({"status": "ok"}))
    );
    // The database gone from under it (here: the table every read needs).
    db.execute("DROP TABLE plans CASCADE");
    assert_eq!(
        server.request("GET", "/readyz", None, None),
        (503, json!({"status": "unavailable"}))
    );
    assert_eq!(server.request("GET", "/healthz", None, None).0, 200);
    assert!(server.log().contains("not ready"), "{}", server.log());
}
