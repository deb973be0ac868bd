//! The reconciler: the start-up pass, scaling and domain refreshes, each converging an
//! environment on its live release through the rollout engine (`converge.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gilgal_build::Artifact;
use gilgal_core::lifecycle::DeploymentState;
use gilgal_runtime::InstanceId;
use gilgal_store::{EnvironmentRecord, ProcessSizeRecord};
use uuid::Uuid;

use crate::config::ConfigSnapshot;
use crate::converge::{Desired, RolloutError};
use crate::{Changes, DeployError, DeploySource, Platform, ReuseKind, ReuseRelease, RolloutEngine};

/// The start-up pass: converges every environment after a (re)start, then stops what no
/// environment owns.
#[derive(Debug)]
pub struct Recovery {
    pub(crate) platform: Arc<crate::Platform>,
    pub(crate) engine: Arc<crate::RolloutEngine>,
    pub(crate) teardown: Arc<crate::Teardown>,
    pub(crate) runs: Arc<crate::Runs>,
    pub(crate) deployments: Arc<crate::Deployments>,
}

impl Recovery {
    pub(crate) fn new(
        platform: Arc<crate::Platform>,
        engine: Arc<crate::RolloutEngine>,
        teardown: Arc<crate::Teardown>,
        runs: Arc<crate::Runs>,
        deployments: Arc<crate::Deployments>,
    ) -> Self {
        Self {
            platform,
            engine,
            teardown,
            runs,
            deployments,
        }
    }

    /// Converges after a (re)start: fails interrupted deployments, then makes every
    /// environment run exactly its live release's formation and routes traffic to it.
    /// When it returns, every environment that can serve is routed (the server opens the
    /// edge then); [`Recovery::sweep_leftovers`] stops what no environment owns.
    /// Idempotent: running it twice changes nothing the second time.
    pub async fn recover(&self) -> Result<(), crate::DeployError> {
        self.runs.recover_runs().await?;
        // Deletions a crash interrupted finish first: nothing of them comes back.
        self.teardown.finish_deletions().await?;
        // Canaries go on where they were (their instances stay aside while their
        // environment converges below); every other deployment in progress is closed.
        let resuming = self.deployments.resumable_canaries().await?;
        for id in self.platform.store.in_progress_deployments().await? {
            if resuming.iter().any(|c| c.deployment_id == id) {
                continue;
            }
            let deployment = self.platform.store.deployment_by_id(id).await?;
            let (to, note) = if deployment.state == DeploymentState::Draining {
                (DeploymentState::Retired, "server restarted while draining")
            } else {
                (DeploymentState::Failed, "the server restarted during this deployment; the previous release kept serving")
            };
            if let Err(e) = self
                .platform
                .store
                .transition_deployment(id, to, Some(note))
                .await
            {
                tracing::warn!(deployment = %id, error = %e, "could not close an interrupted deployment");
            }
        }
        for listed in self.platform.store.live_environments().await? {
            let lock = self.platform.environment_lock(listed.id);
            let _one_change_at_a_time = lock.lock().await;
            // A change may have landed while this pass waited for the lock (the API serves
            // during recovery): converge on what the store says now.
            let Some(environment) = self.engine.live_environment(listed.id).await? else {
                continue;
            };
            if let Err(e) = self.engine.reconcile_environment(&environment, &[]).await {
                tracing::error!(app = %environment.project_name, env = %environment.name, error = %e, "reconcile failed");
                self.platform
                    .event(
                        environment.id,
                        "recovery",
                        format!("converging after a restart failed: {e}"),
                    )
                    .await;
            }
        }
        for canary in resuming {
            self.deployments.resume_canary(canary).await;
        }
        Ok(())
    }

