//! The one rollout engine: every change to what an environment runs goes through it.
//!
//! A deploy, a rollback, a config change, a scale, a health replacement, a domain change and
//! the start-up pass after a crash all say what should run ([`Desired`]), [`RolloutEngine::plan`]
//! the difference from what runs, and [`RolloutEngine::apply`] it (or its steps in order, when
//! the caller records something between them, as a deployment does). One order, whoever calls: start what is missing → health gate → route → drain →
//! stop. A new web instance that fails its health gate never gets traffic: everything this
//! rollout started is stopped, the route is left as it was, and [`RolloutError`] says which
//! step failed and why.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use gilgal_build::Artifact;
use gilgal_core::desired::{self, Action, Observed, Slot};
use gilgal_runtime::{wait_healthy, InstanceId, InstanceStatus};
use gilgal_store::EnvironmentRecord;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{formation_of, health_check, instance_spec, DeployLog, FAILURE_TAIL_LINES};

/// What an environment should run: one release, with the environment's formation and sizes.
pub(crate) struct Desired<'a> {
    /// The release number every instance must carry.
    pub release: u64,
    /// Its build output (processes, health check, static files).
    pub artifact: &'a Artifact,
    /// Its config vars, opened.
    pub vars: &'a BTreeMap<String, String>,
    /// A canary's release running beside it: its web instances neither stay nor leave (the
    /// canary's own rollout owns them), so converging the live release never stops them.
    pub aside: Option<u64>,
}

/// A web instance the route may send traffic to, with the address the edge must use.
pub(crate) type Routable = (InstanceId, Option<SocketAddr>);

/// The step a rollout failed at, so callers and users can tell "could not start" from
/// "started but never healthy" from "could not route".
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The rollout was cancelled before it routed anything; what served keeps serving.
    #[error("cancelled")]
    Cancelled,
    /// What runs could not be read from the runtime or the store.
    #[error("cannot read what runs: {0}")]
    Observe(String),
    /// An instance could not be started.
    #[error("cannot start {slot}: {reason}")]
    Start {
        /// `web.0 of v3`.
        slot: String,
        /// Why.
        reason: String,
    },
    /// A new web instance never passed its health check: it got no traffic and was stopped.
    #[error(
        "release v{release} never became healthy ({slot}), so it got no traffic and what served kept serving: {reason}\n{tail}"
    )]
    Unhealthy {
        /// The release it belongs to.
        release: u64,
        /// `web.1`.
        slot: String,
        /// The health check's verdict.
        reason: String,
        /// The instance's last log lines.
        tail: String,
    },
    /// The proxy refused the new route.
    #[error("cannot route: {0}")]
    Route(String),
}

impl RolloutError {
    /// The same error with config secrets masked in the quoted log tail (it goes to events
    /// and API answers, which deployment logs' redaction does not cover).
    pub(crate) fn redacted(self, redactor: &gilgal_secrets::Redactor) -> Self {
        match self {
            RolloutError::Unhealthy {
                release,
                slot,
                reason,
                tail,
            } => RolloutError::Unhealthy {
                release,
                slot,
                reason: redactor.redact(&reason).into_owned(),
                tail: redactor.redact(&tail).into_owned(),
            },
            RolloutError::Start { slot, reason } => RolloutError::Start {
                slot,
                reason: redactor.redact(&reason).into_owned(),
            },
            other => other,
        }
    }
}

/// What one rollout found and will change.
pub(crate) struct Plan {
    /// Slots to fill with new instances.
    starts: Vec<Slot>,
    /// Web instances of the desired release that stay (routed alongside the new ones).
    staying: Vec<Routable>,
    /// Staying instances whose process is not the one the edge was given: the runtime
    /// restarted it (a lost instance restarted as the server re-adopted it, or a crash), so
    /// a route naming it proves nothing about the new process.
    restarted: Vec<InstanceId>,
    /// Instances to drain and stop once the route no longer names them.
    leaving: Vec<InstanceStatus>,
}

impl Plan {
    /// True when nothing has to change but (maybe) the route.
    pub(crate) fn is_converged(&self) -> bool {
        self.starts.is_empty() && self.leaving.is_empty()
    }

    /// True when the rollout starts at least one instance.
    pub(crate) fn starts_any(&self) -> bool {
        !self.starts.is_empty()
    }

    /// Web instances of the desired release that stay.
    pub(crate) fn staying(&self) -> &[Routable] {
        &self.staying
    }

