//! The load generator: N keep-alive connections, each a task that sends its
//! next request as soon as the previous answer is read (closed loop, like wrk),
//! for a warm-up and then a measured window. Every answer is checked against
//! what its request should get; anything else is counted as an error.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use keysmith_core::LicenseKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::client::Connection;
use crate::dataset::{domain, domain_count};
use crate::server::{memory_of, Memory};

/// Crockford base32, the key alphabet (SPEC §4).
const KEY_ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// How many distinct unknown keys the mix cycles through.
const UNKNOWN_KEYS: usize = 4096;

/// What a request is meant to exercise, and so what it must get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A seeded key with one of its seated domains: 200 `VALID`.
    Valid,
    /// A well-formed key no license has: 404 `LICENSE_NOT_FOUND`.
    Unknown,
    /// A seeded key with one symbol changed: 400 `KEY_MALFORMED`.
    Typo,
    /// `GET /healthz`, to measure the generator and hyper without the app.
    Healthz,
}

impl Kind {
    fn expected(self) -> (StatusCode, &'static str) {
        match self {
            Kind::Valid => (StatusCode::OK, "VALID"),
            Kind::Unknown => (StatusCode::NOT_FOUND, "LICENSE_NOT_FOUND"),
            Kind::Typo => (StatusCode::BAD_REQUEST, "KEY_MALFORMED"),
            Kind::Healthz => (StatusCode::OK, ""),
        }
    }

    /// Decided answers carry a signed token (SPEC §3).
    fn must_be_signed(self) -> bool {
        matches!(self, Kind::Valid | Kind::Unknown)
    }
}

/// What the connections send.
pub enum Target {
    /// `POST /api/v1/validate`: 90% valid, 5% unknown, 5% typos.
    Validate(Workload),
    /// `GET /healthz`.
    Healthz,
}

/// The keys of a seeded data set and the unknown keys to mix in.
pub struct Workload {
    keys: Arc<Vec<String>>,
    unknown: Vec<String>,
}

impl Workload {
    pub fn new(keys: Arc<Vec<String>>) -> anyhow::Result<Workload> {
        let prefix = keys
            .first()
            .and_then(|k| k.split('-').next())
            .unwrap_or("KS")
            .to_owned();
        let unknown = (0..UNKNOWN_KEYS)
            .map(|_| LicenseKey::generate(&prefix).map(|k| k.as_str().to_owned()))
            .collect::<Result<_, _>>()?;
        Ok(Workload { keys, unknown })
    }

    fn next(&self, rng: &mut StdRng) -> (Kind, Bytes) {
        let nonce: u64 = rng.gen();
        let roll = rng.gen_range(0..100);
        let index = rng.gen_range(0..self.keys.len());
        let (kind, key, domain) = if roll < 90 {
            let j = rng.gen_range(0..domain_count(index));
            (Kind::Valid, self.keys[index].clone(), domain(index, j))
        } else if roll < 95 {
            let key = self.unknown[rng.gen_range(0..self.unknown.len())].clone();
            (Kind::Unknown, key, "app0.unknown.example.com".to_owned())
        } else {
            let key = with_typo(&self.keys[index], rng);
            (Kind::Typo, key, domain(index, 0))
        };
        let body = format!(r#"{{"key":"{key}","domain":"{domain}","nonce":"{nonce:016x}"}}"#);
        (kind, Bytes::from(body))
    }
}

/// `key` with one of its 24 symbols replaced by another: a single typo, which
/// the key check always detects.
fn with_typo(key: &str, rng: &mut StdRng) -> String {
    let mut bytes = key.as_bytes().to_vec();
    let body_start = key.find('-').map_or(0, |i| i + 1);
    let positions: Vec<usize> = (body_start..bytes.len())
        .filter(|&i| bytes[i] != b'-')
        .collect();
    let at = positions[rng.gen_range(0..positions.len())];
    let original = bytes[at];
    let replacement = loop {
        let symbol = KEY_ALPHABET[rng.gen_range(0..KEY_ALPHABET.len())];
        if symbol != original {
            break symbol;
        }
    };
    bytes[at] = replacement;
    String::from_utf8(bytes).expect("ASCII")
}

/// How long to load the server and how hard.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub connections: usize,
    /// Generator threads, each with its own runtime.
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Where to write each measured request's send time and latency.
    pub latency_log: Option<std::path::PathBuf>,
}

