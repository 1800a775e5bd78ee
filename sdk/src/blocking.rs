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
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Kind};
use crate::{ValidateOptions, Validation};

/// The blocking flavour of [`crate::Client`]: same rules, same answers.
///
/// `Send + Sync` and cheap to clone: one client may be used from many
/// threads at once (each call blocks only its own thread). Do not call it
/// from inside an async runtime — use [`crate::Client`] there.
#[derive(Clone, Debug)]
pub struct Client {
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
                .with_source(e)
            })?;
        let inner = {
            let _guard = runtime.enter();
            self.inner.build()?
        };
        Ok(Client {
            inner,
            runtime: Arc::new(Runtime(Some(runtime))),
        })
    }
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
        self.block_on(self.inner.validate(key, options))
    }

    /// See [`crate::Client::validate_offline`]: never touches the network.
    pub fn validate_offline(
        &self,
        key: &str,
        options: &ValidateOptions,
    ) -> Result<Validation, Error> {
        self.inner.validate_offline_now(key, options)
    }

    /// See [`crate::Client::cache_path`].
    pub fn cache_path(&self, key: &str, options: &ValidateOptions) -> Result<PathBuf, Error> {
        self.inner.cache_path(key, options)
    }

    /// The app id this client was built with.
    pub fn app_id(&self) -> &str {
        self.inner.app_id()
    }

    /// The directory of the cache files.
    pub fn cache_dir(&self) -> &Path {
        self.inner.cache_dir()
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime
            .0
            .as_ref()
            .expect("runtime lives as long as the client")
            .block_on(future)
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
