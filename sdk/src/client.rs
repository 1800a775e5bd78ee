//! The async client: builder, online validation, and the offline fallback.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keysmith_core::domain::{is_valid_fingerprint, normalize_domain};
use keysmith_core::token::{Claims, KeySet};
use keysmith_core::wire::{ValidateRequest, ValidateResponse};
use keysmith_core::{Code, KeyError, LicenseKey};
use rand::RngCore;

use crate::cache::{self, Entry};
use crate::error::{Error, Kind};
use crate::rules::{self, Expected};
use crate::validation::{Source, Validation};

/// The user agent sent unless [`ClientBuilder::user_agent`] sets another.
pub const DEFAULT_USER_AGENT: &str = concat!("keysmith-rust/", env!("CARGO_PKG_VERSION"));

/// How long a request may take unless [`ClientBuilder::timeout`] says
/// otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The app id used unless [`ClientBuilder::app_id`] sets one.
pub const DEFAULT_APP_ID: &str = "keysmith";

type ClockFn = dyn Fn() -> SystemTime + Send + Sync;

/// Validates license keys against a Keysmith server, verifying every answer
/// with the pinned public key and falling back to a cached answer offline.
///
/// Cheap to clone (an `Arc` inside) and `Send + Sync`: share one client
/// across tasks and threads. Needs a tokio runtime, like `reqwest`; without
/// one use [`blocking::Client`](crate::blocking::Client) (feature
/// `blocking`).
///
/// ```no_run
/// # async fn run() -> Result<(), keysmith::Error> {
/// use keysmith::{Client, ValidateOptions};
///
/// let client = Client::builder("https://license.example.com")
///     .public_key("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
///     .app_id("acme-editor")
///     .build()?;
/// let answer = client
///     .validate("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9", &ValidateOptions::new())
///     .await?;
/// println!("{} ({})", answer.code, answer.source);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    validate_url: String,
    deactivate_url: String,
    keys: KeySet,
    app_id: String,
    cache_dir: PathBuf,
    offline_grace_secs: Option<i64>,
    key_prefix: Option<String>,
    clock: Option<Arc<ClockFn>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("keysmith::Client")
            .field("validate_url", &self.inner.validate_url)
            .field("app_id", &self.inner.app_id)
            .field("cache_dir", &self.inner.cache_dir)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Client`]. Every setter consumes and returns the builder.
#[must_use = "a builder does nothing until .build()"]
#[derive(Clone)]
pub struct ClientBuilder {
    server_url: String,
    public_key: Option<String>,
    app_id: String,
    cache_dir: Option<PathBuf>,
    timeout: Duration,
    offline_grace: Option<Duration>,
    user_agent: String,
    key_prefix: Option<String>,
    clock: Option<Arc<ClockFn>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("keysmith::ClientBuilder")
            .field("server_url", &self.server_url)
            .field("app_id", &self.app_id)
            .field("cache_dir", &self.cache_dir)
            .field("timeout", &self.timeout)
            .field("offline_grace", &self.offline_grace)
            .finish_non_exhaustive()
    }
}

/// What to validate a key for, besides the key: the domain and/or machine
/// fingerprint whose seat it takes.
///
/// ```
/// let options = keysmith::ValidateOptions::new()
///     .domain("shop.example.com")
///     .fingerprint("b7e1c0ffee");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ValidateOptions {
    domain: Option<String>,
    fingerprint: Option<String>,
}

impl ValidateOptions {
    /// No domain, no fingerprint.
    pub fn new() -> ValidateOptions {
        ValidateOptions::default()
    }

    /// The domain the license is used on; normalised as the server does
    /// (lowercase, no trailing dot, IDN to punycode).
    pub fn domain(mut self, domain: impl Into<String>) -> ValidateOptions {
        self.domain = Some(domain.into());
        self
    }

    /// The machine fingerprint, e.g. from
    /// [`machine_fingerprint`](crate::machine_fingerprint): 1 to 128
    /// characters of `A-Z a-z 0-9 . _ : -`.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> ValidateOptions {
        self.fingerprint = Some(fingerprint.into());
        self
    }
}

impl ClientBuilder {
    /// The license server's public key(s): base64 of the 32 raw Ed25519
    /// bytes, as `GET /api/v1/public-key` shows it (or base64url, as the
    /// JWKS's `x`). Compile it into your app;
    /// never fetch it at run time. Several keys separated by commas are all
    /// trusted, picked by the token's `kid` — ship the next key before the
    /// server switches to it. Required.
    pub fn public_key(mut self, keys: impl Into<String>) -> ClientBuilder {
        self.public_key = Some(keys.into());
        self
    }

