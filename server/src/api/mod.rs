//! The HTTP API: routing, authentication, the error shape, and one module per
//! resource. Handlers are thin: parse → call the store or a rule → map.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::{request::Parts, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use keysmith_core::wire::{ErrorBody, ErrorDetail};
use serde::de::DeserializeOwned;

use crate::auth::AdminAuth;
use crate::config::ServeArgs;
use crate::signing::Signer;
use crate::store::{cursor, PageRequest, Precondition, Store, StoreError};

mod keys;
mod licenses;
pub mod limit;
mod openapi;
mod plans;
mod validate;
mod webhooks;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub signer: Arc<Signer>,
    pub admin: AdminAuth,
    pub key_prefix: Arc<str>,
    pub country_header: Option<Arc<str>>,
    pub client_ip_header: Option<Arc<str>>,
    pub limits: limit::RateLimits,
    /// Wrong admin tokens per client IP: `--failed-lookup-limit` a minute.
    pub admin_failures: limit::RateLimits,
    /// `--max-body-bytes`.
    pub max_body_bytes: usize,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        signer: Arc<Signer>,
        admin: AdminAuth,
        args: &ServeArgs,
    ) -> AppState {
        AppState {
            store,
            signer,
            admin,
            key_prefix: args.key_prefix.as_str().into(),
            country_header: args.country_header.as_deref().map(Into::into),
            client_ip_header: args.client_ip_header.as_deref().map(Into::into),
            limits: limit::RateLimits::new(args.rate_limit, args.failed_lookup_limit),
            admin_failures: limit::RateLimits::new(0, args.failed_lookup_limit),
            max_body_bytes: args.max_body_bytes,
        }
    }

    /// The client's IP: from the configured proxy header, else the socket.
    /// The header's last address (of its last line): the one the trusted
    /// proxy wrote. What precedes it came from the client — a proxy that
    /// appends (nginx's `$proxy_add_x_forwarded_for`, most load balancers)
    /// keeps what the client sent in front — and would let one client take
    /// any address's budget.
    fn client_ip(&self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        self.client_ip_header
            .as_deref()
            .and_then(|h| headers.get_all(h).iter().next_back())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
            .unwrap_or_else(|| peer.ip())
    }
}

/// Builds the router with every route, the body limit, the request timeout
/// and request logging.
pub fn router(state: AppState, max_body_bytes: usize, request_timeout: Duration) -> Router {
    // The API's routes with their full paths, not a router nested under
    // `/api/v1`: nesting costs every request a second routing step.
    Router::new()
        .route(
            "/api/v1/licenses",
            post(licenses::create).get(licenses::list),
        )
        .route(
            "/api/v1/licenses/{id}",
            get(licenses::get)
                .put(licenses::update)
                .delete(licenses::revoke),
        )
        .route("/api/v1/licenses/{id}/usage", get(licenses::usage))
        .route(
            "/api/v1/licenses/{id}/domains/{domain}",
            delete(licenses::free_domain),
        )
        .route(
            "/api/v1/licenses/{id}/machines/{fingerprint}",
            delete(licenses::free_machine),
        )
        .route(
            "/api/v1/validate",
            post(validate::validate).fallback(validate::wrong_method),
        )
        .route("/api/v1/deactivate", post(validate::deactivate))
        .route("/api/v1/plans", get(plans::list))
        .route(
            "/api/v1/plans/{name}",
            get(plans::get).put(plans::put).delete(plans::delete),
        )
        .route(
            "/api/v1/webhooks",
            post(webhooks::create).get(webhooks::list),
        )
        .route(
            "/api/v1/webhooks/{id}",
            get(webhooks::get)
                .put(webhooks::update)
                .delete(webhooks::delete),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/api/v1/webhooks/{id}/deliveries/{event_id}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/api/v1/public-key", get(keys::public_key))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/.well-known/jwks.json", get(keys::jwks))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // One layer for both, not two: each layer costs every request a
        // boxed clone of the service behind it.
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            time_out_and_log(req, next, request_timeout)
        }))
        .with_state(state)
}

