//! Shared helpers for end-to-end tests: a real `keysmith-server` process on
//! `127.0.0.1:0` with its own data dir, on SQLite or on PostgreSQL (a fresh
//! schema of its own), and a small blocking HTTP client.
//!
//! Server tests run on both backends through [`on_both_backends!`]; the
//! PostgreSQL runs need `KEYSMITH_TEST_DATABASE_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`) and are skipped, saying
//! so, without it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::Value;

/// The admin token test servers run with.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

/// Path of a binary built by this package (`ks-e2e-server`, `ks-e2e-cli`),
/// found next to the running test executable.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("deps dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target dir")
    } else {
        dir
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests through `cargo test`",
        path.display()
    );
    path
}

/// Every webhook event type (SPEC §6).
pub const ALL_EVENTS: [&str; 7] = [
    "license.created",
    "license.activated",
    "license.updated",
    "license.suspended",
    "license.reinstated",
    "license.expired",
    "license.revoked",
];

/// The environment variable naming the PostgreSQL server tests may use.
pub const DATABASE_ENV: &str = "KEYSMITH_TEST_DATABASE_URL";

/// The storage a test server runs on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// `<data-dir>/keysmith.db`, the default.
    #[default]
    Sqlite,
    /// A fresh schema on the PostgreSQL that `KEYSMITH_TEST_DATABASE_URL` names.
    Postgres,
}

impl Backend {
    /// Whether tests can run on this backend here; says so when they can't.
    pub fn available(self) -> bool {
        match self {
            Backend::Sqlite => true,
            Backend::Postgres => {
                let set = std::env::var_os(DATABASE_ENV).is_some();
                if !set {
                    eprintln!("skipped: {DATABASE_ENV} not set");
                }
                set
            }
        }
    }
}

/// Turns test functions `fn name(backend: Backend)` into two tests each,
/// `sqlite::name` and `postgres::name`. The PostgreSQL one returns at once,
/// printing `skipped: KEYSMITH_TEST_DATABASE_URL not set`, when that is unset.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::Backend::Sqlite)
                }
            )+
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if $crate::Backend::Postgres.available() {
                        super::$name($crate::Backend::Postgres)
                    }
                }
            )+
        }
    };
}

/// A PostgreSQL schema of its own on the server `KEYSMITH_TEST_DATABASE_URL`
/// names, so tests run in parallel; dropped, with everything in it, when
/// this is. Several servers given the same [`PgDatabase::url`] share it.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    /// A connection URL whose `search_path` is this schema.
    url: String,
}

impl PgDatabase {
    /// A fresh, empty schema. Panics when `KEYSMITH_TEST_DATABASE_URL` is unset.
    pub fn create() -> PgDatabase {
        let admin_url =
            std::env::var(DATABASE_ENV).unwrap_or_else(|_| panic!("{DATABASE_ENV} is not set"));
        let name = format!("ks_e2e_{:016x}", rand_u64());
        pg_execute(&admin_url, &format!("CREATE SCHEMA {name}"));
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        PgDatabase {
            url: format!("{admin_url}{sep}options=-csearch_path%3D{name}"),
            admin_url,
            name,
        }
    }

    /// Runs SQL statements in this schema on a thread of their own (say, a
    /// transaction that holds a lock for a while).
    pub fn execute_in_background(&self, sql: &str) -> std::thread::JoinHandle<()> {
        let (url, sql) = (self.url.clone(), sql.to_owned());
        std::thread::spawn(move || pg_execute(&url, &sql))
    }

    /// The URL to give servers (`--database`): this schema, and a pool small
    /// enough for many test servers on one PostgreSQL.
    pub fn url(&self) -> String {
        format!("{}&pool_size=8", self.url)
    }

    /// Runs SQL statements in this schema.
    pub fn execute(&self, sql: &str) {
        pg_execute(&self.url, sql);
    }

