//! Projects, always read and written on behalf of a user.

use gilgal_types::{Project, ProjectName};
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

fn project_from_row(row: &sqlx::any::AnyRow) -> Result<Project, StoreError> {
    let name: String = row.try_get("name")?;
    Ok(Project {
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
    ) -> Result<Project, StoreError> {
        // `{project}-{env}` hostnames of other projects' environments are taken too.
        let clash: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM environments e JOIN projects p ON p.id = e.project_id \
             WHERE e.name <> 'production' AND p.name || '-' || e.name = $1",
        )
        .bind(name.as_str())
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        if clash > 0 {
            return Err(StoreError::Conflict(NAME_TAKEN));
        }
        let id = Uuid::new_v4();
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
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
        Ok(Project {
            id,
            name: name.clone(),
            description: description.to_owned(),
            owner_id: owner,
            created_at: from_millis(now),
            updated_at: from_millis(now),
        })
    }

    /// The user's projects, by name.
    pub async fn list_projects(&self, owner: Uuid) -> Result<Vec<Project>, StoreError> {
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
    pub async fn project(&self, owner: Uuid, id: Uuid) -> Result<Project, StoreError> {
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
    ) -> Result<Project, StoreError> {
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

    /// Applies `changes` to one of the user's projects and returns the result.
    pub async fn update_project(
        &self,
        owner: Uuid,
        id: Uuid,
        changes: &ProjectChanges,
    ) -> Result<Project, StoreError> {
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
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::conflict_on_unique(e, NAME_TAKEN))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.project(owner, id).await
    }

    /// Deletes one of the user's projects.
    pub async fn delete_project(&self, owner: Uuid, id: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query(&format!(
            "DELETE FROM projects WHERE id = $1 AND id IN (SELECT p.id FROM projects p WHERE {})",
            can_see("p", 2)
        ))
        .bind(id.to_string())
        .bind(owner.to_string())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }
}
