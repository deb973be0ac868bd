//! Add-ons and their backups.
//!
//! An add-on row is the desired state of one backing service; the deploy crate's supervisor
//! drives the servers to it. Backups are rows before they are files: a backup is `running`
//! when it starts and becomes `succeeded` (with size and checksum) or `failed` (with the
//! error), so a failure is recorded, never a silent success.

use sqlx::Row;
use uuid::Uuid;

use crate::{from_millis, now_millis, parse_id, Store, StoreError};

/// An add-on as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct AddonRecord {
    /// Stable id.
    pub id: Uuid,
    /// The environment it is attached to.
    pub environment_id: Uuid,
    /// `postgres`, `redis` or `s3`.
    pub kind: String,
    /// Its name in the environment (`postgres`, `rate-limit`, …).
    pub name: String,
    /// Prefix of its config vars (`""` or `RATE_LIMIT_`).
    pub var_prefix: String,
    /// The generated database/role/bucket/directory identifier.
    pub resource: String,
    /// Sealed JSON credentials.
    pub credentials_sealed: String,
    /// `provisioning`, `ready` or `failed`.
    pub state: String,
    /// Cron expression of scheduled backups (UTC).
    pub backup_schedule: String,
    /// How many successful backups are kept.
    pub backup_retention: u32,
    /// When it was created.
    pub created_at: time::OffsetDateTime,
}

impl std::fmt::Debug for AddonRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddonRecord")
            .field("id", &self.id)
            .field("environment_id", &self.environment_id)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A backup as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    /// Stable id.
    pub id: Uuid,
    /// The add-on it is of (which may be gone).
    pub addon_id: Uuid,
    /// That add-on's environment.
    pub environment_id: Uuid,
    /// `postgres` or `redis`.
    pub kind: String,
    /// `manual`, `scheduled` or `final`.
    pub cause: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// The file, once written.
    pub path: Option<String>,
    /// Its size in bytes.
    pub size: Option<u64>,
    /// SHA-256 of the file.
    pub sha256: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// When it started.
    pub started_at: time::OffsetDateTime,
    /// When it ended.
    pub finished_at: Option<time::OffsetDateTime>,
}

const ADDON_COLUMNS: &str = "id, environment_id, kind, name, var_prefix, resource, \
     credentials_sealed, state, backup_schedule, backup_retention, created_at";
const BACKUP_COLUMNS: &str = "id, addon_id, environment_id, kind, cause, state, path, size, \
     sha256, error, started_at, finished_at";

fn addon_from_row(row: &sqlx::any::AnyRow) -> Result<AddonRecord, StoreError> {
    Ok(AddonRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        environment_id: parse_id(&row.try_get::<String, _>("environment_id")?)?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        var_prefix: row.try_get("var_prefix")?,
        resource: row.try_get("resource")?,
        credentials_sealed: row.try_get("credentials_sealed")?,
        state: row.try_get("state")?,
        backup_schedule: row.try_get("backup_schedule")?,
        backup_retention: u32::try_from(row.try_get::<i64, _>("backup_retention")?).unwrap_or(7),
        created_at: from_millis(row.try_get("created_at")?),
    })
}

fn backup_from_row(row: &sqlx::any::AnyRow) -> Result<BackupRecord, StoreError> {
    Ok(BackupRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        addon_id: parse_id(&row.try_get::<String, _>("addon_id")?)?,
        environment_id: parse_id(&row.try_get::<String, _>("environment_id")?)?,
        kind: row.try_get("kind")?,
        cause: row.try_get("cause")?,
        state: row.try_get("state")?,
        path: row.try_get("path")?,
        size: row
            .try_get::<Option<i64>, _>("size")?
            .map(|s| u64::try_from(s).unwrap_or(0)),
        sha256: row.try_get("sha256")?,
        error: row.try_get("error")?,
        started_at: from_millis(row.try_get("started_at")?),
        finished_at: row
            .try_get::<Option<i64>, _>("finished_at")?
            .map(from_millis),
    })
}

/// A new add-on.
#[derive(Debug, Clone)]
pub struct NewAddon<'a> {
    /// Chosen by the caller so credentials can be sealed before the insert.
    pub id: Uuid,
    /// The environment.
    pub environment_id: Uuid,
    /// The kind.
    pub kind: &'a str,
    /// Its name in the environment.
    pub name: &'a str,
    /// Config var prefix.
    pub var_prefix: &'a str,
    /// Generated identifier.
    pub resource: &'a str,
    /// Sealed credentials.
    pub credentials_sealed: &'a str,
    /// Backup schedule.
    pub backup_schedule: &'a str,
    /// Backups kept.
    pub backup_retention: u32,
}

