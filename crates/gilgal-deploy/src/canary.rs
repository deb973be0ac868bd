//! Canary rollouts: the new release's web instances take a share of the traffic, step by
//! step, and are judged against the live release over the same window before each step
//! (`gilgal_core::canary`). A failing canary is rolled back on its own: its weight goes to 0
//! at once, its instances drain and stop, the live release is never touched, and the
//! figures that failed go to the deployment log, the timeline and the alert channels.
//!
//! The deployment holds its environment's rollout lock throughout, like any rollout, so no
//! other change interleaves; `promote` and `abort` (a cancel) reach it through the registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gilgal_build::Artifact;
use gilgal_core::canary::{judge, Figures, NoTraffic, Policy, Step, Verdict};
use gilgal_core::lifecycle::{DeploymentState, ReleaseOutcome, CANARY_LONGEST};
use gilgal_proxy::{MetricsSnapshot, RouteMetricsSnapshot, LATENCY_BUCKETS_SECONDS};
use gilgal_store::{CanaryRecord, EnvironmentRecord};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::converge::{Desired, Routable};
use crate::pipeline::{formation_of, rollout_failure, DeployLog, Failure};
use crate::{DeployError, Deployments};

/// The policy a `gilgal.toml` `[deploy]` section asks for.
pub(crate) fn policy_from_settings(
    settings: &gilgal_build::config::CanarySettings,
) -> Result<Policy, String> {
    Ok(Policy {
        steps: gilgal_core::canary::parse_steps(&settings.steps)
            .map_err(|e| format!("gilgal.toml [deploy] canary: {e}"))?,
        interval: Duration::from_secs(settings.interval_secs.max(1)),
        min_requests: settings.min_requests.max(1),
        traffic_deadline: Duration::from_secs(settings.traffic_deadline_secs),
        no_traffic: NoTraffic::parse(&settings.no_traffic).unwrap_or_default(),
        sticky: settings.sticky,
        ..Policy::default()
    })
}

/// How often a running step reads the edge's figures.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Where a canary stands, for `gilgal canary status`.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryStatus {
    /// The deployment running it (`abort` cancels it).
    pub deployment: Uuid,
    /// The release under test.
    pub release: u64,
    /// The live release it is compared with.
    pub stable_release: u64,
    /// Its steps as text (`10,25,pause,100`).
    pub steps: String,
    /// Index of the current step.
    pub step: usize,
    /// Share of new requests it gets now (percent).
    pub weight: u32,
    /// `starting`, `analysing`, `waiting for traffic`, `paused`, `promoting`.
    pub phase: String,
    /// The canary's figures in the current step's window.
    pub canary: Figures,
    /// Stable's figures over the same window.
    pub stable: Figures,
    /// Seconds the current step has run.
    pub step_seconds: u64,
}

/// A canary in progress: its status and the signal `promote` sends.
#[derive(Debug)]
struct Running {
    status: Mutex<CanaryStatus>,
    /// How many promotes were asked for: a step goes on when the count grew since it began
    /// (a count, not a stored permit, so a late promote never skips an unjudged step).
    promotes: std::sync::atomic::AtomicU64,
    /// Wakes a waiting step at once when a promote arrives.
    promote: Notify,
    /// Set by a `promote --full`: skip the remaining steps.
    full: std::sync::atomic::AtomicBool,
}

/// The canaries in progress on this server, by environment.
#[derive(Debug, Default)]
pub(crate) struct CanaryRegistry {
    running: Mutex<HashMap<Uuid, Arc<Running>>>,
}

impl CanaryRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Running>>> {
        match self.running.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn get(&self, environment: Uuid) -> Option<Arc<Running>> {
        self.lock().get(&environment).cloned()
    }
}

/// Removes a canary from the registry when its rollout ends, however it ends.
struct Registered<'a> {
    registry: &'a CanaryRegistry,
    environment: Uuid,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.environment);
    }
}

/// The p99 (upper bound of its bucket) of non-cumulative latency bucket counts.
fn p99_of(buckets: &[u64; 15]) -> Option<Duration> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let wanted = (0.99 * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= wanted {
            return Some(
                LATENCY_BUCKETS_SECONDS
                    .get(i)
                    .map_or(Duration::from_secs(3600), |s| Duration::from_secs_f64(*s)),
            );
        }
    }
    None
}

