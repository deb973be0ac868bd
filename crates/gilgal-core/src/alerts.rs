//! Alert rules as values: the five kinds every environment has (with defaults a user can
//! override), their validation, and the arithmetic that decides whether a rule is breached and
//! for how long (rates over a window of cumulative counters, interpolated histogram quantiles,
//! the "for" pending period). No IO: the deployer samples the signals and keeps incidents.

use std::fmt;

/// What a rule watches. Every environment has one rule of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    /// Share of answered requests that were 5xx, over a window, above `threshold` (a
    /// fraction: 0.01 = 1 %) for `for_seconds`.
    ErrorRate,
    /// 95th percentile of request latency (seconds) above `threshold` for `for_seconds`.
    LatencyP95,
    /// A web instance failed its health check `threshold` times in a row. (An instance is
    /// replaced when it reaches its release's failure threshold, 3 unless `gilgal.toml` says
    /// otherwise, so a higher `threshold` fires only for releases that wait longer.)
    HealthCheck,
    /// At least `threshold` crashes (exits, OOM kills, failed starts) within the last
    /// `for_seconds`.
    CrashLoop,
    /// The latest backup of an add-on failed (resolved by the next one that succeeds).
    BackupFailed,
}

impl AlertKind {
    /// Every kind, in the order they are listed.
    pub const ALL: [AlertKind; 5] = [
        AlertKind::ErrorRate,
        AlertKind::LatencyP95,
        AlertKind::HealthCheck,
        AlertKind::CrashLoop,
        AlertKind::BackupFailed,
    ];

    /// The name used in the API, the store and notifications.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::ErrorRate => "error_rate",
            AlertKind::LatencyP95 => "latency_p95",
            AlertKind::HealthCheck => "health_check",
            AlertKind::CrashLoop => "crash_loop",
            AlertKind::BackupFailed => "backup_failed",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The rule an environment has until someone changes it: error rate > 1 % for 5 min,
    /// p95 > 500 ms for 10 min, health check failing 3 times, 3 crashes in 5 min, a failed
    /// backup.
    pub fn default_rule(self) -> AlertRule {
        let (threshold, for_seconds) = match self {
            AlertKind::ErrorRate => (0.01, 300),
            AlertKind::LatencyP95 => (0.5, 600),
            AlertKind::HealthCheck => (3.0, 0),
            AlertKind::CrashLoop => (3.0, 300),
            AlertKind::BackupFailed => (1.0, 0),
        };
        AlertRule {
            kind: self,
            threshold,
            for_seconds,
            enabled: true,
        }
    }

    /// What the rule's condition is, for people ("error rate > 1 % for 5 min").
    pub fn condition(self, threshold: f64, for_seconds: u64) -> String {
        let lasting = if for_seconds == 0 {
            String::new()
        } else {
            format!(" for {}", human_duration(for_seconds))
        };
        match self {
            AlertKind::ErrorRate => format!("error rate > {}{lasting}", percent(threshold)),
            AlertKind::LatencyP95 => format!("p95 latency > {}{lasting}", seconds(threshold)),
            AlertKind::HealthCheck => {
                format!("health check failing {} times in a row", threshold as u64)
            }
            AlertKind::CrashLoop => format!(
                "{} crashes within {}",
                threshold as u64,
                human_duration(for_seconds.max(1))
            ),
            AlertKind::BackupFailed => "an add-on's latest backup failed".to_owned(),
        }
    }

    /// A measured value in the rule's unit, for people.
    pub fn format_value(self, value: f64) -> String {
        match self {
            AlertKind::ErrorRate => percent(value),
            AlertKind::LatencyP95 => seconds(value),
            AlertKind::HealthCheck => format!("{} failures in a row", value as u64),
            AlertKind::CrashLoop => format!("{} crashes", value as u64),
            AlertKind::BackupFailed => format!("{} add-on(s) with a failed backup", value as u64),
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0} %")
    } else {
        format!("{p:.2} %")
    }
}

fn seconds(value: f64) -> String {
    if value < 1.0 {
        format!("{:.0} ms", value * 1000.0)
    } else {
        format!("{value:.2} s")
    }
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// One rule of an environment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertRule {
    /// What it watches.
    pub kind: AlertKind,
    /// The bound the signal must pass (unit by kind: fraction, seconds, count).
    pub threshold: f64,
    /// How long the condition must hold before the alert fires (error rate, latency), or
    /// the window crashes are counted in (crash loop); unused by the others.
    pub for_seconds: u64,
    /// A disabled rule never fires (and resolves what it had fired).
    pub enabled: bool,
}

