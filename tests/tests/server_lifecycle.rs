//! Start-up, shutdown and durability of a real server process: the data dir,
//! the signing key, the admin token, SIGTERM, and `kill -9` with every
//! acknowledged write kept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use keysmith_tests::{Backend, PgDatabase, ServerOptions, TestServer, ADMIN_TOKEN};
use serde_json::{json, Value};

keysmith_tests::on_both_backends!(
    first_start_creates_the_data_dir_and_a_0600_signing_key_reused_after,
    a_shared_signing_key_path_gives_servers_one_public_key,
    a_server_without_the_signing_key_of_a_database_in_use_refuses_to_start,
    without_an_env_token_one_is_generated_printed_once_kept_hashed_and_rotated,
    sigterm_finishes_in_flight_requests_and_exits_zero,
    kill_9_keeps_every_acknowledged_write,
    logs_never_hold_a_key_or_a_token,
);

fn first_start_creates_the_data_dir_and_a_0600_signing_key_reused_after(backend: Backend) {
    let mut server = TestServer::start_on(backend);
    let key_path = server.data_path("signing.key");
    // On PostgreSQL the data dir holds the signing key and nothing else.
    assert_eq!(
        server.data_path("keysmith.db").exists(),
        backend == Backend::Sqlite
    );
    // The key, and the database that holds every license key and webhook
    // secret, are for the server's user alone, whatever the umask.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&key_path), 0o600);
        assert_eq!(mode(&server.data_dir), 0o700, "the data dir");
        if backend == Backend::Sqlite {
            server.plan("pro", json!({"features": []}));
            for file in [
                "keysmith.db",
                "keysmith.db-wal",
                "keysmith.db-shm",
                "keysmith.db-usage",
            ] {
                assert_eq!(mode(&server.data_path(file)), 0o600, "{file}");
            }
        }
    }
    // The log says which storage it serves from (never a password).
    let named = match backend {
        Backend::Sqlite => "SQLite database",
        Backend::Postgres => "PostgreSQL database",
    };
    assert!(server.log().contains(named), "{}", server.log());
    let public = server.public_key();
    assert_eq!(server.terminate(), Some(0), "SIGTERM exits 0");
    server.restart();
    assert_eq!(server.public_key(), public, "the same key is reused");
}

fn a_shared_signing_key_path_gives_servers_one_public_key(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared.key");
    let opts = ServerOptions {
        backend,
        envs: vec![("KEYSMITH_SIGNING_KEY".into(), shared.display().to_string())],
        ..Default::default()
    };
    let a = TestServer::start_with(opts.clone());
    let b = TestServer::start_with(opts);
    assert_eq!(a.public_key(), b.public_key());
    assert!(!a.data_path("signing.key").exists());
}

/// A second server on a database already in use, whose `--signing-key`
/// names no file (a typo, a missed copy), used to make a key of its own:
/// the apps then refused every answer it signed. The same for a data dir
/// restored without its key.
fn a_server_without_the_signing_key_of_a_database_in_use_refuses_to_start(backend: Backend) {
    let mut server = TestServer::start_on(backend);
    server.plan("pro", json!({"features": []}));
    server.license("pro", json!({}));
    let public = server.public_key();
    assert_eq!(server.terminate(), Some(0));
    let elsewhere = tempfile::tempdir().unwrap();
    let typo = elsewhere.path().join("signing-key.typo");
    let start = |signing_key: Option<&std::path::Path>| {
        let mut args = vec![
            "serve".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            server.data_dir.display().to_string(),
        ];
        if let Some(db) = server.database() {
            args.extend(["--database".into(), db.to_owned()]);
        }
        if let Some(key) = signing_key {
            args.extend(["--signing-key".into(), key.display().to_string()]);
        }
        keysmith_tests::server_command(&args)
    };
    let out = start(Some(&typo));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no signing key at") && stderr.contains("already has licenses"),
        "{stderr}"
    );
    assert!(!typo.exists(), "no key is made");

    let key = server.data_path("signing.key");
    let kept = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    assert_eq!(start(None).status.code(), Some(1));
    assert!(!key.exists(), "no key is made");
    // With its key back, it serves as before.
    std::fs::write(&key, kept).unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    server.restart();
    assert_eq!(server.public_key(), public);
}

