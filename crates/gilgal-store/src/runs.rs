//! One-off runs (`gilgal run`, cron) with their logs and exit status, and cron jobs.

use sqlx::Row;
use uuid::Uuid;

use crate::{from_millis, now_millis, parse_id, Store, StoreError};

/// A one-off run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Stable id.
    pub id: Uuid,
    /// Environment it ran in.
    pub environment_id: Uuid,
    /// The cron job that started it, if any.
    pub cron_job_id: Option<Uuid>,
    /// The cron tick (Unix seconds) it ran for, if any.
    pub tick: Option<i64>,
    /// Release it ran from.
    pub release_number: Option<u64>,
    /// The command (JSON array of arguments).
    pub command: String,
    /// `running`, `succeeded`, `failed`, `skipped`.
    pub state: String,
    /// Exit code when it exited.
    pub exit_code: Option<i64>,
    /// Why it failed or was skipped.
    pub failure: Option<String>,
    /// When it was created.
    pub created_at: time::OffsetDateTime,
    /// When it ended.
    pub finished_at: Option<time::OffsetDateTime>,
}

/// A cron job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronJobRecord {
    /// Stable id.
    pub id: Uuid,
    /// Environment it runs in.
    pub environment_id: Uuid,
    /// Five-field cron expression, UTC.
    pub schedule: String,
    /// The command (JSON array of arguments).
    pub command: String,
    /// Whether a run may start while the previous one still runs.
    pub allow_overlap: bool,
    /// When it was created.
    pub created_at: time::OffsetDateTime,
}

const RUN_SELECT: &str =
    "SELECT id, environment_id, cron_job_id, tick, release_number, command, state, \
     exit_code, failure, created_at, finished_at FROM runs";

fn run_from_row(row: &sqlx::any::AnyRow) -> Result<RunRecord, StoreError> {
    Ok(RunRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        environment_id: parse_id(&row.try_get::<String, _>("environment_id")?)?,
        cron_job_id: row
            .try_get::<Option<String>, _>("cron_job_id")?
            .as_deref()
            .map(parse_id)
            .transpose()?,
        tick: row.try_get("tick")?,
        release_number: row
            .try_get::<Option<i64>, _>("release_number")?
            .map(|n| u64::try_from(n).unwrap_or(0)),
        command: row.try_get("command")?,
        state: row.try_get("state")?,
        exit_code: row.try_get("exit_code")?,
        failure: row.try_get("failure")?,
        created_at: from_millis(row.try_get("created_at")?),
        finished_at: row
            .try_get::<Option<i64>, _>("finished_at")?
            .map(from_millis),
    })
}

fn cron_from_row(row: &sqlx::any::AnyRow) -> Result<CronJobRecord, StoreError> {
    Ok(CronJobRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        environment_id: parse_id(&row.try_get::<String, _>("environment_id")?)?,
        schedule: row.try_get("schedule")?,
        command: row.try_get("command")?,
        allow_overlap: row.try_get::<i64, _>("allow_overlap")? != 0,
        created_at: from_millis(row.try_get("created_at")?),
    })
}

impl Store {
    /// Records a run about to start. For a cron run, `(cron_job_id, tick)` is unique: a second
    /// claim of the same tick returns `Ok(None)`, so a tick never runs twice.
    pub async fn create_run(
        &self,
        environment_id: Uuid,
        cron: Option<(Uuid, i64)>,
        release_number: Option<u64>,
        command: &str,
        state: &str,
    ) -> Result<Option<Uuid>, StoreError> {
        let id = Uuid::new_v4();
        let inserted = sqlx::query(
            "INSERT INTO runs (id, environment_id, cron_job_id, tick, release_number, command, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.to_string())
        .bind(environment_id.to_string())
        .bind(cron.map(|(job, _)| job.to_string()))
        .bind(cron.map(|(_, tick)| tick))
        .bind(release_number.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
        .bind(command)
        .bind(state)
        .bind(now_millis())
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(Some(id)),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs still running in `environment_id`, and in every project of the same owner (its
    /// team, or its user for a personal project): what bounds concurrent one-off runs.
    pub async fn running_run_usage(
        &self,
        environment_id: Uuid,
        project_id: Uuid,
    ) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN r.environment_id = $1 THEN 1 ELSE 0 END), 0) AS here, \
             COUNT(*) AS owner \
             FROM runs r JOIN environments e ON e.id = r.environment_id \
             JOIN projects p ON p.id = e.project_id \
             JOIN projects me ON me.id = $2 \
             WHERE r.state = 'running' AND ( \
               (me.team_id IS NOT NULL AND p.team_id = me.team_id) OR \
               (me.team_id IS NULL AND p.team_id IS NULL AND p.owner_id = me.owner_id))",
        )
        .bind(environment_id.to_string())
        .bind(project_id.to_string())
        .fetch_one(&self.pool)
        .await?;
        let here: i64 = row.try_get("here")?;
        let owner: i64 = row.try_get("owner")?;
        Ok((
            u64::try_from(here).unwrap_or(0),
            u64::try_from(owner).unwrap_or(0),
        ))
    }

