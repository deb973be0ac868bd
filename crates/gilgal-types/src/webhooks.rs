//! Push webhooks: git hosts deploy a branch's new commits to an environment.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Body of `POST /api/webhooks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CreateWebhookRequest {
    /// The project whose pushes deploy.
    pub project_id: Uuid,
    /// Environment pushes deploy to (default `production`).
    #[serde(default)]
    pub environment: Option<String>,
    /// `github` (also Gitea/Forgejo), `gitlab`, or `generic` (any CI: HMAC-signed JSON).
    #[schema(pattern = "^(github|gitlab|generic)$", example = "github")]
    pub provider: String,
    /// The repository Gilgal fetches on a push (the payload's URL is never trusted).
    #[schema(min_length = 1, max_length = 2048)]
    pub repo_url: String,
    /// Only pushes to this branch deploy (default `main`).
    #[serde(default)]
    pub branch: Option<String>,
}

/// A webhook as the API shows it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Webhook {
    /// Stable id.
    pub id: Uuid,
    /// The project.
    pub project_id: Uuid,
    /// The environment pushes deploy to.
    pub environment: String,
    /// `github`, `gitlab` or `generic`.
    pub provider: String,
    /// The repository fetched on a push.
    pub repo_url: String,
    /// The branch that deploys.
    pub branch: String,
    /// Path of the receiver on this API; the git host posts to the API's URL + this path.
    pub receiver_path: String,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
}

/// Answer of `POST /api/webhooks`: the webhook and its secret, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CreatedWebhook {
    /// The webhook.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The shared secret to paste into the git host (GitHub: "Secret", GitLab: "Secret
    /// token"); it cannot be shown again.
    pub secret: String,
}

/// One delivery the receiver authenticated, and what came of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// Gilgal's id of the delivery.
    pub id: Uuid,
    /// The sender's id (`X-GitHub-Delivery`, GitLab's event UUID), if sent.
    pub delivery_id: Option<String>,
    /// When it arrived.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub received_at: time::OffsetDateTime,
    /// `push`, `ping`, …
    pub event: String,
    /// The pushed ref.
    pub reference: Option<String>,
    /// The pushed commit.
    pub commit: Option<String>,
    /// `deploying`, `ignored`, `pong`, `failed` (or `received` while being handled).
    pub outcome: String,
    /// Why it was ignored or failed.
    pub detail: Option<String>,
    /// The deployment it started.
    pub deployment_id: Option<Uuid>,
}

/// The receiver's answer to a git host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DeliveryOutcome {
    /// `deploying`, `ignored`, `pong` or `duplicate`.
    pub status: String,
    /// Why nothing was deployed, when nothing was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The deployment this push started (or, for a duplicate, the first delivery started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<Uuid>,
}
