//! One storage conformance suite, run against every backend: each behaviour
//! is a function over the `Store` trait, invoked once for SQLite (a temp
//! file) and once for PostgreSQL (a fresh schema of its own, dropped after).
//!
//! PostgreSQL runs when `KEYSMITH_TEST_DATABASE_URL` is set, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`; otherwise those tests say
//! they are skipped and pass.
//!
//! Where a behaviour must hold across server processes, the test opens a
//! second, independent store on the same database (`Fixture::peer`), as a
//! second process would. That is PostgreSQL's case (SPEC §10); a SQLite
//! database belongs to one server process, which locks it (a second open
//! is refused: `sqlite::tests`), so there the peer is the same store.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use keysmith_core::wire::Plan;
use keysmith_core::{Code, Status};
use keysmith_server::store::{
    license_tag, plan_tag, AttemptResult, DeliveryJob, DeliveryNext, EventType, LicenseFilter,
    LicensePatch, NewLicense, NewWebhook, PageRequest, Precondition, Store, StoreError,
    ValidationInput, WebhookPatch,
};
use serde_json::json;

const DATABASE_ENV: &str = "KEYSMITH_TEST_DATABASE_URL";

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A fresh, empty database on one backend, and how to open it again.
struct Fixture {
    store: Arc<dyn Store>,
    target: Target,
}

enum Target {
    Sqlite { _dir: tempfile::TempDir },
    Postgres(PgSchema),
}

impl Fixture {
    async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keysmith.db");
        let store = keysmith_server::store::sqlite::SqliteStore::open(&path).expect("open SQLite");
        Fixture {
            store: Arc::new(store),
            target: Target::Sqlite { _dir: dir },
        }
    }

    /// `None` (after saying so) when no PostgreSQL is configured.
    async fn postgres() -> Option<Fixture> {
        let Ok(admin_url) = std::env::var(DATABASE_ENV) else {
            eprintln!("skipped: {DATABASE_ENV} not set");
            return None;
        };
        let schema = PgSchema::create(&admin_url).await;
        let store = keysmith_server::store::postgres::PostgresStore::connect(&schema.url)
            .await
            .expect("open PostgreSQL");
        Some(Fixture {
            store: Arc::new(store),
            target: Target::Postgres(schema),
        })
    }

    /// Another independent store on the same database: what a second server
    /// process would have.
    async fn peer(&self) -> Arc<dyn Store> {
        match &self.target {
            Target::Sqlite { .. } => self.store.clone(),
            Target::Postgres(schema) => Arc::new(
                keysmith_server::store::postgres::PostgresStore::connect(&schema.url)
                    .await
                    .expect("reopen PostgreSQL"),
            ),
        }
    }
}

/// A schema of its own on the test PostgreSQL, selected through the URL's
/// `options=-csearch_path=…`, so tests run in parallel; dropped afterwards.
struct PgSchema {
    admin_url: String,
    name: String,
    url: String,
}

impl PgSchema {
    async fn create(admin_url: &str) -> PgSchema {
        let name = format!("ks_test_{:016x}", rand::random::<u64>());
        let admin = pg_connect(admin_url).await;
        admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create a test schema");
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        PgSchema {
            admin_url: admin_url.to_owned(),
            url: format!("{admin_url}{sep}options=-csearch_path%3D{name}"),
            name,
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime: clean up on a thread with
        // a runtime of its own. A lock timeout keeps a stuck connection from
        // hanging the suite; a schema left behind is only litter.
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let admin = pg_connect(&url).await;
                let sql = format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {name} CASCADE");
                if let Err(e) = admin.batch_execute(&sql).await {
                    eprintln!("could not drop test schema {name}: {e}");
                }
            });
        });
        let _ = cleanup.join();
    }
}

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {DATABASE_ENV}: {e}"));
    tokio::spawn(connection);
    client
}

/// Generates `sqlite::<name>` and `postgres::<name>` from `async fn <name>(&Fixture)`.
macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let fixture = super::Fixture::sqlite().await;
                    super::$name(&fixture).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fixture) = super::Fixture::postgres().await else { return };
                    super::$name(&fixture).await;
                }
            )+
        }
    };
}

conformance!(
    plans_are_created_replaced_listed_and_deleted,
    licenses_take_plan_defaults_or_explicit_values,
    lists_filter_and_page_through_every_item_once,
    updates_follow_the_status_rules,
    conditional_writes_apply_only_to_the_version_read,
    revocation_is_final_and_idempotent,
    seats_are_taken_held_limited_and_freed,
    validation_codes_counters_and_usage_totals,
    seats_never_exceed_the_limit_across_stores,
    the_first_valid_fires_license_activated_once,
    expire_due_expires_each_license_once,
    webhooks_are_created_listed_updated_and_deleted,
    deliveries_go_out_in_order_per_license_with_retries,
    failed_deliveries_can_be_redelivered,
    retry_windows_start_again_after_a_pause_or_a_redelivery,
    one_endpoint_takes_at_most_its_share_of_deliveries_in_flight,
    each_delivery_is_claimed_by_one_store,
    events_are_queued_only_for_subscribed_enabled_endpoints,
    the_admin_token_hash_is_kept_and_replaced_by_a_rotation,
    reopening_keeps_everything,
    usage_past_the_retention_is_pruned_and_counts_stay,
    settled_events_past_the_retention_are_pruned_with_their_deliveries,
);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A fixed clock: whole seconds, so stored times compare equal.
fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_900_000_000 + secs, 0).unwrap()
}

fn plan(name: &str, max_domains: Option<u32>, max_machines: Option<u32>) -> Plan {
    Plan {
        name: name.into(),
        features: vec!["sso".into(), "audit-log".into()],
        max_domains,
        max_machines,
        duration_days: None,
        offline_grace_days: 7,
    }
}

fn new_license(plan: &str) -> NewLicense {
    NewLicense {
        key_prefix: "KS".into(),
        plan: plan.into(),
        customer_email: "dev@example.com".into(),
        max_domains: None,
        max_machines: None,
        expires_at: None,
        metadata: serde_json::Map::new(),
    }
}

fn check(
    key: &str,
    domain: Option<&str>,
    fingerprint: Option<&str>,
    now: DateTime<Utc>,
) -> ValidationInput {
    ValidationInput {
        key: key.into(),
        domain: domain.map(Into::into),
        fingerprint: fingerprint.map(Into::into),
        ip: Some("192.0.2.1".into()),
        user_agent: Some("conformance/1".into()),
        country: None,
        now,
    }
}

fn page(limit: u32) -> PageRequest {
    PageRequest {
        before: None,
        limit,
    }
}

/// The stable code of a refusal, e.g. `NotFound:LICENSE_NOT_FOUND`.
fn refusal<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result.expect_err("a refusal") {
        StoreError::NotFound { code, .. } => format!("NotFound:{code}"),
        StoreError::Conflict { code, .. } => format!("Conflict:{code}"),
        StoreError::Invalid { code, .. } => format!("Invalid:{code}"),
        StoreError::PreconditionFailed(_) => "PreconditionFailed".to_owned(),
        StoreError::Storage(cause) => panic!("storage failure: {cause}"),
    }
}

async fn store_with_plan(f: &Fixture, p: Plan) -> Arc<dyn Store> {
    f.store.put_plan(p, Precondition::None).await.unwrap();
    f.store.clone()
}

async fn hook(store: &dyn Store, events: &[EventType], now: DateTime<Utc>) -> String {
    let created = store
        .create_webhook(
            NewWebhook {
                url: "http://127.0.0.1:9/hook".into(),
                events: events.to_vec(),
                enabled: true,
                secret: "whsec_test".into(),
            },
            now,
        )
        .await
        .unwrap();
    created.id
}

fn delivered(at: DateTime<Utc>) -> AttemptResult {
    AttemptResult {
        at,
        status_code: Some(200),
        error: None,
        duration_ms: 3,
        next: DeliveryNext::Delivered,
    }
}

fn failed_attempt(at: DateTime<Utc>, next: DeliveryNext) -> AttemptResult {
    AttemptResult {
        at,
        status_code: Some(500),
        error: None,
        duration_ms: 5,
        next,
    }
}

const LEASE: i64 = 40;

