//! After the deploy: running web instances keep being health-checked; an instance that fails
//! its check `failure_threshold` times in a row (3 by default) is replaced, and every check
//! adds to the environment's uptime record. Runtime events (crashes with their exit code or
//! OOM, restarts, instances lost while the server was down) and deploy outcomes go to the
//! environment's events timeline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gilgal_build::Artifact;
use gilgal_runtime::{health, InstanceId, InstanceState, RuntimeEvent, RuntimeEventKind};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::logs::Environments;
use crate::pipeline::{formation_of, health_check, RELEASE_PROCESS};
use crate::runs::RUN_PROCESS;
use crate::Platform;

/// Health minutes and events older than this are deleted (uptime is reported up to 30 days).
const KEEP_DAYS: i64 = 90;
/// How often old health minutes and events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How often running web instances are checked when the server does not say.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);

fn who(labels: &gilgal_runtime::InstanceLabels) -> String {
    format!(
        "{}.{} (v{})",
        labels.process_type, labels.index, labels.release
    )
}

/// The timeline entry for a runtime event, if it is one worth keeping.
fn describe(event: &RuntimeEvent) -> Option<(&'static str, String)> {
    let who = who(&event.labels);
    match &event.kind {
        RuntimeEventKind::Exited(exit) if exit.oom_killed => Some((
            "oom",
            format!("{who} was killed by the kernel's OOM killer (out of memory)"),
        )),
        RuntimeEventKind::Exited(exit) => {
            let how = match (exit.code, exit.signal) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => "exited (status unknown)".to_owned(),
            };
            Some(("crash", format!("{who} {how}")))
        }
        RuntimeEventKind::Lost { reason } => Some(("crash", format!("{who} was lost: {reason}"))),
        RuntimeEventKind::SpawnFailed { error } => {
            Some(("crash", format!("{who} could not be started: {error}")))
        }
        RuntimeEventKind::Started { restarts, .. } if *restarts > 0 => {
            Some(("restart", format!("{who} restarted (restart {restarts})")))
        }
        _ => None,
    }
}

/// Whether `status` is a running web instance of `environment`'s release `release`: what
/// the health watch probes and app metrics are read from. Crashed instances waiting for
/// their restart (Backoff) are the runtime's to handle.
pub(crate) fn is_running_web(
    status: &gilgal_runtime::InstanceStatus,
    environment: &gilgal_store::EnvironmentRecord,
    release: u64,
) -> bool {
    crate::identity::owns(environment, &status.labels)
        && status.labels.release == release
        && status.labels.process_type == "web"
        && status.state == InstanceState::Running
}

/// Environments whose convergence failed: when the watch may try again, and the delay that
/// led there (doubled on each failure).
type Retries = HashMap<Uuid, (Instant, Duration)>;
/// The first delay before re-converging an environment whose convergence failed.
const FIRST_RETRY: Duration = Duration::from_secs(10);
/// The longest such delay.
const LONGEST_RETRY: Duration = Duration::from_secs(300);

impl Platform {
    /// Seconds since the health watch last finished a round (`None` before the first): how
    /// far behind the running instances the reconciler's view may be.
    pub fn reconciler_lag(&self) -> Option<Duration> {
        self.last_health_round
            .lock()
            .ok()
            .and_then(|at| at.map(|at| at.elapsed()))
    }

    /// Appends to an environment's events timeline (failures are logged, never raised: the
    /// timeline must not break what it records).
    pub(crate) async fn event(&self, environment: Uuid, kind: &str, message: String) {
        if let Err(e) = self.store.record_event(environment, kind, &message).await {
            tracing::warn!(%environment, kind, error = %e, "cannot record an event");
        }
    }
}

/// The loop that records the runtime's events (exits, restarts, OOM kills) on
/// environments' timelines.
#[derive(Debug)]
pub struct EventRecorder {
    pub(crate) platform: Arc<crate::Platform>,
    /// Subscribed at construction, so nothing reported before the loop starts is missed.
    pub(crate) runtime_events:
        std::sync::Mutex<Option<tokio::sync::broadcast::Receiver<RuntimeEvent>>>,
}

