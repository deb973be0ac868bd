//! The canary in progress in an environment: its status, `promote` and `abort`.

use super::*;
use gilgal_types::{CanaryFigures, CanaryPromoteRequest, CanaryStatus};

/// Routes of this resource.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(canary_status))
        .routes(routes!(promote_canary))
        .routes(routes!(abort_canary))
}

fn figures(f: &gilgal_core::canary::Figures) -> CanaryFigures {
    CanaryFigures {
        requests: f.requests,
        errors: f.errors,
        error_rate: f.error_rate(),
        p99_seconds: f.p99.map(|d| d.as_secs_f64()),
    }
}

fn no_canary() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "no_canary",
        "no canary is in progress in this environment (start one with `gilgal deploy --canary 10,25,50,100`)",
    )
}

/// Where the canary in progress stands: its step and weight, and the canary's and the live
/// release's figures over the current step's window; `null` when none is in progress.
#[utoipa::path(get, path = "/api/environments/{id}/canary", tag = "releases",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "The canary in progress, or null", body = Option<CanaryStatus>),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn canary_status(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Option<CanaryStatus>>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    Ok(Json(
        state
            .deployments()
            .canary_status(environment.id)
            .map(wire_status),
    ))
}

fn wire_status(status: gilgal_deploy::CanaryStatus) -> CanaryStatus {
    CanaryStatus {
        deployment_id: status.deployment,
        release: status.release,
        stable_release: status.stable_release,
        steps: status.steps,
        step: status.step,
        weight: status.weight,
        phase: status.phase,
        step_seconds: status.step_seconds,
        canary: figures(&status.canary),
        stable: figures(&status.stable),
    }
}

/// Moves the canary on: past its pause or current step, or (`full`) straight to live.
#[utoipa::path(post, path = "/api/environments/{id}/canary/promote", tag = "releases",
    params(("id" = String, Path, description = "Environment id")),
    request_body = CanaryPromoteRequest,
    responses(
        (status = 202, description = "Promoting; the deployment goes on", body = CanaryStatus),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 409, description = "No canary in progress", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn promote_canary(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<CanaryPromoteRequest>,
) -> Result<(StatusCode, Json<CanaryStatus>), ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    if !state
        .deployments()
        .promote_canary(environment.id, body.full)
    {
        return Err(no_canary());
    }
    let status = state
        .deployments()
        .canary_status(environment.id)
        .ok_or_else(no_canary)?;
    Ok((StatusCode::ACCEPTED, Json(wire_status(status))))
}

/// Rolls the canary back: its weight goes to 0 at once, its instances drain and stop, and
/// its deployment ends cancelled. The live release is untouched.
#[utoipa::path(post, path = "/api/environments/{id}/canary/abort", tag = "releases",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 202, description = "Rolling back; follow the deployment", body = gilgal_types::Deployment),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 409, description = "No canary in progress", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn abort_canary(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<gilgal_types::Deployment>), ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let status = state
        .deployments()
        .canary_status(environment.id)
        .ok_or_else(no_canary)?;
    state.deployments().cancel(status.deployment);
    accepted(&state, &caller, status.deployment).await
}
