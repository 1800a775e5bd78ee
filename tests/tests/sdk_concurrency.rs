//! Many threads and processes validating the same key at once leave a cache
//! that every reader can read, at every moment.

mod common_sdk;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common_sdk::Licensed;
use keysmith::{Code, Source, ValidateOptions};
use keysmith_tests::{bin_path, ServerOptions};

fn unlimited() -> ServerOptions {
    ServerOptions {
        args: vec!["--rate-limit".into(), "0".into()],
        ..Default::default()
    }
}

/// Watches the cache while `work` runs: every read must find a whole,
/// verified answer. Returns how many reads were made.
fn while_reading_the_cache(l: &Licensed, work: impl FnOnce() + Send) -> usize {
    let reader = l.client().build().unwrap();
    let opts = ValidateOptions::new();
    assert!(
        reader.validate_offline(&l.key, &opts).unwrap().valid,
        "a first answer is cached"
    );
    let done = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                match reader.validate_offline(&l.key, &opts) {
                    Ok(answer) => {
                        assert_eq!((answer.code, answer.source), (Code::Valid, Source::Cache))
                    }
                    Err(e) => panic!("a reader found no usable cache mid-write: {e:#}"),
                }
                reads.fetch_add(1, Ordering::SeqCst);
            }
        });
        work();
        done.store(true, Ordering::SeqCst);
    });
    reads.into_inner()
}

#[test]
fn threads_sharing_one_client_and_separate_clients() {
    let l = Licensed::start_with(7, unlimited());
    let opts = ValidateOptions::new();
    let shared = l.client().build().unwrap();
    shared.validate(&l.key, &opts).unwrap();
    let reads = while_reading_the_cache(&l, || {
        std::thread::scope(|s| {
            for i in 0..8 {
                let shared = &shared;
                let l = &l;
                s.spawn(move || {
                    // Half the threads share one client, half bring their own.
                    let own = l.client().build().unwrap();
                    let client = if i % 2 == 0 { shared } else { &own };
                    for _ in 0..10 {
                        let answer = client.validate(&l.key, &ValidateOptions::new()).unwrap();
                        assert_eq!((answer.code, answer.source), (Code::Valid, Source::Online));
                    }
                });
            }
        });
    });
    assert!(reads > 0);
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
    while_reading_the_cache(&l, || {
        for _round in 0..6 {
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
                assert_eq!(answer["source"], "online");
            }
        }
    });
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