impl EventRecorder {
    pub(crate) fn new(platform: Arc<crate::Platform>) -> Self {
        Self {
            runtime_events: std::sync::Mutex::new(Some(platform.runtime.subscribe_events())),
            platform,
        }
    }

    /// Records runtime events of long-running instances (not one-off runs or release phases)
    /// in their environment's timeline until `stop`.
    pub async fn run_event_recorder(self: &Arc<Self>, stop: CancellationToken) {
        let receiver = match self.runtime_events.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        let Some(mut receiver) = receiver else {
            return;
        };
        let mut environments = Environments::default();
        let recovered = self.platform.runtime.take_recovery_events();
        let mut backlog = recovered.into_iter();
        loop {
            let event = match backlog.next() {
                Some(event) => event,
                None => tokio::select! {
                    _ = stop.cancelled() => break,
                    received = receiver.recv() => match received {
                        Ok(event) => event,
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "the event recorder fell behind the runtime");
                            continue;
                        }
                        Err(RecvError::Closed) => break,
                    },
                },
            };
            let process = event.labels.process_type.as_str();
            if process == RUN_PROCESS || process == RELEASE_PROCESS {
                continue;
            }
            let Some((kind, message)) = describe(&event) else {
                continue;
            };
            if let Some(environment) = environments
                .resolve(&self.platform.store, &event.labels.app, &event.labels.env)
                .await
            {
                self.platform.event(environment, kind, message).await;
            }
        }
    }
}

/// The loop that health-checks running web instances and keeps every environment
/// converged on its desired state (replacing what failed or drifted).
#[derive(Debug)]
pub struct HealthWatch {
    pub(crate) platform: Arc<crate::Platform>,
    pub(crate) engine: Arc<crate::RolloutEngine>,
}

impl HealthWatch {
    pub(crate) fn new(platform: Arc<crate::Platform>, engine: Arc<crate::RolloutEngine>) -> Self {
        Self { platform, engine }
    }

    /// Health-checks every running web instance of each live release every
    /// `PlatformConfig::health_interval` until `stop`; records uptime and replaces instances
    /// that keep failing.
    pub async fn run_health_watch(self: &Arc<Self>, stop: CancellationToken) {
        let mut failures: HashMap<InstanceId, (Option<u32>, u32)> = HashMap::new();
        let mut retries: Retries = HashMap::new();
        let mut last_prune: Option<std::time::Instant> = None;
        loop {
            if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(std::time::Instant::now());
                match self.platform.store.prune_health_and_events(KEEP_DAYS).await {
                    Ok(0) => {}
                    Ok(rows) => tracing::info!(rows, "old health minutes and events pruned"),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot prune old health minutes and events")
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.platform.config.health_interval) => {}
            }
            match self.check_health_once(&mut failures).await {
                Ok(()) => {
                    if let Ok(mut at) = self.platform.last_health_round.lock() {
                        *at = Some(std::time::Instant::now());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "health round failed"),
            }
            if let Err(e) = self.converge_drifted(&mut retries).await {
                tracing::warn!(error = %e, "convergence round failed");
            }
        }
    }

