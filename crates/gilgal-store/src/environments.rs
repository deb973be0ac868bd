//! Environments of a project (create, rename, delete), their process formation and sizes, their
//! wrapped data keys, and their config vars.

use std::collections::BTreeMap;

use sqlx::Row;
use uuid::Uuid;

use crate::deployments::{environment_from_row, formation_json, ENVIRONMENT_SELECT};
use crate::{now_millis, EnvironmentRecord, ProcessSizeRecord, Store, StoreError};

/// What an environment name may not collide with.
const ENVIRONMENT_TAKEN: &str = "an environment or project with this hostname";

/// One config var as stored; a secret's `value` is sealed ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigVarRecord {
    /// Variable name (`DATABASE_URL`).
    pub name: String,
    /// Plain value, or sealed ciphertext when `secret`.
    pub value: String,
    /// Whether the value is a secret (sealed at rest, never returned by the API).
    pub secret: bool,
}

impl std::fmt::Debug for ConfigVarRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigVarRecord")
            .field("name", &self.name)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// One change to an environment's config vars.
#[derive(Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// Set (insert or replace) a variable.
    Set(ConfigVarRecord),
    /// Remove a variable (no error when absent).
    Unset(String),
}

impl std::fmt::Debug for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Set(var) => write!(f, "Set({var:?})"),
            Self::Unset(name) => write!(f, "Unset({name})"),
        }
    }
}

