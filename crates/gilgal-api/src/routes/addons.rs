//! Add-ons: managed PostgreSQL and Redis per environment, their backups and restores.
//!
//! Reads need the viewer role, creating add-ons and taking backups developer, and what
//! destroys or overwrites data (destroy, restore) admin. Credentials are only ever handed
//! out by `POST /api/addons/{id}/credentials`, so every such hand-out is in the audit log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use gilgal_store::{AddonRecord, BackupRecord, StoreError};
use gilgal_types::{
    Addon, AddonChanged, AddonCredentials, Backup, BackupPolicy, CreateAddonRequest, ErrorBody,
    RestoreRequest, Role,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::{parse_path_id, ApiQuery, AuthUser, JsonBody};
use crate::routes::environments::{deploy_error, owned_environment};
use crate::{ApiError, AppState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_addons, create_addon))
        .routes(routes!(destroy_addon))
        .routes(routes!(list_backups, create_backup))
        .routes(routes!(restore))
        .routes(routes!(set_backup_policy))
        .routes(routes!(credentials))
}

fn to_wire(record: AddonRecord) -> Addon {
    Addon {
        config_vars: gilgal_deploy::config_var_names(&record.kind)
            .iter()
            .map(|n| format!("{}{n}", record.var_prefix))
            .collect(),
        id: record.id,
        environment_id: record.environment_id,
        kind: record.kind,
        name: record.name,
        state: record.state,
        backup_schedule: record.backup_schedule,
        backup_retention: record.backup_retention,
        created_at: record.created_at,
    }
}

fn backup_to_wire(record: BackupRecord) -> Backup {
    Backup {
        id: record.id,
        addon_id: record.addon_id,
        cause: record.cause,
        state: record.state,
        size: record.size,
        sha256: record.sha256,
        error: record.error,
        started_at: record.started_at,
        finished_at: record.finished_at,
    }
}

fn addon_not_found(err: StoreError) -> ApiError {
    match err {
        StoreError::NotFound => ApiError::not_found("add-on"),
        other => other.into(),
    }
}

/// An add-on the caller may see, with `needed` checked.
async fn visible_addon(
    state: &AppState,
    caller: &AuthUser,
    id: &str,
    needed: Role,
) -> Result<AddonRecord, ApiError> {
    let id = parse_path_id(id, "add-on")?;
    let addon = state.store().addon(id).await.map_err(addon_not_found)?;
    let environment = state
        .store()
        .environment_of(caller.user.id, addon.environment_id)
        .await
        .map_err(addon_not_found)?;
    caller.check_scope(environment.project_id, Some(environment.id), "add-on")?;
    crate::routes::teams::require_role(state, caller, environment.project_id, needed).await?;
    Ok(addon)
}

/// The environment's add-ons.
#[utoipa::path(get, path = "/api/environments/{id}/addons", tag = "addons",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Add-ons", body = Vec<Addon>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such environment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_addons(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<Addon>>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let addons = state.store().addons(environment.id).await?;
    Ok(Json(addons.into_iter().map(to_wire).collect()))
}

/// Create an add-on: a PostgreSQL database (with its own role) or a Redis server, attached
/// through sealed config vars (`DATABASE_URL`, `REDIS_URL`, prefixed for a named add-on) and
/// rolled out as a new release when something is live.
#[utoipa::path(post, path = "/api/environments/{id}/addons", tag = "addons",
    params(("id" = String, Path, description = "Environment id")),
    request_body = CreateAddonRequest,
    responses(
        (status = 201, description = "Created and attached", body = AddonChanged),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such environment", body = ErrorBody),
        (status = 409, description = "Not possible (name taken, server software missing…)", body = ErrorBody),
        (status = 422, description = "Invalid body", body = ErrorBody),
        (status = 429, description = "Deploy quota reached (or this credential's request budget); see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_addon(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    request: JsonBody<CreateAddonRequest>,
) -> Result<(StatusCode, Json<AddonChanged>), ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let request = request.parse()?;
    crate::audit::note("kind", serde_json::json!(request.kind));
    let (addon, deployment) = state
        .addons()
        .create_addon(&environment, &request.kind, request.name.as_deref())
        .await
        .map_err(deploy_error)?;
    crate::audit::note("addon", serde_json::json!(addon.id));
    Ok((
        StatusCode::CREATED,
        Json(AddonChanged {
            addon: to_wire(addon),
            deployment,
        }),
    ))
}

/// Query of the destroy endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DestroyQuery {
    /// Take a final backup first (default true); when it fails nothing is destroyed.
    #[serde(default)]
    pub backup: Option<bool>,
}

