//! The reconciler's start-up pass: converge every environment to its desired state.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use gilgal_build::Artifact;
use gilgal_core::desired::{self, Action, Observed, Slot};
use gilgal_core::lifecycle::DeploymentState;
use gilgal_proxy::RouteDiff;
use gilgal_runtime::{wait_healthy, InstanceId};
use gilgal_store::EnvironmentRecord;

use crate::pipeline::{free_port, health_check, instance_spec};
use crate::Deployer;

impl Deployer {
    /// Converges after a (re)start: fails interrupted deployments, then makes every
    /// environment run exactly its live release's formation and routes traffic to it.
    /// Idempotent: running it twice changes nothing the second time.
    pub async fn recover(&self) -> Result<(), crate::DeployError> {
        for id in self.store.in_progress_deployments().await? {
            let deployment = self.store.deployment_by_id(id).await?;
            let (to, note) = if deployment.state == DeploymentState::Draining {
                (DeploymentState::Retired, "server restarted while draining")
            } else {
                (DeploymentState::Failed, "the server restarted during this deployment; the previous release kept serving")
            };
            if let Err(e) = self.store.transition_deployment(id, to, Some(note)).await {
                tracing::warn!(deployment = %id, error = %e, "could not close an interrupted deployment");
            }
        }
        let environments = self.store.live_environments().await?;
        let live: BTreeSet<(String, String)> = environments
            .iter()
            .map(|e| (e.project_name.clone(), e.name.clone()))
            .collect();
        for environment in &environments {
            if let Err(e) = self.reconcile_environment(environment).await {
                tracing::error!(app = %environment.project_name, env = %environment.name, error = %e, "reconcile failed");
            }
        }
        // Instances of environments with nothing live (e.g. a first deploy cut short) go away.
        for status in self.runtime.list().await.map_err(std::io::Error::other)? {
            if !live.contains(&(status.labels.app.clone(), status.labels.env.clone())) {
                let _ = self.runtime.stop(&status.id, Duration::from_secs(10)).await;
                let _ = self.runtime.remove(&status.id).await;
            }
        }
        Ok(())
    }

    async fn reconcile_environment(&self, environment: &EnvironmentRecord) -> Result<(), String> {
        let Some(number) = environment.live_release else {
            return Ok(());
        };
        let release = self
            .store
            .release(environment.id, number)
            .await
            .map_err(|e| e.to_string())?;
        let artifact = Artifact::load(std::path::Path::new(&release.artifact_dir))
            .map_err(|e| e.to_string())?;
        let statuses: Vec<_> = self
            .runtime
            .list()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|s| {
                s.labels.app == environment.project_name && s.labels.env == environment.name
            })
            .collect();
        let observed: Vec<Observed> = statuses
            .iter()
            .map(|s| Observed {
                id: s.id.to_string(),
                slot: Slot {
                    release: s.labels.release,
                    process_type: s.labels.process_type.clone(),
                    index: s.labels.index,
                },
                alive: s.state.is_active(),
            })
            .collect();
        let wanted = desired::slots(number, &environment.formation);
        let actions = desired::diff(&wanted, &observed);
        let check = health_check(&artifact);
        for action in &actions {
            match action {
                Action::Start(slot) => {
                    let port = if slot.process_type == "web" {
                        Some(free_port().map_err(|e| e.to_string())?)
                    } else {
                        None
                    };
                    let spec = instance_spec(
                        &artifact,
                        environment,
                        number,
                        &slot.process_type,
                        slot.index,
                        port,
                    )
                    .map_err(|e| format!("{e:?}"))?;
                    let id = self.runtime.start(spec).await.map_err(|e| e.to_string())?;
                    if let Some(port) = port {
                        let addr = SocketAddr::from(([127, 0, 0, 1], port));
                        if let Err(e) = wait_healthy(self.runtime.as_ref(), &id, addr, &check).await
                        {
                            tracing::warn!(instance = %id, error = %e, "restarted instance is not healthy yet");
                        }
                    }
                }
                Action::Stop(id) => {
                    if let Ok(id) = InstanceId::parse(id) {
                        let release = statuses
                            .iter()
                            .find(|s| s.id == id)
                            .map(|s| s.labels.release)
                            .unwrap_or(number);
                        let grace = self.grace_period_of(environment, release).await;
                        let _ = self.runtime.stop(&id, grace).await;
                        let _ = self.runtime.remove(&id).await;
                    }
                }
            }
        }
        // Route to every live web instance of the live release.
        let serving: Vec<(InstanceId, Option<SocketAddr>)> = self
            .runtime
            .list()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|s| {
                s.labels.app == environment.project_name
                    && s.labels.env == environment.name
                    && s.labels.release == number
                    && s.state.is_active()
            })
            .map(|s| {
                (
                    s.id.clone(),
                    s.port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
                )
            })
            .collect();
        if let Some(route) = self.route_for(environment, &artifact, &serving) {
            self.proxy
                .apply(RouteDiff {
                    upsert: vec![route],
                    remove: vec![],
                })
                .map_err(|e| e.to_string())?;
        }
        tracing::info!(app = %environment.project_name, env = %environment.name, release = number, actions = actions.len(), "environment reconciled");
        Ok(())
    }
}
