//! Deployments, as the spec names them: create from an uploaded tarball, inspect, stream the
//! build log, cancel.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use gilgal_core::lifecycle::DeploymentState;
use gilgal_deploy::{DeploySource, Work};
use gilgal_store::{DeploymentRecord, StoreError};
use gilgal_types::{
    Deployment, DeploymentLogLine, DeploymentTransition, ErrorBody, JsonDeployRequest,
    RedeployRequest,
};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::{parse_path_id, ApiQuery, AuthUser, JsonBody};
use crate::{ApiError, AppState};

/// Largest source upload accepted (compressed).
pub const MAX_UPLOAD_BYTES: u64 = 512 * 1024 * 1024;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_deployment))
        .routes(routes!(get_deployment, cancel_deployment))
        .routes(routes!(deployment_logs))
        .routes(routes!(redeploy))
}

/// Query of `POST /api/projects/{id}/deployments`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeployQuery {
    /// Environment to deploy to (default `production`).
    #[serde(default)]
    pub environment: Option<String>,
    /// `immediate`, `canary` (needs `canary=STEPS`) or `blue-green`; default: what the
    /// source's `gilgal.toml` `[deploy] strategy` says, else immediate.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Blue-green smoke checks, `;`-separated: `GET /health 200;GET /api/version 200`.
    #[serde(default)]
    pub smoke: Option<String>,
    /// Roll out as a canary with these steps: percentages rising to 100, `pause` waits for
    /// `promote` (e.g. `10,25,pause,50,100`). Judged against the live release; a canary
    /// that fails is rolled back on its own.
    #[serde(default)]
    pub canary: Option<String>,
    /// Seconds each canary step is held and judged (default 60, 1 to 3600).
    #[serde(default)]
    pub interval_seconds: Option<u64>,
    /// Keep each client on the release it first got (a cookie).
    #[serde(default)]
    pub sticky: Option<bool>,
    /// Canary requests a step needs before it can pass (default 100).
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// Seconds past the interval a step waits for that many requests (default 300).
    #[serde(default)]
    pub traffic_deadline_seconds: Option<u64>,
    /// At that deadline: `rollback` (default) or `proceed`.
    #[serde(default)]
    pub no_traffic: Option<String>,
}

impl DeployQuery {
    /// The release strategy the query asks for; an invalid one is a 422 naming the field.
    pub fn strategy(&self) -> Result<gilgal_deploy::Strategy, ApiError> {
        if self.smoke.is_some() && self.strategy.as_deref() != Some("blue-green") {
            return Err(ApiError::invalid("smoke needs strategy=blue-green"));
        }
        match (self.strategy.as_deref(), &self.canary) {
            (Some("blue-green"), None) => {
                let checks = self
                    .smoke
                    .as_deref()
                    .unwrap_or("")
                    .split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(gilgal_core::smoke::parse_smoke)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ApiError::invalid(format!("smoke: {e}")))?;
                if checks.len() > gilgal_core::smoke::MAX_SMOKE_CHECKS {
                    return Err(ApiError::invalid(format!(
                        "smoke: at most {} checks",
                        gilgal_core::smoke::MAX_SMOKE_CHECKS
                    )));
                }
                return Ok(gilgal_deploy::Strategy::BlueGreen(checks));
            }
            (Some("immediate"), None) => return Ok(gilgal_deploy::Strategy::Immediate),
            (None | Some("canary"), _) => {}
            (Some("blue-green" | "immediate"), Some(_)) => {
                return Err(ApiError::invalid(
                    "canary=STEPS needs strategy=canary (or none)",
                ))
            }
            (Some(_), _) => {
                return Err(ApiError::invalid(
                    "strategy: `immediate`, `canary` or `blue-green`",
                ))
            }
        }
        let Some(steps) = &self.canary else {
            if self.strategy.as_deref() == Some("canary") {
                return Err(ApiError::invalid("strategy=canary needs canary=STEPS"));
            }
            let canary_only = self.interval_seconds.is_some()
                || self.sticky.is_some()
                || self.min_requests.is_some()
                || self.traffic_deadline_seconds.is_some()
                || self.no_traffic.is_some();
            if canary_only {
                return Err(ApiError::invalid(
                    "interval_seconds, sticky, min_requests, traffic_deadline_seconds and no_traffic need canary=STEPS",
                ));
            }
            return Ok(gilgal_deploy::Strategy::AsConfigured);
        };
        let mut policy = gilgal_core::canary::Policy {
            steps: gilgal_core::canary::parse_steps(steps)
                .map_err(|e| ApiError::invalid(format!("canary: {e}")))?,
            ..Default::default()
        };
        if let Some(seconds) = self.interval_seconds {
            if !(1..=3600).contains(&seconds) {
                return Err(ApiError::invalid("interval_seconds: from 1 to 3600"));
            }
            policy.interval = Duration::from_secs(seconds);
        }
        if let Some(n) = self.min_requests {
            if !(1..=1_000_000).contains(&n) {
                return Err(ApiError::invalid("min_requests: from 1 to 1000000"));
            }
            policy.min_requests = n;
        }
        if let Some(seconds) = self.traffic_deadline_seconds {
            if seconds > 86_400 {
                return Err(ApiError::invalid("traffic_deadline_seconds: at most 86400"));
            }
            policy.traffic_deadline = Duration::from_secs(seconds);
        }
        if let Some(text) = &self.no_traffic {
            policy.no_traffic = gilgal_core::canary::NoTraffic::parse(text)
                .ok_or_else(|| ApiError::invalid("no_traffic: `rollback` or `proceed`"))?;
        }
        policy.sticky = self.sticky.unwrap_or(false);
        Ok(gilgal_deploy::Strategy::Canary(policy))
    }
}