/// An operator moving to PostgreSQL points the data dir's server at an
/// empty database: it used to start, and tell every app LICENSE_NOT_FOUND.
#[test]
fn a_data_dir_with_sqlite_licenses_is_not_served_from_an_empty_postgres() {
    if !Backend::Postgres.available() {
        return;
    }
    let mut server = TestServer::start();
    server.plan("pro", json!({"features": []}));
    server.license("pro", json!({}));
    assert_eq!(server.terminate(), Some(0));
    let pg = keysmith_tests::PgDatabase::create();
    let start = || {
        keysmith_tests::server_command(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            server.data_dir.to_str().unwrap(),
            "--database",
            &pg.url(),
        ])
    };
    let out = start();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds a SQLite database with licenses") && stderr.contains("move"),
        "{stderr}"
    );
    // Moved out of the way, the empty database is served.
    std::fs::rename(
        server.data_path("keysmith.db"),
        server.data_dir.with_file_name("keysmith.db.moved"),
    )
    .unwrap();
    let moved = TestServer::start_with(ServerOptions {
        data_dir: Some(server.data_dir.clone()),
        backend: Backend::Postgres,
        database: Some(pg.url()),
        ..Default::default()
    });
    let (status, page) = moved.admin("GET", "/licenses", None);
    assert_eq!((status, page["data"].as_array().unwrap().len()), (200, 0));

    // A SQLite database without a license (tried, then PostgreSQL chosen)
    // is nothing to lose: the empty PostgreSQL database is served.
    let mut tried = TestServer::start();
    tried.plan("p", json!({"features": []}));
    assert_eq!(tried.terminate(), Some(0));
    let empty = keysmith_tests::PgDatabase::create();
    TestServer::start_with(ServerOptions {
        data_dir: Some(tried.data_dir.clone()),
        backend: Backend::Postgres,
        database: Some(empty.url()),
        ..Default::default()
    });
}

