//! Environments, as the spec names them, and what each one owns: config vars and secrets,
//! releases with rollback and promotion, process formation, one-off runs and cron jobs.
//! Another user's environment, run or job is a 404.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gilgal_deploy::{
    ConfigSnapshot, DeployError, DeploySource, ReuseKind, ReuseRelease, RunRequest as Oneoff,
};
use gilgal_store::{
    ConfigChange, ConfigVarRecord, CronJobRecord, EnvironmentRecord, ProcessSizeRecord, RunRecord,
    StoreError,
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

/// Longest config var value accepted.
pub const MAX_CONFIG_VALUE_BYTES: usize = 32 * 1024;
/// Most config vars one environment may have.
pub const MAX_CONFIG_VARS: usize = 500;
/// Most one-off runs running at once in one environment (each is a process of the app).
pub const MAX_RUNNING_RUNS_PER_ENVIRONMENT: u64 = 5;
/// Most runs running at once across one owner's (team's or user's) projects.
pub const MAX_RUNNING_RUNS_PER_OWNER: u64 = 20;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_environments, create_environment))
        .routes(routes!(update_environment, delete_environment))
        .routes(routes!(get_config, change_config))
        .routes(routes!(list_releases))
        .routes(routes!(rollback))
        .routes(routes!(promote))
        .routes(routes!(get_formation, change_formation))
        .routes(routes!(list_runs, create_run))
        .routes(routes!(get_run))
        .routes(routes!(run_logs))
        .routes(routes!(list_cron_jobs, create_cron_job))
        .routes(routes!(delete_cron_job))
        .routes(routes!(list_domains, add_domain))
        .routes(routes!(remove_domain))
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

pub(crate) fn deploy_error(err: DeployError) -> ApiError {
    match err {
        DeployError::Invalid(message) => {
            ApiError::new(StatusCode::CONFLICT, "not_possible", message)
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
        url: state.deployer().url(&record.project_name, &record.name),
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
        (status = 400, description = "Invalid name", body = ErrorBody),
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
        .deployer()
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

fn mask(records: Vec<ConfigVarRecord>) -> Vec<ConfigVar> {
    records
        .into_iter()
        .map(|r| ConfigVar {
            value: (!r.secret).then_some(r.value),
            name: r.name,
            secret: r.secret,
        })
        .collect()
}

/// The environment's config vars; secret values are never returned.
#[utoipa::path(get, path = "/api/environments/{id}/config", tag = "config",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Config vars by name", body = Vec<ConfigVar>),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn get_config(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<ConfigVar>>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let records = state.store().config_vars(environment.id).await?;
    Ok(Json(mask(records)))
}

fn check_var_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(ApiError::invalid(format!(
            "config var name {name:?} is invalid: use letters, digits and _, not starting with a digit"
        )));
    }
    if name == "PORT" || name.starts_with("GILGAL_") {
        return Err(ApiError::invalid(format!(
            "{name} is set by Gilgal for every instance and cannot be configured"
        )));
    }
    Ok(())
}