/// How many answers of one kind came back with one status and code.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub kind: Kind,
    pub status: u16,
    pub code: String,
    pub count: u64,
    pub expected: bool,
}

/// What a load run observed, in the measured window unless said otherwise.
pub struct LoadResult {
    pub seconds: f64,
    /// Latency of each answered request, nanoseconds.
    pub latency: Histogram<u64>,
    pub outcomes: Vec<Outcome>,
    /// Over the whole run, warm-up included.
    pub unexpected: u64,
    pub connection_errors: u64,
    /// A few unexpected answers or errors, to show.
    pub examples: Vec<String>,
    /// Largest VmRSS sampled during the run.
    pub peak_memory: Memory,
    /// CPU time the server and the generator used in the window.
    pub cpu: CpuTimes,
    /// How many threads the generator ran on.
    pub generator_threads: usize,
    /// Time in the window the generator's threads were ready to run but
    /// waited for a core, summed: while one waits, the answers the server
    /// has sent it sit unread, and their latency counts the wait.
    pub generator_wait_seconds: f64,
}

/// CPU time (user + system, all threads) of the server and of this process,
/// and the whole machine's CPU time and the part of it a hypervisor took.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuTimes {
    pub server_seconds: f64,
    /// Of which the SQLite writer thread's (`sqlite-writer`; 0 on
    /// PostgreSQL): the part of a validation that copies its usage row.
    pub writer_seconds: f64,
    pub generator_seconds: f64,
    /// All CPUs' time (/proc/stat `cpu`: user through steal), in ticks.
    pub machine_ticks: u64,
    /// Of which idle (`idle` + `iowait`): neither the server nor the
    /// generator had work for that core.
    pub idle_ticks: u64,
    /// Of which stolen: time a virtual CPU had work but its host ran
    /// something else. On a VM this stalls requests for whole time slices.
    pub steal_ticks: u64,
}

impl CpuTimes {
    /// The servers' CPU time is the sum over their processes.
    fn read(server_pids: &[u32]) -> CpuTimes {
        let ticks = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| machine_ticks(&stat))
            .unwrap_or_default();
        CpuTimes {
            server_seconds: server_pids
                .iter()
                .map(|pid| cpu_seconds(&pid.to_string()).unwrap_or(0.0))
                .sum(),
            writer_seconds: server_pids
                .iter()
                .map(|&pid| thread_cpu_seconds(pid, WRITER_THREAD))
                .sum(),
            generator_seconds: cpu_seconds("self").unwrap_or(0.0),
            machine_ticks: ticks.total,
            idle_ticks: ticks.idle,
            steal_ticks: ticks.steal,
        }
    }

    fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            server_seconds: self.server_seconds - earlier.server_seconds,
            writer_seconds: self.writer_seconds - earlier.writer_seconds,
            generator_seconds: self.generator_seconds - earlier.generator_seconds,
            machine_ticks: self.machine_ticks.saturating_sub(earlier.machine_ticks),
            idle_ticks: self.idle_ticks.saturating_sub(earlier.idle_ticks),
            steal_ticks: self.steal_ticks.saturating_sub(earlier.steal_ticks),
        }
    }

    /// The share of the machine's CPU time that was stolen, in percent.
    pub fn steal_percent(&self) -> f64 {
        100.0 * self.steal_ticks as f64 / self.machine_ticks.max(1) as f64
    }

    /// The share of the machine's CPU time that was idle, in percent.
    pub fn idle_percent(&self) -> f64 {
        100.0 * self.idle_ticks as f64 / self.machine_ticks.max(1) as f64
    }
}

/// /proc/stat's first line, in ticks.
#[derive(Debug, Default, PartialEq)]
struct MachineTicks {
    /// user, nice, system, idle, iowait, irq, softirq and steal (guest time
    /// is already in user and nice).
    total: u64,
    /// idle and iowait.
    idle: u64,
    steal: u64,
}