    /// Instances that go once the route no longer names them.
    pub(crate) fn leaving(&self) -> &[InstanceStatus] {
        &self.leaving
    }
}

fn slot_name(slot: &Slot) -> String {
    format!("{}.{} of v{}", slot.process_type, slot.index, slot.release)
}

/// The rollout engine: converges an environment on what should run (plan, start and gate,
/// switch the route, drain and stop), for every use-case and loop that changes what runs.
#[derive(Debug)]
pub struct RolloutEngine {
    pub(crate) platform: std::sync::Arc<crate::Platform>,
}

impl RolloutEngine {
    pub(crate) fn new(platform: std::sync::Arc<crate::Platform>) -> Self {
        Self { platform }
    }

    /// Diffs what `desired` asks for against what the runtime runs for `environment`.
    /// Instances in `replace` count as gone: their slot gets a new instance and they leave
    /// once it is routed (a health replacement).
    pub(crate) async fn plan(
        &self,
        environment: &EnvironmentRecord,
        desired: &Desired<'_>,
        replace: &[InstanceId],
    ) -> Result<Plan, RolloutError> {
        let statuses: Vec<InstanceStatus> = self
            .owned_instances(environment)
            .await?
            .into_iter()
            .filter(|s| {
                !(Some(s.labels.release) == desired.aside && s.labels.process_type == "web")
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
                alive: s.state.is_active() && !replace.contains(&s.id),
            })
            .collect();
        let wanted = desired::slots(
            desired.release,
            &formation_of(desired.artifact, environment),
        );
        let mut starts = Vec::new();
        let mut stops = Vec::new();
        for action in desired::diff(&wanted, &observed) {
            match action {
                Action::Start(slot) => starts.push(slot),
                Action::Stop(id) => stops.push(id),
            }
        }
        let (leaving, staying): (Vec<_>, Vec<_>) = statuses
            .into_iter()
            .partition(|s| stops.iter().any(|id| id == s.id.as_str()));
        let staying: Vec<InstanceStatus> = staying
            .into_iter()
            .filter(|s| s.labels.release == desired.release && s.state.is_active())
            .collect();
        let restarted = staying
            .iter()
            .filter(|s| s.restarts > 0 && !s.adopted)
            .map(|s| s.id.clone())
            .collect();
        Ok(Plan {
            starts,
            staying: staying.into_iter().map(|s| (s.id, s.addr)).collect(),
            restarted,
            leaving,
        })
    }

    /// The plan of a canary: `web` instances of `desired`'s release alone, next to what
    /// serves (nothing else of the environment is touched; what serves neither stays nor leaves).
    pub(crate) async fn plan_canary(
        &self,
        environment: &EnvironmentRecord,
        desired: &Desired<'_>,
        web: u32,
    ) -> Result<Plan, RolloutError> {
        let statuses: Vec<InstanceStatus> = self
            .owned_instances(environment)
            .await?
            .into_iter()
            .filter(|s| s.labels.release == desired.release)
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
        let wanted = desired::slots(desired.release, &BTreeMap::from([("web".to_owned(), web)]));
        let mut starts = Vec::new();
        let mut stops = Vec::new();
        for action in desired::diff(&wanted, &observed) {
            match action {
                Action::Start(slot) => starts.push(slot),
                Action::Stop(id) => stops.push(id),
            }
        }
        let (leaving, staying): (Vec<_>, Vec<_>) = statuses
            .into_iter()
            .partition(|s| stops.iter().any(|id| id == s.id.as_str()));
        Ok(Plan {
            starts,
            staying: staying.into_iter().map(|s| (s.id, s.addr)).collect(),
            restarted: Vec::new(),
            leaving,
        })
    }

    /// Starts an instance for every slot the plan lacks and waits for each new web instance
    /// to pass its health check; returns every instance it started (workers without an
    /// address). On any failure (or `cancel`), every instance it started is
    /// stopped before it returns: a failed gate leaves nothing half-started and routes nothing.
    pub(crate) async fn start_gated(
        &self,
        environment: &EnvironmentRecord,
        desired: &Desired<'_>,
        plan: &Plan,
        cancel: &CancellationToken,
        log: Option<&DeployLog>,
    ) -> Result<Vec<Routable>, RolloutError> {
        let mut started: Vec<(Slot, InstanceId, Option<SocketAddr>)> = Vec::new();
        let outcome = self
            .start_and_gate(environment, desired, plan, cancel, log, &mut started)
            .await;
        let started: Vec<Routable> = started
            .into_iter()
            .map(|(_, id, addr)| (id, addr))
            .collect();
        if outcome.is_err() {
            self.stop_started(&started).await;
        }
        outcome.map(|()| started)
    }

