//! PostgreSQL backend: any number of server processes share one database,
//! with nothing coordinated in memory.
//!
//! Every method is one transaction (or one statement) on a pooled
//! connection, at PostgreSQL's default READ COMMITTED. What must not race
//! across processes is decided under a row lock or claimed by a conditional
//! statement:
//!
//! - a license's seats, counters and first activation, and every change to
//!   it: under its row lock, taken before anything is read (a validation
//!   takes it with the `UPDATE` that counts it, other changes with
//!   `SELECT … FOR UPDATE`), so the count of seats and `activated_at` are exact;
//! - the expiry sweep: `UPDATE … WHERE seq IN (SELECT … FOR UPDATE SKIP
//!   LOCKED)`, so each license is expired by one process only;
//! - webhook deliveries: claimed with `FOR UPDATE SKIP LOCKED` and a lease,
//!   only the oldest pending delivery per (endpoint, license);
//! - a plan a license is being created on is held `FOR KEY SHARE`, so it
//!   cannot be deleted under it.
//!
//! Times are Unix seconds (milliseconds for deliveries) in BIGINT columns,
//! as in SQLite, so the two backends read alike; JSON values are JSONB.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use keysmith_core::wire::{License, LicenseSummary, Plan};
use keysmith_core::{Code, LicenseKey, Status};
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::Row;

use super::{
    event_names, from_unix, license_tag, opt_time, plan_tag, status_of, AttemptResult, Deactivated,
    DeliveryAttempt, DeliveryJob, DeliveryNext, EventType, LicenseFilter, LicensePage,
    LicensePatch, NewLicense, NewWebhook, PageRequest, Precondition, Result, Store, StoreError,
    UsagePage, UsageRecord, UsageTotals, ValidationInput, ValidationOutcome, Webhook, WebhookPatch,
    WEBHOOK_COLUMNS,
};
use crate::ids;
use crate::license::{decide, default_expiry, effective_status, transition, Decision, Seats};

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            Some(db) => {
                StoreError::Storage(format!("postgres {}: {}", db.code().code(), db.message()))
            }
            None => StoreError::Storage(format!("postgres: {}", with_causes(&e))),
        }
    }
}

/// An error and its sources, `a: b: c` (the driver's own message is terse,
/// e.g. "error connecting to server", with the reason in its source).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> StoreError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Storage(format!("postgres connection pool: {other}")),
        }
    }
}

/// Versioned migrations; the `schema_version` table lists those applied.
/// Version N is the same schema as SQLite's version N.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE plans (
    name TEXT PRIMARY KEY,
    features JSONB NOT NULL,
    max_domains BIGINT,
    max_machines BIGINT,
    duration_days BIGINT,
    offline_grace_days BIGINT NOT NULL
);
CREATE TABLE licenses (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    plan TEXT NOT NULL REFERENCES plans(name),
    customer_email TEXT NOT NULL,
    max_domains BIGINT,
    max_machines BIGINT,
    metadata JSONB NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    last_validated_at BIGINT,
    validation_count BIGINT NOT NULL DEFAULT 0,
    activated_at BIGINT
);
CREATE INDEX licenses_by_status ON licenses(status, seq);
CREATE INDEX licenses_by_plan ON licenses(plan, seq);
CREATE INDEX licenses_by_email ON licenses(lower(customer_email), seq);
CREATE INDEX licenses_due ON licenses(expires_at) WHERE status = 'active' AND expires_at IS NOT NULL;
CREATE TABLE license_domains (
    license_seq BIGINT NOT NULL REFERENCES licenses(seq),
    domain TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (license_seq, domain)
);
CREATE TABLE license_machines (
    license_seq BIGINT NOT NULL REFERENCES licenses(seq),
    fingerprint TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (license_seq, fingerprint)
);
CREATE TABLE usage (
    seq BIGSERIAL PRIMARY KEY,
    license_seq BIGINT NOT NULL REFERENCES licenses(seq),
    at BIGINT NOT NULL,
    code TEXT NOT NULL,
    domain TEXT,
    fingerprint TEXT,
    ip TEXT,
    user_agent TEXT,
    country TEXT
);
CREATE INDEX usage_by_license ON usage(license_seq, seq);
CREATE TABLE events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    license_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    data JSONB NOT NULL
);
"#,
    r#"
CREATE TABLE webhooks (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    events JSONB NOT NULL,
    secret TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE deliveries (
    seq BIGSERIAL PRIMARY KEY,
    event_seq BIGINT NOT NULL REFERENCES events(seq),
    webhook_seq BIGINT NOT NULL REFERENCES webhooks(seq) ON DELETE CASCADE,
    license_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    first_attempt_ms BIGINT,
    next_attempt_ms BIGINT NOT NULL,
    locked_until_ms BIGINT NOT NULL DEFAULT 0,
    UNIQUE (event_seq, webhook_seq)
);
CREATE INDEX deliveries_due ON deliveries(next_attempt_ms) WHERE state = 'pending';
CREATE INDEX deliveries_in_order ON deliveries(webhook_seq, license_id, seq) WHERE state = 'pending';
CREATE TABLE delivery_attempts (
    seq BIGSERIAL PRIMARY KEY,
    delivery_seq BIGINT NOT NULL REFERENCES deliveries(seq) ON DELETE CASCADE,
    webhook_seq BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    status_code BIGINT,
    error TEXT,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX attempts_by_webhook ON delivery_attempts(webhook_seq, seq);
"#,
    // Webhook retention (`prune_events`) finds old events by time, and
    // deleting a delivery deletes its attempts (ON DELETE CASCADE) by
    // `delivery_seq`: both read an index rather than the whole table.
    r#"
CREATE INDEX events_by_time ON events(created_at);
CREATE INDEX attempts_by_delivery ON delivery_attempts(delivery_seq);
"#,
];

/// Connections per server process unless the URL sets `pool_size`.
const DEFAULT_POOL_SIZE: usize = 16;

/// How many licenses one sweep step expires (as in SQLite).
const EXPIRE_STEP: i64 = 500;

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: Pool,
}

/// How the connections to PostgreSQL use TLS: the URL's `sslmode`, with
/// libpq's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, else plain TCP; the certificate is not
    /// checked (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is not checked.
    Require,
    /// TLS, with a certificate that chains to a trusted root.
    VerifyCa,
    /// TLS, with a certificate that chains to a trusted root and names the
    /// host connected to.
    VerifyFull,
}

impl SslMode {
    const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    fn parse(value: &str) -> anyhow::Result<SslMode> {
        SslMode::ALL
            .into_iter()
            .find(|mode| mode.name() == value)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "sslmode {value:?} is not one of disable, prefer, require, verify-ca, verify-full"
                )
            })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A connection URL with Keysmith's own parameters taken off: `pool_size=N`,
/// and `sslmode` / `sslrootcert` / `sslcert` / `sslkey`, which Keysmith
/// applies itself (libpq's meanings; tokio-postgres knows only three of the
/// five modes and no certificate file). The rest is libpq syntax, which
/// tokio-postgres parses.
#[derive(Debug, PartialEq, Eq)]
struct UrlOptions {
    url: String,
    pool_size: Option<usize>,
    ssl_mode: SslMode,
    /// PEM file of the roots to trust instead of the built-in ones
    /// (`sslrootcert=system` asks for the built-in ones).
    ssl_root_cert: Option<String>,
    /// PEM files of the client certificate (its chain) and its private
    /// key, for a server that authenticates clients by certificate.
    ssl_client: Option<ClientCert>,
}

#[derive(Debug, PartialEq, Eq)]
struct ClientCert {
    cert: String,
    key: String,
}

/// A file path given as a URL parameter (percent-encoded).
fn path_param(name: &str, value: &str) -> anyhow::Result<String> {
    let path = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map_err(|_| anyhow::anyhow!("{name} is not a valid path"))?;
    anyhow::ensure!(!path.is_empty(), "{name} is empty");
    Ok(path.into_owned())
}

/// `sslrootcert`'s value that means the TLS implementation's own roots.
const SYSTEM_ROOTS: &str = "system";

