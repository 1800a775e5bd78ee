//! Command line: defaults → flags → `KEYSMITH_*` environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "keysmith-server",
    version,
    about = "Keysmith license server: issues, validates and manages license keys"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    ///
    /// The admin token comes from KEYSMITH_ADMIN_TOKEN; without it, a random
    /// token is generated on first start, printed once, and only its hash is kept.
    Serve(Box<ServeArgs>),
    /// Replace the admin token with a new random one, printed once (only its hash is kept).
    ///
    /// For a token that was lost or leaked. Servers running on the database
    /// take the new token within 5 seconds; the old one stops working then.
    /// Not for a token set by KEYSMITH_ADMIN_TOKEN: change that instead.
    RotateAdminToken(StorageArgs),
    /// Copy a SQLite database into one new file, consistently, while the server runs or not.
    ///
    /// The copy (mode 0600) holds every license, seat, plan and webhook
    /// committed when it starts; usage recorded in the last second or so,
    /// still in the usage journal, is not in it. `restore` puts it back.
    /// On PostgreSQL use pg_dump.
    Backup(BackupArgs),
    /// Put a backup in place of a SQLite database, with the server stopped.
    ///
    /// The files it replaces (the database, its log and the usage journal)
    /// are moved into a new folder beside them, replaced-<UTC time>, not
    /// deleted. On PostgreSQL use pg_restore.
    Restore(RestoreArgs),
    /// Print the public key a server on this data dir (or --signing-key) signs with.
    ///
    /// What the SDK's public_key wants, without starting a server; the key
    /// file is read, never created.
    PublicKey(PublicKeyArgs),
    /// Create a new signing key file (mode 0600) for a key rotation and print its public key.
    ///
    /// Ship the printed public key in your app beside the current one (the
    /// SDK takes a comma-separated list); once that release is out, restart
    /// the servers with --signing-key FILE. An existing file is never overwritten.
    NewSigningKey(NewSigningKeyArgs),
    /// Copy a SQLite database, whole, into an empty PostgreSQL database: the move to several servers.
    ///
    /// Every plan, license (key, status, seats, counts), usage record,
    /// webhook (with its secret), event and delivery, and a generated admin
    /// token, in one transaction; refused while a server runs on the SQLite
    /// database, or when the PostgreSQL one already has plans, licenses or
    /// webhooks. Then start the servers with --database URL and this data
    /// dir's signing key.
    CopyToPostgres(CopyToPostgresArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CopyToPostgresArgs {
    /// The data dir whose keysmith.db to copy.
    #[arg(long, env = "KEYSMITH_DATA_DIR", default_value = "./keysmith-data")]
    pub data_dir: PathBuf,
    /// A SQLite database file to copy instead of <data-dir>/keysmith.db.
    /// (Not KEYSMITH_DATABASE, which may already name the PostgreSQL database.)
    #[arg(long, value_name = "PATH")]
    pub from: Option<PathBuf>,
    /// The PostgreSQL database to copy into: postgres://user:password@host:port/db.
    #[arg(
        long,
        value_name = "URL",
        env = "KEYSMITH_COPY_TO",
        hide_env_values = true
    )]
    pub to: DatabaseUrl,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PublicKeyArgs {
    /// The data dir whose signing.key to read.
    #[arg(long, env = "KEYSMITH_DATA_DIR", default_value = "./keysmith-data")]
    pub data_dir: PathBuf,
    /// The signing key file to read instead of <data-dir>/signing.key.
    #[arg(long, env = "KEYSMITH_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// Print the JSON of GET /api/v1/public-key.
    #[arg(long)]
    pub json: bool,
}