impl Store {
    /// Records a new add-on in state `provisioning`; a name already used in the environment
    /// is a conflict.
    pub async fn create_addon(&self, new: &NewAddon<'_>) -> Result<AddonRecord, StoreError> {
        sqlx::query(&format!(
            "INSERT INTO addons ({ADDON_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, 'provisioning', $8, $9, $10)"
        ))
        .bind(new.id.to_string())
        .bind(new.environment_id.to_string())
        .bind(new.kind)
        .bind(new.name)
        .bind(new.var_prefix)
        .bind(new.resource)
        .bind(new.credentials_sealed)
        .bind(new.backup_schedule)
        .bind(i64::from(new.backup_retention))
        .bind(now_millis())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::conflict_on_unique(e, "an add-on with this name exists in the environment"))?;
        self.addon(new.id).await
    }

    /// An add-on by id (callers check the environment's visibility).
    pub async fn addon(&self, id: Uuid) -> Result<AddonRecord, StoreError> {
        let row = sqlx::query(&format!("SELECT {ADDON_COLUMNS} FROM addons WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        addon_from_row(&row)
    }

    /// An environment's add-ons, oldest first.
    pub async fn addons(&self, environment_id: Uuid) -> Result<Vec<AddonRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ADDON_COLUMNS} FROM addons WHERE environment_id = $1 ORDER BY created_at, id"
        ))
        .bind(environment_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(addon_from_row)
        .collect()
    }

    /// Every add-on of the instance (the supervisor's desired state).
    pub async fn all_addons(&self) -> Result<Vec<AddonRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {ADDON_COLUMNS} FROM addons ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(addon_from_row)
        .collect()
    }

    /// Sets an add-on's state.
    pub async fn set_addon_state(&self, id: Uuid, state: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE addons SET state = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(state)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Changes the backup schedule and retention.
    pub async fn set_addon_backup_policy(
        &self,
        id: Uuid,
        schedule: &str,
        retention: u32,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE addons SET backup_schedule = $2, backup_retention = $3 WHERE id = $1")
            .bind(id.to_string())
            .bind(schedule)
            .bind(i64::from(retention))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes an add-on's row (its backups stay).
    pub async fn delete_addon(&self, id: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM addons WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    /// Starts a backup record. A scheduled backup passes its tick: a second claim of the same
    /// tick returns `Ok(None)`, so a tick is backed up once, across restarts too.
    pub async fn start_backup(
        &self,
        addon: &AddonRecord,
        cause: &str,
        tick: Option<i64>,
    ) -> Result<Option<Uuid>, StoreError> {
        let id = Uuid::new_v4();
        let inserted = sqlx::query(&format!(
            "INSERT INTO addon_backups ({BACKUP_COLUMNS}, tick) VALUES ($1, $2, $3, $4, $5, 'running', NULL, NULL, NULL, NULL, $6, NULL, $7)"
        ))
        .bind(id.to_string())
        .bind(addon.id.to_string())
        .bind(addon.environment_id.to_string())
        .bind(addon.kind.as_str())
        .bind(cause)
        .bind(now_millis())
        .bind(tick)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(Some(id)),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a finished backup: its file, size and checksum, or its error.
    pub async fn finish_backup(
        &self,
        id: Uuid,
        outcome: Result<(&str, u64, &str), &str>,
    ) -> Result<(), StoreError> {
        let (state, path, size, sha, error) = match outcome {
            Ok((path, size, sha)) => (
                "succeeded",
                Some(path),
                Some(i64::try_from(size).unwrap_or(i64::MAX)),
                Some(sha),
                None,
            ),
            Err(error) => ("failed", None, None, None, Some(error)),
        };
        sqlx::query(
            "UPDATE addon_backups SET state = $2, path = $3, size = $4, sha256 = $5, error = $6, finished_at = $7 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(state)
        .bind(path)
        .bind(size)
        .bind(sha)
        .bind(error)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A backup by id.
    pub async fn backup(&self, id: Uuid) -> Result<BackupRecord, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM addon_backups WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        backup_from_row(&row)
    }

    /// An add-on's backups, newest first.
    pub async fn backups(&self, addon_id: Uuid) -> Result<Vec<BackupRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {BACKUP_COLUMNS} FROM addon_backups WHERE addon_id = $1 ORDER BY started_at DESC, id"
        ))
        .bind(addon_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(backup_from_row)
        .collect()
    }

    /// Backups interrupted by a crash: failed, so none stays `running` forever.
    pub async fn fail_running_backups(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE addon_backups SET state = 'failed', error = 'interrupted by a server restart', finished_at = $1 WHERE state = 'running'",
        )
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The latest scheduled tick claimed for an add-on.
    pub async fn last_backup_tick(&self, addon_id: Uuid) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MAX(tick) AS t FROM addon_backups WHERE addon_id = $1")
            .bind(addon_id.to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("t")?)
    }

    /// Deletes a backup's row (after its file was removed by retention).
    pub async fn delete_backup(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM addon_backups WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
