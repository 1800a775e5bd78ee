//! Keysmith license server. Reads top-down: `config` (flags) → `api` (one
//! module per resource) → `license` (the rules) → `store` (the storage trait
//! and its backends) → background workers (`expiry`, `webhooks`,
//! `retention`). `maintenance` has the commands besides `serve` (rotating
//! the admin token, `backup` and `restore`, whose files are `backup`'s,
//! and the signing key's `public-key` and `new-signing-key`).
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod backup;
pub mod config;
pub mod expiry;
pub mod files;
pub mod http;
pub mod ids;
pub mod license;
pub mod maintenance;
pub mod retention;
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
    match config::Cli::parse().command {
        config::Command::Serve(args) => serve_until_signal(*args),
        config::Command::RotateAdminToken(storage) => {
            maintenance::exit(maintenance::rotate_admin_token(storage))
        }
        config::Command::Backup(args) => maintenance::exit(maintenance::backup(args)),
        config::Command::Restore(args) => maintenance::exit(maintenance::restore(args)),
        config::Command::PublicKey(args) => maintenance::exit(maintenance::public_key(args)),
        config::Command::NewSigningKey(args) => {
            maintenance::exit(maintenance::new_signing_key(args))
        }
        config::Command::CopyToPostgres(args) => {
            maintenance::exit(maintenance::copy_to_postgres(args))
        }
    }
}

/// Runs the server until SIGTERM or Ctrl-C; exit code 0 after a clean stop.
pub fn serve_until_signal(args: ServeArgs) -> std::process::ExitCode {
    if let Err(e) = init_logging(&args.log) {
        eprintln!("keysmith-server: --log {:?}: {e}", args.log);
        return std::process::ExitCode::FAILURE;
    }
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

/// Dependencies whose debug output carries request data: tokio-postgres
/// logs every statement with its parameters (license keys, token hashes),
/// the HTTP crates log headers at trace. They stay at `info` unless the
/// filter names them itself.
const CHATTY_DEPENDENCIES: &[&str] = &["tokio_postgres", "hyper", "hyper_util", "reqwest", "h2"];

/// The log filter: `filter`, with `CHATTY_DEPENDENCIES` capped at `info`.
fn log_filter(filter: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    let shown = filter.to_string();
    // The targets the filter names: each directive up to its `[span]` or `=`.
    let named: Vec<&str> = shown
        .split(',')
        .map(|d| d.split(['[', '=']).next().unwrap_or(d))
        .collect();
    for dependency in CHATTY_DEPENDENCIES {
        if !named.contains(dependency) {
            let cap = format!("{dependency}=info")
                .parse()
                .expect("a valid directive");
            filter = filter.add_directive(cap);
        }
    }
    Ok(filter)
}

fn init_logging(filter: &str) -> Result<(), String> {
    let filter = log_filter(filter)?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
    Ok(())
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
    let database_url = args.storage.database_url()?;
    let delivery = args.delivery_policy()?;
    let data_dir = &args.storage.data_dir;
    // For the server's user alone: the signing key and the database.
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
    dir.create(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let store = store::open(&database_url, args.sqlite_synchronous).await?;
    let sqlite = store::sqlite_path(&database_url);
    let in_use = store.has_licenses().await?;
    let sqlite_left = data_dir.join("keysmith.db");
    if sqlite.is_none()
        && !in_use
        && sqlite_left.exists()
        && store::sqlite::has_licenses_at(&sqlite_left)
    {
        // Started on an empty database before `copy-to-postgres`, the
        // server would tell every app LICENSE_NOT_FOUND, and the apps would
        // put that signed answer over their cached VALID.
        anyhow::bail!(
            "{} holds a SQLite database with licenses, and the PostgreSQL database has none: \
             started on it, the server would tell every app LICENSE_NOT_FOUND. Copy the \
             SQLite database across first (`keysmith-server copy-to-postgres --data-dir … \
             --to URL`), or, to start on the empty PostgreSQL database anyway, move that \
             file out of the data dir",
            sqlite_left.display()
        );
    }
    let key_path = args.signing_key_path();
    if !key_path.exists() && in_use {
        // A new key here would sign answers no app trusts: every license
        // of the database is pinned to the key its first server made.
        anyhow::bail!(
            "no signing key at {}, and the database already has licenses: apps trust \
             only the key their answers have been signed with. Put that key file there \
             (or name it with --signing-key); if it is lost, create one with \
             `keysmith-server new-signing-key --to FILE` and ship its public key to the \
             apps first (docs/security.md, \"Stolen signing key\")",
            key_path.display()
        );
    }
    let signing_key = signing::load_or_create(&key_path)?;
    let signer = signing::Signer::new(signing_key, args.issuer.clone());
    // Bound before the admin token is settled: a first start that cannot
    // listen must not generate (and lose) the token it prints.
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let admin = auth::AdminAuth::establish(store.as_ref()).await?;
    let addr = listener.local_addr()?;
    let storage = match sqlite {
        Some(path) => format!("SQLite database {}", path.display()),
        None => store::postgres::describe(&database_url),
    };
    tracing::info!(%addr, key_id = %signer.key_id(), %storage, "keysmith-server ready");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "keysmith-server listening on http://{addr}");
        let _ = out.flush();
    }

    let sweeper = tokio::spawn(expiry::run(
        store.clone(),
        std::time::Duration::from_secs(args.expiry_interval),
    ));
    let retention = tokio::spawn(retention::run(
        store.clone(),
        retention::Days {
            usage: args.usage_retention_days,
            events: args.webhook_retention_days,
        },
    ));
    let state = api::AppState::new(store.clone(), Arc::new(signer), admin, &args);
    let deliverer = tokio::spawn(webhooks::run(store.clone(), delivery));
    let rotations = tokio::spawn(
        state
            .admin
            .clone()
            .follow_rotations(store.clone(), auth::ROTATION_CHECK_EVERY),
    );
    let limits = [state.limits.clone(), state.admin_failures.clone()];
    let forgetter = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            for limits in &limits {
                limits.forget_idle();
            }
        }
    });
    let app = api::router(
        state,
        args.max_body_bytes,
        std::time::Duration::from_secs(args.request_timeout),
    );
    let limits = http::ConnLimits {
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
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
    for task in [sweeper, forgetter, deliverer, retention, rotations] {
        task.abort();
        let _ = task.await;
    }
    // The last handle: dropping it waits for the writer's final batch.
    drop(store);
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_logging_keeps_dependencies_that_log_secrets_at_info() {
        let shown = super::log_filter("debug").unwrap().to_string();
        assert!(shown.contains("tokio_postgres=info"), "{shown}");
        let named = super::log_filter("debug,tokio_postgres=trace")
            .unwrap()
            .to_string();
        assert!(named.contains("tokio_postgres=trace"), "{named}");
        assert!(!named.contains("tokio_postgres=info"), "{named}");
        // A directive for another crate whose name contains a capped one
        // (hyper_util, sha2) leaves the capped one capped.
        let others = super::log_filter("debug,hyper_util=trace,sha2=debug")
            .unwrap()
            .to_string();
        assert!(others.contains("hyper=info"), "{others}");
        assert!(others.contains("h2=info"), "{others}");
        assert!(super::log_filter("info,=[").is_err());
    }
}
