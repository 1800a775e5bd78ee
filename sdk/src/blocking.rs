//! A blocking client for callers without a tokio runtime (feature
//! `blocking`), like `reqwest::blocking`: it owns a small runtime of its own.
//!
//! ```no_run
//! use keysmith::blocking::Client;
//! use keysmith::ValidateOptions;
//!
//! let client = Client::builder("https://license.example.com")
//!     .public_key("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
//!     .app_id("acme-editor")
//!     .build()?;
//! let answer = client.validate("KS-7H2K-Q9WM-4XRT-8CVP-N3FJ-VCZ9", &ValidateOptions::new())?;
//! if !answer.valid {
//!     eprintln!("not licensed: {}", answer.message());
//! }
//! # Ok::<(), keysmith::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Kind};
use crate::{Deactivation, ValidateOptions, Validation};

/// The blocking flavour of [`crate::Client`]: same rules, same answers.
///
/// `Send + Sync` and cheap to clone: one client may be used from many
/// threads at once (each call blocks only its own thread). Do not call it
/// from inside an async runtime — use [`crate::Client`] there.
///
/// A client survives `fork()`: in the child process (a worker of a
/// pre-forking server, Python's `multiprocessing`) its first call makes
/// the client a runtime and connections of its own, since the parent's
/// runtime thread does not exist there and its connections are the
/// parent's. (What the parent had is left untouched, never closed.)
#[derive(Clone, Debug)]
pub struct Client {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// How to make the client again, in a forked child.
    builder: crate::ClientBuilder,
    app_id: String,
    cache_dir: PathBuf,
    current: Mutex<Current>,
}

/// The client of one process.
#[derive(Clone, Debug)]
struct Current {
    pid: u32,
    inner: crate::Client,
    runtime: Arc<Runtime>,
}

/// Configures a blocking [`Client`]; the setters are those of
/// [`crate::ClientBuilder`].
#[must_use = "a builder does nothing until .build()"]
#[derive(Debug)]
pub struct ClientBuilder {
    inner: crate::ClientBuilder,
}

/// The runtime that drives requests; shut down without waiting when the
/// last client goes, so dropping a client never blocks (or panics inside
/// another runtime).
#[derive(Debug)]
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl ClientBuilder {
    /// See [`crate::ClientBuilder::public_key`].
    pub fn public_key(self, keys: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.public_key(keys),
        }
    }

    /// See [`crate::ClientBuilder::app_id`].
    pub fn app_id(self, app_id: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.app_id(app_id),
        }
    }

    /// See [`crate::ClientBuilder::cache_dir`].
    pub fn cache_dir(self, dir: impl Into<PathBuf>) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.cache_dir(dir),
        }
    }

    /// See [`crate::ClientBuilder::timeout`].
    pub fn timeout(self, timeout: Duration) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.timeout(timeout),
        }
    }

    /// See [`crate::ClientBuilder::offline_grace`].
    pub fn offline_grace(self, grace: Duration) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.offline_grace(grace),
        }
    }

    /// See [`crate::ClientBuilder::user_agent`].
    pub fn user_agent(self, user_agent: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.user_agent(user_agent),
        }
    }

    /// See [`crate::ClientBuilder::key_prefix`].
    pub fn key_prefix(self, prefix: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.key_prefix(prefix),
        }
    }

    /// **For tests.** See [`crate::ClientBuilder::clock`].
    pub fn clock(self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> ClientBuilder {
        ClientBuilder {
            inner: self.inner.clock(now),
        }
    }

    /// Makes the client and its runtime; fails as
    /// [`crate::ClientBuilder::build`] does, or when no runtime thread can
    /// be started.
    pub fn build(self) -> Result<Client, Error> {
        let current = start(self.inner.clone())?;
        Ok(Client {
            shared: Arc::new(Shared {
                builder: self.inner,
                app_id: current.inner.app_id().to_owned(),
                cache_dir: current.inner.cache_dir().to_owned(),
                current: Mutex::new(current),
            }),
        })
    }
}

/// The clients a forked child inherited from its parent, which it must not
/// drop (see `Client::current`); kept reachable, not leaked, until the
/// process exits.
static INHERITED: Mutex<Vec<Current>> = Mutex::new(Vec::new());

