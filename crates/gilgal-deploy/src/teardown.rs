//! Deleting a project or an environment: everything it owned stops and goes — instances,
//! route (drained first), add-ons (a final backup where their kind is backed up, then the
//! server process and data), artifacts, build caches and logs — and only then its rows.
//!
//! One path for both, under the environments' rollout locks, so a rollout, a scale or an
//! add-on deletion never interleaves with it. The deletion is marked in the store before
//! anything is stopped: the reconciler never brings a marked environment back, and a server
//! that crashed half-way finishes the deletion at start ([`Teardown::finish_deletions`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use gilgal_store::EnvironmentRecord;
use uuid::Uuid;

use crate::DeployError;

/// Deletes projects and environments (instances, routes, add-ons, files), and finishes
/// deletions a crash interrupted.
#[derive(Debug)]
pub struct Teardown {
    pub(crate) platform: Arc<crate::Platform>,
    pub(crate) engine: Arc<crate::RolloutEngine>,
    pub(crate) addons: Arc<crate::Addons>,
}

impl Teardown {
    pub(crate) fn new(
        platform: Arc<crate::Platform>,
        engine: Arc<crate::RolloutEngine>,
        addons: Arc<crate::Addons>,
    ) -> Self {
        Self {
            platform,
            engine,
            addons,
        }
    }

    /// Deletes a project: final add-on backups first (if one fails, nothing is deleted),
    /// then every environment is torn down and the project's rows, artifacts, build caches
    /// and logs go. The caller has checked that the user may.
    pub async fn delete_project(self: &Arc<Self>, project: Uuid) -> Result<(), DeployError> {
        let environments = self.platform.store.project_environments(project).await?;
        let mut guards = Vec::with_capacity(environments.len());
        // In id order (the store's), so two deletions never wait on each other in a cycle.
        for environment in &environments {
            guards.push(
                self.platform
                    .environment_lock(environment.id)
                    .lock_owned()
                    .await,
            );
        }
        for environment in &environments {
            for addon in self.platform.store.addons(environment.id).await? {
                self.addons.final_backup(&addon).await?;
            }
        }
        self.platform.store.mark_project_deleting(project).await?;
        self.finish_project_deletion(project, &environments).await
    }

    /// Deletes an environment like [`Teardown::delete_project`] deletes a project.
    pub async fn delete_environment(
        self: &Arc<Self>,
        environment: &EnvironmentRecord,
    ) -> Result<(), DeployError> {
        let lock = self.platform.environment_lock(environment.id);
        let _no_rollout_meanwhile = lock.lock().await;
        let environment = self
            .platform
            .store
            .environment_by_id(environment.id)
            .await?;
        for addon in self.platform.store.addons(environment.id).await? {
            self.addons.final_backup(&addon).await?;
        }
        self.platform
            .store
            .mark_environment_deleting(environment.id)
            .await?;
        self.finish_environment_deletion(&environment).await
    }

    /// Finishes the deletions a crash interrupted (called at start, before reconciling):
    /// what they had not removed yet is removed now, without final backups (they were
    /// taken before the deletion was marked). Then removes release and cache directories
    /// of projects that no longer exist.
    pub(crate) async fn finish_deletions(&self) -> Result<(), DeployError> {
        for project in self.platform.store.deleting_projects().await? {
            let environments = self.platform.store.project_environments(project).await?;
            let mut guards = Vec::with_capacity(environments.len());
            for environment in &environments {
                guards.push(
                    self.platform
                        .environment_lock(environment.id)
                        .lock_owned()
                        .await,
                );
            }
            tracing::info!(%project, "finishing a project deletion a restart interrupted");
            if let Err(e) = self.finish_project_deletion(project, &environments).await {
                tracing::error!(%project, error = %e, "cannot finish deleting a project; its instances stay stopped");
            }
        }
        for environment in self.platform.store.deleting_environments().await? {
            let lock = self.platform.environment_lock(environment.id);
            let _no_rollout_meanwhile = lock.lock().await;
            tracing::info!(environment = %environment.id, "finishing an environment deletion a restart interrupted");
            if let Err(e) = self.finish_environment_deletion(&environment).await {
                tracing::error!(environment = %environment.id, error = %e, "cannot finish deleting an environment; its instances stay stopped");
            }
        }
        self.remove_orphaned_directories().await
    }

