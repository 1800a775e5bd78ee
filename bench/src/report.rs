//! Results: one `Measurement` per run, medians per scenario, the issue's
//! targets side by side, printed as a table and serialised as JSON.

use serde::Serialize;

use crate::load::{LoadResult, Outcome};
use crate::server::{Memory, Startup};

/// The numbers of one run; a scenario's summary holds their medians.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Numbers {
    /// Answers per second in the measured window (all kinds of the mix).
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Spawn → first `/healthz` 200.
    pub startup_ms: f64,
    /// Server VmRSS once healthy, before any load.
    pub rss_idle_mib: f64,
    /// Largest server VmRSS sampled (every 250 ms) under load.
    pub rss_load_peak_mib: f64,
    /// Server VmRSS one second after the load stopped.
    pub rss_after_mib: f64,
    /// Server VmHWM (the kernel's own peak) after the load.
    pub hwm_mib: f64,
    /// CPU cores the server kept busy in the window, on average.
    pub server_cores: f64,
    /// Server CPU time per answered request, microseconds: the cost of a
    /// request, steadier than throughput on a shared machine.
    pub server_cpu_us_per_request: f64,
    /// Of which the SQLite writer thread's: copying usage rows, folding the
    /// counters, committing (0 on PostgreSQL).
    pub writer_cpu_us_per_request: f64,
    /// The generator's CPU time per request, microseconds.
    pub generator_cpu_us_per_request: f64,
    /// The share of the machine's CPU time a hypervisor took in the window
    /// (/proc/stat `steal`), percent: a VM's own noise, 0 on bare metal.
    pub steal_percent: f64,
    /// The share of the window the generator's threads were ready to run
    /// but waited for a core, percent (per thread): answers the server had
    /// sent waited unread that long, and their latency counts it.
    pub generator_wait_percent: f64,
    /// The share of the machine's CPU time that was idle, percent.
    pub idle_percent: f64,
}

impl Numbers {
    /// Each field's median over `runs` (for an even count, the mean of the
    /// middle two).
    pub fn median(runs: &[Numbers]) -> Numbers {
        let m = |field: fn(&Numbers) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(field).collect();
            values.sort_by(f64::total_cmp);
            match values.len() {
                0 => f64::NAN,
                n if n % 2 == 1 => values[n / 2],
                n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
            }
        };
        Numbers {
            throughput_rps: m(|n| n.throughput_rps),
            p50_ms: m(|n| n.p50_ms),
            p90_ms: m(|n| n.p90_ms),
            p99_ms: m(|n| n.p99_ms),
            p999_ms: m(|n| n.p999_ms),
            max_ms: m(|n| n.max_ms),
            mean_ms: m(|n| n.mean_ms),
            startup_ms: m(|n| n.startup_ms),
            rss_idle_mib: m(|n| n.rss_idle_mib),
            rss_load_peak_mib: m(|n| n.rss_load_peak_mib),
            rss_after_mib: m(|n| n.rss_after_mib),
            hwm_mib: m(|n| n.hwm_mib),
            server_cores: m(|n| n.server_cores),
            server_cpu_us_per_request: m(|n| n.server_cpu_us_per_request),
            writer_cpu_us_per_request: m(|n| n.writer_cpu_us_per_request),
            generator_cpu_us_per_request: m(|n| n.generator_cpu_us_per_request),
            steal_percent: m(|n| n.steal_percent),
            generator_wait_percent: m(|n| n.generator_wait_percent),
            idle_percent: m(|n| n.idle_percent),
        }
    }
}

