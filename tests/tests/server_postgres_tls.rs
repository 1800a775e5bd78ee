//! TLS between the server and PostgreSQL: the URL's `sslmode` (libpq's
//! names and meanings) and `sslrootcert`, against the test PostgreSQL's own
//! certificate; `sslcert` / `sslkey`, against a cluster the test starts
//! that takes only clients with a certificate.
//!
//! PostgreSQL only: skipped, saying so, unless `KEYSMITH_TEST_DATABASE_URL` is
//! set and names a server with `ssl = on` whose certificate file this test
//! can read (Debian's PostgreSQL has a self-signed "snakeoil" one); the
//! client-certificate test also needs `pg_config`'s programs and `openssl`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keysmith_tests::{Backend, PgDatabase, ServerOptions, TestServer, ADMIN_TOKEN};
use serde_json::json;

/// A fresh schema, and the server certificate's file when the PostgreSQL
/// there speaks TLS (`None`, with the reason printed, otherwise).
fn tls_database() -> Option<(PgDatabase, String)> {
    if !Backend::Postgres.available() {
        return None;
    }
    let db = PgDatabase::create();
    if db.query_texts("SHOW ssl", &[]) != ["on"] {
        eprintln!("skipped: the test PostgreSQL has ssl = off");
        return None;
    }
    let cert = db.query_texts("SHOW ssl_cert_file", &[]).remove(0);
    if std::fs::read(&cert).is_err() {
        eprintln!("skipped: cannot read the test PostgreSQL's certificate {cert}");
        return None;
    }
    Some((db, cert))
}

/// A name of its own for this test's connections, to find them in
/// `pg_stat_activity` among those of the tests running beside it.
fn application_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("ks_tls_{}_{nanos}", std::process::id())
}

/// How many of the connections named `app` are encrypted, and how many not.
fn connections_by_tls(db: &PgDatabase, app: &str) -> (usize, usize) {
    let count = |ssl: &str| {
        db.query_texts(
            &format!(
                "SELECT count(*)::text FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.application_name = $1 AND s.ssl = {ssl}"
            ),
            &[app],
        )[0]
        .parse()
        .unwrap()
    };
    (count("true"), count("false"))
}

/// A server on `db` with `params` added to its URL; answers one write.
fn serve(db: &PgDatabase, params: &str) -> TestServer {
    let server = TestServer::start_with(ServerOptions {
        database: Some(format!("{}&{params}", db.url())),
        ..Default::default()
    });
    server.plan("basic", json!({"features": ["a"]}));
    server
}

/// The server's stderr when it refuses to start on `db` with `params`;
/// panics if it is still running after 30 s (it started).
fn refusal(db: &PgDatabase, params: &str) -> String {
    refusal_at(&format!("{}&{params}", db.url()))
}