/// `GET /readyz`: 200 while the storage answers a read within 2 s, else
/// 503 — for a load balancer that should stop sending requests to a server
/// that cannot reach its database (`/healthz` says only that it serves).
async fn ready(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let read = tokio::time::timeout(Duration::from_secs(2), state.store.list_plans()).await;
    match read {
        Ok(Ok(_)) => Json(serde_json::json!({"status": "ok"})).into_response(),
        failed => {
            let cause = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 2 s".to_owned(),
            };
            tracing::warn!(%cause, "not ready: the storage does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "unavailable"})),
            )
                .into_response()
        }
    }
}

/// Answers a request that takes longer than `timeout` with 408 (in the
/// `/validate` shape on that route), and logs one line per request:
/// method, path (never the query, which may hold a key), status and
/// latency. The routes apps call on every start (`/validate`,
/// `/deactivate`, the public key, `/healthz`) log at `debug`: at tens of
/// thousands of requests a second a line each would cost more than the
/// validation itself. Management routes log at `info`, and any 5xx at
/// `error`.
async fn time_out_and_log(req: Request, next: Next, timeout: Duration) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let response = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) if uri.path() == "/api/v1/validate" => ApiError::Timeout.into_validate_response(),
        Err(_) => ApiError::Timeout.into_response(),
    };
    let status = response.status().as_u16();
    let latency_us = start.elapsed().as_micros() as u64;
    let path = loggable(uri.path());
    let path = path.as_ref();
    if status >= 500 {
        tracing::error!(%method, %path, status, latency_us, "request");
    } else if is_app_route(path) {
        tracing::debug!(%method, %path, status, latency_us, "request");
    } else {
        tracing::info!(%method, %path, status, latency_us, "request");
    }
    response
}

/// The path as the log shows it: a segment that may be a license key
/// (someone put a key where an id goes, `/licenses/KS-…`) is shown as
/// `<key?>`, never whole — a key is what a customer paid for.
fn loggable(path: &str) -> std::borrow::Cow<'_, str> {
    fn may_be_key(segment: &str) -> bool {
        // A prefix of 2 to 8 and 24 symbols, so at least 26 characters:
        // the routes' own segments end here, without decoding or counting.
        if segment.len() < 26 {
            return false;
        }
        let mut symbols = 0;
        for c in percent_encoding::percent_decode_str(segment)
            .decode_utf8_lossy()
            .chars()
        {
            match c {
                '-' => {}
                c if c.is_whitespace() || keysmith_core::key::is_typographic_dash(c) => {}
                // A domain has dots; an id is shorter.
                c if c.is_ascii_alphanumeric() => symbols += 1,
                _ => return false,
            }
        }
        (26..=32).contains(&symbols)
    }
    if !path.split('/').any(may_be_key) {
        return path.into();
    }
    path.split('/')
        .map(|segment| {
            if may_be_key(segment) {
                "<key?>"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
        .into()
}

fn is_app_route(path: &str) -> bool {
    matches!(
        path,
        "/api/v1/validate"
            | "/api/v1/deactivate"
            | "/api/v1/public-key"
            | "/.well-known/jwks.json"
            | "/healthz"
            | "/readyz"
    )
}

/// Every error of the management routes, mapped to HTTP in one place.
#[derive(Debug)]
pub enum ApiError {
    BadRequest { code: &'static str, message: String },
    Unauthorized,
    PayloadTooLarge,
    RateLimited { retry_after: u64 },
    Timeout,
    RouteNotFound,
    MethodNotAllowed,
    Store(StoreError),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code: "BAD_REQUEST",
            message: message.into(),
        }
    }

    /// Text with a NUL character, refused before storage: PostgreSQL takes
    /// none in `text` or `jsonb`, and no field of the API needs one.
    fn nul_text() -> ApiError {
        ApiError::bad_request("text must not contain the NUL character (\\u0000, %00)")
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Store(StoreError::Invalid {
            code,
            message: message.into(),
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::Store(e)
    }
}

impl ApiError {
    /// The status, code and message of the answer (logs a storage failure's
    /// cause, which the message never holds).
    fn parts(self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::BadRequest { code, message } => (StatusCode::BAD_REQUEST, code, message),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "send Authorization: Bearer <admin token>".to_owned(),
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "the request body is too large".to_owned(),
            ),
            ApiError::RateLimited { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!("too many requests; retry in {retry_after} s"),
            ),
            ApiError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "TIMEOUT",
                "the request took too long; try again".to_owned(),
            ),
            ApiError::RouteNotFound => (
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no such route".to_owned(),
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this route does not take that method".to_owned(),
            ),
            ApiError::Store(StoreError::NotFound { code, message }) => {
                (StatusCode::NOT_FOUND, code, message)
            }
            ApiError::Store(StoreError::Conflict { code, message }) => {
                (StatusCode::CONFLICT, code, message)
            }
            ApiError::Store(StoreError::Invalid { code, message }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            ApiError::Store(StoreError::PreconditionFailed(message)) => (
                StatusCode::PRECONDITION_FAILED,
                "PRECONDITION_FAILED",
                message,
            ),
            ApiError::Store(StoreError::Storage(cause)) => {
                tracing::error!(%cause, "storage failure");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    "internal error; see the server log".to_owned(),
                )
            }
        }
    }

    /// The answer in the shape of every `/validate` answer (SPEC §3), for
    /// what stops a validation before any decision: a timeout, a storage
    /// failure. Its `code` is then one of the management routes' codes.
    pub fn into_validate_response(self) -> Response {
        let (status, code, message) = self.parts();
        let body = serde_json::json!({
            "valid": false,
            "code": code,
            "error": code,
            "message": message,
            "license": null,
            "nonce": null,
            "token": null,
        });
        (status, Json(body)).into_response()
    }
}

