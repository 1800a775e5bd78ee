//! Keysmith license server. Reads top-down: `config` (flags) → `api` (one
//! module per resource) → `license` (the rules) → `store` (the storage trait
//! and its backends) → background workers (`expiry`).
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
pub mod expiry;
pub mod http;
pub mod ids;
pub mod license;
pub mod signing;
pub mod store;
pub mod webhooks;

use std::future::Future;
use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::ServeArgs;

/// The `keysmith-server` program: parses the command line and runs it.
pub fn main() -> std::process::ExitCode {
    use clap::Parser;
    let config::Cli {
        command: config::Command::Serve(args),
    } = config::Cli::parse();
    serve_until_signal(args)
}

/// Runs the server until SIGTERM or Ctrl-C; exit code 0 after a clean stop.
pub fn serve_until_signal(args: ServeArgs) -> std::process::ExitCode {
    init_logging(&args.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keysmith-server: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("keysmith-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing in-flight requests");
}

/// Opens storage, binds, serves until `shutdown` completes, then drains.
pub async fn serve(
    args: ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !keysmith_core::key::is_valid_prefix(&args.key_prefix) {
        anyhow::bail!(
            "--key-prefix {:?} must be 2 to 8 uppercase letters or digits",
            args.key_prefix
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let signing_key = signing::load_or_create(&args.signing_key_path())?;
    let signer = signing::Signer::new(signing_key, args.issuer.clone());
    let store = store::open(&args.database_url(), args.sqlite_synchronous).await?;
    let admin = auth::AdminAuth::establish(store.as_ref()).await?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, key_id = %signer.key_id, "keysmith-server ready");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "keysmith-server listening on http://{addr}");
        let _ = out.flush();
    }

    let sweeper = tokio::spawn(expiry::run(
        store.clone(),
        std::time::Duration::from_secs(args.expiry_interval),
    ));
    let state = api::AppState::new(store.clone(), Arc::new(signer), admin, &args);
    let deliverer = tokio::spawn(webhooks::run(store.clone(), args.delivery_policy()));
    let limits = state.limits.clone();
    let forgetter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            limits.forget_idle();
        }
    });
    let app = api::router(
        state,
        args.max_body_bytes,
        std::time::Duration::from_secs(args.request_timeout),
    );
    let limits = http::ConnLimits {
        max_connections: args.max_connections,
        header_read_timeout: std::time::Duration::from_secs(args.header_timeout),
    };
    http::serve(
        listener,
        app,
        limits,
        shutdown,
        std::time::Duration::from_secs(30),
    )
    .await;
    for task in [sweeper, forgetter, deliverer] {
        task.abort();
        let _ = task.await;
    }
    // The last handle: dropping it waits for the writer's final batch.
    drop(store);
    tracing::info!("stopped");
    Ok(())
}
