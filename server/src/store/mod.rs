//! Storage: one trait, one implementation per backend. The backend is chosen
//! once, at start-up, from the database URL.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keysmith_core::wire::{License, LicenseSummary, Plan};
use keysmith_core::{Code, Status};
use serde::Serialize;

pub mod copy;
pub mod postgres;
pub mod sqlite;

/// What storage can fail with. Driver errors become `Storage` in one place
/// per backend; the rest carry a stable code for the API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// A conditional write whose condition the record does not meet.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("storage failure: {0}")]
    Storage(String),
}

impl StoreError {
    pub fn license_not_found(id: &str) -> StoreError {
        StoreError::NotFound {
            code: "LICENSE_NOT_FOUND",
            message: format!("no license {}", shown(id)),
        }
    }

    pub fn webhook_not_found(id: &str) -> StoreError {
        StoreError::NotFound {
            code: "WEBHOOK_NOT_FOUND",
            message: format!("no webhook {}", shown(id)),
        }
    }
}

/// A value from a request as an error message quotes it: its first 64
/// characters, then how long it was, so that a bad value of kilobytes is
/// not sent back whole.
pub fn shown(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        None => value.to_owned(),
        Some((end, _)) => format!("{}… ({} characters)", &value[..end], value.chars().count()),
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a conditional write (`If-Match`, `If-None-Match: *`) asks of the
/// record it would change; checked in the write's own transaction, so that
/// two editors who read the same version cannot both write over it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Precondition {
    #[default]
    None,
    /// `If-Match: *`: the record exists.
    Exists,
    /// `If-Match: "…"`: the record's tag is one of these.
    TagIn(Vec<String>),
    /// `If-None-Match: *`: there is no such record yet.
    Absent,
}

impl Precondition {
    /// `Ok` when the record `what`, by its current tag (`None`: there is
    /// none), meets the condition.
    pub fn check(&self, what: &str, current: Option<&str>) -> Result<()> {
        let refusal = match (self, current) {
            (Precondition::None, _) => return Ok(()),
            (Precondition::Exists | Precondition::TagIn(_), None) => {
                format!("{what} does not exist (If-Match)")
            }
            (Precondition::Exists, Some(_)) | (Precondition::Absent, None) => return Ok(()),
            (Precondition::TagIn(tags), Some(tag)) if tags.iter().any(|t| t == tag) => {
                return Ok(())
            }
            (Precondition::TagIn(_), Some(tag)) => format!(
                "{what} changed since it was read (its ETag is now \"{tag}\"): \
                 read it again and redo the change"
            ),
            (Precondition::Absent, Some(_)) => format!("{what} exists (If-None-Match: *)"),
        };
        Err(StoreError::PreconditionFailed(refusal))
    }
}

/// A license's entity tag: it changes when a field `PUT` can change does
/// (plan, email, limits, expiry, metadata, status), not when a validation
/// takes or a seat is freed, so that a busy license can still be edited.
pub fn license_tag(license: &License) -> String {
    tag_of(&(
        &license.plan,
        &license.customer_email,
        license.max_domains,
        license.max_machines,
        license.expires_at.map(|t| t.timestamp()),
        &license.metadata,
        license.status.as_str(),
    ))
}

/// A plan's entity tag: it changes with any of its fields.
pub fn plan_tag(plan: &Plan) -> String {
    tag_of(plan)
}

fn tag_of(value: &impl Serialize) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(value).expect("plain data serialises");
    hex::encode(&sha2::Sha256::digest(json)[..12])
}

/// A license event, written in the same transaction as the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    #[serde(rename = "license.created")]
    Created,
    #[serde(rename = "license.activated")]
    Activated,
    #[serde(rename = "license.updated")]
    Updated,
    #[serde(rename = "license.suspended")]
    Suspended,
    #[serde(rename = "license.reinstated")]
    Reinstated,
    #[serde(rename = "license.expired")]
    Expired,
    #[serde(rename = "license.revoked")]
    Revoked,
}

impl EventType {
    /// Every event type, as webhooks subscribe to them.
    pub const ALL: [EventType; 7] = [
        EventType::Created,
        EventType::Activated,
        EventType::Updated,
        EventType::Suspended,
        EventType::Reinstated,
        EventType::Expired,
        EventType::Revoked,
    ];

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "license.created",
            EventType::Activated => "license.activated",
            EventType::Updated => "license.updated",
            EventType::Suspended => "license.suspended",
            EventType::Reinstated => "license.reinstated",
            EventType::Expired => "license.expired",
            EventType::Revoked => "license.revoked",
        }
    }
}

