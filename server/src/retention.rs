//! Usage retention (`--usage-retention-days`): usage records older than the
//! retention are deleted, oldest first, in steps that leave the database to
//! other work in between. Validation counts are not touched.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;

/// Records one step deletes; steps repeat, with a pause, while full.
const STEP: u32 = 5_000;
/// Between two full steps: room for the writes waiting behind them.
const PAUSE: Duration = Duration::from_millis(50);
/// How often a pass starts (the first at start-up).
const EVERY: Duration = Duration::from_secs(60);

pub async fn run(store: Arc<dyn Store>, days: u32) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let before = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
        let mut pruned = 0u64;
        loop {
            match store.prune_usage(before, STEP).await {
                Ok(n) => {
                    pruned += n;
                    if n < u64::from(STEP) {
                        break;
                    }
                    if pruned.is_multiple_of(100 * u64::from(STEP)) {
                        tracing::info!(pruned, "pruning usage records: still going");
                    }
                    tokio::time::sleep(PAUSE).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "usage retention pass failed");
                    break;
                }
            }
        }
        if pruned > 0 {
            tracing::info!(
                pruned,
                before = %keysmith_core::time::format_rfc3339(before),
                "usage records past the retention deleted"
            );
        }
    }
}