impl PublicKeyArgs {
    pub fn signing_key_path(&self) -> PathBuf {
        signing_key_path(&self.data_dir, &self.signing_key)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct NewSigningKeyArgs {
    /// The new key file to create (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
    /// Print the JSON of GET /api/v1/public-key for the new key.
    #[arg(long)]
    pub json: bool,
}

/// `--signing-key`, or signing.key in the data dir.
fn signing_key_path(data_dir: &std::path::Path, signing_key: &Option<PathBuf>) -> PathBuf {
    signing_key
        .clone()
        .unwrap_or_else(|| data_dir.join("signing.key"))
}

#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// The backup to restore (a file `backup` wrote).
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub storage: StorageArgs,
    /// The new file to write; an existing file is never overwritten.
    #[arg(long, value_name = "FILE")]
    pub to: PathBuf,
}

/// Where the data is: the data dir (SQLite's database, the signing key)
/// and the database URL.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Directory for the SQLite database and the signing key; created if missing.
    #[arg(long, env = "KEYSMITH_DATA_DIR", default_value = "./keysmith-data")]
    pub data_dir: PathBuf,

    /// Database URL: `sqlite://PATH`, or `postgres://user:password@host:port/db` for
    /// several servers on one database (TLS by `?sslmode=`: disable, prefer (the
    /// default), require, verify-ca, verify-full; `&sslrootcert=PATH` for a private
    /// CA, `&sslrootcert=system` for a public one, i.e. verify-full against
    /// Mozilla's roots; `&sslcert=PATH&sslkey=PATH` for a client certificate).
    /// Default: SQLite at <data-dir>/keysmith.db.
    #[arg(long, env = "KEYSMITH_DATABASE", hide_env_values = true)]
    pub database: Option<DatabaseUrl>,
}

impl StorageArgs {
    /// The database URL; an URL of another kind than SQLite's or
    /// PostgreSQL's is refused by its scheme (never echoing the rest,
    /// which may hold a password).
    pub fn database_url(&self) -> anyhow::Result<String> {
        let Some(DatabaseUrl(url)) = &self.database else {
            return Ok(format!(
                "sqlite://{}",
                self.data_dir.join("keysmith.db").display()
            ));
        };
        // `postgres:user:pw@host` (a slash short) is no file name: taken
        // for one, it ran on SQLite in a file named after the password.
        if let Some((scheme, rest)) = url.split_once(':') {
            let known = ["postgres", "postgresql", "sqlite"]
                .iter()
                .any(|k| scheme.eq_ignore_ascii_case(k));
            if known && !rest.starts_with("//") {
                anyhow::bail!(
                    "--database: a {scheme}: URL needs {scheme}:// (postgres://user:password@host:port/db, \
                     sqlite://PATH)"
                );
            }
        }
        if let Some((scheme, _)) = url.split_once("://") {
            let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if is_scheme && !matches!(scheme, "sqlite" | "postgres" | "postgresql") {
                anyhow::bail!(
                    "--database: unsupported URL scheme {scheme}://; use sqlite://PATH \
                     (or a file path) or postgres://user:password@host:port/db"
                );
            }
        }
        Ok(url.clone())
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed at start-up).
    #[arg(long, env = "KEYSMITH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub storage: StorageArgs,

    /// SQLite only: `normal` — an answered write survives a crash of the server
    /// process (it is in the WAL before the answer leaves); a power cut may lose
    /// the last moments of writes, never the database. `full` — every batch is
    /// also fsynced before its answers leave: survives a power cut, costs an
    /// fsync per batch (see docs/performance.md).
    #[arg(long, env = "KEYSMITH_SQLITE_SYNCHRONOUS", value_enum, default_value_t)]
    pub sqlite_synchronous: crate::store::sqlite::Synchronous,

    /// Ed25519 signing key file (mode 0600). Default: <data-dir>/signing.key, created on first start.
    #[arg(long, env = "KEYSMITH_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,

    /// Prefix of the keys this server issues and accepts: 2–8 uppercase letters or digits.
    #[arg(long, env = "KEYSMITH_KEY_PREFIX", default_value = "KS")]
    pub key_prefix: String,

    /// `iss` claim of validation tokens.
    #[arg(long, env = "KEYSMITH_ISSUER", default_value = "keysmith")]
    pub issuer: String,

