//! The expiry sweep: active licenses past `expires_at` become `expired`
//! (firing `license.expired`) within one interval.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;

/// How many licenses one sweep step expires; a step repeats while full.
const STEP: usize = 500;

pub async fn run(store: Arc<dyn Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            match store.expire_due(chrono::Utc::now()).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(count = n, "licenses expired");
                    }
                    if n < STEP {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "expiry sweep failed");
                    break;
                }
            }
        }
    }
}