/// The move from one machine to several: `copy-to-postgres` carries every
/// license (key, status, seats, counts, metadata), its usage, the plans and
/// the webhooks (secret included) into an empty PostgreSQL database, where
/// servers with the same signing key answer as the SQLite one did.
#[test]
fn copy_to_postgres_moves_a_sqlite_database_whole() {
    if !Backend::Postgres.available() {
        return;
    }
    let mut server = TestServer::start();
    server.plan("pro", json!({"features": ["sso"], "max_domains": 1}));
    server.plan("free", json!({"features": []}));
    let a = server.license("pro", json!({"metadata": {"order": 7, "note": "ü"}}));
    let b = server.license("free", json!({}));
    let validate = |server: &TestServer, license: &Value, domain: Option<&str>| {
        let mut body = json!({"key": license["key"]});
        if let Some(domain) = domain {
            body["domain"] = json!(domain);
        }
        server.validate(body).1["code"].as_str().unwrap().to_owned()
    };
    for _ in 0..3 {
        assert_eq!(validate(&server, &a, Some("a.example.com")), "VALID");
    }
    assert_eq!(validate(&server, &b, None), "VALID");
    let (status, _) = server.admin(
        "DELETE",
        &format!("/licenses/{}", b["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(status, 200);
    let (status, hook) = server.admin(
        "POST",
        "/webhooks",
        Some(json!({"url": keysmith_tests::receiver::Receiver::black_hole(), "events": ["license.created"]})),
    );
    assert_eq!(status, 201, "{hook}");
    let read = |server: &TestServer| {
        let licenses = server.admin("GET", "/licenses?limit=500", None).1["data"].clone();
        let usage = server
            .admin(
                "GET",
                &format!("/licenses/{}/usage", a["id"].as_str().unwrap()),
                None,
            )
            .1;
        let plans = server.admin("GET", "/plans", None).1["data"].clone();
        let hooks = server.admin("GET", "/webhooks", None).1["data"].clone();
        (licenses, usage, plans, hooks)
    };
    let before = read(&server);
    let public = server.public_key();
    assert_eq!(server.terminate(), Some(0));

    let pg = PgDatabase::create();
    // As the README has it: KEYSMITH_DATABASE already names the target.
    let copy = || {
        std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"))
            .args(["copy-to-postgres", "--data-dir"])
            .arg(&server.data_dir)
            .args(["--to", &pg.url()])
            .env("KEYSMITH_DATABASE", pg.url())
            .output()
            .unwrap()
    };
    let out = copy();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("copied 2 licenses, 2 plans, 4 usage records and 1 webhooks"),
        "{stdout}"
    );
    let again = copy();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("copy into an empty one"));

    let moved = TestServer::start_with(ServerOptions {
        data_dir: Some(server.data_dir.clone()),
        backend: Backend::Postgres,
        database: Some(pg.url()),
        ..Default::default()
    });
    assert_eq!(
        read(&moved),
        before,
        "the same licenses, usage, plans and webhooks"
    );
    assert_eq!(moved.public_key(), public);
    assert_eq!(validate(&moved, &a, Some("a.example.com")), "VALID");
    assert_eq!(
        validate(&moved, &a, Some("b.example.com")),
        "DOMAIN_LIMIT_REACHED",
        "the seat came along"
    );
    assert_eq!(validate(&moved, &b, None), "LICENSE_REVOKED");
    // The sequences go on after the copied rows.
    let c = moved.license("free", json!({}));
    assert_eq!(validate(&moved, &c, None), "VALID");
}

/// `copy-to-postgres` reads a stopped server's database; a server started
/// on it while the copy ran (it used to give up the database's lock after
/// settling the journal) could change tables already copied, and the
/// copy would miss it. Now no server starts until the copy ends, and the
/// copy reads one snapshot. (The copy is held in PostgreSQL's migration
/// lock, taken here, while a server is started on its data dir.)
#[test]
fn no_server_starts_on_a_database_being_copied() {
    if !Backend::Postgres.available() {
        return;
    }
    let mut server = TestServer::start();
    server.plan("p", json!({"features": []}));
    server.license("p", json!({}));
    assert_eq!(server.terminate(), Some(0));
    let pg = PgDatabase::create();
    let migrations = "pg_advisory_xact_lock(hashtext('keysmith-migrations'), \
                      hashtext(coalesce(current_schema(), '')))";
    let holder = pg.execute_in_background(&format!(
        "BEGIN; SELECT {migrations}; SELECT pg_sleep(4); COMMIT"
    ));
    let locks = |granted: bool| {
        pg.query_texts(
            "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' \
             AND granted = $1::text::boolean \
             AND objid::bigint = (hashtext(current_schema())::bigint & 4294967295)",
            &[&granted.to_string()],
        )[0]
        .clone()
    };
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    until("the lock is never taken", &|| locks(true) == "1");
    let copy = std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"))
        .args(["copy-to-postgres", "--data-dir"])
        .arg(&server.data_dir)
        .args(["--to", &pg.url()])
        .env_remove("KEYSMITH_DATABASE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    until("the copy never waits", &|| locks(false) == "1");
    // The copy has settled the journal and waits for PostgreSQL.
    let mut second = std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .env_remove("KEYSMITH_DATABASE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            second.kill().unwrap();
            second.wait().unwrap();
            panic!("a server started on the database being copied");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut refusal = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut refusal).unwrap();
    assert!(!status.success());
    assert!(refusal.contains("another server"), "{refusal}");
    holder.join().unwrap();
    let out = copy.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("copied 1 licenses"));
}

/// A backup copied about with `cp` or `scp` is readable by everyone (0644):
/// restored, the database took that mode (every license key and webhook
/// secret readable by any local user), in a data dir created 0755.
#[cfg(unix)]
#[test]
fn a_restored_database_is_private_whatever_the_copy_s_mode() {
    use std::os::unix::fs::PermissionsExt;
    let mut server = TestServer::start();
    server.plan("p", json!({"features": []}));
    server.license("p", json!({}));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("backup.db");
    let command = |args: &[&str], data_dir: &std::path::Path| {
        std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"))
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("KEYSMITH_DATABASE")
            .output()
            .unwrap()
    };
    let made = command(
        &["backup", "--to", copy.to_str().unwrap()],
        &server.data_dir,
    );
    assert!(made.status.success());
    assert_eq!(server.terminate(), Some(0));
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fresh = dir.path().join("new-data");
    let out = command(&["restore", "--from", copy.to_str().unwrap()], &fresh);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fresh.join("keysmith.db")), 0o600);
    assert_eq!(mode(&fresh), 0o700);
}