/// A license to create. `None` limits and expiry take the plan's defaults;
/// `Some(None)` is an explicit "unlimited" / "perpetual".
#[derive(Debug, Clone)]
pub struct NewLicense {
    pub key_prefix: String,
    pub plan: String,
    pub customer_email: String,
    pub max_domains: Option<Option<u32>>,
    pub max_machines: Option<Option<u32>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A partial update: only `Some` fields change.
#[derive(Debug, Clone, Default)]
pub struct LicensePatch {
    pub plan: Option<String>,
    pub customer_email: Option<String>,
    pub max_domains: Option<Option<u32>>,
    pub max_machines: Option<Option<u32>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub status: Option<Status>,
    /// What the license must be like for the patch to apply.
    pub precondition: Precondition,
}

impl LicensePatch {
    pub fn changes_fields(&self) -> bool {
        self.plan.is_some()
            || self.customer_email.is_some()
            || self.max_domains.is_some()
            || self.max_machines.is_some()
            || self.expires_at.is_some()
            || self.metadata.is_some()
    }
}

/// List filters; all optional.
#[derive(Debug, Clone, Default)]
pub struct LicenseFilter {
    pub status: Option<Status>,
    pub plan: Option<String>,
    pub customer_email: Option<String>,
    /// Canonical key.
    pub key: Option<String>,
}

/// Which page: after the item the cursor names, at most `limit` items.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// Items strictly older than this sequence number; `None` from the newest.
    pub before: Option<i64>,
    pub limit: u32,
}

/// A validation of a well-formed key, with what the request brought.
#[derive(Debug, Clone)]
pub struct ValidationInput {
    /// Canonical key.
    pub key: String,
    pub domain: Option<String>,
    pub fingerprint: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub country: Option<String>,
    pub now: DateTime<Utc>,
}

/// What a validation decided, recorded before it is returned.
#[derive(Debug, Clone)]
pub struct ValidationOutcome {
    pub code: Code,
    /// `None` when the license was not found.
    pub license: Option<LicenseSummary>,
    pub offline_grace_days: u32,
}

impl ValidationOutcome {
    /// No license has the key: nothing is recorded, no license shown.
    pub fn not_found() -> ValidationOutcome {
        ValidationOutcome {
            code: Code::LicenseNotFound,
            license: None,
            offline_grace_days: keysmith_core::wire::DEFAULT_OFFLINE_GRACE_DAYS,
        }
    }
}

/// One validation in a license's history.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRecord {
    #[serde(with = "keysmith_core::time::rfc3339")]
    pub at: DateTime<Utc>,
    pub code: Code,
    pub domain: Option<String>,
    pub fingerprint: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub country: Option<String>,
}

/// Totals over a license's whole history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageTotals {
    pub validations: u64,
    pub valid: u64,
    pub by_code: std::collections::BTreeMap<String, u64>,
    pub domains: std::collections::BTreeMap<String, u64>,
}

impl UsageTotals {
    /// Counts `n` validations that answered `code`.
    fn add_code(&mut self, code: String, n: i64) {
        self.validations += n as u64;
        if code == Code::Valid.as_str() {
            self.valid += n as u64;
        }
        self.by_code.insert(code, n as u64);
    }
}

/// A page of usage, plus totals.
#[derive(Debug, Clone)]
pub struct UsagePage {
    pub records: Vec<UsageRecord>,
    /// Sequence number of the last record, when more may follow.
    pub next_before: Option<i64>,
    pub totals: UsageTotals,
}

/// What `/deactivate` freed.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Deactivated {
    pub domain_freed: bool,
    pub machine_freed: bool,
}

/// A webhook endpoint. The secret is shown once, when it is created.
#[derive(Debug, Clone, Serialize)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub enabled: bool,
    #[serde(with = "keysmith_core::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Events queued for it and not yet delivered or failed: being retried,
    /// waiting behind their license's earlier events, or for it to be
    /// enabled again.
    pub pending: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A webhook to register.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<EventType>,
    pub enabled: bool,
    pub secret: String,
}

/// A change to a webhook: only `Some` fields change.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub events: Option<Vec<EventType>>,
    pub enabled: Option<bool>,
    /// A new signing secret: deliveries claimed from now on are signed with it.
    pub secret: Option<String>,
}

