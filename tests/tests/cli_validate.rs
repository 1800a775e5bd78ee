//! The real `keysmith` CLI against a real server: exit codes 0 / 1 / 2 and
//! `--json` exactly as SPEC §8.

mod common_sdk;

use common_sdk::{cli, cli_validate, cli_with_env, closed_url, code_of, json_of, Licensed};
use serde_json::{json, Value};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn valid_online_is_0_with_the_pinned_json() {
    let l = Licensed::start();
    let out = cli_validate(&l, &l.server.url, &["--json", "--domain", "Example.com"]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(
        text.trim(),
        r#"{"valid":true,"code":"VALID","source":"online","plan":"pro","features":["sso","audit-log"],"expires_at":"2099-01-01T00:00:00Z"}"#
    );
    assert_eq!(l.license()["domains"], json!(["example.com"]));

    // Human output says the same in words.
    let out = cli_validate(&l, &l.server.url, &["--domain", "example.com"]);
    assert_eq!(code_of(&out), 0);
    let text = stdout(&out);
    assert!(
        text.contains("valid license") && text.contains("pro") && text.contains("sso, audit-log"),
        "{text}"
    );
}

#[test]
fn malformed_key_is_1_without_a_request() {
    let l = Licensed::start();
    let mut typo = l.key.clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'X' { 'Y' } else { 'X' });
    let cache = l.cache.path().to_str().unwrap().to_owned();
    // A closed port: had it tried the network, it would have no answer (2).
    let url = closed_url();
    let args = [
        "validate",
        "--server",
        &url,
        "--public-key",
        &l.public_key,
        "--key",
        &typo,
        "--cache-dir",
        &cache,
        "--json",
    ];
    let out = cli(&args);
    assert_eq!(code_of(&out), 1, "{}", stderr(&out));
    assert_eq!(
        json_of(&out),
        json!({"valid": false, "code": "KEY_MALFORMED", "source": "local", "plan": null, "features": [], "expires_at": null})
    );
    let out = cli(&args[..args.len() - 1]);
    assert_eq!(code_of(&out), 1);
    assert!(stdout(&out).contains("KEY_MALFORMED"), "{}", stdout(&out));
}

#[test]
fn revoked_is_1_online_and_from_the_cache() {
    let mut l = Licensed::start();
    assert_eq!(code_of(&cli_validate(&l, &l.server.url, &[])), 0);
    l.revoke();
    let out = cli_validate(&l, &l.server.url, &["--json"]);
    assert_eq!(code_of(&out), 1);
    let answer = json_of(&out);
    assert_eq!(
        (
            answer["valid"].clone(),
            answer["code"].clone(),
            answer["source"].clone()
        ),
        (json!(false), json!("LICENSE_REVOKED"), json!("online"))
    );
    assert_eq!(answer["plan"], "pro");

    l.server.kill9();
    let url = l.server.url.clone();
    let out = cli_validate(&l, &url, &["--json"]);
    assert_eq!(
        code_of(&out),
        1,
        "a signed invalid answer replayed from the cache: {}",
        stderr(&out)
    );
    assert_eq!(json_of(&out)["code"], "LICENSE_REVOKED");
    assert_eq!(json_of(&out)["source"], "cache");
}