#[cfg(unix)]
#[test]
fn a_signing_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut server = TestServer::start();
    server.terminate();
    let key = server.data_path("signing.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .env("KEYSMITH_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
}

/// A database URL of no supported kind is refused by name before anything
/// is created, without echoing its password.
#[test]
fn an_unsupported_database_url_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = keysmith_tests::server_command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--database",
        "mysql://ks:s3cret@db.example/ks",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unsupported") && stderr.contains("mysql"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(!data.exists(), "nothing is created");
}

/// A PostgreSQL URL a slash short is no file path: it used to start a
/// server on SQLite in a file named after the URL, password included.
#[test]
fn a_postgres_url_without_its_slashes_is_refused_not_taken_for_a_file() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "postgres:ks:s3cret@127.0.0.1/ks",
        "postgresql:/ks:s3cret@127.0.0.1/ks",
        "POSTGRES:ks:s3cret@db",
    ] {
        let out = std::process::Command::new(keysmith_tests::bin_path("keysmith-server"))
            .current_dir(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--database", url])
            .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("://"), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{url}: nothing is created: {left:?}");
    }
}

/// `keysmith-server backup` while the server takes writes: a file only
/// its owner reads, which a new server starts on with every license,
/// seat and plan the copy began with.
#[cfg(unix)]
#[test]
fn a_backup_taken_while_serving_restores_into_a_working_server() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start();
    server.plan("p", json!({"features": ["sso"], "max_domains": 1}));
    let license = server.license("p", json!({}));
    let key = license["key"].as_str().unwrap().to_owned();
    let (_, answer) = server.validate(json!({"key": key, "domain": "a.example.com"}));
    assert_eq!(answer["code"], "VALID");

    // Licenses keep being created while the copy runs.
    let stop = Arc::new(AtomicBool::new(false));
    let created = Arc::new(Mutex::new(0usize));
    let writer = {
        let (stop, created, url) = (stop.clone(), created.clone(), server.url.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let status = http
                    .post(format!("{url}/api/v1/licenses"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"plan": "p", "customer_email": "w@example.com"}))
                    .send()
                    .unwrap()
                    .status();
                assert_eq!(status, 201);
                *created.lock().unwrap() += 1;
            }
        })
    };
    while *created.lock().unwrap() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("backup.db");
    let out = std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"))
        .args(["backup", "--data-dir"])
        .arg(&server.data_dir)
        .arg("--to")
        .arg(&copy)
        .env_remove("KEYSMITH_DATABASE")
        .output()
        .unwrap();
    let before_stop = *created.lock().unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("backed up "));
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // A second backup to the same file is refused and leaves it alone.
    let again = std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"))
        .args(["backup", "--data-dir"])
        .arg(&server.data_dir)
        .arg("--to")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));

    // Restored into a new data dir with the signing key (which a backup
    // does not hold: without it the server refuses a database with
    // licenses), the copy serves.
    let restored_dir = dir.path().join("restored");
    std::fs::create_dir_all(&restored_dir).unwrap();
    std::fs::copy(&copy, restored_dir.join("keysmith.db")).unwrap();
    std::fs::copy(
        server.data_path("signing.key"),
        restored_dir.join("signing.key"),
    )
    .unwrap();
    let restored = TestServer::start_with(ServerOptions {
        data_dir: Some(restored_dir),
        ..Default::default()
    });
    let (_, page) = restored.admin("GET", "/licenses?limit=500&plan=p", None);
    let count = page["data"].as_array().unwrap().len();
    assert!(
        (21..=before_stop + 1).contains(&count),
        "{count} licenses restored, {before_stop} created while copying"
    );
    let (_, kept) = restored.validate(json!({"key": key, "domain": "a.example.com"}));
    assert_eq!(
        (kept["code"].as_str(), kept["valid"].as_bool()),
        (Some("VALID"), Some(true))
    );
    let (_, full) = restored.validate(json!({"key": key, "domain": "b.example.com"}));
    assert_eq!(full["code"], "DOMAIN_LIMIT_REACHED", "the seat came along");
}