/// A release's figures between two snapshots of its counters (an edge restarted in between
/// counts from zero again).
fn window(before: Option<&RouteMetricsSnapshot>, after: Option<&RouteMetricsSnapshot>) -> Figures {
    let Some(after) = after else {
        return Figures::default();
    };
    let before = before.filter(|b| b.requests() <= after.requests());
    let buckets: [u64; 15] = std::array::from_fn(|i| {
        after.latency_buckets[i].saturating_sub(before.map_or(0, |b| b.latency_buckets[i]))
    });
    Figures {
        requests: after.requests() - before.map_or(0, RouteMetricsSnapshot::requests),
        errors: after.status_classes[4].saturating_sub(before.map_or(0, |b| b.status_classes[4])),
        p99: p99_of(&buckets),
    }
}

fn describe(figures: &Figures) -> String {
    let p99 = figures
        .p99
        .map(|d| format!(", p99 ≤ {} ms", d.as_millis()))
        .unwrap_or_default();
    format!(
        "{} requests, {:.1} % 5xx{p99}",
        figures.requests,
        figures.error_rate() * 100.0
    )
}

/// How one step ended.
enum StepEnd {
    /// Passed (or promoted past): on to the next step.
    Next,
    /// `promote --full`: straight to live.
    Promote,
}

/// What the canary's steps need, gathered once.
struct Walk<'a> {
    deployment: Uuid,
    environment: &'a EnvironmentRecord,
    route: String,
    stable: (u64, &'a Artifact, &'a [Routable]),
    canary: (u64, &'a [Routable]),
    policy: &'a Policy,
    running: Arc<Running>,
}

impl Deployments {
    /// The canary in progress in `environment`, if any.
    pub fn canary_status(&self, environment: Uuid) -> Option<CanaryStatus> {
        let running = self.canaries.get(environment)?;
        let status = match running.status.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        Some(status)
    }

    /// Makes a canary visible to `status`, `promote` and `abort` until the guard drops.
    fn register_canary(
        &self,
        deployment: Uuid,
        environment: Uuid,
        release: u64,
        stable_release: u64,
        policy: &Policy,
    ) -> (Arc<Running>, Registered<'_>) {
        let running = Arc::new(Running {
            status: Mutex::new(CanaryStatus {
                deployment,
                release,
                stable_release,
                steps: gilgal_core::canary::steps_text(&policy.steps),
                step: 0,
                weight: 0,
                phase: "starting".to_owned(),
                canary: Figures::default(),
                stable: Figures::default(),
                step_seconds: 0,
            }),
            promotes: std::sync::atomic::AtomicU64::new(0),
            promote: Notify::new(),
            full: std::sync::atomic::AtomicBool::new(false),
        });
        self.canaries
            .lock()
            .insert(environment, Arc::clone(&running));
        let registered = Registered {
            registry: &self.canaries,
            environment,
        };
        (running, registered)
    }

    /// The canaries a stopped server left that can go on: their deployment is still a
    /// canary and their environment still serves the release they are judged against.
    /// Records that cannot are dropped (their instances then leave as the environment
    /// converges). Called by recovery before it converges anything.
    pub(crate) async fn resumable_canaries(&self) -> Result<Vec<CanaryRecord>, DeployError> {
        let mut resumable = Vec::new();
        for record in self.platform.store.canaries().await? {
            let deployment = self
                .platform
                .store
                .deployment_by_id(record.deployment_id)
                .await;
            let environment = self
                .platform
                .store
                .environment_by_id(record.environment_id)
                .await;
            let goes_on = matches!(&deployment, Ok(d) if d.state == DeploymentState::Canary)
                && matches!(&environment, Ok(e) if e.live_release == Some(record.stable_release));
            if goes_on {
                resumable.push(record);
            } else {
                self.platform
                    .store
                    .delete_canary(record.deployment_id)
                    .await?;
            }
        }
        Ok(resumable)
    }

