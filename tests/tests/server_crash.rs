//! Crash safety: validations that take seats and admin writes run under
//! concurrent load while the server is `kill -9`ed at random moments, again
//! and again. After every restart on the same data dir, everything the server
//! acknowledged must be there, and the database must be consistent.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keysmith_tests::{Backend, ServerOptions, TestServer, ADMIN_TOKEN};
use serde_json::{json, Value};

keysmith_tests::on_both_backends!(acknowledged_writes_survive_repeated_kill_9_under_load);

/// The same with `--sqlite-synchronous full`, where a usage record waits for
/// a grouped fsync of the journal instead of one `write(2)` alone.
#[test]
fn acknowledged_writes_survive_repeated_kill_9_under_load_with_synchronous_full() {
    crash_cycles(Backend::Sqlite, &["--sqlite-synchronous", "full"]);
}

const CYCLES: usize = 6;
const POOL: usize = 8;
const MAX_DOMAINS: usize = 3;
const MAX_MACHINES: usize = 2;
const VALIDATORS: usize = 4;
const WRITERS: usize = 2;

/// A small deterministic generator (xorshift), seeded per run and printed so
/// a failure can be replayed with `CRASH_SEED=…`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What the server acknowledged: a 2xx (or a decided `/validate` answer) that
/// reached the client. Requests whose answer was lost may or may not have
/// happened; acknowledged ones must have.
#[derive(Default)]
struct Acked {
    /// License id → key, for every 201 of `POST /licenses`.
    created: BTreeMap<String, String>,
    /// License id → highest `metadata.v` acknowledged by a `PUT`.
    updated: BTreeMap<String, u64>,
    /// License id → highest `metadata.v` sent (acknowledged or not).
    sent_updates: BTreeMap<String, u64>,
    update_count: u64,
    revoked: BTreeSet<String>,
    /// License id → domains and fingerprints a `VALID` answer confirmed.
    domains: BTreeMap<String, BTreeSet<String>>,
    machines: BTreeMap<String, BTreeSet<String>>,
    /// License id → decided `/validate` answers received / requests sent.
    validations: BTreeMap<String, u64>,
    validations_sent: BTreeMap<String, u64>,
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn send(
    http: &reqwest::blocking::Client,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), reqwest::Error> {
    let mut req = http
        .request(method.parse().unwrap(), url)
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send()?;
    let status = resp.status().as_u16();
    let body = resp.json().unwrap_or(Value::Null);
    Ok((status, body))
}

/// Validates pool keys with domains and fingerprints until the server dies.
fn validator(
    url: String,
    pool: Vec<(String, String)>,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let http = client();
    let mut rng = Rng(seed | 1);
    while !stop.load(Ordering::Relaxed) {
        let (id, key) = &pool[rng.below(pool.len())];
        let mut body = json!({"key": key});
        if rng.below(2) == 0 {
            body["domain"] = json!(format!("d{}.example.com", rng.below(MAX_DOMAINS + 3)));
        } else {
            body["fingerprint"] = json!(format!("m-{}", rng.below(MAX_MACHINES + 2)));
        }
        *acked
            .lock()
            .unwrap()
            .validations_sent
            .entry(id.clone())
            .or_default() += 1;
        let Ok((status, answer)) = send(
            &http,
            "POST",
            &format!("{url}/api/v1/validate"),
            Some(&body),
        ) else {
            return;
        };
        assert_eq!(status, 200, "{answer}");
        let mut a = acked.lock().unwrap();
        *a.validations.entry(id.clone()).or_default() += 1;
        if answer["code"] == "VALID" {
            if let Some(d) = body["domain"].as_str() {
                a.domains
                    .entry(id.clone())
                    .or_default()
                    .insert(d.to_owned());
            }
            if let Some(f) = body["fingerprint"].as_str() {
                a.machines
                    .entry(id.clone())
                    .or_default()
                    .insert(f.to_owned());
            }
        }
    }
}

/// Creates licenses, updates pool licenses (each writer owns its own, so its
/// updates are ordered) and revokes licenses it created, until the server
/// dies. Pool licenses stay valid so that validations keep taking seats.
fn writer(
    url: String,
    own: Vec<String>,
    acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let http = client();
    let mut rng = Rng(seed | 1);
    let mut created: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let result = match rng.below(10) {
            9 if !created.is_empty() => {
                let id = created.swap_remove(rng.below(created.len()));
                send(
                    &http,
                    "DELETE",
                    &format!("{url}/api/v1/licenses/{id}"),
                    None,
                )
                .map(|(status, license)| {
                    assert_eq!(status, 200, "{license}");
                    acked.lock().unwrap().revoked.insert(id.clone());
                })
            }
            0..=3 => {
                let body = json!({"plan": "crash", "customer_email": "dev@example.com"});
                send(
                    &http,
                    "POST",
                    &format!("{url}/api/v1/licenses"),
                    Some(&body),
                )
                .map(|(status, license)| {
                    assert_eq!(status, 201, "{license}");
                    let id = license["id"].as_str().unwrap().to_owned();
                    let key = license["key"].as_str().unwrap().to_owned();
                    created.push(id.clone());
                    acked.lock().unwrap().created.insert(id, key);
                })
            }
            _ => {
                let id = &own[rng.below(own.len())];
                let v = {
                    let mut a = acked.lock().unwrap();
                    let v = a.sent_updates.entry(id.clone()).or_default();
                    *v += 1;
                    *v
                };
                let body =
                    json!({"metadata": {"v": v}, "customer_email": format!("v{v}@example.com")});
                send(
                    &http,
                    "PUT",
                    &format!("{url}/api/v1/licenses/{id}"),
                    Some(&body),
                )
                .map(|(status, license)| {
                    assert_eq!(status, 200, "{license}");
                    assert_eq!(license["metadata"]["v"], v);
                    let mut a = acked.lock().unwrap();
                    let best = a.updated.entry(id.clone()).or_default();
                    *best = (*best).max(v);
                    a.update_count += 1;
                })
            }
        };
        if result.is_err() {
            return;
        }
    }
}

