//! Brute-force protection for credentials: consecutive failures per account and per client
//! address earn a growing wait (1 s, 2 s, 4 s, … up to 15 min) after a few free attempts, and a
//! one-hour lockout well before 100 failures. A locked key is refused before any password is
//! checked, so the wait cannot be used as an oracle. An attempt is counted as a failure when it
//! is *claimed*, atomically with the lock check and before the password is hashed, and refunded
//! if the password was right: concurrent guesses cannot all slip past the lock. Failures are
//! forgotten 15 minutes after the last one, and on success for the account key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How failures of one kind of key are punished.
#[derive(Debug, Clone, Copy)]
pub struct FailurePolicy {
    /// Failures allowed before waits start.
    pub free_attempts: u32,
    /// Failures after which the key is locked for [`FailurePolicy::lockout`].
    pub lock_after: u32,
    /// Longest progressive wait.
    pub max_wait: Duration,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// Failures older than this (since the last one) are forgotten.
    pub forget_after: Duration,
}

impl FailurePolicy {
    /// Per account: 5 free attempts, locked for an hour at 20.
    pub const ACCOUNT: Self = Self {
        free_attempts: 5,
        lock_after: 20,
        max_wait: Duration::from_secs(15 * 60),
        lockout: Duration::from_secs(3600),
        forget_after: Duration::from_secs(15 * 60),
    };
    /// Per client address (many accounts): 20 free attempts, locked for an hour at 100.
    pub const ADDRESS: Self = Self {
        free_attempts: 20,
        lock_after: 100,
        max_wait: Duration::from_secs(15 * 60),
        lockout: Duration::from_secs(3600),
        forget_after: Duration::from_secs(15 * 60),
    };

