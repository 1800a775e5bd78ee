//! Many threads and processes validating the same key at once leave a cache
//! that every reader can read, at every moment.

mod common_sdk;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common_sdk::Licensed;
use keysmith::{Code, Source, ValidateOptions};
use keysmith_tests::{bin_path, ServerOptions};
use serde_json::json;

fn unlimited() -> ServerOptions {
    ServerOptions {
        args: vec!["--rate-limit".into(), "0".into()],
        ..Default::default()
    }
}

/// Watches the cache while `work` runs: every read must find a whole,
/// verified answer. Returns how many different answers (by nonce) the reader
/// saw, i.e. how often it saw the file replaced, plus one.
/// The reader's clock is `ahead_secs` ahead: it must not fall behind what the
/// writers record.
fn while_reading_the_cache(l: &Licensed, ahead_secs: i64, work: impl FnOnce() + Send) -> usize {
    let reader = l
        .client()
        .clock(common_sdk::shifted_clock(ahead_secs))
        .build()
        .unwrap();
    let opts = ValidateOptions::new();
    assert!(
        reader.validate_offline(&l.key, &opts).unwrap().valid,
        "a first answer is cached"
    );
    let done = AtomicBool::new(false);
    let mut seen = HashSet::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                match reader.validate_offline(&l.key, &opts) {
                    Ok(answer) => {
                        assert_eq!((answer.code, answer.source), (Code::Valid, Source::Cache));
                        seen.insert(answer.claims.unwrap().nonce);
                    }
                    Err(e) => panic!("a reader found no usable cache mid-write: {e:#}"),
                }
            }
        });
        work();
        done.store(true, Ordering::SeqCst);
    });
    seen.len()
}

/// A clock that moves on 61 s at every reading, shared by every client of a
/// test, so that every online answer is written: the SDK skips rewriting an
/// identical answer less than a minute old.
fn racing_clock(ticks: &Arc<AtomicI64>) -> impl Fn() -> SystemTime + Send + Sync + 'static {
    let ticks = ticks.clone();
    move || SystemTime::now() + Duration::from_secs(ticks.fetch_add(61, Ordering::SeqCst) as u64)
}

#[test]
fn threads_sharing_one_client_and_separate_clients() {
    let l = Licensed::start_with(7, unlimited());
    let opts = ValidateOptions::new();
    let ticks = Arc::new(AtomicI64::new(0));
    let shared = l.client().clock(racing_clock(&ticks)).build().unwrap();
    shared.validate(&l.key, &opts).unwrap();
    // The writers' clocks reach 81 minutes ahead; the reader stays ahead.
    let answers_seen = while_reading_the_cache(&l, 2 * 3600, || {
        std::thread::scope(|s| {
            for i in 0..8 {
                let (shared, l, ticks) = (&shared, &l, &ticks);
                s.spawn(move || {
                    // Half the threads share one client, half bring their own.
                    let own = l.client().clock(racing_clock(ticks)).build().unwrap();
                    let client = if i % 2 == 0 { shared } else { &own };
                    for _ in 0..10 {
                        let answer = client.validate(&l.key, &ValidateOptions::new()).unwrap();
                        assert_eq!((answer.code, answer.source), (Code::Valid, Source::Online));
                    }
                });
            }
        });
    });
    assert!(
        answers_seen > 1,
        "the reader saw the file replaced while reading"
    );
    assert_eq!(l.validation_count(), 81);
    let files = l.cache_files();
    assert_eq!(files.len(), 1, "one file, no temp files left: {files:?}");
}

fn spawn_cli(l: &Licensed) -> Child {
    Command::new(bin_path("ks-e2e-cli"))
        .args([
            "validate",
            "--server",
            &l.server.url,
            "--public-key",
            &l.public_key,
            "--json",
        ])
        .args([
            "--app-id",
            "e2e-app",
            "--cache-dir",
            l.cache.path().to_str().unwrap(),
        ])
        .env("KEYSMITH_KEY", &l.key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the CLI")
}

#[test]
fn processes_validating_at_once_leave_a_readable_cache() {
    let mut l = Licensed::start_with(7, unlimited());
    l.client()
        .build()
        .unwrap()
        .validate(&l.key, &ValidateOptions::new())
        .unwrap();
    let answers_seen = while_reading_the_cache(&l, 0, || {
        for round in 0..6 {
            // A changed answer each round, so that the processes all write.
            let expiry = format!("2099-01-0{}T00:00:00Z", round + 2);
            let (status, body) = l.server.admin(
                "PUT",
                &format!("/licenses/{}", l.id),
                Some(json!({"expires_at": expiry})),
            );
            assert_eq!(status, 200, "{body}");
            let children: Vec<Child> = (0..4).map(|_| spawn_cli(&l)).collect();
            for child in children {
                let out = child.wait_with_output().unwrap();
                assert_eq!(
                    out.status.code(),
                    Some(0),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(
                    (answer["source"].as_str(), answer["expires_at"].as_str()),
                    (Some("online"), Some(expiry.as_str()))
                );
            }
        }
    });
    assert!(
        answers_seen > 1,
        "the reader saw the file replaced while reading"
    );
    assert_eq!(l.cache_files().len(), 1, "{:?}", l.cache_files());

    // What they left answers offline, for the SDK and for the CLI.
    l.server.kill9();
    let answer = l
        .client()
        .build()
        .unwrap()
        .validate(&l.key, &ValidateOptions::new())
        .unwrap();
    assert_eq!((answer.valid, answer.source), (true, Source::Cache));
    let out = spawn_cli(&l).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["source"], "cache");
}