    /// Header holding the client's country, set by a trusted proxy (e.g. CF-IPCountry).
    #[arg(long, env = "KEYSMITH_COUNTRY_HEADER")]
    pub country_header: Option<String>,

    /// Header holding the client IP, set by a trusted proxy (e.g. X-Forwarded-For): its last
    /// address, the one the proxy in front of the server wrote. Without it, the socket address.
    #[arg(long, env = "KEYSMITH_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "KEYSMITH_MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,

    /// Requests per second each client IP may make to /validate and /deactivate
    /// (bursts of twice that); 0 turns the limit off.
    #[arg(long, env = "KEYSMITH_RATE_LIMIT", default_value_t = 50)]
    pub rate_limit: u32,

    /// Connections served at once; more wait for a free slot.
    #[arg(long, env = "KEYSMITH_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Connections one client address (an IPv6 client's /64) may hold at once; more are
    /// closed as they come. Behind a load balancer every connection comes from it: raise
    /// this above its connection pool, or 0 turns the limit off.
    #[arg(long, env = "KEYSMITH_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    pub max_connections_per_ip: usize,

    /// Seconds a client has to send a request's headers (and between keep-alive requests).
    #[arg(long, env = "KEYSMITH_HEADER_TIMEOUT", default_value_t = 10)]
    pub header_timeout: u64,

    /// Seconds a request may take before it is answered 408.
    #[arg(long, env = "KEYSMITH_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,

    /// Failed lookups (unknown or malformed keys) each client IP may make per
    /// minute on the public routes, and, counted apart, wrong admin tokens on
    /// the management routes; past either, the IP is refused (429) there until
    /// the budget refills. 0 turns both off.
    #[arg(long, env = "KEYSMITH_FAILED_LOOKUP_LIMIT", default_value_t = 30)]
    pub failed_lookup_limit: u32,

    /// Seconds between expiry sweeps (a license's status turns `expired` within this time).
    #[arg(long, env = "KEYSMITH_EXPIRY_INTERVAL", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub expiry_interval: u64,

    /// Days of usage history (`GET /licenses/:id/usage`) to keep; older records
    /// are deleted, oldest first, at start-up and every minute. 0 keeps every
    /// record forever. Validation counts are kept whatever this is.
    #[arg(long, env = "KEYSMITH_USAGE_RETENTION_DAYS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=36_500))]
    pub usage_retention_days: u32,

    /// Days to keep webhook events that are settled (every delivery
    /// delivered or given up), with their delivery attempts; older ones are
    /// deleted at start-up and every minute. Events still being delivered
    /// are kept. 0 keeps them forever.
    #[arg(long, env = "KEYSMITH_WEBHOOK_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=36_500))]
    pub webhook_retention_days: u32,

    /// Seconds one webhook delivery attempt may take.
    #[arg(long, env = "KEYSMITH_WEBHOOK_TIMEOUT", default_value_t = 10)]
    pub webhook_timeout: u64,

    /// Milliseconds before the first webhook retry (jittered between half and all
    /// of it); a later retry waits up to this plus twice the time the event has
    /// been failing, at most --webhook-retry-max-ms.
    #[arg(long, env = "KEYSMITH_WEBHOOK_RETRY_BASE_MS", default_value_t = 20_000)]
    pub webhook_retry_base_ms: u64,

    /// Longest wait between two webhook retries, in milliseconds.
    #[arg(
        long,
        env = "KEYSMITH_WEBHOOK_RETRY_MAX_MS",
        default_value_t = 3_600_000
    )]
    pub webhook_retry_max_ms: u64,

    /// Seconds after the first attempt at which an undelivered event is marked `failed`.
    #[arg(long, env = "KEYSMITH_WEBHOOK_GIVE_UP", default_value_t = 86_400)]
    pub webhook_give_up: u64,

    /// PEM file of CA certificates that webhook receivers' HTTPS
    /// certificates may chain to, besides Mozilla's roots (receivers behind
    /// a private CA). Read at start-up.
    #[arg(long, env = "KEYSMITH_WEBHOOK_CA_FILE", value_name = "PEM")]
    pub webhook_ca_file: Option<PathBuf>,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `keysmith_server=debug`.
    #[arg(long, env = "KEYSMITH_LOG", default_value = "info")]
    pub log: String,
}

