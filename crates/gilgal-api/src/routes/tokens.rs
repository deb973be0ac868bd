//! `/api/tokens`: personal API tokens for the CLI and CI, shown once and stored hashed.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use gilgal_auth::opaque::{self, API_TOKEN_PREFIX};
use gilgal_types::{ApiToken, CreateApiTokenRequest, CreatedApiToken, ErrorBody};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::millis_from_now;
use crate::extract::{parse_path_id, ApiJson, AuthUser};
use crate::{ApiError, AppState};

/// Longest token label.
const MAX_NAME_LEN: usize = 100;
/// Longest lifetime a token may be given (ten years).
const MAX_EXPIRY_DAYS: u32 = 3650;

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
}

/// Create a personal API token; the secret is in this response only.
#[utoipa::path(post, path = "/api/tokens", tag = "tokens", request_body = CreateApiTokenRequest,
    responses(
        (status = 201, description = "Token created; store the secret now", body = CreatedApiToken),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "The project or environment to bind it to is not yours", body = ErrorBody),
        (status = 422, description = "Invalid name or expiry", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_token(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(request): ApiJson<CreateApiTokenRequest>,
) -> Result<(StatusCode, Json<CreatedApiToken>), ApiError> {
    let name = request.name.trim();
    if name.is_empty()
        || request.name.chars().count() > MAX_NAME_LEN
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(format!(
            "token name must be 1 to {MAX_NAME_LEN} printable characters"
        )));
    }
    let expires_at = match request.expires_in_days {
        None => None,
        Some(days) if (1..=MAX_EXPIRY_DAYS).contains(&days) => Some(millis_from_now(
            std::time::Duration::from_secs(u64::from(days) * 86_400),
        )),
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "expires_in_days must be between 1 and {MAX_EXPIRY_DAYS}"
            )))
        }
    };
    // A binding must name the caller's own project/environment (someone else's is a 404).
    let mut project_id = request.project_id;
    if let Some(environment_id) = request.environment_id {
        let environment = state
            .store()
            .environment_of(caller.user.id, environment_id)
            .await
            .map_err(|_| ApiError::not_found("environment"))?;
        if project_id.is_some_and(|p| p != environment.project_id) {
            return Err(ApiError::invalid(
                "environment_id belongs to another project than project_id",
            ));
        }
        project_id = Some(environment.project_id);
    }
    if let Some(project) = project_id {
        state
            .store()
            .project(caller.user.id, project)
            .await
            .map_err(|_| ApiError::not_found("project"))?;
    }
    let grant = gilgal_store::TokenGrant {
        scope: request.scope,
        project_id,
        environment_id: request.environment_id,
    };
    let minted = opaque::mint(API_TOKEN_PREFIX);
    let info = state
        .store()
        .create_api_token(
            caller.user.id,
            name,
            &minted.digest,
            &minted.display_prefix,
            expires_at,
            grant,
        )
        .await?;
    tracing::info!(token_id = %info.id, user_id = %caller.user.id, "api token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiToken {
            token: minted.secret,
            info: crate::wire::api_token(info),
        }),
    ))
}

/// The caller's live API tokens (never their secrets).
#[utoipa::path(get, path = "/api/tokens", tag = "tokens",
    responses(
        (status = 200, description = "Tokens, newest first", body = Vec<ApiToken>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_tokens(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<Vec<ApiToken>>, ApiError> {
    Ok(Json(
        state
            .store()
            .list_api_tokens(caller.user.id)
            .await?
            .into_iter()
            .map(crate::wire::api_token)
            .collect(),
    ))
}

/// Revoke one of the caller's API tokens; it stops working at once.
#[utoipa::path(delete, path = "/api/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such token for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn revoke_token(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_path_id(&id, "token")?;
    state
        .store()
        .revoke_api_token(caller.user.id, id)
        .await
        .map_err(|e| match e {
            gilgal_store::StoreError::NotFound => ApiError::not_found("token"),
            other => other.into(),
        })?;
    tracing::info!(token_id = %id, user_id = %caller.user.id, "api token revoked");
    Ok(StatusCode::NO_CONTENT)
}