/// A runtime and a client on it, for this process.
fn start(builder: crate::ClientBuilder) -> Result<Current, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("keysmith-blocking")
        .enable_all()
        .build()
        .map_err(|e| {
            Error::new(
                Kind::Builder,
                format!("cannot start the client's runtime: {e}"),
            )
        })?;
    let inner = {
        let _guard = runtime.enter();
        builder.build()?
    };
    Ok(Current {
        pid: std::process::id(),
        inner,
        runtime: Arc::new(Runtime(Some(runtime))),
    })
}

impl Client {
    /// Starts configuring a client for the server at `server_url`.
    pub fn builder(server_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            inner: crate::Client::builder(server_url),
        }
    }

    /// See [`crate::Client::validate`]: the same answers, blocking the
    /// calling thread for at most about the configured timeout.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime.
    pub fn validate(&self, key: &str, options: &ValidateOptions) -> Result<Validation, Error> {
        let current = self.current()?;
        let runtime = current
            .runtime
            .0
            .as_ref()
            .expect("runtime lives as long as the client");
        runtime.block_on(current.inner.validate(key, options))
    }

    /// See [`crate::Client::deactivate`]: frees this app's seat and forgets
    /// its cached answer, blocking for at most about the configured timeout.
    ///
    /// # Panics
    ///
    /// When called from inside an async runtime.
    pub fn deactivate(&self, key: &str, options: &ValidateOptions) -> Result<Deactivation, Error> {
        let current = self.current()?;
        let runtime = current
            .runtime
            .0
            .as_ref()
            .expect("runtime lives as long as the client");
        runtime.block_on(current.inner.deactivate(key, options))
    }

    /// See [`crate::Client::validate_offline`]: never touches the network.
    pub fn validate_offline(
        &self,
        key: &str,
        options: &ValidateOptions,
    ) -> Result<Validation, Error> {
        self.current()?.inner.validate_offline_now(key, options)
    }

    /// See [`crate::Client::cache_path`].
    pub fn cache_path(&self, key: &str, options: &ValidateOptions) -> Result<PathBuf, Error> {
        self.current()?.inner.cache_path(key, options)
    }

    /// The app id this client was built with.
    pub fn app_id(&self) -> &str {
        &self.shared.app_id
    }

    /// The directory of the cache files.
    pub fn cache_dir(&self) -> &Path {
        &self.shared.cache_dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        // Held for a clone or a rebuild, never across a request: nothing
        // can panic while holding it, so a poisoned lock is still whole.
        self.shared
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This process's client, made anew after a `fork()`: the parent's
    /// runtime thread does not exist in the child, and its pooled
    /// connections are the parent's. Those are kept for good in
    /// [`INHERITED`], never dropped — dropping would close (and, over TLS,
    /// write to) the parent's connections and wait for a thread that is
    /// not there.
    fn current(&self) -> Result<Current, Error> {
        let mut current = self.lock();
        if current.pid != std::process::id() {
            let fresh = start(self.shared.builder.clone())?;
            let inherited = std::mem::replace(&mut *current, fresh);
            INHERITED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(inherited);
        }
        Ok(current.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::public_key;

    #[test]
    fn is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<Client>();
    }

    #[test]
    fn answers_from_many_threads_without_a_runtime_of_the_caller() {
        // Port 9 (discard) is closed on loopback: every thread gets the
        // same "no answer" quickly, none panics or deadlocks.
        let dir = tempfile::tempdir().unwrap();
        let client = Client::builder("http://127.0.0.1:9")
            .public_key(public_key())
            .cache_dir(dir.path())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let key = keysmith_core::LicenseKey::generate("KS").unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let err = client
                        .validate(key.as_str(), &ValidateOptions::new())
                        .unwrap_err();
                    assert!(err.is_network(), "{err:#}");
                    let typo = client
                        .validate("KS-0000-0000", &ValidateOptions::new())
                        .unwrap();
                    assert_eq!(typo.code, keysmith_core::Code::KeyMalformed);
                });
            }
        });
    }

    #[tokio::test]
    async fn dropping_inside_an_async_runtime_does_not_panic() {
        let client = Client::builder("http://127.0.0.1:9")
            .public_key(public_key())
            .cache_dir("/tmp/ks-unused")
            .build()
            .unwrap();
        drop(client);
    }
}
