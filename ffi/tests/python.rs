//! The Python package (`ffi/python/keysmith`, ctypes over the built
//! libkeysmith.so) against a real server: its stdlib-unittest suite and the
//! Python example. Skipped, saying so, where python3 is not installed.

mod support;

use std::process::Command;

use support::{library, repo_root, text, Licensed};

fn python_available() -> bool {
    if support::have("python3") {
        return true;
    }
    println!("skipped: python3 not installed");
    false
}

#[test]
fn python_unittest_suite_passes_against_a_real_server() {
    if !python_available() {
        return;
    }
    let licensed = Licensed::start();
    let package = repo_root().join("ffi/python");
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s", "tests", "-t", "."])
        .current_dir(&package)
        .env("PYTHONPATH", &package)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("KEYSMITH_LIB", library("libkeysmith.so"))
        .env("KEYSMITH_TEST_REQUIRE_SERVER", "1")
        .env("KEYSMITH_TEST_SERVER", &licensed.server.url)
        .env("KEYSMITH_TEST_PUBLIC_KEY", &licensed.public_key)
        .env("KEYSMITH_TEST_VALID_KEY", &licensed.valid_key)
        .env("KEYSMITH_TEST_REVOKED_KEY", &licensed.revoked_key)
        .env("KEYSMITH_TEST_UNKNOWN_KEY", &licensed.unknown_key)
        .output()
        .expect("run python3");
    let report = text(&out);
    println!("{report}");
    assert!(out.status.success(), "python tests failed:\n{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("skipped"),
        "no Python test may be skipped here"
    );
    assert!(stderr.contains("\nOK"), "{report}");
}

#[test]
fn python_example_answers_online_and_offline() {
    if !python_available() {
        return;
    }
    let mut licensed = Licensed::start();
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap().to_owned();
    let example = repo_root().join("examples/python/license_check.py");
    let run = |url: &str, key: &str| {
        Command::new("python3")
            .arg(&example)
            .args([url, &licensed.public_key, key, &cache])
            .env("PYTHONPATH", repo_root().join("ffi/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("KEYSMITH_LIB", library("libkeysmith.so"))
            .output()
            .expect("run python3")
    };
    let url = licensed.server.url.clone();
    for (key, status, line) in [
        (
            licensed.valid_key.clone(),
            0,
            "License check: VALID (online)",
        ),
        (licensed.typo(), 1, "License check: KEY_MALFORMED (local)"),
        (
            licensed.revoked_key.clone(),
            1,
            "License check: LICENSE_REVOKED (online)",
        ),
    ] {
        let out = run(&url, &key);
        assert_eq!(out.status.code(), Some(status), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(line),
            "{}",
            text(&out)
        );
    }
    let out = run(&url, &licensed.valid_key);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Expires: 2099-01-01"));
    let agent = licensed.last_user_agent();
    assert!(agent.starts_with("keysmith-python/"), "{agent}");

    licensed.server.kill9();
    let out = run(&url, &licensed.valid_key);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("VALID (cache)"));
    let out = run(&url, &licensed.unknown_key);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KS_NETWORK"));
}