impl ServeArgs {
    /// The delivery worker's settings; reads `--webhook-ca-file`.
    pub fn delivery_policy(&self) -> anyhow::Result<crate::webhooks::DeliveryPolicy> {
        use std::time::Duration;
        let roots = match &self.webhook_ca_file {
            Some(path) => crate::webhooks::load_roots(path)?,
            None => Vec::new(),
        };
        Ok(crate::webhooks::DeliveryPolicy {
            timeout: Duration::from_secs(self.webhook_timeout.max(1)),
            retry_base: Duration::from_millis(self.webhook_retry_base_ms),
            retry_max: Duration::from_millis(
                self.webhook_retry_max_ms.max(self.webhook_retry_base_ms),
            ),
            give_up_after: Duration::from_secs(self.webhook_give_up),
            roots,
            ..Default::default()
        })
    }

    pub fn signing_key_path(&self) -> PathBuf {
        signing_key_path(&self.storage.data_dir, &self.signing_key)
    }
}

/// A database URL. It may hold a password, so its `Debug` shows `***`
/// instead (and `--help` does not echo `KEYSMITH_DATABASE`).
#[derive(Clone)]
pub struct DatabaseUrl(pub String);

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<DatabaseUrl, Self::Err> {
        Ok(DatabaseUrl(s.to_owned()))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = &self.0;
        let mut shown = match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.clone(),
            },
            _ => url.clone(),
        };
        if let Some(at) = shown.find("password=") {
            let end = shown[at..].find('&').map_or(shown.len(), |e| at + e);
            shown.replace_range(at + "password=".len()..end, "***");
        }
        f.debug_tuple("DatabaseUrl").field(&shown).finish()
    }
}

#[cfg(test)]
mod database_url_tests {
    use super::DatabaseUrl;

    #[test]
    fn debug_hides_passwords() {
        let shown = |u: &str| format!("{:?}", DatabaseUrl(u.into()));
        assert_eq!(
            shown("postgres://ks:s3cret@db:5432/ks"),
            r#"DatabaseUrl("postgres://ks:***@db:5432/ks")"#
        );
        assert_eq!(
            shown("postgres://db/ks?user=ks&password=s3cret&sslmode=disable"),
            r#"DatabaseUrl("postgres://db/ks?user=ks&password=***&sslmode=disable")"#
        );
        assert_eq!(
            shown("postgres://ks@db/ks"),
            r#"DatabaseUrl("postgres://ks@db/ks")"#
        );
        assert_eq!(
            shown("sqlite://./data/keysmith.db"),
            r#"DatabaseUrl("sqlite://./data/keysmith.db")"#
        );
    }
}

#[cfg(test)]
mod flag_tests {
    use clap::CommandFactory;

    use super::Cli;

    /// SPEC §2: every flag has an env var and `--help` explains it; the
    /// README's table lists each flag with its env var.
    #[test]
    fn every_serve_flag_has_an_env_var_help_and_a_readme_row() {
        let readme = include_str!("../../README.md");
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("a serve command");
        let mut flags = 0;
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            flags += 1;
            let env = arg
                .get_env()
                .and_then(|e| e.to_str())
                .unwrap_or_else(|| panic!("--{long} has no env var"));
            assert_eq!(
                env,
                format!("KEYSMITH_{}", long.to_uppercase().replace('-', "_")),
                "--{long}"
            );
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.len() > 10, "--{long} has no help: {help:?}");
            let row = readme
                .lines()
                .find(|l| l.starts_with('|') && l.contains(&format!("`--{long}`")))
                .unwrap_or_else(|| panic!("README has no row for --{long}"));
            assert!(
                row.contains(&format!("`{env}`")),
                "README's row for --{long} lacks {env}: {row}"
            );
        }
        assert!(flags >= 20, "{flags} flags");
    }
}
