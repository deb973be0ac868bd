//! The one error shape every API failure is rendered as.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of every non-2xx API response, so clients parse failures one way.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// Machine-readable code, human message, and the request id to quote in a bug report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `not_found`, `invalid_credentials`.
    pub code: String,
    /// A message safe to show to the user, saying what to do next.
    pub message: String,
    /// The request id the server logged this failure under.
    pub request_id: String,
}
