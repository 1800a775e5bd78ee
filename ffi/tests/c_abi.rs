//! libkeysmith from C and C++ against a real server: the header compiles
//! strictly, the vendor example links both ways and answers right online
//! and offline, runs clean under valgrind, and the ABI survives NULL,
//! garbage and eight threads.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{compile, pkg_flags, text, Licensed};

fn repo(path: &str) -> PathBuf {
    support::repo_root().join(path)
}

const C_FLAGS: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"];
const CXX_FLAGS: &[&str] = &[
    "-std=c++17",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-pedantic",
    "-g",
];

/// Link flags for the shared library, with an rpath so the program finds
/// it where it was installed. An old-style rpath (`DT_RPATH`), which the
/// loader searches before `LD_LIBRARY_PATH`: cargo's puts `target/debug`
/// first, where a stale `libkeysmith.so` can lie (`support::lib_dir`), and
/// the tests ran against it.
fn shared_flags() -> Vec<String> {
    let mut flags = pkg_flags("keysmith");
    flags.push(format!(
        "-Wl,-rpath,{}",
        support::install_prefix().join("lib").display()
    ));
    flags.push("-Wl,--disable-new-dtags".into());
    flags
}

/// Builds `examples/c/license_check.c` linked `static` or shared.
fn build_example(dir: &Path, link_static: bool) -> PathBuf {
    let out = dir.join(if link_static {
        "lc-static"
    } else {
        "lc-shared"
    });
    let flags = if link_static {
        pkg_flags("keysmith-static")
    } else {
        shared_flags()
    };
    compile(
        "gcc",
        C_FLAGS,
        &[&repo("examples/c/license_check.c")],
        &flags,
        &out,
    );
    out
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_remove("KEYSMITH_SERVER")
        .output()
        .expect("run the example")
}

/// Runs the example and checks its exit status and its "License check:"
/// line.
fn expect(program: &Path, args: &[&str], status: i32, line: &str) -> String {
    let out = run(program, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(status), "{args:?}: {}", text(&out));
    assert!(
        stdout.contains(line),
        "{args:?} lacks {line:?}: {}",
        text(&out)
    );
    stdout
}

#[test]
fn header_compiles_as_strict_c99_and_cpp17() {
    let dir = tempfile::tempdir().unwrap();
    // Twice: the include guard must hold.
    let source = "#include \"keysmith.h\"\n#include \"keysmith.h\"\n\
                  int main(void) { ks_result r = ks_key_check(\"KS\"); return r == KS_OK; }\n";
    let include = format!("-I{}", repo("ffi/include").display());
    for (compiler, flags, name) in [("gcc", C_FLAGS, "h.c"), ("g++", CXX_FLAGS, "h.cpp")] {
        let file = dir.path().join(name);
        std::fs::write(&file, source).unwrap();
        let mut args = flags.to_vec();
        args.push("-c");
        compile(
            compiler,
            &args,
            &[&file],
            std::slice::from_ref(&include),
            &dir.path().join(format!("{name}.o")),
        );
    }
}