/// Set, set as secret, or unset config vars. When something is live, the change becomes a new
/// release rolled out with zero downtime (no build).
#[utoipa::path(patch, path = "/api/environments/{id}/config", tag = "config",
    params(("id" = String, Path, description = "Environment id")),
    request_body = ConfigUpdate,
    responses(
        (status = 200, description = "Changed; `deployment` rolls it out", body = ConfigChanged),
        (status = 400, description = "Invalid name or value", body = ErrorBody),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn change_config(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<ConfigUpdate>,
) -> Result<Json<ConfigChanged>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    let mut changes = Vec::new();
    for (name, value, secret) in body
        .set
        .iter()
        .map(|(n, v)| (n, v, false))
        .chain(body.set_secret.iter().map(|(n, v)| (n, v, true)))
    {
        check_var_name(name)?;
        // Characters, as the OpenAPI document's maxLength counts them.
        if value.chars().count() > MAX_CONFIG_VALUE_BYTES {
            return Err(ApiError::invalid(format!(
                "the value of {name} is longer than {} KiB",
                MAX_CONFIG_VALUE_BYTES / 1024
            )));
        }
        if value.contains('\0') {
            return Err(ApiError::invalid(format!(
                "the value of {name} contains a NUL byte"
            )));
        }
        let stored = if secret {
            state
                .deployer()
                .vault()
                .seal(environment.id, name, value)
                .await
                .map_err(|e| ApiError::internal(&e))?
        } else {
            value.clone()
        };
        changes.push(ConfigChange::Set(ConfigVarRecord {
            name: name.clone(),
            value: stored,
            secret,
        }));
    }
    for name in &body.unset {
        check_var_name(name)?;
        changes.push(ConfigChange::Unset(name.clone()));
    }
    if changes.is_empty() {
        return Err(ApiError::invalid("nothing to change"));
    }
    // Names only: values (secret or not) never enter the audit log.
    crate::audit::note(
        "set",
        serde_json::json!(body.set.keys().collect::<Vec<_>>()),
    );
    crate::audit::note(
        "set_secret",
        serde_json::json!(body.set_secret.keys().collect::<Vec<_>>()),
    );
    crate::audit::note("unset", serde_json::json!(body.unset));
    let current = state.store().config_vars(environment.id).await?;
    let mut names: std::collections::BTreeSet<&str> =
        current.iter().map(|r| r.name.as_str()).collect();
    for change in &changes {
        match change {
            ConfigChange::Set(var) => names.insert(var.name.as_str()),
            ConfigChange::Unset(name) => names.remove(name.as_str()),
        };
    }
    if names.len() > MAX_CONFIG_VARS {
        return Err(ApiError::invalid(format!(
            "an environment can have at most {MAX_CONFIG_VARS} config vars"
        )));
    }
    let mut what: Vec<String> = body
        .set
        .keys()
        .chain(body.set_secret.keys())
        .map(|n| format!("Set {n}"))
        .collect();
    what.extend(body.unset.iter().map(|n| format!("Unset {n}")));
    let deployment = state
        .deployer()
        .change_config(environment.id, &changes, what.join(", "))
        .await
        .map_err(deploy_error)?;
    let records = state.store().config_vars(environment.id).await?;
    Ok(Json(ConfigChanged {
        vars: mask(records),
        deployment,
    }))
}

/// The environment's releases, newest first.
#[utoipa::path(get, path = "/api/environments/{id}/releases", tag = "releases",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Releases, newest first", body = Vec<Release>),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_releases(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<Release>>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let releases = state.store().releases(environment.id).await?;
    Ok(Json(
        releases
            .into_iter()
            .map(|r| Release {
                live: environment.live_release == Some(r.number),
                outcome: outcome_to_wire(r.outcome),
                number: r.number,
                description: gilgal_deploy::redact_urls(&r.description),
                pruned: r.pruned,
                config_names: ConfigSnapshot::parse(&r.config_json)
                    .map(|s| s.vars.into_keys().collect())
                    .unwrap_or_default(),
                created_at: r.created_at,
            })
            .collect(),
    ))
}

fn outcome_to_wire(outcome: gilgal_core::lifecycle::ReleaseOutcome) -> ReleaseOutcome {
    use gilgal_core::lifecycle::ReleaseOutcome as Recorded;
    match outcome {
        Recorded::Pending => ReleaseOutcome::Pending,
        Recorded::Live => ReleaseOutcome::Live,
        Recorded::Failed => ReleaseOutcome::Failed,
        Recorded::Superseded => ReleaseOutcome::Superseded,
        Recorded::RolledBack => ReleaseOutcome::RolledBack,
    }
}

