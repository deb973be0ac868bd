//! Changes to an environment's desired state, each through the environment's one ordering
//! point (its intake lock): read what the change starts from, record the change in the store
//! (config vars, the rolled-back config), and queue its rollout, all before the next change
//! may start. Rollouts then run in that order (`Deployments::enqueue`), so each starts from what
//! the previous one left and an acknowledged change is never overwritten by an earlier one.
//!
//! These are also the use-cases `gilgal-api`'s handlers call once they have parsed the request
//! and checked the caller's role: config change (validated, secrets sealed here), rollback
//! (with its default target), promote and redeploy. Each checks the quota
//! ([`crate::Quotas::check`]) before it records anything.

use std::sync::Arc;

use gilgal_store::{ConfigChange, ConfigVarRecord, EnvironmentRecord};
use uuid::Uuid;

use crate::config::ConfigSnapshot;
use crate::pipeline::{DeploySource, ReuseKind, ReuseRelease};
use crate::quotas::Work;
use crate::DeployError;

/// Longest config var value accepted, in characters (as the OpenAPI document's maxLength
/// counts them): config is for settings and credentials, not files.
pub const MAX_CONFIG_VALUE_BYTES: usize = 32 * 1024;
/// Most config vars one environment may have: each is copied into every instance's
/// environment and every release's snapshot.
pub const MAX_CONFIG_VARS: usize = 500;

/// One requested change of an environment's config, with its value in clear: sealing a
/// secret is the service's job, so no caller stores one unsealed.
#[derive(Clone, PartialEq, Eq)]
pub enum ConfigEdit {
    /// Set `name` to `value` (sealed first when `secret`).
    Set {
        /// The variable.
        name: String,
        /// Its value, in clear.
        value: String,
        /// Sealed at rest and never returned.
        secret: bool,
    },
    /// Remove `name` (no error when absent).
    Unset(String),
}

impl std::fmt::Debug for ConfigEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values (secret or not) stay out of logs.
        match self {
            ConfigEdit::Set { name, secret, .. } => write!(f, "Set({name}, secret: {secret})"),
            ConfigEdit::Unset(name) => write!(f, "Unset({name})"),
        }
    }
}

impl ConfigEdit {
    /// The variable it changes.
    pub fn name(&self) -> &str {
        match self {
            ConfigEdit::Set { name, .. } | ConfigEdit::Unset(name) => name,
        }
    }

    /// Refuses names apps could not read or that Gilgal sets itself, and values too long or
    /// holding a NUL byte (which no process environment can carry).
    fn validate(&self) -> Result<(), DeployError> {
        let name = self.name();
        let valid = !name.is_empty()
            && name.len() <= 255
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(DeployError::Rejected(format!(
                "config var name {name:?} is invalid: use letters, digits and _, not starting with a digit"
            )));
        }
        if name == "PORT" || name.starts_with("GILGAL_") {
            return Err(DeployError::Rejected(format!(
                "{name} is set by Gilgal for every instance and cannot be configured"
            )));
        }
        if let ConfigEdit::Set { value, .. } = self {
            if value.chars().count() > MAX_CONFIG_VALUE_BYTES {
                return Err(DeployError::Rejected(format!(
                    "the value of {name} is longer than {} KiB",
                    MAX_CONFIG_VALUE_BYTES / 1024
                )));
            }
            if value.contains('\0') {
                return Err(DeployError::Rejected(format!(
                    "the value of {name} contains a NUL byte"
                )));
            }
        }
        Ok(())
    }
}

