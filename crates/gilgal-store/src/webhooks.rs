//! Push webhooks and their deliveries.
//!
//! A webhook is looked up by id without a caller (the git host is not a user; the signature
//! is its credential), so the API checks project visibility itself for every user-facing
//! call. Deliveries are claimed by the sender's delivery id before anything happens, so a
//! redelivered push never deploys twice.

use sqlx::Row;
use uuid::Uuid;

use crate::{from_millis, now_millis, parse_id, Store, StoreError};

/// A webhook as stored (the secret stays sealed).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// Stable id; part of the receiver URL.
    pub id: Uuid,
    /// The project it deploys.
    pub project_id: Uuid,
    /// The environment pushes deploy to.
    pub environment_id: Uuid,
    /// `github`, `gitlab` or `generic`.
    pub provider: String,
    /// The repository fetched on a push (never the URL a payload names).
    pub repo_url: String,
    /// Only pushes to this branch deploy.
    pub branch: String,
    /// The shared secret, sealed with the environment's data key.
    pub secret_sealed: String,
    /// The repository's credential (taken out of its URL), sealed like the secret.
    pub git_credential_sealed: Option<String>,
    /// Who created it.
    pub created_by: Option<Uuid>,
    /// When it was created.
    pub created_at: time::OffsetDateTime,
}

impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("id", &self.id)
            .field("project_id", &self.project_id)
            .field("environment_id", &self.environment_id)
            .field("provider", &self.provider)
            .field("repo_url", &self.repo_url)
            .field("branch", &self.branch)
            .finish_non_exhaustive()
    }
}

/// A new webhook.
#[derive(Debug, Clone)]
pub struct NewWebhook<'a> {
    /// Chosen by the caller so the secret can be sealed under it before the insert.
    pub id: Uuid,
    /// The project.
    pub project_id: Uuid,
    /// The environment pushes deploy to.
    pub environment_id: Uuid,
    /// `github`, `gitlab` or `generic`.
    pub provider: &'a str,
    /// Repository to fetch.
    pub repo_url: &'a str,
    /// Branch that deploys.
    pub branch: &'a str,
    /// Sealed shared secret.
    pub secret_sealed: &'a str,
    /// Sealed repository credential, if the URL had one.
    pub git_credential_sealed: Option<&'a str>,
    /// Creator.
    pub created_by: Uuid,
}

/// One authenticated delivery and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Gilgal's id of the delivery.
    pub id: Uuid,
    /// The sender's id of the delivery, if it sent one.
    pub delivery_id: Option<String>,
    /// When it arrived.
    pub received_at: time::OffsetDateTime,
    /// The event type (`push`, `ping`, …).
    pub event: String,
    /// The pushed ref.
    pub reference: Option<String>,
    /// The pushed commit.
    pub commit_id: Option<String>,
    /// `received`, `deploying`, `ignored`, `pong` or `failed`.
    pub outcome: String,
    /// Why it was ignored or failed.
    pub detail: Option<String>,
    /// The deployment it started.
    pub deployment_id: Option<Uuid>,
}

const WEBHOOK_SELECT: &str = "SELECT id, project_id, environment_id, provider, repo_url, branch, \
     secret_sealed, git_credential_sealed, created_by, created_at FROM webhooks";

fn webhook_from_row(row: &sqlx::any::AnyRow) -> Result<WebhookRecord, StoreError> {
    Ok(WebhookRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        project_id: parse_id(&row.try_get::<String, _>("project_id")?)?,
        environment_id: parse_id(&row.try_get::<String, _>("environment_id")?)?,
        provider: row.try_get("provider")?,
        repo_url: row.try_get("repo_url")?,
        branch: row.try_get("branch")?,
        secret_sealed: row.try_get("secret_sealed")?,
        git_credential_sealed: row.try_get("git_credential_sealed")?,
        created_by: row
            .try_get::<Option<String>, _>("created_by")?
            .map(|id| parse_id(&id))
            .transpose()?,
        created_at: from_millis(row.try_get("created_at")?),
    })
}