    /// Stops the instances no live environment owns, after [`Recovery::recover`].
    pub async fn sweep_leftovers(&self) -> Result<(), crate::DeployError> {
        // Instances of environments with nothing live (e.g. a first deploy cut short, or a
        // deleted one) go away. So do instances labelled with names (started before labels
        // were ids): their environment's live release was started above under id labels,
        // health-gated and routed, so they are replaced, not orphaned.
        let live: BTreeSet<(Uuid, Uuid)> = self
            .platform
            .store
            .live_environments()
            .await?
            .iter()
            .map(|e| (e.project_id, e.id))
            .collect();
        for status in self
            .platform
            .runtime
            .list()
            .await
            .map_err(std::io::Error::other)?
        {
            let owner = crate::identity::owner_of(&status.labels);
            // A first rollout in progress holds its environment's lock: its instances are
            // not leftovers.
            let in_progress = owner.is_some_and(|(_, environment)| {
                self.platform
                    .environment_lock(environment)
                    .try_lock()
                    .is_err()
            });
            if !in_progress && !owner.is_some_and(|owner| live.contains(&owner)) {
                let _ = self
                    .platform
                    .runtime
                    .stop(&status.id, Duration::from_secs(10))
                    .await;
                let _ = self.platform.runtime.remove(&status.id).await;
            }
        }
        // Routes no live environment owns: an edge process that outlived a crash may still
        // serve the route of an environment deleted or never brought live meanwhile.
        let stale: Vec<String> = self
            .platform
            .edge
            .route_ids()
            .await
            .into_iter()
            .filter(|id| {
                crate::identity::route_owner(id).is_none_or(|owner| {
                    !live.contains(&owner)
                        && self.platform.environment_lock(owner.1).try_lock().is_ok()
                })
            })
            .collect();
        if !stale.is_empty() {
            tracing::info!(routes = ?stale, "removing routes no live environment owns");
            self.platform
                .edge
                .update(|edge| {
                    for id in &stale {
                        edge.routes.remove(id);
                    }
                })
                .await
                .map_err(|e| {
                    crate::DeployError::Runtime(format!("cannot remove stale routes: {e}"))
                })?;
        }
        Ok(())
    }
}

