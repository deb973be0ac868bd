//! Deploy and build quotas per team (or per user for personal projects): a runaway CI loop or
//! script gets a refusal that says which limit it hit and when to come back, instead of
//! filling the machine with builds and rollouts.
//!
//! Every way a rollout starts (upload, git, image, webhook, config change, rollback, promote,
//! redeploy, scale, add-on attach) is checked by [`Quotas::check`], through
//! [`Platform::check_quota`](crate::Platform::check_quota), before it records anything. What counts is the team's
//! deployment records: each of those rollouts records one, except a scale that only changes
//! instance counts (see [`Changes::scale`](crate::Changes::scale)).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gilgal_store::Store;
use uuid::Uuid;

use crate::pipeline::DeploySource;
use crate::{DeployError, Platform};

/// What a change asks of the machine, which decides the quotas it is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A build (upload, git, image): checked against the hourly and the concurrent-build
    /// quota.
    Build,
    /// A rollout of an artifact that exists (config change, rollback, promote, redeploy,
    /// scale, add-on attach): it builds nothing, so only the hourly quota applies; a
    /// concurrent-build limit would refuse a config change queued behind a slow build.
    Rollout,
}

impl DeploySource {
    /// Whether deploying this source builds (see [`Work`]).
    pub fn work(&self) -> Work {
        match self {
            DeploySource::Release(_) => Work::Rollout,
            DeploySource::Upload(_) | DeploySource::Git(_) | DeploySource::Image(_) => Work::Build,
        }
    }
}

/// The limits, per team (or per user for personal projects), with production defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Deployments recorded in the last hour.
    pub deploys_per_hour: u32,
    /// Builds at once (deployments pending, building or releasing).
    pub concurrent_builds: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            deploys_per_hour: 120,
            concurrent_builds: 4,
        }
    }
}

/// A quota that refuses a change: which one, with the numbers to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// Too many deployments in the last hour.
    #[error(
        "this team made {made} deployments in the last hour (the limit is {limit}); try again later"
    )]
    DeploysPerHour {
        /// Deployments recorded in the last hour.
        made: u64,
        /// [`Quotas::deploys_per_hour`].
        limit: u32,
    },
    /// Too many builds running.
    #[error(
        "{running} builds of this team are running (the limit is {limit}); wait for one to finish"
    )]
    ConcurrentBuilds {
        /// Builds pending, building or releasing.
        running: u64,
        /// [`Quotas::concurrent_builds`].
        limit: u32,
    },
}

impl QuotaError {
    /// How long the caller should wait before trying again: a quarter of the hour's window
    /// for the hourly quota, a few seconds for a build slot.
    pub fn retry_after(&self) -> Duration {
        match self {
            QuotaError::DeploysPerHour { .. } => Duration::from_secs(15 * 60),
            QuotaError::ConcurrentBuilds { .. } => Duration::from_secs(10),
        }
    }
}

impl Quotas {
    /// Refuses `work` for `project` when its team's usage is at a limit; the one quota check
    /// every entry point goes through.
    pub async fn check(&self, store: &Store, project: Uuid, work: Work) -> Result<(), DeployError> {
        let hour_ago = SystemTime::now()
            .checked_sub(Duration::from_secs(3600))
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let (recent, building) = store.deployment_usage(project, hour_ago).await?;
        if recent >= u64::from(self.deploys_per_hour) {
            return Err(QuotaError::DeploysPerHour {
                made: recent,
                limit: self.deploys_per_hour,
            }
            .into());
        }
        if work == Work::Build && building >= u64::from(self.concurrent_builds) {
            return Err(QuotaError::ConcurrentBuilds {
                running: building,
                limit: self.concurrent_builds,
            }
            .into());
        }
        Ok(())
    }
}

impl Platform {
    /// The quotas this server enforces (the API's upload guard reuses the build limit).
    pub fn quotas(&self) -> Quotas {
        self.config.quotas
    }

    /// [`Quotas::check`] with this server's limits.
    pub async fn check_quota(&self, project: Uuid, work: Work) -> Result<(), DeployError> {
        self.config.quotas.check(&self.store, project, work).await
    }
}
