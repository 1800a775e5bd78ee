//! Helpers for the SDK and CLI end-to-end tests: a licensed server, a fake
//! server that counts connections and answers what the test says, and a
//! runner for the real `keysmith` CLI.
#![allow(dead_code)] // each test file uses a part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keysmith_tests::{bin_path, ServerOptions, TestServer};
use serde_json::{json, Value};

pub const DAY: Duration = Duration::from_secs(86_400);

/// A server with plan `pro` (features sso, audit-log; `grace_days` offline
/// grace) and one license on it, expiring in 2099.
pub struct Licensed {
    pub server: TestServer,
    pub key: String,
    pub id: String,
    pub public_key: String,
    pub cache: tempfile::TempDir,
}

impl Licensed {
    pub fn start() -> Licensed {
        Licensed::start_with(7, ServerOptions::default())
    }

    pub fn start_with(grace_days: u32, options: ServerOptions) -> Licensed {
        let server = TestServer::start_with(options);
        server.plan(
            "pro",
            json!({"features": ["sso", "audit-log"], "offline_grace_days": grace_days}),
        );
        let license = server.license("pro", json!({"expires_at": "2099-01-01T00:00:00Z"}));
        let public_key = server.public_key();
        Licensed {
            key: license["key"].as_str().unwrap().to_owned(),
            id: license["id"].as_str().unwrap().to_owned(),
            server,
            public_key,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    /// A blocking client on this server's URL, public key and cache dir.
    pub fn client(&self) -> keysmith::blocking::ClientBuilder {
        keysmith::blocking::Client::builder(&self.server.url)
            .public_key(&self.public_key)
            .app_id("e2e-app")
            .cache_dir(self.cache.path())
            .timeout(Duration::from_secs(10))
    }

    /// The license as the admin API shows it.
    pub fn license(&self) -> Value {
        let (status, license) = self
            .server
            .admin("GET", &format!("/licenses/{}", self.id), None);
        assert_eq!(status, 200, "{license}");
        license
    }

    pub fn validation_count(&self) -> u64 {
        self.license()["validation_count"].as_u64().unwrap()
    }

    pub fn revoke(&self) {
        let (status, body) = self
            .server
            .admin("DELETE", &format!("/licenses/{}", self.id), None);
        assert_eq!(status, 200, "{body}");
    }

    /// The cache files in the cache dir (temp files included).
    pub fn cache_files(&self) -> Vec<std::path::PathBuf> {
        cache_files(self.cache.path())
    }
}

pub fn cache_files(dir: &Path) -> Vec<std::path::PathBuf> {
    // Answers and temp files; not the dir's lock file.
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().path())
                .filter(|p| !p.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// `SystemTime::now()` shifted by `offset` seconds (negative: the past), as
/// a client clock.
pub fn shifted_clock(offset_secs: i64) -> impl Fn() -> SystemTime + Send + Sync + 'static {
    move || {
        let now = SystemTime::now();
        if offset_secs >= 0 {
            now + Duration::from_secs(offset_secs as u64)
        } else {
            now - Duration::from_secs(offset_secs.unsigned_abs())
        }
    }
}

/// A URL on loopback where nothing listens.
pub fn closed_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    url
}

/// A URL on loopback that accepts connections and never answers.
pub fn black_hole_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            held.push(stream);
        }
    });
    url
}

/// One request the fake server got.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    pub path: String,
    pub body: Value,
}

/// A fake license server: real HTTP/1.1 on loopback, answering each request
/// with what the test's handler returns, counting connections.
pub struct FakeServer {
    pub url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<FakeRequest>>>,
}

type Handler = dyn Fn(&FakeRequest) -> (u16, String) + Send + Sync;

/// The status a handler returns for "301 Moved Permanently, with its answer
/// as the `Location`".
pub const MOVED_TO: u16 = 301;

impl FakeServer {
    /// A server whose `handler` gives each answer's status and body; with
    /// [`MOVED_TO`], the body is the `Location` of a redirect instead.
    pub fn start(
        handler: impl Fn(&FakeRequest) -> (u16, String) + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let (c, r) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                c.fetch_add(1, Ordering::SeqCst);
                let (r, handler) = (r.clone(), handler.clone());
                std::thread::spawn(move || serve(stream, &r, &*handler));
            }
        });
        FakeServer {
            url,
            connections,
            requests,
        }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<FakeRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: std::net::TcpStream, requests: &Mutex<Vec<FakeRequest>>, handler: &Handler) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let mut len = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request = FakeRequest {
            path,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        requests.lock().unwrap().push(request.clone());
        let (status, mut reply) = handler(&request);
        let head = if status == MOVED_TO {
            let head =
                format!("HTTP/1.1 {status} X\r\nlocation: {reply}\r\ncontent-length: 0\r\n\r\n");
            reply.clear();
            head
        } else {
            format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                reply.len()
            )
        };
        if writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(reply.as_bytes()))
            .is_err()
        {
            return;
        }
    }
}

/// Runs the real `keysmith` CLI with `args`, no inherited `KEYSMITH_*`
/// settings.
pub fn cli(args: &[&str]) -> Output {
    cli_with_env(args, &[])
}

/// Runs the real `keysmith` CLI with `args` and, of the `KEYSMITH_*`
/// settings, only `envs`.
pub fn cli_with_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin_path("ks-e2e-cli"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYSMITH_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(envs.iter().copied());
    cmd.output().expect("run the CLI")
}

/// The CLI's `validate` for this license, with `extra` arguments.
pub fn cli_validate(l: &Licensed, url: &str, extra: &[&str]) -> Output {
    let cache = l.cache.path().to_str().unwrap().to_owned();
    let mut args = vec![
        "validate",
        "--server",
        url,
        "--public-key",
        &l.public_key,
        "--key",
        &l.key,
        "--cache-dir",
        &cache,
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

/// Parses the CLI's `--json` line.
pub fn json_of(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn code_of(out: &Output) -> i32 {
    out.status.code().expect("exited")
}