impl Store {
    /// The caller's project's environments, by name.
    pub async fn list_environments(
        &self,
        owner: Uuid,
        project_id: Uuid,
    ) -> Result<Vec<EnvironmentRecord>, StoreError> {
        self.project(owner, project_id).await?;
        sqlx::query(&format!(
            "{ENVIRONMENT_SELECT} WHERE e.project_id = $1 AND {} ORDER BY e.name",
            crate::projects::can_see("p", 2)
        ))
        .bind(project_id.to_string())
        .bind(owner.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(environment_from_row)
        .collect()
    }

    /// An environment by id as `owner` may see it; someone else's is not found.
    pub async fn environment_of(
        &self,
        owner: Uuid,
        id: Uuid,
    ) -> Result<EnvironmentRecord, StoreError> {
        let row = sqlx::query(&format!(
            "{ENVIRONMENT_SELECT} WHERE e.id = $1 AND {}",
            crate::projects::can_see("p", 2)
        ))
        .bind(id.to_string())
        .bind(owner.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        environment_from_row(&row)
    }

    /// Adds an environment to the caller's project. Its hostname is checked and claimed in
    /// one transaction, serialised with every other claim ([`claim_hostnames`]).
    pub async fn create_environment(
        &self,
        owner: Uuid,
        project_id: Uuid,
        name: &str,
    ) -> Result<EnvironmentRecord, StoreError> {
        self.project(owner, project_id).await?;
        let id = Uuid::new_v4();
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        claim_hostnames(&mut tx).await?;
        let project_name: String = sqlx::query("SELECT name FROM projects WHERE id = $1")
            .bind(project_id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?
            .try_get("name")?;
        if label_taken(&mut tx, &format!("{project_name}-{name}"), None).await? {
            return Err(StoreError::Conflict(ENVIRONMENT_TAKEN));
        }
        sqlx::query(
            "INSERT INTO environments (id, project_id, name, formation, created_at, updated_at) \
             VALUES ($1, $2, $3, '{}', $4, $4)",
        )
        .bind(id.to_string())
        .bind(project_id.to_string())
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::conflict_on_unique(e, ENVIRONMENT_TAKEN))?;
        tx.commit().await?;
        self.environment_by_id(id).await
    }

    /// Renames an environment (its hostname changes with it), checked and claimed in one
    /// transaction like [`Store::create_environment`].
    pub async fn rename_environment(
        &self,
        owner: Uuid,
        id: Uuid,
        name: &str,
    ) -> Result<EnvironmentRecord, StoreError> {
        let current = self.environment_of(owner, id).await?;
        if current.name == name {
            return Ok(current);
        }
        let mut tx = self.pool.begin().await?;
        claim_hostnames(&mut tx).await?;
        let project_name: String = sqlx::query("SELECT name FROM projects WHERE id = $1")
            .bind(current.project_id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?
            .try_get("name")?;
        if label_taken(&mut tx, &format!("{project_name}-{name}"), None).await? {
            return Err(StoreError::Conflict(ENVIRONMENT_TAKEN));
        }
        sqlx::query("UPDATE environments SET name = $1, updated_at = $2 WHERE id = $3")
            .bind(name)
            .bind(now_millis())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::conflict_on_unique(e, ENVIRONMENT_TAKEN))?;
        tx.commit().await?;
        self.environment_by_id(id).await
    }

    /// The environments of a project, whoever may see it (internal: teardown).
    pub async fn project_environments(
        &self,
        project_id: Uuid,
    ) -> Result<Vec<EnvironmentRecord>, StoreError> {
        sqlx::query(&format!(
            "{ENVIRONMENT_SELECT} WHERE e.project_id = $1 ORDER BY e.id"
        ))
        .bind(project_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(environment_from_row)
        .collect()
    }

    /// Marks an environment as being deleted (see [`Store::mark_project_deleting`]).
    pub async fn mark_environment_deleting(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE environments SET deleting_at = COALESCE(deleting_at, $1) WHERE id = $2",
        )
        .bind(now_millis())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Environments whose own deletion started and did not finish (those of a project being
    /// deleted are [`Store::deleting_projects`]').
    pub async fn deleting_environments(&self) -> Result<Vec<EnvironmentRecord>, StoreError> {
        sqlx::query(&format!(
            "{ENVIRONMENT_SELECT} WHERE e.deleting_at IS NOT NULL AND p.deleting_at IS NULL"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(environment_from_row)
        .collect()
    }

    /// Deletes an environment's row with its releases, deployments, config and runs
    /// (internal: the last step of the deployer's teardown).
    pub async fn purge_environment(&self, id: Uuid) -> Result<(), StoreError> {
        for table in ["environment_edge", "canaries"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE environment_id = $1"))
                .bind(id.to_string())
                .execute(&self.pool)
                .await?;
        }
        sqlx::query("DELETE FROM environments WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets the process formation (instance counts) and sizes of an environment.
    pub async fn set_formation(
        &self,
        id: Uuid,
        formation: &BTreeMap<String, u32>,
        sizes: &BTreeMap<String, ProcessSizeRecord>,
    ) -> Result<(), StoreError> {
        let sizes =
            serde_json::to_string(sizes).map_err(|e| StoreError::Corrupt(format!("sizes: {e}")))?;
        sqlx::query(
            "UPDATE environments SET formation = $1, sizes = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(formation_json(formation))
        .bind(sizes)
        .bind(now_millis())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The environment's wrapped data key, storing `candidate` first if it has none yet
    /// (whoever stores first wins, so concurrent first writers agree on one key).
    pub async fn environment_data_key(
        &self,
        id: Uuid,
        candidate: &str,
    ) -> Result<String, StoreError> {
        sqlx::query("UPDATE environments SET data_key = $1 WHERE id = $2 AND data_key IS NULL")
            .bind(candidate)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT data_key FROM environments WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        row.try_get::<Option<String>, _>("data_key")?
            .ok_or_else(|| StoreError::Corrupt("environment data key missing".to_owned()))
    }

    /// Every environment's wrapped data key (for master key rotation).
    pub async fn wrapped_data_keys(&self) -> Result<Vec<(Uuid, String)>, StoreError> {
        sqlx::query("SELECT id, data_key FROM environments WHERE data_key IS NOT NULL")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    crate::parse_id(&row.try_get::<String, _>("id")?)?,
                    row.try_get("data_key")?,
                ))
            })
            .collect()
    }

    /// Replaces wrapped data keys in one transaction; each row changes only if it still holds
    /// the old value, so a concurrent change is not overwritten.
    pub async fn replace_wrapped_data_keys(
        &self,
        changes: &[(Uuid, String, String)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, old, new) in changes {
            sqlx::query("UPDATE environments SET data_key = $1 WHERE id = $2 AND data_key = $3")
                .bind(new)
                .bind(id.to_string())
                .bind(old)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// An environment's config vars, by name.
    pub async fn config_vars(&self, id: Uuid) -> Result<Vec<ConfigVarRecord>, StoreError> {
        sqlx::query(
            "SELECT name, value, secret FROM config_vars WHERE environment_id = $1 ORDER BY name",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(ConfigVarRecord {
                name: row.try_get("name")?,
                value: row.try_get("value")?,
                secret: row.try_get::<i64, _>("secret")? != 0,
            })
        })
        .collect()
    }

    /// Applies config var changes in one transaction.
    pub async fn change_config_vars(
        &self,
        id: Uuid,
        changes: &[ConfigChange],
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        for change in changes {
            match change {
                ConfigChange::Set(var) => {
                    sqlx::query("DELETE FROM config_vars WHERE environment_id = $1 AND name = $2")
                        .bind(id.to_string())
                        .bind(&var.name)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO config_vars (environment_id, name, value, secret, updated_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(id.to_string())
                    .bind(&var.name)
                    .bind(&var.value)
                    .bind(i64::from(var.secret))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                ConfigChange::Unset(name) => {
                    sqlx::query("DELETE FROM config_vars WHERE environment_id = $1 AND name = $2")
                        .bind(id.to_string())
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// What a custom domain may not collide with.
const DOMAIN_TAKEN: &str = "this domain (on some environment)";

impl Store {
    /// Attaches a custom domain to an environment; a hostname belongs to one environment.
    pub async fn add_domain(&self, environment_id: Uuid, hostname: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO domains (hostname, environment_id, created_at) VALUES ($1, $2, $3)",
        )
        .bind(hostname)
        .bind(environment_id.to_string())
        .bind(now_millis())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::conflict_on_unique(e, DOMAIN_TAKEN))?;
        Ok(())
    }

    /// An environment's custom domains, sorted.
    pub async fn domains(&self, environment_id: Uuid) -> Result<Vec<String>, StoreError> {
        sqlx::query("SELECT hostname FROM domains WHERE environment_id = $1 ORDER BY hostname")
            .bind(environment_id.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok(row.try_get("hostname")?))
            .collect()
    }

    /// Detaches a custom domain from an environment.
    pub async fn remove_domain(
        &self,
        environment_id: Uuid,
        hostname: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM domains WHERE environment_id = $1 AND hostname = $2")
            .bind(environment_id.to_string())
            .bind(hostname)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

/// Serialises every transaction that claims hostnames (project create/rename, environment
/// create/rename): each writes one row first, which PostgreSQL locks until the transaction
/// ends (SQLite has one writer anyway). Checks made after it see every claim committed
/// before, so two concurrent requests cannot both take the same hostname.
pub(crate) async fn claim_hostnames(conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO instance_settings (key, value) VALUES ('hostname_claims', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(now_millis().to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether `hostname_label` is a production label or a `{project}-{env}` label of a project
/// other than `except` (a project renaming itself does not collide with its old labels).
pub(crate) async fn label_taken(
    conn: &mut sqlx::AnyConnection,
    hostname_label: &str,
    except: Option<Uuid>,
) -> Result<bool, StoreError> {
    let except = except.map(|id| id.to_string()).unwrap_or_default();
    let row = sqlx::query(
        "SELECT COUNT(*) AS n FROM projects p LEFT JOIN environments e ON e.project_id = p.id \
         WHERE p.id <> $2 AND (p.name = $1 OR (e.name <> 'production' AND p.name || '-' || e.name = $1))",
    )
    .bind(hostname_label)
    .bind(except)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get::<i64, _>("n")? > 0)
}
