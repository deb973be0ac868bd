//! Alerts: rule overrides per environment, notification channels, incidents (an alert fires
//! once and resolves once) and the notification outbox that delivers each change once per
//! channel, with retries.

use sqlx::Row;
use uuid::Uuid;

use crate::deployments::{environment_from_row, ENVIRONMENT_SELECT};
use crate::{from_millis, now_millis, parse_id, EnvironmentRecord, Store, StoreError};

/// A rule an environment's owner changed from its default.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleRecord {
    /// The rule's kind (`error_rate`, …).
    pub kind: String,
    /// Its bound, in the kind's unit.
    pub threshold: f64,
    /// Pending period or counting window, by kind.
    pub for_seconds: u64,
    /// Disabled rules never fire.
    pub enabled: bool,
}

/// Where an environment's alert notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertChannelRecord {
    /// Stable id.
    pub id: Uuid,
    /// Owning environment.
    pub environment_id: Uuid,
    /// `webhook`, `slack` or `email`.
    pub kind: String,
    /// The URL (webhook, slack) or the address (email).
    pub target: String,
    /// The webhook's signing secret, sealed with the environment's data key.
    pub secret_sealed: Option<String>,
    /// When it was added.
    pub created_at: time::OffsetDateTime,
}

/// One incident of one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    /// Stable id.
    pub id: Uuid,
    /// Owning environment.
    pub environment_id: Uuid,
    /// The rule's kind.
    pub kind: String,
    /// What fired it, for people.
    pub message: String,
    /// The measured value when it fired.
    pub value: Option<f64>,
    /// The rule's threshold when it fired.
    pub threshold: f64,
    /// When it fired.
    pub fired_at: time::OffsetDateTime,
    /// When it resolved; `None` while firing.
    pub resolved_at: Option<time::OffsetDateTime>,
    /// Why it resolved.
    pub resolved_message: Option<String>,
}

/// The delivery of one alert change to one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    /// The alert.
    pub alert_id: Uuid,
    /// The channel.
    pub channel_id: Uuid,
    /// `firing` or `resolved`.
    pub event: String,
    /// Tries so far.
    pub attempts: u32,
    /// When it was delivered; `None` while pending or after giving up.
    pub delivered_at: Option<time::OffsetDateTime>,
    /// The last failure.
    pub last_error: Option<String>,
}

const ALERT_COLUMNS: &str =
    "id, environment_id, kind, message, value, threshold, fired_at, resolved_at, resolved_message";
const CHANNEL_COLUMNS: &str = "id, environment_id, kind, target, secret_sealed, created_at";

fn alert_from_row(row: &sqlx::any::AnyRow) -> Result<AlertRecord, StoreError> {
    Ok(AlertRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        environment_id: parse_id(&row.try_get::<String, _>("environment_id")?)?,
        kind: row.try_get("kind")?,
        message: row.try_get("message")?,
        value: row.try_get("value")?,
        threshold: row.try_get("threshold")?,
        fired_at: from_millis(row.try_get("fired_at")?),
        resolved_at: row
            .try_get::<Option<i64>, _>("resolved_at")?
            .map(from_millis),
        resolved_message: row.try_get("resolved_message")?,
    })
}

fn channel_from_row(row: &sqlx::any::AnyRow) -> Result<AlertChannelRecord, StoreError> {
    Ok(AlertChannelRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        environment_id: parse_id(&row.try_get::<String, _>("environment_id")?)?,
        kind: row.try_get("kind")?,
        target: row.try_get("target")?,
        secret_sealed: row.try_get("secret_sealed")?,
        created_at: from_millis(row.try_get("created_at")?),
    })
}

fn rule_from_row(row: &sqlx::any::AnyRow) -> Result<AlertRuleRecord, StoreError> {
    Ok(AlertRuleRecord {
        kind: row.try_get("kind")?,
        threshold: row.try_get("threshold")?,
        for_seconds: u64::try_from(row.try_get::<i64, _>("for_seconds")?).unwrap_or(0),
        enabled: row.try_get::<i64, _>("enabled")? != 0,
    })
}

fn count_of(row: &sqlx::any::AnyRow) -> Result<u64, StoreError> {
    Ok(u64::try_from(row.try_get::<i64, _>("n")?).unwrap_or(0))
}