async fn claim(store: &dyn Store, now: DateTime<Utc>) -> Vec<DeliveryJob> {
    store
        .claim_deliveries(now, 100, 100, Duration::seconds(LEASE))
        .await
        .unwrap()
}

/// Delivers everything deliverable at `now`, round after round (a license's
/// next event is due once the one before it is delivered); returns
/// `(license id, event type)` in delivery order.
async fn drain(store: &dyn Store, now: DateTime<Utc>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        let jobs = claim(store, now).await;
        if jobs.is_empty() {
            return out;
        }
        for job in jobs {
            let data: serde_json::Value = serde_json::from_str(&job.data).unwrap();
            out.push((
                data["license"]["id"].as_str().unwrap().to_owned(),
                job.kind.clone(),
            ));
            store.finish_delivery(job, delivered(now)).await.unwrap();
        }
    }
}

fn count_of(events: &[(String, String)], license: &str, kind: &str) -> usize {
    events
        .iter()
        .filter(|(l, k)| l == license && k == kind)
        .count()
}

// ---------------------------------------------------------------------------
// Behaviours
// ---------------------------------------------------------------------------

async fn plans_are_created_replaced_listed_and_deleted(f: &Fixture) {
    let s = &f.store;
    let mut pro = plan("pro", Some(3), None);
    pro.duration_days = Some(365);
    assert!(
        s.put_plan(pro.clone(), Precondition::None).await.unwrap(),
        "created"
    );
    assert_eq!(s.get_plan("pro".into()).await.unwrap(), pro);
    let replaced = Plan {
        features: vec!["sso".into()],
        max_domains: None,
        offline_grace_days: 2,
        ..pro.clone()
    };
    assert!(
        !s.put_plan(replaced.clone(), Precondition::None)
            .await
            .unwrap(),
        "replaced, not created"
    );
    assert_eq!(s.get_plan("pro".into()).await.unwrap(), replaced);
    s.put_plan(plan("basic", None, Some(1)), Precondition::None)
        .await
        .unwrap();
    let names: Vec<String> = s
        .list_plans()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["basic", "pro"]);
    assert_eq!(
        refusal(s.get_plan("nope".into()).await),
        "NotFound:PLAN_NOT_FOUND"
    );

    s.create_license(new_license("pro"), t(0)).await.unwrap();
    assert_eq!(
        refusal(s.delete_plan("pro".into()).await),
        "Conflict:PLAN_IN_USE"
    );
    s.delete_plan("basic".into()).await.unwrap();
    assert_eq!(
        refusal(s.delete_plan("basic".into()).await),
        "NotFound:PLAN_NOT_FOUND"
    );
    assert_eq!(s.list_plans().await.unwrap().len(), 1);
}

async fn licenses_take_plan_defaults_or_explicit_values(f: &Fixture) {
    let mut p = plan("pro", Some(3), Some(2));
    p.duration_days = Some(30);
    let s = store_with_plan(f, p).await;
    assert!(!s.has_licenses().await.unwrap(), "a plan is not a license");
    let mut new = new_license("pro");
    new.metadata = json!({"order_id": "1042", "nested": {"b": [1, 2], "a": null}})
        .as_object()
        .unwrap()
        .clone();
    let l = s.create_license(new.clone(), t(0)).await.unwrap();
    assert!(s.has_licenses().await.unwrap());
    assert!(l.id.starts_with("lic_"));
    assert!(keysmith_core::LicenseKey::parse(&l.key).is_ok());
    assert_eq!(l.status, Status::Active);
    assert_eq!((l.max_domains, l.max_machines), (Some(3), Some(2)));
    assert_eq!(l.expires_at, Some(t(0) + Duration::days(30)));
    assert_eq!((l.created_at, l.updated_at), (t(0), t(0)));
    assert_eq!(l.metadata, new.metadata);
    assert!(l.domains.is_empty() && l.machines.is_empty());
    assert_eq!((l.validation_count, l.last_validated_at), (0, None));
    assert_eq!(s.get_license(l.id.clone()).await.unwrap(), l);

    let explicit = NewLicense {
        max_domains: Some(None),
        max_machines: Some(Some(9)),
        expires_at: Some(None),
        ..new_license("pro")
    };
    let e = s.create_license(explicit, t(0)).await.unwrap();
    assert_eq!(
        (e.max_domains, e.max_machines, e.expires_at),
        (None, Some(9), None)
    );
    assert_ne!((e.id.clone(), e.key.clone()), (l.id.clone(), l.key.clone()));

    let past = NewLicense {
        expires_at: Some(Some(t(-10))),
        ..new_license("pro")
    };
    assert_eq!(
        s.create_license(past, t(0)).await.unwrap().status,
        Status::Expired
    );

    assert_eq!(
        refusal(s.create_license(new_license("nope"), t(0)).await),
        "Invalid:PLAN_NOT_FOUND"
    );
    assert_eq!(
        refusal(s.get_license("lic_NOPE".into()).await),
        "NotFound:LICENSE_NOT_FOUND"
    );
}

