//! Teams, their members and roles, invitations, and the caller's role on a project.

use gilgal_types::Role;
use sqlx::Row;
use uuid::Uuid;

use crate::{now_millis, parse_id, Store, StoreError};

/// A team with the caller's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamRecord {
    /// Stable id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The asking user's role.
    pub role: Role,
}

/// A member row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The account.
    pub user_id: Uuid,
    /// Its email.
    pub email: String,
    /// Its role.
    pub role: Role,
}

/// Why an invitation could not be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptOutcome {
    /// Joined (or role updated).
    Joined(Uuid),
    /// Unknown, used, expired, or for another email: all look the same to the caller.
    Invalid,
}

impl Store {
    /// Creates a team with `creator` as its owner.
    pub async fn create_team(&self, creator: Uuid, name: &str) -> Result<TeamRecord, StoreError> {
        let id = Uuid::new_v4();
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(id.to_string())
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::conflict_on_unique(e, "a team with this name"))?;
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, 'owner', $3)",
        )
        .bind(id.to_string())
        .bind(creator.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(TeamRecord {
            id,
            name: name.to_owned(),
            role: Role::Owner,
        })
    }

    /// The user's teams with their role.
    pub async fn teams_of(&self, user: Uuid) -> Result<Vec<TeamRecord>, StoreError> {
        sqlx::query(
            "SELECT t.id, t.name, m.role FROM teams t JOIN team_members m ON m.team_id = t.id \
             WHERE m.user_id = $1 ORDER BY t.name",
        )
        .bind(user.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(TeamRecord {
                id: parse_id(&row.try_get::<String, _>("id")?)?,
                name: row.try_get("name")?,
                role: Role::from_stored(&row.try_get::<String, _>("role")?),
            })
        })
        .collect()
    }

    /// The user's role on a team, if a member.
    pub async fn team_role(&self, user: Uuid, team: Uuid) -> Result<Option<Role>, StoreError> {
        let row = sqlx::query("SELECT role FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team.to_string())
            .bind(user.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(Role::from_stored(&r.try_get::<String, _>("role")?)))
            .transpose()
    }

    /// A team's members.
    pub async fn team_members(&self, team: Uuid) -> Result<Vec<MemberRecord>, StoreError> {
        sqlx::query(
            "SELECT m.user_id, u.email, m.role FROM team_members m JOIN users u ON u.id = m.user_id \
             WHERE m.team_id = $1 ORDER BY u.email",
        )
        .bind(team.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(MemberRecord {
                user_id: parse_id(&row.try_get::<String, _>("user_id")?)?,
                email: row.try_get("email")?,
                role: Role::from_stored(&row.try_get::<String, _>("role")?),
            })
        })
        .collect()
    }

    /// Records an invitation (the secret's digest only).
    pub async fn create_invitation(
        &self,
        team: Uuid,
        email: &str,
        role: Role,
        digest: &str,
        invited_by: Uuid,
        expires_at_ms: i64,
    ) -> Result<Uuid, StoreError> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO team_invitations (id, team_id, email, role, token_hash, invited_by, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id.to_string())
        .bind(team.to_string())
        .bind(email.to_ascii_lowercase())
        .bind(role.as_str())
        .bind(digest)
        .bind(invited_by.to_string())
        .bind(expires_at_ms)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Accepts an invitation for `user` (whose email must be the invited one): single use.
    pub async fn accept_invitation(
        &self,
        digest: &str,
        user: Uuid,
        email: &str,
    ) -> Result<AcceptOutcome, StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT id, team_id, email, role FROM team_invitations \
             WHERE token_hash = $1 AND accepted_at IS NULL AND expires_at > $2",
        )
        .bind(digest)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(AcceptOutcome::Invalid);
        };
        if row.try_get::<String, _>("email")? != email.to_ascii_lowercase() {
            return Ok(AcceptOutcome::Invalid);
        }
        let team = parse_id(&row.try_get::<String, _>("team_id")?)?;
        let used = sqlx::query(
            "UPDATE team_invitations SET accepted_at = $1 WHERE id = $2 AND accepted_at IS NULL",
        )
        .bind(now)
        .bind(row.try_get::<String, _>("id")?)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Ok(AcceptOutcome::Invalid);
        }
        sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team.to_string())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(team.to_string())
        .bind(user.to_string())
        .bind(row.try_get::<String, _>("role")?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AcceptOutcome::Joined(team))
    }

    /// Changes a member's role.
    pub async fn set_member_role(
        &self,
        team: Uuid,
        user: Uuid,
        role: Role,
    ) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE team_members SET role = $1 WHERE team_id = $2 AND user_id = $3")
                .bind(role.as_str())
                .bind(team.to_string())
                .bind(user.to_string())
                .execute(&self.pool)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Removes a member.
    pub async fn remove_member(&self, team: Uuid, user: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team.to_string())
            .bind(user.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The user's role on a project: `Owner` of a personal project they own; for a team's
    /// project, their role on that team and nothing else (whoever created or moved it keeps
    /// no rights of their own once demoted or removed); `None` when they cannot see it.
    pub async fn project_role(
        &self,
        user: Uuid,
        project: Uuid,
    ) -> Result<Option<Role>, StoreError> {
        let row = sqlx::query(
            "SELECT p.owner_id, p.team_id, m.role FROM projects p \
             LEFT JOIN team_members m ON m.team_id = p.team_id AND m.user_id = $2 WHERE p.id = $1",
        )
        .bind(project.to_string())
        .bind(user.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let personal = row.try_get::<Option<String>, _>("team_id")?.is_none();
        if personal {
            let owner = parse_id(&row.try_get::<String, _>("owner_id")?)?;
            return Ok((owner == user).then_some(Role::Owner));
        }
        Ok(row
            .try_get::<Option<String>, _>("role")?
            .map(|r| Role::from_stored(&r)))
    }

    /// Moves a project to a team (or back to personal ownership by `new_owner`). `owner_id`
    /// is set either way but only governs while the project is personal.
    pub async fn transfer_project(
        &self,
        project: Uuid,
        team: Option<Uuid>,
        new_owner: Uuid,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE projects SET team_id = $1, owner_id = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(team.map(|t| t.to_string()))
        .bind(new_owner.to_string())
        .bind(now_millis())
        .bind(project.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Store {
    /// Deployments created since `since_ms` by projects of the same owner as `project` (its
    /// team, or its owner's personal projects), and how many of them are still building:
    /// the inputs of deploy and build quotas.
    pub async fn deployment_usage(
        &self,
        project: Uuid,
        since_ms: i64,
    ) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS recent, \
             COALESCE(SUM(CASE WHEN d.state IN ('pending', 'building', 'releasing') THEN 1 ELSE 0 END), 0) AS building \
             FROM deployments d JOIN projects p ON p.id = d.project_id \
             JOIN projects me ON me.id = $1 \
             WHERE d.created_at >= $2 AND ( \
               (me.team_id IS NOT NULL AND p.team_id = me.team_id) OR \
               (me.team_id IS NULL AND p.team_id IS NULL AND p.owner_id = me.owner_id))",
        )
        .bind(project.to_string())
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        let recent: i64 = row.try_get("recent")?;
        let building: i64 = row.try_get("building")?;
        Ok((
            u64::try_from(recent).unwrap_or(0),
            u64::try_from(building).unwrap_or(0),
        ))
    }
}
