//! Add-ons: managed PostgreSQL and Redis attached to an environment, and their backups.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Body of `POST /api/environments/{id}/addons`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CreateAddonRequest {
    /// `postgres` or `redis`.
    pub kind: String,
    /// Name in the environment; a named add-on's config vars get a `NAME_` prefix
    /// (`rate-limit` → `RATE_LIMIT_DATABASE_URL`). Default: the kind, unprefixed.
    #[serde(default)]
    pub name: Option<String>,
}

/// An add-on as the API shows it (never its credentials).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Addon {
    /// Stable id.
    pub id: Uuid,
    /// Environment it is attached to.
    pub environment_id: Uuid,
    /// `postgres` or `redis`.
    pub kind: String,
    /// Its name in the environment.
    pub name: String,
    /// The config vars it sets.
    pub config_vars: Vec<String>,
    /// `provisioning`, `ready` or `failed`.
    pub state: String,
    /// Scheduled backups (cron, UTC).
    pub backup_schedule: String,
    /// Successful backups kept.
    pub backup_retention: u32,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
}

/// Answer of creating or destroying an add-on: the rollout that (de)attaches it, if any.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AddonChanged {
    /// The add-on (as it was, when destroyed).
    pub addon: Addon,
    /// The deployment rolling out its config vars (when something is live).
    pub deployment: Option<Uuid>,
}

/// Body of `PUT /api/addons/{id}/backup-policy`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct BackupPolicy {
    /// Cron schedule of backups (UTC), e.g. `0 3 * * *`.
    pub schedule: String,
    /// Successful backups kept (1–365).
    pub retention: u32,
}

/// A backup.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Backup {
    /// Stable id.
    pub id: Uuid,
    /// The add-on it is of.
    pub addon_id: Uuid,
    /// `manual`, `scheduled` or `final`.
    pub cause: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// Size in bytes.
    pub size: Option<u64>,
    /// SHA-256 of the file.
    pub sha256: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: time::OffsetDateTime,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<time::OffsetDateTime>,
}

/// Body of `POST /api/addons/{id}/restore`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RestoreRequest {
    /// The backup to restore (of this add-on, or of another add-on of the environment).
    pub backup_id: Uuid,
}

/// How to reach an add-on as an operator (`gilgal addons psql`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AddonCredentials {
    /// The connection URL (with password).
    pub url: String,
}