/// Query of the logs endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only lines after this position.
    #[serde(default)]
    pub after: Option<u64>,
    /// Keep the response open and stream new lines until the deployment settles.
    #[serde(default)]
    pub follow: Option<bool>,
}

fn not_found(err: StoreError) -> ApiError {
    match err {
        StoreError::NotFound => ApiError::not_found("deployment"),
        other => other.into(),
    }
}

pub(crate) fn to_wire(
    state: &AppState,
    record: DeploymentRecord,
    project_name: &str,
) -> Deployment {
    let url = matches!(
        record.state,
        DeploymentState::Live | DeploymentState::Draining | DeploymentState::Retired
    )
    .then(|| state.platform().url(project_name, &record.environment_name));
    Deployment {
        id: record.id,
        project_id: record.project_id,
        environment: record.environment_name,
        state: record.state.as_str().to_owned(),
        release: record.release_number,
        failure: record.failure.map(|f| gilgal_deploy::redact_urls(&f)),
        url,
        transitions: record
            .transitions
            .into_iter()
            .map(|t| DeploymentTransition {
                from: t.from.map(|s| s.as_str().to_owned()),
                to: t.to.as_str().to_owned(),
                at: t.at,
                note: t.note,
            })
            .collect(),
        created_at: record.created_at,
    }
}

/// Deploy: upload the app's source as a gzipped tarball (`gilgal deploy` packs it honouring
/// `.gitignore` and `.gilgalignore`), or send `{"url": …, "ref": …}` as JSON to deploy from
/// git. The build and rollout continue in the background; follow them with the logs endpoint.
#[utoipa::path(post, path = "/api/projects/{id}/deployments", tag = "deployments",
    params(("id" = String, Path, description = "Project id"), DeployQuery),
    request_body(content(
        (Vec<u8> = "application/gzip"),
        (JsonDeployRequest = "application/json"),
    ), description = "tar.gz of the source, a git URL and ref, or (Docker runtime) an existing image"),
    responses(
        (status = 202, description = "Accepted; building", body = Deployment),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such project or environment", body = ErrorBody),
        (status = 409, description = "Not possible on this server (e.g. an image without the Docker runtime, a refused git URL)", body = ErrorBody),
        (status = 413, description = "Upload too large", body = ErrorBody),
        (status = 422, description = "Invalid JSON body", body = ErrorBody),
        (status = 429, description = "Deploy or build quota reached; see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_deployment(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<DeployQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let project_id = parse_path_id(&id, "project")?;
    let project = state
        .store()
        .project(caller.user.id, project_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("project"),
            other => other.into(),
        })?;
    let strategy = query.strategy()?;
    let environment_name = query
        .environment
        .clone()
        .unwrap_or_else(|| "production".to_owned());
    let environment = state
        .store()
        .environment(caller.user.id, project_id, &environment_name)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => {
                ApiError::not_found(&format!("environment {environment_name:?}"))
            }
            other => other.into(),
        })?;
    caller.check_scope(project_id, Some(environment.id), "environment")?;
    crate::routes::teams::require_role(&state, &caller, project_id, gilgal_types::Role::Developer)
        .await?;

    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        let bytes = axum::body::to_bytes(body, state.config.max_body_bytes)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the JSON body is too large",
                )
            })?;
        let request: JsonDeployRequest = serde_json::from_slice(&bytes).map_err(|_| {
            ApiError::invalid(
                "invalid JSON body: expected {\"url\": …, \"ref\": …} (git) or {\"image\": …} (Docker image)",
            )
        })?;
        let source = match request {
            JsonDeployRequest::Git(git) => DeploySource::Git(gilgal_deploy::GitSource {
                url: git.url,
                reference: git.reference.unwrap_or_else(|| "main".to_owned()),
            }),
            JsonDeployRequest::Image(image) => DeploySource::Image(image.image),
        };
        let deployment_id = state
            .deployments()
            .deploy_with(environment, source, strategy)
            .await
            .map_err(crate::routes::environments::deploy_error)?;
        tracing::info!(deployment = %deployment_id, project = %project.name, environment = %environment_name, "git deployment accepted");
        return crate::routes::environments::accepted(&state, &caller, deployment_id).await;
    }
    // Checked before a byte of the body is received, so a refused upload costs nothing; the
    // deployment checks again once the body is here.
    state
        .platform()
        .check_quota(project_id, Work::Build)
        .await
        .map_err(crate::routes::environments::deploy_error)?;
    // Held until the deployment exists (and so counts against the quota itself).
    let concurrent_builds = state.platform().quotas().concurrent_builds;
    let _uploading = state
        .uploads_in_flight()
        .claim(caller.user.id, concurrent_builds.max(1))
        .ok_or_else(|| {
            ApiError::too_many(
                "build_quota",
                format!(
                    "you are already uploading {concurrent_builds} sources (the limit is the concurrent-build quota); wait for one to finish",
                ),
                Duration::from_secs(10),
            )
        })?;
    let uploads = state.platform().work_dir().join("uploads");
    tokio::fs::create_dir_all(&uploads)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let upload = uploads.join(format!("{}.tar.gz", uuid::Uuid::new_v4()));
    let written = save_upload(body, &upload).await;
    let written = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = tokio::fs::remove_file(&upload).await;
            return Err(e);
        }
    };
    if written == 0 {
        let _ = tokio::fs::remove_file(&upload).await;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_upload",
            "the request body must be a tar.gz of the app's source",
        ));
    }
    let deployment_id = match state
        .deployments()
        .deploy_with(
            environment,
            gilgal_deploy::DeploySource::Upload(upload.clone()),
            strategy,
        )
        .await
    {
        Ok(id) => id,
        Err(e) => {
            let _ = tokio::fs::remove_file(&upload).await;
            return Err(crate::routes::environments::deploy_error(e));
        }
    };
    tracing::info!(deployment = %deployment_id, project = %project.name, environment = %environment_name, bytes = written, "deployment accepted");
    let record = state
        .store()
        .deployment(caller.user.id, deployment_id)
        .await
        .map_err(not_found)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(to_wire(&state, record, project.name.as_str())),
    ))
}

