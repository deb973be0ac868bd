//! Environments (desired state), releases, deployments with recorded transitions, and logs.

use std::collections::BTreeMap;

use gilgal_core::lifecycle::{DeploymentState, ReleaseOutcome};
use sqlx::Row;
use uuid::Uuid;

use crate::{from_millis, now_millis, parse_id, Store, StoreError};

/// An environment and its desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentRecord {
    /// Stable id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// The project's name (for hostnames and labels).
    pub project_name: String,
    /// `production`, `staging`, …
    pub name: String,
    /// The release that should be serving, if any.
    pub live_release: Option<u64>,
    /// How many instances of each process type should run.
    pub formation: BTreeMap<String, u32>,
    /// Size (memory, CPU) of each process type set with `gilgal scale`; absent types use the
    /// release's `gilgal.toml` sizes.
    pub sizes: BTreeMap<String, ProcessSizeRecord>,
}

/// Memory and CPU of each instance of one process type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessSizeRecord {
    /// Memory ceiling in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Hard CPU cap in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<u64>,
}

/// A stored release: an immutable build artifact plus the config snapshot it runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRecord {
    /// Number within its environment (v1, v2, …).
    pub number: u64,
    /// Directory holding the artifact (shared by releases that reuse one build).
    pub artifact_dir: String,
    /// The build's manifest (JSON, owned by `gilgal-build`).
    pub artifact_json: String,
    /// The config snapshot (JSON, owned by `gilgal-deploy`; secrets stay sealed in it).
    pub config_json: String,
    /// What made it: "Deploy upload", "Rollback to v3", "Set FOO", …
    pub description: String,
    /// Whether its artifact was deleted by the keep-last-N policy (it cannot start again).
    pub pruned: bool,
    /// What became of it (recorded at each transition).
    pub outcome: ReleaseOutcome,
    /// When it was made.
    pub created_at: time::OffsetDateTime,
    /// The deployment that made it (its figures, logs and `redeploy` go by this id).
    pub deployment_id: Option<Uuid>,
}

/// What a new release is made of.
#[derive(Debug, Clone, Copy)]
pub struct NewRelease<'a> {
    /// Directory holding the artifact.
    pub artifact_dir: &'a str,
    /// The build's manifest.
    pub artifact_json: &'a str,
    /// The config snapshot.
    pub config_json: &'a str,
    /// What made it.
    pub description: &'a str,
}

/// A deployment row with its transitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRecord {
    /// Stable id.
    pub id: Uuid,
    /// Project.
    pub project_id: Uuid,
    /// Environment id.
    pub environment_id: Uuid,
    /// Environment name.
    pub environment_name: String,
    /// Current state.
    pub state: DeploymentState,
    /// Release built, once known.
    pub release_number: Option<u64>,
    /// Failure reason.
    pub failure: Option<String>,
    /// What it deploys (JSON: `{"kind":"upload"}`, `{"kind":"git",…}`, `{"kind":"rollback",…}`).
    pub source: String,
    /// When it was created.
    pub created_at: time::OffsetDateTime,
    /// State changes, oldest first: (from, to, at, note).
    pub transitions: Vec<TransitionRecord>,
}

/// One recorded state change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRecord {
    /// Previous state.
    pub from: Option<DeploymentState>,
    /// New state.
    pub to: DeploymentState,
    /// When.
    pub at: time::OffsetDateTime,
    /// Context.
    pub note: Option<String>,
}

/// One stored log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Position.
    pub seq: u64,
    /// When.
    pub at: time::OffsetDateTime,
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    /// Text.
    pub line: String,
}

const RELEASE_SELECT: &str =
    "SELECT number, artifact_dir, artifact, config, description, pruned, outcome, created_at, \
     (SELECT d.id FROM deployments d WHERE d.environment_id = releases.environment_id \
      AND d.release_number = releases.number ORDER BY d.created_at LIMIT 1) AS deployment_id \
     FROM releases";

fn release_from_row(row: &sqlx::any::AnyRow) -> Result<ReleaseRecord, StoreError> {
    Ok(ReleaseRecord {
        number: u64_of(row.try_get("number")?),
        artifact_dir: row.try_get("artifact_dir")?,
        artifact_json: row.try_get("artifact")?,
        config_json: row.try_get("config")?,
        description: row.try_get("description")?,
        pruned: row.try_get::<i64, _>("pruned")? != 0,
        outcome: row
            .try_get::<String, _>("outcome")?
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{e}")))?,
        created_at: from_millis(row.try_get("created_at")?),
        deployment_id: row
            .try_get::<Option<String>, _>("deployment_id")?
            .map(|id| parse_id(&id))
            .transpose()?,
    })
}

