//! Environments, as the spec names them, and what each one owns: config vars and secrets,
//! releases with rollback and promotion, process formation, one-off runs and cron jobs.
//! Another user's environment, run or job is a 404.

mod canary;
mod config;
mod cron;
mod domains;
mod edge;
mod formation;
mod releases;
mod runs;

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gilgal_deploy::{ConfigEdit, ConfigSnapshot, DeployError, QuotaError, RunRequest as Oneoff};
use gilgal_store::{
    ConfigVarRecord, CronJobRecord, EnvironmentRecord, ProcessSizeRecord, RunRecord, StoreError,
};
use gilgal_types::{
    ConfigChanged, ConfigUpdate, ConfigVar, CronJob, CronJobRequest, DeploymentLogLine, DnsLabel,
    Domain, DomainRequest, Environment, EnvironmentRequest, ErrorBody, Formation, FormationUpdate,
    ProcessSize, PromoteRequest, Release, ReleaseOutcome, RollbackRequest, Run, RunRequest,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::extract::{parse_path_id, ApiQuery, AuthUser, JsonBody};
use crate::routes::deployments::LogsQuery;
use crate::{ApiError, AppState};

/// Most one-off runs running at once in one environment (each is a process of the app).
pub const MAX_RUNNING_RUNS_PER_ENVIRONMENT: u64 = 5;
/// Most runs running at once across one owner's (team's or user's) projects.
pub const MAX_RUNNING_RUNS_PER_OWNER: u64 = 20;

/// Routes of this module: the environments themselves, then one sub-module per resource
/// they own.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_environments, create_environment))
        .routes(routes!(update_environment, delete_environment))
        .merge(config::routes())
        .merge(releases::routes())
        .merge(canary::routes())
        .merge(formation::routes())
        .merge(runs::routes())
        .merge(cron::routes())
        .merge(domains::routes())
        .merge(edge::routes())
}
fn environment_error(err: StoreError) -> ApiError {
    match err {
        StoreError::NotFound => ApiError::not_found("environment"),
        StoreError::Conflict(what) => ApiError::new(
            StatusCode::CONFLICT,
            "name_taken",
            format!("{what} already exists; pick another name"),
        ),
        other => other.into(),
    }
}

/// The service's errors as HTTP answers, in one place: a malformed request is 422, one the
/// situation refuses 409, a quota 429 with `Retry-After` (`deploy_quota`, `build_quota`).
pub(crate) fn deploy_error(err: DeployError) -> ApiError {
    match err {
        DeployError::Invalid(message) => {
            ApiError::new(StatusCode::CONFLICT, "not_possible", message)
        }
        DeployError::Rejected(message) => ApiError::invalid(message),
        DeployError::Quota(quota) => {
            let code = match quota {
                QuotaError::DeploysPerHour { .. } => "deploy_quota",
                QuotaError::ConcurrentBuilds { .. } => "build_quota",
            };
            ApiError::too_many(code, quota.to_string(), quota.retry_after())
        }
        DeployError::Store(StoreError::NotFound) => ApiError::not_found("release"),
        DeployError::Rollout(e @ gilgal_deploy::RolloutError::Unhealthy { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "not_healthy", e.to_string())
        }
        other => ApiError::internal(&other),
    }
}

fn to_wire(state: &AppState, record: EnvironmentRecord) -> Environment {
    Environment {
        url: state.platform().url(&record.project_name, &record.name),
        id: record.id,
        project_id: record.project_id,
        name: record.name,
        live_release: record.live_release,
        formation: record.formation,
    }
}

pub(crate) async fn owned_environment(
    state: &AppState,
    caller: &AuthUser,
    id: &str,
) -> Result<EnvironmentRecord, ApiError> {
    let id = parse_path_id(id, "environment")?;
    let environment = state
        .store()
        .environment_of(caller.user.id, id)
        .await
        .map_err(environment_error)?;
    caller.check_scope(environment.project_id, Some(environment.id), "environment")?;
    crate::routes::teams::require_for_method(state, caller, environment.project_id).await?;
    Ok(environment)
}

fn environment_name(name: &str) -> Result<String, ApiError> {
    let label = DnsLabel::parse_as(name, "environment name")
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    if label.as_str().len() > 30 {
        return Err(ApiError::invalid(
            "environment name must be at most 30 characters (it becomes part of a hostname)",
        ));
    }
    Ok(label.as_str().to_owned())
}