/// Streams the request body to `path`, refusing more than [`MAX_UPLOAD_BYTES`].
async fn save_upload(body: Body, path: &std::path::Path) -> Result<u64, ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "upload_interrupted",
                "the upload was interrupted; retry",
            )
        })?;
        written += chunk.len() as u64;
        if written > MAX_UPLOAD_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("uploads are limited to {} MiB; add build outputs and dependencies to .gilgalignore", MAX_UPLOAD_BYTES >> 20),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(&e))?;
    }
    file.sync_all().await.map_err(|e| ApiError::internal(&e))?;
    Ok(written)
}

/// A deployment with its recorded state transitions.
#[utoipa::path(get, path = "/api/deployments/{id}", tag = "deployments",
    params(("id" = String, Path, description = "Deployment id")),
    responses(
        (status = 200, description = "The deployment", body = Deployment),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such deployment for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn get_deployment(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    let id = parse_path_id(&id, "deployment")?;
    let record = state
        .store()
        .deployment(caller.user.id, id)
        .await
        .map_err(not_found)?;
    caller.check_scope(record.project_id, Some(record.environment_id), "deployment")?;
    crate::routes::teams::require_for_method(&state, &caller, record.project_id).await?;
    let project = state
        .store()
        .project(caller.user.id, record.project_id)
        .await
        .map_err(not_found)?;
    Ok(Json(to_wire(&state, record, project.name.as_str())))
}

/// Cancel a deployment in progress; the previous release keeps serving.
#[utoipa::path(delete, path = "/api/deployments/{id}", tag = "deployments",
    params(("id" = String, Path, description = "Deployment id")),
    responses(
        (status = 202, description = "Cancellation requested", body = Deployment),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such deployment for this caller", body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn cancel_deployment(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let id = parse_path_id(&id, "deployment")?;
    let record = state
        .store()
        .deployment(caller.user.id, id)
        .await
        .map_err(not_found)?;
    caller.check_scope(record.project_id, Some(record.environment_id), "deployment")?;
    crate::routes::teams::require_for_method(&state, &caller, record.project_id).await?;
    if !record.state.is_in_progress() || !state.deployments().cancel(id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_in_progress",
            format!(
                "deployment is {}; only a deployment in progress can be cancelled",
                record.state
            ),
        ));
    }
    let project = state
        .store()
        .project(caller.user.id, record.project_id)
        .await
        .map_err(not_found)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(to_wire(&state, record, project.name.as_str())),
    ))
}

