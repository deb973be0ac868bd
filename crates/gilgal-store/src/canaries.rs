//! Canaries in progress, recorded so a restarted server resumes them where they were, and
//! the per-environment settings the edge enforces (both read by the rollout engine).

use sqlx::Row;
use uuid::Uuid;

use crate::{now_millis, parse_id, Store, StoreError};

/// A canary in progress, as recorded at its last step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryRecord {
    /// The deployment running it.
    pub deployment_id: Uuid,
    /// Its environment.
    pub environment_id: Uuid,
    /// The release under test.
    pub release_number: u64,
    /// The live release it is judged against.
    pub stable_release: u64,
    /// Its policy (JSON, owned by `gilgal-deploy`).
    pub policy_json: String,
    /// Index of the step it had reached.
    pub step: u64,
}

fn record_of(row: &sqlx::any::AnyRow) -> Result<CanaryRecord, StoreError> {
    let number = |name: &str| -> Result<u64, StoreError> {
        Ok(u64::try_from(row.try_get::<i64, _>(name)?).unwrap_or(0))
    };
    Ok(CanaryRecord {
        deployment_id: parse_id(&row.try_get::<String, _>("deployment_id")?)?,
        environment_id: parse_id(&row.try_get::<String, _>("environment_id")?)?,
        release_number: number("release_number")?,
        stable_release: number("stable_release")?,
        policy_json: row.try_get("policy")?,
        step: number("step")?,
    })
}

const COLUMNS: &str = "deployment_id, environment_id, release_number, stable_release, policy, step";

impl Store {
    /// Records a canary as it starts (or replaces the record of the same deployment).
    pub async fn put_canary(&self, canary: &CanaryRecord) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM canaries WHERE deployment_id = $1")
            .bind(canary.deployment_id.to_string())
            .execute(&self.pool)
            .await?;
        sqlx::query(&format!(
            "INSERT INTO canaries ({COLUMNS}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(canary.deployment_id.to_string())
        .bind(canary.environment_id.to_string())
        .bind(i64::try_from(canary.release_number).unwrap_or(i64::MAX))
        .bind(i64::try_from(canary.stable_release).unwrap_or(i64::MAX))
        .bind(&canary.policy_json)
        .bind(i64::try_from(canary.step).unwrap_or(i64::MAX))
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the step a canary has reached.
    pub async fn set_canary_step(&self, deployment: Uuid, step: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE canaries SET step = $1, updated_at = $2 WHERE deployment_id = $3")
            .bind(i64::try_from(step).unwrap_or(i64::MAX))
            .bind(now_millis())
            .bind(deployment.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets a canary that ended (live, rolled back or aborted).
    pub async fn delete_canary(&self, deployment: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM canaries WHERE deployment_id = $1")
            .bind(deployment.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every recorded canary (what a restarted server resumes).
    pub async fn canaries(&self) -> Result<Vec<CanaryRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM canaries ORDER BY updated_at"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(record_of)
        .collect()
    }

    /// The canary recorded in an environment, if any.
    pub async fn environment_canary(
        &self,
        environment: Uuid,
    ) -> Result<Option<CanaryRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM canaries WHERE environment_id = $1 ORDER BY updated_at DESC LIMIT 1"
        ))
        .bind(environment.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(record_of)
        .transpose()
    }
}

impl Store {
    /// The edge settings of an environment (JSON), if any were set.
    pub async fn environment_edge(&self, environment: Uuid) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query("SELECT settings FROM environment_edge WHERE environment_id = $1")
                .bind(environment.to_string())
                .fetch_optional(&self.pool)
                .await?
                .map(|row| row.try_get::<String, _>("settings"))
                .transpose()?,
        )
    }

    /// Replaces an environment's edge settings (JSON).
    pub async fn set_environment_edge(
        &self,
        environment: Uuid,
        settings: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM environment_edge WHERE environment_id = $1")
            .bind(environment.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO environment_edge (environment_id, settings, updated_at) VALUES ($1, $2, $3)",
        )
        .bind(environment.to_string())
        .bind(settings)
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
