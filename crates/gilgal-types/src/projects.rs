//! Bodies of the `/api/projects` endpoints.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{ProjectName, Timestamp};

/// Longest project description accepted.
pub const MAX_DESCRIPTION_LEN: usize = 1000;

/// A project: one app with its environments, owned by a user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Project {
    /// Stable id.
    pub id: Uuid,
    /// Unique per instance; also the app's hostname label.
    pub name: ProjectName,
    /// Free text.
    pub description: String,
    /// The owning user.
    pub owner_id: Uuid,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// Request to create a project.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    /// A DNS label, unique on this instance.
    pub name: ProjectName,
    /// Free text, at most 1000 characters.
    #[serde(default)]
    pub description: String,
}

/// Partial update of a project; omitted fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectRequest {
    /// New name (changes the hostname).
    #[serde(default)]
    pub name: Option<ProjectName>,
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
}

/// Liveness and readiness answers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthStatus {
    /// `ok` when healthy.
    pub status: String,
}

/// Upload of a TLS certificate and key for one hostname.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCertificateRequest {
    /// PEM certificate chain, leaf first.
    pub cert_chain_pem: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Never returned by the API.
    pub key_pem: String,
}

/// A stored certificate, without its key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The hostname it serves.
    pub domain: crate::Hostname,
    /// When the leaf certificate expires.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub not_after: Timestamp,
    /// `upload`, or `acme` for automatically issued ones.
    pub source: String,
    /// When it was last replaced.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}
