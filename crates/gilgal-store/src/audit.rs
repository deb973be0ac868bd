//! The append-only audit log: rows are only ever inserted and read.

use sqlx::Row;
use uuid::Uuid;

use crate::{from_millis, now_millis, parse_id, Store, StoreError};

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Stable id.
    pub id: Uuid,
    /// When.
    pub at: time::OffsetDateTime,
    /// Who (when known).
    pub actor_id: Option<Uuid>,
    /// Their email at the time.
    pub actor_email: Option<String>,
    /// Which credential: `session:<id>` or `token:<id>`.
    pub credential: Option<String>,
    /// Client address.
    pub ip: Option<String>,
    /// `METHOD /api/route/{template}`.
    pub action: String,
    /// The concrete path (ids, never query strings or bodies).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Request id, to find the matching server log lines.
    pub request_id: String,
    /// Extra facts (JSON): e.g. config var names changed, never their values.
    pub details: String,
}

/// Filters of an audit query.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this actor's rows.
    pub actor_id: Option<Uuid>,
    /// Only actions containing this text.
    pub action: Option<String>,
    /// Only rows at or after this time (Unix ms).
    pub since_millis: Option<i64>,
    /// At most this many rows (newest first).
    pub limit: u32,
}

impl Store {
    /// Appends an audit row.
    pub async fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor_id, actor_email, credential, ip, action, path, status, request_id, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(record.id.to_string())
        .bind(now_millis())
        .bind(record.actor_id.map(|id| id.to_string()))
        .bind(record.actor_email.as_deref())
        .bind(record.credential.as_deref())
        .bind(record.ip.as_deref())
        .bind(&record.action)
        .bind(&record.path)
        .bind(i64::from(record.status))
        .bind(&record.request_id)
        .bind(&record.details)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Audit rows matching `filter`, newest first.
    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor_id, actor_email, credential, ip, action, path, status, request_id, details \
             FROM audit_log WHERE ($1 IS NULL OR actor_id = $1) AND ($2 IS NULL OR action LIKE $2) \
             AND ($3 IS NULL OR at >= $3) ORDER BY at DESC, id LIMIT $4",
        )
        .bind(filter.actor_id.map(|id| id.to_string()))
        .bind(filter.action.as_ref().map(|a| {
            format!("%{}%", a.replace(['\\', '%', '_'], ""))
        }))
        .bind(filter.since_millis)
        .bind(i64::from(filter.limit.clamp(1, 1000)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    id: parse_id(&row.try_get::<String, _>("id")?)?,
                    at: from_millis(row.try_get("at")?),
                    actor_id: row
                        .try_get::<Option<String>, _>("actor_id")?
                        .as_deref()
                        .map(parse_id)
                        .transpose()?,
                    actor_email: row.try_get("actor_email")?,
                    credential: row.try_get("credential")?,
                    ip: row.try_get("ip")?,
                    action: row.try_get("action")?,
                    path: row.try_get("path")?,
                    status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
                    request_id: row.try_get("request_id")?,
                    details: row.try_get("details")?,
                })
            })
            .collect()
    }
}
