//! The data set: N licenses created through the real HTTP API, each with one
//! to three domains already seated, so that a measured validation is the
//! steady state of an app starting up, not a first activation.
//!
//! Layout of a cached data set, `<root>/<N>/`:
//! - `seed/`: the server's data dir after seeding (SQLite database, signing key);
//! - `keys.txt`: the keys, one a line, license `i` on line `i`;
//! - `manifest.json`: written last, so its presence means the rest is complete.
//!
//! Every measured run starts from a copy of `seed/` in `run/`, so runs do not
//! see each other's usage rows and seats.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::client::Connection;
use crate::server::{ServerOptions, ServerProcess, ADMIN_TOKEN};

/// The plan every benchmark license is on.
const PLAN: &str = "bench";
/// Seats per license: more than the three domains a license uses, so that
/// every measured request of a known key is `VALID`.
const MAX_DOMAINS: u32 = 5;

/// How many domains license `index` uses: 1, 2 or 3.
pub fn domain_count(index: usize) -> usize {
    1 + index % 3
}

/// Domain `j` of license `index`.
pub fn domain(index: usize, j: usize) -> String {
    format!("app{j}.customer{index}.example.com")
}

/// What seeding produced and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub licenses: usize,
    /// `sqlite` (restored from `seed/` before each run) or `external`
    /// (`--database`: the database is the user's, not restored).
    pub backend: String,
    pub seeded_at_unix: u64,
    pub create_seconds: f64,
    pub creates_per_second: f64,
    pub seat_validations: usize,
    pub seat_seconds: f64,
    pub seats_per_second: f64,
    pub database_bytes: Option<u64>,
}

/// A seeded data set.
pub struct Dataset {
    pub dir: PathBuf,
    pub keys: Vec<String>,
    pub manifest: Manifest,
    external_database: bool,
}

impl Dataset {
    /// The cached data set of `licenses` licenses under `root`, seeded first
    /// when missing or when `fresh`.
    pub async fn prepare(
        root: &Path,
        licenses: usize,
        fresh: bool,
        server: &ServerOptions,
        connections: usize,
    ) -> anyhow::Result<Dataset> {
        let external_database = server.database.is_some();
        let name = if external_database {
            format!("{licenses}-external")
        } else {
            licenses.to_string()
        };
        let dir = root.join(name);
        let manifest_path = dir.join("manifest.json");
        if !fresh && manifest_path.exists() {
            let manifest: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path)?)
                .with_context(|| format!("reading {}", manifest_path.display()))?;
            let keys = read_keys(&dir.join("keys.txt"))?;
            ensure!(
                keys.len() == licenses,
                "{} holds {} keys, not {licenses}; rerun with --fresh",
                dir.display(),
                keys.len()
            );
            eprintln!(
                "using the cached data set in {} ({} licenses, seeded at {:.0} creates/s)",
                dir.display(),
                licenses,
                manifest.creates_per_second
            );
            if !external_database {
                upgrade(&dir, server).await?;
            }
            return Ok(Dataset {
                dir,
                keys,
                manifest,
                external_database,
            });
        }
        if external_database {
            eprintln!(
                "note: seeding {licenses} licenses into the --database given; \
                 use an empty database, it is not reset between runs"
            );
        }
        seed(&dir, licenses, server, connections).await?;
        Box::pin(Dataset::prepare(root, licenses, false, server, connections)).await
    }

    /// A data dir for one measured run: a fresh copy of the seeded state for
    /// SQLite; the seed dir itself (signing key only) for an external database.
    pub fn run_dir(&self) -> anyhow::Result<PathBuf> {
        let seed = self.dir.join("seed");
        if self.external_database {
            return Ok(seed);
        }
        let run = self.dir.join("run");
        if run.exists() {
            std::fs::remove_dir_all(&run)?;
        }
        std::fs::create_dir_all(&run)?;
        for entry in std::fs::read_dir(&seed)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                // `fs::copy` keeps the mode, so signing.key stays 0600.
                let copy = run.join(entry.file_name());
                std::fs::copy(entry.path(), &copy)?;
                // Written back before the server starts: otherwise the
                // server's first fsync would also flush the whole copy
                // (seconds at 1M licenses) and show up as its latency.
                std::fs::File::open(&copy)?.sync_all()?;
            }
        }
        Ok(run)
    }
}

/// Starts and stops the server once on the cached `seed/`, so that a data
/// set seeded by an older server is migrated to this server's schema here,
/// once, and not at the start of every measured run (where it would count
/// as start-up time: ~5 s for one migration at 1M licenses).
async fn upgrade(dir: &Path, server: &ServerOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let log = dir.join("upgrade-server.log");
    let process = ServerProcess::start(server, &dir.join("seed"), &log)
        .await
        .context("starting the server on the cached data set (a server older than the data set refuses it; use another --data-root)")?;
    let status = process.stop(Duration::from_secs(60)).await?;
    ensure!(
        status.success(),
        "the server on the cached data set exited with {status}; see {}",
        log.display()
    );
    if started.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "the cached data set was brought up to this server's schema in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn read_keys(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::to_owned).collect())
}

