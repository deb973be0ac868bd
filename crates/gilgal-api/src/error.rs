//! The one error type handlers return, rendered as the one error shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gilgal_store::StoreError;
use gilgal_types::{ErrorBody, ErrorDetail};

use crate::request_id;

/// A failure to report to the client: status, stable code and a safe message.
///
/// Internal causes are logged with the request id and never sent to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with an explicit status, code and user-facing message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// 429 with a `Retry-After` header: the caller must wait before trying again.
    pub fn too_many(
        code: &'static str,
        message: impl Into<String>,
        wait: std::time::Duration,
    ) -> Self {
        Self {
            retry_after_secs: Some(wait.as_secs().max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    /// 503 with a `Retry-After` header: the server is saturated, not the caller at fault.
    pub fn unavailable(
        code: &'static str,
        message: impl Into<String>,
        wait: std::time::Duration,
    ) -> Self {
        Self {
            retry_after_secs: Some(wait.as_secs().max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 404: the resource does not exist *for this caller* (also used for other users' ids).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 401: no usable credentials.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 403: authenticated but not allowed.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 422: well-formed JSON whose values break a rule.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    /// 500: logs `cause` and tells the client only the request id.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error; quote the request id when reporting it",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The user-facing message (what a webhook delivery record keeps of a failure).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::not_found("resource"),
            StoreError::IllegalTransition(why) => {
                Self::new(StatusCode::CONFLICT, "illegal_state", why)
            }
            StoreError::Conflict(what) => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} already exists"),
            ),
            other => {
                tracing::error!(error = %other, "store error");
                if matches!(other, StoreError::Connect(_)) {
                    Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "the database is unreachable; retry shortly",
                    )
                } else {
                    Self::internal(&other)
                }
            }
        }
    }
}

impl From<gilgal_auth::AuthError> for ApiError {
    fn from(err: gilgal_auth::AuthError) -> Self {
        Self::internal(&err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(
                status = self.status.as_u16(),
                code = self.code,
                "request failed"
            );
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                request_id: request_id::current(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}
