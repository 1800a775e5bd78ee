//! Per-client-IP rate limiting of the public routes (GCRA, via `governor`).
//! Memory stays bounded: idle entries are dropped periodically.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Keys above which idle entries are dropped at once rather than at the next sweep.
const MAX_TRACKED: usize = 100_000;

#[derive(Clone, Default)]
pub struct RateLimits {
    per_ip: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl RateLimits {
    /// `per_second` requests per second per IP with a burst of twice that;
    /// 0 turns limiting off.
    pub fn new(per_second: u32) -> RateLimits {
        let per_ip = NonZeroU32::new(per_second).map(|rate| {
            let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2 > 0"));
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        RateLimits { per_ip }
    }

    /// `Err(seconds to wait)` when `ip` is over its budget.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let Some(limiter) = &self.per_ip else {
            return Ok(());
        };
        if limiter.len() > MAX_TRACKED {
            limiter.retain_recent();
        }
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// Drops entries of clients that have been quiet long enough to be full again.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_ip_on_its_own() {
        let limits = RateLimits::new(5);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let passed = (0..50).filter(|_| limits.check(a).is_ok()).count();
        assert!((10..=11).contains(&passed), "burst of 10, got {passed}");
        assert!(limits.check(a).unwrap_err() >= 1);
        assert!(limits.check(b).is_ok());
        assert!((0..1000).all(|_| RateLimits::new(0).check(a).is_ok()));
    }
}