/// The server's stderr when it refuses to start on the database `url`.
fn refusal_at(url: &str) -> String {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(keysmith_tests::bin_path("ks-e2e-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--database")
        .arg(url)
        .env("KEYSMITH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env(keysmith_tests::EXIT_WITH_PARENT, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the server started on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "exited 0 on {url}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

fn encoded(path: &str) -> String {
    path.replace('%', "%25").replace('/', "%2F")
}

#[test]
fn require_and_verify_ca_encrypt_every_connection_and_disable_none() {
    let Some((db, cert)) = tls_database() else {
        return;
    };
    for (params, encrypted) in [
        ("sslmode=require".to_owned(), true),
        (
            format!("sslmode=verify-ca&sslrootcert={}", encoded(&cert)),
            true,
        ),
        ("sslmode=disable".to_owned(), false),
    ] {
        let app = application_name();
        let _server = serve(&db, &format!("{params}&application_name={app}"));
        let (with_tls, without) = connections_by_tls(&db, &app);
        if encrypted {
            assert!(
                with_tls > 0 && without == 0,
                "{params}: {with_tls} / {without}"
            );
        } else {
            assert!(
                with_tls == 0 && without > 0,
                "{params}: {with_tls} / {without}"
            );
        }
    }
}

#[test]
fn a_certificate_that_is_not_trusted_or_not_for_the_host_is_refused() {
    let Some((db, cert)) = tls_database() else {
        return;
    };
    // Mozilla's roots do not include a self-signed test certificate.
    let stderr = refusal(&db, "sslmode=verify-ca");
    assert!(stderr.contains("certificate"), "{stderr}");
    // Trusted, but issued for another name than 127.0.0.1 (the URL's host).
    let stderr = refusal(
        &db,
        &format!("sslmode=verify-full&sslrootcert={}", encoded(&cert)),
    );
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(!stderr.contains(ADMIN_TOKEN));
}

#[test]
fn a_bad_sslmode_or_root_file_is_a_clear_error() {
    let Some((db, _)) = tls_database() else {
        return;
    };
    let stderr = refusal(&db, "sslmode=verify");
    assert!(
        stderr.contains("sslmode \"verify\" is not one of"),
        "{stderr}"
    );
    let stderr = refusal(&db, "sslmode=verify-full&sslrootcert=%2Fno%2Fsuch.pem");
    assert!(
        stderr.contains("reading sslrootcert /no/such.pem"),
        "{stderr}"
    );
}

/// libpq's rules: `sslrootcert=system` means `verify-full` against the
/// built-in (Mozilla's) roots, and weaker modes are refused; `require` with
/// a root file checks the chain, as `verify-ca` does.
#[test]
fn sslrootcert_system_and_require_with_a_root_file_check_the_certificate() {
    let Some((db, cert)) = tls_database() else {
        return;
    };
    // A self-signed test certificate is in no public root set.
    let stderr = refusal(&db, "sslrootcert=system");
    assert!(stderr.contains("certificate"), "{stderr}");
    let stderr = refusal(&db, "sslmode=require&sslrootcert=system");
    assert!(
        stderr.contains("sslmode=require cannot be used with sslrootcert=system"),
        "{stderr}"
    );
    // The server's own certificate as the root: the chain checks out.
    let app = application_name();
    let _server = serve(
        &db,
        &format!(
            "sslmode=require&sslrootcert={}&application_name={app}",
            encoded(&cert)
        ),
    );
    assert!(connections_by_tls(&db, &app).0 > 0);
    // Public roots only: it does not.
    let public = "/etc/ssl/certs/ca-certificates.crt";
    if std::fs::metadata(public).is_err() {
        eprintln!("skipped the last case: no {public} to use as a root file");
        return;
    }
    let stderr = refusal(
        &db,
        &format!("sslmode=require&sslrootcert={}", encoded(public)),
    );
    assert!(stderr.contains("certificate"), "{stderr}");
}

/// A PostgreSQL cluster of the test's own that takes only clients with a
/// certificate its CA signed (`hostssl … cert`), on a free port; stopped
/// when dropped. Needs PostgreSQL's programs (`pg_config --bindir`) and
/// `openssl`; as root it runs them as the `postgres` user.
struct CertCluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

/// Runs `program` with `args` (as `postgres` when this test is root);
/// panics with its output if it fails.
fn run_as_postgres(program: &std::path::Path, args: &[&str]) {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = command.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program:?} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `openssl` in `dir` with `command`'s words as its arguments.
fn openssl(dir: &std::path::Path, command: &str) {
    let out = Command::new("openssl")
        .args(command.split_whitespace())
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl CertCluster {
    fn start() -> Option<CertCluster> {
        let Some(bin) = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        else {
            eprintln!("skipped: no pg_config, so no PostgreSQL programs to start a cluster");
            return None;
        };
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("skipped: no openssl to make the test certificates");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        // A CA, a server certificate for 127.0.0.1 and a client one for
        // the user `postgres` (`cert` authentication maps the CN to it).
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        openssl(
            path,
            &format!(
                "req -x509 {ec} -keyout ca.key -out ca.crt -days 2 -subj /CN=keysmith-test-CA \
                 -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign,cRLSign"
            ),
        );
        for (name, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "postgres", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(path.join(format!("{name}.ext")), ext).unwrap();
            openssl(
                path,
                &format!("req {ec} -keyout {name}.key -out {name}.csr -subj /CN={cn}"),
            );
            openssl(
                path,
                &format!(
                    "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
                     -days 2 -out {name}.crt -extfile {name}.ext"
                ),
            );
        }
        use std::os::unix::fs::PermissionsExt;
        for key in ["server.key", "client.key"] {
            std::fs::set_permissions(path.join(key), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        // The cluster's files are the postgres user's (a no-op if it is us).
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(path)
            .status();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = path.join("data");
        run_as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = path.display();
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{p}'\n\
             ssl = on\nssl_cert_file = '{p}/server.crt'\nssl_key_file = '{p}/server.key'\n\
             ssl_ca_file = '{p}/ca.crt'\nfsync = off\n"
        );
        let mut all = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        all.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), all).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
        )
        .unwrap();
        run_as_postgres(
            &bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                path.join("log").to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        Some(CertCluster { dir, bin, port })
    }

    /// The cluster's URL, checking its certificate, with `params` added.
    fn url(&self, params: &str) -> String {
        let p = self.dir.path().display();
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&\
             sslrootcert={}{params}",
            self.port,
            encoded(&format!("{p}/ca.crt")),
        )
    }

    fn client_cert(&self) -> String {
        let p = self.dir.path().display();
        format!(
            "&sslcert={}&sslkey={}",
            encoded(&format!("{p}/client.crt")),
            encoded(&format!("{p}/client.key"))
        )
    }
}

impl Drop for CertCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        run_as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

/// `sslcert` / `sslkey` (libpq's names): the server presents a client
/// certificate, for a PostgreSQL that authenticates clients by one
/// (`hostssl … cert`, which many hosted offerings can require).
#[test]
fn a_client_certificate_from_sslcert_and_sslkey_is_presented() {
    if !Backend::Postgres.available() {
        return;
    }
    let Some(cluster) = CertCluster::start() else {
        return;
    };
    let server = TestServer::start_with(ServerOptions {
        database: Some(cluster.url(&cluster.client_cert())),
        ..Default::default()
    });
    server.plan("basic", json!({"features": ["a"]}));
    drop(server);
    // Without one, the cluster turns the connection away.
    let stderr = refusal_at(&cluster.url(""));
    assert!(stderr.contains("certificate"), "{stderr}");
}

/// libpq's URL syntax names a Unix-socket directory as the host; every
/// sslmode failed there with "invalid dns name" before connecting. On a
/// socket PostgreSQL offers no TLS: `prefer` and `disable` connect,
/// `require` is refused, saying so.
#[test]
fn a_unix_socket_host_connects_without_tls() {
    if !Backend::Postgres.available() {
        return;
    }
    let socket_dir = unix_socket_dir();
    let Some(socket_dir) = socket_dir else {
        eprintln!("skipped: no PostgreSQL socket in /var/run/postgresql");
        return;
    };
    let db = PgDatabase::create();
    let tcp = db.url();
    let Some((before, after)) = tcp.split_once("@127.0.0.1:5432/") else {
        eprintln!("skipped: the test database URL is not on 127.0.0.1:5432");
        return;
    };
    let socket = format!("{before}@{socket_dir}/{after}");
    for (mode, works) in [("prefer", true), ("disable", true), ("require", false)] {
        let url = format!("{socket}&sslmode={mode}");
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("data");
        if works {
            let server = TestServer::start_with(ServerOptions {
                backend: Backend::Postgres,
                database: Some(url),
                data_dir: Some(out_dir),
                ..Default::default()
            });
            server.plan("p", json!({"features": []}));
            assert_eq!(
                server.request("GET", "/readyz", None, None).0,
                200,
                "{mode}"
            );
        } else {
            let out = keysmith_tests::server_command(&[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                out_dir.to_str().unwrap(),
                "--database",
                &url,
            ]);
            assert_eq!(out.status.code(), Some(1), "{mode}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains("does not support TLS"), "{stderr}");
        }
    }
}

/// Debian's PostgreSQL socket directory, percent-encoded for a URL's host.
fn unix_socket_dir() -> Option<&'static str> {
    std::path::Path::new("/var/run/postgresql/.s.PGSQL.5432")
        .exists()
        .then_some("%2Fvar%2Frun%2Fpostgresql")
}