async fn lists_filter_and_page_through_every_item_once(f: &Fixture) {
    let s = store_with_plan(f, plan("a", None, None)).await;
    s.put_plan(plan("b", None, None), Precondition::None)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..23 {
        let new = NewLicense {
            customer_email: format!("User{}@Example.com", i % 2),
            ..new_license(if i % 3 == 0 { "b" } else { "a" })
        };
        ids.push(s.create_license(new, t(i)).await.unwrap().id);
    }
    let suspend = LicensePatch {
        status: Some(Status::Suspended),
        ..Default::default()
    };
    s.update_license(ids[4].clone(), suspend, t(30))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let (items, next) = s
            .list_licenses(LicenseFilter::default(), PageRequest { before, limit: 5 })
            .await
            .unwrap();
        pages += 1;
        seen.extend(items.into_iter().map(|l| l.id));
        if pages == 2 {
            // Created mid-listing: newer than the cursor, so not in these pages.
            s.create_license(new_license("a"), t(40)).await.unwrap();
        }
        match next {
            Some(cursor) => before = Some(cursor),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, each exactly once");

    let count = |filter: LicenseFilter| {
        let s = s.clone();
        async move { s.list_licenses(filter, page(500)).await.unwrap().0.len() }
    };
    let by_plan = LicenseFilter {
        plan: Some("b".into()),
        ..Default::default()
    };
    assert_eq!(count(by_plan).await, 8);
    let suspended = LicenseFilter {
        status: Some(Status::Suspended),
        ..Default::default()
    };
    assert_eq!(count(suspended).await, 1);
    let by_email = LicenseFilter {
        customer_email: Some("user1@EXAMPLE.com".into()),
        ..Default::default()
    };
    assert_eq!(
        count(by_email).await,
        11,
        "e-mail matches ignore ASCII case"
    );
    let both = LicenseFilter {
        plan: Some("a".into()),
        customer_email: Some("user0@example.com".into()),
        ..Default::default()
    };
    assert_eq!(count(both).await, 8);
    let key = s.get_license(ids[7].clone()).await.unwrap().key;
    let by_key = LicenseFilter {
        key: Some(key),
        ..Default::default()
    };
    let (found, next) = s.list_licenses(by_key, page(10)).await.unwrap();
    assert_eq!(
        (found.len(), found[0].id.clone(), next),
        (1, ids[7].clone(), None)
    );
    let (all, next) = s
        .list_licenses(LicenseFilter::default(), page(24))
        .await
        .unwrap();
    assert_eq!(
        (all.len(), next),
        (24, None),
        "a page that holds everything has no cursor"
    );
}

async fn conditional_writes_apply_only_to_the_version_read(f: &Fixture) {
    let s = store_with_plan(f, plan("pro", Some(2), None)).await;
    let tag = |t: &str| Precondition::TagIn(vec![t.to_owned()]);

    // Plans: create only when absent, replace only the version read.
    let team = plan("team", None, None);
    assert!(s
        .put_plan(team.clone(), Precondition::Absent)
        .await
        .unwrap());
    assert_eq!(
        refusal(s.put_plan(team.clone(), Precondition::Absent).await),
        "PreconditionFailed"
    );
    let read = plan_tag(&s.get_plan("team".into()).await.unwrap());
    let first = Plan {
        max_domains: Some(5),
        ..team.clone()
    };
    assert!(!s.put_plan(first.clone(), tag(&read)).await.unwrap());
    let second = Plan {
        features: vec![],
        ..team.clone()
    };
    assert_eq!(
        refusal(s.put_plan(second, tag(&read)).await),
        "PreconditionFailed",
        "a second editor who read the same version"
    );
    assert_eq!(s.get_plan("team".into()).await.unwrap(), first);
    assert_eq!(
        refusal(
            s.put_plan(plan("nope", None, None), Precondition::Exists)
                .await
        ),
        "PreconditionFailed"
    );
    assert!(s
        .list_plans()
        .await
        .unwrap()
        .iter()
        .all(|p| p.name != "nope"));

    // Licenses: the tag follows what a PUT can change, not validations.
    let l = s.create_license(new_license("pro"), t(0)).await.unwrap();
    let read = license_tag(&l);
    let outcome = s
        .validate(check(&l.key, Some("a.example"), None, t(1)))
        .await
        .unwrap();
    assert_eq!(outcome.code, Code::Valid);
    let validated = s.get_license(l.id.clone()).await.unwrap();
    assert_eq!(validated.domains, ["a.example"]);
    assert_eq!(license_tag(&validated), read, "a validation keeps the tag");
    let meta = |v: i64| Some(json!({ "v": v }).as_object().unwrap().clone());
    let edit = |v, precondition| LicensePatch {
        metadata: meta(v),
        precondition,
        ..Default::default()
    };
    let changed = s
        .update_license(l.id.clone(), edit(1, tag(&read)), t(2))
        .await
        .unwrap();
    assert_ne!(license_tag(&changed), read);
    assert_eq!(
        refusal(
            s.update_license(l.id.clone(), edit(2, tag(&read)), t(3))
                .await
        ),
        "PreconditionFailed"
    );
    assert_eq!(
        s.get_license(l.id.clone()).await.unwrap().metadata,
        meta(1).unwrap(),
        "the refused write changed nothing"
    );
    let any = Precondition::TagIn(vec!["0".repeat(24), license_tag(&changed)]);
    s.update_license(l.id.clone(), edit(3, any), t(4))
        .await
        .unwrap();
    assert_eq!(
        refusal(
            s.update_license("lic_NOPE".into(), edit(4, Precondition::Exists), t(5))
                .await
        ),
        "NotFound:LICENSE_NOT_FOUND",
        "a missing license is a 404 whatever the condition"
    );

    // Two editors at once from the same read (in two stores on PostgreSQL):
    // exactly one write lands.
    let read = license_tag(&s.get_license(l.id.clone()).await.unwrap());
    let peer = f.peer().await;
    let (a, b) = tokio::join!(
        s.update_license(l.id.clone(), edit(10, tag(&read)), t(6)),
        peer.update_license(l.id.clone(), edit(20, tag(&read)), t(6)),
    );
    assert_eq!(
        [a.is_ok(), b.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{a:?} {b:?}"
    );
    let left = s.get_license(l.id.clone()).await.unwrap().metadata;
    assert_eq!(left, if a.is_ok() { meta(10) } else { meta(20) }.unwrap());
}

async fn updates_follow_the_status_rules(f: &Fixture) {
    let s = store_with_plan(f, plan("pro", Some(2), None)).await;
    s.put_plan(plan("team", None, None), Precondition::None)
        .await
        .unwrap();
    let mut new = new_license("pro");
    new.metadata = json!({"k": 1}).as_object().unwrap().clone();
    let l = s.create_license(new, t(0)).await.unwrap();
    let update = |patch: LicensePatch, at: i64| {
        let (s, id) = (s.clone(), l.id.clone());
        async move { s.update_license(id, patch, t(at)).await }
    };

    let changed = update(
        LicensePatch {
            plan: Some("team".into()),
            max_domains: Some(None),
            ..Default::default()
        },
        10,
    )
    .await
    .unwrap();
    assert_eq!((changed.plan.as_str(), changed.max_domains), ("team", None));
    assert_eq!(changed.metadata, l.metadata, "fields not sent stay");
    assert_eq!(changed.updated_at, t(10));
    assert_eq!(s.get_license(l.id.clone()).await.unwrap(), changed);
    let same = update(LicensePatch::default(), 20).await.unwrap();
    assert_eq!(same.updated_at, t(10), "an empty update changes nothing");
    let meta = json!({"new": true}).as_object().unwrap().clone();
    let replaced = update(
        LicensePatch {
            metadata: Some(meta.clone()),
            ..Default::default()
        },
        21,
    )
    .await
    .unwrap();
    assert_eq!(replaced.metadata, meta, "metadata is replaced whole");
    assert_eq!(
        refusal(
            update(
                LicensePatch {
                    plan: Some("nope".into()),
                    ..Default::default()
                },
                22
            )
            .await
        ),
        "Invalid:PLAN_NOT_FOUND"
    );

    let status = |st| LicensePatch {
        status: Some(st),
        ..Default::default()
    };
    assert_eq!(
        update(status(Status::Suspended), 30).await.unwrap().status,
        Status::Suspended
    );
    assert_eq!(
        update(status(Status::Active), 31).await.unwrap().status,
        Status::Active
    );
    assert_eq!(
        refusal(update(status(Status::Revoked), 32).await),
        "Invalid:INVALID_STATUS"
    );
    assert_eq!(
        refusal(update(status(Status::Expired), 32).await),
        "Invalid:INVALID_STATUS"
    );

    let expire = LicensePatch {
        expires_at: Some(Some(t(0))),
        ..Default::default()
    };
    assert_eq!(update(expire, 40).await.unwrap().status, Status::Expired);
    assert_eq!(
        refusal(update(status(Status::Active), 41).await),
        "Conflict:LICENSE_EXPIRED"
    );
    let renew = LicensePatch {
        expires_at: Some(Some(t(1_000_000))),
        ..Default::default()
    };
    assert_eq!(update(renew, 42).await.unwrap().status, Status::Active);
    let stored = s.get_license(l.id.clone()).await.unwrap();
    assert_eq!(
        (stored.status, stored.expires_at),
        (Status::Active, Some(t(1_000_000)))
    );

    assert_eq!(
        refusal(
            s.update_license("lic_NOPE".into(), LicensePatch::default(), t(50))
                .await
        ),
        "NotFound:LICENSE_NOT_FOUND"
    );
}

async fn revocation_is_final_and_idempotent(f: &Fixture) {
    let s = store_with_plan(f, plan("p", None, None)).await;
    let l = s.create_license(new_license("p"), t(0)).await.unwrap();
    let revoked = s.revoke_license(l.id.clone(), t(5)).await.unwrap();
    assert_eq!(
        (revoked.status, revoked.updated_at),
        (Status::Revoked, t(5))
    );
    let again = s.revoke_license(l.id.clone(), t(9)).await.unwrap();
    assert_eq!(again.updated_at, t(5), "revoking twice changes nothing");
    for st in [Status::Active, Status::Suspended] {
        let patch = LicensePatch {
            status: Some(st),
            ..Default::default()
        };
        assert_eq!(
            refusal(s.update_license(l.id.clone(), patch, t(10)).await),
            "Conflict:LICENSE_REVOKED"
        );
    }
    let perpetual = LicensePatch {
        expires_at: Some(None),
        ..Default::default()
    };
    assert_eq!(
        s.update_license(l.id.clone(), perpetual, t(11))
            .await
            .unwrap()
            .status,
        Status::Revoked
    );
    let answer = s.validate(check(&l.key, None, None, t(12))).await.unwrap();
    assert_eq!(answer.code, Code::LicenseRevoked);
    assert_eq!(
        refusal(s.revoke_license("lic_NOPE".into(), t(0)).await),
        "NotFound:LICENSE_NOT_FOUND"
    );
}

async fn seats_are_taken_held_limited_and_freed(f: &Fixture) {
    let s = store_with_plan(f, plan("p", Some(2), Some(1))).await;
    let l = s.create_license(new_license("p"), t(0)).await.unwrap();
    let code = |domain: Option<&'static str>, fp: Option<&'static str>, at: i64| {
        let (s, key) = (s.clone(), l.key.clone());
        async move {
            s.validate(check(&key, domain, fp, t(at)))
                .await
                .unwrap()
                .code
        }
    };
    assert_eq!(code(Some("a.example"), Some("m1"), 1).await, Code::Valid);
    assert_eq!(code(Some("b.example"), None, 2).await, Code::Valid);
    assert_eq!(
        code(Some("c.example"), None, 3).await,
        Code::DomainLimitReached
    );
    assert_eq!(
        code(Some("a.example"), Some("m1"), 4).await,
        Code::Valid,
        "a held seat validates"
    );
    assert_eq!(code(None, Some("m2"), 5).await, Code::MachineLimitReached);
    assert_eq!(
        code(Some("c.example"), Some("m2"), 6).await,
        Code::DomainLimitReached,
        "domains are checked first"
    );
    assert_eq!(
        code(Some("a.example"), Some("m2"), 7).await,
        Code::MachineLimitReached
    );
    let held = s.get_license(l.id.clone()).await.unwrap();
    assert_eq!(
        held.domains,
        ["a.example", "b.example"],
        "seats listed in the order taken"
    );
    assert_eq!(held.machines, ["m1"]);

    let freed = s
        .free_domain(l.id.clone(), "a.example".into(), t(10))
        .await
        .unwrap();
    assert_eq!(
        (freed.domains.clone(), freed.updated_at),
        (vec!["b.example".to_owned()], t(10))
    );
    assert_eq!(
        refusal(s.free_domain(l.id.clone(), "a.example".into(), t(11)).await),
        "NotFound:DOMAIN_NOT_FOUND"
    );
    assert_eq!(
        code(Some("c.example"), None, 12).await,
        Code::Valid,
        "a freed seat is free"
    );
    let freed = s
        .free_machine(l.id.clone(), "m1".into(), t(13))
        .await
        .unwrap();
    assert!(freed.machines.is_empty());
    assert_eq!(
        refusal(s.free_machine(l.id.clone(), "m1".into(), t(14)).await),
        "NotFound:MACHINE_NOT_FOUND"
    );
    assert_eq!(
        refusal(
            s.free_domain("lic_NOPE".into(), "a.example".into(), t(14))
                .await
        ),
        "NotFound:LICENSE_NOT_FOUND"
    );

    // The app frees its own seats.
    assert_eq!(code(None, Some("m9"), 15).await, Code::Valid);
    let out = s
        .deactivate(
            l.key.clone(),
            Some("c.example".into()),
            Some("m9".into()),
            t(16),
        )
        .await
        .unwrap();
    assert!(out.domain_freed && out.machine_freed);
    let out = s
        .deactivate(l.key.clone(), Some("c.example".into()), None, t(17))
        .await
        .unwrap();
    assert!(!out.domain_freed && !out.machine_freed);
    let after = s.get_license(l.id.clone()).await.unwrap();
    assert_eq!(
        (after.domains, after.machines.len(), after.updated_at),
        (vec!["b.example".to_owned()], 0, t(16))
    );
    let unknown = keysmith_core::LicenseKey::generate("KS").unwrap();
    assert_eq!(
        refusal(
            s.deactivate(
                unknown.as_str().into(),
                Some("a.example".into()),
                None,
                t(18)
            )
            .await
        ),
        "NotFound:LICENSE_NOT_FOUND"
    );

    // Unlimited seats are never refused.
    let free = NewLicense {
        max_domains: Some(None),
        ..new_license("p")
    };
    let unlimited = s.create_license(free, t(20)).await.unwrap();
    for i in 0..12 {
        let domain = format!("d{i}.example");
        let input = check(&unlimited.key, Some(domain.as_str()), None, t(21));
        assert_eq!(s.validate(input).await.unwrap().code, Code::Valid);
    }
    assert_eq!(s.get_license(unlimited.id).await.unwrap().domains.len(), 12);
}

async fn validation_codes_counters_and_usage_totals(f: &Fixture) {
    let s = store_with_plan(f, plan("p", Some(1), None)).await;
    let mut grace = plan("grace", None, None);
    grace.offline_grace_days = 3;
    s.put_plan(grace, Precondition::None).await.unwrap();

    let unknown = keysmith_core::LicenseKey::generate("KS").unwrap();
    let answer = s
        .validate(check(unknown.as_str(), None, None, t(0)))
        .await
        .unwrap();
    assert_eq!(
        (
            answer.code,
            answer.license.is_none(),
            answer.offline_grace_days
        ),
        (Code::LicenseNotFound, true, 7)
    );

    let l = s
        .create_license(
            NewLicense {
                expires_at: Some(Some(t(1000))),
                ..new_license("grace")
            },
            t(0),
        )
        .await
        .unwrap();
    let ok = s.validate(check(&l.key, None, None, t(1))).await.unwrap();
    assert_eq!(ok.code, Code::Valid);
    assert_eq!(ok.offline_grace_days, 3);
    let summary = ok.license.unwrap();
    assert_eq!(
        (
            summary.id,
            summary.status,
            summary.plan,
            summary.expires_at,
            summary.features
        ),
        (
            l.id.clone(),
            Status::Active,
            "grace".to_owned(),
            Some(t(1000)),
            vec!["sso".to_owned(), "audit-log".to_owned()]
        )
    );
    let late = s
        .validate(check(&l.key, None, None, t(1000)))
        .await
        .unwrap();
    assert_eq!(
        late.code,
        Code::LicenseExpired,
        "expired at once, before any sweep"
    );
    assert_eq!(late.license.unwrap().status, Status::Expired);
    let suspend = LicensePatch {
        status: Some(Status::Suspended),
        expires_at: Some(None),
        ..Default::default()
    };
    s.update_license(l.id.clone(), suspend, t(2)).await.unwrap();
    assert_eq!(
        s.validate(check(&l.key, None, None, t(3)))
            .await
            .unwrap()
            .code,
        Code::LicenseSuspended
    );
    let counted = s.get_license(l.id.clone()).await.unwrap();
    assert_eq!(
        (counted.validation_count, counted.last_validated_at),
        (3, Some(t(3)))
    );

    // Usage: every validation of an existing license, newest first, with totals.
    let seat = s.create_license(new_license("p"), t(0)).await.unwrap();
    let ua = ["MyApp/1.2", "MyApp/1.3"];
    for (i, domain) in ["a.example", "b.example", "a.example", "a.example"]
        .into_iter()
        .enumerate()
    {
        let mut input = check(&seat.key, Some(domain), Some("fp-1"), t(10 + i as i64));
        input.user_agent = Some(ua[i % 2].into());
        input.country = Some("DE".into());
        s.validate(input).await.unwrap();
    }
    s.validate(check(&seat.key, None, None, t(20)))
        .await
        .unwrap();
    let first = s.usage(seat.id.clone(), page(2)).await.unwrap();
    assert_eq!(first.records.len(), 2);
    let newest = &first.records[0];
    assert_eq!(
        (newest.at, newest.code, newest.domain.as_deref()),
        (t(20), Code::Valid, None)
    );
    let r = &first.records[1];
    assert_eq!(
        (
            r.at,
            r.domain.as_deref(),
            r.fingerprint.as_deref(),
            r.ip.as_deref(),
            r.user_agent.as_deref(),
            r.country.as_deref()
        ),
        (
            t(13),
            Some("a.example"),
            Some("fp-1"),
            Some("192.0.2.1"),
            Some("MyApp/1.3"),
            Some("DE")
        )
    );
    assert_eq!(first.totals.validations, 5);
    assert_eq!(first.totals.valid, 4);
    assert_eq!(
        first.totals.by_code,
        BTreeMap::from([
            ("VALID".to_owned(), 4),
            ("DOMAIN_LIMIT_REACHED".to_owned(), 1)
        ])
    );
    assert_eq!(
        first.totals.domains,
        BTreeMap::from([("a.example".to_owned(), 3), ("b.example".to_owned(), 1)])
    );
    let mut times: Vec<DateTime<Utc>> = first.records.iter().map(|r| r.at).collect();
    let mut before = first.next_before;
    while let Some(cursor) = before {
        let next = s
            .usage(
                seat.id.clone(),
                PageRequest {
                    before: Some(cursor),
                    limit: 2,
                },
            )
            .await
            .unwrap();
        times.extend(next.records.iter().map(|r| r.at));
        before = next.next_before;
    }
    assert_eq!(times, [t(20), t(13), t(12), t(11), t(10)]);
    assert_eq!(
        s.get_license(seat.id.clone())
            .await
            .unwrap()
            .validation_count,
        5
    );
    assert_eq!(
        refusal(s.usage("lic_NOPE".into(), page(5)).await),
        "NotFound:LICENSE_NOT_FOUND"
    );
}

async fn seats_never_exceed_the_limit_across_stores(f: &Fixture) {
    let s = store_with_plan(f, plan("three", Some(3), Some(2))).await;
    let peer = f.peer().await;
    hook(s.as_ref(), &[EventType::Activated], t(0)).await;
    let l = s.create_license(new_license("three"), t(0)).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(40));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = if i % 2 == 0 { s.clone() } else { peer.clone() };
            let (key, barrier) = (l.key.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let domain = format!("d{i}.example");
                let machine = format!("m{}", i % 5);
                let input = check(&key, Some(domain.as_str()), Some(machine.as_str()), t(1));
                store.validate(input).await.unwrap().code
            })
        })
        .collect();
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.unwrap());
    }
    let valid = codes.iter().filter(|c| **c == Code::Valid).count();
    assert_eq!(valid, 3, "{codes:?}");
    let after = s.get_license(l.id.clone()).await.unwrap();
    assert_eq!(after.domains.len(), valid, "one domain seat per VALID");
    assert!(
        after.domains.len() <= 3 && after.machines.len() <= 2,
        "{after:?}"
    );
    assert_eq!(after.validation_count, 40, "every validation counted");
    assert_eq!(
        s.usage(l.id.clone(), page(1))
            .await
            .unwrap()
            .totals
            .validations,
        40
    );
    let events = drain(s.as_ref(), t(2)).await;
    assert_eq!(count_of(&events, &l.id, "license.activated"), 1);
}