/// One run: a fresh server on a fresh copy of the data set, loaded once.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub numbers: Numbers,
    /// The machine's 1-minute load average just before the run: on a shared
    /// machine, how much else was competing for the CPU.
    pub load_average_before: Option<f64>,
    pub requests: u64,
    pub seconds: f64,
    pub startup: Startup,
    pub outcomes: Vec<Outcome>,
    pub unexpected: u64,
    pub connection_errors: u64,
    pub examples: Vec<String>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Measurement {
    pub fn new(load: LoadResult, startup: Startup, idle: Memory, after: Memory) -> Measurement {
        let ms = |ns: u64| ns as f64 / 1e6;
        let latency = &load.latency;
        let per_request = |seconds: f64| seconds * 1e6 / (load.requests().max(1) as f64);
        Measurement {
            load_average_before: None,
            numbers: Numbers {
                throughput_rps: load.requests() as f64 / load.seconds,
                p50_ms: ms(latency.value_at_quantile(0.50)),
                p90_ms: ms(latency.value_at_quantile(0.90)),
                p99_ms: ms(latency.value_at_quantile(0.99)),
                p999_ms: ms(latency.value_at_quantile(0.999)),
                max_ms: ms(latency.max()),
                mean_ms: latency.mean() / 1e6,
                startup_ms: startup.healthy_ms,
                rss_idle_mib: mib(idle.rss_kib),
                rss_load_peak_mib: mib(load.peak_memory.rss_kib.max(after.rss_kib)),
                rss_after_mib: mib(after.rss_kib),
                hwm_mib: mib(after.hwm_kib.max(load.peak_memory.hwm_kib)),
                server_cores: load.cpu.server_seconds / load.seconds,
                server_cpu_us_per_request: per_request(load.cpu.server_seconds),
                writer_cpu_us_per_request: per_request(load.cpu.writer_seconds),
                generator_cpu_us_per_request: per_request(load.cpu.generator_seconds),
                steal_percent: load.cpu.steal_percent(),
                generator_wait_percent: 100.0 * load.generator_wait_seconds
                    / (load.seconds * load.generator_threads.max(1) as f64),
                idle_percent: load.cpu.idle_percent(),
            },
            requests: load.requests(),
            seconds: load.seconds,
            startup,
            outcomes: load.outcomes,
            unexpected: load.unexpected,
            connection_errors: load.connection_errors,
            examples: load.examples,
        }
    }

    pub fn is_clean(&self) -> bool {
        self.unexpected == 0 && self.connection_errors == 0
    }
}

/// A scenario: the same measurement repeated `runs` times.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    /// Measured on the `--against` binary (its name ends in ` [B]`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub against: bool,
    /// `validate` or `healthz`.
    pub target: String,
    pub licenses: usize,
    pub connections: usize,
    pub median: Numbers,
    pub runs: Vec<Measurement>,
}

/// One target of the issue and whether the measured value meets it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// Checks the issue's targets against whatever scenarios ran.
pub fn check_targets(scenarios: &[ScenarioResult]) -> Vec<TargetCheck> {
    let scenarios: Vec<&ScenarioResult> = scenarios.iter().filter(|s| !s.against).collect();
    let find = |name: &str| scenarios.iter().copied().find(|s| s.name == name);
    let mut checks = Vec::new();
    if let Some(s) = find("throughput") {
        let n = &s.median;
        checks.push(TargetCheck {
            what: format!(
                "throughput, {} conns, {} licenses",
                s.connections, s.licenses
            ),
            target: "≥ 30000 req/s, p99 ≤ 5 ms".into(),
            measured: format!("{:.0} req/s, p99 {:.2} ms", n.throughput_rps, n.p99_ms),
            met: n.throughput_rps >= 30_000.0 && n.p99_ms <= 5.0,
        });
    }
    if let Some(s) = find("latency") {
        let n = &s.median;
        checks.push(TargetCheck {
            what: format!("latency, {} conns, {} licenses", s.connections, s.licenses),
            target: "p50 ≤ 0.3 ms, p99 ≤ 1 ms".into(),
            measured: format!("p50 {:.3} ms, p99 {:.3} ms", n.p50_ms, n.p99_ms),
            met: n.p50_ms <= 0.3 && n.p99_ms <= 1.0,
        });
    }
    if let (Some(small), Some(large)) = (find("flatness-small"), find("latency")) {
        let (a, b) = (small.median.p50_ms, large.median.p50_ms);
        let ratio = a.max(b) / a.min(b);
        checks.push(TargetCheck {
            what: format!(
                "flatness, p50 at {} vs {} licenses",
                small.licenses, large.licenses
            ),
            target: "within 20%".into(),
            measured: format!("{a:.3} ms vs {b:.3} ms ({:+.0}%)", (b / a - 1.0) * 100.0),
            met: ratio <= 1.2,
        });
    }
    let largest = scenarios
        .iter()
        .filter(|s| s.target == "validate")
        .max_by_key(|s| s.licenses);
    if let Some(largest) = largest {
        let at_size = scenarios
            .iter()
            .filter(|s| s.target == "validate" && s.licenses == largest.licenses);
        let startup = at_size
            .clone()
            .map(|s| s.median.startup_ms)
            .fold(0.0, f64::max);
        checks.push(TargetCheck {
            what: format!("start-up, {} licenses", largest.licenses),
            target: "≤ 1000 ms".into(),
            measured: format!("{startup:.0} ms"),
            met: startup <= 1000.0,
        });
        let rss = at_size
            .map(|s| s.median.rss_load_peak_mib)
            .fold(0.0, f64::max);
        checks.push(TargetCheck {
            what: format!("resident memory under load, {} licenses", largest.licenses),
            target: "≤ 150 MB".into(),
            measured: format!("{rss:.0} MiB"),
            met: rss * 1.048_576 <= 150.0,
        });
    }
    checks
}