fn split_options(url: &str) -> anyhow::Result<UrlOptions> {
    let mut options = UrlOptions {
        url: url.to_owned(),
        pool_size: None,
        ssl_mode: SslMode::Prefer,
        ssl_root_cert: None,
        ssl_client: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok(options);
    };
    let mut kept = Vec::new();
    let mut mode = None;
    let mut root_cert = None;
    let (mut client_cert, mut client_key) = (None, None);
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "pool_size" => {
                let n = value.parse().ok().filter(|n| *n > 0);
                options.pool_size =
                    Some(n.ok_or_else(|| anyhow::anyhow!("pool_size must be a positive number"))?);
            }
            "sslmode" => mode = Some(SslMode::parse(value)?),
            "sslrootcert" => root_cert = Some(path_param(name, value)?),
            "sslcert" => client_cert = Some(path_param(name, value)?),
            "sslkey" => client_key = Some(path_param(name, value)?),
            _ => kept.push(pair),
        }
    }
    // libpq's rules: `system` (the TLS implementation's roots, here
    // Mozilla's, as without `sslrootcert`) makes `verify-full` the default
    // and refuses weaker modes; with a root file, `require` checks the
    // chain as `verify-ca` does.
    let system = root_cert.as_deref() == Some(SYSTEM_ROOTS);
    options.ssl_mode = match (mode, system) {
        (None, true) => SslMode::VerifyFull,
        (Some(SslMode::VerifyFull), true) => SslMode::VerifyFull,
        (Some(weaker), true) => anyhow::bail!(
            "sslmode={} cannot be used with sslrootcert=system: a public CA signs \
             certificates for any name its holder controls, so only verify-full checks \
             the server (as in libpq)",
            weaker.name()
        ),
        (Some(SslMode::Require), false) if root_cert.is_some() => SslMode::VerifyCa,
        (Some(mode), false) => mode,
        (None, false) => SslMode::Prefer,
    };
    options.ssl_root_cert = root_cert.filter(|_| !system);
    // libpq would look for ~/.postgresql/postgresql.crt and .key; here
    // the URL names both, so that what a server presents is in its config.
    options.ssl_client = match (client_cert, client_key) {
        (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
        (None, None) => None,
        (Some(_), None) => {
            anyhow::bail!("sslcert needs sslkey: the client certificate's private key")
        }
        (None, Some(_)) => {
            anyhow::bail!("sslkey needs sslcert: the client certificate it is the key of")
        }
    };
    options.url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(options)
}

/// The TLS settings of `mode`: rustls (the webhooks' TLS stack too) with
/// Mozilla's roots, or only those of `root_cert`, presenting `client` if
/// given.
fn tls_connector(
    mode: SslMode,
    root_cert: Option<&str>,
    client: Option<&ClientCert>,
) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::client::WebPkiServerVerifier;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = pem_certificates("sslrootcert", path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            anyhow::ensure!(added > 0, "sslrootcert {path} holds no certificate");
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let chain = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => None,
        SslMode::VerifyCa | SslMode::VerifyFull => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?,
        ),
    };
    let verifier = Arc::new(tls::Verifier {
        provider,
        chain,
        check_name: mode == SslMode::VerifyFull,
    });
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let (chain, key) = read_client_cert(client)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| anyhow::anyhow!("sslcert {} with sslkey: {e}", client.cert))?
        }
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The certificates of the PEM file `path`, given as the URL parameter
/// `param` (which errors name).
fn pem_certificates(
    param: &str,
    path: &str,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("reading {param} {path}: {e}"))
}

/// The client certificate's chain and its private key (PKCS#8, PKCS#1 or
/// SEC1 PEM). Like libpq, a key file others can read is refused: group
/// access only for a file root owns (0640), none for anyone else.
fn read_client_cert(
    client: &ClientCert,
) -> anyhow::Result<(
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    use std::os::unix::fs::MetadataExt;
    let (cert, key) = (&client.cert, &client.key);
    let chain = pem_certificates("sslcert", cert)?;
    anyhow::ensure!(!chain.is_empty(), "sslcert {cert} holds no certificate");
    let meta = std::fs::metadata(key).map_err(|e| anyhow::anyhow!("reading sslkey {key}: {e}"))?;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    anyhow::ensure!(
        meta.mode() & 0o777 & !allowed == 0,
        "sslkey {key} can be read by others (mode {:o}): chmod 0600 it (0640 if root owns it), as libpq requires",
        meta.mode() & 0o777
    );
    // The error names the file, never the key's bytes.
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("reading sslkey {key}: {e}"))?;
    Ok((chain, key_der))
}

/// The certificate check of an `sslmode`: rustls's own (`verify-full`),
/// or the two libpq has and rustls does not: the chain without the host
/// name (`verify-ca`), and none (`require`, `prefer`).
mod tls {

    /// The TLS connector, also for a Unix-socket host: tokio-postgres asks
    /// for a connector with an empty host name there, which rustls refuses
    /// ("invalid dns name") before any connection, whatever the `sslmode`.
    /// PostgreSQL offers no TLS on a Unix socket, so `prefer` goes on
    /// without it and `require` fails with this connector's reason.
    #[derive(Clone)]
    pub struct OrSocket(pub tokio_postgres_rustls::MakeRustlsConnect);

    pub enum Connect<T> {
        Tls(T),
        Socket,
    }

    type BoxError = Box<dyn std::error::Error + Sync + Send>;

    type Rustls = tokio_postgres_rustls::MakeRustlsConnect;
    type Socket = tokio_postgres::Socket;

    impl tokio_postgres::tls::MakeTlsConnect<Socket> for OrSocket {
        type Stream = <Rustls as tokio_postgres::tls::MakeTlsConnect<Socket>>::Stream;
        type TlsConnect =
            Connect<<Rustls as tokio_postgres::tls::MakeTlsConnect<Socket>>::TlsConnect>;
        type Error = BoxError;

        fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, BoxError> {
            if domain.is_empty() {
                return Ok(Connect::Socket);
            }
            tokio_postgres::tls::MakeTlsConnect::<Socket>::make_tls_connect(&mut self.0, domain)
                .map(Connect::Tls)
                .map_err(Into::into)
        }
    }

    impl<S, T> tokio_postgres::tls::TlsConnect<S> for Connect<T>
    where
        T: tokio_postgres::tls::TlsConnect<S>,
        T::Future: Send + 'static,
    {
        type Stream = T::Stream;
        type Error = BoxError;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T::Stream, BoxError>> + Send>,
        >;

        fn connect(self, stream: S) -> Self::Future {
            match self {
                Connect::Tls(tls) => {
                    let connecting = tls.connect(stream);
                    Box::pin(async move { connecting.await.map_err(Into::into) })
                }
                Connect::Socket => {
                    Box::pin(async {
                        Err("PostgreSQL offers no TLS on a Unix socket: use sslmode=disable or prefer"
                        .into())
                    })
                }
            }
        }
    }
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::client::WebPkiServerVerifier;
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

    #[derive(Debug)]
    pub struct Verifier {
        pub provider: Arc<CryptoProvider>,
        /// `None`: any certificate (encrypted, not authenticated).
        pub chain: Option<Arc<WebPkiServerVerifier>>,
        /// Whether the certificate must name the host connected to.
        pub check_name: bool,
    }

    impl ServerCertVerifier for Verifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            let Some(chain) = &self.chain else {
                return Ok(ServerCertVerified::assertion());
            };
            match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) if !self.check_name => Ok(ServerCertVerified::assertion()),
                checked => checked,
            }
        }

        // The handshake's signatures are checked in every mode.
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            verify_tls12_signature(message, cert, dss, algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            let algorithms = &self.provider.signature_verification_algorithms;
            verify_tls13_signature(message, cert, dss, algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}

/// What the URL names, for the log: the database, its user and host, never
/// the password.
pub fn describe(url: &str) -> String {
    let config = split_options(url)
        .ok()
        .and_then(|o| tokio_postgres::Config::from_str(&o.url).ok());
    let Some(config) = config else {
        return "PostgreSQL".to_owned();
    };
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "PostgreSQL database {:?} as {:?} on {host}:{port}",
        config.get_dbname().unwrap_or("(the user's)"),
        config.get_user().unwrap_or("(default)")
    )
}

/// How long a statement waits for a lock before it fails (PostgreSQL's
/// `lock_timeout`), unless the URL's `options` set another.
const LOCK_TIMEOUT_MS: u64 = 5_000;

impl PostgresStore {
    /// Connects to the database the URL names (`postgres://user@host:port/db`,
    /// any libpq URL parameter, plus `pool_size`) and applies the migrations
    /// it lacks.
    pub async fn connect(url: &str) -> anyhow::Result<PostgresStore> {
        PostgresStore::connect_to(url, true).await
    }

    /// Like [`connect`](Self::connect), for a database a server has already
    /// started on: one without Keysmith's tables is refused, not set up (a
    /// maintenance command pointed at the wrong database).
    pub async fn connect_existing(url: &str) -> anyhow::Result<PostgresStore> {
        PostgresStore::connect_to(url, false).await
    }

