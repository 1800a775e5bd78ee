//! Online validation over loopback against the real server: the whole SDK
//! path (local check, HTTP request, server decision and durable usage
//! record, signature and claims checks, atomic cache write) as an app sees
//! it. Prints p50 / p90 / p99 / max of sequential validations through the
//! blocking client, after a warm-up.
//!
//! ```text
//! cargo build --release -p keysmith-server
//! cargo bench -p keysmith --features blocking --bench online
//! ```
//!
//! The server binary is `target/release/keysmith-server`, or the path in
//! `KEYSMITH_SERVER_BIN`. `KEYSMITH_BENCH_N` sets the number of measured
//! validations (default 2000).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keysmith::ValidateOptions;

const ADMIN_TOKEN: &str = "keysmith-sdk-bench-admin-token";

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYSMITH_SERVER_BIN") {
        return path.into();
    }
    // target/release/deps/online-… → target/release/keysmith-server
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    profile_dir.join("keysmith-server")
}

fn start_server(data_dir: &std::path::Path) -> Server {
    let binary = server_binary();
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --release -p keysmith-server` first (or set KEYSMITH_SERVER_BIN)",
        binary.display()
    );
    let mut child = Command::new(&binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--rate-limit",
            "0",
            "--log",
            "warn",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("KEYSMITH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("KEYSMITH_DATABASE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the server printed its address")
            .unwrap();
        if let Some(url) = line.strip_prefix("keysmith-server listening on ") {
            break url.to_owned();
        }
    };
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

fn admin(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .request(method, format!("{url}/api/v1{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then this smoke-checks nothing rather than needing a release server.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: usize = std::env::var("KEYSMITH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(&dir.path().join("data"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    admin(
        &runtime,
        &server.url,
        reqwest::Method::PUT,
        "/plans/pro",
        serde_json::json!({"features": ["sso"]}),
    );
    let license = admin(
        &runtime,
        &server.url,
        reqwest::Method::POST,
        "/licenses",
        serde_json::json!({"plan": "pro", "customer_email": "bench@example.com"}),
    );
    let public_key = runtime.block_on(async {
        let body: serde_json::Value = reqwest::get(format!("{}/api/v1/public-key", server.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["public_key"].as_str().unwrap().to_owned()
    });

    let client = keysmith::blocking::Client::builder(&server.url)
        .public_key(public_key)
        .app_id("sdk-bench")
        .cache_dir(dir.path().join("cache"))
        .build()
        .unwrap();
    let key = license["key"].as_str().unwrap();
    let options = ValidateOptions::new()
        .domain("example.com")
        .fingerprint("bench-machine");

    for _ in 0..100 {
        assert!(client.validate(key, &options).unwrap().valid);
    }
    let mut times = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let answer = client.validate(key, &options).unwrap();
        times.push(t.elapsed());
        assert!(answer.valid && answer.source == keysmith::Source::Online);
    }
    let total = started.elapsed();
    report(
        "SDK: blocking client validate(), unchanged answer",
        times,
        total,
    );

    // Every answer written: a new fingerprint each time, so a new cache file
    // (temp file, fsync, rename, directory fsync) — an app's first
    // validation, or one whose answer changed.
    let writes = (n / 4).max(1);
    let mut times = Vec::with_capacity(writes);
    let started = Instant::now();
    for i in 0..writes {
        let options = ValidateOptions::new()
            .domain("example.com")
            .fingerprint(format!("machine-{i}"));
        let t = Instant::now();
        let answer = client.validate(key, &options).unwrap();
        times.push(t.elapsed());
        assert!(answer.valid);
    }
    report(
        "SDK: validate() with a cache write",
        times,
        started.elapsed(),
    );

    // For scale: the same request without the SDK (no key check, no token
    // verification, no cache write) — what the server and loopback cost.
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/validate", server.url);
    let body = serde_json::json!({"key": key, "domain": "example.com", "fingerprint": "bench-machine", "nonce": "n"});
    let mut times = Vec::with_capacity(n);
    let started = Instant::now();
    runtime.block_on(async {
        for _ in 0..n {
            let t = Instant::now();
            let response = http.post(&url).json(&body).send().await.unwrap();
            assert!(response.status().is_success());
            response.bytes().await.unwrap();
            times.push(t.elapsed());
        }
    });
    report(
        "raw HTTP POST /api/v1/validate (no SDK)",
        times,
        started.elapsed(),
    );
}

fn report(what: &str, mut times: Vec<Duration>, total: Duration) {
    let n = times.len();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{what}: {n} sequential validations over loopback (SQLite server)");
    println!(
        "  p50 {:.3} ms   p90 {:.3} ms   p99 {:.3} ms   max {:.3} ms   mean {:.3} ms   ({:.0} validations/s)",
        ms(percentile(&times, 50.0)),
        ms(percentile(&times, 90.0)),
        ms(percentile(&times, 99.0)),
        ms(times[n - 1]),
        ms(total) / n as f64,
        n as f64 / total.as_secs_f64()
    );
}