/// Destroy an add-on: final backup (unless `backup=false`), detach (a new release), drop
/// its database or server. Its backups stay listed under its id.
#[utoipa::path(delete, path = "/api/addons/{id}", tag = "addons",
    params(("id" = String, Path, description = "Add-on id"), DestroyQuery),
    responses(
        (status = 200, description = "Destroyed", body = AddonChanged),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such add-on", body = ErrorBody),
        (status = 409, description = "The final backup failed; nothing was destroyed", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn destroy_addon(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<DestroyQuery>,
) -> Result<Json<AddonChanged>, ApiError> {
    let addon = visible_addon(&state, &caller, &id, Role::Admin).await?;
    let final_backup = query.backup.unwrap_or(true);
    crate::audit::note("final_backup", serde_json::json!(final_backup));
    let deployment = state
        .addons()
        .destroy_addon(&addon, final_backup)
        .await
        .map_err(|e| match e {
            // Destroyed meanwhile (by another request, or with its project or environment).
            gilgal_deploy::DeployError::Store(StoreError::NotFound) => {
                ApiError::not_found("add-on")
            }
            other => deploy_error(other),
        })?;
    Ok(Json(AddonChanged {
        addon: to_wire(addon),
        deployment,
    }))
}

/// An add-on's backups, newest first (failed ones included, with their error).
#[utoipa::path(get, path = "/api/addons/{id}/backups", tag = "addons",
    params(("id" = String, Path, description = "Add-on id")),
    responses(
        (status = 200, description = "Backups", body = Vec<Backup>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such add-on", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_backups(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<Backup>>, ApiError> {
    let addon = visible_addon(&state, &caller, &id, Role::Viewer).await?;
    let backups = state.store().backups(addon.id).await?;
    Ok(Json(backups.into_iter().map(backup_to_wire).collect()))
}

/// Take a backup now. A failed backup is answered as what it is (state `failed` with its
/// error, status 500 is never used for it) and leaves earlier backups intact.
#[utoipa::path(post, path = "/api/addons/{id}/backups", tag = "addons",
    params(("id" = String, Path, description = "Add-on id")),
    responses(
        (status = 201, description = "Backed up", body = Backup),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such add-on", body = ErrorBody),
        (status = 409, description = "The backup failed; the body says why", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_backup(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Backup>), ApiError> {
    let addon = visible_addon(&state, &caller, &id, Role::Developer).await?;
    let backup = state
        .addons()
        .backup_addon(&addon, "manual", None)
        .await
        .map_err(deploy_error)?;
    if backup.state != "succeeded" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "backup_failed",
            format!(
                "backup {} failed: {}; earlier backups are intact",
                backup.id,
                backup.error.unwrap_or_default()
            ),
        ));
    }
    Ok((StatusCode::CREATED, Json(backup_to_wire(backup))))
}

/// Restore a backup into this add-on's database (replacing its objects, in one
/// transaction). The backup may come from another add-on of the same kind in the same
/// environment ("restore into a new database": create one, then restore into it).
#[utoipa::path(post, path = "/api/addons/{id}/restore", tag = "addons",
    params(("id" = String, Path, description = "Add-on id (the target)")),
    request_body = RestoreRequest,
    responses(
        (status = 204, description = "Restored"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such add-on or backup", body = ErrorBody),
        (status = 409, description = "Not possible (other kind or environment, failed or damaged backup)", body = ErrorBody),
        (status = 422, description = "Invalid body", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn restore(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    request: JsonBody<RestoreRequest>,
) -> Result<StatusCode, ApiError> {
    let addon = visible_addon(&state, &caller, &id, Role::Admin).await?;
    let request = request.parse()?;
    let backup = state
        .store()
        .backup(request.backup_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("backup"),
            other => other.into(),
        })?;
    if backup.environment_id != addon.environment_id {
        // Another environment's backup is as invisible as a missing one.
        return Err(ApiError::not_found("backup"));
    }
    crate::audit::note("backup", serde_json::json!(backup.id));
    state
        .addons()
        .restore_addon(&addon, &backup)
        .await
        .map_err(deploy_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change when backups are taken and how many are kept.
#[utoipa::path(put, path = "/api/addons/{id}/backup-policy", tag = "addons",
    params(("id" = String, Path, description = "Add-on id")),
    request_body = BackupPolicy,
    responses(
        (status = 200, description = "Changed", body = Addon),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such add-on", body = ErrorBody),
        (status = 422, description = "Invalid schedule or retention", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn set_backup_policy(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    policy: JsonBody<BackupPolicy>,
) -> Result<Json<Addon>, ApiError> {
    let addon = visible_addon(&state, &caller, &id, Role::Developer).await?;
    let policy = policy.parse()?;
    gilgal_deploy::parse_schedule(&policy.schedule).map_err(ApiError::invalid)?;
    if !(1..=365).contains(&policy.retention) {
        return Err(ApiError::invalid(
            "retention must be between 1 and 365 backups",
        ));
    }
    state
        .store()
        .set_addon_backup_policy(addon.id, &policy.schedule, policy.retention)
        .await?;
    Ok(Json(to_wire(state.store().addon(addon.id).await?)))
}

/// The add-on's connection URL, for an operator's `psql` or `redis-cli`; every call is in
/// the audit log.
#[utoipa::path(post, path = "/api/addons/{id}/credentials", tag = "addons",
    params(("id" = String, Path, description = "Add-on id")),
    responses(
        (status = 200, description = "Connection URL", body = AddonCredentials),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such add-on", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn credentials(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<AddonCredentials>, ApiError> {
    let addon = visible_addon(&state, &caller, &id, Role::Developer).await?;
    crate::audit::note("addon", serde_json::json!(addon.id));
    let url = state
        .addons()
        .addon_url(&addon)
        .await
        .map_err(deploy_error)?;
    Ok(Json(AddonCredentials { url }))
}
