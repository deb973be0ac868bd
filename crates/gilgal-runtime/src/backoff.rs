//! Restart backoff for crashed instances: 1 s doubling to a 5 min cap, reset once an instance
//! has stayed up for 10 min. The numbers are fields so tests (and operators) can shrink them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long to wait before restarting a crashed instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackoffPolicy {
    /// Delay before the first restart.
    pub base: Duration,
    /// Largest delay; doubling stops here.
    pub cap: Duration,
    /// A process that ran at least this long before dying counts as having been healthy, and
    /// the next restart starts again from `base`.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl BackoffPolicy {
    /// Delay for the restart after `consecutive_failures` earlier quick failures (0-based).
    pub fn delay(&self, consecutive_failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(consecutive_failures.min(31))
            .unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |delay| delay.min(self.cap))
    }
}

/// Per-instance backoff bookkeeping driven by the supervisor.
#[derive(Debug, Clone, Default)]
pub struct BackoffState {
    consecutive_failures: u32,
}

impl BackoffState {
    /// Records an exit after `uptime` and returns the delay before the next start.
    ///
    /// `uptime` of `None` (unknown, e.g. an adopted process) does not reset the counter.
    pub fn next_delay(&mut self, policy: &BackoffPolicy, uptime: Option<Duration>) -> Duration {
        if uptime.is_some_and(|up| up >= policy.reset_after) {
            self.consecutive_failures = 0;
        }
        let delay = policy.delay(self.consecutive_failures);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_cap_and_resets_after_healthy_run() {
        let policy = BackoffPolicy::default();
        let mut state = BackoffState::default();
        let quick = Some(Duration::from_secs(2));
        let delays: Vec<u64> = (0..12)
            .map(|_| state.next_delay(&policy, quick).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        let after_healthy = state.next_delay(&policy, Some(Duration::from_secs(601)));
        assert_eq!(after_healthy, Duration::from_secs(1));
        assert_eq!(state.next_delay(&policy, quick), Duration::from_secs(2));
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let policy = BackoffPolicy::default();
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(300));
        assert_eq!(policy.delay(40), Duration::from_secs(300));
    }
}
