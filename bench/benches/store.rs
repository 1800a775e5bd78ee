//! The validation rule and its storage, without HTTP: `license::decide`, the
//! SQLite store's `validate` (what one `/validate` costs in storage, commit
//! included), and the two SQLite costs it is made of: the license look-up and
//! a durable commit.
//!
//! `cargo bench -p keysmith-bench --bench store`
//!
//! By default the store is a fresh database of 10,000 licenses made here. To
//! use a data set seeded by `keysmith-bench` (e.g. 1,000,000 licenses) set
//! `KEYSMITH_BENCH_DATA=target/bench-data/1000000` (relative to the
//! workspace root, or absolute); its database is copied
//! first, so the cache stays pristine.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keysmith_core::wire::Plan;
use keysmith_core::{Code, LicenseKey, Status};
use keysmith_server::license::{decide, Seats};
use keysmith_server::store::sqlite::{SqliteStore, READER_CACHE_KIB, VALIDATION_LOOKUP};
use keysmith_server::store::{NewLicense, Precondition, Store, ValidationInput};
use rand::Rng;
use tokio::runtime::Runtime;

/// Licenses in the database made here when no data set is given.
const GENERATED_LICENSES: usize = 10_000;
/// Validations in flight at once in the concurrent benchmark, as with
/// 64 connections.
const IN_FLIGHT: usize = 64;

/// The domain a license's validations use; the harness (bench/src/dataset.rs)
/// seats `app0.customer<i>.example.com` for every license `i`.
fn domain(index: usize) -> String {
    format!("app0.customer{index}.example.com")
}

/// A database with licenses whose first domain is seated, and their keys.
struct Fixture {
    _dir: tempfile::TempDir,
    db: PathBuf,
    keys: Vec<String>,
}

fn fixture(runtime: &Runtime) -> Fixture {
    let dir = tempfile::tempdir().expect("a temp dir");
    let db = dir.path().join("keysmith.db");
    if let Some(data) = std::env::var_os("KEYSMITH_BENCH_DATA") {
        // Relative to the workspace root, where the command is typed (cargo
        // runs a bench in its package's directory).
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the bench crate is in the workspace");
        let data = workspace.join(data);
        for name in ["keysmith.db", "keysmith.db-wal"] {
            let from = data.join("seed").join(name);
            if from.exists() {
                std::fs::copy(&from, dir.path().join(name)).expect("copying the data set");
            }
        }
        let keys = std::fs::read_to_string(data.join("keys.txt")).expect("reading keys.txt");
        let keys: Vec<String> = keys.lines().map(str::to_owned).collect();
        eprintln!(
            "store benchmarks on {} ({} licenses)",
            data.display(),
            keys.len()
        );
        return Fixture {
            _dir: dir,
            db,
            keys,
        };
    }
    let store = Arc::new(SqliteStore::open(&db).expect("opening the store"));
    let keys = runtime.block_on(generate(store, GENERATED_LICENSES));
    eprintln!("store benchmarks on a generated database of {GENERATED_LICENSES} licenses");
    Fixture {
        _dir: dir,
        db,
        keys,
    }
}

/// Creates `count` licenses and seats each one's first domain, many writes
/// in flight so that the writer commits them in batches.
async fn generate(store: Arc<SqliteStore>, count: usize) -> Vec<String> {
    store
        .put_plan(
            Plan {
                name: "bench".into(),
                features: vec!["sso".into(), "audit-log".into()],
                max_domains: Some(5),
                max_machines: None,
                duration_days: None,
                offline_grace_days: 7,
            },
            Precondition::None,
        )
        .await
        .expect("creating the plan");
    let mut keys = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(512) {
        let mut tasks = tokio::task::JoinSet::new();
        for &index in chunk {
            let store = store.clone();
            tasks.spawn(async move {
                let license = store
                    .create_license(
                        NewLicense {
                            key_prefix: "KS".into(),
                            plan: "bench".into(),
                            customer_email: format!("customer{index}@example.com"),
                            max_domains: None,
                            max_machines: None,
                            expires_at: None,
                            metadata: serde_json::Map::new(),
                        },
                        Utc::now(),
                    )
                    .await
                    .expect("creating a license");
                let seated = store
                    .validate(input(&license.key, Some(domain(index))))
                    .await
                    .expect("seating a domain");
                assert_eq!(seated.code, Code::Valid);
                (index, license.key)
            });
        }
        let mut made: Vec<(usize, String)> = Vec::new();
        while let Some(done) = tasks.join_next().await {
            made.push(done.expect("a seeding task"));
        }
        made.sort();
        keys.extend(made.into_iter().map(|(_, key)| key));
    }
    keys
}

fn input(key: &str, domain: Option<String>) -> ValidationInput {
    ValidationInput {
        key: key.to_owned(),
        domain,
        fingerprint: None,
        ip: Some("127.0.0.1".into()),
        user_agent: Some("keysmith-bench".into()),
        country: None,
        now: Utc::now(),
    }
}

fn random_valid_input(keys: &[String]) -> ValidationInput {
    let index = rand::thread_rng().gen_range(0..keys.len());
    input(&keys[index], Some(domain(index)))
}