    /// Records how a run ended.
    pub async fn finish_run(
        &self,
        id: Uuid,
        state: &str,
        exit_code: Option<i64>,
        failure: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runs SET state = $1, exit_code = $2, failure = $3, finished_at = $4 WHERE id = $5",
        )
        .bind(state)
        .bind(exit_code)
        .bind(failure)
        .bind(now_millis())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A run by id.
    pub async fn run(&self, id: Uuid) -> Result<RunRecord, StoreError> {
        let row = sqlx::query(&format!("{RUN_SELECT} WHERE id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        run_from_row(&row)
    }

    /// Runs of an environment, newest first, at most `limit`.
    pub async fn runs(
        &self,
        environment_id: Uuid,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        sqlx::query(&format!(
            "{RUN_SELECT} WHERE environment_id = $1 ORDER BY created_at DESC LIMIT $2"
        ))
        .bind(environment_id.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(run_from_row)
        .collect()
    }

    /// Runs still marked running (after a restart they are failed: their process is gone).
    pub async fn running_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        sqlx::query(&format!("{RUN_SELECT} WHERE state = 'running'"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(run_from_row)
            .collect()
    }

    /// Whether a run of this cron job is still running.
    pub async fn cron_job_running(&self, job: Uuid) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM runs WHERE cron_job_id = $1 AND state = 'running'",
        )
        .bind(job.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// The latest tick recorded for a cron job (run or skipped), if any.
    pub async fn last_cron_tick(&self, job: Uuid) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MAX(tick) AS t FROM runs WHERE cron_job_id = $1")
            .bind(job.to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("t")?)
    }

    /// Appends output lines `(at_ms, stream, line)` to a run's log.
    pub async fn append_run_logs(
        &self,
        id: Uuid,
        lines: &[(i64, &str, &str)],
    ) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let next: i64 =
            sqlx::query("SELECT COALESCE(MAX(seq), 0) AS last FROM run_logs WHERE run_id = $1")
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await?
                .try_get("last")?;
        crate::insert_numbered_lines(&mut tx, "run_logs", "run_id", id, next, lines).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A run's log lines after `after`, at most `limit`: `(seq, at, stream, line)`.
    pub async fn run_logs(
        &self,
        id: Uuid,
        after: u64,
        limit: u32,
    ) -> Result<Vec<crate::LogRecord>, StoreError> {
        sqlx::query(
            "SELECT seq, at, stream, line FROM run_logs WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id.to_string())
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(crate::LogRecord {
                seq: u64::try_from(row.try_get::<i64, _>("seq")?).unwrap_or(0),
                at: from_millis(row.try_get("at")?),
                stream: row.try_get("stream")?,
                line: row.try_get("line")?,
            })
        })
        .collect()
    }

    /// Adds a cron job.
    pub async fn create_cron_job(
        &self,
        environment_id: Uuid,
        schedule: &str,
        command: &str,
        allow_overlap: bool,
    ) -> Result<CronJobRecord, StoreError> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO cron_jobs (id, environment_id, schedule, command, allow_overlap, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(environment_id.to_string())
        .bind(schedule)
        .bind(command)
        .bind(i64::from(allow_overlap))
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        self.cron_job(id).await
    }

    /// A cron job by id.
    pub async fn cron_job(&self, id: Uuid) -> Result<CronJobRecord, StoreError> {
        let row = sqlx::query(
            "SELECT id, environment_id, schedule, command, allow_overlap, created_at FROM cron_jobs WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        cron_from_row(&row)
    }

    /// Cron jobs of one environment, or of all when `None` (the scheduler).
    pub async fn cron_jobs(
        &self,
        environment_id: Option<Uuid>,
    ) -> Result<Vec<CronJobRecord>, StoreError> {
        let rows = match environment_id {
            Some(env) => sqlx::query(
                "SELECT id, environment_id, schedule, command, allow_overlap, created_at FROM cron_jobs \
                 WHERE environment_id = $1 ORDER BY created_at",
            )
            .bind(env.to_string())
            .fetch_all(&self.pool)
            .await?,
            None => sqlx::query(
                "SELECT id, environment_id, schedule, command, allow_overlap, created_at FROM cron_jobs ORDER BY created_at",
            )
            .fetch_all(&self.pool)
            .await?,
        };
        rows.iter().map(cron_from_row).collect()
    }

    /// Removes a cron job (its past runs stay).
    pub async fn delete_cron_job(&self, id: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM cron_jobs WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