    async fn start_and_gate(
        &self,
        environment: &EnvironmentRecord,
        desired: &Desired<'_>,
        plan: &Plan,
        cancel: &CancellationToken,
        log: Option<&DeployLog>,
        started: &mut Vec<(Slot, InstanceId, Option<SocketAddr>)>,
    ) -> Result<(), RolloutError> {
        for slot in &plan.starts {
            if cancel.is_cancelled() {
                return Err(RolloutError::Cancelled);
            }
            let start_failed = |reason: String| RolloutError::Start {
                slot: slot_name(slot),
                reason,
            };
            // Web instances listen on a port the runtime picks; their command line may name
            // it, so it is chosen before the spec is written.
            let port = if slot.process_type == "web" {
                Some(
                    self.platform
                        .runtime
                        .choose_port()
                        .map_err(|e| start_failed(e.to_string()))?,
                )
            } else {
                None
            };
            let spec = instance_spec(
                desired.artifact,
                environment,
                desired.vars,
                desired.release,
                &slot.process_type,
                slot.index,
                port,
                self.platform.run_as(),
            )
            .map_err(|e| start_failed(format!("{e:?}")))?;
            let instance = self
                .platform
                .runtime
                .start(spec)
                .await
                .map_err(|e| start_failed(e.to_string()))?;
            let id = instance.id;
            tracing::info!(app = %environment.project_name, env = %environment.name, release = slot.release, instance = %id, "instance started");
            if let Some(log) = log {
                log.system(format!(
                    "started {}.{} ({id})",
                    slot.process_type, slot.index
                ))
                .await;
            }
            started.push((slot.clone(), id, instance.addr));
        }
        let check = health_check(desired.artifact);
        for (slot, id, addr) in started.iter() {
            let Some(addr) = addr else { continue };
            let addr = self.platform.runtime.probe_addr(id, *addr).await;
            let healthy = tokio::select! {
                result = wait_healthy(self.platform.runtime.as_ref(), id, addr, &check) => result,
                _ = cancel.cancelled() => return Err(RolloutError::Cancelled),
            };
            if let Err(e) = healthy {
                let tail = self
                    .platform
                    .runtime
                    .log_tail(id, FAILURE_TAIL_LINES)
                    .await
                    .unwrap_or_default();
                return Err(RolloutError::Unhealthy {
                    release: slot.release,
                    slot: format!("{}.{}", slot.process_type, slot.index),
                    reason: e.to_string(),
                    tail: tail
                        .into_iter()
                        .map(|l| l.line)
                        .collect::<Vec<_>>()
                        .join("\n"),
                });
            }
        }
        Ok(())
    }

    /// The instances the environment's route sends traffic to now, or `None` when the edge
    /// has no route for it (after a restart, or when nothing serves).
    pub(crate) async fn routed_backends(
        &self,
        environment: &EnvironmentRecord,
    ) -> Option<Vec<Routable>> {
        let route = self
            .platform
            .edge
            .route(&crate::identity::route_id(environment))
            .await?;
        Some(match route.target {
            gilgal_proxy::RouteTarget::Upstream { backends, .. } => backends
                .into_iter()
                .filter_map(|b| Some((InstanceId::parse(&b.id).ok()?, Some(b.addr))))
                .collect(),
            _ => Vec::new(),
        })
    }

