//! Webhook delivery: a worker claims due deliveries from the durable outbox,
//! POSTs each one signed with HMAC-SHA256, and records every attempt. Each
//! delivery runs in its own task, so a slow or dead endpoint delays nothing
//! but its own license's later events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::store::{AttemptResult, DeliveryJob, DeliveryNext, Store};

/// Timing of deliveries and retries. Injectable so tests run in seconds.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// How long one attempt may take.
    pub timeout: Duration,
    /// The first retry waits between half of this and all of it; a later
    /// one up to this plus twice the time the event has been failing, at
    /// most `retry_max` ([`after_failure`]).
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Retries go on until this long after the first attempt; then `failed`.
    pub give_up_after: Duration,
    /// How often the worker looks for due deliveries.
    pub poll: Duration,
    /// CA certificates a receiver's HTTPS certificate may chain to besides
    /// Mozilla's roots (`--webhook-ca-file`).
    pub roots: Vec<reqwest::Certificate>,
}

impl Default for DeliveryPolicy {
    fn default() -> DeliveryPolicy {
        DeliveryPolicy {
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(20),
            retry_max: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(24 * 3600),
            poll: Duration::from_millis(250),
            roots: Vec::new(),
        }
    }
}

/// Deliveries in flight at once, across all endpoints.
const MAX_IN_FLIGHT: usize = 64;

/// Deliveries in flight at once to one endpoint: one that hangs holds at
/// most these slots for its timeout, not all of them.
const MAX_IN_FLIGHT_PER_ENDPOINT: u32 = 8;

/// What follows a failed attempt of an event whose attempts (since it was
/// queued, redelivered, or its endpoint enabled again) began at `first_at`.
///
/// The wait grows with how long the event has been failing — the retry
/// base, plus twice that time — rather than with the attempt's number, so
/// that a redelivery (which starts a new window) retries soon again, as a
/// new event does, instead of at the top of the curve.
pub fn after_failure(
    policy: &DeliveryPolicy,
    first_at: DateTime<Utc>,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> DeliveryNext {
    let elapsed = (now - first_at).to_std().unwrap_or_default();
    if elapsed >= policy.give_up_after {
        return DeliveryNext::Failed;
    }
    let ceiling = policy
        .retry_base
        .saturating_add(elapsed.saturating_mul(2))
        .min(policy.retry_max);
    // "Equal jitter": at least half the ceiling, so retries never bunch up at zero.
    let half = ceiling / 2;
    let jitter = Duration::from_millis(rng.gen_range(0..=half.as_millis() as u64));
    let wait = chrono::Duration::from_std(half + jitter).unwrap_or(chrono::Duration::MAX);
    DeliveryNext::RetryAt(now + wait)
}

/// The `Keysmith-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body of a delivery.
pub fn payload(job: &DeliveryJob) -> String {
    let data: serde_json::Value =
        serde_json::from_str(&job.data).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "id": job.event_id,
        "type": job.kind,
        "created_at": keysmith_core::time::format_rfc3339(job.created_at),
        "data": data,
    })
    .to_string()
}

/// The CA certificates of the PEM file `path` (`--webhook-ca-file`: a
/// private CA whose receivers' certificates Mozilla's roots do not cover),
/// checked as the delivery client will take them.
pub fn load_roots(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let named = || format!("--webhook-ca-file {}", path.display());
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", named()))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| anyhow::anyhow!("{}: not PEM certificates ({e})", named()))?;
    if roots.is_empty() {
        anyhow::bail!(
            "{} holds no certificate (\"-----BEGIN CERTIFICATE-----\")",
            named()
        );
    }
    let policy = DeliveryPolicy {
        roots,
        ..DeliveryPolicy::default()
    };
    http_client(&policy).map_err(|e| anyhow::anyhow!("{}: {e}", named()))?;
    Ok(policy.roots)
}

/// The delivery worker's HTTP client: the attempt's timeout, no redirects
/// followed, Mozilla's roots and the policy's own.
fn http_client(policy: &DeliveryPolicy) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(policy.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("keysmith-webhooks/", env!("CARGO_PKG_VERSION")));
    for root in &policy.roots {
        builder = builder.add_root_certificate(root.clone());
    }
    builder.build()
}

