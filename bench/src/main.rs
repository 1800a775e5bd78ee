//! `keysmith-bench`: seeds a data set through the HTTP API, starts
//! `keysmith-server` as a separate process, drives `POST /api/v1/validate`
//! over loopback with N keep-alive connections, and reports throughput,
//! latency percentiles, start-up time and resident memory.
//!
//! ```text
//! cargo run --release -p keysmith-bench -- --scenario issue --runs 3
//! cargo run --release -p keysmith-bench -- --licenses 10000 --connections 64 --duration 20
//! ```
//!
//! Human output (progress, tables) goes to stderr; stdout gets one line of
//! JSON with every number, and `--json PATH` writes the same, pretty.
#![forbid(unsafe_code)]

mod client;
mod dataset;
mod load;
mod report;
mod server;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::dataset::{Dataset, Manifest};
use crate::load::{LoadOptions, Target, Workload};
use crate::report::{Measurement, Numbers, ScenarioResult};
use crate::server::{ServerOptions, ServerProcess};

#[derive(Debug, Parser)]
#[command(name = "keysmith-bench", version, about, long_about = None)]
struct Cli {
    /// What to measure. `single`: one scenario with --connections on
    /// --licenses. `throughput`: 64 connections. `latency`: 4 connections.
    /// `flatness`: 4 connections on --small-licenses and on --licenses.
    /// `ceiling`: GET /healthz (the generator's and hyper's own limit).
    /// `issue`: throughput, latency, flatness and ceiling, with the targets.
    #[arg(long, value_enum, default_value_t = Scenario::Single)]
    scenario: Scenario,

    /// Licenses in the data set (seeded once, then cached).
    #[arg(long, default_value_t = 1_000_000)]
    licenses: usize,

    /// The small data set of the flatness comparison.
    #[arg(long, default_value_t = 10_000)]
    small_licenses: usize,

    /// Concurrent keep-alive connections (scenario `single` and `ceiling`).
    #[arg(long, default_value_t = 64)]
    connections: usize,

    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 20)]
    duration: u64,

    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3)]
    warmup: u64,

    /// Runs per scenario, each on a fresh server and a fresh copy of the
    /// data, taken in rounds (every scenario's first run, then every
    /// second run, …); the summary holds the medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,

    /// Rebuild the data sets even if cached.
    #[arg(long)]
    fresh: bool,

    /// Only build (or check) the data sets the scenario needs; measure nothing.
    #[arg(long)]
    seed_only: bool,

    /// Also write the results, pretty-printed, to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// The server binary. Default: target/release/keysmith-server, built first
    /// with `cargo build --release -p keysmith-server`.
    #[arg(long)]
    server_bin: Option<PathBuf>,

    /// A second server binary to compare with the first, in the same run:
    /// every scenario runs on both, the two alternating run by run, so
    /// that both get the same stretch of the machine's drift, and which
    /// goes first swapped every round (A B, B A, A B, …), so that neither
    /// always gets the first place of a pair. Its rows are marked `[B]`;
    /// the targets are checked on the first binary only.
    #[arg(long, value_name = "SERVER_BIN")]
    against: Option<PathBuf>,

    /// Do not build the server binary first.
    #[arg(long)]
    no_build: bool,

    /// An extra argument for `keysmith-server serve` (repeatable), e.g.
    /// `--server-arg=--log --server-arg=warn`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,

    /// Passed to the server as `--database URL` (e.g. postgres://…). The
    /// harness seeds it once per size but cannot reset it between runs.
    #[arg(long)]
    database: Option<String>,

    /// Server processes to start on the one --database (scale-out, SPEC
    /// §10), with one signing key; connections are spread over them round
    /// robin. CPU columns add the processes up; RSS is the first one's.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    servers: u16,

    /// Where data sets are cached. Default: <target dir>/bench-data.
    #[arg(long)]
    data_root: Option<PathBuf>,

    /// Load generator threads (each a single-threaded runtime driving its
    /// share of the connections). One by default: on two cores shared with
    /// the server, a second thread makes the generator wait for itself (the
    /// two take turns at one core's share, a 4 ms scheduler tick each), a
    /// tail that is the generator's, not the server's: `GET /healthz` p99
    /// 4.3 ms with 2 threads, 0.8 ms with 1, the server alone on the other
    /// core (docs/performance.md). Tables of earlier sessions used 2.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,

    /// Connections used to seed a data set.
    #[arg(long, default_value_t = 32)]
    seed_connections: usize,

    /// Record the server with `perf record` during the first measured window
    /// (needs linux-perf) and write the profile here.
    #[arg(long)]
    perf_record: Option<PathBuf>,

    /// Write every measured request of each run here as CSV (its send time
    /// after the measured window's start and its latency, microseconds, and
    /// its connection's number; a first line holds the window's start, Unix
    /// microseconds).
    /// With more than one run, each run gets a file of its own, named
    /// after this one with the scenario and the run's number inserted
    /// (`lat.csv` → `lat-throughput-2.csv`). `scripts/tail-timeline.py`
    /// lines them up with the server's threads to show what the slowest
    /// ones waited for.
    #[arg(long)]
    latency_log: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Single,
    Throughput,
    Latency,
    Flatness,
    Ceiling,
    Issue,
}