    async fn connect_to(url: &str, create: bool) -> anyhow::Result<PostgresStore> {
        let options = split_options(url)?;
        let mut config = tokio_postgres::Config::from_str(&options.url)
            .map_err(|e| anyhow::anyhow!("the PostgreSQL URL is not valid: {}", with_causes(&e)))?;
        config.ssl_mode(match options.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = tls_connector(
            options.ssl_mode,
            options.ssl_root_cert.as_deref(),
            options.ssl_client.as_ref(),
        )?;
        if config.get_application_name().is_none() {
            config.application_name("keysmith-server");
        }
        // A row lock held elsewhere (an operator's open transaction) must
        // not hold a pool connection for as long as it lasts: requests that
        // time out leave their statements waiting, and a few of those take
        // every connection, stalling licenses that have nothing to do with
        // it. Given first, so that a `-c lock_timeout=…` in the URL's
        // `options` wins.
        let startup = match config.get_options() {
            Some(own) => format!("-c lock_timeout={LOCK_TIMEOUT_MS} {own}"),
            None => format!("-c lock_timeout={LOCK_TIMEOUT_MS}"),
        };
        config.options(&startup);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        let manager = Manager::from_config(
            config,
            tls::OrSocket(tls),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.unwrap_or(DEFAULT_POOL_SIZE))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL: {}", StoreError::from(e)))?;
        if !create && !has_schema(&client).await? {
            anyhow::bail!(
                "no Keysmith database at {}: the first start of a server on it sets it up",
                describe(url)
            );
        }
        migrate(&mut client)
            .await
            .map_err(|e| anyhow::anyhow!("migrating the PostgreSQL schema: {e}"))?;
        Ok(PostgresStore { pool })
    }

    /// A connection of the pool (also for `copy-to-postgres`'s statements).
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Client> {
        Ok(self.pool.get().await?)
    }
}

/// Applies the missing migrations in one transaction, under an advisory lock
/// so that servers starting together take turns; the lock is per schema, so
/// databases (and test schemas) do not wait on each other.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<()> {
    let tx = client.transaction().await?;
    // Servers starting together wait for the first one's migrations,
    // however long they take.
    tx.batch_execute(
        "SET LOCAL lock_timeout = 0; \
         SELECT pg_advisory_xact_lock(hashtext('keysmith-migrations'), \
         hashtext(coalesce(current_schema(), '')))",
    )
    .await?;
    // Created only when missing: a role with only the rights to read and
    // write the tables (no CREATE) starts a server on a current schema.
    if !has_schema(&tx).await? {
        tx.batch_execute(
            "CREATE TABLE schema_version (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
    }
    let applied: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?
        .try_get(0)?;
    if applied > MIGRATIONS.len() as i64 {
        return Err(StoreError::Storage(format!(
            "the database is at schema version {applied}, newer than this server knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
            &[&(i as i64 + 1), &Utc::now().timestamp()],
        )
        .await?;
        tracing::info!(version = i + 1, "applied a PostgreSQL migration");
    }
    tx.commit().await?;
    Ok(())
}

/// Whether Keysmith's tables are in the connection's schema.
async fn has_schema(c: &impl GenericClient) -> Result<bool> {
    Ok(
        c.query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
            .await?
            .try_get(0)?,
    )
}

type Param<'a> = &'a (dyn ToSql + Sync);

fn opt_u32(v: Option<i64>) -> Result<Option<u32>> {
    v.map(to_u32).transpose()
}

fn to_u32(v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| StoreError::Storage(format!("stored number {v} out of range")))
}

/// A license with its seats, in one statement (one snapshot).
const LICENSE_SELECT: &str = "SELECT l.seq, l.id, l.key, l.status, l.plan, l.customer_email, \
     l.max_domains, l.max_machines, l.metadata, l.created_at, l.updated_at, l.expires_at, \
     l.last_validated_at, l.validation_count, \
     ARRAY(SELECT s.domain FROM license_domains s WHERE s.license_seq = l.seq ORDER BY s.added_at, s.domain), \
     ARRAY(SELECT s.fingerprint FROM license_machines s WHERE s.license_seq = l.seq ORDER BY s.added_at, s.fingerprint) \
     FROM licenses l";

fn license_from_row(row: &Row) -> Result<(i64, License)> {
    let Json(metadata): Json<serde_json::Map<String, serde_json::Value>> = row.try_get(8)?;
    Ok((
        row.try_get(0)?,
        License {
            id: row.try_get(1)?,
            key: row.try_get(2)?,
            status: status_of(row.try_get(3)?)?,
            plan: row.try_get(4)?,
            customer_email: row.try_get(5)?,
            max_domains: opt_u32(row.try_get(6)?)?,
            domains: row.try_get(14)?,
            max_machines: opt_u32(row.try_get(7)?)?,
            machines: row.try_get(15)?,
            metadata,
            created_at: from_unix(row.try_get(9)?),
            updated_at: from_unix(row.try_get(10)?),
            expires_at: opt_time(row.try_get(11)?),
            last_validated_at: opt_time(row.try_get(12)?),
            validation_count: row.try_get::<_, i64>(13)? as u64,
        },
    ))
}

/// Loads a license by `id`, `key` or `seq` (the column name is ours, never input).
async fn load_license_by(
    c: &impl GenericClient,
    column: &'static str,
    value: Param<'_>,
) -> Result<Option<(i64, License)>> {
    let sql = format!("{LICENSE_SELECT} WHERE l.{column} = $1");
    let stmt = c.prepare_cached(&sql).await?;
    c.query_opt(&stmt, &[value])
        .await?
        .map(|row| license_from_row(&row))
        .transpose()
}

async fn load_license(c: &impl GenericClient, id: &str) -> Result<(i64, License)> {
    load_license_by(c, "id", &id)
        .await?
        .ok_or_else(|| StoreError::license_not_found(id))
}

async fn load_license_seq(c: &impl GenericClient, seq: i64) -> Result<License> {
    load_license_by(c, "seq", &seq)
        .await?
        .map(|(_, l)| l)
        .ok_or_else(|| StoreError::Storage(format!("license #{seq} vanished under its lock")))
}

/// Takes the license's row lock for the rest of the transaction and returns
/// its `seq`. Every change to a license, its seats and its counters happens
/// under this lock, so across processes they serialize per license. Read the
/// license only after it: a statement that waited for a lock sees the locked
/// row anew but the rest of the database as it was when the statement began.
async fn lock_license(
    c: &impl GenericClient,
    column: &'static str,
    value: &str,
) -> Result<Option<i64>> {
    let sql = format!("SELECT seq FROM licenses WHERE {column} = $1 FOR UPDATE");
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query_opt(&stmt, &[&value])
        .await?
        .map(|row| row.try_get(0))
        .transpose()?)
}

/// [`lock_license`] by id: the license's `seq`, or `LICENSE_NOT_FOUND`.
async fn lock_license_id(c: &impl GenericClient, id: &str) -> Result<i64> {
    lock_license(c, "id", id)
        .await?
        .ok_or_else(|| StoreError::license_not_found(id))
}

const PLAN_COLUMNS: &str =
    "name, features, max_domains, max_machines, duration_days, offline_grace_days";

fn plan_from_row(row: &Row) -> Result<Plan> {
    let Json(features): Json<Vec<String>> = row.try_get(1)?;
    Ok(Plan {
        name: row.try_get(0)?,
        features,
        max_domains: opt_u32(row.try_get(2)?)?,
        max_machines: opt_u32(row.try_get(3)?)?,
        duration_days: opt_u32(row.try_get(4)?)?,
        offline_grace_days: to_u32(row.try_get(5)?)?,
    })
}

async fn load_plan(c: &impl GenericClient, name: &str) -> Result<Option<Plan>> {
    let stmt = c
        .prepare_cached(&format!("SELECT {PLAN_COLUMNS} FROM plans WHERE name = $1"))
        .await?;
    c.query_opt(&stmt, &[&name])
        .await?
        .map(|row| plan_from_row(&row))
        .transpose()
}

/// The plan a license is being put on, held `FOR KEY SHARE` until commit so
/// that a concurrent `DELETE /plans/:name` waits and then sees the license.
async fn plan_must_exist(c: &impl GenericClient, name: &str) -> Result<Plan> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {PLAN_COLUMNS} FROM plans WHERE name = $1 FOR KEY SHARE"
        ))
        .await?;
    match c.query_opt(&stmt, &[&name]).await? {
        Some(row) => plan_from_row(&row),
        None => Err(StoreError::Invalid {
            code: "PLAN_NOT_FOUND",
            message: format!("no plan named {name:?}; create it with PUT /api/v1/plans/{name}"),
        }),
    }
}

/// Writes an event to the outbox and queues it for every enabled endpoint
/// that subscribes to it, in the caller's transaction (one statement). An
/// event no enabled endpoint subscribes to is not kept (see the SQLite
/// store's `record_event`).
async fn record_event(
    c: &impl GenericClient,
    kind: EventType,
    license: &License,
    now: DateTime<Utc>,
) -> Result<()> {
    let data = serde_json::json!({ "license": license });
    let stmt = c
        .prepare_cached(
            "WITH w AS (SELECT seq FROM webhooks WHERE enabled AND events ? $2), \
             e AS (INSERT INTO events (id, type, license_id, created_at, data) \
             SELECT $1::text, $2::text, $3::text, $4::bigint, $5::jsonb WHERE EXISTS (SELECT 1 FROM w) RETURNING seq) \
             INSERT INTO deliveries (event_seq, webhook_seq, license_id, state, next_attempt_ms) \
             SELECT e.seq, w.seq, $3, 'pending', $6 FROM e, w",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &ids::event_id(),
            &kind.as_str(),
            &license.id,
            &now.timestamp(),
            &Json(&data),
            &now.timestamp_millis(),
        ],
    )
    .await?;
    Ok(())
}

fn webhook_from_row(row: &Row) -> Result<(i64, Webhook)> {
    let Json(events): Json<Vec<String>> = row.try_get(3)?;
    Ok((
        row.try_get(0)?,
        Webhook {
            id: row.try_get(1)?,
            url: row.try_get(2)?,
            events,
            enabled: row.try_get(4)?,
            created_at: from_unix(row.try_get(5)?),
            pending: row.try_get::<_, i64>(6)? as u64,
            secret: None,
        },
    ))
}