/// Runs the delivery worker forever.
pub async fn run(store: Arc<dyn Store>, policy: DeliveryPolicy) {
    let http = match http_client(&policy) {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "webhook delivery is off: cannot build an HTTP client");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let lease =
        chrono::Duration::from_std(policy.timeout + Duration::from_secs(30)).expect("lease fits");
    let mut tick = tokio::time::interval(policy.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outage = Outage::default();
    loop {
        tick.tick().await;
        let free = slots.available_permits() as u32;
        if free == 0 {
            continue;
        }
        let claimed = store.claim_deliveries(Utc::now(), free, MAX_IN_FLIGHT_PER_ENDPOINT, lease);
        let jobs = match claimed.await {
            Ok(jobs) => {
                if let Some(failures) = outage.ended() {
                    tracing::info!(failures, "claiming webhook deliveries again");
                }
                jobs
            }
            Err(e) => {
                // The database away: said once, then once a minute, and
                // asked again less often, not four times a second.
                let (pause, say) = outage.failed(policy.poll, std::time::Instant::now());
                if say {
                    tracing::error!(error = %e, failures = outage.failures, "cannot claim webhook deliveries");
                }
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        for job in jobs {
            let permit = slots.clone().acquire_owned().await.expect("semaphore open");
            let (store, http, policy) = (store.clone(), http.clone(), policy.clone());
            tokio::spawn(async move {
                let result = attempt(&http, &policy, &job).await;
                if let Err(e) = store.finish_delivery(job, result).await {
                    tracing::error!(error = %e, "cannot record a webhook attempt");
                }
                drop(permit);
            });
        }
    }
}

/// Claims failing in a row (the database away), and when that was last
/// logged.
#[derive(Debug, Default)]
struct Outage {
    failures: u32,
    logged: Option<std::time::Instant>,
}

impl Outage {
    /// How long to wait before the next claim, and whether to log this
    /// failure: the first, then at most once a minute.
    fn failed(&mut self, poll: Duration, now: std::time::Instant) -> (Duration, bool) {
        self.failures = self.failures.saturating_add(1);
        let say = self
            .logged
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60));
        if say {
            self.logged = Some(now);
        }
        let pause = poll
            .saturating_mul(1 << self.failures.min(8))
            .min(Duration::from_secs(30));
        (pause, say)
    }

    /// After a successful claim: how many failed before it, if any did.
    fn ended(&mut self) -> Option<u32> {
        let failures = std::mem::take(self).failures;
        (failures > 0).then_some(failures)
    }
}

async fn attempt(
    http: &reqwest::Client,
    policy: &DeliveryPolicy,
    job: &DeliveryJob,
) -> AttemptResult {
    let body = payload(job);
    let started_at = Utc::now();
    let started = Instant::now();
    let sent = http
        .post(&job.url)
        .header("content-type", "application/json")
        .header(
            "keysmith-signature",
            signature(&job.secret, started_at.timestamp(), &body),
        )
        .header("keysmith-event-id", &job.event_id)
        .body(body)
        .send()
        .await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let (status_code, error) = match sent {
        Ok(resp) => (Some(resp.status().as_u16()), None),
        Err(e) => (None, Some(failure_text(e, &job.url))),
    };
    let delivered = status_code.is_some_and(|s| (200..300).contains(&s));
    let next = if delivered {
        DeliveryNext::Delivered
    } else {
        // A first failure opens the window when it ends, not when the
        // attempt began: a timeout must not push the first retry later.
        let now = Utc::now();
        let first = job.first_attempt_at.unwrap_or(now);
        after_failure(policy, first, now, &mut rand::thread_rng())
    };
    tracing::info!(webhook_id = %job.webhook_id, event_id = %job.event_id, kind = %job.kind, attempt = job.attempt, ?status_code, error = error.as_deref().unwrap_or(""), duration_ms, ?next, "webhook attempt");
    AttemptResult {
        at: started_at,
        status_code,
        error,
        duration_ms,
        next,
    }
}

/// Why a request got no HTTP answer, cause by cause ("error sending
/// request: client error (Connect): tcp connect error: Connection refused
/// (os error 111)"), for the delivery list. The URL may carry credentials:
/// it is left out, and its password blotted from any cause that quotes it.
fn failure_text(e: reqwest::Error, url: &str) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    match reqwest::Url::parse(url)
        .ok()
        .as_ref()
        .and_then(|u| u.password())
    {
        Some(password) if !password.is_empty() => text.replace(password, "***"),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PostgreSQL away for a minute used to log ~240 errors from each
    /// server: now the first, one a minute after, and claims slow down.
    #[test]
    fn an_outage_is_logged_once_a_minute_and_claims_back_off() {
        let poll = Duration::from_millis(250);
        let start = std::time::Instant::now();
        let mut outage = Outage::default();
        let mut said = 0;
        let mut at = start;
        let mut pauses = Vec::new();
        while at < start + Duration::from_secs(125) {
            let (pause, say) = outage.failed(poll, at);
            said += usize::from(say);
            pauses.push(pause);
            at += pause.max(poll);
        }
        assert_eq!(said, 3, "at 0 s, 60 s and 120 s");
        assert_eq!(pauses[0], Duration::from_millis(500));
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*pauses.last().unwrap(), Duration::from_secs(30));
        assert_eq!(outage.ended(), Some(pauses.len() as u32));
        assert_eq!(outage.ended(), None, "reset");
    }

    /// SPEC §6: the first retry within 30 s. The wait grows with how long
    /// the event has been failing, and that used to count the first
    /// attempt's own time: an endpoint that hung for the 10 s timeout was
    /// retried 20–40 s after it, not 10–20.
    #[tokio::test]
    async fn a_first_attempt_that_timed_out_is_retried_within_the_base() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        // Accepts, never answers.
        let hang = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let policy = DeliveryPolicy {
            timeout: Duration::from_secs(2),
            retry_base: Duration::from_secs(2),
            ..DeliveryPolicy::default()
        };
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .build()
            .unwrap();
        let job = DeliveryJob {
            delivery: 1,
            webhook_id: "wh_test".into(),
            url,
            secret: "whsec_test".into(),
            event_id: "evt_test".into(),
            kind: "license.updated".into(),
            created_at: Utc::now(),
            data: "{}".into(),
            attempt: 1,
            first_attempt_at: None,
        };
        let result = attempt(&http, &policy, &job).await;
        let failed_at = Utc::now();
        hang.abort();
        assert!(result.error.is_some(), "{result:?}");
        let DeliveryNext::RetryAt(at) = result.next else {
            panic!("{result:?}")
        };
        let wait = (at - failed_at).num_milliseconds();
        assert!(wait <= 2_000, "retried {wait} ms after the timeout");
    }

    #[test]
    fn signature_matches_a_known_hmac() {
        // HMAC-SHA256("whsec_test", "1700000000.{}") computed independently (Python hmac).
        assert_eq!(
            signature("whsec_test", 1_700_000_000, "{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[test]
    fn retries_back_off_with_jitter_then_fail() {
        let policy = DeliveryPolicy::default();
        let first = Utc::now();
        let mut rng = rand::thread_rng();
        let wait_after = |failing_secs: i64, rng: &mut rand::rngs::ThreadRng| {
            let now = first + chrono::Duration::seconds(failing_secs);
            let DeliveryNext::RetryAt(t) = after_failure(&policy, first, now, rng) else {
                panic!("given up after {failing_secs} s")
            };
            (t - now).num_milliseconds()
        };
        for _ in 0..200 {
            let wait = wait_after(0, &mut rng);
            assert!(
                (10_000..=20_000).contains(&wait),
                "first retry within 30 s: {wait}"
            );
            // Failing for a minute: the base and twice that, with jitter.
            assert!((70_000..=140_000).contains(&wait_after(60, &mut rng)));
            let late = wait_after(23 * 3600, &mut rng);
            assert!(
                (1_800_000..=3_600_000).contains(&late),
                "at most an hour apart: {late}"
            );
        }
        // Exponential: from the first failure, the waits themselves grow
        // about threefold each time until the hour's cap.
        let (mut failing, mut waits) = (0i64, Vec::new());
        while failing < 24 * 3600 {
            let wait = wait_after(failing, &mut rng) / 1000;
            waits.push(wait);
            failing += wait;
        }
        // Past the ramp, waits of 30 to 60 minutes: at most ~60 in a day.
        assert!(
            (30..60).contains(&waits.len()),
            "{} attempts in a day",
            waits.len()
        );
        assert!(waits[3] > 4 * waits[0], "{waits:?}");
        let day_later = first + chrono::Duration::hours(24);
        assert_eq!(
            after_failure(&policy, first, day_later, &mut rng),
            DeliveryNext::Failed
        );
    }
}