/// A record's answer with its `ETag`, which a later `If-Match` names.
pub struct Tagged<T>(pub String, pub T);

impl<T: serde::Serialize> IntoResponse for Tagged<T> {
    fn into_response(self) -> Response {
        let mut response = Json(self.1).into_response();
        if let Ok(tag) = axum::http::HeaderValue::from_str(&format!("\"{}\"", self.0)) {
            response.headers_mut().insert(axum::http::header::ETAG, tag);
        }
        response
    }
}

/// The condition of a conditional write, from its `If-Match` (`*` or the
/// `ETag`s of the versions it may replace) or `If-None-Match: *` (create
/// only); weak tags never match (RFC 9110's strong comparison).
pub fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    use axum::http::header::{IF_MATCH, IF_NONE_MATCH};
    let list = |name| -> Result<Option<Vec<String>>, ApiError> {
        let mut items = Vec::new();
        for value in headers.get_all(&name) {
            let value = value.to_str().map_err(|_| {
                ApiError::bad_request(format!("{name} must be ASCII entity tags or *"))
            })?;
            items.extend(value.split(',').map(|t| t.trim().to_owned()));
        }
        Ok((!items.is_empty()).then_some(items))
    };
    let entity_tag = |item: &str| -> Result<Option<String>, ApiError> {
        let (weak, quoted) = match item.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, item),
        };
        let inner = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .filter(|t| !t.contains('"'))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "If-Match takes * or entity tags in double quotes, as the ETag header \
                     gives them; not {:?}",
                    crate::store::shown(item)
                ))
            })?;
        Ok((!weak).then(|| inner.to_owned()))
    };
    match (list(IF_MATCH)?, list(IF_NONE_MATCH)?) {
        (None, None) => Ok(Precondition::None),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "send If-Match or If-None-Match, not both",
        )),
        (Some(items), None) if items == ["*"] => Ok(Precondition::Exists),
        (Some(items), None) => {
            let mut tags = Vec::new();
            for item in &items {
                tags.extend(entity_tag(item)?);
            }
            Ok(Precondition::TagIn(tags))
        }
        (None, Some(items)) if items == ["*"] => Ok(Precondition::Absent),
        (None, Some(_)) => Err(ApiError::bad_request(
            "If-None-Match takes only * here: create the record only if it does not exist",
        )),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match self {
            ApiError::RateLimited { retry_after } => Some(retry_after),
            _ => None,
        };
        let (status, code, message) = self.parts();
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110: a 401 names the scheme it wants.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// Requires the admin bearer token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    /// The admin token, guessed at no faster than `--failed-lookup-limit`
    /// wrong tokens a minute per client IP: past that, the IP gets 429 (even
    /// with the right token) until its budget refills. A request without an
    /// `Authorization` header is not a guess and does not count.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, ApiError> {
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| state.client_ip(&parts.headers, info.0));
        if let Some(ip) = ip {
            state
                .admin_failures
                .check(ip)
                .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
        }
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if state.admin.check_header(header) {
            return Ok(Admin);
        }
        // A request with no token guesses nothing: counted, it would let
        // anyone behind the admin's address (a NAT, a proxy) lock them out.
        if let Some(ip) = ip.filter(|_| header.is_some()) {
            state.admin_failures.record_failure(ip);
            tracing::warn!(%ip, "a management request with a wrong admin token");
        }
        Err(ApiError::Unauthorized)
    }
}