fn state_of(raw: &str) -> Result<DeploymentState, StoreError> {
    raw.parse().map_err(|e| StoreError::Corrupt(format!("{e}")))
}

fn u64_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn environment_from_row(
    row: &sqlx::any::AnyRow,
) -> Result<EnvironmentRecord, StoreError> {
    let formation: String = row.try_get("formation")?;
    let sizes: String = row.try_get("sizes")?;
    Ok(EnvironmentRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        project_id: parse_id(&row.try_get::<String, _>("project_id")?)?,
        project_name: row.try_get("project_name")?,
        name: row.try_get("name")?,
        live_release: row.try_get::<Option<i64>, _>("live_release")?.map(u64_of),
        formation: serde_json_formation(&formation)?,
        sizes: serde_json::from_str(&sizes)
            .map_err(|e| StoreError::Corrupt(format!("sizes {sizes:?}: {e}")))?,
    })
}

fn serde_json_formation(raw: &str) -> Result<BTreeMap<String, u32>, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(format!("formation {raw:?}: {e}")))
}

pub(crate) fn formation_json(formation: &BTreeMap<String, u32>) -> String {
    serde_json::to_string(formation).unwrap_or_else(|_| "{}".to_owned())
}

pub(crate) const ENVIRONMENT_SELECT: &str =
    "SELECT e.id, e.project_id, p.name AS project_name, e.name, e.live_release, e.formation, e.sizes \
     FROM environments e JOIN projects p ON p.id = e.project_id";

