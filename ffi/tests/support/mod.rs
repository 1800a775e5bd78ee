//! Shared by the FFI end-to-end tests: a licensed server, the built
//! library, an install prefix with pkg-config files, and a C compiler.
#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use keysmith_tests::TestServer;
use serde_json::json;

/// A server with plan `pro` (features sso, audit-log; 7 days offline
/// grace) and licenses on it until 2099: one valid, one revoked; plus a
/// well-formed key no license has.
pub struct Licensed {
    pub server: TestServer,
    pub public_key: String,
    pub valid_key: String,
    pub revoked_key: String,
    pub unknown_key: String,
}

impl Licensed {
    pub fn start() -> Licensed {
        ensure_server_built();
        let server = TestServer::start();
        server.plan(
            "pro",
            json!({"features": ["sso", "audit-log"], "offline_grace_days": 7}),
        );
        let valid = server.license("pro", json!({"expires_at": "2099-01-01T00:00:00Z"}));
        let revoked = server.license("pro", json!({"expires_at": "2099-01-01T00:00:00Z"}));
        let (status, body) = server.admin(
            "DELETE",
            &format!("/licenses/{}", revoked["id"].as_str().unwrap()),
            None,
        );
        assert_eq!(status, 200, "revoke: {body}");
        Licensed {
            public_key: server.public_key(),
            valid_key: valid["key"].as_str().unwrap().to_owned(),
            revoked_key: revoked["key"].as_str().unwrap().to_owned(),
            unknown_key: sdk::LicenseKey::generate("KS").unwrap().as_str().to_owned(),
            server,
        }
    }

    /// The `User-Agent` the server recorded for the valid key's latest
    /// validation: which SDK asked.
    pub fn last_user_agent(&self) -> String {
        let (_, found) =
            self.server
                .admin("GET", &format!("/licenses?key={}", self.valid_key), None);
        let id = found["data"][0]["id"].as_str().expect("the valid license");
        let (_, usage) = self
            .server
            .admin("GET", &format!("/licenses/{id}/usage?limit=1"), None);
        usage["data"][0]["user_agent"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// `key` with its last symbol changed: a typo the key check catches.
    pub fn typo(&self) -> String {
        let mut typo = self.valid_key.clone();
        let last = typo.pop().unwrap();
        typo.push(if last == 'A' { 'B' } else { 'A' });
        typo
    }
}

/// Where cargo put this build's artifacts (`target/debug`): the test
/// binary runs from its `deps/`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("target dir")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// Where the built `libkeysmith.so` / `.a` are. Cargo builds every crate
/// type before it runs this package's tests, into `deps/` (always fresh);
/// it copies them up into `target/debug` only when no other package of the
/// build has a library of the same name — and the SDK's is also `keysmith`,
/// so in a whole workspace build the copy there may be missing or stale.
pub fn lib_dir() -> PathBuf {
    let deps = target_dir().join("deps");
    if deps.join("libkeysmith.so").exists() {
        deps
    } else {
        target_dir()
    }
}

/// The built `libkeysmith.so` / `.a`.
pub fn library(file: &str) -> PathBuf {
    let path = lib_dir().join(file);
    assert!(path.exists(), "{} is not built", path.display());
    path
}

/// The end-to-end server binary belongs to `keysmith-tests`: `cargo test
/// --workspace` builds it; a `cargo test -p keysmith-ffi` alone may not
/// have, so build it then.
fn ensure_server_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if target_dir().join("ks-e2e-server").exists() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "keysmith-tests", "--bin", "ks-e2e-server"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cannot build ks-e2e-server");
    });
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// `ffi/install.sh` run once into a temporary prefix, from the built
/// library: `include/`, `lib/` and `lib/pkgconfig/`.
pub fn install_prefix() -> &'static Path {
    static PREFIX: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PREFIX
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let prefix = dir.path().join("prefix");
            library("libkeysmith.so");
            let out = Command::new("bash")
                .arg(repo_root().join("ffi/install.sh"))
                .arg(&prefix)
                .env("KEYSMITH_LIB_DIR", lib_dir())
                .output()
                .expect("run ffi/install.sh");
            assert!(out.status.success(), "install.sh: {}", text(&out));
            (dir, prefix)
        })
        .1
}

/// Whether a program runs at all (`PROG --version`).
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Compile and link flags for `pkg` (`keysmith` or `keysmith-static`) from
/// the installed `.pc` file: through `pkg-config` when it is installed,
/// else read from the file itself (same variables, no other features).
pub fn pkg_flags(pkg: &str) -> Vec<String> {
    let pc_dir = install_prefix().join("lib/pkgconfig");
    if have("pkg-config") {
        let out = Command::new("pkg-config")
            .args(["--cflags", "--libs", pkg])
            .env("PKG_CONFIG_PATH", &pc_dir)
            .output()
            .expect("pkg-config");
        assert!(out.status.success(), "pkg-config: {}", text(&out));
        return String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
    }
    println!("note: pkg-config not installed; reading {pkg}.pc directly");
    let pc = std::fs::read_to_string(pc_dir.join(format!("{pkg}.pc"))).expect("read .pc");
    let prefix = install_prefix().display().to_string();
    let field = |name: &str| {
        pc.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .replace("${libdir}", &format!("{prefix}/lib"))
            .replace("${includedir}", &format!("{prefix}/include"))
    };
    format!("{} {}", field("Cflags:"), field("Libs:"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Compiles and links with `compiler` (`gcc`, `g++`); panics with the
/// compiler's output on failure.
pub fn compile(compiler: &str, args: &[&str], sources: &[&Path], flags: &[String], out: &Path) {
    assert!(
        have(compiler),
        "{compiler} is not installed (CI installs it: see .ci/run)"
    );
    let output = Command::new(compiler)
        .args(args)
        .args(sources)
        .args(flags)
        .arg("-o")
        .arg(out)
        .output()
        .expect("run the compiler");
    assert!(
        output.status.success(),
        "{compiler} {args:?} {sources:?} {flags:?} failed:\n{}",
        text(&output)
    );
}

/// stdout and stderr, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A URL on loopback where nothing listens.
pub fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}
