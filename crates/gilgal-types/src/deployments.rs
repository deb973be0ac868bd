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

/// One release's answers over a canary step's window.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Default)]
pub struct CanaryFigures {
    /// Requests answered.
    pub requests: u64,
    /// 5xx answers among them (the edge's 502/504 for the release included).
    pub errors: u64,
    /// Share of 5xx answers (0 to 1).
    pub error_rate: f64,
    /// 99th-percentile latency (upper bound of its histogram bucket), when any request.
    pub p99_seconds: Option<f64>,
}

/// `GET /api/environments/{id}/canary`: where the canary in progress stands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct CanaryStatus {
    /// The deployment running it (cancelling it is `abort`).
    pub deployment_id: Uuid,
    /// The release under test.
    pub release: u64,
    /// The live release it is judged against.
    pub stable_release: u64,
    /// Its steps (`10,25,pause,50,100`).
    pub steps: String,
    /// Index of the current step (0-based).
    pub step: usize,
    /// Percentage of new requests the canary gets now.
    pub weight: u32,
    /// `starting`, `analysing`, `waiting for traffic`, `paused` or `promoting`.
    pub phase: String,
    /// Seconds the current step has run.
    pub step_seconds: u64,
    /// The canary's figures in the current step's window.
    pub canary: CanaryFigures,
    /// The live release's figures over the same window.
    pub stable: CanaryFigures,
}

/// Body of `POST /api/environments/{id}/canary/promote`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CanaryPromoteRequest {
    /// Skip every remaining step: the canary goes live now (default: past the current step
    /// or pause only).
    #[serde(default)]
    pub full: bool,
}

/// Query parameters of `POST /api/projects/{id}/deployments` that choose how the release
/// rolls out: a canary or blue-green (the field names are the query's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CanaryOptions {
    /// `blue-green`, or none for a canary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Blue-green smoke checks, `;`-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smoke: Option<String>,
    /// Steps: `10,25,pause,50,100` (canaries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// Seconds each step is held and judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u64>,
    /// Keep each client on the release it first got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<bool>,
    /// Canary requests a step needs before it can pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Seconds past the interval a step waits for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_deadline_seconds: Option<u64>,
    /// `rollback` or `proceed` at that deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_traffic: Option<String>,
}