fn progress(prefix: &'static str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>9} [{elapsed_precise}] [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

async fn seed(
    dir: &Path,
    licenses: usize,
    server: &ServerOptions,
    connections: usize,
) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let seed_dir = dir.join("seed");
    std::fs::create_dir_all(&seed_dir)?;
    eprintln!(
        "seeding {licenses} licenses into {} over {connections} connections",
        dir.display()
    );
    let process = ServerProcess::start(server, &seed_dir, &dir.join("seed-server.log")).await?;
    let addr = process.addr;

    let mut admin = Connection::open(addr, Some(ADMIN_TOKEN)).await?;
    let plan = serde_json::json!({
        "features": ["sso", "audit-log"],
        "max_domains": MAX_DOMAINS,
        "offline_grace_days": 7,
    });
    let (status, body) = admin
        .send(
            Method::PUT,
            &format!("/api/v1/plans/{PLAN}"),
            serde_json::to_vec(&plan)?.into(),
        )
        .await?;
    ensure!(
        status.is_success(),
        "creating the plan: {status} {}",
        String::from_utf8_lossy(&body)
    );

    let started = Instant::now();
    let keys = create_licenses(addr, licenses, connections).await?;
    let create_time = started.elapsed();

    let started = Instant::now();
    let seat_validations = seat_domains(addr, Arc::new(keys.clone()), connections).await?;
    let seat_time = started.elapsed();

    let status = process.stop(Duration::from_secs(60)).await?;
    ensure!(status.success(), "the seeding server exited with {status}");

    let mut text = keys.join("\n");
    text.push('\n');
    std::fs::write(dir.join("keys.txt"), text)?;
    let manifest = Manifest {
        licenses,
        backend: if server.database.is_some() {
            "external".into()
        } else {
            "sqlite".into()
        },
        seeded_at_unix: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        create_seconds: create_time.as_secs_f64(),
        creates_per_second: licenses as f64 / create_time.as_secs_f64(),
        seat_validations,
        seat_seconds: seat_time.as_secs_f64(),
        seats_per_second: seat_validations as f64 / seat_time.as_secs_f64(),
        database_bytes: std::fs::metadata(seed_dir.join("keysmith.db"))
            .ok()
            .map(|m| m.len()),
    };
    eprintln!(
        "seeded: {licenses} licenses in {:.1} s ({:.0}/s), {seat_validations} seats in {:.1} s ({:.0}/s)",
        manifest.create_seconds,
        manifest.creates_per_second,
        manifest.seat_seconds,
        manifest.seats_per_second
    );
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(())
}

#[derive(Deserialize)]
struct Created {
    key: String,
}

/// Creates `licenses` licenses; returns their keys, license `i` at index `i`.
async fn create_licenses(
    addr: std::net::SocketAddr,
    licenses: usize,
    connections: usize,
) -> anyhow::Result<Vec<String>> {
    let bar = progress("licenses", licenses as u64);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let next = next.clone();
        let bar = bar.clone();
        tasks.spawn(async move {
            let mut connection = Connection::open(addr, Some(ADMIN_TOKEN)).await?;
            let mut created = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= licenses {
                    return anyhow::Ok(created);
                }
                let body = serde_json::json!({
                    "plan": PLAN,
                    "customer_email": format!("customer{index}@example.com"),
                    "max_domains": MAX_DOMAINS,
                    "metadata": {"order_id": index.to_string()},
                });
                let (status, answer) = connection
                    .post_json("/api/v1/licenses", serde_json::to_vec(&body)?.into())
                    .await?;
                if status != StatusCode::CREATED {
                    bail!(
                        "creating license {index}: {status} {}",
                        String::from_utf8_lossy(&answer)
                    );
                }
                let Created { key } = serde_json::from_slice(&answer)?;
                created.push((index, key));
                bar.inc(1);
            }
        });
    }
    let mut keys = vec![String::new(); licenses];
    while let Some(joined) = tasks.join_next().await {
        for (index, key) in joined?? {
            keys[index] = key;
        }
    }
    bar.finish();
    Ok(keys)
}

/// Validates every license once per domain, which takes its seats and
/// activates it; returns how many validations that took.
async fn seat_domains(
    addr: std::net::SocketAddr,
    keys: Arc<Vec<String>>,
    connections: usize,
) -> anyhow::Result<usize> {
    let total: usize = (0..keys.len()).map(domain_count).sum();
    let bar = progress("seats", total as u64);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (next, keys, bar) = (next.clone(), keys.clone(), bar.clone());
        tasks.spawn(async move {
            let mut connection = Connection::open(addr, None).await?;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(index) else {
                    return anyhow::Ok(());
                };
                for j in 0..domain_count(index) {
                    let body = serde_json::json!({"key": key, "domain": domain(index, j)});
                    let (status, answer) = connection
                        .post_json("/api/v1/validate", Bytes::from(serde_json::to_vec(&body)?))
                        .await?;
                    let answer = String::from_utf8_lossy(&answer);
                    if status != StatusCode::OK || !answer.contains(r#""code":"VALID""#) {
                        bail!("seating domain {j} of license {index}: {status} {answer}");
                    }
                    bar.inc(1);
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    bar.finish();
    Ok(total)
}