/// Queues `event` of `alert_id` for the environment's channels (inside `tx`): `firing` for
/// every channel, `resolved` for those that were sent the `firing`.
async fn queue_notifications(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    alert_id: Uuid,
    environment_id: Uuid,
    event: &str,
    now: i64,
) -> Result<(), StoreError> {
    // "resolved" goes only where "firing" went: a channel added meanwhile never heard of it.
    let only_notified = if event == "firing" {
        ""
    } else {
        " AND EXISTS (SELECT 1 FROM alert_notifications n WHERE n.alert_id = $1 \
          AND n.channel_id = c.id AND n.event = 'firing')"
    };
    sqlx::query(&format!(
        "INSERT INTO alert_notifications (alert_id, channel_id, event, created_at, attempts, next_attempt_at) \
         SELECT $1, c.id, $2, $3, 0, $3 FROM alert_channels c WHERE c.environment_id = $4{only_notified}"
    ))
    .bind(alert_id.to_string())
    .bind(event)
    .bind(now)
    .bind(environment_id.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Every environment of every project (the alert evaluator watches them all).
    pub async fn all_environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        sqlx::query(&format!("{ENVIRONMENT_SELECT} ORDER BY p.name, e.name"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(environment_from_row)
            .collect()
    }

    /// Every environment's rules that differ from the defaults (one query per evaluation
    /// round instead of one per environment).
    pub async fn all_alert_rule_overrides(
        &self,
    ) -> Result<Vec<(Uuid, AlertRuleRecord)>, StoreError> {
        sqlx::query("SELECT environment_id, kind, threshold, for_seconds, enabled FROM alert_rules")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    parse_id(&row.try_get::<String, _>("environment_id")?)?,
                    rule_from_row(row)?,
                ))
            })
            .collect()
    }

    /// The environment's rules that differ from the defaults.
    pub async fn alert_rule_overrides(
        &self,
        environment_id: Uuid,
    ) -> Result<Vec<AlertRuleRecord>, StoreError> {
        sqlx::query(
            "SELECT kind, threshold, for_seconds, enabled FROM alert_rules WHERE environment_id = $1 ORDER BY kind",
        )
        .bind(environment_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rule_from_row)
        .collect()
    }

    /// Stores (replaces) the environment's rule of `rule.kind`.
    pub async fn set_alert_rule(
        &self,
        environment_id: Uuid,
        rule: &AlertRuleRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO alert_rules (environment_id, kind, threshold, for_seconds, enabled, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (environment_id, kind) DO UPDATE SET \
             threshold = excluded.threshold, for_seconds = excluded.for_seconds, \
             enabled = excluded.enabled, updated_at = excluded.updated_at",
        )
        .bind(environment_id.to_string())
        .bind(&rule.kind)
        .bind(rule.threshold)
        .bind(i64::try_from(rule.for_seconds).unwrap_or(i64::MAX))
        .bind(i64::from(rule.enabled))
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Adds a notification channel to an environment.
    pub async fn create_alert_channel(
        &self,
        id: Uuid,
        environment_id: Uuid,
        kind: &str,
        target: &str,
        secret_sealed: Option<&str>,
    ) -> Result<AlertChannelRecord, StoreError> {
        sqlx::query(&format!(
            "INSERT INTO alert_channels ({CHANNEL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(id.to_string())
        .bind(environment_id.to_string())
        .bind(kind)
        .bind(target)
        .bind(secret_sealed)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        self.alert_channel(id).await
    }

    /// One channel by id (callers check it belongs to an environment the caller may see).
    pub async fn alert_channel(&self, id: Uuid) -> Result<AlertChannelRecord, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM alert_channels WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        channel_from_row(&row)
    }

    /// The environment's channels, oldest first.
    pub async fn alert_channels(
        &self,
        environment_id: Uuid,
    ) -> Result<Vec<AlertChannelRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM alert_channels WHERE environment_id = $1 ORDER BY created_at, id"
        ))
        .bind(environment_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(channel_from_row)
        .collect()
    }

    /// Removes a channel; its notifications go with it (`ON DELETE CASCADE`).
    pub async fn delete_alert_channel(&self, id: Uuid) -> Result<(), StoreError> {
        let deleted = sqlx::query("DELETE FROM alert_channels WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Opens an alert of `kind` and queues a `firing` notification for every channel, in
    /// one transaction. `Ok(false)` when one is already open (the partial unique index makes
    /// "at most one open alert per rule" hold even with two evaluators).
    pub async fn fire_alert(
        &self,
        environment_id: Uuid,
        kind: &str,
        message: &str,
        value: Option<f64>,
        threshold: f64,
    ) -> Result<bool, StoreError> {
        let id = Uuid::new_v4();
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL)"
        ))
        .bind(id.to_string())
        .bind(environment_id.to_string())
        .bind(kind)
        .bind(message)
        .bind(value)
        .bind(threshold)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        queue_notifications(&mut tx, id, environment_id, "firing", now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Resolves an open alert and queues a `resolved` notification for every channel that was
    /// sent its `firing`, in one transaction. Returns false when it was not open (already resolved).
    pub async fn resolve_alert(&self, id: Uuid, message: &str) -> Result<bool, StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT environment_id FROM alerts WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let environment_id = parse_id(&row.try_get::<String, _>("environment_id")?)?;
        let changed = sqlx::query(
            "UPDATE alerts SET resolved_at = $2, resolved_message = $3 WHERE id = $1 AND resolved_at IS NULL",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(message)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        queue_notifications(&mut tx, id, environment_id, "resolved", now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// One alert by id.
    pub async fn alert(&self, id: Uuid) -> Result<AlertRecord, StoreError> {
        let row = sqlx::query(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        alert_from_row(&row)
    }

    /// Every alert still firing, on every environment.
    pub async fn open_alerts(&self) -> Result<Vec<AlertRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE resolved_at IS NULL ORDER BY fired_at"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(alert_from_row)
        .collect()
    }

    /// The environment's newest `limit` alerts, newest first.
    pub async fn alerts(
        &self,
        environment_id: Uuid,
        limit: u32,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE environment_id = $1 ORDER BY fired_at DESC, id DESC LIMIT $2"
        ))
        .bind(environment_id.to_string())
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(alert_from_row)
        .collect()
    }

    /// Deliveries of one alert, by channel and event.
    pub async fn alert_notifications(
        &self,
        alert_id: Uuid,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        sqlx::query(
            "SELECT alert_id, channel_id, event, attempts, delivered_at, last_error FROM alert_notifications \
             WHERE alert_id = $1 ORDER BY created_at, channel_id, event",
        )
        .bind(alert_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(notification_from_row)
        .collect()
    }

    /// Undelivered notifications whose next try is due, with fewer than `max_attempts`
    /// tries, oldest first.
    pub async fn due_notifications(
        &self,
        max_attempts: u32,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        sqlx::query(
            "SELECT alert_id, channel_id, event, attempts, delivered_at, last_error FROM alert_notifications \
             WHERE delivered_at IS NULL AND attempts < $1 AND next_attempt_at <= $2 \
             ORDER BY created_at LIMIT $3",
        )
        .bind(i64::from(max_attempts))
        .bind(now_millis())
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(notification_from_row)
        .collect()
    }

    /// Records one delivery attempt: delivered, or failed with `error` and retried after
    /// `retry_after_ms`.
    pub async fn notification_attempted(
        &self,
        notification: &NotificationRecord,
        outcome: Result<(), &str>,
        retry_after_ms: u64,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let (delivered, error) = match outcome {
            Ok(()) => (Some(now), None),
            Err(e) => (None, Some(e)),
        };
        sqlx::query(
            "UPDATE alert_notifications SET attempts = attempts + 1, delivered_at = $4, last_error = $5, \
             next_attempt_at = $6 WHERE alert_id = $1 AND channel_id = $2 AND event = $3",
        )
        .bind(notification.alert_id.to_string())
        .bind(notification.channel_id.to_string())
        .bind(&notification.event)
        .bind(delivered)
        .bind(error)
        .bind(now.saturating_add(i64::try_from(retry_after_ms).unwrap_or(i64::MAX)))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Crashes (exits, OOM kills, failed starts) recorded on the environment's timeline
    /// since `since_ms`.
    pub async fn crashes_since(
        &self,
        environment_id: Uuid,
        since_ms: i64,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM environment_events WHERE environment_id = $1 \
             AND kind IN ('crash', 'oom') AND at >= $2",
        )
        .bind(environment_id.to_string())
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        count_of(&row)
    }

    /// How many of the environment's add-ons have a failed latest (finished) backup.
    pub async fn addons_with_failed_backup(&self, environment_id: Uuid) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM addons a WHERE a.environment_id = $1 AND \
             (SELECT b.state FROM addon_backups b WHERE b.addon_id = a.id AND b.state <> 'running' \
              ORDER BY b.started_at DESC, b.id DESC LIMIT 1) = 'failed'",
        )
        .bind(environment_id.to_string())
        .fetch_one(&self.pool)
        .await?;
        count_of(&row)
    }
}

fn notification_from_row(row: &sqlx::any::AnyRow) -> Result<NotificationRecord, StoreError> {
    Ok(NotificationRecord {
        alert_id: parse_id(&row.try_get::<String, _>("alert_id")?)?,
        channel_id: parse_id(&row.try_get::<String, _>("channel_id")?)?,
        event: row.try_get("event")?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
        delivered_at: row
            .try_get::<Option<i64>, _>("delivered_at")?
            .map(from_millis),
        last_error: row.try_get("last_error")?,
    })
}
