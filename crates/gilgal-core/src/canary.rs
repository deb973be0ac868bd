//! Canary analysis as values: the steps a canary walks, the policy it is judged by, and the
//! verdict on one window of figures.
//!
//! A canary is always judged against the live ("stable") release **over the same window**, so
//! a slow afternoon or a burst of bad requests hitting both does not fail (or pass) it. The
//! thresholds are absolute (a ceiling no release may pass) and relative to stable (how much
//! worse than what serves now is allowed). Too little traffic never halts a canary forever:
//! past its deadline the stated [`NoTraffic`] policy applies.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One step of a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// Send this percentage (1–100) of new requests to the canary, then judge it.
    Weight(u32),
    /// Keep the current weight until someone promotes (manual approval).
    Pause,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Weight(w) => write!(f, "{w}"),
            Step::Pause => f.write_str("pause"),
        }
    }
}

/// Steps written as text that make no canary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSteps(String);

/// Most steps a canary may have.
pub const MAX_STEPS: usize = 20;

/// Parses `10,25,pause,50,100`: percentages strictly rising, ending at 100, with optional
/// `pause` steps between them (not first: a canary with no traffic has nothing to approve).
pub fn parse_steps(text: &str) -> Result<Vec<Step>, InvalidSteps> {
    let mut steps = Vec::new();
    let mut last = 0;
    for part in text.split(',').map(str::trim) {
        let step = if part.eq_ignore_ascii_case("pause") {
            if last == 0 {
                return Err(InvalidSteps(
                    "a canary cannot start with pause: give it a percentage first (e.g. 10,pause,100)".into(),
                ));
            }
            Step::Pause
        } else {
            let weight: u32 = part.trim_end_matches('%').parse().map_err(|_| {
                InvalidSteps(format!(
                    "{part:?} is not a percentage or `pause` (steps look like 10,25,50,100)"
                ))
            })?;
            if weight == 0 || weight > 100 {
                return Err(InvalidSteps(format!(
                    "{weight}: each step is a percentage from 1 to 100"
                )));
            }
            if weight <= last {
                return Err(InvalidSteps(format!(
                    "{weight} after {last}: percentages must rise step by step"
                )));
            }
            last = weight;
            Step::Weight(weight)
        };
        steps.push(step);
    }
    if last != 100 {
        return Err(InvalidSteps(
            "the last percentage must be 100 (the canary then becomes the live release)".into(),
        ));
    }
    if steps.len() > MAX_STEPS {
        return Err(InvalidSteps(format!("at most {MAX_STEPS} steps")));
    }
    Ok(steps)
}

/// Writes steps back as text (`10,25,pause,100`).
pub fn steps_text(steps: &[Step]) -> String {
    steps
        .iter()
        .map(Step::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// What happens when a step's window never gets enough canary requests by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NoTraffic {
    /// Roll back: nothing proves the canary good (the default).
    #[default]
    Rollback,
    /// Go on to the next step as if it had passed (for apps with little traffic).
    Proceed,
}

impl NoTraffic {
    /// `rollback` or `proceed`.
    pub fn as_str(self) -> &'static str {
        match self {
            NoTraffic::Rollback => "rollback",
            NoTraffic::Proceed => "proceed",
        }
    }

    /// Parses `rollback` or `proceed`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "rollback" => Some(NoTraffic::Rollback),
            "proceed" => Some(NoTraffic::Proceed),
            _ => None,
        }
    }
}

/// How a canary walks and is judged; [`Policy::default`] holds the documented defaults.
/// Serialisable so a restarted server resumes a canary with the policy it started with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The steps, ending at 100 %.
    pub steps: Vec<Step>,
    /// How long each percentage is held (and judged) before the next one.
    pub interval: Duration,
    /// Canary requests a window needs before it can pass (and before it can fail on rates).
    pub min_requests: u64,
    /// How long past `interval` a step waits for `min_requests` before [`Policy::no_traffic`].
    pub traffic_deadline: Duration,
    /// What happens at that deadline.
    pub no_traffic: NoTraffic,
    /// Pin each client to the release it first got (a cookie), so users do not flip.
    pub sticky: bool,
    /// Ceiling on the canary's share of 5xx answers, whatever stable does.
    pub max_error_rate: f64,
    /// How much higher than stable's the canary's 5xx share may be (0.01 = one point).
    pub max_error_rate_increase: f64,
    /// How many times stable's p99 the canary's p99 may be…
    pub max_p99_ratio: f64,
    /// …once it is above this floor (below it, bucket-sized differences are noise).
    pub p99_floor: Duration,
    /// Ceiling on the canary's p99, whatever stable does (none by default).
    pub max_p99: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            steps: vec![
                Step::Weight(10),
                Step::Weight(25),
                Step::Weight(50),
                Step::Weight(100),
            ],
            interval: Duration::from_secs(60),
            min_requests: 100,
            traffic_deadline: Duration::from_secs(5 * 60),
            no_traffic: NoTraffic::Rollback,
            sticky: false,
            max_error_rate: 0.05,
            max_error_rate_increase: 0.01,
            max_p99_ratio: 2.0,
            p99_floor: Duration::from_millis(100),
            max_p99: None,
        }
    }
}

/// One release's answers over a window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Figures {
    /// Requests answered.
    pub requests: u64,
    /// 5xx answers among them (including the edge's 502/504 for the release).
    pub errors: u64,
    /// 99th-percentile latency (upper bound of its histogram bucket), when any request.
    pub p99: Option<Duration>,
}

impl Figures {
    /// Share of 5xx answers (0 with no request).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The verdict on one window.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Within every threshold with enough requests.
    Pass,
    /// Too few canary requests to say anything yet.
    NotEnoughTraffic,
    /// A threshold broke: the figures that failed, in words.
    Fail(String),
}

