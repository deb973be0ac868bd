//! `/health` (the process is up) and `/ready` (it can reach its store).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use gilgal_types::{ErrorBody, HealthStatus};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::{ApiError, AppState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
}

/// Liveness: answers as long as the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "Alive", body = HealthStatus)))]
async fn health() -> Json<HealthStatus> {
    Json(HealthStatus {
        status: "ok".to_owned(),
    })
}

/// Readiness: the store answers a query.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Ready", body = HealthStatus),
        (status = 503, description = "Store unreachable", body = ErrorBody),
    ))]
async fn ready(State(state): State<AppState>) -> Result<Json<HealthStatus>, ApiError> {
    state.store().ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database is unreachable",
        )
    })?;
    Ok(Json(HealthStatus {
        status: "ok".to_owned(),
    }))
}
