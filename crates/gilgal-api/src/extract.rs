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
    /// Limits of a scoped API token (`None`: a login session or a full, unbound token).
    pub restriction: Option<gilgal_store::TokenGrant>,
    /// Whether the request changes something (POST, PUT, PATCH, DELETE): it then needs the
    /// developer role on the project, reads need viewer.
    pub mutating: bool,
}

impl AuthUser {
    /// Hides what a project- or environment-bound token may not see: a 404, like any other
    /// resource the caller cannot reach.
    pub fn check_scope(
        &self,
        project_id: uuid::Uuid,
        environment_id: Option<uuid::Uuid>,
        what: &str,
    ) -> Result<(), ApiError> {
        let Some(grant) = &self.restriction else {
            return Ok(());
        };
        let project_ok = grant.project_id.is_none_or(|p| p == project_id);
        let environment_ok = match (grant.environment_id, environment_id) {
            (Some(bound), Some(asked)) => bound == asked,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if project_ok && environment_ok {
            Ok(())
        } else {
            Err(ApiError::not_found(what))
        }
    }

    /// Like [`AuthUser::check_scope`] for project-level reads: an environment-bound token may
    /// read its project.
    pub fn check_project(&self, project_id: uuid::Uuid, what: &str) -> Result<(), ApiError> {
        match &self.restriction {
            Some(grant) if grant.project_id.is_some_and(|p| p != project_id) => {
                Err(ApiError::not_found(what))
            }
            _ => Ok(()),
        }
    }

    /// Whether the token is bound to a project or environment, or narrower than full.
    pub fn is_restricted(&self) -> bool {
        self.restriction.is_some()
    }
}

/// Refuses what a scoped token's scope does not cover: `read` tokens only read, `deploy`
/// tokens read and deploy; any restricted token is refused token and admin management (it
/// could otherwise mint itself a wider token).
fn check_method_scope(parts: &Parts, grant: &gilgal_store::TokenGrant) -> Result<(), ApiError> {
    use axum::http::Method;
    let route = parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str())
        .unwrap_or("");
    let reading = matches!(parts.method, Method::GET | Method::HEAD);
    if route.starts_with("/api/tokens") && !reading || route.starts_with("/api/admin") {
        return Err(ApiError::forbidden(
            "token_scope",
            "a scoped API token cannot manage tokens or the instance; use a login session",
        ));
    }
    let allowed = match grant.scope {
        gilgal_types::TokenScope::Full => true,
        gilgal_types::TokenScope::Read => reading,
        gilgal_types::TokenScope::Deploy => {
            reading
                || matches!(
                    (&parts.method, route),
                    (&Method::POST, "/api/projects/{id}/deployments")
                        | (&Method::POST, "/api/deployments/{id}/redeploy")
                        | (&Method::DELETE, "/api/deployments/{id}")
                )
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "token_scope",
            format!(
                "this API token's scope is `{}`; it cannot do this",
                grant.scope.as_str()
            ),
        ))
    }
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
            let restricted = owner.grant.scope != gilgal_types::TokenScope::Full
                || owner.grant.project_id.is_some()
                || owner.grant.environment_id.is_some();
            let restriction = restricted.then_some(owner.grant);
            if let Some(grant) = &restriction {
                check_method_scope(parts, grant)?;
            }
            return Ok(Self {
                user: owner.user,
                credential: Credential::ApiToken(owner.token_id),
                restriction,
                mutating: is_mutating(&parts.method),
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
            restriction: None,
            mutating: is_mutating(&parts.method),
        })
    }
}

/// The client's address, when the server was started with connection info (always, via
/// [`crate::serve`]); `None` in router-only tests. Behind a trusted reverse proxy
/// ([`crate::ApiConfig::trusted_proxies`]) it is the client the proxy names.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl ClientAddr {
    /// The client address of a request with `extensions` and `headers`.
    pub(crate) fn of(
        state: &AppState,
        extensions: &axum::http::Extensions,
        headers: &axum::http::HeaderMap,
    ) -> Self {
        Self(
            extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| {
                    gilgal_proxy::forwarded_client(
                        &state.config.trusted_proxies,
                        info.0.ip(),
                        headers,
                    )
                }),
        )
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self::of(state, &parts.extensions, &parts.headers))
    }
}

fn is_mutating(method: &axum::http::Method) -> bool {
    !matches!(
        *method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    )
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