    /// Tears down every environment of a marked project, then deletes it. The caller holds
    /// the environments' locks.
    async fn finish_project_deletion(
        &self,
        project: Uuid,
        environments: &[EnvironmentRecord],
    ) -> Result<(), DeployError> {
        let mut artifacts = Vec::new();
        for environment in environments {
            artifacts.extend(self.tear_down_locked(environment).await?);
        }
        self.platform.store.purge_project(project).await?;
        for environment in environments {
            self.platform.remove_logs(environment.id).await;
        }
        self.remove_unused_artifacts(artifacts).await;
        for root in [
            &self.platform.config.releases_dir,
            &self.platform.config.cache_dir,
        ] {
            remove_dir(root.join(project.to_string())).await;
        }
        tracing::info!(%project, "project deleted");
        Ok(())
    }

    /// Tears down a marked environment, then deletes it. The caller holds its lock.
    async fn finish_environment_deletion(
        &self,
        environment: &EnvironmentRecord,
    ) -> Result<(), DeployError> {
        let artifacts = self.tear_down_locked(environment).await?;
        self.platform
            .store
            .purge_environment(environment.id)
            .await?;
        self.platform.remove_logs(environment.id).await;
        // A release promoted elsewhere keeps using its artifact: only unused ones go.
        self.remove_unused_artifacts(artifacts).await;
        remove_dir(crate::identity::environment_dir(
            &self.platform.config.cache_dir,
            environment,
        ))
        .await;
        let releases =
            crate::identity::environment_dir(&self.platform.config.releases_dir, environment);
        // Empty unless an artifact of it is still in use.
        let _ = tokio::fs::remove_dir(&releases).await;
        tracing::info!(environment = %environment.id, "environment deleted");
        Ok(())
    }

    /// Removes the environment's route, drains and stops its instances, and destroys its
    /// add-ons (no backup: taken before). Returns its releases' artifacts (directories or
    /// image tags), for removal once its rows are gone. The caller holds its lock.
    async fn tear_down_locked(
        &self,
        environment: &EnvironmentRecord,
    ) -> Result<Vec<String>, DeployError> {
        self.engine
            .converge_to_nothing(environment)
            .await
            .map_err(DeployError::Rollout)?;
        for addon in self.platform.store.addons(environment.id).await? {
            self.addons.remove_addon_resources(&addon).await?;
            tracing::info!(addon = %addon.id, name = %addon.name, "add-on destroyed with its environment");
        }
        Ok(self
            .platform
            .store
            .releases(environment.id)
            .await?
            .into_iter()
            .filter(|r| !r.pruned)
            .map(|r| r.artifact_dir)
            .collect())
    }

    /// Deletes the artifacts no remaining release uses (directories under the releases
    /// dir, or image tags).
    async fn remove_unused_artifacts(&self, artifacts: Vec<String>) {
        let unique: BTreeSet<String> = artifacts.into_iter().collect();
        for artifact in unique {
            match self.platform.store.artifact_in_use(&artifact).await {
                Ok(false) => {
                    let dir = PathBuf::from(&artifact);
                    if dir.starts_with(&self.platform.config.releases_dir) {
                        remove_dir(dir).await;
                    } else if let Some(images) = &self.platform.config.images {
                        crate::images::remove_tag(images, &artifact).await;
                    }
                }
                Ok(true) => {}
                Err(e) => tracing::warn!(error = %e, "cannot check artifact use"),
            }
        }
    }

    /// Release and cache directories named by the id of a project that no longer exists
    /// (left by a crash after its rows were deleted).
    async fn remove_orphaned_directories(&self) -> Result<(), DeployError> {
        let projects: BTreeSet<Uuid> = self
            .platform
            .store
            .project_ids()
            .await?
            .into_iter()
            .collect();
        for root in [
            &self.platform.config.releases_dir,
            &self.platform.config.cache_dir,
        ] {
            let Ok(mut entries) = tokio::fs::read_dir(root).await else {
                continue;
            };
            while let Ok(Some(entry)) = entries.next_entry().await {
                let name = entry.file_name();
                let Some(id) = name.to_str().and_then(|n| n.parse::<Uuid>().ok()) else {
                    continue; // a project name's directory, from before ids
                };
                if !projects.contains(&id) {
                    remove_dir(entry.path()).await;
                }
            }
        }
        Ok(())
    }
}

async fn remove_dir(dir: PathBuf) {
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot delete a directory"),
    }
}