async fn the_first_valid_fires_license_activated_once(f: &Fixture) {
    let s = store_with_plan(f, plan("p", Some(1), None)).await;
    let peer = f.peer().await;
    hook(s.as_ref(), &EventType::ALL, t(0)).await;
    let l = s.create_license(new_license("p"), t(0)).await.unwrap();
    // The first VALID activates; what follows it, refusals included, does not.
    s.validate(check(&l.key, Some("a.example"), None, t(1)))
        .await
        .unwrap();
    let full = s
        .validate(check(&l.key, Some("b.example"), None, t(2)))
        .await
        .unwrap();
    assert_eq!(full.code, Code::DomainLimitReached);
    let idle = s.create_license(new_license("p"), t(0)).await.unwrap();
    s.update_license(
        idle.id.clone(),
        LicensePatch {
            status: Some(Status::Suspended),
            ..Default::default()
        },
        t(1),
    )
    .await
    .unwrap();
    s.validate(check(&idle.key, None, None, t(2)))
        .await
        .unwrap();
    // Many first validations of a fresh license at once, on both stores.
    let fresh = s.create_license(new_license("p"), t(0)).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = if i % 2 == 0 { s.clone() } else { peer.clone() };
            let key = fresh.key.clone();
            tokio::spawn(async move {
                store
                    .validate(check(&key, None, None, t(3)))
                    .await
                    .unwrap()
                    .code
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Code::Valid);
    }
    for _ in 0..3 {
        s.validate(check(&l.key, Some("a.example"), None, t(4)))
            .await
            .unwrap();
    }

    let events = drain(s.as_ref(), t(5)).await;
    assert_eq!(count_of(&events, &l.id, "license.activated"), 1);
    assert_eq!(count_of(&events, &fresh.id, "license.activated"), 1);
    assert_eq!(count_of(&events, &idle.id, "license.activated"), 0);
    let of_l: Vec<&str> = events
        .iter()
        .filter(|(id, _)| *id == l.id)
        .map(|(_, k)| k.as_str())
        .collect();
    assert_eq!(of_l, ["license.created", "license.activated"]);
}