fn machine_ticks(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let steal = *ticks.get(7)?;
    Some(MachineTicks {
        total: ticks.iter().sum(),
        idle: ticks[3] + ticks[4],
        steal,
    })
}

/// How long the calling thread has waited for a core so far, in seconds:
/// its schedstat `run_delay` (0 where the kernel does not keep it).
fn own_run_delay_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|schedstat| run_delay_seconds(&schedstat))
        .unwrap_or(0.0)
}

/// The second field of a schedstat line (time on a run queue, waiting for
/// a core, nanoseconds), in seconds.
fn run_delay_seconds(schedstat: &str) -> Option<f64> {
    let nanos: u64 = schedstat.split_whitespace().nth(1)?.parse().ok()?;
    Some(nanos as f64 / 1e9)
}

/// The server's thread that runs SQLite's writes (its name, as in
/// /proc/PID/task/TID/comm).
const WRITER_THREAD: &str = "sqlite-writer";

/// utime + stime of a process from /proc/PID/stat, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(name_and_cpu_seconds(&stat)?.1)
}

/// The CPU time of the threads of process `pid` named `name`, in seconds.
fn thread_cpu_seconds(pid: u32, name: &str) -> f64 {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    threads
        .flatten()
        .filter_map(|thread| std::fs::read_to_string(thread.path().join("stat")).ok())
        .filter_map(|stat| {
            let (comm, seconds) = name_and_cpu_seconds(&stat)?;
            (comm == name).then_some(seconds)
        })
        .sum()
}

/// The command name (field 2) and utime + stime (fields 14 and 15, in
/// seconds) of a /proc stat line. Linux reports the times in USER_HZ
/// ticks, which is 100 on every architecture Rust targets.
fn name_and_cpu_seconds(stat: &str) -> Option<(&str, f64)> {
    const USER_HZ: f64 = 100.0;
    // The name may hold spaces and parentheses; it ends at the last ')'.
    let (start, end) = (stat.find('(')?, stat.rfind(')')?);
    let mut fields = stat[end + 1..].split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((&stat[start + 1..end], (user + system) as f64 / USER_HZ))
}

impl LoadResult {
    pub fn requests(&self) -> u64 {
        self.latency.len()
    }
}

/// Per-connection tallies, merged at the end.
struct Tally {
    latency: Histogram<u64>,
    outcomes: Vec<Outcome>,
    unexpected: u64,
    connection_errors: u64,
    examples: Vec<String>,
    /// Each measured request's (send time after the window's start, latency,
    /// connection), microseconds, when `LoadOptions::latency_log` asks.
    trace: Option<Vec<(u64, u32, u32)>>,
}

const MAX_EXAMPLES: usize = 5;

