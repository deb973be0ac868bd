//! Blue-green deploys: the new release's web instances start beside the live ones and are
//! routed on a private hostname (`v8.NAME.base`) only; its smoke checks must pass there
//! before the ordinary rollout moves all traffic. A failing check leaves the live release
//! serving, untouched: the new instances stop and the private route goes.

use std::time::Duration;

use gilgal_core::lifecycle::{DeploymentState, ReleaseOutcome};
use gilgal_core::smoke::SmokeCheck;
use gilgal_store::EnvironmentRecord;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::converge::{Desired, Routable};
use crate::pipeline::{formation_of, rollout_failure, DeployLog, Failure};
use crate::Deployments;

/// How long one smoke request may take.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The private hostname of release `number`: `v8.` before the environment's own hostname.
pub(crate) fn private_hostname(environment: &EnvironmentRecord, base: &str, number: u64) -> String {
    format!(
        "v{number}.{}",
        gilgal_core::hostnames::default_hostname(
            &environment.project_name,
            &environment.name,
            base
        )
    )
}

impl Deployments {
    /// Rolls a release out blue-green (see the module docs). Without web instances to check
    /// (a static site, a worker-only app) it is an ordinary rollout, and the log says so.
    pub(crate) async fn roll_out_blue_green(
        &self,
        id: Uuid,
        environment: &EnvironmentRecord,
        desired: &Desired<'_>,
        smoke: &[SmokeCheck],
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<(), Failure> {
        let web = formation_of(desired.artifact, environment)
            .get("web")
            .copied()
            .unwrap_or(0);
        if web == 0 || desired.artifact.static_dir.is_some() {
            log.system("no web instances to check on a private hostname: rolling out at once")
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
        }
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
        let mut serving = plan.staying().to_vec();
        serving.extend(started.iter().cloned());
        let host = private_hostname(
            environment,
            &self.platform.config.base_domain,
            desired.release,
        );
        let route_id = format!(
            "{}/v{}",
            crate::identity::route_id(environment),
            desired.release
        );
        let checked = async {
            self.platform
                .store
                .transition_deployment(id, DeploymentState::Healthy, None)
                .await?;
            log.system(format!("-----> {}", DeploymentState::Healthy))
                .await;
            self.engine
                .switch_private_route(&route_id, &host, desired.release, &serving)
                .await
                .map_err(rollout_failure)?;
            let url = match self.platform.config.public_port {
                Some(80) | None => format!("http://{host}"),
                Some(port) => format!("http://{host}:{port}"),
            };
            log.system(format!(
                "v{} answers at {url} before it gets any traffic; smoke checks: {}",
                desired.release,
                if smoke.is_empty() {
                    "none (its health check passed)".to_owned()
                } else {
                    smoke
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))
            .await;
            self.smoke(&host, &serving, smoke, token, log).await
        }
        .await;
        if let Err(e) = self.engine.remove_private_route(&route_id).await {
            tracing::warn!(route = %route_id, error = %e, "cannot remove a private route");
        }
        if let Err(failure) = checked {
            self.engine.stop_started(&started).await;
            return Err(failure);
        }
        let result = self
            .roll_out(
                id,
                environment,
                desired,
                ReleaseOutcome::Superseded,
                token,
                log,
                true,
            )
            .await;
        if result.is_err() {
            self.engine.stop_started(&started).await;
        }
        result
    }

    /// Runs every smoke check against every new web instance, with the private hostname as
    /// `Host`; the first wrong answer fails the deploy, naming it.
    async fn smoke(
        &self,
        host: &str,
        serving: &[Routable],
        checks: &[SmokeCheck],
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<(), Failure> {
        if checks.is_empty() {
            return Ok(());
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(SMOKE_TIMEOUT)
            .build()
            .map_err(|e| Failure::Failed(format!("cannot make the smoke checks' client: {e}")))?;
        for check in checks {
            for (index, (instance, addr)) in serving.iter().enumerate() {
                let Some(addr) = addr else { continue };
                if token.is_cancelled() {
                    return Err(Failure::Cancelled);
                }
                let addr = self.platform.runtime.probe_addr(instance, *addr).await;
                let method = reqwest::Method::from_bytes(check.method.as_bytes())
                    .unwrap_or(reqwest::Method::GET);
                let answer = http
                    .request(method, format!("http://{addr}{}", check.path))
                    .header(reqwest::header::HOST, host)
                    .send()
                    .await;
                let status = match answer {
                    Ok(response) => response.status().as_u16(),
                    Err(e) => {
                        return Err(Failure::Failed(format!(
                            "smoke check {check} failed on web.{index}: no answer ({e}); the live release kept serving"
                        )))
                    }
                };
                if status != check.status {
                    return Err(Failure::Failed(format!(
                        "smoke check {check} failed on web.{index}: it answered {status}; the live release kept serving"
                    )));
                }
            }
            log.system(format!("smoke check {check}: passed")).await;
        }
        Ok(())
    }
}