/// "Set A, Set B, Unset C": how a config change is described in the release history.
fn describe(edits: &[ConfigEdit]) -> String {
    edits
        .iter()
        .map(|edit| match edit {
            ConfigEdit::Set { name, .. } => format!("Set {name}"),
            ConfigEdit::Unset(name) => format!("Unset {name}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Changes that start from what runs (config, rollback, promote, redeploy, scale, domain
/// refresh): ordered per environment, then queued as deployments or converged directly.
#[derive(Debug)]
pub struct Changes {
    pub(crate) platform: Arc<crate::Platform>,
    pub(crate) engine: Arc<crate::RolloutEngine>,
    pub(crate) deployments: Arc<crate::Deployments>,
}

impl Changes {
    pub(crate) fn new(
        platform: Arc<crate::Platform>,
        engine: Arc<crate::RolloutEngine>,
        deployments: Arc<crate::Deployments>,
    ) -> Self {
        Self {
            platform,
            engine,
            deployments,
        }
    }

    /// A config change asked for by a user: validates `edits`, checks the quota, then
    /// applies them (`apply_config_edits`, described by what it sets and unsets). Returns the
    /// deployment rolling it out, when something is live.
    pub async fn change_config(
        self: &Arc<Self>,
        environment: &EnvironmentRecord,
        edits: &[ConfigEdit],
    ) -> Result<Option<Uuid>, DeployError> {
        if edits.is_empty() {
            return Err(DeployError::Rejected("nothing to change".to_owned()));
        }
        for edit in edits {
            edit.validate()?;
        }
        self.platform
            .check_quota(environment.project_id, Work::Rollout)
            .await?;
        self.apply_config_edits(environment.id, edits, describe(edits))
            .await
    }

    /// "Config change → new release", the one place it is written (user changes and add-on
    /// attach/detach): under the environment's intake lock, seals secrets, keeps the number
    /// of vars within [`MAX_CONFIG_VARS`], records the vars and, when something is live,
    /// queues a new release of the live artifact with them (`description` names the change).
    /// Checks no quota: the use-case that calls it decides.
    pub(crate) async fn apply_config_edits(
        self: &Arc<Self>,
        environment: Uuid,
        edits: &[ConfigEdit],
        description: String,
    ) -> Result<Option<Uuid>, DeployError> {
        let intake = self.platform.intake_lock(environment);
        let _in_order = intake.lock().await;
        let mut changes = Vec::with_capacity(edits.len());
        for edit in edits {
            changes.push(match edit {
                ConfigEdit::Set {
                    name,
                    value,
                    secret,
                } => ConfigChange::Set(ConfigVarRecord {
                    name: name.clone(),
                    value: if *secret {
                        self.platform.vault.seal(environment, name, value).await?
                    } else {
                        value.clone()
                    },
                    secret: *secret,
                }),
                ConfigEdit::Unset(name) => ConfigChange::Unset(name.clone()),
            });
        }
        let current = self.platform.store.config_vars(environment).await?;
        let mut names: std::collections::BTreeSet<&str> =
            current.iter().map(|r| r.name.as_str()).collect();
        for edit in edits {
            match edit {
                ConfigEdit::Set { name, .. } => names.insert(name.as_str()),
                ConfigEdit::Unset(name) => names.remove(name.as_str()),
            };
        }
        if names.len() > MAX_CONFIG_VARS {
            return Err(DeployError::Rejected(format!(
                "an environment can have at most {MAX_CONFIG_VARS} config vars"
            )));
        }
        self.platform
            .store
            .change_config_vars(environment, &changes)
            .await?;
        let environment = self.platform.store.environment_by_id(environment).await?;
        let Some(number) = environment.live_release else {
            return Ok(None);
        };
        let id = self
            .deployments
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
        environment: &EnvironmentRecord,
        target: Option<u64>,
        run_release_phase: bool,
    ) -> Result<Uuid, DeployError> {
        self.platform
            .check_quota(environment.project_id, Work::Rollout)
            .await?;
        let intake = self.platform.intake_lock(environment.id);
        let _in_order = intake.lock().await;
        let environment = self
            .platform
            .store
            .environment_by_id(environment.id)
            .await?;
        let Some(live) = environment.live_release else {
            return Err(DeployError::Invalid(
                "nothing is live in this environment".to_owned(),
            ));
        };
        let target = match target {
            Some(number) => number,
            None => self.default_rollback_target(environment.id, live).await?,
        };
        let snapshot = match self.platform.store.release(environment.id, target).await {
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
            .deployments
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
        self.deployments
            .restore_config(&environment, &snapshot)
            .await?;
        Ok(id)
    }

    /// Promotes `source`'s live release to `target`: its exact artifact with `target`'s
    /// config, the release phase run in `target` first. No rebuild. The caller has checked
    /// that it may read `source`.
    pub async fn promote(
        self: &Arc<Self>,
        target: &EnvironmentRecord,
        source: &EnvironmentRecord,
    ) -> Result<Uuid, DeployError> {
        if source.id == target.id {
            return Err(DeployError::Rejected(
                "an environment cannot be promoted to itself".to_owned(),
            ));
        }
        self.platform
            .check_quota(target.project_id, Work::Rollout)
            .await?;
        let Some(number) = source.live_release else {
            return Err(DeployError::Invalid(format!(
                "{} has no live release to promote",
                source.name
            )));
        };
        self.deployments
            .queue_in_order(
                target.clone(),
                DeploySource::Release(ReuseRelease {
                    kind: ReuseKind::Promote,
                    from_environment: source.id,
                    number,
                    run_release_phase: true,
                    description: format!("Promote {} v{number}", source.name),
                }),
            )
            .await
    }

    /// Starts `release` (what an earlier deployment made, `None` when it made none) again
    /// with the environment's current config, without rebuilding; the release phase runs
    /// again only when asked.
    pub async fn redeploy(
        self: &Arc<Self>,
        environment: &EnvironmentRecord,
        release: Option<u64>,
        run_release_phase: bool,
    ) -> Result<Uuid, DeployError> {
        self.platform
            .check_quota(environment.project_id, Work::Rollout)
            .await?;
        let Some(number) = release else {
            return Err(DeployError::Invalid(
                "this deployment made no release; deploy the source again".to_owned(),
            ));
        };
        self.deployments
            .queue_in_order(
                environment.clone(),
                DeploySource::Release(ReuseRelease {
                    kind: ReuseKind::Redeploy,
                    from_environment: environment.id,
                    number,
                    run_release_phase,
                    description: format!("Redeploy v{number}"),
                }),
            )
            .await
    }

    /// The last release that was live before `live` and still has its artifact.
    async fn default_rollback_target(
        &self,
        environment: Uuid,
        live: u64,
    ) -> Result<u64, DeployError> {
        let releases = self.platform.store.releases(environment).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> ConfigEdit {
        ConfigEdit::Set {
            name: name.to_owned(),
            value: value.to_owned(),
            secret: true,
        }
    }

    #[test]
    fn edits_are_validated_by_name_and_value() {
        assert!(set("DATABASE_URL", "postgres://x").validate().is_ok());
        assert!(ConfigEdit::Unset("_private".to_owned()).validate().is_ok());
        for bad in [
            set("PORT", "1"),
            set("GILGAL_RELEASE", "1"),
            set("1BAD", "1"),
            set("A-B", "1"),
            set("", "1"),
            set("BIG", &"x".repeat(MAX_CONFIG_VALUE_BYTES + 1)),
            set("NUL", "a\0b"),
            ConfigEdit::Unset("PORT".to_owned()),
        ] {
            assert!(
                matches!(bad.validate(), Err(DeployError::Rejected(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn descriptions_name_the_vars_and_debug_never_shows_values() {
        let edits = [
            set("A", "sk_live_secret"),
            ConfigEdit::Unset("B".to_owned()),
        ];
        assert_eq!(describe(&edits), "Set A, Unset B");
        assert!(!format!("{edits:?}").contains("sk_live"));
    }
}
