//! `/api/v1/licenses`: create, read, list, update, revoke, usage, seats.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use keysmith_core::domain::{is_valid_fingerprint, normalize_domain};
use keysmith_core::wire::{License, Page};
use keysmith_core::{LicenseKey, Status};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    nullable, page_query, page_request, parse_query, precondition, Admin, ApiError, AppState,
    JsonBody, Path, Tagged,
};
use crate::store::{cursor, license_tag, LicenseFilter, LicensePatch, NewLicense};

/// The largest `metadata` object, serialised.
const MAX_METADATA_BYTES: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    plan: String,
    customer_email: String,
    #[serde(default, deserialize_with = "nullable")]
    max_domains: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    max_machines: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
    metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    plan: Option<String>,
    customer_email: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    max_domains: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    max_machines: Option<Option<u32>>,
    #[serde(default, deserialize_with = "nullable")]
    expires_at: Option<Option<String>>,
    metadata: Option<Map<String, Value>>,
    status: Option<String>,
}

/// A license with its `ETag` (what a `PUT` with `If-Match` names).
fn tagged(license: License) -> Tagged<License> {
    Tagged(license_tag(&license), license)
}

/// A trimmed e-mail address with a host-name domain, or 422 `INVALID_EMAIL`.
fn check_email(email: &str) -> Result<String, ApiError> {
    let email = email.trim();
    let invalid = || {
        ApiError::invalid(
            "INVALID_EMAIL",
            format!("{:?} is not an e-mail address", crate::store::shown(email)),
        )
    };
    let (local, domain) = email.rsplit_once('@').ok_or_else(invalid)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '@');
    if !local_ok || email.len() > 254 || !normalize_domain(domain).is_some_and(|d| d.contains('.'))
    {
        return Err(invalid());
    }
    Ok(email.to_owned())
}

fn check_metadata(metadata: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    if Value::Object(metadata.clone()).to_string().len() > MAX_METADATA_BYTES {
        return Err(ApiError::invalid(
            "METADATA_TOO_LARGE",
            format!("metadata must serialise to at most {MAX_METADATA_BYTES} bytes"),
        ));
    }
    Ok(metadata)
}

fn parse_expiry(value: Option<Option<String>>) -> Result<Option<Option<DateTime<Utc>>>, ApiError> {
    value
        .map(|v| {
            v.map(|s| {
                keysmith_core::time::parse_rfc3339(&s).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "expires_at {s:?} is not an RFC 3339 time such as 2027-03-06T00:00:00Z"
                    ))
                })
            })
            .transpose()
        })
        .transpose()
}

pub async fn create(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Tagged<License>), ApiError> {
    let new = NewLicense {
        key_prefix: state.key_prefix.to_string(),
        plan: body.plan,
        customer_email: check_email(&body.customer_email)?,
        max_domains: body.max_domains,
        max_machines: body.max_machines,
        expires_at: parse_expiry(body.expires_at)?,
        metadata: check_metadata(body.metadata.unwrap_or_default())?,
    };
    let license = state.store.create_license(new, Utc::now()).await?;
    Ok((StatusCode::CREATED, tagged(license)))
}

pub async fn get(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Tagged<License>, ApiError> {
    Ok(tagged(state.store.get_license(id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    plan: Option<String>,
    customer_email: Option<String>,
    key: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list(
    _: Admin,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<License>>, ApiError> {
    let q: ListQuery = parse_query(query.as_deref())?;
    let page = page_request(q.limit, q.cursor.as_deref())?;
    let filter = LicenseFilter {
        status: q
            .status
            .map(|s| {
                Status::parse(&s).ok_or_else(|| {
                    ApiError::bad_request(
                        "status must be one of active, suspended, expired, revoked",
                    )
                })
            })
            .transpose()?,
        plan: q.plan,
        customer_email: q.customer_email.map(|e| e.trim().to_owned()),
        key: q
            .key
            .map(|k| {
                LicenseKey::parse(&k)
                    .map(|k| k.as_str().to_owned())
                    .map_err(|e| ApiError::BadRequest {
                        code: "KEY_MALFORMED",
                        message: e.to_string(),
                    })
            })
            .transpose()?,
    };
    let (data, next) = state.store.list_licenses(filter, page).await?;
    Ok(Json(Page {
        data,
        next_cursor: next.map(cursor::encode),
    }))
}

pub async fn update(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Tagged<License>, ApiError> {
    let patch = LicensePatch {
        precondition: precondition(&headers)?,
        plan: body.plan,
        customer_email: body
            .customer_email
            .as_deref()
            .map(check_email)
            .transpose()?,
        max_domains: body.max_domains,
        max_machines: body.max_machines,
        expires_at: parse_expiry(body.expires_at)?,
        metadata: body.metadata.map(check_metadata).transpose()?,
        status: body
            .status
            .map(|s| {
                Status::parse(&s).ok_or_else(|| {
                    ApiError::bad_request("status must be \"active\" or \"suspended\"")
                })
            })
            .transpose()?,
    };
    Ok(tagged(
        state.store.update_license(id, patch, Utc::now()).await?,
    ))
}

pub async fn revoke(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Tagged<License>, ApiError> {
    Ok(tagged(state.store.revoke_license(id, Utc::now()).await?))
}

pub async fn usage(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let page = state.store.usage(id, page_query(query.as_deref())?).await?;
    Ok(Json(json!({
        "data": page.records,
        "next_cursor": page.next_before.map(cursor::encode),
        "totals": page.totals,
    })))
}

pub async fn free_domain(
    _: Admin,
    State(state): State<AppState>,
    Path((id, domain)): Path<(String, String)>,
) -> Result<Tagged<License>, ApiError> {
    let domain = normalize_domain(&domain).ok_or_else(|| ApiError::BadRequest {
        code: "INVALID_DOMAIN",
        message: format!("{:?} is not a host name", crate::store::shown(&domain)),
    })?;
    Ok(tagged(
        state.store.free_domain(id, domain, Utc::now()).await?,
    ))
}

pub async fn free_machine(
    _: Admin,
    State(state): State<AppState>,
    Path((id, fingerprint)): Path<(String, String)>,
) -> Result<Tagged<License>, ApiError> {
    if !is_valid_fingerprint(&fingerprint) {
        return Err(ApiError::bad_request(
            "a fingerprint is 1 to 128 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    Ok(tagged(
        state
            .store
            .free_machine(id, fingerprint, Utc::now())
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(check_email(" dev@example.com ").unwrap(), "dev@example.com");
        for bad in [
            "",
            "dev",
            "@example.com",
            "dev@",
            "dev@localhost",
            "d ev@example.com",
            "dev@exa mple.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
    }
}