impl Store {
    /// The caller's project's environment by name; someone else's is not found.
    pub async fn environment(
        &self,
        owner: Uuid,
        project_id: Uuid,
        name: &str,
    ) -> Result<EnvironmentRecord, StoreError> {
        let row = sqlx::query(&format!(
            "{ENVIRONMENT_SELECT} WHERE e.project_id = $1 AND e.name = $2 AND {}",
            crate::projects::can_see("p", 3)
        ))
        .bind(project_id.to_string())
        .bind(name)
        .bind(owner.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        environment_from_row(&row)
    }

    /// An environment by id (internal: the deploy pipeline and reconciler).
    pub async fn environment_by_id(&self, id: Uuid) -> Result<EnvironmentRecord, StoreError> {
        let row = sqlx::query(&format!("{ENVIRONMENT_SELECT} WHERE e.id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        environment_from_row(&row)
    }

    /// Every environment that should be serving something (the reconciler's input): one
    /// being deleted never is, so a crash during its teardown cannot bring it back.
    pub async fn live_environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        sqlx::query(&format!(
            "{ENVIRONMENT_SELECT} WHERE e.live_release IS NOT NULL AND e.deleting_at IS NULL \
             AND p.deleting_at IS NULL ORDER BY p.name, e.name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(environment_from_row)
        .collect()
    }

    /// Makes `release` the environment's desired live release and records the outcomes in
    /// one transaction: it is `live`, and the release it replaces gets `replaced` (superseded,
    /// or rolled back).
    pub async fn set_live_release(
        &self,
        environment_id: Uuid,
        release: u64,
        replaced: ReleaseOutcome,
    ) -> Result<(), StoreError> {
        let number = i64::try_from(release).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE releases SET outcome = $1 WHERE environment_id = $2 AND number <> $3 \
             AND number = (SELECT live_release FROM environments WHERE id = $2)",
        )
        .bind(replaced.as_str())
        .bind(environment_id.to_string())
        .bind(number)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE releases SET outcome = $1 WHERE environment_id = $2 AND number = $3")
            .bind(ReleaseOutcome::Live.as_str())
            .bind(environment_id.to_string())
            .bind(number)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE environments SET live_release = $1, updated_at = $2 WHERE id = $3")
            .bind(number)
            .bind(now_millis())
            .bind(environment_id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores a new release with the next number and returns that number.
    pub async fn create_release(
        &self,
        environment_id: Uuid,
        release: NewRelease<'_>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let next: i64 = sqlx::query(
            "SELECT COALESCE(MAX(number), 0) + 1 AS next FROM releases WHERE environment_id = $1",
        )
        .bind(environment_id.to_string())
        .fetch_one(&mut *tx)
        .await?
        .try_get("next")?;
        sqlx::query(
            "INSERT INTO releases (id, environment_id, number, artifact_dir, artifact, config, description, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(environment_id.to_string())
        .bind(next)
        .bind(release.artifact_dir)
        .bind(release.artifact_json)
        .bind(release.config_json)
        .bind(release.description)
        .bind(now_millis())
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::conflict_on_unique(e, "a release with this number"))?;
        tx.commit().await?;
        Ok(u64_of(next))
    }

    /// Every release of an environment, newest first.
    pub async fn releases(&self, environment_id: Uuid) -> Result<Vec<ReleaseRecord>, StoreError> {
        sqlx::query(&format!(
            "{RELEASE_SELECT} WHERE environment_id = $1 ORDER BY number DESC"
        ))
        .bind(environment_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(release_from_row)
        .collect()
    }

    /// Marks a release's artifact as deleted.
    pub async fn mark_release_pruned(
        &self,
        environment_id: Uuid,
        number: u64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE releases SET pruned = 1 WHERE environment_id = $1 AND number = $2")
            .bind(environment_id.to_string())
            .bind(i64::try_from(number).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether any release not yet pruned (in any environment) still uses `artifact_dir`.
    pub async fn artifact_in_use(&self, artifact_dir: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM releases WHERE artifact_dir = $1 AND pruned = 0",
        )
        .bind(artifact_dir)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    /// The next release number an environment would get (to name its directory up front).
    pub async fn next_release_number(&self, environment_id: Uuid) -> Result<u64, StoreError> {
        let next: i64 = sqlx::query(
            "SELECT COALESCE(MAX(number), 0) + 1 AS next FROM releases WHERE environment_id = $1",
        )
        .bind(environment_id.to_string())
        .fetch_one(&self.pool)
        .await?
        .try_get("next")?;
        Ok(u64_of(next))
    }

    /// A release of an environment.
    pub async fn release(
        &self,
        environment_id: Uuid,
        number: u64,
    ) -> Result<ReleaseRecord, StoreError> {
        let row = sqlx::query(&format!(
            "{RELEASE_SELECT} WHERE environment_id = $1 AND number = $2"
        ))
        .bind(environment_id.to_string())
        .bind(i64::try_from(number).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        release_from_row(&row)
    }

    /// Records a new deployment in `Pending`.
    pub async fn create_deployment(
        &self,
        project_id: Uuid,
        environment_id: Uuid,
        source: &str,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::new_v4();
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO deployments (id, project_id, environment_id, state, source, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(id.to_string())
        .bind(project_id.to_string())
        .bind(environment_id.to_string())
        .bind(DeploymentState::Pending.as_str())
        .bind(source)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO deployment_transitions (deployment_id, seq, from_state, to_state, at) VALUES ($1, 0, NULL, $2, $3)")
            .bind(id.to_string())
            .bind(DeploymentState::Pending.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Moves a deployment to `to` if the lifecycle allows it from its current state, and
    /// records the transition. Returns the state it left.
    pub async fn transition_deployment(
        &self,
        id: Uuid,
        to: DeploymentState,
        note: Option<&str>,
    ) -> Result<DeploymentState, StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT state FROM deployments WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let from = state_of(&row.try_get::<String, _>("state")?)?;
        from.transition(to)
            .map_err(|e| StoreError::IllegalTransition(e.to_string()))?;
        let deadline = to
            .default_deadline()
            .map(|d| now + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
        let failure = matches!(to, DeploymentState::Failed | DeploymentState::Cancelled)
            .then_some(note)
            .flatten();
        let moved = sqlx::query(
            "UPDATE deployments SET state = $1, state_deadline = $2, updated_at = $3, failure = COALESCE($4, failure) \
             WHERE id = $5 AND state = $6",
        )
        .bind(to.as_str())
        .bind(deadline)
        .bind(now)
        .bind(failure)
        .bind(id.to_string())
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            return Err(StoreError::IllegalTransition(format!(
                "deployment {id} changed state concurrently"
            )));
        }
        if matches!(to, DeploymentState::Failed | DeploymentState::Cancelled) {
            // The release it made (if any) never got traffic.
            sqlx::query(
                "UPDATE releases SET outcome = $1 WHERE outcome = $2 AND EXISTS (\
                 SELECT 1 FROM deployments d WHERE d.id = $3 \
                 AND d.environment_id = releases.environment_id AND d.release_number = releases.number)",
            )
            .bind(ReleaseOutcome::Failed.as_str())
            .bind(ReleaseOutcome::Pending.as_str())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO deployment_transitions (deployment_id, seq, from_state, to_state, at, note) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 FROM deployment_transitions WHERE deployment_id = $1",
        )
        .bind(id.to_string())
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(now)
        .bind(note)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(from)
    }

    /// Records which release a deployment produced.
    pub async fn set_deployment_release(&self, id: Uuid, release: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE deployments SET release_number = $1 WHERE id = $2")
            .bind(i64::try_from(release).unwrap_or(i64::MAX))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A deployment as `owner` may see it.
    pub async fn deployment(&self, owner: Uuid, id: Uuid) -> Result<DeploymentRecord, StoreError> {
        self.deployment_where(id, Some(owner)).await
    }

    /// A deployment by id (internal).
    pub async fn deployment_by_id(&self, id: Uuid) -> Result<DeploymentRecord, StoreError> {
        self.deployment_where(id, None).await
    }

    async fn deployment_where(
        &self,
        id: Uuid,
        owner: Option<Uuid>,
    ) -> Result<DeploymentRecord, StoreError> {
        let row = sqlx::query(
            "SELECT d.id, d.project_id, d.environment_id, e.name AS environment_name, d.state, d.release_number, \
             d.failure, d.source, d.created_at, p.owner_id, p.team_id FROM deployments d \
             JOIN environments e ON e.id = d.environment_id JOIN projects p ON p.id = d.project_id WHERE d.id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        if let Some(owner) = owner {
            let project = parse_id(&row.try_get::<String, _>("project_id")?)?;
            // The owner of a personal project; a team's project by team membership only.
            let personal_owner = row.try_get::<Option<String>, _>("team_id")?.is_none()
                && parse_id(&row.try_get::<String, _>("owner_id")?)? == owner;
            if !personal_owner && self.project(owner, project).await.is_err() {
                return Err(StoreError::NotFound);
            }
        }
        let transitions = sqlx::query(
            "SELECT from_state, to_state, at, note FROM deployment_transitions WHERE deployment_id = $1 ORDER BY seq",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|t| {
            Ok(TransitionRecord {
                from: t.try_get::<Option<String>, _>("from_state")?.as_deref().map(state_of).transpose()?,
                to: state_of(&t.try_get::<String, _>("to_state")?)?,
                at: from_millis(t.try_get("at")?),
                note: t.try_get("note")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(DeploymentRecord {
            id,
            project_id: parse_id(&row.try_get::<String, _>("project_id")?)?,
            environment_id: parse_id(&row.try_get::<String, _>("environment_id")?)?,
            environment_name: row.try_get("environment_name")?,
            state: state_of(&row.try_get::<String, _>("state")?)?,
            release_number: row.try_get::<Option<i64>, _>("release_number")?.map(u64_of),
            failure: row.try_get("failure")?,
            source: row.try_get("source")?,
            created_at: from_millis(row.try_get("created_at")?),
            transitions,
        })
    }

    /// Deployments that were in progress (e.g. when the server died): recovery fails them, so
    /// none stays "in progress" forever; the live release keeps serving.
    pub async fn in_progress_deployments(&self) -> Result<Vec<Uuid>, StoreError> {
        let states: Vec<&str> = gilgal_core::lifecycle::ALL_STATES
            .iter()
            .filter(|s| s.is_in_progress() || **s == DeploymentState::Draining)
            .map(|s| s.as_str())
            .collect();
        let list = states
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(",");
        sqlx::query(&format!(
            "SELECT id FROM deployments WHERE state IN ({list}) ORDER BY created_at"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| parse_id(&row.try_get::<String, _>("id")?))
        .collect()
    }

    /// The live deployment of an environment, if any (to move it to draining on rollover).
    pub async fn live_deployment(&self, environment_id: Uuid) -> Result<Option<Uuid>, StoreError> {
        let row = sqlx::query("SELECT id FROM deployments WHERE environment_id = $1 AND state = 'live' ORDER BY created_at DESC")
            .bind(environment_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| parse_id(&r.try_get::<String, _>("id")?))
            .transpose()
    }

    /// Appends log lines `(at_ms, stream, line)` after the last stored one; returns the new end.
    pub async fn append_deployment_logs(
        &self,
        id: Uuid,
        lines: &[(i64, &str, &str)],
    ) -> Result<u64, StoreError> {
        if lines.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let mut next: i64 = sqlx::query(
            "SELECT COALESCE(MAX(seq), 0) AS last FROM deployment_logs WHERE deployment_id = $1",
        )
        .bind(id.to_string())
        .fetch_one(&mut *tx)
        .await?
        .try_get("last")?;
        next = crate::insert_numbered_lines(
            &mut tx,
            "deployment_logs",
            "deployment_id",
            id,
            next,
            lines,
        )
        .await?;
        tx.commit().await?;
        Ok(u64_of(next))
    }

    /// Log lines after `after` (exclusive), at most `limit`.
    pub async fn deployment_logs(
        &self,
        id: Uuid,
        after: u64,
        limit: u32,
    ) -> Result<Vec<LogRecord>, StoreError> {
        sqlx::query(
            "SELECT seq, at, stream, line FROM deployment_logs WHERE deployment_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id.to_string())
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(LogRecord {
                seq: u64_of(row.try_get("seq")?),
                at: from_millis(row.try_get("at")?),
                stream: row.try_get("stream")?,
                line: row.try_get("line")?,
            })
        })
        .collect()
    }
}

impl Store {
    /// How long each finished build took, in milliseconds (from entering `building` to
    /// leaving it), for the build-duration histogram.
    pub async fn build_durations_ms(&self) -> Result<Vec<u64>, StoreError> {
        sqlx::query(
            "SELECT b.at AS started, (SELECT MIN(t.at) FROM deployment_transitions t \
             WHERE t.deployment_id = b.deployment_id AND t.from_state = 'building') AS ended \
             FROM deployment_transitions b WHERE b.to_state = 'building'",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .filter_map(|row| {
            let started = row.try_get::<i64, _>("started");
            let ended = row.try_get::<Option<i64>, _>("ended");
            match (started, ended) {
                (Ok(started), Ok(Some(ended))) => Some(Ok(u64_of(ended - started))),
                (Ok(_), Ok(None)) => None,
                (Err(e), _) | (_, Err(e)) => Some(Err(e.into())),
            }
        })
        .collect()
    }

    /// Deployments by final state, over the whole instance (for `/metrics`).
    pub async fn deployment_outcomes(&self) -> Result<Vec<(String, u64)>, StoreError> {
        sqlx::query("SELECT state, COUNT(*) AS n FROM deployments GROUP BY state ORDER BY state")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("state")?, u64_of(row.try_get("n")?))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends batches that cross the rows-per-statement boundary on both backends: every line
    /// is stored once, numbered in order, with its own time and stream.
    async fn log_batches_round_trip(backend: crate::StoreBackend) {
        let store = crate::Store::connect(&backend).await.unwrap();
        let user = store
            .create_user(&"logs@example.com".parse().unwrap(), "hash")
            .await
            .unwrap();
        let project = store
            .create_project(user.id, &"logs".parse().unwrap(), "")
            .await
            .unwrap();
        let environment = store.list_environments(user.id, project.id).await.unwrap()[0].id;
        let deployment = store
            .create_deployment(project.id, environment, "{}")
            .await
            .unwrap();
        let texts: Vec<String> = (1..=250).map(|i| format!("line {i}")).collect();
        let rows: Vec<(i64, &str, &str)> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let stream = if i % 2 == 0 { "stdout" } else { "stderr" };
                (i64::try_from(i).unwrap(), stream, text.as_str())
            })
            .collect();
        assert_eq!(
            store
                .append_deployment_logs(deployment, &rows[..201])
                .await
                .unwrap(),
            201
        );
        assert_eq!(
            store
                .append_deployment_logs(deployment, &rows[201..])
                .await
                .unwrap(),
            250
        );
        let stored = store.deployment_logs(deployment, 0, 1000).await.unwrap();
        assert_eq!(stored.len(), 250);
        for (i, record) in stored.iter().enumerate() {
            assert_eq!(record.seq, u64::try_from(i + 1).unwrap());
            assert_eq!(record.line, texts[i]);
            assert_eq!(record.stream, rows[i].1);
        }
    }

    #[tokio::test]
    async fn log_batches_round_trip_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        log_batches_round_trip(crate::StoreBackend::Sqlite(dir.path().join("store.db"))).await;
    }

    #[tokio::test]
    async fn log_batches_round_trip_on_postgres() {
        let admin = std::env::var("GILGAL_TEST_POSTGRES_URL")
            .expect("GILGAL_TEST_POSTGRES_URL (run scripts/test)");
        let name = format!("gilgal_store_{}", Uuid::new_v4().simple());
        let url = crate::create_postgres_database(&admin, &name)
            .await
            .unwrap();
        log_batches_round_trip(crate::StoreBackend::Postgres(url)).await;
    }

    #[test]
    fn formation_round_trips() {
        let mut formation = BTreeMap::new();
        formation.insert("web".to_owned(), 2);
        formation.insert("worker".to_owned(), 0);
        assert_eq!(
            serde_json_formation(&formation_json(&formation)).unwrap(),
            formation
        );
        assert!(serde_json_formation("{}").unwrap().is_empty());
        assert!(serde_json_formation("{\"web\":x}").is_err());
    }
}