/// One scenario to run: a name, a data set size, connections, what to send,
/// and on which server binary (`against`: the one of `--against`).
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    name: String,
    licenses: usize,
    connections: usize,
    healthz: bool,
    against: bool,
}

/// The name of a scenario's rows on the `--against` binary.
const AGAINST: &str = " [B]";

/// With `--against`: each scenario followed by the same on the second
/// binary, so that a round runs the two back to back.
fn with_against(plans: Vec<Plan>) -> Vec<Plan> {
    plans
        .into_iter()
        .flat_map(|plan| {
            let other = Plan {
                name: format!("{}{AGAINST}", plan.name),
                against: true,
                ..plan.clone()
            };
            [plan, other]
        })
        .collect()
}

fn plans(cli: &Cli) -> Vec<Plan> {
    let plan = |name: &str, licenses, connections, healthz| Plan {
        name: name.to_owned(),
        licenses,
        connections,
        healthz,
        against: false,
    };
    let (large, small) = (cli.licenses, cli.small_licenses);
    match cli.scenario {
        Scenario::Single => vec![plan("single", large, cli.connections, false)],
        Scenario::Throughput => vec![plan("throughput", large, 64, false)],
        Scenario::Latency => vec![plan("latency", large, 4, false)],
        Scenario::Flatness => vec![
            plan("flatness-small", small, 4, false),
            plan("latency", large, 4, false),
        ],
        Scenario::Ceiling => vec![plan("ceiling", small, cli.connections, true)],
        Scenario::Issue => vec![
            plan("throughput", large, 64, false),
            plan("latency", large, 4, false),
            plan("flatness-small", small, 4, false),
            plan("ceiling", small, 64, true),
        ],
    }
}

/// The machine the numbers were taken on.
#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    memory_mib: u64,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            memory_mib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kib| kib / 1024),
        }
    }
}