async fn expire_due_expires_each_license_once(f: &Fixture) {
    let s = store_with_plan(f, plan("p", None, None)).await;
    let peer = f.peer().await;
    hook(s.as_ref(), &[EventType::Expired], t(0)).await;
    let mut due = Vec::new();
    for i in 0..30 {
        let new = NewLicense {
            expires_at: Some(Some(t(100 + i))),
            ..new_license("p")
        };
        due.push(s.create_license(new, t(0)).await.unwrap().id);
    }
    let later = NewLicense {
        expires_at: Some(Some(t(10_000))),
        ..new_license("p")
    };
    let later = s.create_license(later, t(0)).await.unwrap();
    let suspended = s
        .create_license(
            NewLicense {
                expires_at: Some(Some(t(50))),
                ..new_license("p")
            },
            t(0),
        )
        .await
        .unwrap();
    s.update_license(
        suspended.id.clone(),
        LicensePatch {
            status: Some(Status::Suspended),
            ..Default::default()
        },
        t(1),
    )
    .await
    .unwrap();

    assert_eq!(s.expire_due(t(99)).await.unwrap(), 0, "nothing due yet");
    // Every store sweeps at once, as every server process does.
    let sweeps: Vec<_> = (0..6)
        .map(|i| {
            let store = if i % 2 == 0 { s.clone() } else { peer.clone() };
            tokio::spawn(async move { store.expire_due(t(200)).await.unwrap() })
        })
        .collect();
    let mut total = 0;
    for sweep in sweeps {
        total += sweep.await.unwrap();
    }
    assert_eq!(total, 30, "each due license expired by exactly one sweep");
    assert_eq!(s.expire_due(t(300)).await.unwrap(), 0);
    for id in &due {
        let l = s.get_license(id.clone()).await.unwrap();
        assert_eq!((l.status, l.updated_at), (Status::Expired, t(200)));
    }
    assert_eq!(
        s.get_license(later.id.clone()).await.unwrap().status,
        Status::Active
    );
    assert_eq!(
        s.get_license(suspended.id.clone()).await.unwrap().status,
        Status::Suspended,
        "only active licenses expire"
    );
    let events = drain(s.as_ref(), t(300)).await;
    assert_eq!(events.len(), 30);
    let ids: HashSet<&String> = events.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 30, "one license.expired per license");

    // Moving the expiry into the future makes it active again.
    let renew = LicensePatch {
        expires_at: Some(Some(t(20_000))),
        ..Default::default()
    };
    let renewed = s
        .update_license(due[0].clone(), renew, t(400))
        .await
        .unwrap();
    assert_eq!(renewed.status, Status::Active);
}

