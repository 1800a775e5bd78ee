//! `POST /api/v1/validate` and `POST /api/v1/deactivate`: the public routes
//! apps call. Every `/validate` answer has the `ValidateResponse` shape, and
//! every decided one carries a signed token.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use keysmith_core::domain::{is_valid_fingerprint, normalize_domain};
use keysmith_core::token::Claims;
use keysmith_core::wire::{ValidateRequest, ValidateResponse, MAX_NONCE_LEN};
use keysmith_core::{Code, LicenseKey};
use serde::Deserialize;

use super::{body_bytes, ApiError, AppState, JsonBody};
use crate::license::token_exp;
use crate::store::{Deactivated, StoreError, ValidationInput, ValidationOutcome};

/// Longest user agent kept in the usage history.
const MAX_USER_AGENT: usize = 256;

/// Any method but POST: 405, in this route's shape as every answer of
/// `/validate` is (SPEC §3).
pub async fn wrong_method() -> Response {
    let mut answer = refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::BadRequest,
        "use POST to validate a key",
        None,
    );
    answer.headers_mut().insert(
        axum::http::header::ALLOW,
        axum::http::HeaderValue::from_static("POST"),
    );
    answer
}

fn refuse(
    status: StatusCode,
    code: Code,
    message: impl Into<String>,
    nonce: Option<String>,
) -> Response {
    let body = ValidateResponse {
        valid: false,
        code,
        error: Some(code),
        message: Some(message.into()),
        license: None,
        nonce,
        token: None,
    };
    json_answer(status, &body, None)
}

/// The answer as JSON, with `token` (`ValidateResponse::to_json_with`).
fn json_answer(status: StatusCode, body: &ValidateResponse, token: Option<&str>) -> Response {
    let content_type = [(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    (status, content_type, body.to_json_with(token)).into_response()
}

/// A request that passed every check that needs no storage.
struct Checked {
    key: LicenseKey,
    domain: Option<String>,
    fingerprint: Option<String>,
    nonce: Option<String>,
}

/// An answer decided before storage: the request was not acceptable.
struct Refusal {
    status: StatusCode,
    code: Code,
    message: String,
    nonce: Option<String>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refuse(self.status, self.code, self.message, self.nonce)
    }
}

/// Parses and checks a request without touching storage.
fn check(state: &AppState, body: &[u8]) -> Result<Checked, Refusal> {
    let refusal = |code, message: String, nonce| Refusal {
        status: StatusCode::BAD_REQUEST,
        code,
        message,
        nonce,
    };
    let req: ValidateRequest =
        super::json_object(body).map_err(|e| refusal(Code::BadRequest, e, None))?;
    let nonce = req.nonce;
    if nonce.as_ref().is_some_and(|n| n.len() > MAX_NONCE_LEN) {
        return Err(refusal(
            Code::BadRequest,
            format!("nonce is longer than {MAX_NONCE_LEN} bytes"),
            None,
        ));
    }
    let Some(raw_key) = req.key else {
        return Err(refusal(Code::BadRequest, "key is required".into(), nonce));
    };
    let key = match LicenseKey::parse_with_prefix(&raw_key, &state.key_prefix) {
        Ok(key) => key,
        Err(e) => return Err(refusal(Code::KeyMalformed, e.to_string(), nonce)),
    };
    let domain = match req.domain.as_deref().map(|d| (d, normalize_domain(d))) {
        None => None,
        Some((_, Some(d))) => Some(d),
        Some((raw, None)) => {
            return Err(refusal(
                Code::InvalidDomain,
                format!("{:?} is not a host name", crate::store::shown(raw)),
                nonce,
            ));
        }
    };
    if req
        .fingerprint
        .as_deref()
        .is_some_and(|f| !is_valid_fingerprint(f))
    {
        let message = "a fingerprint is 1 to 128 characters of A-Z a-z 0-9 . _ : -".into();
        return Err(refusal(Code::BadRequest, message, nonce));
    }
    Ok(Checked {
        key,
        domain,
        fingerprint: req.fingerprint,
        nonce,
    })
}

/// A header's value as text, trimmed and cut to at most `max` bytes between
/// characters; bytes that are not UTF-8 become U+FFFD. `None` when empty.
fn header_text(headers: &HeaderMap, name: &str, max: usize) -> Option<String> {
    let text = String::from_utf8_lossy(headers.get(name)?.as_bytes());
    let value = text.trim();
    let mut end = value.len().min(max);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let value = &value[..end];
    (!value.is_empty()).then(|| value.to_owned())
}

pub async fn validate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let headers = req.headers();
    let ip = state.client_ip(headers, peer);
    if let Err(retry_after) = state.limits.check(ip) {
        let mut answer = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            Code::RateLimited,
            "too many requests",
            None,
        );
        answer
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, retry_after.into());
        return answer;
    }
    // Read before the body consumes the request (no copy of the headers).
    let user_agent = header_text(headers, "user-agent", MAX_USER_AGENT);
    let country = state
        .country_header
        .as_deref()
        .and_then(|h| header_text(headers, h, 8));
    let body = match body_bytes(req, &state).await {
        Ok(body) => body,
        Err(ApiError::PayloadTooLarge) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::BadRequest,
                "the request body is too large",
                None,
            )
        }
        Err(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                Code::BadRequest,
                "cannot read the request body",
                None,
            )
        }
    };
    let checked = match check(&state, &body) {
        Ok(checked) => checked,
        Err(refusal) => {
            if refusal.code == Code::KeyMalformed {
                state.limits.record_failure(ip);
            }
            return refusal.into_response();
        }
    };
    let now = Utc::now();
    let input = ValidationInput {
        key: checked.key.as_str().to_owned(),
        domain: checked.domain.clone(),
        fingerprint: checked.fingerprint.clone(),
        ip: Some(ip.to_string()),
        user_agent,
        country,
        now,
    };
    let outcome = match state.store.validate(input).await {
        Ok(outcome) => outcome,
        Err(e) => return ApiError::from(e).into_validate_response(),
    };
    if outcome.code == Code::LicenseNotFound {
        state.limits.record_failure(ip);
    }
    answer(&state, &checked, outcome, now.timestamp())
}