/// Everything the run produced: what stdout and `--json` carry.
#[derive(Debug, Serialize)]
struct Results {
    baseline_note: &'static str,
    command: Vec<String>,
    machine: Machine,
    server_binary: PathBuf,
    /// `--against`: the binary of the `[B]` rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    against_binary: Option<PathBuf>,
    client_threads: usize,
    /// Server processes on the one database (`--servers`).
    servers: u16,
    warmup_seconds: u64,
    duration_seconds: u64,
    data_sets: Vec<Manifest>,
    scenarios: Vec<ScenarioResult>,
    targets: Vec<report::TargetCheck>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("keysmith-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The order of the measured runs, as (run number from 1, scenario index):
/// in rounds, the first run of every scenario, then the second, and so on.
/// These VMs drift by 10–20% within minutes, and scenarios compared with
/// each other (flatness: 10k against 1M licenses) must not each get a
/// different stretch of that drift. At least one run each.
///
/// With `against` the scenarios come in pairs (`with_against`: a scenario,
/// then the same on the second binary), and every second round runs each
/// pair the other way round: in one session the first run of a pair was
/// the faster in seven pairs of eight, whichever binary it was.
fn run_order(scenarios: usize, runs: usize, against: bool) -> Vec<(usize, usize)> {
    (1..=runs.max(1))
        .flat_map(|run| {
            let swap = against && run % 2 == 0;
            (0..scenarios).map(move |index| (run, if swap { index ^ 1 } else { index }))
        })
        .collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is inside the workspace")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The server binary, built first unless told otherwise.
fn server_binary(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(path) = &cli.server_bin {
        return Ok(path.clone());
    }
    let path = target_dir().join("release").join("keysmith-server");
    if !cli.no_build {
        eprintln!("building the server: cargo build --release -p keysmith-server");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "-p", "keysmith-server"])
            .current_dir(workspace_root())
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release -p keysmith-server failed");
        }
    }
    if !path.exists() {
        bail!(
            "{} is missing; run `cargo build --release -p keysmith-server`",
            path.display()
        );
    }
    Ok(path)
}

/// Runs every planned scenario; `Ok(false)` when any answer was unexpected.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    if cli.servers > 1 && cli.database.is_none() {
        bail!("--servers above 1 needs --database: SQLite serves one process");
    }
    let binary = server_binary(&cli)?;
    let server = ServerOptions {
        binary: binary.clone(),
        database: cli.database.clone(),
        extra_args: cli.server_args.clone(),
    };
    let against = match &cli.against {
        Some(path) if !path.exists() => bail!("--against {}: no such file", path.display()),
        Some(path) => Some(ServerOptions {
            binary: path.clone(),
            ..server.clone()
        }),
        None => None,
    };
    let data_root = cli
        .data_root
        .clone()
        .unwrap_or_else(|| target_dir().join("bench-data"));
    let options = |connections| LoadOptions {
        connections,
        threads: cli.client_threads,
        warmup: Duration::from_secs(cli.warmup),
        duration: Duration::from_secs(cli.duration),
        latency_log: cli.latency_log.clone(),
    };

    let plans = if against.is_some() {
        with_against(plans(&cli))
    } else {
        plans(&cli)
    };
    let mut datasets: Vec<(usize, Dataset, Arc<Target>)> = Vec::new();
    for plan in &plans {
        if datasets.iter().any(|(n, ..)| *n == plan.licenses) {
            continue;
        }
        let dataset = Dataset::prepare(
            &data_root,
            plan.licenses,
            cli.fresh,
            &server,
            cli.seed_connections,
        )
        .await?;
        let workload = Workload::new(Arc::new(dataset.keys.clone()))?;
        datasets.push((plan.licenses, dataset, Arc::new(Target::Validate(workload))));
    }

    if cli.seed_only {
        return Ok(true);
    }

    let mut runs: Vec<Vec<Measurement>> = plans.iter().map(|_| Vec::new()).collect();
    let mut perf_file = cli.perf_record.clone();
    let order = run_order(plans.len(), cli.runs, against.is_some());
    let several = order.len() > 1;
    for (run, index) in order {
        let plan = &plans[index];
        let (_, dataset, workload) = datasets
            .iter()
            .find(|(n, ..)| *n == plan.licenses)
            .expect("prepared above");
        let target = if plan.healthz {
            Arc::new(Target::Healthz)
        } else {
            workload.clone()
        };
        let plan_server = match &against {
            Some(other) if plan.against => other,
            _ => &server,
        };
        let measurement = measure(
            plan_server,
            usize::from(cli.servers),
            dataset,
            target,
            LoadOptions {
                latency_log: cli.latency_log.as_deref().map(|path| {
                    if several {
                        run_log_path(path, &plan.name, run)
                    } else {
                        path.to_owned()
                    }
                }),
                ..options(plan.connections)
            },
            &plan.name,
            perf_file.take(),
        )
        .await?;
        eprintln!("{}", report::run_line(&plan.name, run, &measurement));
        if !measurement.is_clean() {
            eprintln!(
                "!! {} unexpected answers, {} connection errors; e.g.:",
                measurement.unexpected, measurement.connection_errors
            );
            for example in &measurement.examples {
                eprintln!("!!   {example}");
            }
        }
        runs[index].push(measurement);
    }
    let scenarios: Vec<ScenarioResult> = plans
        .iter()
        .zip(runs)
        .map(|(plan, runs)| {
            let numbers: Vec<Numbers> = runs.iter().map(|m| m.numbers).collect();
            ScenarioResult {
                name: plan.name.clone(),
                against: plan.against,
                target: if plan.healthz { "healthz" } else { "validate" }.to_owned(),
                licenses: plan.licenses,
                connections: plan.connections,
                median: Numbers::median(&numbers),
                runs,
            }
        })
        .collect();

    let targets = report::check_targets(&scenarios);
    eprintln!();
    eprint!("{}", report::table(&scenarios, &targets));
    let clean = scenarios.iter().flat_map(|s| &s.runs).all(|m| m.is_clean());
    if !clean {
        eprintln!("\n!! ERRORS: some answers were not what their request should get (see above)");
    }

    let results = Results {
        baseline_note: "numbers measured by keysmith-bench; see docs/performance.md",
        command: std::env::args().collect(),
        machine: Machine::read(),
        server_binary: binary,
        against_binary: cli.against.clone(),
        client_threads: cli.client_threads,
        servers: cli.servers,
        warmup_seconds: cli.warmup,
        duration_seconds: cli.duration,
        data_sets: datasets
            .iter()
            .map(|(_, d, _)| d.manifest.clone())
            .collect(),
        scenarios,
        targets,
    };
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    println!("{}", serde_json::to_string(&results)?);
    Ok(clean)
}