    /// Resumes a canary after a restart. Its environment's lock is taken before this
    /// returns, so nothing converges the environment meanwhile; then, in the background, its
    /// instances pass their health check again (or it is rolled back), the traffic is split
    /// at its recorded step, and the step is judged afresh from there.
    pub(crate) async fn resume_canary(self: &Arc<Self>, record: CanaryRecord) {
        let lock = self.platform.environment_lock(record.environment_id);
        let one_rollout_at_a_time = lock.lock_owned().await;
        let (_, done) = self.platform.join_rollout_queue(record.environment_id);
        let id = record.deployment_id;
        let token = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(id, token.clone());
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _held = one_rollout_at_a_time;
            let environment = match this
                .platform
                .store
                .environment_by_id(record.environment_id)
                .await
            {
                Ok(environment) => environment,
                Err(e) => {
                    tracing::error!(deployment = %id, error = %e, "cannot resume a canary");
                    let _ = this.platform.store.delete_canary(id).await;
                    let _ = this
                        .platform
                        .store
                        .transition_deployment(
                            id,
                            DeploymentState::Failed,
                            Some("the canary could not resume after a restart"),
                        )
                        .await;
                    if let Ok(mut running) = this.running.lock() {
                        running.remove(&id);
                    }
                    return;
                }
            };
            let redactor = match this.platform.vault.current(environment.id).await {
                Ok(config) => config.redactor,
                Err(_) => gilgal_secrets::Redactor::default(),
            };
            let log = DeployLog::start(
                this.platform.store.clone(),
                id,
                redactor,
                Some((this.platform.config.logs.clone(), environment.id)),
            );
            let result = this.resume(&record, &environment, &token, &log).await;
            if result.is_err() {
                this.discard_canary(&record).await;
            }
            this.conclude(id, &environment, result, log).await;
            drop(done);
        });
    }

    /// What a canary that could not go on leaves: its record, and its instances unless its
    /// release became the live one. Idempotent (a rolled-back canary has neither).
    async fn discard_canary(&self, record: &CanaryRecord) {
        if let Err(e) = self
            .platform
            .store
            .delete_canary(record.deployment_id)
            .await
        {
            tracing::warn!(error = %e, "cannot forget a canary");
        }
        let Ok(environment) = self
            .platform
            .store
            .environment_by_id(record.environment_id)
            .await
        else {
            return;
        };
        if environment.live_release == Some(record.release_number) {
            return;
        }
        if let Ok(owned) = self.engine.owned_instances(&environment).await {
            let leaving: Vec<_> = owned
                .into_iter()
                .filter(|s| s.labels.release == record.release_number)
                .collect();
            self.engine.drain_and_stop(&environment, &leaving).await;
        }
    }

    async fn resume(
        &self,
        record: &CanaryRecord,
        environment: &EnvironmentRecord,
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<(), Failure> {
        // The API served while the server recovered: a change that got the environment
        // first may have replaced the release this canary is judged against.
        if environment.live_release != Some(record.stable_release) {
            return Err(Failure::Failed(format!(
                "canary v{} cannot resume: v{} is no longer the live release",
                record.release_number, record.stable_release
            )));
        }
        let policy: Policy = serde_json::from_str(&record.policy_json)?;
        let from = usize::try_from(record.step)
            .unwrap_or(0)
            .min(policy.steps.len().saturating_sub(1));
        log.system(format!(
            "the server restarted during the canary: resuming at step {} of [{}]",
            from + 1,
            gilgal_core::canary::steps_text(&policy.steps)
        ))
        .await;
        let release = |number| self.platform.store.release(environment.id, number);
        let canary_release = release(record.release_number).await?;
        let artifact: Artifact = serde_json::from_str(&canary_release.artifact_json)?;
        let snapshot = crate::ConfigSnapshot::parse(&canary_release.config_json)?;
        let config = self
            .platform
            .vault
            .resolve(environment.id, &snapshot)
            .await?;
        let desired = Desired {
            release: record.release_number,
            artifact: &artifact,
            vars: &config.vars,
            aside: None,
        };
        let stable_artifact: Artifact =
            serde_json::from_str(&release(record.stable_release).await?.artifact_json)?;
        let stable_serving = self
            .engine
            .routed_backends(environment)
            .await
            .unwrap_or_default();
        let canary_instances: Vec<_> = self
            .engine
            .owned_instances(environment)
            .await
            .map_err(rollout_failure)?
            .into_iter()
            .filter(|s| {
                s.labels.release == record.release_number
                    && s.labels.process_type == "web"
                    && s.state.is_active()
            })
            .collect();
        let canary_serving: Vec<Routable> = canary_instances
            .iter()
            .map(|s| (s.id.clone(), s.addr))
            .collect();
        let (running, _registered) = self.register_canary(
            record.deployment_id,
            environment.id,
            record.release_number,
            record.stable_release,
            &policy,
        );
        let walk = Walk {
            deployment: record.deployment_id,
            environment,
            route: crate::identity::route_id(environment),
            stable: (record.stable_release, &stable_artifact, &stable_serving),
            canary: (record.release_number, &canary_serving),
            policy: &policy,
            running,
        };
        // Its instances prove themselves again: a restart may have lost or restarted them.
        let check = crate::pipeline::health_check(&artifact);
        let mut unhealthy = None;
        for (id, addr) in &canary_serving {
            let Some(addr) = addr else { continue };
            let addr = self.platform.runtime.probe_addr(id, *addr).await;
            if let Err(e) =
                gilgal_runtime::wait_healthy(self.platform.runtime.as_ref(), id, addr, &check).await
            {
                unhealthy = Some(e.to_string());
                break;
            }
        }
        let lost = if canary_serving.is_empty() || stable_serving.is_empty() {
            Some("its instances (or the live release's) did not survive the restart".to_owned())
        } else {
            unhealthy.map(|e| format!("an instance failed its health check after the restart: {e}"))
        };
        if let Some(why) = lost {
            let failure = Failure::Failed(format!(
                "canary v{} cannot resume: {why}",
                record.release_number
            ));
            self.roll_back_canary(&walk, &failure, log).await;
            let _ = self
                .platform
                .store
                .delete_canary(record.deployment_id)
                .await;
            return Err(failure);
        }
        self.drive(&walk, &desired, from, token, log).await
    }

    /// Moves a canary on: past its `pause` (or its current step) or, with `full`, straight
    /// to live. Returns false when no canary runs in `environment`.
    pub fn promote_canary(&self, environment: Uuid, full: bool) -> bool {
        let Some(running) = self.canaries.get(environment) else {
            return false;
        };
        if full {
            running
                .full
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        running
            .promotes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        running.promote.notify_waiters();
        true
    }

    /// Rolls a release out as a canary (see the module docs). Without a live release to
    /// compare with (a first deploy) or web instances to split (a static site, a worker-only
    /// app), it is an ordinary rollout, and the log says so.
    pub(crate) async fn roll_out_canary(
        &self,
        id: Uuid,
        environment: &EnvironmentRecord,
        desired: &Desired<'_>,
        policy: &Policy,
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<(), Failure> {
        let web = formation_of(desired.artifact, environment)
            .get("web")
            .copied()
            .unwrap_or(0);
        let stable_serving = self
            .engine
            .routed_backends(environment)
            .await
            .unwrap_or_default();
        let stable = match environment.live_release {
            Some(number) if web > 0 && desired.artifact.static_dir.is_none() => {
                let release = self.platform.store.release(environment.id, number).await?;
                serde_json::from_str::<Artifact>(&release.artifact_json)
                    .ok()
                    .filter(|a| a.static_dir.is_none() && !stable_serving.is_empty())
                    .map(|artifact| (number, artifact))
            }
            _ => None,
        };
        let Some((stable_release, stable_artifact)) = stable else {
            log.system("no live web release to compare a canary with: rolling out at once")
                .await;
            return self
                .roll_out(
                    id,
                    environment,
                    desired,
                    ReleaseOutcome::Superseded,
                    token,
                    log,
                    false,
                )
                .await;
        };
        let plan = self
            .engine
            .plan_canary(environment, desired, web)
            .await
            .map_err(rollout_failure)?;
        let started = self
            .engine
            .start_gated(environment, desired, &plan, token, Some(log))
            .await
            .map_err(rollout_failure)?;
        let mut canary_serving = plan.staying().to_vec();
        canary_serving.extend(started.iter().cloned());

        let (running, _registered) =
            self.register_canary(id, environment.id, desired.release, stable_release, policy);
        let recorded = match serde_json::to_string(policy) {
            Ok(policy_json) => self
                .platform
                .store
                .put_canary(&CanaryRecord {
                    deployment_id: id,
                    environment_id: environment.id,
                    release_number: desired.release,
                    stable_release,
                    policy_json,
                    step: 0,
                })
                .await
                .map_err(Failure::from),
            Err(e) => Err(Failure::from(e)),
        };
        if let Err(failure) = recorded {
            self.engine.stop_started(&started).await;
            return Err(failure);
        }
        let walk = Walk {
            deployment: id,
            environment,
            route: crate::identity::route_id(environment),
            stable: (stable_release, &stable_artifact, &stable_serving),
            canary: (desired.release, &canary_serving),
            policy,
            running,
        };
        for to in [DeploymentState::Healthy, DeploymentState::Canary] {
            if let Err(e) = self
                .platform
                .store
                .transition_deployment(id, to, None)
                .await
            {
                let failure = Failure::from(e);
                self.roll_back_canary(&walk, &failure, log).await;
                let _ = self.platform.store.delete_canary(id).await;
                return Err(failure);
            }
            log.system(format!("-----> {to}")).await;
        }
        self.drive(&walk, desired, 0, token, log).await
    }

    /// Walks the canary from step `from`, then makes it live or rolls it back; its record
    /// goes once it has ended either way.
    async fn drive(
        &self,
        walk: &Walk<'_>,
        desired: &Desired<'_>,
        from: usize,
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<(), Failure> {
        let result = match self.walk(walk, from, token, log).await {
            Ok(()) => {
                walk.set_phase("promoting");
                log.system(format!(
                    "canary v{} passed every step: it becomes the live release",
                    desired.release
                ))
                .await;
                // Past its last step the canary goes live: an abort now would race the
                // switch, so the promotion is not cancellable; if it fails, the canary is
                // rolled back like one that failed a step.
                let promoted = self
                    .roll_out(
                        walk.deployment,
                        walk.environment,
                        desired,
                        ReleaseOutcome::Superseded,
                        &CancellationToken::new(),
                        log,
                        true,
                    )
                    .await;
                if let Err(failure) = &promoted {
                    self.roll_back_canary(walk, failure, log).await;
                }
                promoted
            }
            Err(failure) => {
                self.roll_back_canary(walk, &failure, log).await;
                Err(failure)
            }
        };
        if let Err(e) = self.platform.store.delete_canary(walk.deployment).await {
            tracing::warn!(deployment = %walk.deployment, error = %e, "cannot forget an ended canary");
        }
        result
    }

    /// Walks the steps; `Ok` when the last one passed (or someone promoted it fully).
    async fn walk(
        &self,
        walk: &Walk<'_>,
        from: usize,
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<(), Failure> {
        // Resuming at a pause: the weight the steps before it reached.
        let mut weight = walk.policy.steps[..from.min(walk.policy.steps.len())]
            .iter()
            .filter_map(|step| match step {
                Step::Weight(w) => Some(*w),
                Step::Pause => None,
            })
            .next_back()
            .unwrap_or(0);
        if weight > 0 && walk.policy.steps.get(from) == Some(&Step::Pause) {
            self.engine
                .switch_split(
                    walk.environment,
                    walk.stable,
                    walk.canary,
                    weight,
                    walk.policy.sticky,
                )
                .await
                .map_err(rollout_failure)?;
        }
        for (index, step) in walk.policy.steps.iter().enumerate().skip(from) {
            if let Err(e) = self
                .platform
                .store
                .set_canary_step(walk.deployment, index as u64)
                .await
            {
                tracing::warn!(error = %e, "cannot record the canary's step");
            }
            let end = match step {
                Step::Weight(percent) => {
                    weight = *percent;
                    self.engine
                        .switch_split(
                            walk.environment,
                            walk.stable,
                            walk.canary,
                            weight,
                            walk.policy.sticky,
                        )
                        .await
                        .map_err(rollout_failure)?;
                    log.system(format!(
                        "canary: {weight} % of new requests go to v{} (judged against v{} every {} s)",
                        walk.canary.0,
                        walk.stable.0,
                        walk.policy.interval.as_secs()
                    ))
                    .await;
                    self.judge_step(walk, index, weight, token, log).await?
                }
                Step::Pause => {
                    walk.update(|s| {
                        s.step = index;
                        s.weight = weight;
                        s.phase = "paused".to_owned();
                    });
                    log.system(format!(
                        "canary: paused at {weight} %: `gilgal canary promote` goes on, `gilgal canary abort` rolls back"
                    ))
                    .await;
                    let seen = walk.promotes();
                    let until = Instant::now() + CANARY_LONGEST;
                    while walk.promotes() == seen {
                        if Instant::now() >= until {
                            return Err(Failure::Failed(
                                "the canary waited at its pause for a day without a promote"
                                    .to_owned(),
                            ));
                        }
                        tokio::select! {
                            _ = walk.running.promote.notified() => {}
                            _ = tokio::time::sleep(CHECK_EVERY) => {}
                            _ = token.cancelled() => return Err(Failure::Cancelled),
                        }
                    }
                    if walk.running.full.load(std::sync::atomic::Ordering::SeqCst) {
                        StepEnd::Promote
                    } else {
                        log.system("canary: promoted past the pause").await;
                        StepEnd::Next
                    }
                }
            };
            if matches!(end, StepEnd::Promote) {
                log.system("canary: promoted to live by request").await;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Holds one weight for the policy's interval, judging the window every second: a
    /// failed threshold ends the canary at once; passing needs the whole interval.
    async fn judge_step(
        &self,
        walk: &Walk<'_>,
        index: usize,
        weight: u32,
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<StepEnd, Failure> {
        let policy = walk.policy;
        let mut started = Instant::now();
        let seen = walk.promotes();
        // The window starts at the first snapshot the edge gives (both releases from it).
        let mut baseline = self.platform.edge.link().metrics().await.ok();
        walk.update(|s| {
            s.step = index;
            s.weight = weight;
            s.phase = "analysing".to_owned();
            s.canary = Figures::default();
            s.stable = Figures::default();
            s.step_seconds = 0;
        });
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = walk.running.promote.notified() => {}
                _ = token.cancelled() => return Err(Failure::Cancelled),
            }
            if walk.promotes() != seen {
                if walk.running.full.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(StepEnd::Promote);
                }
                log.system(format!("canary: promoted past {weight} % by request"))
                    .await;
                return Ok(StepEnd::Next);
            }
            // An unreadable edge counts as no traffic: the deadline still applies.
            let (canary, stable) = match (&baseline, self.platform.edge.link().metrics().await) {
                (Some(before), Ok(now)) => walk.figures(Some(before), &now),
                (None, Ok(now)) => {
                    baseline = Some(now);
                    started = Instant::now();
                    (Figures::default(), Figures::default())
                }
                (_, Err(_)) => (Figures::default(), Figures::default()),
            };
            let elapsed = started.elapsed();
            let verdict = judge(&canary, &stable, policy);
            walk.update(|s| {
                s.canary = canary;
                s.stable = stable;
                s.step_seconds = elapsed.as_secs();
                s.phase = match verdict {
                    Verdict::NotEnoughTraffic if elapsed >= policy.interval => {
                        "waiting for traffic".to_owned()
                    }
                    _ => "analysing".to_owned(),
                };
            });
            match verdict {
                Verdict::Fail(why) => {
                    return Err(Failure::Failed(format!(
                        "canary v{} failed at {weight} % after {} s: {why}",
                        walk.canary.0,
                        elapsed.as_secs()
                    )));
                }
                Verdict::Pass if elapsed >= policy.interval => {
                    log.system(format!(
                        "canary: {weight} % passed: v{} {} against v{} {}",
                        walk.canary.0,
                        describe(&canary),
                        walk.stable.0,
                        describe(&stable)
                    ))
                    .await;
                    return Ok(StepEnd::Next);
                }
                Verdict::NotEnoughTraffic
                    if elapsed >= policy.interval + policy.traffic_deadline =>
                {
                    let figures = format!(
                        "only {} canary requests in {} s (it needs {})",
                        canary.requests,
                        elapsed.as_secs(),
                        policy.min_requests
                    );
                    return match policy.no_traffic {
                        NoTraffic::Rollback => Err(Failure::Failed(format!(
                            "canary v{} got too little traffic at {weight} % to be judged: {figures}; rolled back (no-traffic policy: rollback)",
                            walk.canary.0
                        ))),
                        NoTraffic::Proceed => {
                            log.system(format!(
                                "canary: {figures}; going on (no-traffic policy: proceed)"
                            ))
                            .await;
                            Ok(StepEnd::Next)
                        }
                    };
                }
                _ => {}
            }
        }
    }

    /// Weight 0 at once (stable alone again), then the canary's instances drain and stop;
    /// the figures that failed go to the timeline and the alert channels.
    async fn roll_back_canary(&self, walk: &Walk<'_>, failure: &Failure, log: &DeployLog) {
        let (stable_release, stable_artifact, stable_serving) = walk.stable;
        for attempt in 1..=3 {
            match self
                .engine
                .switch_route(
                    walk.environment,
                    stable_release,
                    stable_artifact,
                    stable_serving,
                )
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, attempt, "cannot take the canary out of the route");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // Out of the route: a restart from here on must not bring it back.
        if let Err(e) = self.platform.store.delete_canary(walk.deployment).await {
            tracing::warn!(error = %e, "cannot forget a rolled-back canary");
        }
        let reason = match failure {
            Failure::Cancelled => format!("canary v{} aborted", walk.canary.0),
            Failure::Failed(reason) => reason.clone(),
        };
        log.system(format!(
            "{reason}; all traffic is back on v{stable_release}, draining the canary"
        ))
        .await;
        let leaving: Vec<_> = match self.engine.owned_instances(walk.environment).await {
            Ok(owned) => owned
                .into_iter()
                .filter(|s| s.labels.release == walk.canary.0)
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot list the canary's instances");
                Vec::new()
            }
        };
        self.engine.drain_and_stop(walk.environment, &leaving).await;
        if let Failure::Failed(reason) = failure {
            let environment = walk.environment.id;
            let message = format!("canary: {reason}");
            match self
                .platform
                .store
                .fire_alert(
                    environment,
                    "canary",
                    &message,
                    None,
                    walk.policy.max_error_rate,
                )
                .await
            {
                Ok(_) => {
                    // A canary failing is an event, not a condition that lasts: the alert
                    // resolves with the rollback, so the next canary's failure notifies too.
                    if let Ok(alerts) = self.platform.store.open_alerts().await {
                        for alert in alerts
                            .iter()
                            .filter(|a| a.environment_id == environment && a.kind == "canary")
                        {
                            let _ = self
                                .platform
                                .store
                                .resolve_alert(
                                    alert.id,
                                    &format!("rolled back to v{stable_release}"),
                                )
                                .await;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot notify about a failed canary"),
            }
        }
    }
}

impl Walk<'_> {
    fn update(&self, change: impl FnOnce(&mut CanaryStatus)) {
        match self.running.status.lock() {
            Ok(mut guard) => change(&mut guard),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }

    fn promotes(&self) -> u64 {
        self.running
            .promotes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_phase(&self, phase: &str) {
        self.update(|s| s.phase = phase.to_owned());
    }

    /// The canary's and stable's figures since `baseline`.
    fn figures(
        &self,
        baseline: Option<&MetricsSnapshot>,
        now: &MetricsSnapshot,
    ) -> (Figures, Figures) {
        let of = |release: u64| {
            let group = crate::identity::release_group(release);
            window(
                baseline.and_then(|b| b.release(&self.route, &group)),
                now.release(&self.route, &group),
            )
        };
        (of(self.canary.0), of(self.stable.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(requests_2xx: u64, errors: u64, fast: u64) -> RouteMetricsSnapshot {
        let mut latency_buckets = [0; 15];
        latency_buckets[0] = fast;
        latency_buckets[9] = requests_2xx + errors - fast;
        RouteMetricsSnapshot {
            status_classes: [0, requests_2xx, 0, 0, errors],
            latency_buckets,
            latency_sum_seconds: 0.0,
            bytes_in: 0,
            bytes_out: 0,
            open_connections: 0,
            rate_limited: 0,
        }
    }

    #[test]
    fn a_window_is_the_difference_of_two_snapshots() {
        let before = snapshot(100, 0, 100);
        let after = snapshot(290, 10, 297);
        let figures = window(Some(&before), Some(&after));
        assert_eq!(figures.requests, 200);
        assert_eq!(figures.errors, 10);
        // 197 of 200 in the fastest bucket, 3 at 0.5 s: the 99th percentile is 0.5 s.
        assert_eq!(figures.p99, Some(Duration::from_millis(500)));
        // An edge that restarted counts from zero: the window is what it counted since.
        let restarted = window(Some(&after), Some(&before));
        assert_eq!(restarted.requests, 100);
        assert_eq!(window(Some(&before), None), Figures::default());
    }
}