    /// Names your app: it picks the default cache dir and salts the cache
    /// file names. 1 to 64 characters of `A-Z a-z 0-9 . _ -`, not starting
    /// with a dot. Default `"keysmith"`.
    pub fn app_id(mut self, app_id: impl Into<String>) -> ClientBuilder {
        self.app_id = app_id.into();
        self
    }

    /// Where cached answers live. Default: the platform's cache dir for the
    /// app id (`$XDG_CACHE_HOME/<app_id>` or `~/.cache/<app_id>` on Linux,
    /// `~/Library/Caches/<app_id>` on macOS, `%LOCALAPPDATA%\<app_id>\cache`
    /// on Windows). Created (mode 0700 on Unix) on first write.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> ClientBuilder {
        self.cache_dir = Some(dir.into());
        self
    }

    /// How long one request to the server may take, connecting included,
    /// before the client answers from the cache. Default 10 s.
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// Trusts cached answers offline for at most this long after the server
    /// issued them. Can only shorten the grace the server grants (the
    /// token's `exp`), never lengthen it.
    pub fn offline_grace(mut self, grace: Duration) -> ClientBuilder {
        self.offline_grace = Some(grace);
        self
    }

    /// The `User-Agent` of requests (the server records it in the usage
    /// history). Default `keysmith-rust/<version>`.
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> ClientBuilder {
        self.user_agent = user_agent.into();
        self
    }

    /// Also requires keys to carry this prefix (e.g. `"KS"`, in any case as
    /// keys are), so that a key from another vendor is `KEY_MALFORMED`
    /// without a request. By default any well-formed key is sent and the
    /// server judges its prefix.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> ClientBuilder {
        self.key_prefix = Some(prefix.into().to_ascii_uppercase());
        self
    }

    /// **For tests.** Replaces the system clock the offline rules read, so
    /// that a test can step past the offline grace or set the clock back.
    /// Has no effect on what the server decides.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// let eight_days_later = || SystemTime::now() + Duration::from_secs(8 * 86_400);
    /// let builder = keysmith::Client::builder("http://127.0.0.1:8080").clock(eight_days_later);
    /// ```
    pub fn clock(mut self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> ClientBuilder {
        self.clock = Some(Arc::new(now));
        self
    }

    /// Makes the client. Fails on a missing or malformed public key, a
    /// server URL that is not `http(s)://…`, a bad app id or key prefix, or
    /// a cache dir (the one set, else the platform's) where no answer can be
    /// written: found out now rather than the first time the app is offline.
    pub fn build(self) -> Result<Client, Error> {
        let list = self.public_key.ok_or_else(|| {
            Error::new(
                Kind::PublicKey,
                "no public key: pin the server's key with .public_key(..)",
            )
        })?;
        let keys = KeySet::from_base64_list(&list)
            .map_err(|e| Error::new(Kind::PublicKey, format!("bad public key: {e}")))?;
        let api = api_base(&self.server_url)?;
        if !is_valid_app_id(&self.app_id) {
            return Err(Error::new(
                Kind::Builder,
                format!("app id {:?} {APP_ID_RULE}", self.app_id),
            ));
        }
        if let Some(prefix) = &self.key_prefix {
            if !keysmith_core::key::is_valid_prefix(prefix) {
                return Err(Error::new(
                    Kind::Builder,
                    format!("key prefix {prefix:?} must be 2 to 8 uppercase letters or digits"),
                ));
            }
        }
        let cache_dir = match self.cache_dir {
            Some(dir) => usable_cache_dir(dir, "cache dir")?,
            None => usable_cache_dir(default_cache_dir(&self.app_id)?, "the platform's cache dir")?,
        };
        let http = reqwest::Client::builder()
            // A redirect is not the server's answer: followed, a POST would
            // come back as a GET (answered 405), and an app would follow
            // anyone who can answer for the URL to wherever they say.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .user_agent(self.user_agent)
            .build()
            .map_err(|e| Error::new(Kind::Builder, format!("cannot make the HTTP client: {e}")))?;
        let offline_grace_secs = self
            .offline_grace
            .map(|g| i64::try_from(g.as_secs()).unwrap_or(i64::MAX));
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                validate_url: format!("{api}validate"),
                deactivate_url: format!("{api}deactivate"),
                keys,
                app_id: self.app_id,
                cache_dir,
                offline_grace_secs,
                key_prefix: self.key_prefix,
                clock: self.clock,
            }),
        })
    }
}