#[test]
fn c_example_linked_shared_and_static_answers_online_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let shared = build_example(dir.path(), false);
    let statik = build_example(dir.path(), true);
    if support::have("ldd") {
        let ldd = Command::new("ldd").arg(&statik).output().unwrap();
        assert!(
            !String::from_utf8_lossy(&ldd.stdout).contains("libkeysmith"),
            "the static build must not need libkeysmith.so"
        );
        let ldd = Command::new("ldd").arg(&shared).output().unwrap();
        assert!(String::from_utf8_lossy(&ldd.stdout).contains("libkeysmith.so"));
    }

    let mut licensed = Licensed::start();
    let url = licensed.server.url.clone();
    let pk = licensed.public_key.clone();
    let typo = licensed.typo();
    let caches = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let programs = [&shared, &statik];
    for (program, cache) in programs.iter().zip(&caches) {
        let cache = cache.path().to_str().unwrap();
        let valid = [url.as_str(), &pk, &licensed.valid_key, cache];
        let stdout = expect(program, &valid, 0, "License check: VALID (online)");
        for line in [
            "Thank you",
            "Plan: pro",
            "Features: sso audit-log",
            "Expires: 2099-01-01",
            "Single sign-on is enabled.",
        ] {
            assert!(stdout.contains(line), "lacks {line:?}:\n{stdout}");
        }
        let stdout = expect(
            program,
            &[&url, &pk, &typo, cache],
            1,
            "License check: KEY_MALFORMED (local)",
        );
        assert!(stdout.contains("typo"), "{stdout}");
        expect(
            program,
            &[&url, &pk, &licensed.revoked_key, cache],
            1,
            "License check: LICENSE_REVOKED (online)",
        );
        expect(
            program,
            &[&url, &pk, &licensed.unknown_key, cache],
            1,
            "License check: LICENSE_NOT_FOUND (online)",
        );
        // A malformed public key is no answer at all.
        let out = run(program, &[&url, "not-a-key", &licensed.valid_key, cache]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("misconfigured"));
    }
    // The vendor sees which SDK asked: the C library's own User-Agent.
    let agent = licensed.last_user_agent();
    assert!(agent.starts_with("keysmith-c/"), "{agent}");

    // The same settings from the environment instead of argv.
    let out = Command::new(&shared)
        .env("KEYSMITH_SERVER", &url)
        .env("KEYSMITH_PUBLIC_KEY", &pk)
        .env("KEYSMITH_KEY", &licensed.valid_key)
        .env("KEYSMITH_CACHE_DIR", caches[0].path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The server dies: both builds answer from their caches, revocation
    // included; a key never validated has no answer.
    licensed.server.kill9();
    for (program, cache) in programs.iter().zip(&caches) {
        let cache = cache.path().to_str().unwrap();
        expect(
            program,
            &[&url, &pk, &licensed.valid_key, cache],
            0,
            "License check: VALID (cache)",
        );
        expect(
            program,
            &[&url, &pk, &licensed.revoked_key, cache],
            1,
            "License check: LICENSE_REVOKED (cache)",
        );
        let out = run(program, &[&url, &pk, &licensed.typo(), cache]);
        assert_eq!(out.status.code(), Some(1), "a typo needs no server");
        let fresh = tempfile::tempdir().unwrap();
        let out = run(
            program,
            &[
                &url,
                &pk,
                &licensed.valid_key,
                fresh.path().to_str().unwrap(),
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("could not check your license"),
            "{}",
            text(&out)
        );
    }
}

/// valgrind's memcheck on a program: exit `status` (not valgrind's 99), no
/// definite leak, no invalid access.
fn valgrind(program: &Path, args: &[&str], status: i32) {
    let out = Command::new("valgrind")
        // Fewer rounds of the 8 threads of abi_test: valgrind runs
        // threads one at a time, slowly.
        .env("ABI_TEST_ROUNDS", "1")
        // No fork: in a forked child memcheck counts what only the
        // parent's (absent) threads referred to as lost.
        .env("ABI_TEST_NO_FORK", "1")
        .args([
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--error-exitcode=99",
            "--quiet",
        ])
        .arg(program)
        .args(args)
        .output()
        .expect("run valgrind");
    let report = text(&out);
    assert_eq!(out.status.code(), Some(status), "valgrind:\n{report}");
    for bad in [
        "Invalid read",
        "Invalid write",
        "definitely lost",
        "uninitialised",
    ] {
        assert!(!report.contains(bad), "valgrind found {bad:?}:\n{report}");
    }
}

#[test]
fn c_example_runs_clean_under_valgrind() {
    if !support::have("valgrind") {
        println!("skipped: valgrind not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let program = build_example(dir.path(), false);
    let mut licensed = Licensed::start();
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();
    let url = licensed.server.url.clone();
    let pk = licensed.public_key.clone();
    valgrind(&program, &[&url, &pk, &licensed.valid_key, cache], 0);
    valgrind(&program, &[&url, &pk, &licensed.typo(), cache], 1);
    valgrind(&program, &[&url, &pk, &licensed.revoked_key, cache], 1);
    valgrind(
        &program,
        &[&url, "not-a-key", &licensed.valid_key, cache],
        2,
    );
    licensed.server.kill9();
    valgrind(&program, &[&url, &pk, &licensed.valid_key, cache], 0);
    valgrind(&program, &[&url, &pk, &licensed.unknown_key, cache], 2);
}

fn build_abi_test(dir: &Path) -> PathBuf {
    let out = dir.join("abi_test");
    let mut flags = shared_flags();
    flags.push("-pthread".into());
    compile(
        "gcc",
        C_FLAGS,
        &[&repo("ffi/tests/c/abi_test.c")],
        &flags,
        &out,
    );
    out
}

fn abi_test_args(licensed: &Licensed, cache: &Path) -> Vec<String> {
    vec![
        licensed.server.url.clone(),
        licensed.public_key.clone(),
        licensed.valid_key.clone(),
        licensed.revoked_key.clone(),
        licensed.unknown_key.clone(),
        cache.display().to_string(),
        support::closed_url(),
    ]
}

#[test]
fn c_abi_rejects_null_and_garbage_and_shares_a_client_across_8_threads() {
    let dir = tempfile::tempdir().unwrap();
    let program = build_abi_test(dir.path());
    let licensed = Licensed::start();
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(&program)
        .args(abi_test_args(&licensed, cache.path()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("checks passed"), "{stdout}");
    println!("{stdout}");
}

#[test]
fn c_abi_test_runs_clean_under_valgrind() {
    if !support::have("valgrind") {
        println!("skipped: valgrind not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let program = build_abi_test(dir.path());
    let licensed = Licensed::start();
    let cache = tempfile::tempdir().unwrap();
    let args = abi_test_args(&licensed, cache.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    valgrind(&program, &args, 0);
}

#[test]
fn cpp_example_builds_with_strict_cpp17_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("lc-cpp");
    compile(
        "g++",
        CXX_FLAGS,
        &[&repo("examples/cpp/license_check.cpp")],
        &shared_flags(),
        &program,
    );
    let licensed = Licensed::start();
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();
    let url = &licensed.server.url;
    let pk = &licensed.public_key;
    let stdout = expect(
        &program,
        &[url, pk, &licensed.valid_key, cache],
        0,
        "License check: VALID (online)",
    );
    assert!(stdout.contains("Single sign-on is enabled."), "{stdout}");
    expect(
        &program,
        &[url, pk, &licensed.revoked_key, cache],
        1,
        "License check: LICENSE_REVOKED (online)",
    );
    expect(
        &program,
        &[url, pk, &licensed.typo(), cache],
        1,
        "License check: KEY_MALFORMED (local)",
    );
    let out = run(&program, &[url, "bad", &licensed.valid_key, cache]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