/// One delivery attempt, as `GET /webhooks/:id/deliveries` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryAttempt {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub attempt: u32,
    #[serde(with = "keysmith_core::time::rfc3339")]
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// `pending`, `delivered` or `failed`: where the event stands now.
    pub state: String,
}

/// A delivery claimed by a worker: everything needed to send it.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub delivery: i64,
    /// The endpoint's id (`wh_…`).
    pub webhook_id: String,
    pub url: String,
    pub secret: String,
    pub event_id: String,
    pub kind: String,
    pub created_at: DateTime<Utc>,
    /// The event's `data` object, as JSON text.
    pub data: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When the first attempt was made (`None` before it).
    pub first_attempt_at: Option<DateTime<Utc>>,
}

/// What became of an attempt, and what happens next.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub next: DeliveryNext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    Delivered,
    RetryAt(DateTime<Utc>),
    Failed,
}

/// A page of licenses with the cursor for the next one.
pub type LicensePage = (Vec<License>, Option<i64>);

/// The storage behind the API. Every method that changes something has
/// committed durably when it returns `Ok`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates or replaces a plan if it meets `precondition`; `true` when
    /// it was created.
    async fn put_plan(&self, plan: Plan, precondition: Precondition) -> Result<bool>;
    async fn get_plan(&self, name: String) -> Result<Plan>;
    async fn list_plans(&self) -> Result<Vec<Plan>>;
    async fn delete_plan(&self, name: String) -> Result<()>;

    async fn create_license(&self, new: NewLicense, now: DateTime<Utc>) -> Result<License>;
    async fn get_license(&self, id: String) -> Result<License>;
    /// Whether any license exists; never waits for counts to settle (it is
    /// asked at start-up, which must not wait for a crash's backlog).
    async fn has_licenses(&self) -> Result<bool>;
    async fn list_licenses(&self, filter: LicenseFilter, page: PageRequest) -> Result<LicensePage>;
    async fn update_license(
        &self,
        id: String,
        patch: LicensePatch,
        now: DateTime<Utc>,
    ) -> Result<License>;
    /// Revokes; revoking a revoked license changes nothing.
    async fn revoke_license(&self, id: String, now: DateTime<Utc>) -> Result<License>;
    async fn free_domain(&self, id: String, domain: String, now: DateTime<Utc>) -> Result<License>;
    async fn free_machine(
        &self,
        id: String,
        fingerprint: String,
        now: DateTime<Utc>,
    ) -> Result<License>;
    async fn usage(&self, id: String, page: PageRequest) -> Result<UsagePage>;

    /// Decides and records a validation: seat taking, usage record,
    /// counters and first-activation event, atomically.
    async fn validate(&self, input: ValidationInput) -> Result<ValidationOutcome>;
    /// Frees the seats an app held; `LICENSE_NOT_FOUND` for an unknown key.
    async fn deactivate(
        &self,
        key: String,
        domain: Option<String>,
        fingerprint: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Deactivated>;

    /// Marks active licenses whose expiry has passed as expired; returns how many.
    async fn expire_due(&self, now: DateTime<Utc>) -> Result<usize>;
    /// Deletes the oldest usage records, at most `limit`, of those recorded
    /// before `before` (`--usage-retention-days`); returns how many. The
    /// licenses' validation counts are kept: they do not come from these rows.
    async fn prune_usage(&self, before: DateTime<Utc>, limit: u32) -> Result<u64>;
    /// Deletes the oldest webhook events raised before `before` that no
    /// endpoint still waits to receive (every delivery `delivered` or
    /// `failed`, or none left), at most `limit`, with their deliveries and
    /// attempts (`--webhook-retention-days`); returns how many events.
    async fn prune_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64>;

    async fn create_webhook(&self, new: NewWebhook, now: DateTime<Utc>) -> Result<Webhook>;
    async fn list_webhooks(&self, page: PageRequest) -> Result<(Vec<Webhook>, Option<i64>)>;
    async fn get_webhook(&self, id: String) -> Result<Webhook>;
    async fn update_webhook(&self, id: String, patch: WebhookPatch) -> Result<Webhook>;
    /// Deletes the endpoint and drops its undelivered events.
    async fn delete_webhook(&self, id: String) -> Result<()>;
    /// Attempts for one endpoint, newest first.
    async fn delivery_attempts(
        &self,
        id: String,
        page: PageRequest,
    ) -> Result<(Vec<DeliveryAttempt>, Option<i64>)>;
    /// Queues an event for this endpoint again, now (after `failed`, or to resend).
    async fn redeliver(&self, id: String, event_id: String, now: DateTime<Utc>) -> Result<()>;
    /// Claims up to `limit` due deliveries for `lease`: the oldest pending one
    /// per (endpoint, license), so each license's events go out in order,
    /// and no more than `per_endpoint` leased at once for one endpoint, so
    /// that one that hangs cannot take every slot from the others.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        per_endpoint: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<DeliveryJob>>;
    /// Records an attempt and moves its delivery on.
    async fn finish_delivery(&self, job: DeliveryJob, result: AttemptResult) -> Result<()>;

    /// The stored hash of the generated admin token, if any.
    async fn admin_token_hash(&self) -> Result<Option<String>>;
    /// Stores `hash` as the admin token's unless one is stored already;
    /// returns the stored one (of servers starting at once, the first wins).
    async fn keep_first_admin_token_hash(&self, hash: String) -> Result<String>;
    /// Stores `hash` as the admin token's, in place of any stored one.
    async fn replace_admin_token_hash(&self, hash: String) -> Result<()>;
}

