//! A minimal HTTP/1.1 keep-alive client on hyper's connection API: one TCP
//! connection, one request at a time, nothing pooled or retried behind our
//! back, so that what the load generator measures is the server.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const AGENT: &str = concat!("keysmith-bench/", env!("CARGO_PKG_VERSION"));

/// One keep-alive connection to the server.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    /// hyper's half that reads and writes the socket. It is polled in the
    /// same task as the request (see `send`), not spawned: the generator
    /// shares the CPU with the server, and cross-task wake-ups cost.
    driver: http1::Connection<TokioIo<TcpStream>, Full<Bytes>>,
    host: HeaderValue,
    bearer: Option<HeaderValue>,
}

impl Connection {
    /// Connects; `admin_token` is sent as a bearer token on every request.
    pub async fn open(addr: SocketAddr, admin_token: Option<&str>) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Connection {
            sender,
            driver,
            host: HeaderValue::from_str(&addr.to_string())?,
            bearer: admin_token
                .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
                .transpose()?,
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(USER_AGENT, AGENT);
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some(bearer) = &self.bearer {
            request = request.header(AUTHORIZATION, bearer.clone());
        }
        let request = request.body(Full::new(body))?;
        let Connection { sender, driver, .. } = self;
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::select! {
            answer = exchange => answer,
            closed = driver => match closed {
                Ok(()) => anyhow::bail!("the server closed the connection"),
                Err(e) => Err(e.into()),
            },
        }
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.send(Method::POST, path, body).await
    }
}
