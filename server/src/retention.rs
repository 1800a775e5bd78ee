//! Retention: usage records (`--usage-retention-days`) and settled webhook
//! events with their deliveries (`--webhook-retention-days`) older than
//! their retention are deleted, oldest first, in steps that leave the
//! database to other work in between. Validation counts are not touched.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::store::{Result, Store};

/// Rows one step deletes; steps repeat, with a pause, while full.
const STEP: u32 = 5_000;
/// Between two full steps: room for the writes waiting behind them.
const PAUSE: Duration = Duration::from_millis(50);
/// How often a pass starts (the first at start-up).
const EVERY: Duration = Duration::from_secs(60);

/// Days to keep each kind of history; 0 keeps it forever.
#[derive(Debug, Clone, Copy)]
pub struct Days {
    pub usage: u32,
    pub events: u32,
}

pub async fn run(store: Arc<dyn Store>, days: Days) {
    if days.usage == 0 && days.events == 0 {
        return;
    }
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if days.usage > 0 {
            prune("usage records", days.usage, |before| {
                store.prune_usage(before, STEP)
            })
            .await;
        }
        if days.events > 0 {
            prune("webhook events", days.events, |before| {
                store.prune_events(before, STEP)
            })
            .await;
        }
    }
}

/// One pass: `step` until it deletes less than a full step, logging what went.
async fn prune<F>(what: &str, days: u32, step: impl Fn(DateTime<Utc>) -> F)
where
    F: std::future::Future<Output = Result<u64>>,
{
    let before = Utc::now() - chrono::Duration::days(i64::from(days));
    let mut pruned = 0u64;
    loop {
        match step(before).await {
            Ok(n) => {
                pruned += n;
                if n < u64::from(STEP) {
                    break;
                }
                if pruned.is_multiple_of(100 * u64::from(STEP)) {
                    tracing::info!(pruned, "pruning {what}: still going");
                }
                tokio::time::sleep(PAUSE).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "retention pass over {what} failed");
                break;
            }
        }
    }
    if pruned > 0 {
        tracing::info!(
            pruned,
            before = %keysmith_core::time::format_rfc3339(before),
            "{what} past the retention deleted"
        );
    }
}