fn webhook_not_found(id: &str) -> StoreError {
    StoreError::webhook_not_found(id)
}

async fn load_webhook(c: &impl GenericClient, id: &str) -> Result<(i64, Webhook)> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"
        ))
        .await?;
    match c.query_opt(&stmt, &[&id]).await? {
        Some(row) => webhook_from_row(&row),
        None => Err(webhook_not_found(id)),
    }
}

async fn write_license_fields(c: &impl GenericClient, seq: i64, l: &License) -> Result<()> {
    let stmt = c
        .prepare_cached(
            "UPDATE licenses SET status = $2, plan = $3, customer_email = $4, max_domains = $5, \
             max_machines = $6, metadata = $7, updated_at = $8, expires_at = $9 WHERE seq = $1",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &seq,
            &l.status.as_str(),
            &l.plan,
            &l.customer_email,
            &l.max_domains.map(i64::from),
            &l.max_machines.map(i64::from),
            &Json(&l.metadata),
            &l.updated_at.timestamp(),
            &l.expires_at.map(|t| t.timestamp()),
        ],
    )
    .await?;
    Ok(())
}

async fn insert_license(
    c: &impl GenericClient,
    new: &NewLicense,
    now: DateTime<Utc>,
) -> Result<License> {
    let plan = plan_must_exist(c, &new.plan).await?;
    let expires_at = default_expiry(new.expires_at, plan.duration_days, now);
    let status = effective_status(Status::Active, expires_at, now);
    let stmt = c
        .prepare_cached(
            "INSERT INTO licenses (id, key, status, plan, customer_email, max_domains, max_machines, \
             metadata, created_at, updated_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) \
             ON CONFLICT DO NOTHING RETURNING seq",
        )
        .await?;
    // Ids and keys are random; a collision is astronomically rare, but
    // uniqueness is the database's to enforce, so retry on one. ON CONFLICT
    // DO NOTHING reports it without aborting the transaction.
    for _ in 0..8 {
        let id = ids::license_id();
        let key = LicenseKey::generate(&new.key_prefix).map_err(|e| StoreError::Invalid {
            code: "BAD_PREFIX",
            message: e.to_string(),
        })?;
        let inserted = c
            .query_opt(
                &stmt,
                &[
                    &id,
                    &key.as_str(),
                    &status.as_str(),
                    &plan.name,
                    &new.customer_email,
                    &new.max_domains.unwrap_or(plan.max_domains).map(i64::from),
                    &new.max_machines.unwrap_or(plan.max_machines).map(i64::from),
                    &Json(&new.metadata),
                    &now.timestamp(),
                    &expires_at.map(|t| t.timestamp()),
                ],
            )
            .await?;
        if let Some(row) = inserted {
            let license = load_license_seq(c, row.try_get(0)?).await?;
            record_event(c, EventType::Created, &license, now).await?;
            return Ok(license);
        }
    }
    Err(StoreError::Storage(
        "could not find a free license id and key".into(),
    ))
}

/// What a validation reads of its license, its plan, and its seats as far
/// as the request's domain and fingerprint need them: by key on a snapshot
/// (`VALIDATION_VIEW_BY_KEY`), or by seq once it holds the license's lock. A
/// seat table is counted only when its count can decide anything: a limit is
/// set, the request names a value, and that value does not hold a seat
/// already (as `seats` does on SQLite).
macro_rules! validation_view {
    ($by:literal) => {
        concat!(
            "SELECT l.id, l.status, l.plan, l.max_domains, l.max_machines, \
             l.expires_at, p.features, p.offline_grace_days, \
             h.domain_held, \
             CASE WHEN l.max_domains IS NULL OR $2::text IS NULL OR h.domain_held THEN 0::bigint \
                  ELSE (SELECT count(*) FROM license_domains s WHERE s.license_seq = l.seq) END, \
             h.machine_held, \
             CASE WHEN l.max_machines IS NULL OR $3::text IS NULL OR h.machine_held THEN 0::bigint \
                  ELSE (SELECT count(*) FROM license_machines s WHERE s.license_seq = l.seq) END, \
             l.seq, l.activated_at IS NOT NULL \
             FROM licenses l JOIN plans p ON p.name = l.plan \
             CROSS JOIN LATERAL (SELECT \
                 EXISTS (SELECT 1 FROM license_domains s WHERE s.license_seq = l.seq AND s.domain = $2) \
                     AS domain_held, \
                 EXISTS (SELECT 1 FROM license_machines s WHERE s.license_seq = l.seq AND s.fingerprint = $3) \
                     AS machine_held) h \
             WHERE ",
            $by
        )
    };
}
const VALIDATION_VIEW: &str = validation_view!("l.seq = $1");
const VALIDATION_VIEW_BY_KEY: &str = validation_view!("l.key = $1");

/// Counts a validation that takes no seat and records it, in one statement
/// (so in one transaction of its own): the count's row lock is held only
/// for that statement.
const COUNT_AND_RECORD: &str = "WITH counted AS ( \
     UPDATE licenses SET validation_count = validation_count + 1, last_validated_at = $2 \
     WHERE seq = $1 RETURNING seq) \
     INSERT INTO usage (license_seq, at, code, domain, fingerprint, ip, user_agent, country) \
     SELECT seq, $2, $3, $4, $5, $6, $7, $8 FROM counted";

/// A row of `validation_view!`, decided.
struct View {
    seq: i64,
    activated: bool,
    decision: Decision,
    summary: LicenseSummary,
    grace: u32,
}

impl View {
    fn read(row: &Row, v: &ValidationInput) -> Result<View> {
        let max_domains = opt_u32(row.try_get(3)?)?;
        let max_machines = opt_u32(row.try_get(4)?)?;
        let expires_at = opt_time(row.try_get(5)?);
        let Json(features): Json<Vec<String>> = row.try_get(6)?;
        let status = effective_status(status_of(row.try_get(1)?)?, expires_at, v.now);
        let seats_of = |held: usize, taken: usize, max| -> Result<Seats> {
            Ok(Seats {
                held: row.try_get(held)?,
                taken: row.try_get::<_, i64>(taken)? as u64,
                max,
            })
        };
        let domain_seats = v
            .domain
            .as_ref()
            .map(|_| seats_of(8, 9, max_domains))
            .transpose()?;
        let machine_seats = v
            .fingerprint
            .as_ref()
            .map(|_| seats_of(10, 11, max_machines))
            .transpose()?;
        Ok(View {
            seq: row.try_get(12)?,
            activated: row.try_get(13)?,
            decision: decide(status, domain_seats, machine_seats),
            summary: LicenseSummary {
                id: row.try_get(0)?,
                status,
                plan: row.try_get(2)?,
                expires_at,
                features,
            },
            grace: to_u32(row.try_get(7)?)?,
        })
    }

    fn outcome(self) -> ValidationOutcome {
        ValidationOutcome {
            code: self.decision.code,
            license: Some(self.summary),
            offline_grace_days: self.grace,
        }
    }
}

/// A usage row's eight values, in the column order of `COUNT_AND_RECORD`
/// and of the locked path's insert.
fn usage_row<'a>(
    seq: &'a i64,
    at: &'a i64,
    code: &'a &'static str,
    v: &'a ValidationInput,
) -> [&'a (dyn ToSql + Sync); 8] {
    [
        seq,
        at,
        code,
        &v.domain,
        &v.fingerprint,
        &v.ip,
        &v.user_agent,
        &v.country,
    ]
}

/// A validation that takes a seat or activates the license, decided again
/// under the license's row lock, so that two validations racing for the
/// last seat cannot both take it.
async fn validate_in(
    tx: &deadpool_postgres::Transaction<'_>,
    v: &ValidationInput,
) -> Result<ValidationOutcome> {
    let now = v.now.timestamp();
    // Counting the validation takes the license's row lock (every validation
    // of an existing license is counted, whatever it decides); everything
    // below reads the license anew under that lock.
    let count = tx
        .prepare_cached(
            "UPDATE licenses SET validation_count = validation_count + 1, last_validated_at = $2 \
             WHERE key = $1 RETURNING seq",
        )
        .await?;
    let Some(counted) = tx.query_opt(&count, &[&v.key, &now]).await? else {
        return Ok(ValidationOutcome::not_found());
    };
    let seq: i64 = counted.try_get(0)?;
    let view = tx.prepare_cached(VALIDATION_VIEW).await?;
    let row = tx
        .query_one(&view, &[&seq, &v.domain, &v.fingerprint])
        .await?;
    let view = View::read(&row, v)?;
    let decision = view.decision;
    let first_valid = decision.activates(view.activated);

    // The writes don't depend on each other: send them pipelined.
    let take_domain = async {
        if let (true, Some(domain)) = (decision.take_domain_seat, &v.domain) {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO license_domains (license_seq, domain, added_at) VALUES ($1, $2, $3)",
                )
                .await?;
            tx.execute(&stmt, &[&seq, domain, &now]).await?;
        }
        Ok::<_, StoreError>(())
    };
    let take_machine = async {
        if let (true, Some(fp)) = (decision.take_machine_seat, &v.fingerprint) {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO license_machines (license_seq, fingerprint, added_at) VALUES ($1, $2, $3)",
                )
                .await?;
            tx.execute(&stmt, &[&seq, fp, &now]).await?;
        }
        Ok::<_, StoreError>(())
    };
    let code = decision.code.as_str();
    let record = async {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO usage (license_seq, at, code, domain, fingerprint, ip, user_agent, country) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .await?;
        tx.execute(&stmt, &usage_row(&seq, &now, &code, v)).await?;
        Ok::<_, StoreError>(())
    };
    let activate = async {
        if first_valid {
            let stmt = tx
                .prepare_cached("UPDATE licenses SET activated_at = $2 WHERE seq = $1")
                .await?;
            tx.execute(&stmt, &[&seq, &now]).await?;
        }
        Ok::<_, StoreError>(())
    };
    tokio::try_join!(take_domain, take_machine, record, activate)?;
    if first_valid {
        let license = load_license_seq(tx, seq).await?;
        record_event(tx, EventType::Activated, &license, v.now).await?;
    }
    Ok(view.outcome())
}