/// The API's base URL, `…/api/v1/`, under the server URL's own path.
fn api_base(server_url: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::new(Kind::Builder, format!("server URL {server_url:?} {why}"));
    let url = reqwest::Url::parse(server_url).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("must be http:// or https:// with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    let path = url.path().trim_end_matches('/');
    if path.ends_with("/api/v1") || path.ends_with("/api/v1/validate") {
        return Err(bad(
            "names the API's path: give the server's base URL, without /api/v1",
        ));
    }
    Ok(format!("{}/api/v1/", url.as_str().trim_end_matches('/')))
}

/// What an app id may be, for messages.
pub(crate) const APP_ID_RULE: &str =
    "must be 1 to 64 characters of A-Z a-z 0-9 . _ - not starting with a dot";

pub(crate) fn is_valid_app_id(app_id: &str) -> bool {
    (1..=64).contains(&app_id.len())
        && !app_id.starts_with('.')
        && app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The cache dir (`what`: the one given, or the platform's) if it can hold
/// answers: one that cannot is refused at once, rather than found out the
/// first time the app is offline (a failed write costs an online answer
/// nothing).
fn usable_cache_dir(dir: PathBuf, what: &str) -> Result<PathBuf, Error> {
    if dir.as_os_str().is_empty() {
        return Err(Error::new(
            Kind::Builder,
            "the cache dir is empty: name a directory, or leave it unset for the platform's",
        ));
    }
    cache::check_dir(&dir).map_err(|e| {
        Error::new(
            Kind::Builder,
            format!("{what} {}: {e}; name another cache dir", dir.display()),
        )
    })?;
    Ok(dir)
}

fn default_cache_dir(app_id: &str) -> Result<PathBuf, Error> {
    directories::ProjectDirs::from("", "", app_id)
        .map(|dirs| dirs.cache_dir().to_path_buf())
        .ok_or_else(|| {
            Error::new(
                Kind::Builder,
                "no home directory to put the license cache in: set one with .cache_dir(..)",
            )
        })
}

/// A request after the local checks: what it asks, and where its cache is.
#[derive(Debug, Clone)]
struct Prepared {
    key: LicenseKey,
    key_sha256: String,
    domain: Option<String>,
    fingerprint: Option<String>,
    cache_path: PathBuf,
    /// Where a refusal of the whole license is kept for every request of
    /// the key ([`cache::refusal_path`]).
    refusal_path: PathBuf,
}

impl Prepared {
    fn expected(&self) -> Expected<'_> {
        Expected {
            key_sha256: &self.key_sha256,
            domain: self.domain.as_deref(),
            fingerprint: self.fingerprint.as_deref(),
        }
    }
}

/// What the server said, when it said something usable.
enum Answer {
    /// A verified token that answers this request.
    Signed { token: String, claims: Box<Claims> },
    /// The server could not read the key (its prefix, usually): unsigned.
    KeyMalformed,
}

impl Client {
    /// Starts configuring a client for the server at `server_url` (e.g.
    /// `https://license.example.com`; a path prefix is kept).
    pub fn builder(server_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            server_url: server_url.into(),
            public_key: None,
            app_id: DEFAULT_APP_ID.to_owned(),
            cache_dir: None,
            timeout: DEFAULT_TIMEOUT,
            offline_grace: None,
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            key_prefix: None,
            clock: None,
        }
    }

    /// Validates `key`: checks it locally, asks the server, verifies the
    /// signed answer, caches it; offline, answers from the cache. The rules
    /// are in the crate docs.
    ///
    /// `Ok` is an answer — valid or not (`KEY_MALFORMED`,
    /// `LICENSE_REVOKED`, `OFFLINE_GRACE_EXPIRED`, `CLOCK_TAMPERED`, …).
    /// `Err` means no answer: the server is unreachable (or its answer did
    /// not verify) and there is no usable cached answer, or `options` holds
    /// an unusable domain or fingerprint.
    pub async fn validate(
        &self,
        key: &str,
        options: &ValidateOptions,
    ) -> Result<Validation, Error> {
        let Some(req) = self.prepare(key, options)? else {
            return Ok(Validation::malformed(Source::Local));
        };
        let nonce = new_nonce();
        match self.ask_server(&req, &nonce).await {
            Ok(Answer::Signed { token, claims }) => {
                let until = rules::offline_until(&claims, self.inner.offline_grace_secs);
                let now = self.now();
                // Deciding is a small read; the write fsyncs, so it goes
                // off the async workers. A failed write costs only the
                // offline fallback, never this answer — but a refusal that
                // cannot be written must not leave an older VALID in its
                // place (a full disk, a quota, a file-size limit): the entry
                // goes, which works when writing does not.
                let (inner, req, fresh) = (self.inner.clone(), req.clone(), claims.clone());
                let _ =
                    tokio::task::spawn_blocking(move || inner.remember(&req, token, &fresh, now))
                        .await;
                let code = claims.code;
                Ok(Validation::from_claims(
                    *claims,
                    code,
                    Source::Online,
                    until,
                ))
            }
            // Unsigned, so anyone on the way could have sent it: a cached
            // answer (which a server signed for this very key) outranks it.
            Ok(Answer::KeyMalformed) => Ok(self
                .answer_from_cache_off_workers(&req)
                .await
                .unwrap_or_else(|| Validation::malformed(Source::Online))),
            Err(e) if falls_back(&e) => match self.answer_from_cache_off_workers(&req).await {
                Some(answer) => Ok(answer),
                None => Err(e.without_cache()),
            },
            Err(e) => Err(e),
        }
    }

    /// [`answer_from_cache`](Self::answer_from_cache) for the async
    /// workers: its record of the clock is written (and fsynced) on a
    /// blocking thread.
    async fn answer_from_cache_off_workers(&self, req: &Prepared) -> Option<Validation> {
        let (answer, record) = self.answer_from_cache(req)?;
        if let Some(record) = record {
            let _ = tokio::task::spawn_blocking(move || record.write()).await;
        }
        Some(answer)
    }

    /// Answers from the cache alone, as [`validate`](Self::validate) does
    /// when the server cannot be reached — without trying the server.
    /// Useful at start-up to avoid waiting for the network; fails with
    /// [`Error::is_no_cache`] when nothing usable is cached.
    pub async fn validate_offline(
        &self,
        key: &str,
        options: &ValidateOptions,
    ) -> Result<Validation, Error> {
        let Some(req) = self.prepare(key, options)? else {
            return Ok(Validation::malformed(Source::Local));
        };
        self.answer_from_cache_off_workers(&req)
            .await
            .ok_or_else(no_cache)
    }

    /// The synchronous body of [`validate_offline`](Self::validate_offline):
    /// it never waits on the network.
    pub(crate) fn validate_offline_now(
        &self,
        key: &str,
        options: &ValidateOptions,
    ) -> Result<Validation, Error> {
        let Some(req) = self.prepare(key, options)? else {
            return Ok(Validation::malformed(Source::Local));
        };
        let (answer, record) = self.answer_from_cache(&req).ok_or_else(no_cache)?;
        if let Some(record) = record {
            record.write();
        }
        Ok(answer)
    }

    /// The cache file that holds the answer for `key` with `options`. Fails
    /// on a malformed key or an unusable option.
    pub fn cache_path(&self, key: &str, options: &ValidateOptions) -> Result<PathBuf, Error> {
        match self.prepare(key, options)? {
            Some(req) => Ok(req.cache_path),
            None => Err(keysmith_core::key::check_key(key)
                .err()
                .map(Error::from)
                .unwrap_or_else(|| Error::new(Kind::KeyMalformed, "the key has another prefix"))),
        }
    }

    /// Frees the seat this app holds on `key` — the domain and the machine
    /// fingerprint of `options`, whichever are set — so that another domain
    /// or machine can take it (the app moves to a new machine, the
    /// customer's site to a new domain), and removes the cached answer for
    /// that request, so that the app does not go on working here offline.
    ///
    /// It needs the server: no cached answer stands in. `Err` for a
    /// malformed key ([`Error::is_key_malformed`]), neither a domain nor a
    /// fingerprint or an unusable one ([`Error::is_invalid_argument`]), a key
    /// no license has ([`Error::is_not_found`]), no answer
    /// ([`Error::is_network`], [`Error::is_protocol`]), or a cached answer
    /// that cannot be removed after the seat was freed
    /// ([`Error::is_builder`]: the cache dir became unusable). A seat that
    /// was not held is not an error: the answer says what was freed.
    pub async fn deactivate(
        &self,
        key: &str,
        options: &ValidateOptions,
    ) -> Result<Deactivation, Error> {
        let req = self.prepared(self.parse_key(key)?, options)?;
        if req.domain.is_none() && req.fingerprint.is_none() {
            return Err(Error::new(
                Kind::InvalidArgument,
                "give the domain or the fingerprint whose seat to free",
            ));
        }
        let url = &self.inner.deactivate_url;
        let (status, bytes) = self.post(url, &req, None).await?;
        if status.is_success() {
            let freed: Deactivation = parse_answer(url, status, &bytes)?;
            let path = req.cache_path.clone();
            let removed = tokio::task::spawn_blocking(move || {
                let _locked = path.parent().and_then(cache::lock);
                cache::remove(&path)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            // Kept, the answer would let this machine go on offline.
            return match removed {
                Ok(()) => Ok(freed),
                Err(e) => Err(Error::new(
                    Kind::Builder,
                    format!(
                        "the seat was freed, but the cached answer {} cannot be removed",
                        req.cache_path.display()
                    ),
                )
                .with_source(e)),
            };
        }
        let refusal = parse_answer::<keysmith_core::wire::ErrorBody>(url, status, &bytes)?.error;
        let kind = match status {
            // Only the server's own word: any other 404 (a wrong path in
            // the server URL) says nothing about the license.
            reqwest::StatusCode::NOT_FOUND if refusal.code == "LICENSE_NOT_FOUND" => Kind::NotFound,
            reqwest::StatusCode::NOT_FOUND => {
                return Err(Error::new(
                    Kind::Protocol,
                    format!(
                        "{url} answered 404 {}: {} (is the server URL right?)",
                        refusal.code, refusal.message
                    ),
                ))
            }
            s if s.is_client_error() => Kind::InvalidArgument,
            _ => Kind::Protocol,
        };
        Err(Error::new(
            kind,
            format!("the server refused to free the seat: {}", refusal.message),
        ))
    }

    /// The app id this client was built with.
    pub fn app_id(&self) -> &str {
        &self.inner.app_id
    }

    /// The directory of the cache files.
    pub fn cache_dir(&self) -> &Path {
        &self.inner.cache_dir
    }

    fn now(&self) -> i64 {
        self.inner.now()
    }

    /// The local checks. `Ok(None)`: the key is malformed (an answer, not
    /// an error).
    fn prepare(&self, key: &str, options: &ValidateOptions) -> Result<Option<Prepared>, Error> {
        match self.parse_key(key) {
            Ok(key) => self.prepared(key, options).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The local key check, with this client's key prefix if it has one.
    fn parse_key(&self, key: &str) -> Result<LicenseKey, KeyError> {
        match &self.inner.key_prefix {
            Some(prefix) => LicenseKey::parse_with_prefix(key, prefix),
            None => LicenseKey::parse(key),
        }
    }

    /// The checks of `options` for a well-formed `key`.
    fn prepared(&self, key: LicenseKey, options: &ValidateOptions) -> Result<Prepared, Error> {
        let domain = match options.domain.as_deref() {
            None => None,
            Some(raw) => Some(normalize_domain(raw).ok_or_else(|| {
                Error::new(
                    Kind::InvalidArgument,
                    format!("domain {raw:?} is not a host name"),
                )
            })?),
        };
        if let Some(fp) = options.fingerprint.as_deref() {
            if !is_valid_fingerprint(fp) {
                return Err(Error::new(
                    Kind::InvalidArgument,
                    "a fingerprint is 1 to 128 characters of A-Z a-z 0-9 . _ : -",
                ));
            }
        }
        let (dir, app_id) = (&self.inner.cache_dir, &self.inner.app_id);
        let cache_path = cache::file_path(
            dir,
            app_id,
            &key,
            domain.as_deref(),
            options.fingerprint.as_deref(),
        );
        Ok(Prepared {
            key_sha256: key.sha256_hex(),
            refusal_path: cache::refusal_path(dir, app_id, &key),
            key,
            domain,
            fingerprint: options.fingerprint.clone(),
            cache_path,
        })
    }

    async fn ask_server(&self, req: &Prepared, nonce: &str) -> Result<Answer, Error> {
        let url = &self.inner.validate_url;
        let (status, bytes) = self.post(url, req, Some(nonce)).await?;
        let answer: ValidateResponse = parse_answer(url, status, &bytes)?;
        match answer.token {
            Some(token) => {
                let claims = self.inner.keys.verify(&token)?;
                rules::check_claims(&claims, &req.expected(), Some(nonce))?;
                Ok(Answer::Signed {
                    token,
                    claims: Box::new(claims),
                })
            }
            None => match answer.code {
                Code::KeyMalformed => Ok(Answer::KeyMalformed),
                Code::InvalidDomain | Code::BadRequest => Err(Error::new(
                    Kind::InvalidArgument,
                    format!(
                        "the server refused the request: {}",
                        answer.message.as_deref().unwrap_or(answer.code.as_str())
                    ),
                )),
                Code::RateLimited => Err(Error::new(
                    Kind::Network { timeout: false },
                    format!("the server at {url} is rate limiting this client"),
                )),
                code => Err(Error::new(
                    Kind::Signature,
                    format!("the server's answer is not trusted: {code} without a signed token"),
                )),
            },
        }
    }

    /// POSTs `req` (with `nonce`) to `url`: the answer's status and body,
    /// or no answer (a network failure, 5xx, 429, 408, a redirect).
    async fn post(
        &self,
        url: &str,
        req: &Prepared,
        nonce: Option<&str>,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), Error> {
        let body = ValidateRequest {
            key: Some(req.key.as_str().to_owned()),
            domain: req.domain.clone(),
            fingerprint: req.fingerprint.clone(),
            nonce: nonce.map(str::to_owned),
        };
        let response = self
            .inner
            .http
            .post(url)
            .json(&body)
            .send()
            .await
            .map_err(|e| network_error(url, e))?;
        let status = response.status();
        if let Some(e) = unanswered(url, &response) {
            return Err(e);
        }
        let bytes = response.bytes().await.map_err(|e| network_error(url, e))?;
        Ok((status, bytes.to_vec()))
    }

    /// The offline answer for `req`, or `None` when nothing usable is
    /// cached; with the record of the clock to write, if any (it fsyncs).
    fn answer_from_cache(&self, req: &Prepared) -> Option<(Validation, Option<ClockRecord>)> {
        let now = self.now();
        let (entry, claims) = self.inner.load_verified(&req.cache_path, &req.expected())?;
        if claims.valid {
            // The license refused meanwhile, told for another domain or
            // fingerprint: that refusal stands here too (in the same second,
            // the refusal is taken for the later).
            if let Some(refusal) = self.inner.license_refusal(req) {
                if refusal.iat >= claims.iat {
                    // Replayed as any cached refusal is (rule 1).
                    let grace = self.inner.offline_grace_secs;
                    return Some((rules::offline_answer(refusal, 0, now, grace), None));
                }
            }
        }
        let newest = rules::newest_seen(entry.newest_seen, &claims);
        let answer = rules::offline_answer(
            claims,
            entry.newest_seen,
            now,
            self.inner.offline_grace_secs,
        );
        // Record how far the clock has come, so that setting it back later
        // shows. Never move the record backwards, and never record a time the
        // answer calls tampered.
        let record = (answer.code != Code::ClockTampered && now > newest + rules::REFRESH_SECS)
            .then(|| ClockRecord {
                path: req.cache_path.clone(),
                entry: Entry::new(entry.token, now),
            });
        Some((answer, record))
    }
}

/// How far the clock has come, to record in a cache entry.
struct ClockRecord {
    path: PathBuf,
    /// The cached token with the time now.
    entry: Entry,
}

impl ClockRecord {
    /// Writes it, only over the same token: an online answer written
    /// meanwhile (a revocation, say) must not be replaced by this older one.
    fn write(self) {
        let _locked = self.path.parent().and_then(cache::lock);
        if cache::load(&self.path).is_some_and(|current| current.token == self.entry.token) {
            let _ = cache::store(&self.path, &self.entry);
        }
    }
}

/// A request that got no answer.
fn network_error(url: &str, e: reqwest::Error) -> Error {
    let timeout = e.is_timeout();
    let what = if timeout { "timed out" } else { "failed" };
    Error::new(
        Kind::Network { timeout },
        format!("the request to {url} {what}"),
    )
    .with_source(e)
}

/// A status that is no answer from the server: a timeout, 5xx, 429, or a
/// redirect (not followed).
fn unanswered(url: &str, response: &reqwest::Response) -> Option<Error> {
    let status = response.status();
    let timeout = status == reqwest::StatusCode::REQUEST_TIMEOUT;
    if timeout || status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Some(Error::new(
            Kind::Network { timeout },
            format!("the server at {url} answered {status}"),
        ));
    }
    status.is_redirection().then(|| {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| format!(" to {l:?}"))
            .unwrap_or_default();
        Error::new(
            Kind::Protocol,
            format!(
                "{url} answered {status}, a redirect{location}, which is not followed: \
                 give the client the server URL it points to"
            ),
        )
    })
}

/// The JSON body of an answer from `url`, or the protocol error of one that
/// is not Keysmith's.
fn parse_answer<T: serde::de::DeserializeOwned>(
    url: &str,
    status: reqwest::StatusCode,
    bytes: &[u8],
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            Kind::Protocol,
            format!("{url} answered {status} with something that is not a Keysmith answer"),
        )
        .with_source(e)
    })
}

