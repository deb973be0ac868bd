//! The events timeline of each environment, its per-minute health record (uptime), and its
//! error groups (tracebacks by signature).

use sqlx::Row;
use uuid::Uuid;

use crate::{from_millis, now_millis, parse_id, Store, StoreError};

/// One thing that happened to an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// Stable id.
    pub id: Uuid,
    /// When it happened.
    pub at: time::OffsetDateTime,
    /// `deploy`, `crash`, `oom`, `restart`, `scale`, `health`.
    pub kind: String,
    /// What happened, for people.
    pub message: String,
}

/// Health checks of an environment over a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthTally {
    /// Checks that ran.
    pub checks: u64,
    /// Checks in which at least one web instance answered.
    pub up: u64,
}

impl Store {
    /// Appends an event to an environment's timeline (an environment deleted meanwhile makes
    /// this a no-op error the caller may ignore).
    pub async fn record_event(
        &self,
        environment_id: Uuid,
        kind: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO environment_events (id, environment_id, at, kind, message) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(environment_id.to_string())
        .bind(now_millis())
        .bind(kind)
        .bind(message)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest `limit` events of an environment, oldest first.
    pub async fn events(
        &self,
        environment_id: Uuid,
        limit: u32,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, message FROM environment_events WHERE environment_id = $1 \
             ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(environment_id.to_string())
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(&self.pool)
        .await?;
        let mut events = rows
            .iter()
            .map(|row| {
                Ok(EventRecord {
                    id: parse_id(&row.try_get::<String, _>("id")?)?,
                    at: from_millis(row.try_get("at")?),
                    kind: row.try_get("kind")?,
                    message: row.try_get("message")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        events.reverse();
        Ok(events)
    }

    /// Adds one health check to the environment's current minute.
    pub async fn record_health_check(
        &self,
        environment_id: Uuid,
        up: bool,
    ) -> Result<(), StoreError> {
        let minute = now_millis() / 60_000;
        sqlx::query(
            "INSERT INTO health_minutes (environment_id, minute, checks, up) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (environment_id, minute) DO UPDATE SET \
             checks = health_minutes.checks + 1, up = health_minutes.up + excluded.up",
        )
        .bind(environment_id.to_string())
        .bind(minute)
        .bind(i64::from(up))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets health minutes and events older than `days` days (they would otherwise grow
    /// by one row per environment and minute forever). Returns the rows deleted.
    pub async fn prune_health_and_events(&self, days: i64) -> Result<u64, StoreError> {
        let cutoff_ms = now_millis() - days.saturating_mul(86_400_000);
        let minutes = sqlx::query("DELETE FROM health_minutes WHERE minute < $1")
            .bind(cutoff_ms / 60_000)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let events = sqlx::query("DELETE FROM environment_events WHERE at < $1")
            .bind(cutoff_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(minutes + events)
    }

    /// Health checks of the environment in the last `minutes` minutes.
    pub async fn health_tally(
        &self,
        environment_id: Uuid,
        minutes: i64,
    ) -> Result<HealthTally, StoreError> {
        let since = now_millis() / 60_000 - minutes;
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(checks), 0) AS BIGINT) AS checks, \
             CAST(COALESCE(SUM(up), 0) AS BIGINT) AS up \
             FROM health_minutes WHERE environment_id = $1 AND minute > $2",
        )
        .bind(environment_id.to_string())
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        let checks: i64 = row.try_get("checks")?;
        let up: i64 = row.try_get("up")?;
        Ok(HealthTally {
            checks: u64::try_from(checks).unwrap_or(0),
            up: u64::try_from(up).unwrap_or(0),
        })
    }
}

/// A group of tracebacks with the same signature in one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorGroupRecord {
    /// Stable grouping key (error type and innermost frame).
    pub signature: String,
    /// The latest occurrence's one-line summary.
    pub title: String,
    /// The latest occurrence's whole traceback.
    pub sample: String,
    /// How many times it happened.
    pub occurrences: u64,
    /// First occurrence.
    pub first_seen: time::OffsetDateTime,
    /// Latest occurrence.
    pub last_seen: time::OffsetDateTime,
    /// Release of the first occurrence.
    pub first_release: Option<u64>,
    /// Release of the latest occurrence.
    pub last_release: Option<u64>,
}

impl Store {
    /// Counts one occurrence of a traceback in its group (created on first sight).
    pub async fn record_error(
        &self,
        environment_id: Uuid,
        signature: &str,
        title: &str,
        sample: &str,
        release: Option<u64>,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let release = release.and_then(|r| i64::try_from(r).ok());
        sqlx::query(
            "INSERT INTO error_groups (id, environment_id, signature, title, sample, occurrences, \
             first_seen, last_seen, first_release, last_release) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, $6, $7, $7) \
             ON CONFLICT (environment_id, signature) DO UPDATE SET \
             occurrences = error_groups.occurrences + 1, title = excluded.title, \
             sample = excluded.sample, last_seen = excluded.last_seen, \
             last_release = excluded.last_release",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(environment_id.to_string())
        .bind(signature)
        .bind(title)
        .bind(sample)
        .bind(now)
        .bind(release)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An environment's error groups, most recently seen first.
    pub async fn error_groups(
        &self,
        environment_id: Uuid,
    ) -> Result<Vec<ErrorGroupRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT signature, title, sample, occurrences, first_seen, last_seen, first_release, \
             last_release FROM error_groups WHERE environment_id = $1 \
             ORDER BY last_seen DESC, signature LIMIT 500",
        )
        .bind(environment_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let release = |name: &str| -> Result<Option<u64>, StoreError> {
                    Ok(row
                        .try_get::<Option<i64>, _>(name)?
                        .and_then(|r| u64::try_from(r).ok()))
                };
                Ok(ErrorGroupRecord {
                    signature: row.try_get("signature")?,
                    title: row.try_get("title")?,
                    sample: row.try_get("sample")?,
                    occurrences: u64::try_from(row.try_get::<i64, _>("occurrences")?).unwrap_or(0),
                    first_seen: from_millis(row.try_get("first_seen")?),
                    last_seen: from_millis(row.try_get("last_seen")?),
                    first_release: release("first_release")?,
                    last_release: release("last_release")?,
                })
            })
            .collect()
    }
}
