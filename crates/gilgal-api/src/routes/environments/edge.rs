//! What the edge enforces for an environment: HTTPS redirect, HSTS, per-client rate limits.

use super::*;
use gilgal_deploy::{EdgePolicy, EdgeRateLimit};
use gilgal_types::{EdgeSettings, RateLimitRule};

/// Routes of this resource.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(edge_settings, set_edge_settings))
}

fn to_wire(policy: EdgePolicy) -> EdgeSettings {
    EdgeSettings {
        https_only: policy.https_only,
        hsts_max_age_seconds: policy.hsts_max_age_seconds,
        hsts_include_subdomains: policy.hsts_include_subdomains,
        rate_limits: policy
            .rate_limits
            .into_iter()
            .map(|r| RateLimitRule {
                path_prefix: r.path_prefix,
                requests: r.requests,
                per_seconds: r.per_seconds,
                burst: r.burst,
            })
            .collect(),
    }
}

/// The environment's edge settings (all off by default).
#[utoipa::path(get, path = "/api/environments/{id}/edge", tag = "environments",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Edge settings", body = EdgeSettings),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn edge_settings(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<EdgeSettings>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    Ok(Json(to_wire(
        state
            .platform()
            .environment_edge_policy(environment.id)
            .await,
    )))
}

/// Replaces the environment's edge settings; its route is re-applied at once (no new
/// release, no restart).
#[utoipa::path(put, path = "/api/environments/{id}/edge", tag = "environments",
    params(("id" = String, Path, description = "Environment id")),
    request_body = EdgeSettings,
    responses(
        (status = 200, description = "Applied", body = EdgeSettings),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 422, description = "An invalid value, named", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn set_edge_settings(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    body: JsonBody<EdgeSettings>,
) -> Result<Json<EdgeSettings>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let body = body.parse()?;
    let policy = EdgePolicy {
        https_only: body.https_only,
        hsts_max_age_seconds: body.hsts_max_age_seconds,
        hsts_include_subdomains: body.hsts_include_subdomains,
        rate_limits: body
            .rate_limits
            .into_iter()
            .map(|r| EdgeRateLimit {
                path_prefix: r.path_prefix,
                requests: r.requests,
                per_seconds: r.per_seconds,
                burst: r.burst,
            })
            .collect(),
    };
    state
        .changes()
        .set_edge_policy(&environment, &policy)
        .await
        .map_err(deploy_error)?;
    Ok(Json(to_wire(policy)))
}