    /// The first column of each row a query returns, as text.
    pub fn query_texts(&self, sql: &str, params: &[&str]) -> Vec<String> {
        let (url, sql) = (self.url.clone(), sql.to_owned());
        let params: Vec<String> = params.iter().map(|p| p.to_string()).collect();
        on_own_runtime(async move {
            let client = pg_client(&url).await;
            let args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| p as _).collect();
            client
                .query(&sql, &args)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .iter()
                .map(|row| row.get::<_, String>(0))
                .collect()
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        );
        let url = self.admin_url.clone();
        on_own_runtime(async move {
            if let Err(e) = pg_client(&url).await.batch_execute(&sql).await {
                eprintln!("could not drop a test schema: {e}");
            }
        });
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// Runs a future on a thread and runtime of its own, so that blocking
/// helpers work from plain tests, async tests and `Drop` alike.
fn on_own_runtime<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
    .join()
    .expect("database helper thread")
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {DATABASE_ENV}: {e}"));
    tokio::spawn(connection);
    client
}

fn pg_execute(url: &str, sql: &str) {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    on_own_runtime(async move {
        pg_client(&url)
            .await
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}

/// Set for `ks-e2e-server` by `TestServer`: the server exits when its stdin
/// (a pipe from the test process) closes.
pub const EXIT_WITH_PARENT: &str = "KS_E2E_EXIT_WITH_PARENT";

/// A running server process. Killed (SIGKILL) when dropped.
pub struct TestServer {
    pub url: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    backend: Backend,
    /// `--database`, when not SQLite in the data dir.
    database: Option<String>,
    _dir: Option<tempfile::TempDir>,
    /// The schema this server was given, when it owns one.
    pg: Option<PgDatabase>,
    http: Client,
}

/// How to start a server.
#[derive(Default, Clone)]
pub struct ServerOptions {
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// Reuse this data dir instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// The storage; PostgreSQL gets a fresh schema unless `database` is set.
    pub backend: Backend,
    /// Run on this PostgreSQL URL (e.g. a shared [`PgDatabase::url`]).
    pub database: Option<String>,
}

impl TestServer {
    /// A fresh server with an empty data dir.
    pub fn start() -> TestServer {
        TestServer::start_with(ServerOptions::default())
    }

    /// A fresh server on `backend`, with an empty data dir and database.
    pub fn start_on(backend: Backend) -> TestServer {
        TestServer::start_with(ServerOptions {
            backend,
            ..Default::default()
        })
    }

    pub fn start_with(options: ServerOptions) -> TestServer {
        let (dir, data_dir) = match options.data_dir {
            Some(d) => (None, d),
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("data");
                (Some(dir), path)
            }
        };
        let (backend, pg, database) = match (options.database, options.backend) {
            (Some(url), _) => (Backend::Postgres, None, Some(url)),
            (None, Backend::Postgres) => {
                let pg = PgDatabase::create();
                let url = pg.url();
                (Backend::Postgres, Some(pg), Some(url))
            }
            (None, Backend::Sqlite) => (Backend::Sqlite, None, None),
        };
        let mut server = TestServer {
            url: String::new(),
            data_dir,
            child: None,
            args: options.args,
            envs: options.envs,
            backend,
            database,
            _dir: dir,
            pg,
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        };
        server.spawn();
        server
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The `--database` URL the server runs on (`None`: SQLite in its data dir).
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// Runs SQL statements, without parameters, on the server's database
    /// behind its back (either backend), e.g. to plant rows no API call can
    /// make.
    pub fn execute_sql(&self, sql: &str) {
        match &self.pg {
            Some(pg) => pg_execute(&pg.url, sql),
            None if self.backend == Backend::Postgres => {
                panic!("execute_sql needs a server that owns its PostgreSQL schema")
            }
            None => {
                let db = rusqlite::Connection::open(self.data_path("keysmith.db"))
                    .expect("open keysmith.db");
                db.busy_timeout(Duration::from_secs(10))
                    .expect("busy timeout");
                db.execute_batch(sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
        }
    }

    /// Registers a webhook for every event type on a receiver that answers
    /// 200, so that the server keeps every event (it keeps only those an
    /// endpoint subscribes to). Keep the receiver alive for the test.
    pub fn keep_every_event(&self) -> receiver::Receiver {
        let receiver = receiver::Receiver::start();
        let (status, hook) = self.admin(
            "POST",
            "/webhooks",
            Some(serde_json::json!({"url": receiver.url, "events": ALL_EVENTS})),
        );
        assert_eq!(status, 201, "{hook}");
        receiver
    }

    /// The types of the events recorded for a license, oldest first, read
    /// from the database itself (either backend); see `keep_every_event`.
    pub fn event_types(&self, license_id: &str) -> Vec<String> {
        const SQL: &str = "SELECT type FROM events WHERE license_id = $1 ORDER BY seq";
        match &self.pg {
            Some(pg) => pg.query_texts(SQL, &[license_id]),
            None if self.backend == Backend::Postgres => {
                panic!("event_types needs a server that owns its PostgreSQL schema")
            }
            None => {
                let db = rusqlite::Connection::open(self.data_path("keysmith.db"))
                    .expect("open keysmith.db");
                let mut stmt = db.prepare(&SQL.replace("$1", "?1")).expect("prepare");
                let types = stmt
                    .query_map([license_id], |r| r.get(0))
                    .expect("query")
                    .map(|r| r.expect("row"))
                    .collect();
                types
            }
        }
    }

    fn spawn(&mut self) {
        // The data dir is the server's to create (mode 0700); only its
        // parent, where the log goes, is made here.
        if let Some(parent) = self.data_dir.parent() {
            std::fs::create_dir_all(parent).expect("data dir's parent");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = Command::new(bin_path("ks-e2e-server"));
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .args(self.database.iter().flat_map(|url| ["--database", url]))
            .args(&self.args)
            .env("KEYSMITH_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("KEYSMITH_DATABASE")
            .env(EXIT_WITH_PARENT, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("keysmith-server listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => self.url = url,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", self.log());
            }
        }
        self.child = Some(child);
    }

    /// The server's stderr log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("wait");
        }
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data dir and database (a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn();
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }

    /// Any request; returns status and JSON body (`Value::Null` if not JSON).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Raw body bytes to a path with the admin token, on a connection of
    /// its own (a server answering 413 closes it mid-body).
    pub fn raw(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = Client::new()
            .request(method, format!("{}{}", self.url, path))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("request");
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str(&resp.text().expect("body")).unwrap_or(Value::Null),
        )
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.request(
            method,
            &format!("/api/v1{path}"),
            Some(ADMIN_TOKEN),
            body.as_ref(),
        )
    }

    /// A management request with extra headers; returns status, the
    /// answer's `ETag` and its JSON body.
    pub fn admin_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, Option<String>, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.url))
            .bearer_auth(ADMIN_TOKEN);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().expect("request");
        let status = resp.status().as_u16();
        let tag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().expect("ASCII ETag").to_owned());
        let text = resp.text().expect("body");
        (
            status,
            tag,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    /// Creates (or replaces) a plan; panics unless 200/201.
    pub fn plan(&self, name: &str, body: Value) -> Value {
        let (status, plan) = self.admin("PUT", &format!("/plans/{name}"), Some(body));
        assert!(status == 200 || status == 201, "plan: {status} {plan}");
        plan
    }

    /// Creates a license on `plan` with extra fields; panics unless 201.
    pub fn license(&self, plan: &str, extra: Value) -> Value {
        let mut body = serde_json::json!({"plan": plan, "customer_email": "dev@example.com"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, license) = self.admin("POST", "/licenses", Some(body));
        assert_eq!(status, 201, "create license: {license}");
        license
    }

    pub fn validate(&self, body: Value) -> (u16, Value) {
        self.request("POST", "/api/v1/validate", None, Some(&body))
    }

    /// The server's public key, base64 as `/api/v1/public-key` gives it.
    pub fn public_key(&self) -> String {
        let (status, body) = self.request("GET", "/api/v1/public-key", None, None);
        assert_eq!(status, 200);
        body["public_key"].as_str().expect("public_key").to_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a `keysmith-server` command other than `serve` (e.g. `public-key`)
/// to its end, with none of the `KEYSMITH_*` settings of the test's
/// environment.
pub fn server_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    let mut cmd = Command::new(bin_path("ks-e2e-server"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("KEYSMITH_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run keysmith-server")
}

/// Copies a file's bytes (e.g. the database) for before/after comparisons.
pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// A webhook receiver: real HTTP/1.1 on 127.0.0.1, recording every request
/// and answering with a status the test sets.
pub mod receiver {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// One request the receiver got.
    #[derive(Debug, Clone)]
    pub struct Received {
        /// Header names lowercased.
        pub headers: HashMap<String, String>,
        pub body: String,
        /// The status it was answered with.
        pub status: u16,
    }

    pub struct Receiver {
        pub url: String,
        received: Arc<Mutex<Vec<Received>>>,
        status: Arc<AtomicU16>,
    }

    impl Receiver {
        /// Answers 200 until told otherwise.
        pub fn start() -> Receiver {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
            let url = format!("http://{}/hook", listener.local_addr().unwrap());
            let received = Arc::new(Mutex::new(Vec::new()));
            let status = Arc::new(AtomicU16::new(200));
            let (r, s) = (received.clone(), status.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming().map_while(Result::ok) {
                    let (r, s) = (r.clone(), s.clone());
                    std::thread::spawn(move || serve(stream, r, s));
                }
            });
            Receiver {
                url,
                received,
                status,
            }
        }

        /// A URL that accepts connections and never answers.
        pub fn black_hole() -> String {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let url = format!("http://{}/hook", listener.local_addr().unwrap());
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for stream in listener.incoming().map_while(Result::ok) {
                    held.push(stream);
                }
            });
            url
        }

        pub fn set_status(&self, status: u16) {
            self.status.store(status, Ordering::SeqCst);
        }

        pub fn received(&self) -> Vec<Received> {
            self.received.lock().unwrap().clone()
        }

        /// Requests answered 2xx so far.
        pub fn delivered(&self) -> Vec<Received> {
            self.received()
                .into_iter()
                .filter(|r| (200..300).contains(&r.status))
                .collect()
        }

        /// Waits until `pred` holds for what was received; panics after `timeout`.
        pub fn wait_until(
            &self,
            timeout: Duration,
            what: &str,
            pred: impl Fn(&[Received]) -> bool,
        ) -> Vec<Received> {
            let deadline = Instant::now() + timeout;
            loop {
                let got = self.received();
                if pred(&got) {
                    return got;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; got {} requests",
                    got.len()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn serve(stream: TcpStream, received: Arc<Mutex<Vec<Received>>>, status: Arc<AtomicU16>) {
        let mut writer = stream.try_clone().expect("clone stream");
        let mut reader = BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let mut headers = HashMap::new();
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
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let code = status.load(Ordering::SeqCst);
            received.lock().unwrap().push(Received {
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                status: code,
            });
            let reply = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n");
            if writer.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    }
}