async fn webhooks_are_created_listed_updated_and_deleted(f: &Fixture) {
    let s = &f.store;
    let created = s
        .create_webhook(
            NewWebhook {
                url: "https://example.com/hook".into(),
                events: vec![EventType::Created, EventType::Revoked],
                enabled: true,
                secret: "whsec_abc".into(),
            },
            t(0),
        )
        .await
        .unwrap();
    assert!(created.id.starts_with("wh_"));
    assert_eq!(
        created.secret.as_deref(),
        Some("whsec_abc"),
        "shown at creation"
    );
    assert_eq!(created.events, ["license.created", "license.revoked"]);
    assert_eq!((created.enabled, created.created_at), (true, t(0)));
    let got = s.get_webhook(created.id.clone()).await.unwrap();
    assert_eq!(got.secret, None, "and never again");
    assert_eq!(
        (got.url.as_str(), got.events.clone()),
        ("https://example.com/hook", created.events.clone())
    );

    let mut ids = vec![created.id.clone()];
    for i in 1..7 {
        ids.push(hook(s.as_ref(), &[EventType::Updated], t(i)).await);
    }
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let (items, next) = s
            .list_webhooks(PageRequest { before, limit: 3 })
            .await
            .unwrap();
        assert!(items.iter().all(|w| w.secret.is_none()));
        seen.extend(items.into_iter().map(|w| w.id));
        match next {
            Some(c) => before = Some(c),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");

    let patched = s
        .update_webhook(
            created.id.clone(),
            WebhookPatch {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (patched.enabled, patched.url.as_str()),
        (false, "https://example.com/hook")
    );
    let patched = s
        .update_webhook(
            created.id.clone(),
            WebhookPatch {
                url: Some("https://example.org/h".into()),
                events: Some(vec![EventType::Expired]),
                enabled: None,
                secret: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (
            patched.url.as_str(),
            patched.events.clone(),
            patched.enabled
        ),
        (
            "https://example.org/h",
            vec!["license.expired".to_owned()],
            false
        )
    );
    s.delete_webhook(created.id.clone()).await.unwrap();
    assert_eq!(
        refusal(s.get_webhook(created.id.clone()).await),
        "NotFound:WEBHOOK_NOT_FOUND"
    );
    assert_eq!(
        refusal(s.delete_webhook(created.id.clone()).await),
        "NotFound:WEBHOOK_NOT_FOUND"
    );
    assert_eq!(
        refusal(
            s.update_webhook(created.id.clone(), WebhookPatch::default())
                .await
        ),
        "NotFound:WEBHOOK_NOT_FOUND"
    );
    assert_eq!(
        refusal(s.delivery_attempts(created.id.clone(), page(5)).await),
        "NotFound:WEBHOOK_NOT_FOUND"
    );
}

async fn deliveries_go_out_in_order_per_license_with_retries(f: &Fixture) {
    let s = store_with_plan(f, plan("p", None, None)).await;
    let wh = hook(s.as_ref(), &EventType::ALL, t(0)).await;
    let a = s.create_license(new_license("p"), t(0)).await.unwrap();
    let meta = LicensePatch {
        customer_email: Some("new@example.com".into()),
        ..Default::default()
    };
    s.update_license(a.id.clone(), meta, t(1)).await.unwrap();
    s.revoke_license(a.id.clone(), t(2)).await.unwrap();
    let b = s.create_license(new_license("p"), t(3)).await.unwrap();

    // Only the head of each license's queue is due.
    let jobs = claim(s.as_ref(), t(10)).await;
    let heads: Vec<(String, u32)> = jobs.iter().map(|j| (j.kind.clone(), j.attempt)).collect();
    assert_eq!(
        heads,
        [
            ("license.created".to_owned(), 1),
            ("license.created".to_owned(), 1)
        ]
    );
    let job_a = jobs
        .iter()
        .find(|j| j.data.contains(&a.id))
        .unwrap()
        .clone();
    let job_b = jobs
        .iter()
        .find(|j| j.data.contains(&b.id))
        .unwrap()
        .clone();
    assert!(job_a.event_id.starts_with("evt_"));
    assert_eq!(
        (job_a.url.as_str(), job_a.secret.as_str()),
        ("http://127.0.0.1:9/hook", "whsec_test")
    );
    assert_eq!((job_a.created_at, job_a.first_attempt_at), (t(0), None));
    let data: serde_json::Value = serde_json::from_str(&job_a.data).unwrap();
    assert_eq!(data["license"]["id"], a.id.as_str());
    assert_eq!(data["license"]["status"], "active");
    assert!(
        claim(s.as_ref(), t(11)).await.is_empty(),
        "leased jobs are not handed out again"
    );

    // A failure: retried later, and nothing after it overtakes it.
    s.finish_delivery(
        job_a.clone(),
        failed_attempt(t(12), DeliveryNext::RetryAt(t(20))),
    )
    .await
    .unwrap();
    s.finish_delivery(job_b, delivered(t(12))).await.unwrap();
    assert!(
        claim(s.as_ref(), t(15)).await.is_empty(),
        "a's retry is not due; b has no more"
    );
    let retry = claim(s.as_ref(), t(20)).await;
    assert_eq!(retry.len(), 1);
    assert_eq!(
        (retry[0].event_id.clone(), retry[0].attempt),
        (job_a.event_id.clone(), 2)
    );
    assert_eq!(retry[0].first_attempt_at, Some(t(12)));

    // A lease that runs out (a crashed worker) hands the job out again.
    let again = claim(s.as_ref(), t(20 + LEASE)).await;
    assert_eq!((again.len(), again[0].attempt), (1, 2));
    s.finish_delivery(again[0].clone(), delivered(t(61)))
        .await
        .unwrap();
    let order = drain(s.as_ref(), t(70)).await;
    let kinds: Vec<&str> = order.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(kinds, ["license.updated", "license.revoked"]);

    let (attempts, next) = s.delivery_attempts(wh.clone(), page(500)).await.unwrap();
    assert_eq!(next, None);
    let listed: Vec<(String, u32, Option<u16>, String)> = attempts
        .iter()
        .map(|a| (a.kind.clone(), a.attempt, a.status_code, a.state.clone()))
        .collect();
    assert_eq!(
        listed,
        [
            (
                "license.revoked".to_owned(),
                1,
                Some(200),
                "delivered".to_owned()
            ),
            (
                "license.updated".to_owned(),
                1,
                Some(200),
                "delivered".to_owned()
            ),
            (
                "license.created".to_owned(),
                2,
                Some(200),
                "delivered".to_owned()
            ),
            (
                "license.created".to_owned(),
                1,
                Some(200),
                "delivered".to_owned()
            ),
            (
                "license.created".to_owned(),
                1,
                Some(500),
                "delivered".to_owned()
            ),
        ],
        "newest first"
    );
    assert_eq!(attempts[4].at, t(12));
    assert_eq!(attempts[4].duration_ms, 5);
    let (first, cursor) = s.delivery_attempts(wh.clone(), page(2)).await.unwrap();
    assert_eq!(first.len(), 2);
    let (rest, end) = s
        .delivery_attempts(
            wh.clone(),
            PageRequest {
                before: cursor,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!((rest.len(), end), (3, None));
}

/// A store with plan `p` and an endpoint for creations and suspensions.
async fn store_with_hook(f: &Fixture) -> (Arc<dyn Store>, String) {
    let s = store_with_plan(f, plan("p", None, None)).await;
    let wh = hook(
        s.as_ref(),
        &[EventType::Created, EventType::Suspended],
        t(0),
    )
    .await;
    (s, wh)
}

async fn failed_deliveries_can_be_redelivered(f: &Fixture) {
    let (s, wh) = store_with_hook(f).await;
    let l = s.create_license(new_license("p"), t(0)).await.unwrap();
    let suspend = LicensePatch {
        status: Some(Status::Suspended),
        ..Default::default()
    };
    s.update_license(l.id.clone(), suspend, t(1)).await.unwrap();
    let jobs = claim(s.as_ref(), t(5)).await;
    assert_eq!(jobs.len(), 1);
    let created = jobs[0].clone();
    s.finish_delivery(created.clone(), failed_attempt(t(5), DeliveryNext::Failed))
        .await
        .unwrap();
    // Given up: the next event of the license is now due.
    let next = claim(s.as_ref(), t(6)).await;
    assert_eq!(next[0].kind, "license.suspended");
    assert_eq!(
        refusal(
            s.redeliver(wh.clone(), next[0].event_id.clone(), t(6))
                .await
        ),
        "Conflict:DELIVERY_PENDING",
        "a pending delivery is not redelivered: it is still being delivered"
    );
    s.finish_delivery(next[0].clone(), delivered(t(6)))
        .await
        .unwrap();
    let (attempts, _) = s.delivery_attempts(wh.clone(), page(10)).await.unwrap();
    assert_eq!(attempts[1].state, "failed");

    s.redeliver(wh.clone(), created.event_id.clone(), t(7))
        .await
        .unwrap();
    let again = claim(s.as_ref(), t(7)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (
            again[0].event_id.clone(),
            again[0].attempt,
            again[0].first_attempt_at
        ),
        (created.event_id.clone(), 2, None)
    );
    s.finish_delivery(again[0].clone(), delivered(t(8)))
        .await
        .unwrap();
    assert!(claim(s.as_ref(), t(100)).await.is_empty());
    assert_eq!(
        refusal(s.redeliver(wh.clone(), "evt_NOPE".into(), t(9)).await),
        "NotFound:DELIVERY_NOT_FOUND"
    );
    assert_eq!(
        refusal(
            s.redeliver("wh_NOPE".into(), created.event_id.clone(), t(9))
                .await
        ),
        "NotFound:WEBHOOK_NOT_FOUND"
    );

    // Deleting the endpoint drops its queue; a late finish writes nothing.
    s.create_license(new_license("p"), t(10)).await.unwrap();
    let pending = claim(s.as_ref(), t(11)).await;
    assert_eq!(pending.len(), 1);
    s.delete_webhook(wh.clone()).await.unwrap();
    s.finish_delivery(pending[0].clone(), delivered(t(12)))
        .await
        .unwrap();
    assert!(claim(s.as_ref(), t(1000)).await.is_empty());
}

async fn each_delivery_is_claimed_by_one_store(f: &Fixture) {
    let s = store_with_plan(f, plan("p", None, None)).await;
    let peer = f.peer().await;
    hook(s.as_ref(), &[EventType::Created, EventType::Updated], t(0)).await;
    let mut licenses = Vec::new();
    for i in 0..40 {
        let l = s.create_license(new_license("p"), t(i)).await.unwrap();
        let patch = LicensePatch {
            customer_email: Some(format!("u{i}@example.com")),
            ..Default::default()
        };
        s.update_license(l.id.clone(), patch, t(i)).await.unwrap();
        licenses.push(l.id);
    }
    // Four workers on two stores claim and deliver until nothing is left.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let store = if w % 2 == 0 { s.clone() } else { peer.clone() };
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut idle = 0;
                while idle < 3 {
                    let jobs = store
                        .claim_deliveries(t(100), 7, 100, Duration::seconds(LEASE))
                        .await
                        .unwrap();
                    if jobs.is_empty() {
                        idle += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                    idle = 0;
                    for job in jobs {
                        let data: serde_json::Value = serde_json::from_str(&job.data).unwrap();
                        got.push((
                            job.event_id.clone(),
                            data["license"]["id"].as_str().unwrap().to_owned(),
                            job.kind.clone(),
                        ));
                        store.finish_delivery(job, delivered(t(100))).await.unwrap();
                    }
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    assert_eq!(all.len(), 80, "every event delivered");
    let unique: HashSet<&String> = all.iter().map(|(e, _, _)| e).collect();
    assert_eq!(unique.len(), 80, "no event claimed twice");
    let pairs: Vec<(String, String)> = all.into_iter().map(|(_, l, k)| (l, k)).collect();
    for id in &licenses {
        assert_eq!(count_of(&pairs, id, "license.created"), 1);
        assert_eq!(count_of(&pairs, id, "license.updated"), 1);
    }
}

/// An event's 24-hour window of retries runs from its first attempt; an
/// endpoint disabled for a while, or an older event redelivered ahead of
/// it, held it back meanwhile. Either way its window starts again at its
/// next attempt (it used to be given up after one more try).
async fn retry_windows_start_again_after_a_pause_or_a_redelivery(f: &Fixture) {
    let (s, wh) = store_with_hook(f).await;
    let l = s.create_license(new_license("p"), t(0)).await.unwrap();
    let fail_until = |secs| failed_attempt(t(secs), DeliveryNext::RetryAt(t(secs + 1)));
    let job = claim(s.as_ref(), t(1)).await.remove(0);
    s.finish_delivery(job, fail_until(1)).await.unwrap();
    let job = claim(s.as_ref(), t(2)).await.remove(0);
    assert_eq!(job.first_attempt_at, Some(t(1)), "the window runs");
    s.finish_delivery(job, fail_until(2)).await.unwrap();

    let set_enabled = |on: bool| {
        let (s, wh) = (s.clone(), wh.clone());
        async move {
            let patch = WebhookPatch {
                enabled: Some(on),
                ..Default::default()
            };
            s.update_webhook(wh, patch).await.unwrap();
        }
    };
    set_enabled(false).await;
    assert!(
        claim(s.as_ref(), t(100)).await.is_empty(),
        "nothing while off"
    );
    assert_eq!(
        s.get_webhook(wh.clone()).await.unwrap().pending,
        1,
        "but queued"
    );
    set_enabled(true).await;
    let job = claim(s.as_ref(), t(200)).await.remove(0);
    assert_eq!(
        (job.kind.as_str(), job.first_attempt_at, job.attempt),
        ("license.created", None, 3),
        "a new window, the attempts still counted"
    );
    // Enabling an enabled endpoint changes no window.
    s.finish_delivery(job, fail_until(200)).await.unwrap();
    set_enabled(true).await;
    let job = claim(s.as_ref(), t(201)).await.remove(0);
    assert_eq!(job.first_attempt_at, Some(t(200)));
    s.finish_delivery(job, failed_attempt(t(201), DeliveryNext::Failed))
        .await
        .unwrap();

    // The next event fails for a while, then the first is redelivered
    // ahead of it: when its turn comes again, its window starts anew.
    let suspend = LicensePatch {
        status: Some(Status::Suspended),
        ..Default::default()
    };
    s.update_license(l.id.clone(), suspend, t(202))
        .await
        .unwrap();
    let next = claim(s.as_ref(), t(203)).await.remove(0);
    assert_eq!(next.kind, "license.suspended");
    s.finish_delivery(next, fail_until(203)).await.unwrap();
    let first_event = s
        .delivery_attempts(wh.clone(), page(50))
        .await
        .unwrap()
        .0
        .into_iter()
        .find(|a| a.kind == "license.created")
        .unwrap()
        .event_id;
    s.redeliver(wh.clone(), first_event, t(204)).await.unwrap();
    let again = claim(s.as_ref(), t(205)).await;
    assert_eq!(again.len(), 1, "in order: the redelivered one first");
    s.finish_delivery(again[0].clone(), delivered(t(205)))
        .await
        .unwrap();
    let next = claim(s.as_ref(), t(206)).await.remove(0);
    assert_eq!(
        (next.kind.as_str(), next.first_attempt_at),
        ("license.suspended", None)
    );
    s.finish_delivery(next, delivered(t(206))).await.unwrap();
    let listed = s.list_webhooks(page(10)).await.unwrap().0;
    assert_eq!(listed[0].pending, 0, "all delivered");
}

/// An endpoint that hangs holds its deliveries for the whole timeout: it
/// may hold no more than its share of them, and the others go on (it used
/// to take all 64 slots, and healthy endpoints waited seconds).
async fn one_endpoint_takes_at_most_its_share_of_deliveries_in_flight(f: &Fixture) {
    let s = store_with_plan(f, plan("p", None, None)).await;
    let hanging = hook(s.as_ref(), &[EventType::Created], t(0)).await;
    let healthy = hook(s.as_ref(), &[EventType::Created], t(0)).await;
    for _ in 0..12 {
        s.create_license(new_license("p"), t(1)).await.unwrap();
    }
    let claim_5 = |at| {
        let s = s.clone();
        async move {
            s.claim_deliveries(t(at), 100, 5, Duration::seconds(LEASE))
                .await
                .unwrap()
        }
    };
    let of = |jobs: &[DeliveryJob], wh: &str| jobs.iter().filter(|j| j.webhook_id == wh).count();
    let first = claim_5(2).await;
    assert_eq!((of(&first, &hanging), of(&first, &healthy)), (5, 5));
    assert!(claim_5(3).await.is_empty(), "both at their share");
    for job in first.iter().filter(|j| j.webhook_id == healthy) {
        s.finish_delivery(job.clone(), delivered(t(3)))
            .await
            .unwrap();
    }
    // The healthy one goes on while the other still holds its five.
    let next = claim_5(4).await;
    assert_eq!((of(&next, &hanging), of(&next, &healthy)), (0, 5));
    // Once the hanging one's leases run out, its next five are claimed.
    let later = claim_5(4 + LEASE).await;
    assert_eq!(of(&later, &hanging), 5);
}

async fn events_are_queued_only_for_subscribed_enabled_endpoints(f: &Fixture) {
    let s = store_with_plan(f, plan("p", None, None)).await;
    let created_only = hook(s.as_ref(), &[EventType::Created], t(0)).await;
    let revoked_only = hook(s.as_ref(), &[EventType::Revoked], t(0)).await;
    let off = hook(s.as_ref(), &EventType::ALL, t(0)).await;
    let disable = WebhookPatch {
        enabled: Some(false),
        ..Default::default()
    };
    s.update_webhook(off.clone(), disable).await.unwrap();
    let l = s.create_license(new_license("p"), t(1)).await.unwrap();
    s.revoke_license(l.id.clone(), t(2)).await.unwrap();
    let jobs = claim(s.as_ref(), t(3)).await;
    let mut kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["license.created", "license.revoked"]);
    for job in jobs {
        s.finish_delivery(job, delivered(t(3))).await.unwrap();
    }
    let count = |id: String| {
        let s = s.clone();
        async move { s.delivery_attempts(id, page(10)).await.unwrap().0.len() }
    };
    assert_eq!(count(created_only).await, 1);
    assert_eq!(count(revoked_only).await, 1);
    // Enabled again: events raised while it was off were not queued for it.
    let enable = WebhookPatch {
        enabled: Some(true),
        ..Default::default()
    };
    s.update_webhook(off.clone(), enable).await.unwrap();
    assert!(claim(s.as_ref(), t(4)).await.is_empty());
    assert_eq!(count(off).await, 0);
}

async fn usage_past_the_retention_is_pruned_and_counts_stay(f: &Fixture) {
    let s = store_with_plan(f, plan("p", None, None)).await;
    let a = s.create_license(new_license("p"), t(0)).await.unwrap();
    let b = s.create_license(new_license("p"), t(0)).await.unwrap();
    for (license, at) in [(&a, 10), (&b, 20), (&a, 30), (&b, 40), (&a, 50)] {
        let answer = s
            .validate(check(&license.key, None, None, t(at)))
            .await
            .unwrap();
        assert_eq!(answer.code, Code::Valid);
    }
    let times = |id: &str| {
        let (s, id) = (s.clone(), id.to_owned());
        async move {
            let page = s.usage(id, page(10)).await.unwrap();
            let at: Vec<i64> = page
                .records
                .iter()
                .map(|r| r.at.timestamp() - t(0).timestamp())
                .collect();
            at
        }
    };
    // Nothing recorded before t(5): nothing goes.
    assert_eq!(s.prune_usage(t(5), 100).await.unwrap(), 0);
    // The oldest first, at most `limit` a step, only before the cut-off.
    assert_eq!(s.prune_usage(t(35), 2).await.unwrap(), 2);
    assert_eq!(s.prune_usage(t(35), 2).await.unwrap(), 1);
    assert_eq!(s.prune_usage(t(35), 2).await.unwrap(), 0);
    assert_eq!(times(&a.id).await, [50]);
    assert_eq!(times(&b.id).await, [40]);
    // The counts do not come from the history.
    let counted = |l: keysmith_core::wire::License| (l.validation_count, l.last_validated_at);
    assert_eq!(
        counted(s.get_license(a.id.clone()).await.unwrap()),
        (3, Some(t(50)))
    );
    assert_eq!(
        counted(s.get_license(b.id.clone()).await.unwrap()),
        (2, Some(t(40)))
    );
    // Recording goes on after a prune.
    s.validate(check(&b.key, None, None, t(60))).await.unwrap();
    assert_eq!(times(&b.id).await, [60, 40]);
    assert_eq!(
        counted(s.get_license(b.id.clone()).await.unwrap()),
        (3, Some(t(60)))
    );
}

async fn the_admin_token_hash_is_kept_and_replaced_by_a_rotation(f: &Fixture) {
    let s = &f.store;
    assert_eq!(s.admin_token_hash().await.unwrap(), None);
    let ab = "ab".repeat(32);
    assert_eq!(s.keep_first_admin_token_hash(ab.clone()).await.unwrap(), ab);
    assert_eq!(s.admin_token_hash().await.unwrap(), Some(ab.clone()));
    // A second server generating its own token at the same first start
    // gets the first one's hash back, and the first one's stays.
    let peer = f.peer().await;
    assert_eq!(
        peer.keep_first_admin_token_hash("cd".repeat(32))
            .await
            .unwrap(),
        ab
    );
    assert_eq!(peer.admin_token_hash().await.unwrap(), Some(ab));
    // A rotation replaces it, and a later first start keeps the new one.
    let ef = "ef".repeat(32);
    s.replace_admin_token_hash(ef.clone()).await.unwrap();
    assert_eq!(peer.admin_token_hash().await.unwrap(), Some(ef.clone()));
    assert_eq!(
        peer.keep_first_admin_token_hash("12".repeat(32))
            .await
            .unwrap(),
        ef
    );
}

async fn reopening_keeps_everything(f: &Fixture) {
    let s = store_with_plan(f, plan("p", Some(2), None)).await;
    let l = s.create_license(new_license("p"), t(0)).await.unwrap();
    s.validate(check(&l.key, Some("a.example"), None, t(1)))
        .await
        .unwrap();
    // A second start on the same database applies no migration twice.
    let reopened = f.peer().await;
    let stored = reopened.get_license(l.id.clone()).await.unwrap();
    assert_eq!(
        (stored.domains, stored.validation_count),
        (vec!["a.example".to_owned()], 1)
    );
    assert_eq!(reopened.list_plans().await.unwrap().len(), 1);
}

async fn settled_events_past_the_retention_are_pruned_with_their_deliveries(f: &Fixture) {
    let (s, wh) = store_with_hook(f).await;
    // Three creations before the cut-off at t(10): one delivered, one given
    // up, one still being retried; and one event after the cut-off.
    let delivered_license = s.create_license(new_license("p"), t(0)).await.unwrap();
    let failed_license = s.create_license(new_license("p"), t(1)).await.unwrap();
    let retried_license = s.create_license(new_license("p"), t(2)).await.unwrap();
    let suspend = LicensePatch {
        status: Some(Status::Suspended),
        ..Default::default()
    };
    s.update_license(delivered_license.id.clone(), suspend, t(20))
        .await
        .unwrap();
    let mut event_of = std::collections::HashMap::new();
    for job in claim(s.as_ref(), t(3)).await {
        let data: serde_json::Value = serde_json::from_str(&job.data).unwrap();
        let license = data["license"]["id"].as_str().unwrap().to_owned();
        event_of.insert(license.clone(), job.event_id.clone());
        let result = if license == delivered_license.id {
            delivered(t(3))
        } else if license == failed_license.id {
            failed_attempt(t(3), DeliveryNext::Failed)
        } else {
            failed_attempt(t(3), DeliveryNext::RetryAt(t(500)))
        };
        s.finish_delivery(job, result).await.unwrap();
    }
    assert_eq!(event_of.len(), 3, "one creation per license is due");
    let attempted = |attempts: &[keysmith_server::store::DeliveryAttempt]| {
        let mut ids: Vec<String> = attempts.iter().map(|a| a.event_id.clone()).collect();
        ids.sort();
        ids
    };
    let (before, _) = s.delivery_attempts(wh.clone(), page(10)).await.unwrap();
    assert_eq!(before.len(), 3);

    // One at a time (the limit), oldest first.
    assert_eq!(s.prune_events(t(10), 1).await.unwrap(), 1);
    let (after_one, _) = s.delivery_attempts(wh.clone(), page(10)).await.unwrap();
    assert!(!attempted(&after_one).contains(&event_of[&delivered_license.id]));
    assert!(attempted(&after_one).contains(&event_of[&failed_license.id]));
    assert_eq!(s.prune_events(t(10), 100).await.unwrap(), 1);
    assert_eq!(s.prune_events(t(10), 100).await.unwrap(), 0);

    // Left: the retried event's attempt; the given-up one is gone for good.
    let (left, _) = s.delivery_attempts(wh.clone(), page(10)).await.unwrap();
    assert_eq!(
        attempted(&left),
        vec![event_of[&retried_license.id].clone()]
    );
    assert_eq!(
        refusal(
            s.redeliver(wh.clone(), event_of[&failed_license.id].clone(), t(30))
                .await
        ),
        "NotFound:DELIVERY_NOT_FOUND"
    );
    // What is still queued goes out as before, in order.
    let rest = drain(s.as_ref(), t(600)).await;
    assert_eq!(count_of(&rest, &retried_license.id, "license.created"), 1);
    assert_eq!(
        count_of(&rest, &delivered_license.id, "license.suspended"),
        1
    );
    assert_eq!(rest.len(), 2, "{rest:?}");
    // Once settled and past the cut-off, those go too.
    assert_eq!(s.prune_events(t(10_000), 100).await.unwrap(), 2);
    let (none, _) = s.delivery_attempts(wh, page(10)).await.unwrap();
    assert!(none.is_empty(), "{none:?}");
}
