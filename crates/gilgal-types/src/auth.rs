//! Bodies of the `/api/auth/*` and `/api/tokens` endpoints.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{Email, Timestamp};

/// Sign-up request; the first account on an instance becomes its admin.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Login email, unique per instance (case-insensitive).
    pub email: Email,
    /// At least 10 characters; stored only as an argon2id hash.
    #[schema(min_length = 10)]
    pub password: String,
}

/// The answer to a registration: the same whether the email was new or already had an account
/// (which is left as it was), so registering cannot be used to find out who has an account.
/// Log in next.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterAccepted {
    /// What happened and what to do next.
    pub message: String,
}

/// Email + password exchange for a token pair.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Login email.
    pub email: Email,
    /// Password.
    pub password: String,
}

/// Presents a refresh token, either to rotate it or to end its session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from the last login or refresh; each is valid once.
    pub refresh_token: String,
}

/// A short-lived access token plus a single-use refresh token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenPair {
    /// Bearer token for `Authorization: Bearer …`, valid for `expires_in` seconds.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Exchange at `/api/auth/refresh` for a new pair; reusing it revokes the whole session.
    pub refresh_token: String,
    /// The account the tokens belong to.
    pub user: User,
}

/// An account as its owner sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct User {
    /// Stable id.
    pub id: Uuid,
    /// Login email.
    pub email: Email,
    /// Instance administrators manage settings and every account.
    pub is_admin: bool,
    /// When the account was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// Request for a personal API token (for the CLI and CI).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenRequest {
    /// A label to recognise the token by, e.g. `ci-github`; 1 to 100 characters, not all
    /// blank, no control characters.
    #[schema(
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
        max_length = 100
    )]
    pub name: String,
    /// Days until it expires (1 to 3650); omit for a token that lives until revoked.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
    /// What it may do (default `full`).
    #[serde(default)]
    pub scope: TokenScope,
    /// Bind it to one project (by id): everything else is invisible to it.
    #[serde(default)]
    pub project_id: Option<Uuid>,
    /// Bind it to one environment (by id; implies its project).
    #[serde(default)]
    pub environment_id: Option<Uuid>,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Everything its owner may do.
    #[default]
    Full,
    /// Read only (GET): dashboards, monitoring.
    Read,
    /// Read, deploy, redeploy and cancel deployments: CI.
    Deploy,
}

impl TokenScope {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Read => "read",
            Self::Deploy => "deploy",
        }
    }

    /// Parses a stored name (unknown names are the narrowest scope, never the widest).
    pub fn from_stored(raw: &str) -> Self {
        match raw {
            "full" => Self::Full,
            "deploy" => Self::Deploy,
            _ => Self::Read,
        }
    }
}

/// A personal API token's metadata; the secret itself is never shown again after creation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ApiToken {
    /// Stable id, used to revoke it.
    pub id: Uuid,
    /// The label given at creation.
    pub name: String,
    /// The first characters of the token, to tell tokens apart without revealing them.
    pub prefix: String,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it was last used to authenticate, if ever.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    /// When it stops working, if it expires.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    /// What it may do.
    #[serde(default)]
    pub scope: TokenScope,
    /// The project it is bound to, if any.
    #[serde(default)]
    pub project_id: Option<Uuid>,
    /// The environment it is bound to, if any.
    #[serde(default)]
    pub environment_id: Option<Uuid>,
}

/// The response to token creation: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiToken {
    /// The secret; store it now, it cannot be shown again.
    pub token: String,
    /// Its metadata.
    #[serde(flatten)]
    pub info: ApiToken,
}

/// Instance-wide settings an administrator controls.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstanceSettings {
    /// Whether anyone may create an account with `POST /api/auth/register`.
    pub registration_open: bool,
}

/// One audited call (`GET /api/audit`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuditEntry {
    /// Stable id.
    pub id: Uuid,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// Who, when known.
    pub actor_id: Option<Uuid>,
    /// Their email at the time.
    pub actor_email: Option<String>,
    /// The credential used: `session:<id>`, `token:<id>` or `password`.
    pub credential: Option<String>,
    /// Client address.
    pub ip: Option<String>,
    /// `METHOD /api/route/{template}`.
    pub action: String,
    /// The concrete path.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Request id (matches the server's log lines).
    pub request_id: String,
    /// Extra facts, e.g. the names of config vars changed (never values).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// A member's role on a team (and so on the team's projects), weakest first.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything; changes nothing.
    Viewer,
    /// Deploys, changes config, scales, runs commands, manages cron and domains.
    Developer,
    /// Also creates, renames and deletes projects and environments, invites and removes members.
    Admin,
    /// Also manages admins and owners, transfers projects and deletes the team.
    Owner,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Developer => "developer",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    /// Parses a stored name (unknown names are the weakest role).
    pub fn from_stored(raw: &str) -> Self {
        match raw {
            "owner" => Self::Owner,
            "admin" => Self::Admin,
            "developer" => Self::Developer,
            _ => Self::Viewer,
        }
    }
}

/// A team.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Team {
    /// Stable id.
    pub id: Uuid,
    /// Name (a DNS label).
    pub name: String,
    /// The caller's role on it.
    pub role: Role,
}

/// Body of `POST /api/teams`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CreateTeamRequest {
    /// Name (a DNS label).
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
}

/// A member of a team.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TeamMember {
    /// The account.
    pub user_id: Uuid,
    /// Its email.
    pub email: String,
    /// Its role.
    pub role: Role,
}

/// Body of `POST /api/teams/{id}/members`: invite someone by email.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct InviteRequest {
    /// The invitee's email; only that account can accept.
    #[schema(
        pattern = "^\\s*[^\\s@\\x00-\\x1f\\x7f-\\x9f]+@[^\\s@.\\x00-\\x1f\\x7f-\\x9f][^\\s@\\x00-\\x1f\\x7f-\\x9f]*\\.[^\\s@\\x00-\\x1f\\x7f-\\x9f]*[^\\s@.\\x00-\\x1f\\x7f-\\x9f]\\s*$",
        max_length = 254
    )]
    pub email: String,
    /// The role they get.
    pub role: Role,
}

/// An invitation: the secret is shown once, to pass to the invitee.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Invitation {
    /// Stable id.
    pub id: Uuid,
    /// The team.
    pub team_id: Uuid,
    /// Who may accept it.
    pub email: String,
    /// The role it grants.
    pub role: Role,
    /// The single-use secret (shown once).
    pub token: String,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
}

/// Body of `POST /api/invitations/accept`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AcceptInvitationRequest {
    /// The invitation secret.
    pub token: String,
}

/// Body of `PUT /api/teams/{id}/members/{user_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ChangeRoleRequest {
    /// The new role.
    pub role: Role,
}

/// Body of `POST /api/projects/{id}/transfer`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TransferRequest {
    /// The team to move it to; `null` makes it the caller's personal project.
    #[schema(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub team_id: Option<Uuid>,
}