/// A revocation the cache cannot hold (a full disk, a quota, a file-size
/// limit) must not leave the older VALID in its place: it did, so the app
/// was told LICENSE_REVOKED once and VALID at its next offline start.
/// (`ulimit -f 0`: no file may grow, while removing one still works.)
#[cfg(unix)]
#[test]
fn a_revocation_the_cache_cannot_hold_removes_the_cached_valid() {
    let mut l = Licensed::start();
    assert_eq!(code_of(&cli_validate(&l, &l.server.url, &[])), 0);
    assert_eq!(l.cache_files().len(), 1);
    l.revoke();
    let cache = l.cache.path().to_str().unwrap().to_owned();
    let out = std::process::Command::new("sh")
        .args(["-c", "trap '' XFSZ; ulimit -f 0; exec \"$0\" \"$@\""])
        .arg(keysmith_tests::bin_path("ks-e2e-cli"))
        .args(["validate", "--server", &l.server.url, "--public-key"])
        .args([
            &l.public_key,
            "--key",
            &l.key,
            "--cache-dir",
            &cache,
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(code_of(&out), 1, "{}", stderr(&out));
    assert_eq!(json_of(&out)["code"], "LICENSE_REVOKED");
    assert_eq!(l.cache_files().len(), 0, "the VALID answer is gone");

    let url = l.server.url.clone();
    l.server.kill9();
    let out = cli_validate(&l, &url, &["--json"]);
    assert_eq!(code_of(&out), 2, "no answer, not VALID: {}", stdout(&out));
}

#[test]
fn offline_within_grace_is_0_from_the_cache_and_without_cache_is_2() {
    let mut l = Licensed::start();
    let url = l.server.url.clone();
    l.server.kill9();
    let out = cli_validate(&l, &url, &["--json"]);
    assert_eq!(code_of(&out), 2, "no network, no cache");
    assert_eq!(stdout(&out), "", "no answer, no JSON");
    assert!(stderr(&out).contains("no answer"), "{}", stderr(&out));

    l.server.restart();
    assert_eq!(code_of(&cli_validate(&l, &l.server.url, &[])), 0);
    let url = l.server.url.clone();
    l.server.kill9();
    let out = cli_validate(&l, &url, &["--json"]);
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
    assert_eq!(json_of(&out)["source"], "cache");
    assert_eq!(json_of(&out)["valid"], true);
    let human = cli_validate(&l, &url, &[]);
    assert!(
        stdout(&human).contains("from the cache"),
        "{}",
        stdout(&human)
    );
}

#[test]
fn offline_grace_expired_is_1() {
    // A plan with no offline grace: the cached answer expires at once.
    let mut l = Licensed::start_with(0, Default::default());
    let out = cli_validate(&l, &l.server.url, &["--json"]);
    assert_eq!(code_of(&out), 0);
    let url = l.server.url.clone();
    l.server.kill9();
    let out = cli_validate(&l, &url, &["--json"]);
    assert_eq!(code_of(&out), 1, "{}", stderr(&out));
    let answer = json_of(&out);
    assert_eq!(
        (answer["code"].clone(), answer["source"].clone()),
        (json!("OFFLINE_GRACE_EXPIRED"), json!("cache"))
    );
}

#[test]
fn clock_tampered_is_1() {
    let mut l = Licensed::start();
    assert_eq!(code_of(&cli_validate(&l, &l.server.url, &[])), 0);
    let url = l.server.url.clone();
    l.server.kill9();
    // Pretend the SDK already saw a time two days ahead of this clock.
    let files = l.cache_files();
    assert_eq!(files.len(), 1);
    let mut entry: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    entry["newest_seen"] = json!(entry["newest_seen"].as_i64().unwrap() + 2 * 86_400);
    std::fs::write(&files[0], entry.to_string()).unwrap();
    let out = cli_validate(&l, &url, &["--json"]);
    assert_eq!(code_of(&out), 1, "{}", stderr(&out));
    assert_eq!(json_of(&out)["code"], "CLOCK_TAMPERED");
}

#[test]
fn a_wrong_public_key_or_bad_usage_is_2() {
    let l = Licensed::start();
    let stranger = keysmith_core::token::public_key_base64(
        &ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key(),
    );
    let cache = l.cache.path().to_str().unwrap().to_owned();
    let base = |pk: &str| {
        cli(&[
            "validate",
            "--server",
            &l.server.url,
            "--public-key",
            pk,
            "--key",
            &l.key,
            "--cache-dir",
            &cache,
        ])
    };
    let out = base(&stranger);
    assert_eq!(
        code_of(&out),
        2,
        "an answer that does not verify is no answer"
    );
    assert!(stderr(&out).contains("not trusted"), "{}", stderr(&out));
    assert_eq!(code_of(&base("not-base64!")), 2);
    assert_eq!(
        code_of(&cli(&[
            "validate",
            "--server",
            &l.server.url,
            "--key",
            &l.key
        ])),
        2,
        "missing --public-key"
    );
    assert_eq!(
        code_of(&cli(&[
            "validate",
            "--server",
            "ftp://x",
            "--public-key",
            &l.public_key,
            "--key",
            &l.key
        ])),
        2
    );
    let bad_domain = cli(&[
        "validate",
        "--server",
        &l.server.url,
        "--public-key",
        &l.public_key,
        "--key",
        &l.key,
        "--cache-dir",
        &cache,
        "--domain",
        "a b",
    ]);
    assert_eq!(code_of(&bad_domain), 2);
    // Bad usage, said as such: the server was never asked.
    let said = stderr(&bad_domain);
    assert!(
        said.contains("host name") && !said.contains("no answer"),
        "{said}"
    );
    assert_eq!(code_of(&cli(&["nonsense"])), 2);
    assert_eq!(code_of(&cli(&[])), 2);
    let help = cli(&["validate", "--help"]);
    assert_eq!(code_of(&help), 0);
    assert!(stdout(&help).contains("--public-key"));
}

/// The platform's cache dir (here `$XDG_CACHE_HOME`, made a plain file) is
/// held to what a named one is: where no answer can be written, the client
/// is refused at once. It used to validate online and lose every answer,
/// found out only the first time the app was offline.
#[test]
fn an_unusable_platform_cache_dir_is_2_before_any_request() {
    let l = Licensed::start();
    let file = tempfile::NamedTempFile::new().unwrap();
    let validate = |cache_home: &str| {
        cli_with_env(
            &[
                "validate",
                "--server",
                &l.server.url,
                "--public-key",
                &l.public_key,
                "--key",
                &l.key,
            ],
            &[("XDG_CACHE_HOME", cache_home)],
        )
    };
    let out = validate(file.path().to_str().unwrap());
    assert_eq!(code_of(&out), 2, "{}", stdout(&out));
    assert!(
        stderr(&out).contains("cache dir") && stderr(&out).contains(file.path().to_str().unwrap()),
        "{}",
        stderr(&out)
    );
    assert_eq!(l.validation_count(), 0, "no request was sent");
    let home = tempfile::tempdir().unwrap();
    let out = validate(home.path().to_str().unwrap());
    assert_eq!(code_of(&out), 0, "{}", stderr(&out));
}

#[test]
fn check_key_is_0_or_1() {
    let l = Licensed::start();
    let out = cli(&["check-key", &l.key.to_lowercase()]);
    assert_eq!(code_of(&out), 0);
    assert_eq!(stdout(&out).trim(), l.key);
    let mut swapped: Vec<char> = l.key.chars().collect();
    let n = swapped.len();
    swapped.swap(n - 1, n - 2);
    let swapped: String = swapped.into_iter().collect();
    if swapped != l.key {
        let out = cli(&["check-key", &swapped]);
        assert_eq!(code_of(&out), 1);
        assert!(stderr(&out).contains("not a valid key"), "{}", stderr(&out));
    }
    assert_eq!(code_of(&cli(&["check-key", "KS-1234"])), 1);
}

#[test]
fn fingerprint_is_stable_and_salted() {
    let a = cli(&["fingerprint", "--app-id", "app-a"]);
    if code_of(&a) != 0 {
        // No machine id here (a bare container): a clear error, code 2.
        assert_eq!(code_of(&a), 2);
        assert!(stderr(&a).contains("machine id"), "{}", stderr(&a));
        return;
    }
    let fp = stdout(&a).trim().to_owned();
    assert_eq!(fp.len(), 64);
    assert_eq!(
        stdout(&cli(&["fingerprint", "--app-id", "app-a"])).trim(),
        fp
    );
    assert_ne!(
        stdout(&cli(&["fingerprint", "--app-id", "app-b"])).trim(),
        fp
    );
    let default = stdout(&cli(&["fingerprint"])).trim().to_owned();
    assert_eq!(
        default,
        keysmith::machine_fingerprint("keysmith-cli").unwrap()
    );
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(id) = std::fs::read_to_string(path) {
            assert!(!fp.contains(id.trim()));
        }
    }
}