/// Every license, through the paginated list.
fn all_licenses(server: &TestServer) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/licenses?limit=100&cursor={c}"),
            None => "/licenses?limit=100".to_owned(),
        };
        let (status, page) = server.admin("GET", &path, None);
        assert_eq!(status, 200, "{page}");
        for license in page["data"].as_array().unwrap() {
            out.insert(license["id"].as_str().unwrap().to_owned(), license.clone());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// A license's usage total and validation count, read between two reads of
/// the count that agree: on PostgreSQL a transaction whose COMMIT the
/// killed server had sent can still land just after the restart, between
/// two reads.
fn usage_total_and_count(server: &TestServer, id: &str) -> (u64, u64) {
    let count = || {
        let (status, license) = server.admin("GET", &format!("/licenses/{id}"), None);
        assert_eq!(status, 200);
        license["validation_count"].as_u64().unwrap()
    };
    for _ in 0..40 {
        let before = count();
        let (status, usage) = server.admin("GET", &format!("/licenses/{id}/usage?limit=1"), None);
        assert_eq!(status, 200);
        let total = usage["totals"]["validations"].as_u64().unwrap();
        if count() == before {
            return (total, before);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{id}: the validation count never settled");
}

fn check_acknowledged(server: &TestServer, acked: &Acked, cycle: usize) {
    let licenses = all_licenses(server);
    for (id, key) in &acked.created {
        let license = licenses
            .get(id)
            .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged license {id} is gone"));
        assert_eq!(license["key"], key.as_str());
    }
    for (id, v) in &acked.updated {
        let stored = licenses[id]["metadata"]["v"].as_u64().unwrap_or(0);
        let sent = acked.sent_updates[id];
        assert!(
            (*v..=sent).contains(&stored),
            "cycle {cycle}: {id} has update v{stored}; acknowledged v{v}, sent up to v{sent}"
        );
        assert_eq!(
            licenses[id]["customer_email"],
            format!("v{stored}@example.com"),
            "an update is applied whole"
        );
    }
    for id in &acked.revoked {
        assert_eq!(
            licenses[id]["status"], "revoked",
            "cycle {cycle}: acknowledged revocation of {id} lost"
        );
    }
    for (id, license) in &licenses {
        let domains: BTreeSet<String> = serde_json::from_value(license["domains"].clone()).unwrap();
        let machines: BTreeSet<String> =
            serde_json::from_value(license["machines"].clone()).unwrap();
        if let Some(max) = license["max_domains"].as_u64() {
            assert!(
                domains.len() as u64 <= max,
                "cycle {cycle}: {id} holds {domains:?}, limit {max}"
            );
        }
        if let Some(max) = license["max_machines"].as_u64() {
            assert!(
                machines.len() as u64 <= max,
                "cycle {cycle}: {id} holds {machines:?}, limit {max}"
            );
        }
        if let Some(confirmed) = acked.domains.get(id) {
            assert!(
                confirmed.is_subset(&domains),
                "cycle {cycle}: {id} lost a seat: {confirmed:?} ⊄ {domains:?}"
            );
        }
        if let Some(confirmed) = acked.machines.get(id) {
            assert!(
                confirmed.is_subset(&machines),
                "cycle {cycle}: {id} lost a seat: {confirmed:?} ⊄ {machines:?}"
            );
        }
        let count = license["validation_count"].as_u64().unwrap();
        let answered = acked.validations.get(id).copied().unwrap_or(0);
        let sent = acked.validations_sent.get(id).copied().unwrap_or(0);
        assert!(
            (answered..=sent).contains(&count),
            "cycle {cycle}: {id} counts {count} validations; {answered} were answered, {sent} sent"
        );
        if sent > 0 {
            let (total, count) = usage_total_and_count(server, id);
            assert_eq!(total, count, "cycle {cycle}: {id} usage total vs count");
            if answered > 0 {
                assert!(license["last_validated_at"].is_string());
            }
        }
    }
}

/// Runs the load until a random moment, then `kill -9`s the server under it.
fn load_and_kill(
    server: &mut TestServer,
    pool: &[(String, String)],
    acked: &Arc<Mutex<Acked>>,
    rng: &mut Rng,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..VALIDATORS {
        let (url, pool, acked, stop, seed) = (
            server.url.clone(),
            pool.to_vec(),
            acked.clone(),
            stop.clone(),
            rng.next(),
        );
        workers.push(
            thread::Builder::new()
                .name(format!("validator-{i}"))
                .spawn(move || validator(url, pool, acked, stop, seed))
                .unwrap(),
        );
    }
    for i in 0..WRITERS {
        let own: Vec<String> = pool
            .iter()
            .skip(i)
            .step_by(WRITERS)
            .map(|(id, _)| id.clone())
            .collect();
        let (url, acked, stop, seed) =
            (server.url.clone(), acked.clone(), stop.clone(), rng.next());
        workers.push(
            thread::Builder::new()
                .name(format!("writer-{i}"))
                .spawn(move || writer(url, own, acked, stop, seed))
                .unwrap(),
        );
    }
    thread::sleep(Duration::from_millis(200 + rng.below(1000) as u64));
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("a worker saw a wrong answer");
    }
}

fn acknowledged_writes_survive_repeated_kill_9_under_load(backend: Backend) {
    crash_cycles(backend, &[]);
}

fn crash_cycles(backend: Backend, extra_args: &[&str]) {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let started = Instant::now();

    let mut server = TestServer::start_with(ServerOptions {
        args: ["--rate-limit", "0", "--failed-lookup-limit", "0"]
            .iter()
            .chain(extra_args)
            .map(|a| a.to_string())
            .collect(),
        backend,
        ..Default::default()
    });
    server.plan(
        "crash",
        json!({"features": ["f"], "max_domains": MAX_DOMAINS, "max_machines": MAX_MACHINES}),
    );
    let acked = Arc::new(Mutex::new(Acked::default()));
    let pool: Vec<(String, String)> = (0..POOL)
        .map(|_| {
            let license = server.license("crash", json!({}));
            let (id, key) = (
                license["id"].as_str().unwrap().to_owned(),
                license["key"].as_str().unwrap().to_owned(),
            );
            acked
                .lock()
                .unwrap()
                .created
                .insert(id.clone(), key.clone());
            (id, key)
        })
        .collect();

    for cycle in 1..=CYCLES {
        load_and_kill(&mut server, &pool, &acked, &mut rng);
        server.restart();
        check_acknowledged(&server, &acked.lock().unwrap(), cycle);
    }
    let a = acked.lock().unwrap();
    let answered: u64 = a.validations.values().sum();
    println!(
        "{CYCLES} kills in {:?}: {} licenses created, {} updates, {} revocations, {answered} validations acknowledged",
        started.elapsed(),
        a.created.len(),
        a.update_count,
        a.revoked.len(),
    );
    assert!(answered > 0 && a.created.len() > POOL, "the load did run");
    drop(a);

    // A last kill under load, and the SQLite file itself is checked.
    load_and_kill(&mut server, &pool, &acked, &mut rng);
    if backend == Backend::Sqlite {
        let db = rusqlite::Connection::open(server.data_path("keysmith.db")).unwrap();
        let integrity: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(integrity, "ok");
    }
    server.restart();
    check_acknowledged(&server, &acked.lock().unwrap(), CYCLES + 1);
}