/// `keysmith-server restore`: refused while the server runs; with it
/// stopped, the backup takes the database's place, and what it replaced
/// (the database, its log and the usage journal) is kept aside.
#[test]
fn restore_puts_a_backup_back_and_keeps_what_it_replaced() {
    let mut server = TestServer::start();
    server.plan("p", json!({"features": []}));
    let kept = server.license("p", json!({}));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("backup.db");
    let data_dir = server.data_dir.clone();
    let run = |args: &[&str]| {
        std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"))
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .env_remove("KEYSMITH_DATABASE")
            .output()
            .unwrap()
    };
    let copy_arg = copy.to_str().unwrap();
    assert!(run(&["backup", "--to", copy_arg]).status.success());
    let later = server.license("p", json!({}));

    let busy = run(&["restore", "--from", copy_arg]);
    assert!(!busy.status.success());
    let why = String::from_utf8_lossy(&busy.stderr);
    assert!(why.contains("stop it first"), "{why}");
    let later_path = format!("/licenses/{}", later["id"].as_str().unwrap());
    assert_eq!(
        server.admin("GET", &later_path, None).0,
        200,
        "nothing changed"
    );

    assert_eq!(server.terminate(), Some(0));
    let out = run(&["restore", "--from", copy_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let aside = printed
        .lines()
        .find_map(|l| l.strip_prefix("moved the replaced files to "))
        .expect("where the replaced files went");
    assert!(
        std::path::Path::new(aside).join("keysmith.db").is_file(),
        "{printed}"
    );
    assert!(printed.contains("restored 1 licenses"), "{printed}");
    // The stored admin token comes back with the backup: it says so.
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains("rotate-admin-token"), "{note}");

    server.restart();
    let kept_path = format!("/licenses/{}", kept["id"].as_str().unwrap());
    assert_eq!(server.admin("GET", &kept_path, None).0, 200);
    assert_eq!(
        server.admin("GET", &later_path, None).0,
        404,
        "made after the backup"
    );
    let (_, answer) = server.validate(json!({"key": kept["key"], "domain": "a.example.com"}));
    assert_eq!(answer["code"], "VALID");

    // Not a backup: refused, and the database stays.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"not a database").unwrap();
    server.terminate();
    let out = run(&["restore", "--from", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a backup to restore"));
    server.restart();
    assert_eq!(server.admin("GET", &kept_path, None).0, 200);
}

fn without_an_env_token_one_is_generated_printed_once_kept_hashed_and_rotated(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pg = (backend == Backend::Postgres).then(PgDatabase::create);
    let database: Vec<String> = pg
        .iter()
        .flat_map(|pg| ["--database".to_owned(), pg.url()])
        .collect();
    let run = || {
        let mut child = std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(&database)
            .env_remove("KEYSMITH_ADMIN_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut token = None;
        let url = loop {
            let line = lines.next().unwrap().unwrap();
            if let Some(t) =
                line.strip_prefix("Generated admin token (shown once; only its hash is stored): ")
            {
                token = Some(t.to_owned());
            }
            if let Some(url) = line.strip_prefix("keysmith-server listening on ") {
                break url.to_owned();
            }
        };
        (child, url, token)
    };
    // A first start that cannot listen (the port is taken) must not use
    // up the token it would print: the next start prints one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let failed = std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"))
        .args([
            "serve",
            "--listen",
            &taken.local_addr().unwrap().to_string(),
        ])
        .arg("--data-dir")
        .arg(&data)
        .args(&database)
        .env_remove("KEYSMITH_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!failed.status.success());
    assert!(
        !String::from_utf8_lossy(&failed.stdout).contains("Generated admin token"),
        "{}",
        String::from_utf8_lossy(&failed.stdout)
    );
    let (mut first, url, token) = run();
    let token = token.expect("the first start prints a token");
    let http = reqwest::blocking::Client::new();
    let ok = |url: &str, t: &str| {
        http.get(format!("{url}/api/v1/plans"))
            .bearer_auth(t)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(ok(&url, &token), 200);
    assert_eq!(ok(&url, "ksa_wrong"), 401);
    first.kill().unwrap();
    first.wait().unwrap();

    match &pg {
        None => {
            let db = std::fs::read(data.join("keysmith.db")).unwrap();
            let wal = std::fs::read(data.join("keysmith.db-wal")).unwrap_or_default();
            let needle = token.as_bytes();
            assert!(
                !db.windows(needle.len()).any(|w| w == needle)
                    && !wal.windows(needle.len()).any(|w| w == needle),
                "token stored in clear"
            );
        }
        Some(pg) => {
            let holding = pg.query_texts("SELECT k FROM meta WHERE strpos(v, $1) > 0", &[&token]);
            assert!(holding.is_empty(), "token stored in clear");
            let hashes = pg.query_texts("SELECT v FROM meta WHERE k = 'admin_token_sha256'", &[]);
            assert!(hashes.len() == 1 && hashes[0].len() == 64, "{hashes:?}");
        }
    }

    let (mut second, url, again) = run();
    assert_eq!(again, None, "printed only once");
    assert_eq!(
        ok(&url, &token),
        200,
        "the same token works after a restart"
    );
    second.kill().unwrap();
    second.wait().unwrap();

    // Lost or leaked: `rotate-admin-token` stores a new token's hash in its
    // place and prints the token once. A running server takes it within
    // seconds, and from then on only the new one works, after a restart too.
    let rotate = |env_token: Option<&str>| {
        let mut cmd = std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"));
        cmd.args(["rotate-admin-token", "--data-dir"])
            .arg(&data)
            .args(&database)
            .env_remove("KEYSMITH_ADMIN_TOKEN")
            .env_remove("KEYSMITH_DATABASE");
        if let Some(t) = env_token {
            cmd.env("KEYSMITH_ADMIN_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let (mut third, url, _) = run();
    let refused = rotate(Some("an-env-token-0123456789"));
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("KEYSMITH_ADMIN_TOKEN is set"), "{why}");
    assert!(why.contains("env -u KEYSMITH_ADMIN_TOKEN"), "{why}");
    let out = rotate(None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let rotated = printed
        .lines()
        .find_map(|l| l.strip_prefix("New admin token (shown once; only its hash is stored): "))
        .expect("the new token printed")
        .to_owned();
    assert!(rotated.starts_with("ksa_") && rotated != token, "{rotated}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ok(&url, &rotated) != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the running server never took the rotated token"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(ok(&url, &token), 401, "the old token no longer works");
    third.kill().unwrap();
    third.wait().unwrap();

    let (mut fourth, url, again) = run();
    assert_eq!(again, None, "no token generated on top of the rotated one");
    assert_eq!(ok(&url, &token), 401);
    assert_eq!(ok(&url, &rotated), 200);
    fourth.kill().unwrap();
    fourth.wait().unwrap();

    // Pointed at a database no server has started on (the wrong one), a
    // rotation is refused and sets nothing up there; it used to create
    // Keysmith's tables and report success while the real database kept
    // the leaked token.
    if backend == Backend::Postgres {
        let empty = PgDatabase::create();
        let out = std::process::Command::new(keysmith_tests::bin_path("ks-e2e-server"))
            .args(["rotate-admin-token", "--data-dir"])
            .arg(&data)
            .args(["--database", &empty.url()])
            .env_remove("KEYSMITH_ADMIN_TOKEN")
            .env_remove("KEYSMITH_DATABASE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(why.contains("no Keysmith database"), "{why}");
        assert_eq!(
            empty.query_texts(
                "SELECT count(*)::text FROM information_schema.tables \
                 WHERE table_schema = current_schema()",
                &[]
            ),
            ["0"]
        );
    }
}

/// SIGTERM: requests in flight are answered and recorded, the process
/// exits 0, and (SQLite) the database file alone holds everything.
fn sigterm_finishes_in_flight_requests_and_exits_zero(backend: Backend) {
    let mut server = TestServer::start_with(ServerOptions {
        backend,
        args: vec!["--rate-limit".into(), "0".into()],
        ..Default::default()
    });
    server.plan("p", json!({"features": []}));
    let license = server.license("p", json!({}));
    let key = license["key"].as_str().unwrap().to_owned();
    let url = server.url.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(0u64));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, key, stop, answered) =
                (url.clone(), key.clone(), stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    match http
                        .post(format!("{url}/api/v1/validate"))
                        .json(&json!({"key": key}))
                        .send()
                    {
                        Ok(r) if r.status() == 200 => {
                            if r.json::<Value>()
                                .map(|v| v["code"] == "VALID")
                                .unwrap_or(false)
                            {
                                *answered.lock().unwrap() += 1;
                            }
                        }
                        _ => break,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(server.terminate(), Some(0));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let answered = *answered.lock().unwrap();
    assert!(answered > 0);
    if backend == Backend::Sqlite {
        // A clean stop leaves everything in keysmith.db: restored alone,
        // as a backup of that one file would be, it has every count.
        // The log is copied into the database, and its files removed.
        for name in ["keysmith.db-wal", "keysmith.db-shm"] {
            let left = server.data_path(name);
            assert!(!left.exists(), "{} is left behind", left.display());
        }
        std::fs::remove_file(server.data_path("keysmith.db-usage")).unwrap();
    }
    server.restart();
    let (_, after) = server.admin(
        "GET",
        &format!("/licenses/{}", license["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(
        after["validation_count"].as_u64().unwrap(),
        answered,
        "every answered validation was recorded"
    );
}

fn kill_9_keeps_every_acknowledged_write(backend: Backend) {
    let mut server = TestServer::start_with(ServerOptions {
        backend,
        args: vec!["--rate-limit".into(), "0".into()],
        ..Default::default()
    });
    server.plan("p", json!({"features": [], "max_domains": 1000}));
    let url = server.url.clone();
    let http = reqwest::blocking::Client::new();
    let seed = server.license("p", json!({}));
    let seed_key = seed["key"].as_str().unwrap().to_owned();

    // Writers run flat out; the server is killed in the middle of them.
    let created = Arc::new(Mutex::new(Vec::<Value>::new()));
    let seats = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..3 {
        let (url, created) = (url.clone(), created.clone());
        workers.push(std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            for i in 0.. {
                let resp = http
                    .post(format!("{url}/api/v1/licenses"))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"plan": "p", "customer_email": format!("w{w}-{i}@example.com")}))
                    .send();
                match resp {
                    Ok(r) if r.status() == 201 => created.lock().unwrap().push(r.json().unwrap()),
                    _ => break,
                }
            }
        }));
    }
    for w in 0..3 {
        let (url, seats, key) = (url.clone(), seats.clone(), seed_key.clone());
        workers.push(std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            for i in 0.. {
                let domain = format!("w{w}-{i}.example");
                let resp = http
                    .post(format!("{url}/api/v1/validate"))
                    .json(&json!({"key": key, "domain": domain}))
                    .send();
                match resp.ok().and_then(|r| r.json::<Value>().ok()) {
                    Some(v) if v["code"] == "VALID" => seats.lock().unwrap().push(domain),
                    _ => break,
                }
            }
        }));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    server.kill9();
    for w in workers {
        w.join().unwrap();
    }
    let created = created.lock().unwrap().clone();
    let seats = seats.lock().unwrap().clone();
    assert!(
        created.len() > 10 && seats.len() > 10,
        "load ran: {} creates, {} seats",
        created.len(),
        seats.len()
    );

    server.restart();
    for license in &created {
        let (status, stored) = server.admin(
            "GET",
            &format!("/licenses/{}", license["id"].as_str().unwrap()),
            None,
        );
        assert_eq!(status, 200, "acknowledged license {} lost", license["id"]);
        assert_eq!(stored["key"], license["key"]);
    }
    let (_, seed_now) = server.admin(
        "GET",
        &format!("/licenses/{}", seed["id"].as_str().unwrap()),
        None,
    );
    let held: Vec<&str> = seed_now["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    for domain in &seats {
        assert!(
            held.contains(&domain.as_str()),
            "acknowledged seat {domain} lost"
        );
    }
    let (_, usage) = server.admin(
        "GET",
        &format!("/licenses/{}/usage?limit=1", seed["id"].as_str().unwrap()),
        None,
    );
    let recorded = usage["totals"]["validations"].as_u64().unwrap();
    assert!(
        recorded >= seats.len() as u64,
        "{recorded} usage records for {} answers",
        seats.len()
    );
    assert_eq!(seed_now["validation_count"].as_u64().unwrap(), recorded);
    let _ = http;
}

fn logs_never_hold_a_key_or_a_token(backend: Backend) {
    // At `debug`, so that the validation requests are logged too.
    let server = TestServer::start_with(ServerOptions {
        backend,
        args: vec!["--log".into(), "debug".into()],
        ..Default::default()
    });
    server.plan("p", json!({"features": []}));
    let license = server.license("p", json!({}));
    let key = license["key"].as_str().unwrap();
    let (_, answer) = server.validate(json!({"key": key}));
    server.admin("GET", &format!("/licenses?key={key}"), None);
    server.request("GET", "/api/v1/licenses", Some("wrong-token-xyz"), None);
    // A key where an id goes, with and without the token, dashes or not.
    for path in [
        key.to_owned(),
        key.replace('-', ""),
        key.replace('-', "%20"),
        // Pasted from mail: en dashes (percent-encoded, as in any URL).
        key.replace('-', "%E2%80%93"),
    ] {
        server.request("GET", &format!("/api/v1/licenses/{path}"), None, None);
        server.admin("GET", &format!("/licenses/{path}"), None);
    }
    let log = server.log();
    assert!(
        log.contains("/api/v1/validate") && log.contains("/api/v1/licenses"),
        "requests are logged: {log}"
    );
    let body = &key[3..];
    assert!(log.contains("/api/v1/licenses/<key?>"), "{log}");
    for secret in [
        body,
        &body.replace('-', ""),
        &body.replace('-', "%E2%80%93"),
        answer["token"].as_str().unwrap(),
        ADMIN_TOKEN,
        "wrong-token-xyz",
    ] {
        assert!(!log.contains(secret), "log holds a secret");
    }
}