    /// Staying web instances the edge does not route yet (after a restart with a new edge
    /// the route table starts empty), or whose process the runtime restarted since (a lost
    /// instance restarted as the server re-adopted it): each must pass the health gate
    /// before it gets traffic. Returns those that fail it.
    pub(crate) async fn unproven_failing_gate(
        &self,
        environment: &EnvironmentRecord,
        desired: &Desired<'_>,
        plan: &Plan,
    ) -> Vec<InstanceId> {
        let routed: Vec<InstanceId> = self
            .routed_backends(environment)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let check = health_check(desired.artifact);
        let gates = plan
            .staying
            .iter()
            .filter(|(id, addr)| {
                addr.is_some() && (!routed.contains(id) || plan.restarted.contains(id))
            })
            .map(|(id, addr)| {
                let check = &check;
                async move {
                    let addr = self.platform.runtime.probe_addr(id, (*addr)?).await;
                    match wait_healthy(self.platform.runtime.as_ref(), id, addr, check).await {
                        Ok(()) => None,
                        Err(e) => {
                            tracing::warn!(instance = %id, error = %e, "an unrouted instance failed its health gate; it gets a successor");
                            Some(id.clone())
                        }
                    }
                }
            });
        futures_util::future::join_all(gates)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Stops instances a rollout started but will not route (a cancel after the gate).
    pub(crate) async fn stop_started(&self, started: &[Routable]) {
        for (id, _) in started {
            let _ = self.platform.runtime.stop(id, Duration::from_secs(5)).await;
            let _ = self.platform.runtime.remove(id).await;
        }
    }

    /// Points the environment's route at `serving` (or its static files). With nothing to
    /// serve, the route goes away rather than naming instances that are about to stop.
    pub(crate) async fn switch_route(
        &self,
        environment: &EnvironmentRecord,
        release: u64,
        artifact: &Artifact,
        serving: &[Routable],
    ) -> Result<(), RolloutError> {
        let domains = self
            .platform
            .store
            .domains(environment.id)
            .await
            .map_err(|e| RolloutError::Observe(e.to_string()))?;
        let route_id = crate::identity::route_id(environment);
        let mut route = self.route_for(environment, &domains, release, artifact, serving);
        if let Some(route) = &mut route {
            self.platform.edge_policy(environment.id).await.apply(route);
        }
        self.platform
            .edge
            .update(|edge| match route {
                Some(route) => {
                    edge.routes.insert(route_id, route);
                }
                None => {
                    edge.routes.remove(&route_id);
                }
            })
            .await
            .map_err(|e| RolloutError::Route(e.to_string()))
    }

    /// Splits the environment's route: `percent` of new requests to the canary's instances,
    /// the rest to stable's, each group labelled with its release (so the edge counts them
    /// apart). With `sticky`, a cookie keeps each client on the release it first got.
    pub(crate) async fn switch_split(
        &self,
        environment: &EnvironmentRecord,
        stable: (u64, &Artifact, &[Routable]),
        canary: (u64, &[Routable]),
        percent: u32,
        sticky: bool,
    ) -> Result<(), RolloutError> {
        let domains = self
            .platform
            .store
            .domains(environment.id)
            .await
            .map_err(|e| RolloutError::Observe(e.to_string()))?;
        let route_id = crate::identity::route_id(environment);
        let (stable_release, stable_artifact, stable_serving) = stable;
        let mut route = self
            .route_for(
                environment,
                &domains,
                stable_release,
                stable_artifact,
                stable_serving,
            )
            .ok_or_else(|| RolloutError::Route("nothing serves to split traffic with".into()))?;
        let gilgal_proxy::RouteTarget::Upstream { backends, split } = &mut route.target else {
            return Err(RolloutError::Route(
                "a static site has no instances to split traffic between".into(),
            ));
        };
        let canary_group = crate::identity::release_group(canary.0);
        backends.extend(canary.1.iter().filter_map(|(id, addr)| {
            addr.map(|a| gilgal_proxy::Backend::in_group(id.as_str(), a, canary_group.clone()))
        }));
        *split = Some(gilgal_proxy::WeightedSplit {
            primary_group: crate::identity::release_group(stable_release),
            canary_group,
            canary_basis_points: percent.min(100) * 100,
            sticky_cookie: sticky.then(|| "gilgal-release".to_owned()),
        });
        self.platform
            .edge_policy(environment.id)
            .await
            .apply(&mut route);
        self.platform
            .edge
            .update(|edge| {
                edge.routes.insert(route_id, route);
            })
            .await
            .map_err(|e| RolloutError::Route(e.to_string()))
    }

    /// Routes `host` alone to `serving` (a release's private hostname, `route_id` apart from
    /// the environment's route), without the environment's domains or edge policy.
    pub(crate) async fn switch_private_route(
        &self,
        route_id: &str,
        host: &str,
        release: u64,
        serving: &[Routable],
    ) -> Result<(), RolloutError> {
        let group = crate::identity::release_group(release);
        let backends = serving
            .iter()
            .filter_map(|(id, addr)| {
                addr.map(|a| gilgal_proxy::Backend::in_group(id.as_str(), a, group.clone()))
            })
            .collect();
        let route = gilgal_proxy::RouteSpec::upstream(route_id, vec![host.to_owned()], backends);
        self.platform
            .edge
            .update(|edge| {
                edge.routes.insert(route_id.to_owned(), route);
            })
            .await
            .map_err(|e| RolloutError::Route(e.to_string()))
    }

    /// Removes a private route.
    pub(crate) async fn remove_private_route(&self, route_id: &str) -> Result<(), RolloutError> {
        self.platform
            .edge
            .update(|edge| {
                edge.routes.remove(route_id);
            })
            .await
            .map_err(|e| RolloutError::Route(e.to_string()))
    }

    /// Drains every leaving web instance at once (each with its own release's grace period;
    /// WebSockets are closed right away), then stops and forgets every leaving instance.
    pub(crate) async fn drain_and_stop(
        &self,
        environment: &EnvironmentRecord,
        leaving: &[InstanceStatus],
    ) {
        let releases: BTreeSet<u64> = leaving.iter().map(|s| s.labels.release).collect();
        let mut graces: BTreeMap<u64, Duration> = BTreeMap::new();
        for release in releases {
            graces.insert(release, self.grace_period_of(environment, release).await);
        }
        let grace_of = |release: u64| {
            graces
                .get(&release)
                .copied()
                .unwrap_or(crate::pipeline::DEFAULT_GRACE)
        };
        let drains = leaving.iter().filter(|s| s.port.is_some()).map(|status| {
            let grace = grace_of(status.labels.release);
            async move {
                let outcome = self
                    .platform
                    .edge
                    .link()
                    .wait_drained(status.id.as_str(), grace)
                    .await;
                tracing::info!(instance = %status.id, ?outcome, "drained");
            }
        });
        futures_util::future::join_all(drains).await;
        for status in leaving {
            let _ = self
                .platform
                .runtime
                .stop(&status.id, grace_of(status.labels.release))
                .await;
            let _ = self.platform.runtime.remove(&status.id).await;
        }
    }

    /// Converges an environment being deleted to nothing: its route goes first, then every
    /// instance it owns drains and stops under the same policy as a rollout's leaving ones.
    pub(crate) async fn converge_to_nothing(
        &self,
        environment: &EnvironmentRecord,
    ) -> Result<(), RolloutError> {
        self.platform
            .edge
            .update(|edge| {
                edge.routes.remove(&crate::identity::route_id(environment));
            })
            .await
            .map_err(|e| RolloutError::Route(e.to_string()))?;
        let owned = self.owned_instances(environment).await?;
        self.drain_and_stop(environment, &owned).await;
        Ok(())
    }

    /// Every instance the runtime runs (or ran) for `environment`.
    pub(crate) async fn owned_instances(
        &self,
        environment: &EnvironmentRecord,
    ) -> Result<Vec<InstanceStatus>, RolloutError> {
        Ok(self
            .platform
            .runtime
            .list()
            .await
            .map_err(|e| RolloutError::Observe(e.to_string()))?
            .into_iter()
            .filter(|status| crate::identity::owns(environment, &status.labels))
            .collect())
    }

    /// Carries out a plan made by [`RolloutEngine::plan`]: start and gate, route, drain, stop.
    /// Idempotent: applying the plan of a converged environment only re-applies its route.
    pub(crate) async fn apply(
        &self,
        environment: &EnvironmentRecord,
        desired: &Desired<'_>,
        plan: &Plan,
    ) -> Result<(), RolloutError> {
        let started = match self
            .start_gated(environment, desired, plan, &CancellationToken::new(), None)
            .await
        {
            Ok(started) => started,
            Err(e) => {
                // One slot that cannot be filled must not keep the healthy ones off the edge:
                // with no route yet (after a restart), those that stay are routed anyway
                // (unrouted ones passed their gate in `unproven_failing_gate`).
                if self.routed_backends(environment).await.is_none() {
                    if let Err(route) = self
                        .switch_route(
                            environment,
                            desired.release,
                            desired.artifact,
                            &plan.staying,
                        )
                        .await
                    {
                        tracing::warn!(error = %route, "cannot route the instances that stay");
                    }
                }
                return Err(e);
            }
        };
        let mut serving = plan.staying.clone();
        serving.extend(started.iter().cloned());
        if let Err(e) = self
            .switch_route(environment, desired.release, desired.artifact, &serving)
            .await
        {
            self.stop_started(&started).await;
            return Err(e);
        }
        self.drain_and_stop(environment, &plan.leaving).await;
        if !plan.is_converged() {
            tracing::info!(app = %environment.project_name, env = %environment.name, release = desired.release, started = plan.starts.len(), stopped = plan.leaving.len(), "environment converged");
        }
        Ok(())
    }
}