/// Roll back to an earlier release (by default the last one that was live before the current
/// one): its artifact with its config snapshot, no rebuild, zero downtime. The environment's
/// config is the snapshot as soon as this answers. The release phase runs again only when
/// asked.
#[utoipa::path(post, path = "/api/environments/{id}/rollback", tag = "releases",
    params(("id" = String, Path, description = "Environment id")),
    request_body = RollbackRequest,
    responses(
        (status = 202, description = "Rolling back; follow the deployment", body = gilgal_types::Deployment),
        (status = 404, description = "No such environment or release", body = ErrorBody),
        (status = 409, description = "Nothing to roll back to, or its artifact was pruned", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn rollback(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<RollbackRequest>,
) -> Result<(StatusCode, Json<gilgal_types::Deployment>), ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    let deployment = state
        .deployer()
        .rollback(environment.id, body.release, body.run_release_phase)
        .await
        .map_err(deploy_error)?;
    accepted(&state, &caller, deployment).await
}

/// Promote: ship the exact artifact of another environment's live release here, with this
/// environment's config; its release phase runs here first. No rebuild.
#[utoipa::path(post, path = "/api/environments/{id}/promote", tag = "releases",
    params(("id" = String, Path, description = "Target environment id")),
    request_body = PromoteRequest,
    responses(
        (status = 202, description = "Promoting; follow the deployment", body = gilgal_types::Deployment),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 409, description = "The source has nothing live", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn promote(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<PromoteRequest>,
) -> Result<(StatusCode, Json<gilgal_types::Deployment>), ApiError> {
    let target = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    let source = state
        .store()
        .environment(caller.user.id, target.project_id, &body.from)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found(&format!("environment {:?}", body.from)),
            other => other.into(),
        })?;
    caller.check_scope(
        source.project_id,
        Some(source.id),
        &format!("environment {:?}", body.from),
    )?;
    if source.id == target.id {
        return Err(ApiError::invalid(
            "an environment cannot be promoted to itself",
        ));
    }
    let Some(number) = source.live_release else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_possible",
            format!("{} has no live release to promote", source.name),
        ));
    };
    let deployment = state
        .deployer()
        .deploy(
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
        .map_err(deploy_error)?;
    accepted(&state, &caller, deployment).await
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

fn sizes_to_wire(sizes: &BTreeMap<String, ProcessSizeRecord>) -> BTreeMap<String, ProcessSize> {
    sizes
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                ProcessSize {
                    memory_mb: v.memory_mb,
                    cpu_millicores: v.cpu_millicores,
                },
            )
        })
        .collect()
}

/// The process formation: instances running per type, and sizes set with `gilgal scale`.
#[utoipa::path(get, path = "/api/environments/{id}/formation", tag = "formation",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Formation", body = Formation),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn get_formation(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Formation>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let counts = state
        .deployer()
        .running_counts(&environment)
        .await
        .map_err(deploy_error)?;
    Ok(Json(Formation {
        counts,
        sizes: sizes_to_wire(&environment.sizes),
        deployment: None,
    }))
}

/// Scale process types (`web=3 worker=1`) and resize them, with zero downtime.
#[utoipa::path(put, path = "/api/environments/{id}/formation", tag = "formation",
    params(("id" = String, Path, description = "Environment id")),
    request_body = FormationUpdate,
    responses(
        (status = 200, description = "Scaled", body = Formation),
        (status = 400, description = "Invalid counts or sizes", body = ErrorBody),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 409, description = "The live release has no such process type, or a new instance never passed its health check (it got no traffic and the formation is unchanged)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn change_formation(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<FormationUpdate>,
) -> Result<Json<Formation>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    for (name, count) in &body.counts {
        if *count > 100 {
            return Err(ApiError::invalid(format!(
                "{name}={count}: at most 100 instances per process type"
            )));
        }
    }
    let mut sizes = BTreeMap::new();
    for (name, size) in &body.sizes {
        if size
            .memory_mb
            .is_some_and(|mb| !(16..=1 << 20).contains(&mb))
        {
            return Err(ApiError::invalid(format!(
                "{name}: memory must be between 16 MB and 1 TB"
            )));
        }
        if size
            .cpu_millicores
            .is_some_and(|m| !(10..=256_000).contains(&m))
        {
            return Err(ApiError::invalid(format!(
                "{name}: CPU must be between 10 and 256000 millicores"
            )));
        }
        sizes.insert(
            name.clone(),
            ProcessSizeRecord {
                memory_mb: size.memory_mb,
                cpu_millicores: size.cpu_millicores,
            },
        );
    }
    let deployment = state
        .deployer()
        .scale(&environment, &body.counts, &sizes)
        .await
        .map_err(deploy_error)?;
    let updated = state.store().environment_by_id(environment.id).await?;
    let counts = state
        .deployer()
        .running_counts(&updated)
        .await
        .map_err(deploy_error)?;
    Ok(Json(Formation {
        counts,
        sizes: sizes_to_wire(&updated.sizes),
        deployment,
    }))
}