fn delivery_from_row(row: &sqlx::any::AnyRow) -> Result<DeliveryRecord, StoreError> {
    Ok(DeliveryRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        delivery_id: row.try_get("delivery_id")?,
        received_at: from_millis(row.try_get("received_at")?),
        event: row.try_get("event")?,
        reference: row.try_get("reference")?,
        commit_id: row.try_get("commit_id")?,
        outcome: row.try_get("outcome")?,
        detail: row.try_get("detail")?,
        deployment_id: row
            .try_get::<Option<String>, _>("deployment_id")?
            .map(|id| parse_id(&id))
            .transpose()?,
    })
}

impl Store {
    /// Stores a new webhook.
    pub async fn create_webhook(&self, new: &NewWebhook<'_>) -> Result<WebhookRecord, StoreError> {
        sqlx::query(
            "INSERT INTO webhooks (id, project_id, environment_id, provider, repo_url, branch, \
             secret_sealed, git_credential_sealed, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(new.id.to_string())
        .bind(new.project_id.to_string())
        .bind(new.environment_id.to_string())
        .bind(new.provider)
        .bind(new.repo_url)
        .bind(new.branch)
        .bind(new.secret_sealed)
        .bind(new.git_credential_sealed)
        .bind(new.created_by.to_string())
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        self.webhook(new.id).await
    }

    /// A webhook by id, for anyone: the receiver authenticates by signature, and user-facing
    /// callers must check the project's visibility.
    pub async fn webhook(&self, id: Uuid) -> Result<WebhookRecord, StoreError> {
        let row = sqlx::query(&format!("{WEBHOOK_SELECT} WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        webhook_from_row(&row)
    }

    /// A project's webhooks, oldest first.
    pub async fn webhooks(&self, project_id: Uuid) -> Result<Vec<WebhookRecord>, StoreError> {
        sqlx::query(&format!(
            "{WEBHOOK_SELECT} WHERE project_id = $1 ORDER BY created_at, id"
        ))
        .bind(project_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(webhook_from_row)
        .collect()
    }

    /// Deletes a webhook with its deliveries.
    pub async fn delete_webhook(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims a delivery before acting on it. When the sender's `delivery_id` was seen
    /// before, returns the earlier delivery instead (`Err` of the pair), so a redelivery
    /// reports what the first one did and never acts twice.
    pub async fn claim_delivery(
        &self,
        webhook_id: Uuid,
        delivery_id: Option<&str>,
        event: &str,
        reference: Option<&str>,
        commit_id: Option<&str>,
    ) -> Result<Result<Uuid, DeliveryRecord>, StoreError> {
        let id = Uuid::new_v4();
        let inserted = sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, delivery_id, received_at, event, \
             reference, commit_id, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7, 'received')",
        )
        .bind(id.to_string())
        .bind(webhook_id.to_string())
        .bind(delivery_id)
        .bind(now_millis())
        .bind(event)
        .bind(reference)
        .bind(commit_id)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(Ok(id)),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                let row = sqlx::query(
                    "SELECT * FROM webhook_deliveries WHERE webhook_id = $1 AND delivery_id = $2",
                )
                .bind(webhook_id.to_string())
                .bind(delivery_id)
                .fetch_one(&self.pool)
                .await?;
                Ok(Err(delivery_from_row(&row)?))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Records what came of a claimed delivery.
    pub async fn finish_delivery(
        &self,
        id: Uuid,
        outcome: &str,
        detail: Option<&str>,
        deployment_id: Option<Uuid>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_deliveries SET outcome = $2, detail = $3, deployment_id = $4 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(outcome)
        .bind(detail)
        .bind(deployment_id.map(|d| d.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A webhook's latest deliveries, newest first.
    pub async fn deliveries(
        &self,
        webhook_id: Uuid,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = $1 \
             ORDER BY received_at DESC, id LIMIT $2",
        )
        .bind(webhook_id.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(delivery_from_row)
        .collect()
    }
}