fn percent(rate: f64) -> String {
    format!("{:.1} %", rate * 100.0)
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// Judges the canary's window against stable's window over the same period.
pub fn judge(canary: &Figures, stable: &Figures, policy: &Policy) -> Verdict {
    if canary.requests < policy.min_requests.max(1) {
        return Verdict::NotEnoughTraffic;
    }
    let (canary_rate, stable_rate) = (canary.error_rate(), stable.error_rate());
    let counts = format!(
        "{} of {} canary requests answered 5xx ({}), stable {} of {} ({})",
        canary.errors,
        canary.requests,
        percent(canary_rate),
        stable.errors,
        stable.requests,
        percent(stable_rate)
    );
    if canary_rate > policy.max_error_rate {
        return Verdict::Fail(format!(
            "{counts}: above the {} ceiling",
            percent(policy.max_error_rate)
        ));
    }
    // Stable is a yardstick only with enough requests of its own (at 100 % it has none).
    let stable_measured = stable.requests >= policy.min_requests.max(1);
    if stable_measured && canary_rate > stable_rate + policy.max_error_rate_increase {
        return Verdict::Fail(format!(
            "{counts}: more than {:.1} points above stable",
            policy.max_error_rate_increase * 100.0
        ));
    }
    if let Some(p99) = canary.p99 {
        if let Some(ceiling) = policy.max_p99 {
            if p99 > ceiling {
                return Verdict::Fail(format!(
                    "canary p99 {} is above the {} ceiling",
                    millis(p99),
                    millis(ceiling)
                ));
            }
        }
        if let Some(stable_p99) = stable.p99.filter(|_| stable_measured) {
            if p99 > policy.p99_floor
                && p99.as_secs_f64() > stable_p99.as_secs_f64() * policy.max_p99_ratio
            {
                return Verdict::Fail(format!(
                    "canary p99 {} is more than {}× stable's {}",
                    millis(p99),
                    policy.max_p99_ratio,
                    millis(stable_p99)
                ));
            }
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(requests: u64, errors: u64, p99_ms: u64) -> Figures {
        Figures {
            requests,
            errors,
            p99: Some(Duration::from_millis(p99_ms)),
        }
    }

    #[test]
    fn steps_parse_and_refuse_what_makes_no_canary() {
        assert_eq!(
            parse_steps("10, 25,pause,50%,100").unwrap(),
            vec![
                Step::Weight(10),
                Step::Weight(25),
                Step::Pause,
                Step::Weight(50),
                Step::Weight(100)
            ]
        );
        assert_eq!(
            steps_text(&parse_steps("5,pause,100").unwrap()),
            "5,pause,100"
        );
        for (bad, says) in [
            ("", "not a percentage"),
            ("10,25", "must be 100"),
            ("pause,100", "cannot start with pause"),
            ("50,25,100", "must rise"),
            ("0,100", "from 1 to 100"),
            ("10,abc,100", "not a percentage"),
            ("10,101", "from 1 to 100"),
        ] {
            let error = parse_steps(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
        let many = (1..=21)
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join(",")
            + ",100";
        assert!(parse_steps(&many).is_err());
    }

    #[test]
    fn too_few_requests_say_nothing() {
        let policy = Policy::default();
        assert_eq!(
            judge(&figures(99, 99, 5000), &figures(1000, 0, 10), &policy),
            Verdict::NotEnoughTraffic
        );
    }

    #[test]
    fn error_rates_fail_against_stable_and_against_the_ceiling() {
        let policy = Policy::default();
        // 5 % of 5xx while stable has none: more than one point above stable.
        let Verdict::Fail(why) = judge(&figures(200, 10, 10), &figures(1800, 0, 10), &policy)
        else {
            panic!("a 5 % canary against a clean stable fails");
        };
        assert!(why.contains("10 of 200") && why.contains("5.0 %"), "{why}");
        // Both equally bad (a dependency is down): not the canary's fault…
        assert_eq!(
            judge(&figures(200, 4, 10), &figures(1800, 36, 10), &policy),
            Verdict::Pass
        );
        // …unless above the ceiling no release may pass.
        assert!(matches!(
            judge(&figures(200, 12, 10), &figures(1800, 108, 10), &policy),
            Verdict::Fail(why) if why.contains("ceiling")
        ));
        // At 100 % stable gets (almost) nothing: its 0 % is no yardstick, the ceiling is.
        assert_eq!(
            judge(&figures(1000, 20, 10), &figures(3, 0, 10), &policy),
            Verdict::Pass
        );
    }

    #[test]
    fn latency_fails_relative_to_stable_above_a_floor() {
        let policy = Policy::default();
        assert!(matches!(
            judge(&figures(200, 0, 500), &figures(1800, 0, 100), &policy),
            Verdict::Fail(why) if why.contains("p99 500 ms")
        ));
        // Fast apps: 5 ms against 1 ms is below the floor, not a regression worth a rollback.
        assert_eq!(
            judge(&figures(200, 0, 5), &figures(1800, 0, 1), &policy),
            Verdict::Pass
        );
        // With too little stable traffic, stable's p99 is not a yardstick.
        assert_eq!(
            judge(&figures(200, 0, 500), &figures(10, 0, 100), &policy),
            Verdict::Pass
        );
        let strict = Policy {
            max_p99: Some(Duration::from_millis(250)),
            ..Policy::default()
        };
        assert!(matches!(
            judge(&figures(200, 0, 500), &figures(10, 0, 500), &strict),
            Verdict::Fail(why) if why.contains("ceiling")
        ));
    }
}
