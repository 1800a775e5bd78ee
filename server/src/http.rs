//! The HTTP/1.1 accept loop: bounded connections, a header read timeout
//! (slowloris), a per-request timeout, and graceful shutdown that finishes
//! in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The most a request's head (request line and headers) may take; larger
/// heads get 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Limits of the connection layer.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one client (`limit::client`) may hold; more are closed
    /// at once. 0: no limit.
    pub max_connections_per_ip: usize,
    /// Time a client has to send a request's headers (also between
    /// keep-alive requests).
    pub header_read_timeout: Duration,
}

/// Serves `router` until `shutdown` completes, then waits for in-flight
/// requests (at most `drain`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = PerIp::new(limits.max_connections_per_ip);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The most a request's head may take, and a connection's read
        // buffer: hyper's default buffer, ~400 KiB, let 10,000 connections
        // that never end their headers hold 4 GB. No request of the API
        // needs more.
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("semaphore open"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(held) = per_ip.take(peer.ip()) else {
            tracing::debug!(peer = %peer.ip(), "closed a connection over its address's limit");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(req)
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are clients going away or timing out: not ours to log loudly.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
            drop(held);
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => tracing::warn!("in-flight requests still running after {drain:?}; stopping"),
    }
}

/// Connections held per client, against `ConnLimits::max_connections_per_ip`.
#[derive(Clone)]
struct PerIp {
    max: usize,
    held: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// One connection of a client, given back when dropped.
struct Held {
    of: PerIp,
    client: std::net::IpAddr,
}

impl PerIp {
    fn new(max: usize) -> PerIp {
        PerIp {
            max,
            held: Arc::default(),
        }
    }

    /// A connection for `ip`'s client, or `None` when it holds its limit.
    fn take(&self, ip: std::net::IpAddr) -> Option<Option<Held>> {
        if self.max == 0 {
            return Some(None);
        }
        let client = crate::api::limit::client(ip);
        let mut held = self.held.lock().expect("per-ip lock");
        let count = held.entry(client).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Some(Held {
            of: self.clone(),
            client,
        }))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.of.held.lock().expect("per-ip lock");
        if let Some(count) = held.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.client);
            }
        }
    }
}
