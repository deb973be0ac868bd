//! Changes to an environment's desired state, each through the environment's one ordering
//! point (its intake lock): read what the change starts from, record the change in the store
//! (config vars, the rolled-back config), and queue its rollout, all before the next change
//! may start. Rollouts then run in that order (`Deployer::enqueue`), so each starts from what
//! the previous one left and an acknowledged change is never overwritten by an earlier one.

use std::sync::Arc;

use gilgal_store::ConfigChange;
use uuid::Uuid;

use crate::config::ConfigSnapshot;
use crate::pipeline::{DeploySource, ReuseKind, ReuseRelease};
use crate::{DeployError, Deployer};

impl Deployer {
    /// Applies `changes` to the environment's config vars and, when something is live, queues
    /// a new release of the live artifact with them (`description` names the change). Returns
    /// that deployment.
    pub async fn change_config(
        self: &Arc<Self>,
        environment: Uuid,
        changes: &[ConfigChange],
        description: String,
    ) -> Result<Option<Uuid>, DeployError> {
        let intake = self.intake_lock(environment);
        let _in_order = intake.lock().await;
        self.change_config_in_order(environment, changes, description)
            .await
    }

    /// [`Deployer::change_config`] for a caller that holds the intake lock.
    pub(crate) async fn change_config_in_order(
        self: &Arc<Self>,
        environment: Uuid,
        changes: &[ConfigChange],
        description: String,
    ) -> Result<Option<Uuid>, DeployError> {
        self.store.change_config_vars(environment, changes).await?;
        let environment = self.store.environment_by_id(environment).await?;
        let Some(number) = environment.live_release else {
            return Ok(None);
        };
        let id = self
            .enqueue(
                environment.clone(),
                DeploySource::Release(ReuseRelease {
                    kind: ReuseKind::ConfigChange,
                    from_environment: environment.id,
                    number,
                    run_release_phase: false,
                    description,
                }),
            )
            .await?;
        Ok(Some(id))
    }

    /// Rolls back to release `target`, or by default to the last release that was live
    /// before the current one: queues its artifact with its config snapshot, and makes that
    /// snapshot the environment's config at once (like Heroku, the next change starts from
    /// it, and `env list` shows it as soon as this returns).
    pub async fn rollback(
        self: &Arc<Self>,
        environment: Uuid,
        target: Option<u64>,
        run_release_phase: bool,
    ) -> Result<Uuid, DeployError> {
        let intake = self.intake_lock(environment);
        let _in_order = intake.lock().await;
        let environment = self.store.environment_by_id(environment).await?;
        let Some(live) = environment.live_release else {
            return Err(DeployError::Invalid(
                "nothing is live in this environment".to_owned(),
            ));
        };
        let target = match target {
            Some(number) => number,
            None => self.default_rollback_target(environment.id, live).await?,
        };
        let snapshot = match self.store.release(environment.id, target).await {
            Ok(release) => ConfigSnapshot::parse(&release.config_json)
                .map_err(|e| DeployError::Invalid(format!("release v{target}: {e}")))?,
            Err(gilgal_store::StoreError::NotFound) => {
                return Err(DeployError::Invalid(format!(
                    "there is no release v{target}"
                )))
            }
            Err(other) => return Err(other.into()),
        };
        let id = self
            .enqueue(
                environment.clone(),
                DeploySource::Release(ReuseRelease {
                    kind: ReuseKind::Rollback,
                    from_environment: environment.id,
                    number: target,
                    run_release_phase,
                    description: format!("Rollback to v{target}"),
                }),
            )
            .await?;
        self.restore_config(&environment, &snapshot).await?;
        Ok(id)
    }

    /// The last release that was live before `live` and still has its artifact.
    async fn default_rollback_target(
        &self,
        environment: Uuid,
        live: u64,
    ) -> Result<u64, DeployError> {
        let releases = self.store.releases(environment).await?;
        releases
            .iter()
            .find(|r| r.number < live && r.outcome.was_live() && !r.pruned)
            .map(|r| r.number)
            .ok_or_else(|| {
                DeployError::Invalid(format!(
                    "no release before v{live} was live and still has its build; name one with `gilgal rollback vN`"
                ))
            })
    }
}
