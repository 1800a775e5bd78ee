//! The server under test: a separate `keysmith-server` process on
//! 127.0.0.1:0, its start-up time and its resident memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::client::Connection;

/// The admin token the harness gives every server it starts.
pub const ADMIN_TOKEN: &str = "keysmith-bench-admin-token";

/// How to start the server; the same for seeding and for measuring.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub binary: PathBuf,
    /// `--database URL`; `None` is SQLite in the data dir.
    pub database: Option<String>,
    /// Passed through after the harness's own flags.
    pub extra_args: Vec<String>,
}

/// How long the server took to come up.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Startup {
    /// Spawn → the "listening on" line on stdout.
    pub listening_ms: f64,
    /// Spawn → the first `GET /healthz` answered 200.
    pub healthy_ms: f64,
}

/// Resident memory of the server process, from /proc/PID/status.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the most that was ever resident.
    pub hwm_kib: u64,
}

/// A running server process; killed if dropped without `stop`.
pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub startup: Startup,
}

impl ServerProcess {
    /// Starts the server on `data_dir`, logging to `log`, and waits until
    /// `/healthz` answers.
    pub async fn start(
        options: &ServerOptions,
        data_dir: &Path,
        log: &Path,
    ) -> anyhow::Result<ServerProcess> {
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("creating the server log {}", log.display()))?;
        let mut command = Command::new(&options.binary);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--rate-limit", "0"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("KEYSMITH_ADMIN_TOKEN", ADMIN_TOKEN)
            // All load comes from one IP and 10% of it is unknown or mistyped
            // keys: turn the failed-lookup limit off too. An environment
            // variable, not a flag, so that servers without it still start.
            .env("KEYSMITH_FAILED_LOOKUP_LIMIT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        if let Some(url) = &options.database {
            command.args(["--database", url]);
        }
        command.args(&options.extra_args);

        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", options.binary.display()))?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let wait_for_line = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("keysmith-server listening on http://") {
                    return Ok(addr.trim().parse::<SocketAddr>()?);
                }
            }
            bail!("the server closed its stdout before it listened")
        };
        let addr = match tokio::time::timeout(Duration::from_secs(120), wait_for_line).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => bail!("{e:#}; its log ({}):\n{}", log.display(), log_tail(log)),
            Err(_) => bail!(
                "the server did not listen within 120 s; see {}",
                log.display()
            ),
        };
        let listening = spawned.elapsed();
        // Keep draining stdout so that the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        wait_healthy(addr).await?;
        let healthy = spawned.elapsed();
        Ok(ServerProcess {
            child,
            pid,
            addr,
            startup: Startup {
                listening_ms: millis(listening),
                healthy_ms: millis(healthy),
            },
        })
    }

    pub fn memory(&self) -> Option<Memory> {
        memory_of(self.pid)
    }

    /// SIGTERM, then waits for the clean exit the spec promises (pending
    /// writes flushed); SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        let term = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .context("running kill -TERM")?;
        if !term.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!("the server did not stop within {grace:?} of SIGTERM; killed it")
            }
        }
    }
}

async fn wait_healthy(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_error = None;
    while Instant::now() < deadline {
        match health_check(addr).await {
            Ok(StatusCode::OK) => return Ok(()),
            Ok(status) => last_error = Some(format!("status {status}")),
            Err(e) => last_error = Some(format!("{e:#}")),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!(
        "GET /healthz did not answer 200 within 60 s (last: {})",
        last_error.unwrap_or_default()
    )
}

async fn health_check(addr: SocketAddr) -> anyhow::Result<StatusCode> {
    let mut connection = Connection::open(addr, None).await?;
    let (status, _) = connection
        .send(Method::GET, "/healthz", Bytes::new())
        .await?;
    Ok(status)
}

/// VmRSS and VmHWM of a process, or `None` once it is gone.
pub fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