/// The latency log of run `run` of `scenario` when a set has several:
/// `dir/lat.csv` → `dir/lat-throughput-2.csv` (the scenario's name cut down
/// to letters, digits and dashes: `throughput [B]` → `throughput-b`).
fn run_log_path(path: &Path, scenario: &str, run: usize) -> PathBuf {
    let scenario: String = scenario
        .to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let stem = path.file_stem().map_or_else(
        || "latency".into(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{scenario}-{run}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{scenario}-{run}"),
    };
    path.with_file_name(name)
}

/// One run: fresh copy of the data, fresh server, warm-up, measured window.
async fn measure(
    server: &ServerOptions,
    servers: usize,
    dataset: &Dataset,
    target: Arc<Target>,
    options: LoadOptions,
    label: &str,
    perf_record: Option<PathBuf>,
) -> anyhow::Result<Measurement> {
    let data_dir = dataset.run_dir()?;
    let load_average = load_average();
    let process =
        ServerProcess::start(server, &data_dir, &dataset.dir.join("run-server.log")).await?;
    let mut others = Vec::new();
    for n in 2..=servers {
        let log = dataset.dir.join(format!("run-server-{n}.log"));
        others.push(ServerProcess::start(server, &data_dir, &log).await?);
    }
    let idle = process.memory().unwrap_or_default();
    let perf = perf_record.map(|path| {
        let (pid, warmup, duration) = (process.pid, options.warmup, options.duration);
        tokio::spawn(async move { record_profile(pid, warmup, duration, &path).await })
    });
    let addrs: Vec<_> = std::iter::once(&process)
        .chain(&others)
        .map(|p| p.addr)
        .collect();
    let pids: Vec<_> = std::iter::once(&process)
        .chain(&others)
        .map(|p| p.pid)
        .collect();
    let load = load::run(&addrs, target, options, &pids, label).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = process.memory().unwrap_or_default();
    let startup = process.startup;
    for process in std::iter::once(process).chain(others) {
        let status = process.stop(Duration::from_secs(30)).await?;
        if !status.success() {
            eprintln!("!! the server exited with {status} after SIGTERM");
        }
    }
    if let Some(perf) = perf {
        perf.await??;
    }
    let mut measurement = Measurement::new(load, startup, idle, after);
    measurement.load_average_before = load_average;
    Ok(measurement)
}

/// The 1-minute load average, from /proc/loadavg.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `perf record` of the server over the measured window.
async fn record_profile(
    pid: u32,
    warmup: Duration,
    duration: Duration,
    path: &Path,
) -> anyhow::Result<()> {
    tokio::time::sleep(warmup).await;
    let status = tokio::process::Command::new("perf")
        .args(["record", "-F", "499", "--call-graph", "dwarf,8192", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(path)
        .args(["--", "sleep"])
        .arg(duration.as_secs().to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("running perf record (is linux-perf installed?)")?;
    if !status.success() {
        bail!("perf record exited with {status}");
    }
    eprintln!("profile written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_go_in_rounds_across_scenarios() {
        assert_eq!(
            run_order(2, 3, false),
            [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
        );
        assert_eq!(run_order(3, 0, false), [(1, 0), (1, 1), (1, 2)]);
    }

    #[test]
    fn against_swaps_which_binary_goes_first_every_second_round() {
        // Two scenarios, each followed by its `[B]` run.
        assert_eq!(
            run_order(4, 3, true),
            [
                (1, 0),
                (1, 1),
                (1, 2),
                (1, 3),
                (2, 1),
                (2, 0),
                (2, 3),
                (2, 2),
                (3, 0),
                (3, 1),
                (3, 2),
                (3, 3),
            ]
        );
    }

    #[test]
    fn against_runs_each_scenario_on_both_binaries_back_to_back() {
        let cli = Cli::parse_from(["keysmith-bench", "--scenario", "flatness"]);
        let plans = with_against(plans(&cli));
        let names: Vec<_> = plans.iter().map(|p| (p.name.as_str(), p.against)).collect();
        assert_eq!(
            names,
            [
                ("flatness-small", false),
                ("flatness-small [B]", true),
                ("latency", false),
                ("latency [B]", true),
            ]
        );
        assert_eq!(plans[0].licenses, plans[1].licenses);
        assert_eq!(plans[2].connections, plans[3].connections);
    }

    #[test]
    fn the_generator_runs_one_thread_unless_told() {
        assert_eq!(Cli::parse_from(["keysmith-bench"]).client_threads, 1);
        let two = Cli::parse_from(["keysmith-bench", "--client-threads", "2"]);
        assert_eq!(two.client_threads, 2);
    }

    #[test]
    fn each_run_of_a_set_logs_latencies_to_a_file_of_its_own() {
        let base = Path::new("/tmp/x/lat.csv");
        let paths: Vec<PathBuf> = [("throughput", 1), ("throughput", 2), ("throughput [B]", 1)]
            .into_iter()
            .map(|(scenario, run)| run_log_path(base, scenario, run))
            .collect();
        assert_eq!(paths[0], Path::new("/tmp/x/lat-throughput-1.csv"));
        assert_eq!(paths[1], Path::new("/tmp/x/lat-throughput-2.csv"));
        assert_eq!(paths[2], Path::new("/tmp/x/lat-throughput-b-1.csv"));
        assert_eq!(
            run_log_path(Path::new("log"), "flatness-small", 3),
            Path::new("log-flatness-small-3")
        );
    }
}