fn rule(c: &mut Criterion) {
    let seats = |held, taken| Seats {
        held,
        taken,
        max: Some(5),
    };
    let mut group = c.benchmark_group("rule");
    group.bench_function("decide_held_seat", |b| {
        b.iter(|| {
            decide(
                black_box(Status::Active),
                black_box(Some(seats(true, 2))),
                None,
            )
        })
    });
    group.bench_function("decide_new_seat", |b| {
        b.iter(|| {
            decide(
                black_box(Status::Active),
                black_box(Some(seats(false, 2))),
                None,
            )
        })
    });
    group.finish();
}

fn store(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let fixture = fixture(&runtime);
    let store = Arc::new(SqliteStore::open(&fixture.db).expect("opening the store"));
    let keys = Arc::new(fixture.keys.clone());

    let mut group = c.benchmark_group("store");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    // One validation at a time: its transaction commits (and syncs) alone.
    group.bench_function("validate_one_at_a_time", |b| {
        b.iter(|| runtime.block_on(store.validate(random_valid_input(&keys))))
    });
    group.bench_function("validate_unknown_key_one_at_a_time", |b| {
        b.iter(|| {
            let key = LicenseKey::generate("KS").expect("valid prefix");
            runtime.block_on(store.validate(input(key.as_str(), None)))
        })
    });
    // 64 in flight: the writer commits them in batches (group commit).
    group.throughput(Throughput::Elements(IN_FLIGHT as u64));
    group.bench_function("validate_64_in_flight", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..IN_FLIGHT {
                    let (store, keys) = (store.clone(), keys.clone());
                    tasks.spawn(async move { store.validate(random_valid_input(&keys)).await });
                }
                while let Some(done) = tasks.join_next().await {
                    let outcome = done.expect("a task").expect("a validation");
                    assert_eq!(outcome.code, Code::Valid);
                }
            })
        })
    });
    group.finish();

    sqlite_parts(c, &fixture.db, &keys);
}

/// The look-up a validation starts with, on a read-only connection, and a
/// durable commit of one small row: the two costs a validation is made of.
fn sqlite_parts(c: &mut Criterion, db: &Path, keys: &[String]) {
    let mut group = c.benchmark_group("sqlite");
    // The server's statement on a connection like its readers (4 MiB of
    // page cache); at 1M licenses the covering index it reads is ~170 MB,
    // so most look-ups read a leaf page or two with pread(2). The variants:
    // the statement inside `BEGIN`…`COMMIT`, as each look-up ran before
    // `e1fdcd8`, and what a larger cache or memory-mapped I/O would change.
    let reader_cache = format!("PRAGMA cache_size = {READER_CACHE_KIB};");
    for (name, pragma, in_transaction) in [
        ("select_license_by_key", reader_cache.as_str(), false),
        (
            "select_license_by_key_in_a_transaction",
            reader_cache.as_str(),
            true,
        ),
        (
            "select_license_by_key_cache_64mib",
            "PRAGMA cache_size = -65536;",
            false,
        ),
        (
            "select_license_by_key_mmap",
            "PRAGMA mmap_size = 4294967296;",
            false,
        ),
    ] {
        let reader = rusqlite::Connection::open_with_flags(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .expect("a read-only connection");
        reader.execute_batch(pragma).expect("a pragma");
        group.bench_function(name, |b| {
            b.iter(|| {
                let key = &keys[rand::thread_rng().gen_range(0..keys.len())];
                if in_transaction {
                    reader
                        .prepare_cached("BEGIN")
                        .expect("BEGIN")
                        .execute([])
                        .expect("BEGIN");
                }
                let seq: i64 = reader
                    .prepare_cached(VALIDATION_LOOKUP)
                    .expect("the validation query")
                    .query_row([key], |r| r.get(0))
                    .expect("a license");
                if in_transaction {
                    reader
                        .prepare_cached("COMMIT")
                        .expect("COMMIT")
                        .execute([])
                        .expect("COMMIT");
                }
                seq
            })
        });
    }

    // The same small commit under both WAL sync modes: FULL syncs the WAL on
    // every commit (the server today); NORMAL syncs it only at checkpoints,
    // which still survives kill -9 of the process (the OS holds the write)
    // but not a power cut.
    let scratch = tempfile::tempdir().expect("a temp dir");
    group.sample_size(20);
    for sync in ["FULL", "NORMAL"] {
        let writer = rusqlite::Connection::open(scratch.path().join(format!("commit-{sync}.db")))
            .expect("a database");
        writer
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; \
                 CREATE TABLE t (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, code TEXT NOT NULL);"
            ))
            .expect("a scratch table");
        let name = format!("commit_of_one_row_synchronous_{}", sync.to_lowercase());
        group.bench_function(name, |b| {
            b.iter(|| {
                writer
                    .execute_batch(
                        "BEGIN IMMEDIATE; INSERT INTO t (at, code) VALUES (1, 'VALID'); COMMIT;",
                    )
                    .expect("a commit")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rule, store);
criterion_main!(benches);
