//! `/api/projects`: the caller's projects. Another user's project is a 404, never a 403.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use gilgal_store::{ProjectChanges, StoreError};
use gilgal_types::{
    CreateProjectRequest, ErrorBody, Project, UpdateProjectRequest, MAX_DESCRIPTION_LEN,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::{parse_path_id, ApiJson, AuthUser, JsonBody};
use crate::{ApiError, AppState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, update_project, delete_project))
}

fn check_description(description: &str) -> Result<(), ApiError> {
    if description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(ApiError::invalid(format!(
            "description must be at most {MAX_DESCRIPTION_LEN} characters"
        )));
    }
    Ok(())
}

fn project_not_found(err: StoreError) -> ApiError {
    match err {
        StoreError::NotFound => ApiError::not_found("project"),
        StoreError::Conflict(_) => ApiError::new(
            StatusCode::CONFLICT,
            "name_taken",
            "a project with this name already exists on this instance; pick another name",
        ),
        other => other.into(),
    }
}

/// The caller's projects, by name.
#[utoipa::path(get, path = "/api/projects", tag = "projects",
    responses(
        (status = 200, description = "Projects", body = Vec<Project>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_projects(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<Vec<Project>>, ApiError> {
    let projects = state.store().list_projects(caller.user.id).await?;
    Ok(Json(
        projects
            .into_iter()
            .filter(|p| caller.check_project(p.id, "project").is_ok())
            .map(crate::wire::project)
            .collect(),
    ))
}

/// Create a project; its name becomes its hostname label.
#[utoipa::path(post, path = "/api/projects", tag = "projects", request_body = CreateProjectRequest,
    responses(
        (status = 201, description = "Created", body = Project),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 422, description = "Invalid name or description", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_project(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(request): ApiJson<CreateProjectRequest>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    check_description(&request.description)?;
    let project = state
        .store()
        .create_project(caller.user.id, &request.name, &request.description)
        .await
        .map_err(project_not_found)?;
    tracing::info!(project_id = %project.id, name = %project.name, "project created");
    Ok((StatusCode::CREATED, Json(crate::wire::project(project))))
}

/// One of the caller's projects.
#[utoipa::path(get, path = "/api/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "The project", body = Project),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such project for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn get_project(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Project>, ApiError> {
    let id = parse_path_id(&id, "project")?;
    caller.check_project(id, "project")?;
    Ok(Json(crate::wire::project(
        state
            .store()
            .project(caller.user.id, id)
            .await
            .map_err(project_not_found)?,
    )))
}

/// Rename or re-describe one of the caller's projects.
#[utoipa::path(put, path = "/api/projects/{id}", tag = "projects", request_body = UpdateProjectRequest,
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "Updated", body = Project),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such project for this caller", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 422, description = "Invalid name or description", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn update_project(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    request: JsonBody<UpdateProjectRequest>,
) -> Result<Json<Project>, ApiError> {
    let id = parse_path_id(&id, "project")?;
    caller.check_scope(id, None, "project")?;
    crate::routes::teams::require_role(&state, &caller, id, gilgal_types::Role::Admin)
        .await
        .map_err(|e| match e.status() {
            StatusCode::NOT_FOUND => ApiError::not_found("project"),
            _ => e,
        })?;
    let request = request.parse()?;
    if let Some(description) = &request.description {
        check_description(description)?;
    }
    let changes = ProjectChanges {
        name: request.name,
        description: request.description,
    };
    let renamed = changes.name.is_some();
    let project = state
        .store()
        .update_project(caller.user.id, id, &changes)
        .await
        .map_err(project_not_found)?;
    if renamed {
        // Its routes move to the new hostnames at once: the old ones are free for others.
        for environment in state.store().list_environments(caller.user.id, id).await? {
            if environment.live_release.is_some() {
                state
                    .changes()
                    .refresh_route(&environment)
                    .await
                    .map_err(crate::routes::environments::deploy_error)?;
            }
        }
    }
    Ok(Json(crate::wire::project(project)))
}

/// Delete one of the caller's projects with everything it runs and stores.
#[utoipa::path(delete, path = "/api/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such project for this caller", body = ErrorBody),
        (status = 409, description = "An add-on's final backup failed; nothing was deleted", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn delete_project(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_path_id(&id, "project")?;
    caller.check_scope(id, None, "project")?;
    crate::routes::teams::require_role(&state, &caller, id, gilgal_types::Role::Admin)
        .await
        .map_err(|e| match e.status() {
            StatusCode::NOT_FOUND => ApiError::not_found("project"),
            _ => e,
        })?;
    // Everything it owned stops and goes (instances, routes, add-ons after their final
    // backups, artifacts, logs), then its rows.
    state
        .teardown()
        .delete_project(id)
        .await
        .map_err(|e| match e {
            gilgal_deploy::DeployError::Store(StoreError::NotFound) => {
                ApiError::not_found("project")
            }
            other => crate::routes::environments::deploy_error(other),
        })?;
    tracing::info!(project_id = %id, "project deleted");
    Ok(StatusCode::NO_CONTENT)
}
