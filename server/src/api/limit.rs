//! Per-client-IP rate limiting of the public routes (GCRA, via `governor`):
//! a general budget, and a much stricter one for failed lookups
//! (`LICENSE_NOT_FOUND`, `KEY_MALFORMED`) so keys cannot be enumerated. A
//! client past its failure budget is refused everything until it refills.
//! Memory stays bounded: idle entries are dropped periodically.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Keys above which idle entries are dropped at once rather than at the next sweep.
const MAX_TRACKED: usize = 100_000;

type Limiter = Arc<DefaultKeyedRateLimiter<IpAddr>>;

#[derive(Clone, Default)]
pub struct RateLimits {
    per_ip: Option<Limiter>,
    failures: Option<Limiter>,
    /// Clients past their failure budget, and until when.
    blocked: Arc<Mutex<HashMap<IpAddr, Instant>>>,
}

fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Whose budget a request spends: an IPv4 address, or an IPv6 address's
/// /64 — one host, one network, is handed a whole /64, so counting its
/// addresses apart gave it 2^64 budgets.
pub(crate) fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
    }
}

fn check(limiter: &Limiter, ip: IpAddr) -> Result<(), Duration> {
    if limiter.len() > MAX_TRACKED {
        limiter.retain_recent();
    }
    limiter
        .check_key(&ip)
        .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

impl RateLimits {
    /// `per_second` requests per second per IP with a burst of twice that,
    /// and `failures_per_minute` failed lookups per IP (also its burst);
    /// 0 turns either off.
    pub fn new(per_second: u32, failures_per_minute: u32) -> RateLimits {
        let per_ip = NonZeroU32::new(per_second).map(|rate| {
            let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2 > 0"));
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        let failures = NonZeroU32::new(failures_per_minute)
            .map(|rate| Arc::new(RateLimiter::keyed(Quota::per_minute(rate))));
        RateLimits {
            per_ip,
            failures,
            blocked: Arc::default(),
        }
    }

    /// `Err(seconds to wait)` when `ip` is over its budget or past its
    /// failure budget.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let ip = client(ip);
        if self.failures.is_some() {
            let blocked = self.blocked.lock().expect("blocked lock");
            if let Some(until) = blocked.get(&ip) {
                let now = Instant::now();
                if *until > now {
                    return Err(whole_seconds(*until - now));
                }
            }
        }
        match &self.per_ip {
            Some(limiter) => check(limiter, ip).map_err(whole_seconds),
            None => Ok(()),
        }
    }

    /// Counts a failed lookup against `ip`; past the budget, `ip` is refused
    /// until the budget has room again.
    pub fn record_failure(&self, ip: IpAddr) {
        let Some(failures) = &self.failures else {
            return;
        };
        let ip = client(ip);
        if let Err(wait) = check(failures, ip) {
            let mut blocked = self.blocked.lock().expect("blocked lock");
            if blocked.len() >= MAX_TRACKED {
                let now = Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            if blocked.len() < MAX_TRACKED {
                blocked.insert(ip, Instant::now() + wait);
            }
        }
    }

    /// Drops entries of clients that have been quiet long enough to be full again.
    pub fn forget_idle(&self) {
        for limiter in [&self.per_ip, &self.failures].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let now = Instant::now();
        self.blocked
            .lock()
            .expect("blocked lock")
            .retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_each_ip_on_its_own() {
        let limits = RateLimits::new(5, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let passed = (0..50).filter(|_| limits.check(a).is_ok()).count();
        assert!((10..=11).contains(&passed), "burst of 10, got {passed}");
        assert!(limits.check(a).unwrap_err() >= 1);
        assert!(limits.check(b).is_ok());
        assert!((0..1000).all(|_| RateLimits::new(0, 0).check(a).is_ok()));
    }

    #[test]
    fn an_ipv6_network_shares_one_budget() {
        let limits = RateLimits::new(0, 3);
        for i in 1..=4 {
            limits.record_failure(format!("2001:db8:1:2::{i:x}").parse().unwrap());
        }
        for same_64 in ["2001:db8:1:2::99", "2001:db8:1:2:ffff::1"] {
            assert!(limits.check(same_64.parse().unwrap()).is_err(), "{same_64}");
        }
        assert!(limits.check("2001:db8:1:3::1".parse().unwrap()).is_ok());
        // An IPv4 client seen through an IPv6 socket is that IPv4 client.
        let v4 = RateLimits::new(0, 1);
        v4.record_failure("::ffff:192.0.2.7".parse().unwrap());
        v4.record_failure("192.0.2.7".parse().unwrap());
        assert!(v4.check("192.0.2.7".parse().unwrap()).is_err());
        assert!(v4.check("192.0.2.8".parse().unwrap()).is_ok());
    }

    #[test]
    fn failures_past_the_budget_block_the_client_only() {
        let limits = RateLimits::new(0, 3);
        let guesser: IpAddr = "10.0.0.1".parse().unwrap();
        let honest: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            limits.record_failure(guesser);
            assert!(limits.check(guesser).is_ok());
        }
        limits.record_failure(guesser);
        let wait = limits.check(guesser).unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(limits.check(honest).is_ok());
        limits.record_failure(honest);
        assert!(limits.check(honest).is_ok());
    }
}