/// The build and rollout log as NDJSON (one `DeploymentLogLine` per line); with
/// `follow=true` the response stays open until the deployment is live, failed or cancelled.
#[utoipa::path(get, path = "/api/deployments/{id}/logs", tag = "deployments",
    params(("id" = String, Path, description = "Deployment id"), LogsQuery),
    responses(
        (status = 200, description = "NDJSON log lines", body = DeploymentLogLine, content_type = "application/x-ndjson"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such deployment for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn deployment_logs(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let id = parse_path_id(&id, "deployment")?;
    let record = state
        .store()
        .deployment(caller.user.id, id)
        .await
        .map_err(not_found)?;
    caller.check_scope(record.project_id, Some(record.environment_id), "deployment")?;
    crate::routes::teams::require_for_method(&state, &caller, record.project_id).await?;
    let follow = query.follow.unwrap_or(false);
    let store = state.store().clone();
    let stream = async_stream_lines(store, id, query.after.unwrap_or(0), follow);
    let stream = crate::follow::guard(&state, &caller, record.project_id, follow, stream)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Polls for new lines with `fetch(cursor)`; ends when not following, or when `settled()` says
/// the producer is done and every line was sent.
pub(crate) fn poll_lines<F, FFut, S, SFut>(
    after: u64,
    follow: bool,
    fetch: F,
    settled: S,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>>
where
    F: Fn(u64) -> FFut + Clone + Send + 'static,
    FFut: std::future::Future<Output = Result<Vec<gilgal_store::LogRecord>, StoreError>> + Send,
    S: Fn() -> SFut + Clone + Send + 'static,
    SFut: std::future::Future<Output = bool> + Send,
{
    futures_util::stream::unfold((after, false), move |(mut cursor, done)| {
        let fetch = fetch.clone();
        let settled = settled.clone();
        async move {
            if done {
                return None;
            }
            loop {
                let lines = match fetch(cursor).await {
                    Ok(lines) => lines,
                    Err(e) => {
                        return Some((Err(std::io::Error::other(e.to_string())), (cursor, true)))
                    }
                };
                if !lines.is_empty() {
                    let mut chunk = String::new();
                    for line in lines {
                        cursor = line.seq;
                        let wire = DeploymentLogLine {
                            seq: line.seq,
                            at: line.at,
                            stream: line.stream,
                            // Lines written before git credentials were kept out of logs.
                            line: gilgal_deploy::redact_urls(&line.line),
                        };
                        if let Ok(json) = serde_json::to_string(&wire) {
                            chunk.push_str(&json);
                            chunk.push('\n');
                        }
                    }
                    return Some((Ok(chunk), (cursor, false)));
                }
                if !follow {
                    return None;
                }
                if settled().await {
                    // One last look: lines written just before the end.
                    match fetch(cursor).await {
                        Ok(more) if !more.is_empty() => continue,
                        _ => return None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
}

/// Deployment log lines, following until the deployment settles.
fn async_stream_lines(
    store: gilgal_store::Store,
    id: uuid::Uuid,
    after: u64,
    follow: bool,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
    let settled_store = store.clone();
    poll_lines(
        after,
        follow,
        move |cursor| {
            let store = store.clone();
            async move { store.deployment_logs(id, cursor, 500).await }
        },
        move || {
            let store = settled_store.clone();
            async move {
                match store.deployment_by_id(id).await {
                    Ok(record) => !record.state.is_in_progress(),
                    Err(_) => true,
                }
            }
        },
    )
}

/// Redeploy: start the release a deployment made again, with the environment's current
/// config, without rebuilding (the release phase runs again only when asked).
#[utoipa::path(post, path = "/api/deployments/{id}/redeploy", tag = "deployments",
    params(("id" = String, Path, description = "Deployment id")),
    request_body = RedeployRequest,
    responses(
        (status = 202, description = "Redeploying", body = Deployment),
        (status = 404, description = "No such deployment for this caller", body = ErrorBody),
        (status = 409, description = "It made no release, or its artifact was pruned", body = ErrorBody),
        (status = 429, description = "Deploy quota reached (or this credential's request budget); see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn redeploy(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<RedeployRequest>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let id = parse_path_id(&id, "deployment")?;
    let record = state
        .store()
        .deployment(caller.user.id, id)
        .await
        .map_err(not_found)?;
    caller.check_scope(record.project_id, Some(record.environment_id), "deployment")?;
    crate::routes::teams::require_for_method(&state, &caller, record.project_id).await?;
    let body = body.parse()?;
    let environment = state
        .store()
        .environment_of(caller.user.id, record.environment_id)
        .await
        .map_err(not_found)?;
    let deployment = state
        .changes()
        .redeploy(&environment, record.release_number, body.run_release_phase)
        .await
        .map_err(crate::routes::environments::deploy_error)?;
    crate::routes::environments::accepted(&state, &caller, deployment).await
}
