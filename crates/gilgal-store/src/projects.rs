//! Projects, always read and written on behalf of a user.

use gilgal_types::ProjectName;
use sqlx::Row;
use uuid::Uuid;

use crate::{from_millis, now_millis, parse_id, Store, StoreError};

/// Fields a project update may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProjectChanges {
    /// New name.
    pub name: Option<ProjectName>,
    /// New description.
    pub description: Option<String>,
}

const PROJECT_COLUMNS: &str = "id, owner_id, name, description, created_at, updated_at";

/// SQL condition: user `$N` may see project row `alias` — the owner of a personal project, or
/// a member of the team a project belongs to. A team's project is governed by team roles
/// only: `owner_id` (whoever created or moved it) grants nothing once `team_id` is set.
pub(crate) fn can_see(alias: &str, param: usize) -> String {
    format!(
        "(({alias}.team_id IS NULL AND {alias}.owner_id = ${param}) OR EXISTS (SELECT 1 FROM \
         team_members tm WHERE tm.team_id = {alias}.team_id AND tm.user_id = ${param}))"
    )
}
const NAME_TAKEN: &str = "a project with this name";

/// A project as stored; the API turns it into its wire `Project`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRecord {
    /// Stable id.
    pub id: Uuid,
    /// Unique per instance; also the app's hostname label.
    pub name: ProjectName,
    /// Free text.
    pub description: String,
    /// The owning user.
    pub owner_id: Uuid,
    /// When it was created.
    pub created_at: time::OffsetDateTime,
    /// When it last changed.
    pub updated_at: time::OffsetDateTime,
}

fn project_from_row(row: &sqlx::any::AnyRow) -> Result<ProjectRecord, StoreError> {
    let name: String = row.try_get("name")?;
    Ok(ProjectRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        name: name
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("stored project name: {e}")))?,
        description: row.try_get("description")?,
        owner_id: parse_id(&row.try_get::<String, _>("owner_id")?)?,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
    })
}

impl Store {
    /// Creates a project owned by `owner`. Names are unique per instance (they are hostnames).
    pub async fn create_project(
        &self,
        owner: Uuid,
        name: &ProjectName,
        description: &str,
    ) -> Result<ProjectRecord, StoreError> {
        let id = Uuid::new_v4();
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        // `{project}-{env}` hostnames of other projects' environments are taken too; checked
        // inside the transaction that claims the name, serialised with every other claim.
        crate::environments::claim_hostnames(&mut tx).await?;
        if crate::environments::label_taken(&mut tx, name.as_str(), None).await? {
            return Err(StoreError::Conflict(NAME_TAKEN));
        }
        sqlx::query(
            "INSERT INTO projects (id, owner_id, name, description, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(id.to_string())
        .bind(owner.to_string())
        .bind(name.as_str())
        .bind(description)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::conflict_on_unique(e, NAME_TAKEN))?;
        // Every project starts with its production environment.
        sqlx::query(
            "INSERT INTO environments (id, project_id, name, formation, created_at, updated_at) \
             VALUES ($1, $2, 'production', '{}', $3, $3)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ProjectRecord {
            id,
            name: name.clone(),
            description: description.to_owned(),
            owner_id: owner,
            created_at: from_millis(now),
            updated_at: from_millis(now),
        })
    }

    /// The user's projects, by name.
    pub async fn list_projects(&self, owner: Uuid) -> Result<Vec<ProjectRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {PROJECT_COLUMNS} FROM projects p WHERE {} ORDER BY name",
            can_see("p", 1)
        ))
        .bind(owner.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(project_from_row)
        .collect()
    }

    /// One of the user's projects; someone else's is [`StoreError::NotFound`].
    pub async fn project(&self, owner: Uuid, id: Uuid) -> Result<ProjectRecord, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {PROJECT_COLUMNS} FROM projects p WHERE id = $1 AND {}",
            can_see("p", 2)
        ))
        .bind(id.to_string())
        .bind(owner.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        project_from_row(&row)
    }

    /// One of the user's projects by name (the CLI names projects, the API uses ids).
    pub async fn project_by_name(
        &self,
        owner: Uuid,
        name: &ProjectName,
    ) -> Result<ProjectRecord, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {PROJECT_COLUMNS} FROM projects p WHERE name = $1 AND {}",
            can_see("p", 2)
        ))
        .bind(name.as_str())
        .bind(owner.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        project_from_row(&row)
    }

    /// Applies `changes` to one of the user's projects and returns the result. A new name
    /// changes every hostname of the project (`{name}` and `{name}-{env}`): each is checked
    /// against every other project's in the transaction that writes it.
    pub async fn update_project(
        &self,
        owner: Uuid,
        id: Uuid,
        changes: &ProjectChanges,
    ) -> Result<ProjectRecord, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(name) = &changes.name {
            crate::environments::claim_hostnames(&mut tx).await?;
            let mut labels = vec![name.as_str().to_owned()];
            let environments = sqlx::query(
                "SELECT name FROM environments WHERE project_id = $1 AND name <> 'production'",
            )
            .bind(id.to_string())
            .fetch_all(&mut *tx)
            .await?;
            for row in environments {
                let environment: String = row.try_get("name")?;
                labels.push(format!("{}-{environment}", name.as_str()));
            }
            for label in &labels {
                if crate::environments::label_taken(&mut tx, label, Some(id)).await? {
                    return Err(StoreError::Conflict(NAME_TAKEN));
                }
            }
        }
        let done = sqlx::query(&format!(
            "UPDATE projects SET name = COALESCE($1, name), description = COALESCE($2, description), \
             updated_at = $3 WHERE id = $4 AND id IN (SELECT p.id FROM projects p WHERE {})",
            can_see("p", 5)
        ))
        .bind(changes.name.as_ref().map(|n| n.as_str().to_owned()))
        .bind(changes.description.clone())
        .bind(now_millis())
        .bind(id.to_string())
        .bind(owner.to_string())
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::conflict_on_unique(e, NAME_TAKEN))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        self.project(owner, id).await
    }

    /// Marks a project as being deleted (internal: the deployer's teardown, after the API
    /// checked the caller's role). From then on nothing of it is reconciled, and a server
    /// restarted before the row is gone finishes the deletion ([`Store::deleting_projects`]).
    pub async fn mark_project_deleting(&self, id: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE projects SET deleting_at = COALESCE(deleting_at, $1) WHERE id = $2",
        )
        .bind(now_millis())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Projects whose deletion started and did not finish (a crash half-way).
    pub async fn deleting_projects(&self) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query("SELECT id FROM projects WHERE deleting_at IS NOT NULL")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| parse_id(&row.try_get::<String, _>("id")?))
            .collect()
    }

    /// Ids of every project, deleted or not yet (to find what on disk belongs to none).
    pub async fn project_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        sqlx::query("SELECT id FROM projects")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| parse_id(&row.try_get::<String, _>("id")?))
            .collect()
    }

    /// Deletes a project's row with everything that cascades from it (internal: the last
    /// step of the deployer's teardown).
    pub async fn purge_project(&self, id: Uuid) -> Result<(), StoreError> {
        for table in ["environment_edge", "canaries"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE environment_id IN (SELECT id FROM environments WHERE project_id = $1)"
            ))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        }
        sqlx::query("DELETE FROM projects WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
