//! The deployment lifecycle as an explicit state machine.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a deployment is. Every transition is recorded with a timestamp by the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Accepted, waiting for a builder.
    Pending,
    /// Source is being unpacked and built.
    Building,
    /// The release phase (e.g. migrations) runs from the new build.
    Releasing,
    /// New instances are starting and being health-checked.
    Starting,
    /// Every new instance passed its health check; traffic has not moved yet.
    Healthy,
    /// A share of the traffic goes to the new release while its figures are compared with
    /// the live one's (a canary); it ends live, or failed with the live release untouched.
    Canary,
    /// The proxy sends traffic to this release.
    Live,
    /// A newer release took over; in-flight requests are finishing.
    Draining,
    /// Its instances are stopped; the release stays on disk for rollback.
    Retired,
    /// Something failed; the previous release kept serving.
    Failed,
    /// A user cancelled it; the previous release kept serving.
    Cancelled,
}

/// The longest a canary may run (most of it waiting at a `pause` step for `promote`) before
/// it is rolled back.
pub const CANARY_LONGEST: Duration = Duration::from_secs(24 * 3600);

/// All states, in lifecycle order.
pub const ALL_STATES: [DeploymentState; 11] = [
    DeploymentState::Pending,
    DeploymentState::Building,
    DeploymentState::Releasing,
    DeploymentState::Starting,
    DeploymentState::Healthy,
    DeploymentState::Canary,
    DeploymentState::Live,
    DeploymentState::Draining,
    DeploymentState::Retired,
    DeploymentState::Failed,
    DeploymentState::Cancelled,
];

/// An attempted transition the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a deployment cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// Current state.
    pub from: DeploymentState,
    /// Requested state.
    pub to: DeploymentState,
}

impl DeploymentState {
    /// The state's wire name (`pending`, `building`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Building => "building",
            Self::Releasing => "releasing",
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Canary => "canary",
            Self::Live => "live",
            Self::Draining => "draining",
            Self::Retired => "retired",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the deployment is still on its way to `Live` (can be cancelled, must time out).
    pub fn is_in_progress(self) -> bool {
        matches!(
            self,
            Self::Pending
                | Self::Building
                | Self::Releasing
                | Self::Starting
                | Self::Healthy
                | Self::Canary
        )
    }

    /// Whether nothing more will happen to it.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Retired | Self::Failed | Self::Cancelled)
    }

    /// The legal next states.
    pub fn successors(self) -> &'static [DeploymentState] {
        use DeploymentState::*;
        match self {
            // A deployment that reuses an existing artifact (redeploy, rollback, promotion, config
            // change) has nothing to build.
            Pending => &[Building, Releasing, Starting, Failed, Cancelled],
            Building => &[Releasing, Starting, Failed, Cancelled],
            Releasing => &[Starting, Failed, Cancelled],
            Starting => &[Healthy, Failed, Cancelled],
            Healthy => &[Canary, Live, Failed, Cancelled],
            Canary => &[Live, Failed, Cancelled],
            Live => &[Draining],
            Draining => &[Retired],
            Retired | Failed | Cancelled => &[],
        }
    }

    /// Checks a transition.
    pub fn transition(self, to: DeploymentState) -> Result<DeploymentState, IllegalTransition> {
        if self.successors().contains(&to) {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }

    /// The longest a deployment may stay in this state by default before it is failed (or,
    /// for `Draining`, forced to `Retired`), so nothing is stuck "in progress" forever.
    pub fn default_deadline(self) -> Option<Duration> {
        match self {
            Self::Pending => Some(Duration::from_secs(10 * 60)),
            Self::Building => Some(Duration::from_secs(30 * 60)),
            Self::Releasing => Some(Duration::from_secs(5 * 60)),
            Self::Starting => Some(Duration::from_secs(2 * 60)),
            Self::Healthy => Some(Duration::from_secs(60)),
            Self::Draining => Some(Duration::from_secs(2 * 60)),
            // A canary ends by its own analysis deadlines; one left waiting at a pause for a
            // day is rolled back.
            Self::Canary => Some(CANARY_LONGEST),
            Self::Live | Self::Retired | Self::Failed | Self::Cancelled => None,
        }
    }
}