/// Why an event cannot be queued again for an endpoint: it is still queued
/// (being retried, or waiting for its turn or for the endpoint to be
/// enabled), or the endpoint never had it.
pub fn no_redelivery(webhook: &str, event: &str, pending: bool) -> StoreError {
    if pending {
        StoreError::Conflict {
            code: "DELIVERY_PENDING",
            message: format!(
                "event {event} is still queued for webhook {webhook}: it goes out (and is retried) \
                 on its own, after the license's earlier events and while the endpoint is enabled"
            ),
        }
    } else {
        StoreError::NotFound {
            code: "DELIVERY_NOT_FOUND",
            message: format!("webhook {webhook} has no delivery of event {event}"),
        }
    }
}

/// Opens the backend the URL names: `postgres://…` or `postgresql://…`
/// (PostgreSQL), else `sqlite://PATH` or a bare path (SQLite, committing
/// with `synchronous`).
pub async fn open(url: &str, synchronous: sqlite::Synchronous) -> anyhow::Result<Arc<dyn Store>> {
    match sqlite_path(url) {
        None => Ok(Arc::new(postgres::PostgresStore::connect(url).await?)),
        Some(path) => Ok(Arc::new(sqlite::SqliteStore::open_with(path, synchronous)?)),
    }
}

/// The SQLite database file the URL names, or `None` for PostgreSQL.
pub fn sqlite_path(url: &str) -> Option<&std::path::Path> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return None;
    }
    Some(std::path::Path::new(
        url.strip_prefix("sqlite://").unwrap_or(url),
    ))
}

/// Unix seconds to a time, clamping what chrono cannot represent.
pub fn from_unix(secs: i64) -> DateTime<Utc> {
    keysmith_core::time::from_unix(secs).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// [`from_unix`] of a column that may be NULL.
fn opt_time(v: Option<i64>) -> Option<DateTime<Utc>> {
    v.map(from_unix)
}

/// A stored status; anything else means the database holds what no server wrote.
fn status_of(s: &str) -> Result<Status> {
    Status::parse(s).ok_or_else(|| StoreError::Storage(format!("unknown stored status {s:?}")))
}

/// The names of `events`, as both backends store a webhook's subscriptions.
fn event_names(events: &[EventType]) -> Vec<&'static str> {
    events.iter().map(|e| e.as_str()).collect()
}

/// The webhook columns both backends read, in the order their row mappers take.
const WEBHOOK_COLUMNS: &str = "seq, id, url, events, enabled, created_at, \
     (SELECT count(*) FROM deliveries d WHERE d.webhook_seq = webhooks.seq AND d.state = 'pending')";

/// A page cursor: opaque to clients, a sequence number to us.
pub mod cursor {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    pub fn encode(seq: i64) -> String {
        URL_SAFE_NO_PAD.encode(format!("s{seq}"))
    }

    pub fn decode(cursor: &str) -> Option<i64> {
        let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
        std::str::from_utf8(&bytes)
            .ok()?
            .strip_prefix('s')?
            .parse()
            .ok()
    }
}
