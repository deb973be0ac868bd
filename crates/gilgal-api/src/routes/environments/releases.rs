//! An environment's release history, rollback and promotion.

use super::*;

/// Routes of this resource.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_releases))
        .routes(routes!(rollback))
        .routes(routes!(promote))
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
                deployment_id: r.deployment_id,
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
        (status = 429, description = "Deploy quota reached (or this credential's request budget); see Retry-After", body = ErrorBody),
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
        .changes()
        .rollback(&environment, body.release, body.run_release_phase)
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
        (status = 429, description = "Deploy quota reached (or this credential's request budget); see Retry-After", body = ErrorBody),
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
    let deployment = state
        .changes()
        .promote(&target, &source)
        .await
        .map_err(deploy_error)?;
    accepted(&state, &caller, deployment).await
}