impl fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown state name (e.g. a corrupt row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown deployment state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for DeploymentState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_STATES
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// What became of a release, recorded by the store at each transition (never inferred), so
/// `gilgal releases` can show it and the default rollback target is the last release that
/// was actually live before the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseOutcome {
    /// Recorded; its rollout has not finished yet.
    Pending,
    /// It serves the environment now.
    Live,
    /// Its rollout failed (or was cancelled): it never got traffic.
    Failed,
    /// It was live until a newer release replaced it.
    Superseded,
    /// It was live until a rollback replaced it.
    RolledBack,
}

/// All outcomes.
pub const ALL_OUTCOMES: [ReleaseOutcome; 5] = [
    ReleaseOutcome::Pending,
    ReleaseOutcome::Live,
    ReleaseOutcome::Failed,
    ReleaseOutcome::Superseded,
    ReleaseOutcome::RolledBack,
];

impl ReleaseOutcome {
    /// The outcome's wire name (`pending`, `live`, `failed`, `superseded`, `rolled_back`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Live => "live",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
            Self::RolledBack => "rolled_back",
        }
    }

    /// Whether the release served traffic at some point (a candidate to roll back to).
    pub fn was_live(self) -> bool {
        matches!(self, Self::Live | Self::Superseded | Self::RolledBack)
    }
}

impl fmt::Display for ReleaseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown outcome name (e.g. a corrupt row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown release outcome {0:?}")]
pub struct UnknownOutcome(pub String);

impl FromStr for ReleaseOutcome {
    type Err = UnknownOutcome;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_OUTCOMES
            .into_iter()
            .find(|outcome| outcome.as_str() == s)
            .ok_or_else(|| UnknownOutcome(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::DeploymentState::*;
    use super::*;

    #[test]
    fn happy_path_and_rollover_are_legal() {
        let path = [
            Pending, Building, Releasing, Starting, Healthy, Live, Draining, Retired,
        ];
        for pair in path.windows(2) {
            assert_eq!(
                pair[0].transition(pair[1]),
                Ok(pair[1]),
                "{} -> {}",
                pair[0],
                pair[1]
            );
        }
        assert_eq!(
            Building.transition(Starting),
            Ok(Starting),
            "no release phase"
        );
        for pair in [Healthy, Canary, Live].windows(2) {
            assert_eq!(pair[0].transition(pair[1]), Ok(pair[1]), "a canary");
        }
        assert!(
            Canary.transition(Healthy).is_err(),
            "a canary does not go back"
        );
    }

    #[test]
    fn terminal_states_have_no_exit_and_live_cannot_fail() {
        for state in [Retired, Failed, Cancelled] {
            assert!(state.is_terminal());
            for to in ALL_STATES {
                assert!(state.transition(to).is_err());
            }
        }
        assert_eq!(
            Live.transition(Failed),
            Err(IllegalTransition {
                from: Live,
                to: Failed
            })
        );
        assert!(
            Live.transition(Cancelled).is_err(),
            "a live release is replaced, not cancelled"
        );
        assert!(
            Pending.transition(Live).is_err(),
            "no skipping the health gate"
        );
    }

    #[test]
    fn every_in_progress_state_can_fail_be_cancelled_and_times_out() {
        for state in ALL_STATES.into_iter().filter(|s| s.is_in_progress()) {
            assert!(state.transition(Failed).is_ok());
            assert!(state.transition(Cancelled).is_ok());
            assert!(
                state.default_deadline().is_some(),
                "{state} needs a deadline"
            );
        }
        assert!(Draining.default_deadline().is_some());
    }

    #[test]
    fn names_round_trip() {
        for state in ALL_STATES {
            assert_eq!(state.as_str().parse::<DeploymentState>(), Ok(state));
        }
        assert!("bogus".parse::<DeploymentState>().is_err());
    }

    #[test]
    fn outcome_names_round_trip() {
        for outcome in ALL_OUTCOMES {
            assert_eq!(outcome.as_str().parse::<ReleaseOutcome>(), Ok(outcome));
        }
        assert!("bogus".parse::<ReleaseOutcome>().is_err());
        assert!(!ReleaseOutcome::Failed.was_live());
        assert!(ReleaseOutcome::RolledBack.was_live());
    }
}