fn run_to_wire(record: RunRecord) -> Run {
    Run {
        id: record.id,
        environment_id: record.environment_id,
        cron_job_id: record.cron_job_id,
        tick: record.tick,
        command: serde_json::from_str(&record.command).unwrap_or_default(),
        release: record.release_number,
        state: record.state,
        exit_code: record.exit_code,
        failure: record.failure,
        created_at: record.created_at,
        finished_at: record.finished_at,
    }
}

fn check_command(command: &[String]) -> Result<(), ApiError> {
    if command.is_empty() || command[0].is_empty() {
        return Err(ApiError::invalid("the command is empty"));
    }
    if command.len() > 256 || command.iter().map(String::len).sum::<usize>() > 64 * 1024 {
        return Err(ApiError::invalid("the command is too long"));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::invalid("the command contains a NUL byte"));
    }
    Ok(())
}

/// Start a one-off instance of the live release (`gilgal run -- CMD`); follow its output with
/// the run's logs endpoint.
#[utoipa::path(post, path = "/api/environments/{id}/runs", tag = "runs",
    params(("id" = String, Path, description = "Environment id")),
    request_body = RunRequest,
    responses(
        (status = 201, description = "Started", body = Run),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 409, description = "Nothing is live", body = ErrorBody),
        (status = 429, description = "Too many runs running in this environment or team; see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_run(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<RunRequest>,
) -> Result<(StatusCode, Json<Run>), ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    check_command(&body.command)?;
    let (here, owner) = state
        .store()
        .running_run_usage(environment.id, environment.project_id)
        .await?;
    if here >= MAX_RUNNING_RUNS_PER_ENVIRONMENT {
        return Err(ApiError::too_many(
            "run_limit",
            format!(
                "{here} runs are running in this environment (the limit is {MAX_RUNNING_RUNS_PER_ENVIRONMENT}); wait for one to finish, then try again"
            ),
            std::time::Duration::from_secs(10),
        ));
    }
    if owner >= MAX_RUNNING_RUNS_PER_OWNER {
        return Err(ApiError::too_many(
            "run_limit",
            format!(
                "{owner} runs are running across this team's projects (the limit is {MAX_RUNNING_RUNS_PER_OWNER}); wait for one to finish, then try again"
            ),
            std::time::Duration::from_secs(10),
        ));
    }
    let run = state
        .deployer()
        .start_run(
            &environment,
            Oneoff {
                argv: body.command,
                cron: None,
            },
        )
        .await
        .map_err(deploy_error)?
        .ok_or_else(|| ApiError::internal(&"run was not recorded"))?;
    let record = state.store().run(run).await?;
    Ok((StatusCode::CREATED, Json(run_to_wire(record))))
}

/// The environment's recent runs (one-off and cron), newest first.
#[utoipa::path(get, path = "/api/environments/{id}/runs", tag = "runs",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Runs", body = Vec<Run>),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_runs(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<Run>>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let runs = state.store().runs(environment.id, 100).await?;
    Ok(Json(runs.into_iter().map(run_to_wire).collect()))
}