async fn update_in(
    c: &impl GenericClient,
    id: &str,
    patch: LicensePatch,
    now: DateTime<Utc>,
) -> Result<License> {
    let seq = lock_license_id(c, id).await?;
    let before = load_license_seq(c, seq).await?;
    patch
        .precondition
        .check(&format!("license {id}"), Some(&license_tag(&before)))?;
    let mut after = before.clone();
    if let Some(plan) = patch.plan {
        plan_must_exist(c, &plan).await?;
        after.plan = plan;
    }
    if let Some(email) = patch.customer_email {
        after.customer_email = email;
    }
    if let Some(max) = patch.max_domains {
        after.max_domains = max;
    }
    if let Some(max) = patch.max_machines {
        after.max_machines = max;
    }
    if let Some(expires_at) = patch.expires_at {
        after.expires_at = expires_at;
    }
    if let Some(metadata) = patch.metadata {
        after.metadata = metadata;
    }
    let (status, status_event) = transition(before.status, patch.status, after.expires_at, now)?;
    after.status = status;
    if after == before {
        return Ok(before);
    }
    after.updated_at = now;
    write_license_fields(c, seq, &after).await?;
    record_event(c, status_event.unwrap_or(EventType::Updated), &after, now).await?;
    Ok(after)
}

async fn free_seat(
    c: &impl GenericClient,
    id: &str,
    table: &'static str,
    column: &'static str,
    value: &str,
    now: DateTime<Utc>,
) -> Result<License> {
    let seq = lock_license_id(c, id).await?;
    let stmt = c
        .prepare_cached(&format!(
            "DELETE FROM {table} WHERE license_seq = $1 AND {column} = $2"
        ))
        .await?;
    if c.execute(&stmt, &[&seq, &value]).await? == 0 {
        let what = if column == "domain" {
            "DOMAIN_NOT_FOUND"
        } else {
            "MACHINE_NOT_FOUND"
        };
        return Err(StoreError::NotFound {
            code: what,
            message: format!("license {id} holds no seat for {value:?}"),
        });
    }
    touch_license(c, seq, now).await?;
    let license = load_license_seq(c, seq).await?;
    record_event(c, EventType::Updated, &license, now).await?;
    Ok(license)
}

async fn touch_license(c: &impl GenericClient, seq: i64, now: DateTime<Utc>) -> Result<()> {
    let stmt = c
        .prepare_cached("UPDATE licenses SET updated_at = $2 WHERE seq = $1")
        .await?;
    c.execute(&stmt, &[&seq, &now.timestamp()]).await?;
    Ok(())
}

/// Rows of a page query fetched with `limit + 1`: the page, and the cursor
/// (the last item's `seq`) when more follow.
fn page_of<T>(mut rows: Vec<(i64, T)>, limit: u32) -> (Vec<T>, Option<i64>) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|(seq, _)| *seq)
    } else {
        None
    };
    (rows.into_iter().map(|(_, item)| item).collect(), next)
}

fn page_bounds(page: &PageRequest) -> (i64, i64) {
    (page.before.unwrap_or(i64::MAX), i64::from(page.limit) + 1)
}

#[async_trait]
impl Store for PostgresStore {
    async fn put_plan(&self, plan: Plan, precondition: Precondition) -> Result<bool> {
        let what = format!("plan {:?}", plan.name);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // A plan that must be new is inserted or left alone, never replaced;
        // one that must exist (as read) is locked before it is compared.
        let on_conflict = if precondition == Precondition::Absent {
            "DO NOTHING"
        } else {
            if precondition != Precondition::None {
                tx.execute(
                    "SELECT 1 FROM plans WHERE name = $1 FOR UPDATE",
                    &[&plan.name],
                )
                .await?;
                let current = load_plan(&tx, &plan.name).await?;
                precondition.check(&what, current.as_ref().map(plan_tag).as_deref())?;
            }
            "DO UPDATE SET features = excluded.features, \
             max_domains = excluded.max_domains, max_machines = excluded.max_machines, \
             duration_days = excluded.duration_days, offline_grace_days = excluded.offline_grace_days"
        };
        // `xmax = 0` holds for a row this statement inserted, not for one it updated.
        let stmt = tx
            .prepare_cached(&format!(
                "INSERT INTO plans (name, features, max_domains, max_machines, duration_days, offline_grace_days) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) {on_conflict} RETURNING xmax = 0"
            ))
            .await?;
        let row = tx
            .query_opt(
                &stmt,
                &[
                    &plan.name,
                    &Json(&plan.features),
                    &plan.max_domains.map(i64::from),
                    &plan.max_machines.map(i64::from),
                    &plan.duration_days.map(i64::from),
                    &i64::from(plan.offline_grace_days),
                ],
            )
            .await?;
        let Some(row) = row else {
            // `DO NOTHING` found the plan there.
            return Err(StoreError::PreconditionFailed(format!(
                "{what} exists (If-None-Match: *)"
            )));
        };
        let created = row.try_get(0)?;
        tx.commit().await?;
        Ok(created)
    }

