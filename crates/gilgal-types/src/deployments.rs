//! Bodies of the deployment endpoints.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::Timestamp;

/// A deployment: one attempt to turn source into the live release of an environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Deployment {
    /// Stable id.
    pub id: Uuid,
    /// The project deployed.
    pub project_id: Uuid,
    /// The environment deployed to (e.g. `production`).
    pub environment: String,
    /// Lifecycle state: pending, building, releasing, starting, healthy, live, draining,
    /// retired, failed or cancelled.
    pub state: String,
    /// The release number this deployment built, once the build succeeded.
    pub release: Option<u64>,
    /// Why it failed, with the tail of the relevant log.
    pub failure: Option<String>,
    /// Where the environment is served once live.
    pub url: Option<String>,
    /// Every state change, oldest first.
    pub transitions: Vec<DeploymentTransition>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// One recorded state change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DeploymentTransition {
    /// Previous state (none for the first).
    pub from: Option<String>,
    /// New state.
    pub to: String,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// Context, e.g. the failure reason.
    pub note: Option<String>,
}

/// One line of a deployment's build and rollout log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DeploymentLogLine {
    /// Position in the log (resume with `?after=`).
    pub seq: u64,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// `stdout`, `stderr` or `system` (Gilgal's own messages).
    pub stream: String,
    /// The text, without the newline.
    pub line: String,
}
