//! `/api/auth/*`: registration, login, refresh-token rotation, logout, and `me`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use gilgal_auth::opaque::{self, REFRESH_TOKEN_PREFIX};
use gilgal_auth::password::{self, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
use gilgal_store::{RefreshOutcome, SessionRecord};
use gilgal_types::{ErrorBody, LoginRequest, RefreshRequest, RegisterRequest, TokenPair, User};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{millis_from_now, now_secs};
use crate::extract::{ApiJson, AuthUser, ClientAddr, Credential};
use crate::{ApiError, AppState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
}

fn check_password_shape(password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_LEN {
        return Err(ApiError::invalid(format!(
            "password must be at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(ApiError::invalid(format!(
            "password must be at most {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

/// Runs a CPU-heavy password operation off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, gilgal_auth::AuthError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(ApiError::from)
}

/// Issues an access token for `session` and pairs it with `refresh_secret`.
fn token_pair(
    state: &AppState,
    session: &SessionRecord,
    refresh_secret: String,
    user: User,
) -> Result<TokenPair, ApiError> {
    let ttl = state.config.access_token_ttl.as_secs();
    let access_token = state
        .codec()
        .issue(session.user_id, session.id, now_secs(), ttl)?;
    Ok(TokenPair {
        access_token,
        token_type: "Bearer".to_owned(),
        expires_in: ttl,
        refresh_token: refresh_secret,
        user,
    })
}

async fn start_session(state: &AppState, user: User) -> Result<TokenPair, ApiError> {
    let refresh = opaque::mint(REFRESH_TOKEN_PREFIX);
    let session = state
        .store()
        .create_session(
            user.id,
            &refresh.digest,
            millis_from_now(state.config.refresh_token_ttl),
        )
        .await?;
    token_pair(state, &session, refresh.secret, user)
}

/// Create an account and log it in. The first account becomes the instance admin.
#[utoipa::path(post, path = "/api/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created and logged in", body = TokenPair),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 403, description = "Registration is closed", body = ErrorBody),
        (status = 409, description = "Email already registered", body = ErrorBody),
        (status = 422, description = "Invalid email or password", body = ErrorBody),
    ))]
async fn register(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<TokenPair>), ApiError> {
    check_password_shape(&request.password)?;
    if !state.store().registration_open().await? {
        return Err(ApiError::forbidden(
            "registration_closed",
            "registration is closed on this instance; ask an administrator for an account",
        ));
    }
    let password = request.password;
    let hash = blocking(move || password::hash_password(&password)).await?;
    let user = state.store().create_user(&request.email, &hash).await?;
    tracing::info!(user_id = %user.id, admin = user.is_admin, "account registered");
    crate::audit::set_actor(user.id, user.email.as_str(), "password".to_owned());
    Ok((
        StatusCode::CREATED,
        Json(start_session(&state, user).await?),
    ))
}

/// Exchange email and password for an access token and a refresh token.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenPair),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Wrong email or password", body = ErrorBody),
        (status = 422, description = "Invalid request", body = ErrorBody),
        (status = 429, description = "Too many failed attempts; see Retry-After", body = ErrorBody),
    ))]
async fn login(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let account_key = request.email.as_str().to_ascii_lowercase();
    let address_key = address.map(|a| a.to_string());
    let locked = state
        .account_failures()
        .check(&account_key)
        .err()
        .into_iter()
        .chain(
            address_key
                .as_deref()
                .and_then(|key| state.address_failures().check(key).err()),
        )
        .max();
    if let Some(wait) = locked {
        return Err(ApiError::too_many(
            "too_many_attempts",
            format!(
                "too many failed logins; try again in {} s",
                wait.as_secs().max(1)
            ),
            wait,
        ));
    }
    let credentials = state.store().user_credentials(&request.email).await?;
    let (hash, user) = match credentials {
        Some(c) => (c.password_hash, Some(c.user)),
        None => (state.decoy_hash().to_owned(), None),
    };
    let password = request.password;
    let matches = if password.len() > MAX_PASSWORD_LEN {
        false
    } else {
        blocking(move || password::verify_password(&password, &hash)).await?
    };
    match user {
        Some(user) if matches => {
            state.account_failures().succeeded(&account_key);
            crate::audit::set_actor(user.id, user.email.as_str(), "password".to_owned());
            Ok(Json(start_session(&state, user).await?))
        }
        _ => {
            tracing::info!("failed login");
            state.account_failures().failed(&account_key);
            if let Some(key) = &address_key {
                state.address_failures().failed(key);
            }
            crate::audit::note(
                "email",
                serde_json::Value::String(request.email.to_string()),
            );
            Err(ApiError::unauthorized(
                "invalid_credentials",
                "email or password is incorrect",
            ))
        }
    }
}

/// Rotate a refresh token: the presented one is spent and a new pair returned.
/// Presenting a spent refresh token revokes its whole session.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "New token pair", body = TokenPair),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Unknown, expired, reused or revoked refresh token", body = ErrorBody),
    ))]
async fn refresh(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let next = opaque::mint(REFRESH_TOKEN_PREFIX);
    let outcome = state
        .store()
        .rotate_refresh_token(
            &opaque::digest(&request.refresh_token),
            &next.digest,
            millis_from_now(state.config.refresh_token_ttl),
        )
        .await?;
    match outcome {
        RefreshOutcome::Rotated(session) => {
            let user = state.store().user(session.user_id).await?;
            Ok(Json(token_pair(&state, &session, next.secret, user)?))
        }
        RefreshOutcome::Unknown => Err(ApiError::unauthorized(
            "invalid_refresh_token",
            "unknown refresh token; log in again",
        )),
        RefreshOutcome::Expired => Err(ApiError::unauthorized(
            "refresh_token_expired",
            "the refresh token has expired; log in again",
        )),
        RefreshOutcome::Reused => {
            tracing::warn!("refresh token reuse detected; session revoked");
            Err(ApiError::unauthorized(
                "refresh_token_reused",
                "this refresh token was already used, so the session was revoked for safety; log in again",
            ))
        }
        RefreshOutcome::Revoked => Err(ApiError::unauthorized(
            "session_revoked",
            "this session has ended; log in again",
        )),
    }
}

/// End the caller's session (access token) or revoke the API token used to call it.
/// A refresh token in the body ends that session too.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    request_body(content = Option<RefreshRequest>, description = "Optionally, a refresh token whose session to end"),
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn logout(
    State(state): State<AppState>,
    caller: AuthUser,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let also_end: Option<RefreshRequest> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("request body is not valid: {e}"),
            )
        })?)
    };
    match caller.credential {
        Credential::Session(session) => {
            state
                .store()
                .revoke_session(session, caller.user.id)
                .await?;
        }
        Credential::ApiToken(token) => {
            state
                .store()
                .revoke_api_token(caller.user.id, token)
                .await?;
        }
    }
    if let Some(request) = also_end {
        state
            .store()
            .revoke_session_by_refresh_token(
                &opaque::digest(&request.refresh_token),
                caller.user.id,
            )
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The authenticated account.
#[utoipa::path(get, path = "/api/auth/me", tag = "auth",
    responses(
        (status = 200, description = "The caller", body = User),
        (status = 401, description = "Not authenticated", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn me(caller: AuthUser) -> Json<User> {
    Json(caller.user)
}
