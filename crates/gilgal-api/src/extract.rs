//! Extractors that turn bad input into [`ApiError`]s: JSON bodies, path ids, credentials.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use gilgal_auth::opaque::{self, API_TOKEN_PREFIX};
use gilgal_auth::AuthError;
use gilgal_store::UserRecord;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::{ApiError, AppState};

/// A JSON object body decoded into `T`, whose rejections use the API's error shape: 415
/// without a JSON content type, 413 when too large, 400 when not JSON at all, 422 when valid
/// JSON is not an object or does not fit `T` (serde would take an array for a struct).
///
/// It is decoded when extracted, i.e. before the handler runs; a handler that must decide
/// authorization first takes [`JsonBody`] and calls [`JsonBody::parse`] after its checks.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = JsonBody::<T>::from_request(req, state).await?;
        body.parse().map(Self)
    }
}

/// JSON has one number type: `3.0` and `3` are the same integer (JSON Schema's `integer`
/// includes both), but serde refuses a float where an integer field is. Numbers without a
/// fractional part are turned into integers before the body meets its type.
fn integral_numbers_as_integers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(number) if number.is_f64() => {
            let Some(float) = number.as_f64() else { return };
            if float.fract() != 0.0 || !float.is_finite() {
                return;
            }
            // Exactly representable range only; beyond it the float stays a float.
            if (0.0..9_007_199_254_740_992.0).contains(&float) {
                *number = serde_json::Number::from(float as u64);
            } else if (-9_007_199_254_740_992.0..0.0).contains(&float) {
                *number = serde_json::Number::from(float as i64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_numbers_as_integers),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(integral_numbers_as_integers)
        }
        _ => {}
    }
}

/// `Query<T>` whose rejections use the API's error shape: a 422 naming the parameter, in
/// JSON like every other error (axum's own rejection is plain text).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| ApiError::invalid(rejection.body_text()))
    }
}

/// A JSON body read but not yet decoded: the content type and size are checked when it is
/// extracted, everything else by [`JsonBody::parse`], so a handler can refuse a caller (403,
/// 404) before it says anything about what the caller sent.
pub struct JsonBody<T> {
    bytes: axum::body::Bytes,
    target: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonBody<T> {
    /// Decodes the body: 400 `malformed_json` when it is not JSON, 422 `invalid_request` when
    /// it is JSON but not an object, or an object that does not fit `T`.
    pub fn parse(&self) -> Result<T, ApiError> {
        let mut value: serde_json::Value = serde_json::from_slice(&self.bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("request body is not valid JSON: {e}"),
            )
        })?;
        if !value.is_object() {
            return Err(ApiError::invalid(
                "the request body must be a JSON object (`{...}`)",
            ));
        }
        integral_numbers_as_integers(&mut value);
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                ApiError::invalid(format!("request body: {inner}"))
            } else {
                ApiError::invalid(format!("request body: {path}: {inner}"))
            }
        })
    }
}

impl<T, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "request body is larger than this endpoint accepts",
                    )
                } else {
                    ApiError::new(rejection.status(), "bad_request", rejection.body_text())
                }
            })?;
        Ok(Self {
            bytes,
            target: std::marker::PhantomData,
        })
    }
}

/// `application/json` or `application/<anything>+json`, parameters ignored (as axum's `Json`).
fn has_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
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
    pub user: UserRecord,
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
/// could otherwise mint itself a wider token); and a token bound to a project or environment
/// only reaches routes addressed to one project's resources (see
/// [`addresses_project_resources`]), whatever its scope.
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
    let bound = grant.project_id.is_some() || grant.environment_id.is_some();
    if bound && !addresses_project_resources(&parts.method, route) {
        return Err(ApiError::forbidden(
            "token_scope",
            "this API token is bound to one project; it reaches only that project's \
             resources, not the account or the instance (use a login session or an unbound token)",
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

/// Whether a route is one a project- or environment-bound token may call: a route addressed
/// to one project's resources (its handler then answers 404 for another project's), the
/// project list (filtered to the token's project), creating a webhook (its body names the
/// project, checked by the handler), and the caller's identity and logout (which revokes the
/// token itself). Everything account- or instance-wide is not: creating projects, teams,
/// invitations, transfers between owners, the audit trail, tokens, `/metrics`, admin.
fn addresses_project_resources(method: &axum::http::Method, route: &str) -> bool {
    use axum::http::Method;
    /// Prefixes of routes whose `{id}` names a resource of exactly one project.
    const PROJECT_RESOURCES: [&str; 7] = [
        "/api/projects/{id}",
        "/api/environments/{id}",
        "/api/deployments/{id}",
        "/api/runs/{id}",
        "/api/cron/{id}",
        "/api/addons/{id}",
        "/api/webhooks/{id}",
    ];
    let addressed = PROJECT_RESOURCES.iter().any(|prefix| {
        route
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    });
    (addressed && route != "/api/projects/{id}/transfer")
        || matches!(
            (method, route),
            (&Method::GET, "/api/projects")
                | (&Method::POST, "/api/webhooks")
                | (&Method::GET, "/api/auth/me")
                | (&Method::POST, "/api/auth/logout")
        )
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

/// An authenticated instance administrator; anyone else is refused with 403 `admin_only`
/// while the request is still being extracted, so before its body is read or judged.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = AuthUser::from_request_parts(parts, state).await?;
        if caller.user.is_admin {
            Ok(Self(caller))
        } else {
            Err(ApiError::forbidden(
                "admin_only",
                "only an instance administrator can do this",
            ))
        }
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
pub(crate) fn spend_budget(state: &AppState, key: &str) -> Result<(), ApiError> {
    state.request_budget().spend(key).map_err(|wait| {
        ApiError::too_many(
            "rate_limited",
            "too many requests with this credential; slow down",
            wait,
        )
    })
}