    fn wait_after(&self, failures: u32) -> Option<Duration> {
        if failures >= self.lock_after {
            return Some(self.lockout);
        }
        let over = failures.checked_sub(self.free_attempts + 1)?;
        let secs = 1u64.checked_shl(over).unwrap_or(u64::MAX);
        Some(Duration::from_secs(secs).min(self.max_wait))
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Counts consecutive failures per key; bounded in memory.
#[derive(Debug)]
pub struct FailureLimiter {
    policy: FailurePolicy,
    entries: Mutex<HashMap<String, Failures>>,
}

/// Most keys tracked before stale ones are dropped.
const MAX_KEYS: usize = 100_000;

impl FailureLimiter {
    /// A limiter with `policy`.
    pub fn new(policy: FailurePolicy) -> Self {
        Self {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        match self.entries.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn locked(
        entries: &HashMap<String, Failures>,
        key: &str,
        now: Instant,
    ) -> Result<(), Duration> {
        match entries.get(key).and_then(|f| f.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Claims an attempt of `key`: refused with the wait while it is locked, else counted as a
    /// failure at once (under the same lock), so that only the attempts the policy allows run
    /// at all, however many arrive together. [`FailureLimiter::refund`] or
    /// [`FailureLimiter::succeeded`] takes the count back when the attempt succeeds.
    pub fn claim(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut entries = self.entries();
        Self::locked(&entries, key, now)?;
        self.count_failure(&mut entries, key, now);
        Ok(())
    }

    /// Gives back one claimed attempt of `key` that turned out not to be a failure.
    pub fn refund(&self, key: &str) {
        let mut entries = self.entries();
        if let Some(entry) = entries.get_mut(key) {
            entry.count = entry.count.saturating_sub(1);
            entry.locked_until = self
                .policy
                .wait_after(entry.count)
                .map(|wait| entry.last + wait);
        }
    }

    /// Counts a failure of `key`; the wait it now has, if any, starts now.
    fn count_failure(&self, entries: &mut HashMap<String, Failures>, key: &str, now: Instant) {
        if entries.len() >= MAX_KEYS {
            let forget = self.policy.forget_after;
            entries.retain(|_, f| now.duration_since(f.last) < forget);
        }
        let entry = entries.entry(key.to_owned()).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if now.duration_since(entry.last) >= self.policy.forget_after {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        entry.locked_until = self.policy.wait_after(entry.count).map(|w| now + w);
    }

    /// Forgets `key`'s failures (a successful login of that account).
    pub fn succeeded(&self, key: &str) {
        self.entries().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_then_lock_before_one_hundred() {
        let policy = FailurePolicy::ACCOUNT;
        assert_eq!(policy.wait_after(5), None);
        assert_eq!(policy.wait_after(6), Some(Duration::from_secs(1)));
        assert_eq!(policy.wait_after(7), Some(Duration::from_secs(2)));
        assert_eq!(policy.wait_after(16), Some(Duration::from_secs(900)));
        assert_eq!(policy.wait_after(20), Some(Duration::from_secs(3600)));
        assert!(FailurePolicy::ADDRESS.wait_after(100).is_some());
        assert_eq!(FailurePolicy::ADDRESS.wait_after(20), None);
    }

    #[test]
    fn a_locked_key_is_refused_and_success_clears_it() {
        let limiter = FailureLimiter::new(FailurePolicy {
            free_attempts: 2,
            ..FailurePolicy::ACCOUNT
        });
        assert!(limiter.claim("a").is_ok());
        assert!(limiter.claim("a").is_ok());
        assert!(limiter.claim("a").is_ok());
        assert!(limiter.claim("a").is_err());
        assert!(limiter.claim("b").is_ok());
        limiter.succeeded("a");
        assert!(limiter.claim("a").is_ok());
    }

    #[test]
    fn claims_count_before_the_check_and_refunds_give_them_back() {
        let limiter = FailureLimiter::new(FailurePolicy {
            free_attempts: 2,
            ..FailurePolicy::ACCOUNT
        });
        // Claims made together, before any outcome is known: the third sets a wait and
        // every later one is refused.
        assert!(limiter.claim("a").is_ok());
        assert!(limiter.claim("a").is_ok());
        assert!(limiter.claim("a").is_ok());
        assert!(limiter.claim("a").is_err());
        assert!(limiter.claim("a").is_err());
        // A claim that succeeded is refunded, and lifts the wait it caused.
        limiter.refund("a");
        assert!(limiter.claim("a").is_ok());
        assert!(limiter.claim("b").is_ok());
        limiter.refund("b");
        assert!(limiter.claim("b").is_ok());
        assert!(limiter.claim("b").is_ok());
        assert!(limiter.claim("b").is_ok(), "refunded claims do not count");
    }
}

/// Per-credential request budget: a token bucket refilled at `rate` per second holding up to
/// `burst`. Exists so one leaked or runaway token cannot monopolise the API.
#[derive(Debug)]
pub struct RequestBudget {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RequestBudget {
    /// `rate` requests per second sustained, bursts of `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one request of `key`'s budget, or says how long until one is available.
    pub fn spend(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = match self.buckets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() >= MAX_KEYS {
            let burst_time = self.burst / self.rate;
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs_f64() < burst_time);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        let refilled =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.rate))
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn bursts_then_refuses_then_refills() {
        let budget = RequestBudget::new(10, 3);
        for _ in 0..3 {
            assert!(budget.spend("t").is_ok());
        }
        let wait = budget.spend("t").unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(budget.spend("other").is_ok(), "budgets are per key");
        std::thread::sleep(Duration::from_millis(120));
        assert!(budget.spend("t").is_ok());
    }
}

/// Slots held per user, each given back when its claim is dropped: bounds what one user can
/// hold open at once (log follow streams; source uploads still arriving, which the deploy
/// quota cannot count until they are on disk).
#[derive(Debug, Default)]
pub struct PerUserSlots {
    by_user: Mutex<HashMap<uuid::Uuid, u32>>,
}

impl PerUserSlots {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<uuid::Uuid, u32>> {
        self.by_user
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claims one slot for `user` when fewer than `limit` of theirs are held.
    pub fn claim(self: &Arc<Self>, user: uuid::Uuid, limit: u32) -> Option<SlotClaim> {
        let mut counts = self.counts();
        let count = counts.entry(user).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(SlotClaim {
            slots: Arc::clone(self),
            user,
        })
    }
}

/// One held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct SlotClaim {
    slots: Arc<PerUserSlots>,
    user: uuid::Uuid,
}

impl Drop for SlotClaim {
    fn drop(&mut self) {
        let mut counts = self.slots.counts();
        if let Some(count) = counts.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.user);
            }
        }
    }
}