/// Signs the decided outcome and shapes the answer.
fn answer(state: &AppState, req: &Checked, outcome: ValidationOutcome, iat: i64) -> Response {
    let valid = outcome.code == Code::Valid;
    let license = outcome.license;
    let claims = Claims {
        iss: state.signer.issuer.clone(),
        sub: license.as_ref().map(|l| l.id.clone()),
        key_sha256: req.key.sha256_hex(),
        valid,
        code: outcome.code,
        status: license.as_ref().map(|l| l.status),
        plan: license.as_ref().map(|l| l.plan.clone()),
        features: license
            .as_ref()
            .map(|l| l.features.clone())
            .unwrap_or_default(),
        license_expires_at: license
            .as_ref()
            .and_then(|l| l.expires_at)
            .map(keysmith_core::time::format_rfc3339),
        domain: req.domain.clone(),
        fingerprint: req.fingerprint.clone(),
        nonce: req.nonce.clone(),
        iat,
        exp: token_exp(
            valid,
            iat,
            outcome.offline_grace_days,
            license.as_ref().and_then(|l| l.expires_at),
        ),
    };
    let token = state.signer.tokens.sign(&claims);
    let status = if outcome.code == Code::LicenseNotFound {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    let body = ValidateResponse {
        valid,
        code: outcome.code,
        error: (!valid).then_some(outcome.code),
        message: None,
        license,
        nonce: req.nonce.clone(),
        token: None,
    };
    json_answer(status, &body, Some(&token))
}

#[derive(Deserialize)]
pub struct DeactivateBody {
    key: String,
    domain: Option<String>,
    fingerprint: Option<String>,
}

pub async fn deactivate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<DeactivateBody>,
) -> Result<Json<Deactivated>, ApiError> {
    let ip = state.client_ip(&headers, peer);
    state
        .limits
        .check(ip)
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    let key = LicenseKey::parse_with_prefix(&body.key, &state.key_prefix).map_err(|e| {
        state.limits.record_failure(ip);
        ApiError::BadRequest {
            code: "KEY_MALFORMED",
            message: e.to_string(),
        }
    })?;
    let domain = body
        .domain
        .map(|d| {
            normalize_domain(&d).ok_or_else(|| ApiError::BadRequest {
                code: "INVALID_DOMAIN",
                message: format!("{:?} is not a host name", crate::store::shown(&d)),
            })
        })
        .transpose()?;
    if body
        .fingerprint
        .as_deref()
        .is_some_and(|f| !is_valid_fingerprint(f))
    {
        return Err(ApiError::bad_request(
            "a fingerprint is 1 to 128 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    if domain.is_none() && body.fingerprint.is_none() {
        return Err(ApiError::bad_request(
            "send the domain or the fingerprint whose seat to free",
        ));
    }
    let freed = state
        .store
        .deactivate(
            key.as_str().to_owned(),
            domain,
            body.fingerprint,
            Utc::now(),
        )
        .await;
    if matches!(freed, Err(StoreError::NotFound { .. })) {
        state.limits.record_failure(ip);
    }
    Ok(Json(freed?))
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    #[tokio::test]
    async fn an_answer_is_json_with_its_status() {
        let body = ValidateResponse {
            valid: false,
            code: Code::LicenseNotFound,
            error: Some(Code::LicenseNotFound),
            message: None,
            license: None,
            nonce: None,
            token: None,
        };
        let answer = json_answer(StatusCode::NOT_FOUND, &body, Some("a.b.c"));
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
        assert_eq!(answer.headers()[CONTENT_TYPE], "application/json");
        let json = to_bytes(answer.into_body(), usize::MAX).await.unwrap();
        let back: ValidateResponse = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.token.as_deref(), Some("a.b.c"));
    }

    #[test]
    fn header_text_keeps_at_most_max_bytes_of_text() {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", HeaderValue::from_static("  MyApp/1.2  "));
        headers.insert("x-empty", HeaderValue::from_static("   "));
        headers.insert("x-long", HeaderValue::from_str(&"a".repeat(300)).unwrap());
        headers.insert("x-utf8", HeaderValue::from_bytes("é".as_bytes()).unwrap());
        assert_eq!(
            header_text(&headers, "user-agent", 256).as_deref(),
            Some("MyApp/1.2")
        );
        assert_eq!(
            header_text(&headers, "user-agent", 5).as_deref(),
            Some("MyApp")
        );
        assert_eq!(header_text(&headers, "x-empty", 256), None);
        assert_eq!(header_text(&headers, "x-missing", 256), None);
        assert_eq!(header_text(&headers, "x-long", 256), Some("a".repeat(256)));
        // UTF-8 is kept, and cut only between characters.
        assert_eq!(header_text(&headers, "x-utf8", 8).as_deref(), Some("é"));
        assert_eq!(header_text(&headers, "x-utf8", 1), None);
        headers.insert(
            "x-mixed",
            HeaderValue::from_bytes("Zürich".as_bytes()).unwrap(),
        );
        assert_eq!(header_text(&headers, "x-mixed", 2).as_deref(), Some("Z"));
        assert_eq!(header_text(&headers, "x-mixed", 3).as_deref(), Some("Zü"));
        // Bytes that are not UTF-8 (Latin-1 "é") become U+FFFD.
        headers.insert("x-latin1", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        assert_eq!(
            header_text(&headers, "x-latin1", 256).as_deref(),
            Some("caf\u{fffd}")
        );
    }
}
