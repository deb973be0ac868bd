//! Per-client request budgets at the edge: governor's keyed GCRA limiter, one per rule of a
//! route, kept by the handle across table swaps (a deploy does not refill every bucket).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::spec::RateLimit;

/// Clients tracked by one limiter above which idle ones are forgotten.
const FORGET_IDLE_ABOVE: usize = 10_000;

/// One rule's buckets, one per client address.
pub(crate) struct ClientLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU32,
}

impl std::fmt::Debug for ClientLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLimiter")
            .field("clients", &self.limiter.len())
            .finish()
    }
}

impl ClientLimiter {
    /// The limiter for `rule`, or why the rule is invalid.
    pub(crate) fn new(rule: &RateLimit) -> Result<Self, String> {
        let requests =
            NonZeroU32::new(rule.requests).ok_or("rate limit requests must be at least 1")?;
        let burst = NonZeroU32::new(rule.burst).ok_or("rate limit burst must be at least 1")?;
        let every = rule.period / requests.get();
        let quota = Quota::with_period(every)
            .ok_or("rate limit period must be at least 1 ms per request")?
            .allow_burst(burst);
        Ok(Self {
            limiter: RateLimiter::keyed(quota),
            checks: AtomicU32::new(0),
        })
    }

    /// `Ok` when `client` may go on; otherwise how long until it may.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        // Now and then, forget clients whose bucket is full again (they are idle).
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095
            && self.limiter.len() > FORGET_IDLE_ABOVE
        {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&client.to_canonical())
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }
}

/// A route's rule, compiled: its path prefix and its limiter.
#[derive(Debug)]
pub(crate) struct CompiledRate {
    pub(crate) prefix: Option<Box<str>>,
    pub(crate) limiter: std::sync::Arc<ClientLimiter>,
}

/// The rule that applies to `path`: the longest matching prefix (rules are kept sorted so).
pub(crate) fn rule_for<'r>(rules: &'r [CompiledRate], path: &str) -> Option<&'r CompiledRate> {
    rules.iter().find(|r| match r.prefix.as_deref() {
        None => true,
        Some(prefix) => crate::table::prefix_matches(prefix, path),
    })
}

/// `Retry-After` seconds for a wait (at least 1).
pub(crate) fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_client_waits_and_others_do_not() {
        let limiter = ClientLimiter::new(&RateLimit {
            path_prefix: None,
            requests: 1,
            period: Duration::from_secs(60),
            burst: 3,
        })
        .unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert_eq!(retry_after_seconds(wait), wait.as_secs() + 1);
        assert!(
            limiter.check(b).is_ok(),
            "another client has its own bucket"
        );
        assert!(ClientLimiter::new(&RateLimit {
            path_prefix: None,
            requests: 0,
            period: Duration::from_secs(1),
            burst: 1,
        })
        .is_err());
    }
}
