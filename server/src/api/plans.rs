//! `/api/v1/plans`: features, default limits, duration and offline grace.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use keysmith_core::wire::{Page, Plan, DEFAULT_OFFLINE_GRACE_DAYS};
use serde::Deserialize;

use super::{precondition, Admin, ApiError, AppState, JsonBody, Path, Tagged};
use crate::store::plan_tag;

const MAX_FEATURES: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanBody {
    name: Option<String>,
    features: Vec<String>,
    max_domains: Option<u32>,
    max_machines: Option<u32>,
    duration_days: Option<u32>,
    offline_grace_days: Option<u32>,
}

/// 1 to 64 of `A-Z a-z 0-9 - _ .`, not only dots: `.` and `..` are path
/// segments that URL libraries remove, so such a plan could not be named
/// in a URL by most clients (the CLI's included).
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.bytes().all(|b| b == b'.');
    ok.then_some(()).ok_or_else(|| {
        ApiError::bad_request(
            "a plan name is 1 to 64 characters of A-Z a-z 0-9 - _ ., not only dots",
        )
    })
}

fn check_features(features: Vec<String>) -> Result<Vec<String>, ApiError> {
    if features.len() > MAX_FEATURES {
        return Err(ApiError::invalid(
            "INVALID_FEATURES",
            format!("a plan has at most {MAX_FEATURES} features"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(features.len());
    for f in features {
        let f = f.trim().to_owned();
        if f.is_empty() || f.len() > 64 || f.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "INVALID_FEATURES",
                "a feature is 1 to 64 printable characters",
            ));
        }
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

pub async fn put(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PlanBody>,
) -> Result<(StatusCode, Tagged<Plan>), ApiError> {
    check_name(&name)?;
    let precondition = precondition(&headers)?;
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::bad_request(
            "the body's name differs from the path's",
        ));
    }
    if body.offline_grace_days.is_some_and(|d| d > 3650)
        || body
            .duration_days
            .is_some_and(|d| !(1..=36_500).contains(&d))
    {
        return Err(ApiError::invalid(
            "INVALID_PLAN",
            "offline_grace_days is at most 3650, duration_days 1 to 36500 \
             (null: licenses on the plan do not expire)",
        ));
    }
    let plan = Plan {
        name,
        features: check_features(body.features)?,
        max_domains: body.max_domains,
        max_machines: body.max_machines,
        duration_days: body.duration_days,
        offline_grace_days: body
            .offline_grace_days
            .unwrap_or(DEFAULT_OFFLINE_GRACE_DAYS),
    };
    let created = state.store.put_plan(plan.clone(), precondition).await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Tagged(plan_tag(&plan), plan),
    ))
}

pub async fn get(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Tagged<Plan>, ApiError> {
    let plan = state.store.get_plan(name).await?;
    Ok(Tagged(plan_tag(&plan), plan))
}

pub async fn list(_: Admin, State(state): State<AppState>) -> Result<Json<Page<Plan>>, ApiError> {
    Ok(Json(Page {
        data: state.store.list_plans().await?,
        next_cursor: None,
    }))
}

pub async fn delete(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_plan(name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn a_plan_name_is_not_only_dots() {
        for good in ["pro", "pro.2026", ".pro", "a..b", "v1.0-beta_2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "...", "a b", "pro/x", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