impl Tally {
    fn new(log_latencies: bool) -> Tally {
        Tally {
            latency: Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds"),
            outcomes: Vec::new(),
            unexpected: 0,
            connection_errors: 0,
            examples: Vec::new(),
            trace: log_latencies.then(Vec::new),
        }
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(text);
        }
    }

    fn answer(&mut self, kind: Kind, status: StatusCode, body: &[u8], measured: Option<Duration>) {
        let code = code_of(body);
        let (want_status, want_code) = kind.expected();
        let expected = status == want_status
            && code == want_code.as_bytes()
            && (!kind.must_be_signed() || find(body, br#""token":"ey"#).is_some());
        if !expected {
            self.unexpected += 1;
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            self.example(format!("{kind:?} request got {status}: {text}"));
        }
        let Some(latency) = measured else { return };
        self.latency
            .saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        let status = status.as_u16();
        match self
            .outcomes
            .iter_mut()
            .find(|o| o.kind == kind && o.status == status && o.code.as_bytes() == code)
        {
            Some(outcome) => outcome.count += 1,
            None => self.outcomes.push(Outcome {
                kind,
                status,
                code: String::from_utf8_lossy(code).into_owned(),
                count: 1,
                expected,
            }),
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency.add(&other.latency).expect("same bounds");
        for o in other.outcomes {
            match self
                .outcomes
                .iter_mut()
                .find(|m| m.kind == o.kind && m.status == o.status && m.code == o.code)
            {
                Some(mine) => mine.count += o.count,
                None => self.outcomes.push(o),
            }
        }
        self.unexpected += other.unexpected;
        self.connection_errors += other.connection_errors;
        for e in other.examples {
            self.example(e);
        }
        if let (Some(mine), Some(theirs)) = (&mut self.trace, other.trace) {
            mine.extend(theirs);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of the first `"code"` field of a JSON answer, without parsing
/// it: the generator shares the CPU with the server and must stay cheap.
fn code_of(body: &[u8]) -> &[u8] {
    const FIELD: &[u8] = br#""code":""#;
    let Some(at) = find(body, FIELD) else {
        return b"";
    };
    let rest = &body[at + FIELD.len()..];
    &rest[..rest.iter().position(|&b| b == b'"').unwrap_or(rest.len())]
}

/// Loads the servers at `addrs` (connection `i` goes to `addrs[i % n]`) and
/// returns what was measured. Memory is the first server's; CPU is summed.
pub async fn run(
    addrs: &[SocketAddr],
    target: Arc<Target>,
    options: LoadOptions,
    server_pids: &[u32],
    label: &str,
) -> anyhow::Result<LoadResult> {
    let server_pid = server_pids[0];
    let begin = Instant::now();
    let window_start = begin + options.warmup;
    let window_end = window_start + options.duration;
    let answered = Arc::new(AtomicU64::new(0));
    let log_latencies = options.latency_log.is_some();

    // Each generator thread runs its share of the connections on its own
    // single-threaded runtime: no work stealing, no cross-thread wake-ups.
    let threads = options.threads.clamp(1, options.connections.max(1));
    let mut generators = Vec::with_capacity(threads);
    for thread in 0..threads {
        let connections: Vec<usize> = (thread..options.connections).step_by(threads).collect();
        let (target, answered, addrs) = (target.clone(), answered.clone(), addrs.to_vec());
        let generator = std::thread::Builder::new()
            .name(format!("load-{thread}"))
            .spawn(move || -> anyhow::Result<(Tally, f64)> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for connection in connections {
                        tasks.spawn(drive(
                            addrs[connection % addrs.len()],
                            target.clone(),
                            window_start..window_end,
                            answered.clone(),
                            connection as u64,
                            log_latencies,
                        ));
                    }
                    // This thread's wait for a core in the window, read on
                    // this thread at the window's two ends.
                    let waited = tokio::spawn(async move {
                        tokio::time::sleep_until(window_start.into()).await;
                        let before = own_run_delay_seconds();
                        tokio::time::sleep_until(window_end.into()).await;
                        own_run_delay_seconds() - before
                    });
                    let mut tally = Tally::new(log_latencies);
                    while let Some(done) = tasks.join_next().await {
                        tally.merge(done?);
                    }
                    Ok((tally, waited.await?))
                })
            })?;
        generators.push(generator);
    }

    let bar = ProgressBar::new((options.warmup + options.duration).as_secs());
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} s {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    let mut peak = memory_of(server_pid).unwrap_or_default();
    let mut last = (Instant::now(), 0u64);
    let mut cpu_at_start = None;
    loop {
        let now = Instant::now();
        if now >= window_end {
            break;
        }
        // Wake at the window's start exactly, to read the CPU clocks there.
        let tick = now + Duration::from_millis(250);
        let wake = match cpu_at_start {
            None if window_start < tick => window_start,
            _ => tick.min(window_end),
        };
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if cpu_at_start.is_none() && now >= window_start {
            cpu_at_start = Some(CpuTimes::read(server_pids));
        }
        if let Some(m) = memory_of(server_pid) {
            peak.rss_kib = peak.rss_kib.max(m.rss_kib);
            peak.hwm_kib = peak.hwm_kib.max(m.hwm_kib);
        }
        let count = answered.load(Ordering::Relaxed);
        let rate = (count - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
        last = (now, count);
        let phase = if now < window_start {
            "warm-up"
        } else {
            "measuring"
        };
        bar.set_position(now.duration_since(begin).as_secs());
        bar.set_message(format!(
            "{phase}: {rate:>8.0} req/s, server RSS {} MiB",
            peak.rss_kib / 1024
        ));
    }
    let cpu = CpuTimes::read(server_pids).since(cpu_at_start.unwrap_or_default());
    bar.finish_and_clear();

    let mut total = Tally::new(log_latencies);
    let mut generator_wait_seconds = 0.0;
    for generator in generators {
        let (tally, waited) = tokio::task::spawn_blocking(move || generator.join())
            .await?
            .map_err(|_| anyhow::anyhow!("a load generator thread panicked"))??;
        total.merge(tally);
        generator_wait_seconds += waited;
    }
    total.outcomes.sort_by_key(|o| (o.kind, o.status));
    if let (Some(path), Some(trace)) = (&options.latency_log, &total.trace) {
        write_latency_log(path, window_start, trace)
            .map_err(|e| e.context(format!("writing {}", path.display())))?;
    }
    Ok(LoadResult {
        seconds: options.duration.as_secs_f64(),
        latency: total.latency,
        outcomes: total.outcomes,
        unexpected: total.unexpected,
        connection_errors: total.connection_errors,
        examples: total.examples,
        peak_memory: peak,
        cpu,
        generator_threads: threads,
        generator_wait_seconds,
    })
}

/// Writes `trace` as CSV: a first line with the window's start (Unix
/// microseconds, then two zeros), then one line per request: its send time
/// after that start, its latency (both microseconds) and its connection.
fn write_latency_log(
    path: &std::path::Path,
    window_start: Instant,
    trace: &[(u64, u32, u32)],
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let ago = Instant::now().saturating_duration_since(window_start);
    let start = (std::time::SystemTime::now() - ago).duration_since(std::time::UNIX_EPOCH)?;
    writeln!(f, "{},0,0", start.as_micros())?;
    for (at, latency, connection) in trace {
        writeln!(f, "{at},{latency},{connection}")?;
    }
    f.flush()?;
    Ok(())
}

/// One connection's closed loop. A request counts when it was sent and
/// answered inside the window; a broken connection is reopened and counted.
async fn drive(
    addr: SocketAddr,
    target: Arc<Target>,
    window: std::ops::Range<Instant>,
    answered: Arc<AtomicU64>,
    seed: u64,
    log_latencies: bool,
) -> Tally {
    let mut tally = Tally::new(log_latencies);
    let mut rng = StdRng::seed_from_u64(rand::random::<u64>() ^ seed);
    let mut connection: Option<Connection> = None;
    while Instant::now() < window.end {
        let conn = match &mut connection {
            Some(conn) => conn,
            None => match Connection::open(addr, None).await {
                Ok(conn) => connection.insert(conn),
                Err(e) => {
                    tally.connection_errors += 1;
                    tally.example(format!("connect: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let (kind, method, path, body) = match target.as_ref() {
            Target::Validate(workload) => {
                let (kind, body) = workload.next(&mut rng);
                (kind, Method::POST, "/api/v1/validate", body)
            }
            Target::Healthz => (Kind::Healthz, Method::GET, "/healthz", Bytes::new()),
        };
        let sent = Instant::now();
        match conn.send(method, path, body).await {
            Ok((status, answer)) => {
                let done = Instant::now();
                answered.fetch_add(1, Ordering::Relaxed);
                let measured = (sent >= window.start && done <= window.end).then(|| done - sent);
                if let (Some(trace), Some(m)) = (&mut tally.trace, measured) {
                    trace.push((
                        (sent - window.start).as_micros() as u64,
                        u32::try_from(m.as_micros()).unwrap_or(u32::MAX),
                        seed as u32,
                    ));
                }
                tally.answer(kind, status, &answer, measured);
            }
            Err(e) => {
                tally.connection_errors += 1;
                tally.example(format!("{kind:?} request failed: {e:#}"));
                connection = None;
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_is_always_malformed() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let key = LicenseKey::generate("KS").unwrap();
            let typo = with_typo(key.as_str(), &mut rng);
            assert_ne!(typo, key.as_str());
            assert!(LicenseKey::parse(&typo).is_err(), "{typo} passed the check");
        }
    }

    #[test]
    fn idle_and_steal_are_read_from_proc_stat() {
        let stat = "cpu  100 5 50 800 10 1 4 30 7 0\ncpu0 50 2 25 400 5 0 2 15 3 0\n";
        let ticks = MachineTicks {
            total: 1_000,
            idle: 810,
            steal: 30,
        };
        assert_eq!(machine_ticks(stat), Some(ticks));
        assert_eq!(machine_ticks("cpu0 1 2 3\n"), None);
        assert_eq!(machine_ticks("cpu  1 2 3\n"), None);
    }

    #[test]
    fn run_delay_is_schedstat_s_second_field() {
        assert_eq!(run_delay_seconds("2500000000 1500000000 77\n"), Some(1.5));
        assert_eq!(run_delay_seconds("2500000000\n"), None);
    }

    #[test]
    fn a_thread_s_wait_for_a_core_is_read() {
        if !std::path::Path::new("/proc/thread-self/schedstat").exists() {
            eprintln!("skipped: this kernel keeps no /proc/thread-self/schedstat");
            return;
        }
        // One more busy thread than there are cores: at least one of them
        // waits. (Short, so as not to starve the other tests' threads.)
        let waits: Vec<f64> = (0..=std::thread::available_parallelism().map_or(2, |n| n.get()))
            .map(|_| {
                std::thread::spawn(|| {
                    let before = own_run_delay_seconds();
                    let end = Instant::now() + Duration::from_millis(60);
                    while Instant::now() < end {
                        std::hint::black_box(0u64);
                    }
                    own_run_delay_seconds() - before
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(waits.iter().all(|&w| w >= 0.0), "{waits:?}");
        assert!(waits.iter().any(|&w| w > 0.0), "no wait counted: {waits:?}");
    }

    #[test]
    fn a_stat_line_gives_the_name_and_the_cpu_time() {
        let stat = "42 (sqlite (w) x) S 1 42 42 0 -1 4194368 100 0 0 0 250 31 0 0 20 0 9 0";
        assert_eq!(name_and_cpu_seconds(stat), Some(("sqlite (w) x", 2.81)));
        assert_eq!(name_and_cpu_seconds("42 (short) S 1"), None);
    }

    #[test]
    fn a_named_thread_s_cpu_time_is_read_from_proc() {
        let busy = std::thread::Builder::new()
            .name("bench-busy".into())
            .spawn(|| {
                let started = Instant::now();
                let mut x = 0u64;
                while started.elapsed() < Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                thread_cpu_seconds(std::process::id(), "bench-busy")
            })
            .unwrap();
        let seconds = busy.join().unwrap();
        assert!((0.1..=1.0).contains(&seconds), "{seconds} s");
        assert_eq!(
            thread_cpu_seconds(std::process::id(), "no-such-thread"),
            0.0
        );
    }

    #[test]
    fn code_is_read_without_parsing() {
        assert_eq!(code_of(br#"{"valid":true,"code":"VALID","x":1}"#), b"VALID");
        assert_eq!(code_of(br#"{"status":"ok"}"#), b"");
    }

    #[test]
    fn the_mix_is_ninety_five_five() {
        let keys: Vec<String> = (0..100)
            .map(|_| LicenseKey::generate("KS").unwrap().as_str().to_owned())
            .collect();
        let workload = Workload::new(Arc::new(keys)).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            let (kind, body) = workload.next(&mut rng);
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(request["key"].is_string() && request["domain"].is_string());
            counts[kind as usize] += 1;
        }
        assert!((8800..9200).contains(&counts[0]), "{counts:?}");
        assert!((400..600).contains(&counts[1]), "{counts:?}");
        assert!((400..600).contains(&counts[2]), "{counts:?}");
    }
}
