//! `/api/auth/*`: registration, login, refresh-token rotation, logout, and `me`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use gilgal_auth::opaque::{self, REFRESH_TOKEN_PREFIX};
use gilgal_auth::password::{self, MAX_PASSWORD_LEN, MIN_PASSWORD_LEN};
use gilgal_store::{RefreshOutcome, SessionRecord, UserRecord};
use gilgal_types::{
    ErrorBody, LoginRequest, RefreshRequest, RegisterAccepted, RegisterRequest, TokenPair, User,
};
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

/// Runs a CPU- and memory-heavy password operation (argon2: 19 MiB each) off the async
/// workers, at most [`crate::ApiConfig::password_hashes_at_once`] at a time: a burst of
/// logins or registrations waits its turn for a bounded time, then is told to come back (503
/// with `Retry-After`), instead of allocating memory for every request at once.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce() -> Result<T, gilgal_auth::AuthError> + Send + 'static,
) -> Result<T, ApiError> {
    let wait = state.config.password_hash_wait;
    let slots = std::sync::Arc::clone(state.password_hashing());
    let permit = match tokio::time::timeout(wait, slots.acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(closed)) => return Err(ApiError::internal(&closed)),
        Err(_elapsed) => {
            tracing::warn!("password hashing is saturated; request turned away");
            return Err(ApiError::unavailable(
                "server_busy",
                "the server is busy checking other passwords; try again shortly",
                std::time::Duration::from_secs(1),
            ));
        }
    };
    // The slot is held by the hashing thread, so a caller that goes away frees it only when
    // the hash is done.
    tokio::task::spawn_blocking(move || {
        let _slot = permit;
        work()
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(ApiError::from)
}

/// Issues an access token for `session` and pairs it with `refresh_secret`.
fn token_pair(
    state: &AppState,
    session: &SessionRecord,
    refresh_secret: String,
    user: UserRecord,
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
        user: crate::wire::user(user),
    })
}

async fn start_session(state: &AppState, user: UserRecord) -> Result<TokenPair, ApiError> {
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

/// Create an account, then log in with `POST /api/auth/login`. The first account becomes the
/// instance admin. The answer is the same whether or not the email was already registered
/// (an existing account is left untouched), so registration reveals nothing about who has an
/// account; the password is hashed either way, so neither does its timing.
#[utoipa::path(post, path = "/api/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 202, description = "Registered unless the email already was; log in next", body = RegisterAccepted),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 403, description = "Registration is closed", body = ErrorBody),
        (status = 422, description = "Invalid email or password", body = ErrorBody),
        (status = 503, description = "Too many passwords being checked; see Retry-After", body = ErrorBody),
    ))]
async fn register(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterAccepted>), ApiError> {
    check_password_shape(&request.password)?;
    if !state.store().registration_open().await? {
        return Err(ApiError::forbidden(
            "registration_closed",
            "registration is closed on this instance; ask an administrator for an account",
        ));
    }
    let password = request.password;
    let hash = blocking(&state, move || password::hash_password(&password)).await?;
    match state.store().create_user(&request.email, &hash).await {
        Ok(user) => {
            tracing::info!(user_id = %user.id, admin = user.is_admin, "account registered");
            crate::audit::set_actor(user.id, user.email.as_str(), "password".to_owned());
        }
        Err(gilgal_store::StoreError::Conflict(_)) => {
            tracing::info!("registration for an email that already has an account; ignored");
        }
        Err(e) => return Err(e.into()),
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(RegisterAccepted {
            message: "registered unless this email already has an account; log in with it"
                .to_owned(),
        }),
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
        (status = 503, description = "Too many passwords being checked; see Retry-After", body = ErrorBody),
    ))]
async fn login(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let account_key = request.email.as_str().to_ascii_lowercase();
    let address_key = address.map(|a| a.to_string());
    // The attempt is counted before the password is checked, under the limiter's lock, so
    // concurrent guesses cannot all pass the check before any failure is recorded.
    claim_attempt(&state, &account_key, address_key.as_deref())?;
    let checked = check_login(&state, &request).await;
    let user = match checked {
        Ok(Some(user)) => user,
        Ok(None) => {
            tracing::info!("failed login");
            crate::audit::note(
                "email",
                serde_json::Value::String(request.email.to_string()),
            );
            return Err(ApiError::unauthorized(
                "invalid_credentials",
                "email or password is incorrect",
            ));
        }
        Err(e) => {
            // Not a wrong password (busy, database down): the attempt did not count.
            state.account_failures().refund(&account_key);
            if let Some(key) = &address_key {
                state.address_failures().refund(key);
            }
            return Err(e);
        }
    };
    state.account_failures().succeeded(&account_key);
    if let Some(key) = &address_key {
        state.address_failures().refund(key);
    }
    crate::audit::set_actor(user.id, user.email.as_str(), "password".to_owned());
    Ok(Json(start_session(&state, user).await?))
}

/// Claims one login attempt for the account and the client address, or says how long to wait.
fn claim_attempt(state: &AppState, account: &str, address: Option<&str>) -> Result<(), ApiError> {
    let refused = state.account_failures().claim(account).err().or_else(|| {
        let address = address?;
        let refused = state.address_failures().claim(address).err();
        if refused.is_some() {
            state.account_failures().refund(account);
        }
        refused
    });
    match refused {
        Some(wait) => Err(ApiError::too_many(
            "too_many_attempts",
            format!(
                "too many failed logins; try again in {} s",
                wait.as_secs().max(1)
            ),
            wait,
        )),
        None => Ok(()),
    }
}

/// The account `request` names if its password is right; an unknown email costs the same
/// argon2 check as a known one.
async fn check_login(
    state: &AppState,
    request: &LoginRequest,
) -> Result<Option<UserRecord>, ApiError> {
    let credentials = state.store().user_credentials(&request.email).await?;
    let (hash, user) = match credentials {
        Some(c) => (c.password_hash, Some(c.user)),
        None => (state.decoy_hash().to_owned(), None),
    };
    let password = request.password.clone();
    let matches = if password.len() > MAX_PASSWORD_LEN {
        false
    } else {
        blocking(state, move || password::verify_password(&password, &hash)).await?
    };
    Ok(user.filter(|_| matches))
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
    Json(crate::wire::user(caller.user))
}