/// Path parameters whose every failure (e.g. invalid UTF-8 once
/// percent-decoded) is answered in the API's error shape, not axum's text.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Path<T>, ApiError> {
        if parts.uri.path().contains("%00") {
            return Err(ApiError::nul_text());
        }
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// A JSON body whose every failure is answered in the API's error shape.
pub struct JsonBody<T>(pub T);

/// Reads the body within the size limit. One declared larger is refused
/// before any of it is read, instead of waiting for bytes that may never
/// come.
async fn body_bytes(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body_bytes as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::bad_request(rejection.body_text())
        }
    })
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<JsonBody<T>, ApiError> {
        let bytes = body_bytes(req, state).await?;
        if has_nul_escape(&bytes) {
            return Err(ApiError::nul_text());
        }
        json_object(&bytes)
            .map(JsonBody)
            .map_err(ApiError::bad_request)
    }
}

/// A request body that must be a JSON object, or why not. Anything else is
/// refused by name: serde would read an array as a struct's fields in order
/// ("expected struct DeactivateBody with 3 elements").
pub(crate) fn json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        return Err("invalid JSON body: it must be a JSON object ({…})".to_owned());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON body: {e}"))
}

/// Whether a JSON text has a `\u0000` escape: a NUL in one of its strings
/// (JSON has escapes nowhere else, and a raw NUL byte is not JSON at all).
fn has_nul_escape(json: &[u8]) -> bool {
    let mut rest = json;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        if rest[at + 1..].starts_with(b"u0000") {
            return true;
        }
        // Skips the escaped character too, so `\\u0000` is not one.
        rest = rest.get(at + 2..).unwrap_or_default();
    }
    false
}

/// Parses a query string into `T`, answering failures in the error shape.
pub fn parse_query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    if raw.is_some_and(|q| q.contains("%00")) {
        return Err(ApiError::nul_text());
    }
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
}

/// The largest page a list returns.
pub const MAX_LIMIT: u32 = 500;
const DEFAULT_LIMIT: u32 = 50;

/// The query of a list without filters.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Parses a page-only query (`limit`, `cursor`).
pub fn page_query(raw: Option<&str>) -> Result<PageRequest, ApiError> {
    let q: PageQuery = parse_query(raw)?;
    page_request(q.limit, q.cursor.as_deref())
}

/// `limit` and `cursor` of a list request.
pub fn page_request(limit: Option<u32>, cursor: Option<&str>) -> Result<PageRequest, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let before = cursor
        .map(|c| {
            cursor::decode(c).ok_or(ApiError::BadRequest {
                code: "BAD_CURSOR",
                message: "cursor is not one this server handed out".into(),
            })
        })
        .transpose()?;
    Ok(PageRequest { before, limit })
}

/// Deserialises a field that may be absent (outer `None`), `null`
/// (`Some(None)`) or a value.
pub fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}