    async fn get_plan(&self, name: String) -> Result<Plan> {
        let client = self.client().await?;
        load_plan(&client, &name)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                code: "PLAN_NOT_FOUND",
                message: format!("no plan named {name:?}"),
            })
    }

    async fn list_plans(&self) -> Result<Vec<Plan>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {PLAN_COLUMNS} FROM plans ORDER BY name"))
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(plan_from_row)
            .collect()
    }

    async fn delete_plan(&self, name: String) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Locking the plan first waits for licenses being created on it;
        // the next statement then sees them.
        let lock = tx
            .prepare_cached("SELECT 1 FROM plans WHERE name = $1 FOR UPDATE")
            .await?;
        if tx.query_opt(&lock, &[&name]).await?.is_none() {
            return Err(StoreError::NotFound {
                code: "PLAN_NOT_FOUND",
                message: format!("no plan named {name:?}"),
            });
        }
        let in_use = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM licenses WHERE plan = $1)")
            .await?;
        if tx.query_one(&in_use, &[&name]).await?.try_get(0)? {
            return Err(StoreError::Conflict {
                code: "PLAN_IN_USE",
                message: format!(
                    "plan {name:?} still has licenses; move them to another plan first"
                ),
            });
        }
        let delete = tx
            .prepare_cached("DELETE FROM plans WHERE name = $1")
            .await?;
        tx.execute(&delete, &[&name]).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_license(&self, new: NewLicense, now: DateTime<Utc>) -> Result<License> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let license = insert_license(&tx, &new, now).await?;
        tx.commit().await?;
        Ok(license)
    }

    async fn has_licenses(&self) -> Result<bool> {
        let client = self.client().await?;
        Ok(client
            .query_one("SELECT EXISTS (SELECT 1 FROM licenses)", &[])
            .await?
            .try_get(0)?)
    }

    async fn get_license(&self, id: String) -> Result<License> {
        let client = self.client().await?;
        load_license(&client, &id).await.map(|(_, l)| l)
    }

    async fn list_licenses(&self, filter: LicenseFilter, page: PageRequest) -> Result<LicensePage> {
        let client = self.client().await?;
        let (before, limit) = page_bounds(&page);
        let mut sql = format!("{LICENSE_SELECT} WHERE l.seq < $1");
        let mut args: Vec<String> = Vec::new();
        for (column, value) in [
            ("l.status", filter.status.map(|s| s.as_str().to_owned())),
            ("l.plan", filter.plan),
            ("lower(l.customer_email)", filter.customer_email),
            ("l.key", filter.key),
        ] {
            if let Some(value) = value {
                args.push(value);
                let arg = if column.starts_with("lower(") {
                    format!("lower(${})", args.len() + 2)
                } else {
                    format!("${}", args.len() + 2)
                };
                sql.push_str(&format!(" AND {column} = {arg}"));
            }
        }
        sql.push_str(" ORDER BY l.seq DESC LIMIT $2");
        let mut bound: Vec<Param<'_>> = vec![&before, &limit];
        bound.extend(args.iter().map(|a| a as Param<'_>));
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client
            .query(&stmt, &bound)
            .await?
            .iter()
            .map(license_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page_of(rows, page.limit))
    }

    async fn update_license(
        &self,
        id: String,
        patch: LicensePatch,
        now: DateTime<Utc>,
    ) -> Result<License> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let license = update_in(&tx, &id, patch, now).await?;
        tx.commit().await?;
        Ok(license)
    }

    async fn revoke_license(&self, id: String, now: DateTime<Utc>) -> Result<License> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let seq = lock_license_id(&tx, &id).await?;
        let mut license = load_license_seq(&tx, seq).await?;
        if license.status == Status::Revoked {
            return Ok(license);
        }
        license.status = Status::Revoked;
        license.updated_at = now;
        write_license_fields(&tx, seq, &license).await?;
        record_event(&tx, EventType::Revoked, &license, now).await?;
        tx.commit().await?;
        Ok(license)
    }

    async fn free_domain(&self, id: String, domain: String, now: DateTime<Utc>) -> Result<License> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let license = free_seat(&tx, &id, "license_domains", "domain", &domain, now).await?;
        tx.commit().await?;
        Ok(license)
    }

    async fn free_machine(
        &self,
        id: String,
        fingerprint: String,
        now: DateTime<Utc>,
    ) -> Result<License> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let license = free_seat(
            &tx,
            &id,
            "license_machines",
            "fingerprint",
            &fingerprint,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(license)
    }

    async fn usage(&self, id: String, page: PageRequest) -> Result<UsagePage> {
        let client = self.client().await?;
        let seq_of = client
            .prepare_cached("SELECT seq FROM licenses WHERE id = $1")
            .await?;
        let seq: i64 = match client.query_opt(&seq_of, &[&id]).await? {
            Some(row) => row.try_get(0)?,
            None => return Err(StoreError::license_not_found(&id)),
        };
        let (before, limit) = page_bounds(&page);
        let records = async {
            let stmt = client
                .prepare_cached(
                    "SELECT seq, at, code, domain, fingerprint, ip, user_agent, country FROM usage \
                     WHERE license_seq = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                )
                .await?;
            let rows = client.query(&stmt, &[&seq, &before, &limit]).await?;
            rows.iter()
                .map(|r| {
                    let code: &str = r.try_get(2)?;
                    Ok((
                        r.try_get(0)?,
                        UsageRecord {
                            at: from_unix(r.try_get(1)?),
                            code: Code::parse(code).unwrap_or(Code::BadRequest),
                            domain: r.try_get(3)?,
                            fingerprint: r.try_get(4)?,
                            ip: r.try_get(5)?,
                            user_agent: r.try_get(6)?,
                            country: r.try_get(7)?,
                        },
                    ))
                })
                .collect::<Result<Vec<(i64, UsageRecord)>>>()
        };
        let by_code = async {
            let stmt = client
                .prepare_cached(
                    "SELECT code, count(*) FROM usage WHERE license_seq = $1 GROUP BY code",
                )
                .await?;
            Ok::<_, StoreError>(client.query(&stmt, &[&seq]).await?)
        };
        let by_domain = async {
            let stmt = client
                .prepare_cached(
                    "SELECT domain, count(*) FROM usage WHERE license_seq = $1 AND domain IS NOT NULL GROUP BY domain",
                )
                .await?;
            Ok::<_, StoreError>(client.query(&stmt, &[&seq]).await?)
        };
        let (records, by_code, by_domain) = tokio::try_join!(records, by_code, by_domain)?;
        let mut totals = UsageTotals::default();
        for row in by_code {
            totals.add_code(row.try_get(0)?, row.try_get(1)?);
        }
        for row in by_domain {
            let (domain, n): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
            totals.domains.insert(domain, n as u64);
        }
        let (records, next_before) = page_of(records, page.limit);
        Ok(UsagePage {
            records,
            next_before,
            totals,
        })
    }

    async fn validate(&self, input: ValidationInput) -> Result<ValidationOutcome> {
        let mut client = self.client().await?;
        // Most validations take no seat and activate nothing. Those are
        // decided on a snapshot and counted and recorded in one statement:
        // two round trips, where the locked transaction takes five. Nothing
        // they decide can be raced for; a change committed between the two
        // statements orders after this validation, as on SQLite's read path.
        let by_key = client.prepare_cached(VALIDATION_VIEW_BY_KEY).await?;
        let row = client
            .query_opt(&by_key, &[&input.key, &input.domain, &input.fingerprint])
            .await?;
        let Some(row) = row else {
            return Ok(ValidationOutcome::not_found());
        };
        let view = View::read(&row, &input)?;
        if view.decision.writes(view.activated) {
            let tx = client.transaction().await?;
            let outcome = validate_in(&tx, &input).await?;
            tx.commit().await?;
            return Ok(outcome);
        }
        let record = client.prepare_cached(COUNT_AND_RECORD).await?;
        let (seq, at, code) = (view.seq, input.now.timestamp(), view.decision.code.as_str());
        client
            .execute(&record, &usage_row(&seq, &at, &code, &input))
            .await?;
        Ok(view.outcome())
    }

    async fn deactivate(
        &self,
        key: String,
        domain: Option<String>,
        fingerprint: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Deactivated> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(seq) = lock_license(&tx, "key", &key).await? else {
            return Err(StoreError::NotFound {
                code: "LICENSE_NOT_FOUND",
                message: "no license has this key".into(),
            });
        };
        let mut out = Deactivated {
            domain_freed: false,
            machine_freed: false,
        };
        if let Some(domain) = &domain {
            let stmt = tx
                .prepare_cached(
                    "DELETE FROM license_domains WHERE license_seq = $1 AND domain = $2",
                )
                .await?;
            out.domain_freed = tx.execute(&stmt, &[&seq, domain]).await? > 0;
        }
        if let Some(fp) = &fingerprint {
            let stmt = tx
                .prepare_cached(
                    "DELETE FROM license_machines WHERE license_seq = $1 AND fingerprint = $2",
                )
                .await?;
            out.machine_freed = tx.execute(&stmt, &[&seq, fp]).await? > 0;
        }
        if out.domain_freed || out.machine_freed {
            touch_license(&tx, seq, now).await?;
            let license = load_license_seq(&tx, seq).await?;
            record_event(&tx, EventType::Updated, &license, now).await?;
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn expire_due(&self, now: DateTime<Utc>) -> Result<usize> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // SKIP LOCKED: a license another process is expiring (or an admin is
        // changing) is left to it; the status check runs again on the row it
        // locks, so no license is expired twice.
        let stmt = tx
            .prepare_cached(
                "UPDATE licenses SET status = 'expired', updated_at = $1 WHERE seq IN ( \
                 SELECT seq FROM licenses WHERE status = 'active' AND expires_at IS NOT NULL \
                 AND expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING seq",
            )
            .await?;
        let rows = tx.query(&stmt, &[&now.timestamp(), &EXPIRE_STEP]).await?;
        for row in &rows {
            let license = load_license_seq(&tx, row.try_get(0)?).await?;
            record_event(&tx, EventType::Expired, &license, now).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    async fn prune_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let client = self.client().await?;
        // SKIP LOCKED: servers pruning at once take different events. A
        // delivery redelivered meanwhile is kept, and then so must its event
        // be: the statement fails on the foreign key and the next pass skips it.
        let stmt = client
            .prepare_cached(
                "WITH old AS ( \
                     SELECT e.seq FROM events e WHERE e.created_at < $1 AND NOT EXISTS \
                     (SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.state = 'pending') \
                     ORDER BY e.created_at, e.seq LIMIT $2 FOR UPDATE SKIP LOCKED), \
                 gone AS (DELETE FROM deliveries d USING old \
                     WHERE d.event_seq = old.seq AND d.state <> 'pending') \
                 DELETE FROM events e USING old WHERE e.seq = old.seq",
            )
            .await?;
        let deleted = client
            .execute(&stmt, &[&before.timestamp(), &i64::from(limit)])
            .await?;
        Ok(deleted)
    }

    async fn prune_usage(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        let client = self.client().await?;
        // The oldest rows, and of them the leading run recorded before the
        // cut-off. `at < $2` again in the delete: a row whose transaction
        // took a lower seq but committed after the first query is new.
        let oldest = client
            .prepare_cached("SELECT seq, at FROM usage ORDER BY seq LIMIT $1")
            .await?;
        let cutoff = before.timestamp();
        let mut last = None;
        for row in client.query(&oldest, &[&i64::from(limit)]).await? {
            if row.try_get::<_, i64>(1)? >= cutoff {
                break;
            }
            last = Some(row.try_get::<_, i64>(0)?);
        }
        let Some(last) = last else {
            return Ok(0);
        };
        let delete = client
            .prepare_cached("DELETE FROM usage WHERE seq <= $1 AND at < $2")
            .await?;
        Ok(client.execute(&delete, &[&last, &cutoff]).await?)
    }

    async fn create_webhook(&self, new: NewWebhook, now: DateTime<Utc>) -> Result<Webhook> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "INSERT INTO webhooks (id, url, events, secret, enabled, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {WEBHOOK_COLUMNS}"
            ))
            .await?;
        let row = client
            .query_one(
                &stmt,
                &[
                    &ids::webhook_id(),
                    &new.url,
                    &Json(event_names(&new.events)),
                    &new.secret,
                    &new.enabled,
                    &now.timestamp(),
                ],
            )
            .await?;
        let (_, mut webhook) = webhook_from_row(&row)?;
        webhook.secret = Some(new.secret);
        Ok(webhook)
    }

    async fn list_webhooks(&self, page: PageRequest) -> Result<(Vec<Webhook>, Option<i64>)> {
        let client = self.client().await?;
        let (before, limit) = page_bounds(&page);
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
            ))
            .await?;
        let rows = client
            .query(&stmt, &[&before, &limit])
            .await?
            .iter()
            .map(webhook_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page_of(rows, page.limit))
    }

    async fn get_webhook(&self, id: String) -> Result<Webhook> {
        let client = self.client().await?;
        load_webhook(&client, &id).await.map(|(_, w)| w)
    }

    async fn update_webhook(&self, id: String, patch: WebhookPatch) -> Result<Webhook> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if patch.enabled == Some(true) {
            // What waited while it was disabled starts its retry window now.
            tx.execute(
                    "UPDATE deliveries SET first_attempt_ms = NULL WHERE state = 'pending' \
                     AND webhook_seq = (SELECT seq FROM webhooks WHERE id = $1 AND NOT enabled FOR UPDATE)",
                    &[&id],
                )
                .await?;
        }
        let stmt = tx
            .prepare_cached(&format!(
                "UPDATE webhooks SET url = coalesce($2, url), events = coalesce($3, events), \
                 enabled = coalesce($4, enabled), secret = coalesce($5, secret) \
                 WHERE id = $1 RETURNING {WEBHOOK_COLUMNS}"
            ))
            .await?;
        let events = patch.events.as_deref().map(|e| Json(event_names(e)));
        match tx
            .query_opt(
                &stmt,
                &[&id, &patch.url, &events, &patch.enabled, &patch.secret],
            )
            .await?
        {
            Some(row) => {
                let webhook = webhook_from_row(&row).map(|(_, w)| w)?;
                tx.commit().await?;
                Ok(webhook)
            }
            None => Err(webhook_not_found(&id)),
        }
    }

    async fn delete_webhook(&self, id: String) -> Result<()> {
        let client = self.client().await?;
        // Its deliveries and their attempts go with it (ON DELETE CASCADE).
        let stmt = client
            .prepare_cached("DELETE FROM webhooks WHERE id = $1")
            .await?;
        if client.execute(&stmt, &[&id]).await? == 0 {
            return Err(webhook_not_found(&id));
        }
        Ok(())
    }

    async fn delivery_attempts(
        &self,
        id: String,
        page: PageRequest,
    ) -> Result<(Vec<DeliveryAttempt>, Option<i64>)> {
        let client = self.client().await?;
        let (seq, _) = load_webhook(&client, &id).await?;
        let (before, limit) = page_bounds(&page);
        let stmt = client
            .prepare_cached(
                "SELECT a.seq, e.id, e.type, a.attempt, a.at, a.status_code, a.error, a.duration_ms, d.state \
                 FROM delivery_attempts a JOIN deliveries d ON d.seq = a.delivery_seq \
                 JOIN events e ON e.seq = d.event_seq \
                 WHERE a.webhook_seq = $1 AND a.seq < $2 ORDER BY a.seq DESC LIMIT $3",
            )
            .await?;
        let rows = client
            .query(&stmt, &[&seq, &before, &limit])
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    DeliveryAttempt {
                        event_id: r.try_get(1)?,
                        kind: r.try_get(2)?,
                        attempt: to_u32(r.try_get(3)?)?,
                        at: from_unix(r.try_get::<_, i64>(4)? / 1000),
                        status_code: r
                            .try_get::<_, Option<i64>>(5)?
                            .and_then(|s| u16::try_from(s).ok()),
                        error: r.try_get(6)?,
                        duration_ms: r.try_get::<_, i64>(7)? as u64,
                        state: r.try_get(8)?,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(page_of(rows, page.limit))
    }

    async fn redeliver(&self, id: String, event_id: String, now: DateTime<Utc>) -> Result<()> {
        let client = self.client().await?;
        let (seq, _) = load_webhook(&client, &id).await?;
        let stmt = client
            .prepare_cached(
                "UPDATE deliveries SET state = 'pending', first_attempt_ms = NULL, next_attempt_ms = $3, \
                 locked_until_ms = 0 WHERE webhook_seq = $1 AND state <> 'pending' \
                 AND event_seq = (SELECT seq FROM events WHERE id = $2)",
            )
            .await?;
        let changed = client
            .execute(&stmt, &[&seq, &event_id, &now.timestamp_millis()])
            .await?;
        if changed > 0 {
            // The license's later events wait for it again (in order):
            // their windows start when they are tried next.
            client
                .execute(
                    "UPDATE deliveries SET first_attempt_ms = NULL WHERE webhook_seq = $1 \
                     AND state = 'pending' AND license_id = (SELECT license_id FROM events WHERE id = $2) \
                     AND event_seq > (SELECT seq FROM events WHERE id = $2)",
                    &[&seq, &event_id],
                )
                .await?;
        }
        if changed == 0 {
            let pending: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE webhook_seq = $1 \
                     AND state = 'pending' AND event_seq = (SELECT seq FROM events WHERE id = $2))",
                    &[&seq, &event_id],
                )
                .await?
                .try_get(0)?;
            return Err(super::no_redelivery(&id, &event_id, pending));
        }
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        per_endpoint: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<DeliveryJob>> {
        let client = self.client().await?;
        let now_ms = now.timestamp_millis();
        // One statement: pick the due deliveries that head their (endpoint,
        // license) queue, skip those another process is claiming right now,
        // and lease them. A claim that waited re-checks the lease on the row
        // it locked, so no delivery is handed out twice while leased; a later
        // one of the same license is not due while an earlier one is pending.
        let stmt = client
            .prepare_cached(
                "WITH ranked AS ( \
                   SELECT d.seq, ROW_NUMBER() OVER (PARTITION BY d.webhook_seq ORDER BY d.next_attempt_ms, d.seq) \
                   + (SELECT count(*) FROM deliveries q WHERE q.webhook_seq = d.webhook_seq \
                      AND q.state = 'pending' AND q.locked_until_ms > $1) AS in_flight \
                   FROM deliveries d JOIN webhooks w ON w.seq = d.webhook_seq \
                   WHERE d.state = 'pending' AND d.next_attempt_ms <= $1 AND d.locked_until_ms <= $1 \
                   AND w.enabled AND NOT EXISTS (SELECT 1 FROM deliveries p \
                       WHERE p.webhook_seq = d.webhook_seq AND p.license_id = d.license_id \
                       AND p.state = 'pending' AND p.seq < d.seq)), \
                 due AS ( \
                   SELECT d.seq FROM deliveries d JOIN ranked r ON r.seq = d.seq \
                   WHERE r.in_flight <= $4 AND d.state = 'pending' AND d.locked_until_ms <= $1 \
                   ORDER BY d.next_attempt_ms, d.seq LIMIT $2 \
                   FOR UPDATE OF d SKIP LOCKED) \
                 UPDATE deliveries d SET locked_until_ms = $3 FROM due, webhooks w, events e \
                 WHERE d.seq = due.seq AND w.seq = d.webhook_seq AND e.seq = d.event_seq \
                 RETURNING d.seq, w.url, w.secret, e.id, e.type, e.created_at, e.data::text, \
                 d.attempts, d.first_attempt_ms, w.id",
            )
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &now_ms,
                    &i64::from(limit),
                    &(now_ms + lease.num_milliseconds()),
                    &i64::from(per_endpoint),
                ],
            )
            .await?;
        let mut jobs = rows
            .iter()
            .map(|r| {
                Ok(DeliveryJob {
                    delivery: r.try_get(0)?,
                    webhook_id: r.try_get(9)?,
                    url: r.try_get(1)?,
                    secret: r.try_get(2)?,
                    event_id: r.try_get(3)?,
                    kind: r.try_get(4)?,
                    created_at: from_unix(r.try_get(5)?),
                    data: r.try_get(6)?,
                    attempt: to_u32(r.try_get(7)?)? + 1,
                    first_attempt_at: r
                        .try_get::<_, Option<i64>>(8)?
                        .and_then(DateTime::from_timestamp_millis),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        jobs.sort_by_key(|j| j.delivery);
        Ok(jobs)
    }

    async fn finish_delivery(&self, job: DeliveryJob, result: AttemptResult) -> Result<()> {
        let client = self.client().await?;
        let at_ms = result.at.timestamp_millis();
        let (state, next_ms) = match result.next {
            DeliveryNext::Delivered => ("delivered", at_ms),
            DeliveryNext::Failed => ("failed", at_ms),
            DeliveryNext::RetryAt(t) => ("pending", t.timestamp_millis()),
        };
        // One statement; a delivery whose endpoint was deleted meanwhile is
        // gone, and then nothing is written.
        let stmt = client
            .prepare_cached(
                "WITH d AS (UPDATE deliveries SET state = $2, attempts = $3, \
                 first_attempt_ms = coalesce(first_attempt_ms, $4), next_attempt_ms = $5, \
                 locked_until_ms = 0 WHERE seq = $1 RETURNING seq, webhook_seq) \
                 INSERT INTO delivery_attempts (delivery_seq, webhook_seq, attempt, at, status_code, error, duration_ms) \
                 SELECT d.seq, d.webhook_seq, $3, $4, $6, $7, $8 FROM d",
            )
            .await?;
        client
            .execute(
                &stmt,
                &[
                    &job.delivery,
                    &state,
                    &i64::from(job.attempt),
                    &at_ms,
                    &next_ms,
                    &result.status_code.map(i64::from),
                    &result.error,
                    &(result.duration_ms as i64),
                ],
            )
            .await?;
        Ok(())
    }

    async fn admin_token_hash(&self) -> Result<Option<String>> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT v FROM meta WHERE k = 'admin_token_sha256'")
            .await?;
        Ok(client
            .query_opt(&stmt, &[])
            .await?
            .map(|row| row.try_get(0))
            .transpose()?)
    }

    async fn keep_first_admin_token_hash(&self, hash: String) -> Result<String> {
        let client = self.client().await?;
        // `DO UPDATE` to itself, so that `RETURNING` gives the stored row.
        let stmt = client
            .prepare_cached(
                "INSERT INTO meta (k, v) VALUES ('admin_token_sha256', $1) \
                 ON CONFLICT (k) DO UPDATE SET v = meta.v RETURNING v",
            )
            .await?;
        Ok(client.query_one(&stmt, &[&hash]).await?.try_get(0)?)
    }

    async fn replace_admin_token_hash(&self, hash: String) -> Result<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO meta (k, v) VALUES ('admin_token_sha256', $1) \
                 ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            )
            .await?;
        client.execute(&stmt, &[&hash]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `jsonb` writes a number as the exact decimal of the f64 it was sent
    /// as; the largest is 309 digits. It must read back as that f64 (a
    /// failure here was a 500 for the write and every later read of the
    /// license). Meaningful under `cargo test -p keysmith-server`: in a
    /// workspace build, a test dependency turns the same feature on.
    #[test]
    fn a_number_as_jsonb_writes_it_reads_back() {
        for n in [f64::MAX, -f64::MAX, 1.998_864_320_788_892e293, 5e-324] {
            let sent = serde_json::json!({ "n": n }).to_string();
            let as_jsonb = format!("{{\"n\": {}}}", exact_decimal(n));
            let back: serde_json::Value =
                serde_json::from_str(&as_jsonb).unwrap_or_else(|e| panic!("{as_jsonb}: {e}"));
            assert_eq!(back["n"].as_f64(), Some(n), "{sent} -> {as_jsonb}");
        }
    }

    /// `n` as PostgreSQL's `numeric` prints it: every digit, no exponent.
    fn exact_decimal(n: f64) -> String {
        let shortest = format!("{:e}", n.abs());
        let (mantissa, exponent) = shortest.split_once('e').expect("an exponent");
        let exponent: i32 = exponent.parse().expect("a number");
        let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
        let point = exponent + 1;
        let sign = if n < 0.0 { "-" } else { "" };
        if point >= digits.len() as i32 {
            format!(
                "{sign}{digits}{}",
                "0".repeat((point - digits.len() as i32) as usize)
            )
        } else if point > 0 {
            let (int, frac) = digits.split_at(point as usize);
            format!("{sign}{int}.{frac}")
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
        }
    }

    #[test]
    fn keysmiths_own_parameters_are_taken_off_the_url() {
        let split = |u: &str| split_options(u).unwrap();
        let plain = |url: &str, pool_size, ssl_mode| UrlOptions {
            url: url.into(),
            pool_size,
            ssl_mode,
            ssl_root_cert: None,
            ssl_client: None,
        };
        assert_eq!(
            split("postgres://h/db"),
            plain("postgres://h/db", None, SslMode::Prefer)
        );
        assert_eq!(
            split("postgres://h/db?pool_size=4"),
            plain("postgres://h/db", Some(4), SslMode::Prefer)
        );
        assert_eq!(
            split("postgres://h/db?sslmode=disable&pool_size=4&application_name=x"),
            plain(
                "postgres://h/db?application_name=x",
                Some(4),
                SslMode::Disable
            )
        );
        assert_eq!(
            split("postgres://h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"),
            UrlOptions {
                ssl_root_cert: Some("/etc/ca.pem".into()),
                ..plain("postgres://h/db", None, SslMode::VerifyFull)
            }
        );
        // libpq's rules for `sslrootcert=system` and for `require` with a
        // root file.
        assert_eq!(
            split("postgres://h/db?sslrootcert=system"),
            plain("postgres://h/db", None, SslMode::VerifyFull)
        );
        assert_eq!(
            split("postgres://h/db?sslrootcert=system&sslmode=verify-full"),
            plain("postgres://h/db", None, SslMode::VerifyFull)
        );
        assert_eq!(
            split("postgres://h/db?sslmode=require&sslrootcert=%2Fca.pem"),
            UrlOptions {
                ssl_root_cert: Some("/ca.pem".into()),
                ..plain("postgres://h/db", None, SslMode::VerifyCa)
            }
        );
        for weak in ["disable", "prefer", "require", "verify-ca"] {
            let e = split_options(&format!(
                "postgres://h/db?sslmode={weak}&sslrootcert=system"
            ))
            .unwrap_err();
            assert!(
                e.to_string().starts_with(&format!(
                    "sslmode={weak} cannot be used with sslrootcert=system"
                )),
                "{e}"
            );
        }
        assert_eq!(
            split("postgres://h/db?sslcert=%2Fc.pem&sslmode=verify-full&sslkey=%2Fk.pem"),
            UrlOptions {
                ssl_client: Some(ClientCert {
                    cert: "/c.pem".into(),
                    key: "/k.pem".into()
                }),
                ..plain("postgres://h/db", None, SslMode::VerifyFull)
            }
        );
        for (alone, says) in [
            ("sslcert=%2Fc.pem", "sslcert needs sslkey"),
            ("sslkey=%2Fk.pem", "sslkey needs sslcert"),
        ] {
            let e = split_options(&format!("postgres://h/db?{alone}")).unwrap_err();
            assert!(e.to_string().starts_with(says), "{e}");
        }
        for bad in [
            "postgres://h/db?sslcert=&sslkey=%2Fk.pem",
            "postgres://h/db?pool_size=0",
            "postgres://h/db?pool_size=many",
            "postgres://h/db?sslmode=verify",
            "postgres://h/db?sslrootcert=%FF",
        ] {
            assert!(split_options(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_root_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let path = empty.to_str().unwrap();
        let e = tls_connector(SslMode::VerifyFull, Some(path), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = tls_connector(SslMode::VerifyCa, missing.to_str(), None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("reading sslrootcert"), "{e}");
        assert!(tls_connector(SslMode::VerifyFull, None, None).is_ok());
    }

    /// `openssl req -x509 -newkey ec … -subj "/CN=keysmith unit test"`.
    const SOME_CERTIFICATE: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBjjCCATWgAwIBAgIUIi/lYwRegZ7ijbLMK69CfFZzleMwCgYIKoZIzj0EAwIw\n\
HTEbMBkGA1UEAwwSa2V5c21pdGggdW5pdCB0ZXN0MB4XDTI2MTIwNjE2MzMwNFoX\n\
DTM2MTIwMzE2MzMwNFowHTEbMBkGA1UEAwwSa2V5c21pdGggdW5pdCB0ZXN0MFkw\n\
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEFwkdo6MxYxO2jlYz10w5F/iTgpfRnKte\n\
WUkDgJSXR20THQVhF8Xxpy4ct48uWuGU6SkVV541sNCQH5hqlZ0QXaNTMFEwHQYD\n\
VR0OBBYEFHmo5L8F5zZAgbWq3mhr1LfGQRM7MB8GA1UdIwQYMBaAFHmo5L8F5zZA\n\
gbWq3mhr1LfGQRM7MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIg\n\
AiAcv0s5bgDuFdSNzbFZT+urFBJLRFsV1/xpjV7sp28CIHeQyIzGZzcMTVd8Sogl\n\
tEgd4uHnkNmtOJKkYYdaJAIu\n\
-----END CERTIFICATE-----\n\
";

    /// A client key others can read is refused before it is read (libpq's
    /// rule), and a missing or empty file is named in a clear error that
    /// shows nothing of the key.
    #[test]
    fn a_client_key_others_can_read_or_a_bad_cert_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "").unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let client = ClientCert {
            cert: cert.to_str().unwrap().into(),
            key: key.to_str().unwrap().into(),
        };
        let refused = |client: &ClientCert| {
            tls_connector(SslMode::VerifyFull, None, Some(client))
                .err()
                .expect("refused")
                .to_string()
        };
        assert!(
            refused(&client).contains("holds no certificate"),
            "{}",
            refused(&client)
        );
        // A certificate (self-signed, public only; the key is checked first).
        std::fs::write(&cert, SOME_CERTIFICATE).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = refused(&client);
        assert!(e.contains("can be read by others (mode 644)"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = refused(&client);
        assert!(e.contains("sslcert") || e.contains("sslkey"), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        std::fs::remove_file(&key).unwrap();
        assert!(refused(&client).contains("reading sslkey"));
    }
}