    /// Converges every live environment that runs fewer instances than its formation asks
    /// (an instance its runtime gave up on, or one whose successor failed its health gate
    /// after a restart), through the rollout engine. One that keeps failing is retried with
    /// a doubling delay, and each failure is recorded on its timeline. Environments with a
    /// change in progress are left to it.
    async fn converge_drifted(self: &Arc<Self>, retries: &mut Retries) -> Result<(), String> {
        let environments = self
            .platform
            .store
            .live_environments()
            .await
            .map_err(|e| e.to_string())?;
        let statuses = self
            .platform
            .runtime
            .list()
            .await
            .map_err(|e| e.to_string())?;
        let now = Instant::now();
        retries.retain(|id, _| environments.iter().any(|e| e.id == *id));
        for environment in environments {
            let Some(number) = environment.live_release else {
                continue;
            };
            if retries
                .get(&environment.id)
                .is_some_and(|(at, _)| now < *at)
            {
                continue;
            }
            let Ok(release) = self.platform.store.release(environment.id, number).await else {
                continue;
            };
            let Ok(artifact) = serde_json::from_str::<Artifact>(&release.artifact_json) else {
                continue;
            };
            let mut running: HashMap<&str, u32> = HashMap::new();
            for status in statuses.iter().filter(|s| {
                crate::identity::owns(&environment, &s.labels)
                    && s.labels.release == number
                    && s.state.is_active()
            }) {
                *running
                    .entry(status.labels.process_type.as_str())
                    .or_default() += 1;
            }
            let missing: Vec<String> = formation_of(&artifact, &environment)
                .into_iter()
                .filter_map(|(process_type, count)| {
                    let have = running.get(process_type.as_str()).copied().unwrap_or(0);
                    (have < count).then(|| format!("{process_type} {have}/{count}"))
                })
                .collect();
            if missing.is_empty() {
                retries.remove(&environment.id);
                continue;
            }
            let lock = self.platform.environment_lock(environment.id);
            let Ok(_no_change_in_progress) = lock.try_lock() else {
                continue;
            };
            let Ok(Some(current)) = self.engine.live_environment(environment.id).await else {
                continue;
            };
            match self.engine.reconcile_environment(&current, &[]).await {
                Ok(()) => {
                    retries.remove(&environment.id);
                    self.platform
                        .event(
                            environment.id,
                            "health",
                            format!("restored missing instances ({})", missing.join(", ")),
                        )
                        .await;
                }
                Err(e) => {
                    let delay = retries
                        .get(&environment.id)
                        .map_or(FIRST_RETRY, |(_, delay)| (*delay * 2).min(LONGEST_RETRY));
                    retries.insert(environment.id, (Instant::now() + delay, delay));
                    self.platform
                        .event(
                            environment.id,
                            "health",
                            format!(
                                "cannot restore missing instances ({}); next try in {}s: {e}",
                                missing.join(", "),
                                delay.as_secs()
                            ),
                        )
                        .await;
                }
            }
        }
        Ok(())
    }

    async fn check_health_once(
        self: &Arc<Self>,
        failures: &mut HashMap<InstanceId, (Option<u32>, u32)>,
    ) -> Result<(), String> {
        let environments = self
            .platform
            .store
            .live_environments()
            .await
            .map_err(|e| e.to_string())?;
        let statuses = self
            .platform
            .runtime
            .list()
            .await
            .map_err(|e| e.to_string())?;
        let mut seen = Vec::new();
        let mut checked = Vec::new();
        for environment in environments {
            let Some(number) = environment.live_release else {
                continue;
            };
            let Ok(release) = self.platform.store.release(environment.id, number).await else {
                continue;
            };
            let Ok(artifact) = serde_json::from_str::<Artifact>(&release.artifact_json) else {
                continue;
            };
            if !artifact.processes.iter().any(|p| p.process_type.is_web()) {
                continue;
            }
            checked.push(environment.id);
            let check = health_check(&artifact);
            let mut any_up = false;
            let mut streak = 0;
            let mut replace = Vec::new();
            for status in statuses
                .iter()
                .filter(|s| is_running_web(s, &environment, number))
            {
                let Some(published) = status.addr else {
                    continue;
                };
                seen.push(status.id.clone());
                let addr = self
                    .platform
                    .runtime
                    .probe_addr(&status.id, published)
                    .await;
                match health::probe(addr, &check.probe, check.timeout).await {
                    Ok(()) => {
                        any_up = true;
                        failures.remove(&status.id);
                    }
                    Err(e) => {
                        // A restart by the runtime (new pid) starts the count over.
                        let (pid, count) =
                            failures.entry(status.id.clone()).or_insert((status.pid, 0));
                        if *pid != status.pid {
                            *pid = status.pid;
                            *count = 0;
                        }
                        *count += 1;
                        streak = streak.max(*count);
                        // At the threshold, and every round after it while a rollout
                        // holds the environment and the replacement has to wait.
                        if *count >= check.failure_threshold.max(1) {
                            replace.push((status.id.clone(), who(&status.labels), e.to_string()));
                        }
                    }
                }
            }
            self.platform.note_health_streak(environment.id, streak);
            if let Err(e) = self
                .platform
                .store
                .record_health_check(environment.id, any_up)
                .await
            {
                tracing::warn!(environment = %environment.id, error = %e, "cannot record a health check");
            }
            for (id, who, error) in replace {
                // A rollout owns the environment (a canary can hold it for hours): the
                // replacement waits for the next round, and checks of every other
                // environment never wait for it.
                let lock = self.platform.environment_lock(environment.id);
                let Ok(held) = lock.try_lock_owned() else {
                    continue;
                };
                self.platform
                    .event(
                        environment.id,
                        "health",
                        format!(
                        "{who} failed its health check {} times in a row ({error}); replacing it",
                        check.failure_threshold.max(1)
                    ),
                    )
                    .await;
                self.replace_instance(environment.id, &id, held).await;
                failures.remove(&id);
            }
        }
        failures.retain(|id, _| seen.contains(id));
        self.platform.clear_health_streaks_except(&checked);
        Ok(())
    }