/// What [`Client::deactivate`] freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub struct Deactivation {
    /// The request's domain held a seat, now free.
    pub domain_freed: bool,
    /// The request's fingerprint held a seat, now free.
    pub machine_freed: bool,
}

fn no_cache() -> Error {
    Error::new(Kind::NoCache, "no usable cached answer for this key")
}

impl Inner {
    fn now(&self) -> i64 {
        let now = match &self.clock {
            Some(clock) => clock(),
            None => SystemTime::now(),
        };
        match now.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
        }
    }

    /// The cache entry at `path` if its token verifies and answers this
    /// request; anything else is ignored (and replaced on the next online
    /// answer).
    fn load_verified(&self, path: &Path, expected: &Expected<'_>) -> Option<(Entry, Claims)> {
        let entry = cache::load(path)?;
        let claims = self.keys.verify(&entry.token).ok()?;
        rules::check_claims(&claims, expected, None).ok()?;
        Some((entry, claims))
    }

    /// Stores a fresh verified answer for `req`, as [`entry_to_store`]
    /// decides. A failed write costs only the offline fallback, never this
    /// answer — but a refusal that cannot be written must not leave an
    /// older VALID in its place (a full disk, a quota, a file-size limit):
    /// the entry goes, which works when writing does not.
    ///
    /// [`entry_to_store`]: Self::entry_to_store
    fn remember(&self, req: &Prepared, token: String, claims: &Claims, now: i64) {
        let _locked = cache::lock(&self.cache_dir);
        let path = &req.cache_path;
        if let Some(entry) = self.entry_to_store(path, &req.expected(), token, claims, now) {
            if cache::store(path, &entry).is_err() && !claims.valid {
                let _ = cache::remove(path);
            }
            let newer = |old: Claims| old.iat <= claims.iat;
            if rules::is_license_wide(claims) && self.license_refusal(req).is_none_or(newer) {
                let _ = cache::store(&req.refusal_path, &entry);
            }
        }
    }

    /// The latest refusal of the whole license cached for `req`'s key, under
    /// any domain and fingerprint, verified.
    fn license_refusal(&self, req: &Prepared) -> Option<Claims> {
        let entry = cache::load(&req.refusal_path)?;
        let claims = self.keys.verify(&entry.token).ok()?;
        (claims.key_sha256 == req.key_sha256 && rules::is_license_wide(&claims)).then_some(claims)
    }

    /// The entry to store for a fresh verified answer, if any. A signed
    /// refusal always replaces what is cached (SPEC §7: a revocation is
    /// never hidden, even when it was signed by a server whose clock is
    /// behind the one that signed the cached answer). A `VALID` answer does
    /// not replace a refusal issued later (a slower concurrent request must
    /// not put back an older answer). `None` when the cached answer says the
    /// same and is less than a minute old: no write (two fsyncs).
    fn entry_to_store(
        &self,
        path: &Path,
        expected: &Expected<'_>,
        token: String,
        claims: &Claims,
        now: i64,
    ) -> Option<Entry> {
        // This answer, signed now for this request's nonce, says what time
        // it is: the newest time seen starts again from it, or from the
        // local clock if that is behind it. Not from a local clock ahead
        // (it may be put right before the app next goes offline), and not
        // from the server's time for a clock behind it (a machine whose
        // clock runs slow would be "tampered" until it caught up).
        let mut entry = Entry::new(token, claims.iat.min(now));
        if let Some((old, old_claims)) = self.load_verified(path, expected) {
            let old_newest = rules::newest_seen(old.newest_seen, &old_claims);
            if rules::is_fresh_copy(&old_claims, old_newest, claims, now) {
                return None;
            }
            if claims.valid && !old_claims.valid && old_claims.iat > claims.iat {
                // A slower request's older VALID: the later refusal stays.
                entry.token = old.token;
                entry.newest_seen = old_claims.iat;
            }
        }
        Some(entry)
    }
}

