//! One-off runs of an environment's live release, and their logs.

use super::*;

/// Routes of this resource.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_runs, create_run))
        .routes(routes!(get_run))
        .routes(routes!(run_logs))
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

pub(super) fn check_command(command: &[String]) -> Result<(), ApiError> {
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
        .runs()
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