    /// Replaces an unhealthy instance through the rollout engine: a successor starts in its
    /// slot and passes its health check, takes its place in the route, and only then does
    /// the sick one drain and stop. A successor that fails its gate gets no traffic; the
    /// sick instance stays (its failures are counted again) and the failure is recorded.
    async fn replace_instance(
        self: &Arc<Self>,
        environment: Uuid,
        id: &InstanceId,
        _one_change_at_a_time: tokio::sync::OwnedMutexGuard<()>,
    ) {
        let Ok(Some(current)) = self.engine.live_environment(environment).await else {
            return;
        };
        if let Err(e) = self
            .engine
            .reconcile_environment(&current, std::slice::from_ref(id))
            .await
        {
            tracing::warn!(%environment, error = %e, "replacing an unhealthy instance failed");
            self.platform
                .event(environment, "health", format!("replacing {id} failed: {e}"))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gilgal_runtime::{ExitInfo, InstanceLabels};

    fn event(kind: RuntimeEventKind) -> RuntimeEvent {
        RuntimeEvent {
            instance: InstanceId::parse("i-1").unwrap(),
            labels: InstanceLabels {
                app: "shop".into(),
                env: "production".into(),
                release: 3,
                process_type: "web".into(),
                index: 1,
            },
            at: time::OffsetDateTime::UNIX_EPOCH,
            kind,
        }
    }

    fn exit(code: Option<i32>, signal: Option<i32>, oom: bool) -> ExitInfo {
        ExitInfo {
            code,
            signal,
            oom_killed: oom,
            at: time::OffsetDateTime::UNIX_EPOCH,
            uptime: None,
            note: None,
        }
    }

    #[test]
    fn runtime_events_become_timeline_entries() {
        let d = |k| describe(&event(k));
        assert_eq!(
            d(RuntimeEventKind::Exited(exit(Some(3), None, false))),
            Some(("crash", "web.1 (v3) exited with code 3".to_owned()))
        );
        assert_eq!(
            d(RuntimeEventKind::Exited(exit(None, Some(9), true))),
            Some((
                "oom",
                "web.1 (v3) was killed by the kernel's OOM killer (out of memory)".to_owned()
            ))
        );
        assert_eq!(
            d(RuntimeEventKind::Started {
                pid: 7,
                restarts: 2
            }),
            Some(("restart", "web.1 (v3) restarted (restart 2)".to_owned()))
        );
        assert_eq!(
            d(RuntimeEventKind::Started {
                pid: 7,
                restarts: 0
            }),
            None
        );
        assert_eq!(
            d(RuntimeEventKind::Stopped(exit(Some(0), None, false))),
            None
        );
    }
}
