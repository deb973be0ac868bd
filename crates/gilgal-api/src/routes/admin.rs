//! `/api/admin/*`: instance settings, for instance administrators only.

use axum::extract::State;
use axum::Json;
use gilgal_types::{ErrorBody, InstanceSettings};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::{AdminUser, ApiJson, AuthUser};
use crate::{ApiError, AppState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(rotate_key))
}

/// Outcome of a master key rotation.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct KeyRotated {
    /// Environment data keys re-wrapped with the new master key.
    pub rewrapped: usize,
}

/// Rotate the master key that wraps every environment's data key (`gilgal admin rotate-key`).
/// Crash-safe: both keys stay on disk until every data key is re-wrapped.
#[utoipa::path(post, path = "/api/admin/rotate-key", tag = "admin",
    responses(
        (status = 200, description = "Rotated", body = KeyRotated),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn rotate_key(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<KeyRotated>, ApiError> {
    require_admin(&caller)?;
    let rewrapped = state
        .platform()
        .vault()
        .rotate_master_key()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    tracing::info!(rewrapped, "master key rotated");
    Ok(Json(KeyRotated { rewrapped }))
}

/// Refuses callers who are not instance administrators.
pub(crate) fn require_admin(caller: &AuthUser) -> Result<(), ApiError> {
    if caller.user.is_admin {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "admin_only",
            "only an instance administrator can do this",
        ))
    }
}

/// Current instance settings.
#[utoipa::path(get, path = "/api/admin/settings", tag = "admin",
    responses(
        (status = 200, description = "Settings", body = InstanceSettings),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn get_settings(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<InstanceSettings>, ApiError> {
    require_admin(&caller)?;
    Ok(Json(InstanceSettings {
        registration_open: state.store().registration_open().await?,
    }))
}

/// Replace instance settings (e.g. close open registration).
#[utoipa::path(put, path = "/api/admin/settings", tag = "admin", request_body = InstanceSettings,
    responses(
        (status = 200, description = "Settings now in force", body = InstanceSettings),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn put_settings(
    State(state): State<AppState>,
    // Refused before the body is judged: a non-administrator learns nothing from a 422.
    AdminUser(_caller): AdminUser,
    ApiJson(settings): ApiJson<InstanceSettings>,
) -> Result<Json<InstanceSettings>, ApiError> {
    state
        .store()
        .set_registration_open(settings.registration_open)
        .await?;
    tracing::info!(
        registration_open = settings.registration_open,
        "instance settings changed"
    );
    Ok(Json(settings))
}
