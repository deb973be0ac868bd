//! Cron jobs of an environment.

use super::runs::check_command;
use super::*;

/// Routes of this resource.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_cron_jobs, create_cron_job))
        .routes(routes!(delete_cron_job))
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
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 422, description = "Invalid schedule or command", body = ErrorBody),
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