/// The project's environments.
#[utoipa::path(get, path = "/api/projects/{id}/environments", tag = "environments",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "Environments by name", body = Vec<Environment>),
        (status = 404, description = "No such project", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_environments(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<Environment>>, ApiError> {
    let project_id = parse_path_id(&id, "project")?;
    caller.check_project(project_id, "project")?;
    let list = state
        .store()
        .list_environments(caller.user.id, project_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("project"),
            other => other.into(),
        })?;
    Ok(Json(
        list.into_iter()
            .filter(|e| {
                caller
                    .check_scope(e.project_id, Some(e.id), "environment")
                    .is_ok()
            })
            .map(|e| to_wire(&state, e))
            .collect(),
    ))
}

/// Add an environment (`staging`, `preview-42`, …); it is served at `{project}-{name}`.
#[utoipa::path(post, path = "/api/projects/{id}/environments", tag = "environments",
    params(("id" = String, Path, description = "Project id")),
    request_body = EnvironmentRequest,
    responses(
        (status = 201, description = "Created", body = Environment),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 422, description = "Invalid name", body = ErrorBody),
        (status = 404, description = "No such project", body = ErrorBody),
        (status = 409, description = "Name or hostname taken", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_environment(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<EnvironmentRequest>,
) -> Result<(StatusCode, Json<Environment>), ApiError> {
    let project_id = parse_path_id(&id, "project")?;
    caller.check_scope(project_id, None, "project")?;
    crate::routes::teams::require_role(&state, &caller, project_id, gilgal_types::Role::Admin)
        .await
        .map_err(|e| match e.status() {
            StatusCode::NOT_FOUND => ApiError::not_found("project"),
            _ => e,
        })?;
    let body = body.parse()?;
    let name = environment_name(&body.name)?;
    let created = state
        .store()
        .create_environment(caller.user.id, project_id, &name)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("project"),
            other => environment_error(other),
        })?;
    Ok((StatusCode::CREATED, Json(to_wire(&state, created))))
}

/// Rename an environment (its hostname follows; what runs is re-routed).
#[utoipa::path(put, path = "/api/environments/{id}", tag = "environments",
    params(("id" = String, Path, description = "Environment id")),
    request_body = EnvironmentRequest,
    responses(
        (status = 200, description = "Renamed", body = Environment),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 409, description = "Name taken, or it is production", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn update_environment(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<EnvironmentRequest>,
) -> Result<Json<Environment>, ApiError> {
    let current = owned_environment(&state, &caller, &id).await?;
    crate::routes::teams::require_role(
        &state,
        &caller,
        current.project_id,
        gilgal_types::Role::Admin,
    )
    .await?;
    let body = body.parse()?;
    let name = environment_name(&body.name)?;
    if current.name == name {
        return Ok(Json(to_wire(&state, current)));
    }
    if current.name == "production" || name == "production" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "production_is_fixed",
            "the production environment keeps its name, and no other may take it",
        ));
    }
    if current.live_release.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "environment_running",
            "an environment with a live release cannot be renamed (its instances and hostname are named after it); create a new one and promote to it",
        ));
    }
    let renamed = state
        .store()
        .rename_environment(caller.user.id, current.id, &name)
        .await
        .map_err(environment_error)?;
    Ok(Json(to_wire(&state, renamed)))
}

/// Delete an environment: its instances stop, its route goes, its history is removed.
#[utoipa::path(delete, path = "/api/environments/{id}", tag = "environments",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 409, description = "It is production", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn delete_environment(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    crate::routes::teams::require_role(
        &state,
        &caller,
        environment.project_id,
        gilgal_types::Role::Admin,
    )
    .await?;
    if environment.name == "production" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "production_is_fixed",
            "the production environment goes only with its project",
        ));
    }
    // Instances, route, add-ons (final backups first), artifacts, logs, then the rows.
    state
        .teardown()
        .delete_environment(&environment)
        .await
        .map_err(|e| match e {
            gilgal_deploy::DeployError::Store(StoreError::NotFound) => {
                ApiError::not_found("environment")
            }
            other => deploy_error(other),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn accepted(
    state: &AppState,
    caller: &AuthUser,
    deployment: Uuid,
) -> Result<(StatusCode, Json<gilgal_types::Deployment>), ApiError> {
    let record = state.store().deployment(caller.user.id, deployment).await?;
    let project = state
        .store()
        .project(caller.user.id, record.project_id)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(crate::routes::deployments::to_wire(
            state,
            record,
            project.name.as_str(),
        )),
    ))
}