async fn owned_run(state: &AppState, caller: &AuthUser, id: &str) -> Result<RunRecord, ApiError> {
    let id = parse_path_id(id, "run")?;
    let run = state.store().run(id).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found("run"),
        other => other.into(),
    })?;
    let environment = state
        .store()
        .environment_of(caller.user.id, run.environment_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("run"),
            other => other.into(),
        })?;
    caller.check_scope(environment.project_id, Some(environment.id), "run")?;
    Ok(run)
}

/// One run with its exit status.
#[utoipa::path(get, path = "/api/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = Run),
        (status = 404, description = "No such run", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn get_run(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    Ok(Json(run_to_wire(owned_run(&state, &caller, &id).await?)))
}

/// A run's output as NDJSON; with `follow=true` the response stays open until it exits.
#[utoipa::path(get, path = "/api/runs/{id}/logs", tag = "runs",
    params(("id" = String, Path, description = "Run id"), LogsQuery),
    responses(
        (status = 200, description = "NDJSON log lines", body = DeploymentLogLine, content_type = "application/x-ndjson"),
        (status = 404, description = "No such run", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn run_logs(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let run = owned_run(&state, &caller, &id).await?;
    let store = state.store().clone();
    let follow = query.follow.unwrap_or(false);
    let stream = crate::routes::deployments::poll_lines(
        query.after.unwrap_or(0),
        follow,
        move |cursor| {
            let store = store.clone();
            async move { store.run_logs(run.id, cursor, 500).await }
        },
        {
            let store = state.store().clone();
            move || {
                let store = store.clone();
                async move {
                    store
                        .run(run.id)
                        .await
                        .map(|r| r.state != "running")
                        .unwrap_or(true)
                }
            }
        },
    );
    let project = owned_environment(&state, &caller, &run.environment_id.to_string()).await?;
    let stream = crate::follow::guard(&state, &caller, project.project_id, follow, stream)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

fn cron_to_wire(record: CronJobRecord) -> CronJob {
    CronJob {
        id: record.id,
        environment_id: record.environment_id,
        schedule: record.schedule,
        command: serde_json::from_str(&record.command).unwrap_or_default(),
        allow_overlap: record.allow_overlap,
    }
}

/// The environment's cron jobs.
#[utoipa::path(get, path = "/api/environments/{id}/cron", tag = "cron",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Cron jobs", body = Vec<CronJob>),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_cron_jobs(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<CronJob>>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let jobs = state.store().cron_jobs(Some(environment.id)).await?;
    Ok(Json(jobs.into_iter().map(cron_to_wire).collect()))
}

/// Schedule a command (`gilgal cron add "0 * * * *" -- python cleanup.py`); each tick is a
/// one-off run of the live release, run at most once.
#[utoipa::path(post, path = "/api/environments/{id}/cron", tag = "cron",
    params(("id" = String, Path, description = "Environment id")),
    request_body = CronJobRequest,
    responses(
        (status = 201, description = "Scheduled", body = CronJob),
        (status = 400, description = "Invalid schedule or command", body = ErrorBody),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_cron_job(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<CronJobRequest>,
) -> Result<(StatusCode, Json<CronJob>), ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    check_command(&body.command)?;
    if body.schedule.len() > 200 {
        return Err(ApiError::invalid("the schedule is too long"));
    }
    gilgal_deploy::parse_schedule(&body.schedule).map_err(ApiError::invalid)?;
    let command = serde_json::to_string(&body.command).map_err(|e| ApiError::internal(&e))?;
    let job = state
        .store()
        .create_cron_job(environment.id, &body.schedule, &command, body.allow_overlap)
        .await?;
    Ok((StatusCode::CREATED, Json(cron_to_wire(job))))
}

/// Remove a cron job (its past runs stay).
#[utoipa::path(delete, path = "/api/cron/{id}", tag = "cron",
    params(("id" = String, Path, description = "Cron job id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such cron job", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn delete_cron_job(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_path_id(&id, "cron job")?;
    let not_found = |e| match e {
        StoreError::NotFound => ApiError::not_found("cron job"),
        other => other.into(),
    };
    let job = state.store().cron_job(id).await.map_err(not_found)?;
    let environment = state
        .store()
        .environment_of(caller.user.id, job.environment_id)
        .await
        .map_err(not_found)?;
    caller.check_scope(environment.project_id, Some(environment.id), "cron job")?;
    crate::routes::teams::require_for_method(&state, &caller, environment.project_id).await?;
    state.store().delete_cron_job(id).await.map_err(not_found)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The environment's custom domains (besides its default hostname).
#[utoipa::path(get, path = "/api/environments/{id}/domains", tag = "domains",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Custom domains", body = Vec<Domain>),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_domains(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<Domain>>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let domains = state.store().domains(environment.id).await?;
    Ok(Json(
        domains
            .into_iter()
            .map(|hostname| Domain {
                hostname,
                environment_id: environment.id,
            })
            .collect(),
    ))
}

/// A custom domain, validated: a real hostname, not under the platform's base domain (those
/// belong to other apps), not already attached anywhere.
fn custom_domain(state: &AppState, raw: &str) -> Result<String, ApiError> {
    let hostname: gilgal_types::Hostname = raw
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase()
        .parse()
        .map_err(|e: gilgal_types::NameError| ApiError::invalid(e.to_string()))?;
    let hostname = hostname.as_str().to_owned();
    let base = state.deployer().base_domain().to_ascii_lowercase();
    if hostname == base || hostname.ends_with(&format!(".{base}")) {
        return Err(ApiError::invalid(format!(
            "{hostname} is under the platform's base domain {base}, where apps get their default hostnames; use a domain you own"
        )));
    }
    if !hostname.contains('.') {
        return Err(ApiError::invalid(format!(
            "{hostname} is not a fully qualified domain name"
        )));
    }
    Ok(hostname)
}

/// Serve the environment at a domain you point at this machine (DNS A/CNAME); routed at once.
#[utoipa::path(post, path = "/api/environments/{id}/domains", tag = "domains",
    params(("id" = String, Path, description = "Environment id")),
    request_body = DomainRequest,
    responses(
        (status = 201, description = "Attached and routed", body = Domain),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 409, description = "Attached to an environment already", body = ErrorBody),
        (status = 422, description = "Not a usable hostname", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn add_domain(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<DomainRequest>,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    let hostname = custom_domain(&state, &body.hostname)?;
    state
        .store()
        .add_domain(environment.id, &hostname)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "domain_taken",
                format!("{hostname} is already attached to an environment"),
            ),
            other => other.into(),
        })?;
    state
        .deployer()
        .refresh_route(&environment)
        .await
        .map_err(deploy_error)?;
    Ok((
        StatusCode::CREATED,
        Json(Domain {
            hostname,
            environment_id: environment.id,
        }),
    ))
}

/// Stop serving the environment at a custom domain.
#[utoipa::path(delete, path = "/api/environments/{id}/domains/{hostname}", tag = "domains",
    params(("id" = String, Path, description = "Environment id"), ("hostname" = String, Path, description = "The domain", pattern = "^(\\*\\.)?(([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?|[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt])\\.*$", max_length = 253)),
    responses(
        (status = 204, description = "Detached"),
        (status = 404, description = "No such environment or domain", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn remove_domain(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((id, hostname)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    state
        .store()
        .remove_domain(environment.id, &hostname.to_ascii_lowercase())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("domain"),
            other => other.into(),
        })?;
    state
        .deployer()
        .refresh_route(&environment)
        .await
        .map_err(deploy_error)?;
    Ok(StatusCode::NO_CONTENT)
}
