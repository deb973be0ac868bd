//! `/api/audit`: the audit trail. Administrators see every row; everyone else sees their own.

use axum::extract::State;
use axum::Json;
use gilgal_store::AuditFilter;
use gilgal_types::{AuditEntry, ErrorBody};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::ApiQuery;
use crate::extract::AuthUser;
use crate::{ApiError, AppState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit))
}

/// Filters of `GET /api/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only actions containing this text (e.g. `deployments`, `DELETE`).
    #[serde(default)]
    pub action: Option<String>,
    /// Only rows at or after this time (RFC 3339).
    #[serde(default)]
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Only this actor's rows (administrators only; others always get their own).
    #[serde(default)]
    pub actor: Option<uuid::Uuid>,
    /// At most this many rows, newest first (default 100, at most 1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Who did what, when, from where: every mutating call, newest first.
#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditQuery),
    responses(
        (status = 200, description = "Audit rows, newest first", body = Vec<AuditEntry>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 422, description = "Invalid filter", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_audit(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let since_millis = match &query.since {
        Some(text) => {
            let at =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| {
                    ApiError::invalid("since must be an RFC 3339 time, e.g. 2026-11-22T10:00:00Z")
                })?;
            Some(i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        }
        None => None,
    };
    let actor_id = if caller.user.is_admin {
        query.actor
    } else {
        Some(caller.user.id)
    };
    let rows = state
        .store()
        .audit(&AuditFilter {
            actor_id,
            action: query.action.filter(|a| !a.is_empty()),
            since_millis,
            limit: super::list_limit(query.limit, 100, 1000)?,
        })
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|row| AuditEntry {
                id: row.id,
                at: row.at,
                actor_id: row.actor_id,
                actor_email: row.actor_email,
                credential: row.credential,
                ip: row.ip,
                action: row.action,
                path: row.path,
                status: row.status,
                request_id: row.request_id,
                details: serde_json::from_str(&row.details).unwrap_or_default(),
            })
            .collect(),
    ))
}