impl Changes {
    /// Changes an environment's process formation and sizes with zero downtime: new
    /// instances pass health checks before they get traffic, removed ones leave the route,
    /// drain, then get SIGTERM and their grace period. A size change rolls the live release
    /// onto new instances (a new release in the history). Returns the resize deployment, if any.
    ///
    /// Quota: every scale is checked against the hourly deploy quota (never the build quota:
    /// it builds nothing), so a team that spent its hour is refused scaling too and a loop of
    /// scale calls cannot churn instances without bound. Only a resize adds to the count,
    /// because only it records a deployment; a change of counts alone starts or stops
    /// instances of the live release, and must stay possible in bursts (scaling up under
    /// load) without eating the quota deploys need.
    pub async fn scale(
        self: &Arc<Self>,
        environment: &EnvironmentRecord,
        counts: &BTreeMap<String, u32>,
        sizes: &BTreeMap<String, ProcessSizeRecord>,
    ) -> Result<Option<Uuid>, DeployError> {
        if self.deployments.canary_status(environment.id).is_some() {
            return Err(DeployError::Invalid(
                "a canary is in progress in this environment: make it live (`gilgal canary promote --full`) or roll it back (`gilgal canary abort`) first".to_owned(),
            ));
        }
        self.platform
            .check_quota(environment.project_id, crate::quotas::Work::Rollout)
            .await?;
        let intake = self.platform.intake_lock(environment.id);
        let _in_order = intake.lock().await;
        let resized;
        {
            let lock = self.platform.environment_lock(environment.id);
            let _one_change_at_a_time = lock.lock().await;
            let current = self
                .platform
                .store
                .environment_by_id(environment.id)
                .await?;
            if let Some(number) = current.live_release {
                let release = self.platform.store.release(environment.id, number).await?;
                let artifact: Artifact = serde_json::from_str(&release.artifact_json)
                    .map_err(|e| DeployError::Invalid(e.to_string()))?;
                for name in counts.keys().chain(sizes.keys()) {
                    let process_type = gilgal_build::ProcessType::new(name).map_err(|_| {
                        DeployError::Invalid(format!("{name:?} is not a process type"))
                    })?;
                    if artifact.process(&process_type).is_none() {
                        return Err(DeployError::Invalid(format!(
                            "release v{number} has no {name} process (its Procfile or gilgal.toml defines: {})",
                            artifact
                                .processes
                                .iter()
                                .map(|p| p.process_type.as_str())
                                .filter(|p| *p != "release")
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
            }
            let mut formation = current.formation.clone();
            formation.extend(counts.iter().map(|(k, v)| (k.clone(), *v)));
            let mut new_sizes = current.sizes.clone();
            for (name, size) in sizes {
                let entry = new_sizes.entry(name.clone()).or_default();
                if size.memory_mb.is_some() {
                    entry.memory_mb = size.memory_mb;
                }
                if size.cpu_millicores.is_some() {
                    entry.cpu_millicores = size.cpu_millicores;
                }
            }
            resized = new_sizes != current.sizes;
            self.platform
                .store
                .set_formation(environment.id, &formation, &new_sizes)
                .await?;
            let described: Vec<String> =
                formation.iter().map(|(k, v)| format!("{k}={v}")).collect();
            self.platform
                .event(
                    environment.id,
                    "scale",
                    format!("formation is now {}", described.join(" ")),
                )
                .await;
            let updated = self
                .platform
                .store
                .environment_by_id(environment.id)
                .await?;
            if !resized {
                if let Err(e) = self.engine.reconcile_environment(&updated, &[]).await {
                    // Nothing of the failed change stays: the formation goes back to what
                    // runs, so the health watch does not retry a scale-up that was refused.
                    self.platform
                        .store
                        .set_formation(environment.id, &current.formation, &current.sizes)
                        .await?;
                    self.platform
                        .event(
                            environment.id,
                            "scale",
                            format!("scaling failed, the formation is unchanged: {e}"),
                        )
                        .await;
                    return Err(e.into());
                }
                return Ok(None);
            }
        }
        let updated = self
            .platform
            .store
            .environment_by_id(environment.id)
            .await?;
        let Some(number) = updated.live_release else {
            return Ok(None);
        };
        let description = format!(
            "Resize {}",
            sizes
                .iter()
                .map(|(name, size)| {
                    let mut parts = Vec::new();
                    if let Some(mb) = size.memory_mb {
                        parts.push(format!("{mb} MB"));
                    }
                    if let Some(milli) = size.cpu_millicores {
                        parts.push(format!("{milli}m CPU"));
                    }
                    format!("{name} to {}", parts.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ")
        );
        let id = self
            .deployments
            .enqueue(
                updated.clone(),
                DeploySource::Release(ReuseRelease {
                    kind: ReuseKind::Resize,
                    from_environment: updated.id,
                    number,
                    run_release_phase: false,
                    description,
                }),
            )
            .await?;
        Ok(Some(id))
    }
}

impl RolloutEngine {
    /// Converges an environment on its live release and formation through the rollout
    /// engine; instances in `replace` get a successor in their slot before they go.
    pub(crate) async fn reconcile_environment(
        &self,
        environment: &EnvironmentRecord,
        replace: &[InstanceId],
    ) -> Result<(), RolloutError> {
        let Some(number) = environment.live_release else {
            return Ok(());
        };
        let unreadable = |e: String| RolloutError::Observe(format!("release v{number}: {e}"));
        let release = self
            .platform
            .store
            .release(environment.id, number)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        let artifact: Artifact =
            serde_json::from_str(&release.artifact_json).map_err(|e| unreadable(e.to_string()))?;
        let snapshot =
            ConfigSnapshot::parse(&release.config_json).map_err(|e| unreadable(e.to_string()))?;
        let config = self
            .platform
            .vault
            .resolve(environment.id, &snapshot)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        let canary = self
            .platform
            .store
            .environment_canary(environment.id)
            .await
            .map_err(|e| RolloutError::Observe(e.to_string()))?;
        let desired = Desired {
            release: number,
            artifact: &artifact,
            vars: &config.vars,
            aside: canary
                .map(|c| c.release_number)
                .filter(|release| *release != number),
        };
        let mut plan = self.plan(environment, &desired, replace).await?;
        let failing = self
            .unproven_failing_gate(environment, &desired, &plan)
            .await;
        if !failing.is_empty() {
            // An instance that failed its gate gets no traffic, even from a route an adopted
            // edge kept: it leaves the route now, before its successor boots.
            if let Some(routed) = self.routed_backends(environment).await {
                if routed.iter().any(|(id, _)| failing.contains(id)) {
                    let proven: Vec<_> = routed
                        .into_iter()
                        .filter(|(id, _)| !failing.contains(id))
                        .collect();
                    self.switch_route(environment, desired.release, desired.artifact, &proven)
                        .await
                        .map_err(|e| e.redacted(&config.redactor))?;
                }
            }
            let replace: Vec<InstanceId> = replace.iter().cloned().chain(failing).collect();
            plan = self.plan(environment, &desired, &replace).await?;
        }
        let artifact_dir = std::path::PathBuf::from(&release.artifact_dir);
        if plan.starts_any()
            && !artifact_dir.starts_with(crate::identity::project_dir(
                &self.platform.config.releases_dir,
                environment,
            ))
        {
            // Built before directories and users were keyed by ids: its group is a name's.
            self.share_with_app(environment, &artifact_dir)
                .await
                .map_err(|e| RolloutError::Start {
                    slot: format!("v{number}"),
                    reason: format!("{e:?}"),
                })?;
        }
        if plan.starts_any()
            && plan.staying().iter().any(|(_, addr)| addr.is_some())
            && self.routed_backends(environment).await.is_none()
        {
            // After a restart the edge has no route yet: what stays (gated above) serves
            // while the missing instances boot, instead of waiting for them.
            self.switch_route(
                environment,
                desired.release,
                desired.artifact,
                plan.staying(),
            )
            .await
            .map_err(|e| e.redacted(&config.redactor))?;
        }
        self.apply(environment, &desired, &plan)
            .await
            .map_err(|e| e.redacted(&config.redactor))
    }

    /// The environment as the store has it now, if it is still live (not deleted or being
    /// deleted, and with a live release): what a pass that waited for a lock must act on.
    pub(crate) async fn live_environment(
        &self,
        id: Uuid,
    ) -> Result<Option<EnvironmentRecord>, DeployError> {
        Ok(self
            .platform
            .store
            .live_environments()
            .await?
            .into_iter()
            .find(|e| e.id == id))
    }
}

impl Changes {
    /// Re-applies an environment's route with its current hostnames (after its custom
    /// domains changed or its project was renamed).
    pub async fn refresh_route(&self, environment: &EnvironmentRecord) -> Result<(), DeployError> {
        if self.deployments.canary_status(environment.id).is_some() {
            // The canary holds the environment, and writes its route at every step, at its
            // rollback and as it goes live, each time with the current domains and policy.
            return Ok(());
        }
        let lock = self.platform.environment_lock(environment.id);
        let _one_change_at_a_time = lock.lock().await;
        let Some(current) = self.engine.live_environment(environment.id).await? else {
            return Ok(());
        };
        let Some(number) = current.live_release else {
            return Ok(());
        };
        let release = self.platform.store.release(current.id, number).await?;
        let artifact: Artifact = serde_json::from_str(&release.artifact_json)
            .map_err(|e| DeployError::Invalid(e.to_string()))?;
        // Only the route changes: the instances it names stay as they are (no start, no
        // gate), so a domain change never fails on an instance's health.
        let serving = self
            .engine
            .routed_backends(&current)
            .await
            .unwrap_or_default();
        if serving.is_empty() && artifact.static_dir.is_none() {
            return Ok(());
        }
        Ok(self
            .engine
            .switch_route(&current, number, &artifact, &serving)
            .await?)
    }
}

impl Platform {
    /// The hostname suffix apps get by default; custom domains may not use it.
    pub fn base_domain(&self) -> &str {
        &self.config.base_domain
    }
}

/// What runs, measured on request: instance counts and resource use, and apps' own metrics.
#[derive(Debug)]
pub struct AppMetrics {
    pub(crate) platform: Arc<crate::Platform>,
}

impl AppMetrics {
    pub(crate) fn new(platform: Arc<crate::Platform>) -> Self {
        Self { platform }
    }

    /// Instances running now per process type of the live release.
    pub async fn running_counts(
        &self,
        environment: &EnvironmentRecord,
    ) -> Result<BTreeMap<String, u32>, DeployError> {
        let mut counts = BTreeMap::new();
        let Some(number) = environment.live_release else {
            return Ok(counts);
        };
        for status in self
            .platform
            .runtime
            .list()
            .await
            .map_err(|e| DeployError::Runtime(e.to_string()))?
        {
            if crate::identity::owns(environment, &status.labels)
                && status.labels.release == number
                && status.state.is_active()
            {
                *counts
                    .entry(status.labels.process_type.clone())
                    .or_insert(0) += 1;
            }
        }
        Ok(counts)
    }
}

/// One running instance with its resource use, for metrics.
#[derive(Debug, Clone)]
pub struct InstanceUsage {
    /// Runtime status (labels, restarts, state).
    pub status: gilgal_runtime::InstanceStatus,
    /// CPU and memory, when the runtime could read them.
    pub stats: Option<gilgal_runtime::ResourceStats>,
}

impl AppMetrics {
    /// Every instance the runtime knows, with CPU and memory (for `/metrics`).
    pub async fn instance_usage(&self) -> Result<Vec<InstanceUsage>, DeployError> {
        let statuses = self
            .platform
            .runtime
            .list()
            .await
            .map_err(|e| DeployError::Runtime(e.to_string()))?;
        let mut usage = Vec::with_capacity(statuses.len());
        for status in statuses {
            let stats = if status.state.is_active() {
                self.platform.runtime.stats(&status.id).await.ok()
            } else {
                None
            };
            usage.push(InstanceUsage { status, stats });
        }
        Ok(usage)
    }
}

impl Platform {
    /// The proxy route id of an environment (metrics are kept per route).
    pub fn route_of(&self, environment: &EnvironmentRecord) -> String {
        crate::identity::route_id(environment)
    }
}

/// One instance's own `/metrics`, scraped on request.
#[derive(Debug, Clone)]
pub struct AppScrape {
    /// Which instance.
    pub labels: gilgal_runtime::InstanceLabels,
    /// Its Prometheus text, or why it could not be read.
    pub result: Result<String, String>,
}

/// The most an instance's exposition may weigh.
const MAX_APP_METRICS_BYTES: usize = 4 << 20;
/// How long one instance may take to answer.
const APP_SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl AppMetrics {
    /// Reads `path` (e.g. `/metrics`) from every running web instance of the environment's
    /// live release, concurrently, each bounded in time and size.
    pub async fn scrape_app_metrics(
        &self,
        environment: &EnvironmentRecord,
        path: &str,
    ) -> Result<Vec<AppScrape>, DeployError> {
        let Some(release) = environment.live_release else {
            return Ok(Vec::new());
        };
        let statuses = self
            .platform
            .runtime
            .list()
            .await
            .map_err(|e| DeployError::Runtime(e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(APP_SCRAPE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| DeployError::Runtime(e.to_string()))?;
        let scrapes = statuses
            .into_iter()
            .filter(|s| crate::health::is_running_web(s, environment, release))
            .filter_map(|s| s.addr.map(|published| (s, published)))
            .map(|(status, published)| {
                let http = http.clone();
                async move {
                    let addr = self
                        .platform
                        .runtime
                        .probe_addr(&status.id, published)
                        .await;
                    let result = read_exposition(&http, &format!("http://{addr}{path}")).await;
                    AppScrape {
                        labels: status.labels,
                        result,
                    }
                }
            });
        Ok(futures_util::future::join_all(scrapes).await)
    }
}

async fn read_exposition(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let mut response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_APP_METRICS_BYTES {
            return Err(format!(
                "more than {} MiB of metrics",
                MAX_APP_METRICS_BYTES >> 20
            ));
        }
    }
    String::from_utf8(body).map_err(|_| "metrics are not UTF-8".to_owned())
}