/// Errors after which the cache may answer instead: the server did not give
/// a usable answer. Not bad arguments.
fn falls_back(e: &Error) -> bool {
    matches!(
        e.kind(),
        Kind::Network { .. } | Kind::Protocol | Kind::Signature
    )
}

/// A fresh random nonce: 128 bits, hex.
fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::public_key;

    fn builder() -> ClientBuilder {
        Client::builder("http://127.0.0.1:9")
            .public_key(public_key())
            .cache_dir("/tmp/ks-unused")
    }

    /// Two answers for one entry written at once, from two threads or two
    /// processes: a VALID signed before a refusal, and the refusal. The
    /// refusal must stay whatever the order (a VALID older than a cached
    /// refusal does not replace it), so deciding and writing are one step:
    /// a VALID decided on before the refusal was written could be written
    /// after it.
    #[test]
    fn an_older_valid_written_beside_a_refusal_never_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let client = builder().cache_dir(dir.path()).build().unwrap();
        let key = LicenseKey::generate("KS").unwrap();
        let req = client.prepared(key, &ValidateOptions::new()).unwrap();
        let signer = keysmith_core::token::TokenSigner::new(crate::test_support::signing_key());
        let claims = |code: Code, iat: i64| Claims {
            iss: "test".into(),
            sub: Some("lic_TEST".into()),
            key_sha256: req.key_sha256.clone(),
            valid: code == Code::Valid,
            code,
            status: Some(if code == Code::Valid {
                keysmith_core::Status::Active
            } else {
                keysmith_core::Status::Revoked
            }),
            plan: Some("p".into()),
            features: Vec::new(),
            license_expires_at: None,
            domain: None,
            fingerprint: None,
            nonce: None,
            iat,
            exp: iat + 86_400,
        };
        for round in 0..40 {
            let _ = std::fs::remove_file(&req.cache_path);
            let iat = 1_800_000_000 + round * 10;
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|scope| {
                for answer in [
                    claims(Code::Valid, iat),
                    claims(Code::LicenseRevoked, iat + 1),
                ] {
                    let (client, req, barrier) = (&client, &req, &barrier);
                    let token = signer.sign(&answer);
                    scope.spawn(move || {
                        barrier.wait();
                        client.inner.remember(req, token, &answer, iat + 2);
                    });
                }
            });
            let (_, kept) = client
                .inner
                .load_verified(&req.cache_path, &req.expected())
                .unwrap();
            assert_eq!(kept.code, Code::LicenseRevoked, "round {round}");
        }
    }

    #[test]
    fn client_is_send_sync_and_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Client>();
    }

    #[test]
    fn builder_refuses_what_cannot_work() {
        assert!(Client::builder("http://x")
            .cache_dir("/tmp")
            .build()
            .unwrap_err()
            .is_public_key());
        assert!(builder()
            .public_key("AAAA")
            .build()
            .unwrap_err()
            .is_public_key());
        for url in ["", "ftp://x.com", "x.com", "http://x.com/?a=1"] {
            let err = Client::builder(url)
                .public_key(public_key())
                .cache_dir("/tmp")
                .build()
                .unwrap_err();
            assert!(err.is_builder(), "{url}: {err}");
        }
        for app_id in ["", ".hidden", "a/b", &"a".repeat(65)] {
            assert!(
                builder().app_id(app_id).build().unwrap_err().is_builder(),
                "{app_id}"
            );
        }
        assert!(builder()
            .key_prefix("k s")
            .build()
            .unwrap_err()
            .is_builder());
        assert!(
            builder().key_prefix("ks").build().is_ok(),
            "any case, as keys"
        );
        // A cache dir that cannot hold answers is refused at once, not
        // found out when the app is first offline.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let missing = dir.path().join("new/nested");
        for bad in [Path::new(""), &file, &file.join("below")] {
            let err = builder().cache_dir(bad).build().unwrap_err();
            assert!(err.is_builder(), "{bad:?}: {err}");
        }
        builder().cache_dir(&missing).build().unwrap();
        assert!(missing.is_dir(), "created");
        assert_eq!(
            std::fs::read_dir(&missing).unwrap().count(),
            0,
            "no probe left"
        );
        assert!(builder()
            .app_id("acme-editor_2.0")
            .key_prefix("ACME")
            .build()
            .is_ok());
    }

    #[test]
    fn the_validate_url_keeps_a_path_prefix() {
        let validate_url = |server: &str| {
            Client::builder(server)
                .public_key(public_key())
                .cache_dir("/tmp/ks-unused")
                .build()
                .map(|c| c.inner.validate_url.clone())
        };
        assert_eq!(
            validate_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/api/v1/validate"
        );
        assert_eq!(
            validate_url("https://x.com/ks/").unwrap(),
            "https://x.com/ks/api/v1/validate"
        );
        // The API's own path is the SDK's to add: given, it would be
        // doubled (a 404 the cache would hide).
        for api in [
            "http://127.0.0.1:8080/api/v1",
            "http://127.0.0.1:8080/api/v1/",
            "https://x.com/ks/api/v1/validate",
        ] {
            let err = validate_url(api).unwrap_err();
            assert!(
                err.is_builder() && err.to_string().contains("without"),
                "{err}"
            );
        }
    }

    #[test]
    fn local_checks_come_before_anything_else() {
        let client = builder().build().unwrap();
        let key = LicenseKey::generate("KS").unwrap();
        let opts = ValidateOptions::new();
        assert!(client.prepare("KS-0000", &opts).unwrap().is_none());
        assert!(client.prepare(key.as_str(), &opts).unwrap().is_some());
        let bad_domain = ValidateOptions::new().domain("not a host");
        assert!(client
            .prepare(key.as_str(), &bad_domain)
            .unwrap_err()
            .is_invalid_argument());
        let bad_fp = ValidateOptions::new().fingerprint("has space");
        assert!(client
            .prepare(key.as_str(), &bad_fp)
            .unwrap_err()
            .is_invalid_argument());

        let acme = builder().key_prefix("ACME").build().unwrap();
        assert!(
            acme.prepare(key.as_str(), &opts).unwrap().is_none(),
            "other prefix"
        );
        assert!(acme
            .cache_path(key.as_str(), &opts)
            .unwrap_err()
            .is_key_malformed());
        assert!(client
            .cache_path("KS-0000", &opts)
            .unwrap_err()
            .is_key_malformed());
    }

    #[test]
    fn the_cache_path_names_the_normalised_request() {
        let client = builder().build().unwrap();
        let key = LicenseKey::generate("KS").unwrap();
        let lower = client
            .cache_path(key.as_str(), &ValidateOptions::new().domain("example.com"))
            .unwrap();
        let upper = client
            .cache_path(
                &key.as_str().to_lowercase(),
                &ValidateOptions::new().domain("EXAMPLE.com."),
            )
            .unwrap();
        assert_eq!(lower, upper);
        assert!(lower.starts_with("/tmp/ks-unused"));
    }

    #[test]
    fn nonces_are_fresh() {
        let (a, b) = (new_nonce(), new_nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
