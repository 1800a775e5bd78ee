//! TLS between the server and PostgreSQL: the URL's `sslmode` (libpq's
//! names and meanings) and `sslrootcert`, against the test PostgreSQL's own
//! certificate.
//!
//! PostgreSQL only: skipped, saying so, unless `KEYSMITH_TEST_DATABASE_URL` is
//! set and names a server with `ssl = on` whose certificate file this test
//! can read (Debian's PostgreSQL has a self-signed "snakeoil" one).

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
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(keysmith_tests::bin_path("ks-e2e-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--database")
        .arg(format!("{}&{params}", db.url()))
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
            panic!("the server started with {params}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "exited 0 with {params}");
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