/// Why a rule cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRule(pub String);

/// The longest `for_seconds` accepted (a week).
pub const MAX_FOR_SECONDS: u64 = 7 * 24 * 3600;

impl AlertRule {
    /// Checks the threshold is meaningful for the kind and the period is bounded.
    pub fn validate(&self) -> Result<(), InvalidRule> {
        let t = self.threshold;
        if !t.is_finite() {
            return Err(InvalidRule("threshold must be a finite number".into()));
        }
        if self.for_seconds > MAX_FOR_SECONDS {
            return Err(InvalidRule(format!(
                "for_seconds must be at most {MAX_FOR_SECONDS} (a week)"
            )));
        }
        let whole = |lo: f64, hi: f64, what: &str| {
            if t.fract() != 0.0 || t < lo || t > hi {
                Err(InvalidRule(format!(
                    "threshold of {} is {what}: a whole number from {lo} to {hi}",
                    self.kind
                )))
            } else {
                Ok(())
            }
        };
        match self.kind {
            AlertKind::ErrorRate if t <= 0.0 || t >= 1.0 => Err(InvalidRule(
                "threshold of error_rate is a fraction above 0 and below 1 (0.01 = 1 %)".into(),
            )),
            AlertKind::LatencyP95 if t <= 0.0 || t > 3600.0 => Err(InvalidRule(
                "threshold of latency_p95 is in seconds, above 0 and at most 3600".into(),
            )),
            AlertKind::HealthCheck => whole(1.0, 100.0, "consecutive failures"),
            AlertKind::CrashLoop => {
                whole(1.0, 1000.0, "crashes")?;
                if self.for_seconds == 0 {
                    return Err(InvalidRule(
                        "for_seconds of crash_loop is the window crashes are counted in; it must be at least 1".into(),
                    ));
                }
                Ok(())
            }
            AlertKind::BackupFailed if t != 1.0 => Err(InvalidRule(
                "backup_failed has no threshold to set (it is 1: the latest backup failed)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Whether `value` breaches the rule.
    pub fn breached_by(&self, value: f64) -> bool {
        match self.kind {
            AlertKind::ErrorRate | AlertKind::LatencyP95 => value > self.threshold,
            AlertKind::HealthCheck | AlertKind::CrashLoop | AlertKind::BackupFailed => {
                value >= self.threshold
            }
        }
    }

    /// How long the breach must last before firing, in milliseconds (only the traffic rules
    /// wait; the others count within their own window or fire at once).
    pub fn pending_millis(&self) -> u64 {
        match self.kind {
            AlertKind::ErrorRate | AlertKind::LatencyP95 => self.for_seconds.saturating_mul(1000),
            _ => 0,
        }
    }
}

/// Where a rule is between evaluations: since when its condition has held (Prometheus'
/// "pending").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingState {
    breached_since: Option<u64>,
}

impl PendingState {
    /// Feeds one evaluation at `now_ms`: `Some(true)` breached, `Some(false)` fine, `None`
    /// nothing to measure (no traffic: counts as fine). Returns whether the rule should be
    /// firing now: breached continuously for at least `pending_ms`.
    pub fn observe(&mut self, now_ms: u64, breached: Option<bool>, pending_ms: u64) -> bool {
        if breached == Some(true) {
            let since = *self.breached_since.get_or_insert(now_ms);
            now_ms.saturating_sub(since) >= pending_ms
        } else {
            self.breached_since = None;
            false
        }
    }
}

/// Cumulative request counters of one route at one moment (as the proxy reports them).
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficSample {
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// Responses by status class, 1xx..5xx.
    pub status_classes: [u64; 5],
    /// Non-cumulative latency bucket counts; the last is `+Inf`.
    pub latency_buckets: Vec<u64>,
}

/// Traffic between two samples.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficDelta {
    /// Answered requests.
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// Latency bucket counts.
    pub latency_buckets: Vec<u64>,
}

impl TrafficDelta {
    /// 5xx share, `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// A short history of one route's counters, enough to compute rates over a window.
#[derive(Debug, Clone, Default)]
pub struct TrafficHistory {
    samples: std::collections::VecDeque<TrafficSample>,
}

impl TrafficHistory {
    /// Adds the newest sample and forgets those older than `keep_ms` before it (but always
    /// one at or before that edge, so a window of `keep_ms` can be measured). Counters that
    /// went down (the server restarted) start the history over.
    pub fn push(&mut self, sample: TrafficSample, keep_ms: u64) {
        if let Some(last) = self.samples.back() {
            let reset = last.at_ms > sample.at_ms
                || last
                    .status_classes
                    .iter()
                    .zip(&sample.status_classes)
                    .any(|(a, b)| b < a);
            if reset {
                self.samples.clear();
            }
        }
        let edge = sample.at_ms.saturating_sub(keep_ms);
        self.samples.push_back(sample);
        while self.samples.len() > 2 && self.samples.get(1).is_some_and(|s| s.at_ms <= edge) {
            self.samples.pop_front();
        }
    }

    /// Whether the samples kept reach back `window_ms` from the newest (after a restart they
    /// do not yet, and a rate over them would say little).
    pub fn spans(&self, window_ms: u64) -> bool {
        match (self.samples.front(), self.samples.back()) {
            (Some(oldest), Some(newest)) => {
                self.samples.len() > 1 && oldest.at_ms <= newest.at_ms.saturating_sub(window_ms)
            }
            _ => false,
        }
    }

    /// Traffic over (about) the last `window_ms`: from the newest sample at or before the
    /// window's start (or the oldest one kept) to the newest. `None` with fewer than two.
    pub fn over(&self, window_ms: u64) -> Option<TrafficDelta> {
        let newest = self.samples.back()?;
        let edge = newest.at_ms.saturating_sub(window_ms);
        let start = self
            .samples
            .iter()
            .rev()
            .find(|s| s.at_ms <= edge)
            .or_else(|| self.samples.front())?;
        if std::ptr::eq(start, newest) {
            return None;
        }
        let requests = newest
            .status_classes
            .iter()
            .sum::<u64>()
            .saturating_sub(start.status_classes.iter().sum());
        Some(TrafficDelta {
            requests,
            errors: newest.status_classes[4].saturating_sub(start.status_classes[4]),
            latency_buckets: newest
                .latency_buckets
                .iter()
                .zip(start.latency_buckets.iter().chain(std::iter::repeat(&0)))
                .map(|(n, s)| n.saturating_sub(*s))
                .collect(),
        })
    }
}

/// The `q` quantile (0..=1) of a histogram given as non-cumulative `counts` over upper
/// `bounds` (one more count than bounds: `+Inf`), interpolated linearly inside the bucket
/// as Prometheus' `histogram_quantile` does; the highest finite bound when it falls in
/// `+Inf`. `None` for an empty histogram.
pub fn histogram_quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let into = (rank - below as f64).max(0.0) / n as f64;
            return Some(lower + (upper - lower) * into);
        }
        below += n;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, ok: u64, errors: u64, buckets: &[u64]) -> TrafficSample {
        TrafficSample {
            at_ms,
            status_classes: [0, ok, 0, 0, errors],
            latency_buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn kinds_round_trip_and_defaults_are_the_documented_ones() {
        for kind in AlertKind::ALL {
            assert_eq!(AlertKind::parse(kind.as_str()), Some(kind));
            assert!(kind.default_rule().validate().is_ok(), "{kind}");
        }
        assert_eq!(AlertKind::parse("cpu"), None);
        assert_eq!(
            AlertKind::ErrorRate.condition(0.01, 300),
            "error rate > 1 % for 5 min"
        );
        assert_eq!(
            AlertKind::LatencyP95.condition(0.5, 600),
            "p95 latency > 500 ms for 10 min"
        );
        assert_eq!(
            AlertKind::HealthCheck.condition(3.0, 0),
            "health check failing 3 times in a row"
        );
        assert_eq!(
            AlertKind::CrashLoop.condition(3.0, 300),
            "3 crashes within 5 min"
        );
    }

    #[test]
    fn thresholds_are_checked_per_kind() {
        let rule = |kind: AlertKind, threshold: f64, for_seconds: u64| AlertRule {
            kind,
            threshold,
            for_seconds,
            enabled: true,
        };
        for bad in [
            rule(AlertKind::ErrorRate, 0.0, 60),
            rule(AlertKind::ErrorRate, 1.0, 60),
            rule(AlertKind::ErrorRate, f64::NAN, 60),
            rule(AlertKind::LatencyP95, -1.0, 60),
            rule(AlertKind::HealthCheck, 2.5, 0),
            rule(AlertKind::HealthCheck, 0.0, 0),
            rule(AlertKind::CrashLoop, 3.0, 0),
            rule(AlertKind::BackupFailed, 2.0, 0),
            rule(AlertKind::ErrorRate, 0.05, MAX_FOR_SECONDS + 1),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(rule(AlertKind::ErrorRate, 0.05, 0).validate().is_ok());
        assert!(rule(AlertKind::CrashLoop, 5.0, 60).validate().is_ok());
    }

    #[test]
    fn a_breach_fires_only_after_it_lasted_the_pending_period() {
        let mut state = PendingState::default();
        assert!(!state.observe(0, Some(true), 5_000));
        assert!(!state.observe(4_999, Some(true), 5_000));
        assert!(state.observe(5_000, Some(true), 5_000));
        // One good evaluation starts the wait over; no traffic counts as good.
        assert!(!state.observe(6_000, None, 5_000));
        assert!(!state.observe(7_000, Some(true), 5_000));
        assert!(!state.observe(11_999, Some(true), 5_000));
        assert!(state.observe(12_000, Some(true), 5_000));
        assert!(!state.observe(13_000, Some(false), 5_000));
        // Without a pending period the first breach fires.
        assert!(PendingState::default().observe(1, Some(true), 0));
    }

    #[test]
    fn rates_come_from_the_window_and_restarts_start_over() {
        let mut history = TrafficHistory::default();
        history.push(sample(0, 100, 0, &[100, 0]), 10_000);
        assert_eq!(history.over(10_000), None, "one sample measures nothing");
        history.push(sample(5_000, 150, 50, &[120, 30]), 10_000);
        history.push(sample(10_000, 190, 60, &[170, 30]), 10_000);
        let all = history.over(10_000).unwrap();
        assert_eq!((all.requests, all.errors), (150, 60));
        assert_eq!(all.latency_buckets, vec![70, 30]);
        assert_eq!(all.error_rate(), Some(0.4));
        assert!(history.spans(10_000) && history.spans(5_000));
        assert!(!TrafficHistory::default().spans(1));
        let last = history.over(5_000).unwrap();
        assert_eq!((last.requests, last.errors), (50, 10));
        // Old samples are forgotten but one at the window's edge stays.
        history.push(sample(20_000, 200, 60, &[180, 30]), 10_000);
        let w = history.over(10_000).unwrap();
        assert_eq!((w.requests, w.errors), (10, 0));
        assert_eq!(w.error_rate(), Some(0.0));
        // A restarted server reports smaller counters: no negative deltas.
        history.push(sample(25_000, 3, 1, &[4, 0]), 10_000);
        assert_eq!(history.over(10_000), None);
        assert!(!history.spans(1), "a restart starts the history over");
        history.push(sample(26_000, 5, 1, &[6, 0]), 10_000);
        assert_eq!(history.over(10_000).unwrap().requests, 2);
    }

    #[test]
    fn quantiles_are_interpolated_inside_their_bucket() {
        let bounds = [0.1, 0.5, 1.0];
        // 90 fast, 10 in (0.5, 1.0].
        let counts = [90, 0, 10, 0];
        let p95 = histogram_quantile(&bounds, &counts, 0.95).unwrap();
        assert!((p95 - 0.75).abs() < 1e-9, "{p95}");
        let p50 = histogram_quantile(&bounds, &counts, 0.5).unwrap();
        assert!(p50 > 0.0 && p50 <= 0.1, "{p50}");
        assert_eq!(histogram_quantile(&bounds, &[0, 0, 0, 5], 0.5), Some(1.0));
        assert_eq!(histogram_quantile(&bounds, &[0; 4], 0.5), None);
        let rule = AlertKind::LatencyP95.default_rule();
        assert!(rule.breached_by(p95));
        assert!(!rule.breached_by(0.5));
    }
}