/// The results table, one line per scenario (medians), then the targets.
pub fn table(scenarios: &[ScenarioResult], targets: &[TargetCheck]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<18} {:>9} {:>5} {:>4} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6} {:>7}\n",
        "scenario",
        "licenses",
        "conns",
        "runs",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "start ms",
        "RSS MiB",
        "srv µs/r",
        "wrt µs/r",
        "gen µs/r",
        "gen wait%",
        "idle %",
        "steal %"
    ));
    for s in scenarios {
        let n = &s.median;
        out.push_str(&format!(
            "{:<18} {:>9} {:>5} {:>4} {:>9.0} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.2} {:>8.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.0} {:>6.0} {:>7.1}\n",
            s.name,
            s.licenses,
            s.connections,
            s.runs.len(),
            n.throughput_rps,
            n.p50_ms,
            n.p90_ms,
            n.p99_ms,
            n.p999_ms,
            n.max_ms,
            n.startup_ms,
            n.rss_load_peak_mib,
            n.server_cpu_us_per_request,
            n.writer_cpu_us_per_request,
            n.generator_cpu_us_per_request,
            n.generator_wait_percent,
            n.idle_percent,
            n.steal_percent
        ));
    }
    if !targets.is_empty() {
        out.push_str("\ntargets (issue 8):\n");
        for t in targets {
            out.push_str(&format!(
                "  [{}] {:<48} target {:<26} measured {}\n",
                if t.met { "met" } else { "NOT met" },
                t.what,
                t.target,
                t.measured
            ));
        }
    }
    out
}

/// One run on one line, printed as it finishes.
pub fn run_line(name: &str, run: usize, m: &Measurement) -> String {
    let n = &m.numbers;
    let answers: Vec<String> = m
        .outcomes
        .iter()
        .map(|o| format!("{} {}×{}", o.status, o.code, o.count))
        .collect();
    format!(
        "{name} run {run} (load avg {:.1} before): {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, max {:.2} ms, start-up {:.0} ms, RSS {:.0}→{:.0} MiB, server {:.2} cores {:.1} µs/req (writer {:.1}), generator {:.1} µs/req (waited for a core {:.0}% of the time), idle {:.0}%, steal {:.1}% [{}]",
        m.load_average_before.unwrap_or(f64::NAN),
        n.throughput_rps,
        n.p50_ms,
        n.p99_ms,
        n.max_ms,
        n.startup_ms,
        n.rss_idle_mib,
        n.rss_load_peak_mib,
        n.server_cores,
        n.server_cpu_us_per_request,
        n.writer_cpu_us_per_request,
        n.generator_cpu_us_per_request,
        n.generator_wait_percent,
        n.idle_percent,
        n.steal_percent,
        answers.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str, against: bool, rps: f64, startup_ms: f64) -> ScenarioResult {
        ScenarioResult {
            name: name.to_owned(),
            against,
            target: "validate".into(),
            licenses: 1_000_000,
            connections: 64,
            median: Numbers {
                throughput_rps: rps,
                p99_ms: 4.0,
                startup_ms,
                ..Numbers::default()
            },
            runs: Vec::new(),
        }
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let runs = |rates: &[f64]| -> Vec<Numbers> {
            rates
                .iter()
                .map(|&throughput_rps| Numbers {
                    throughput_rps,
                    ..Numbers::default()
                })
                .collect()
        };
        assert_eq!(Numbers::median(&runs(&[3.0, 1.0, 2.0])).throughput_rps, 2.0);
        assert_eq!(Numbers::median(&runs(&[4.0, 1.0])).throughput_rps, 2.5);
        assert_eq!(
            Numbers::median(&runs(&[4.0, 1.0, 2.0, 3.0])).throughput_rps,
            2.5
        );
        assert!(Numbers::median(&[]).throughput_rps.is_nan());
    }

    #[test]
    fn the_targets_are_checked_on_the_first_binary_only() {
        let checks = check_targets(&[
            scenario("throughput [B]", true, 40_000.0, 5_000.0),
            scenario("throughput", false, 20_000.0, 5.0),
        ]);
        let measured = |what: &str| {
            let check = checks.iter().find(|c| c.what.starts_with(what)).unwrap();
            (check.measured.as_str(), check.met)
        };
        assert_eq!(measured("throughput"), ("20000 req/s, p99 4.00 ms", false));
        assert_eq!(measured("start-up"), ("5 ms", true));
    }
}
