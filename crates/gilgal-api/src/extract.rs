//! Extractors that turn bad input into [`ApiError`]s: JSON bodies, path ids, credentials.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use gilgal_auth::opaque::{self, API_TOKEN_PREFIX};
use gilgal_auth::AuthError;
use gilgal_types::User;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::{ApiError, AppState};

/// `Json<T>` whose rejections use the API's error shape and precise status codes.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("request body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::JsonDataError(e) => ApiError::invalid(e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body is larger than this endpoint accepts",
            )
        }
        other => ApiError::new(other.status(), "bad_request", other.body_text()),
    }
}

/// Parses an id from the path; anything that is not a UUID cannot exist, so it is a 404.
pub fn parse_path_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// An access token from a login session.
    Session(Uuid),
    /// A personal API token.
    ApiToken(Uuid),
}

/// The authenticated caller; handlers that take it reject anonymous requests with 401.
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// The account.
    pub user: User,
    /// The credential used.
    pub credential: Credential,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "unauthenticated",
                    "missing `Authorization: Bearer <token>`; log in or create an API token",
                )
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "unauthenticated",
                    "the Authorization header must be `Bearer <token>`",
                )
            })?;

        if token.starts_with(API_TOKEN_PREFIX) {
            let owner = state
                .store()
                .authenticate_api_token(&opaque::digest(token))
                .await?
                .ok_or_else(|| {
                    ApiError::unauthorized(
                        "invalid_token",
                        "this API token is unknown, revoked or expired; create a new one",
                    )
                })?;
            crate::audit::set_actor(
                owner.user.id,
                owner.user.email.as_str(),
                format!("token:{}", owner.token_id),
            );
            spend_budget(state, &format!("token:{}", owner.token_id))?;
            return Ok(Self {
                user: owner.user,
                credential: Credential::ApiToken(owner.token_id),
            });
        }

        let claims = state.codec().verify(token).map_err(|e| match e {
            AuthError::ExpiredAccessToken => ApiError::unauthorized(
                "token_expired",
                "the access token has expired; refresh it or log in again",
            ),
            _ => ApiError::unauthorized(
                "invalid_token",
                "the access token is not valid; log in again",
            ),
        })?;
        if !state
            .store()
            .session_is_active(claims.sid, claims.sub)
            .await?
        {
            return Err(ApiError::unauthorized(
                "session_revoked",
                "this session has ended (logged out or revoked); log in again",
            ));
        }
        let user = state.store().user(claims.sub).await.map_err(|e| match e {
            gilgal_store::StoreError::NotFound => {
                ApiError::unauthorized("invalid_token", "the account no longer exists")
            }
            other => other.into(),
        })?;
        crate::audit::set_actor(
            user.id,
            user.email.as_str(),
            format!("session:{}", claims.sid),
        );
        spend_budget(state, &format!("session:{}", claims.sid))?;
        Ok(Self {
            user,
            credential: Credential::Session(claims.sid),
        })
    }
}

/// The client's address, when the server was started with connection info (always, via
/// [`crate::serve`]); `None` in router-only tests.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

/// Refuses a request beyond the credential's budget with 429 and `Retry-After`.
fn spend_budget(state: &AppState, key: &str) -> Result<(), ApiError> {
    state.request_budget().spend(key).map_err(|wait| {
        ApiError::too_many(
            "rate_limited",
            "too many requests with this credential; slow down",
            wait,
        )
    })
}
