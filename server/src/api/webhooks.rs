//! `/api/v1/webhooks`: endpoints, their delivery attempts, redelivery.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use keysmith_core::wire::Page;
use serde::Deserialize;

use super::{page_query, Admin, ApiError, AppState, JsonBody, Path};
use crate::store::{cursor, DeliveryAttempt, EventType, NewWebhook, Webhook, WebhookPatch};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    url: String,
    events: Vec<String>,
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    url: Option<String>,
    events: Option<Vec<String>>,
    enabled: Option<bool>,
    /// A new signing secret, shown in this answer only (a leaked one is
    /// replaced without losing the endpoint's history).
    rotate_secret: Option<bool>,
}

fn check_url(url: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "INVALID_URL",
            "url must be an absolute http(s) URL of at most 2048 bytes",
        )
    };
    let parsed = reqwest::Url::parse(url).map_err(|_| invalid())?;
    if url.len() > 2048
        || !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none()
    {
        return Err(invalid());
    }
    Ok(parsed.to_string())
}

fn check_events(events: &[String]) -> Result<Vec<EventType>, ApiError> {
    if events.is_empty() {
        return Err(ApiError::invalid(
            "INVALID_EVENTS",
            "subscribe to at least one event",
        ));
    }
    let mut out = Vec::new();
    for name in events {
        let kind = EventType::parse(name).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
            ApiError::invalid(
                "INVALID_EVENTS",
                format!("unknown event {name:?}; known: {}", known.join(", ")),
            )
        })?;
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

pub async fn create(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<Webhook>), ApiError> {
    let new = NewWebhook {
        url: check_url(&body.url)?,
        events: check_events(&body.events)?,
        enabled: body.enabled.unwrap_or(true),
        secret: crate::ids::webhook_secret(),
    };
    Ok((
        StatusCode::CREATED,
        Json(state.store.create_webhook(new, Utc::now()).await?),
    ))
}

pub async fn list(
    _: Admin,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<Webhook>>, ApiError> {
    let (data, next) = state
        .store
        .list_webhooks(page_query(query.as_deref())?)
        .await?;
    Ok(Json(Page {
        data,
        next_cursor: next.map(cursor::encode),
    }))
}

pub async fn get(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    Ok(Json(state.store.get_webhook(id).await?))
}

pub async fn update(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Json<Webhook>, ApiError> {
    let secret = (body.rotate_secret == Some(true)).then(crate::ids::webhook_secret);
    let patch = WebhookPatch {
        url: body.url.as_deref().map(check_url).transpose()?,
        events: body.events.as_deref().map(check_events).transpose()?,
        enabled: body.enabled,
        secret: secret.clone(),
    };
    let mut webhook = state.store.update_webhook(id, patch).await?;
    webhook.secret = secret;
    Ok(Json(webhook))
}

pub async fn delete(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_webhook(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn deliveries(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Page<DeliveryAttempt>>, ApiError> {
    let (data, next) = state
        .store
        .delivery_attempts(id, page_query(query.as_deref())?)
        .await?;
    Ok(Json(Page {
        data,
        next_cursor: next.map(cursor::encode),
    }))
}

pub async fn redeliver(
    _: Admin,
    State(state): State<AppState>,
    Path((id, event_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.store.redeliver(id, event_id, Utc::now()).await?;
    Ok(StatusCode::ACCEPTED)
}
