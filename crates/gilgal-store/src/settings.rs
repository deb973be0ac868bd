//! Instance-wide settings kept in the store (so every server process sees the same).

use sqlx::Row;

use crate::{Store, StoreError};

/// Key of the registration switch.
const REGISTRATION_OPEN: &str = "registration_open";

impl Store {
    /// Whether anyone may register. Unset means open (the first user must be able to sign up).
    pub async fn registration_open(&self) -> Result<bool, StoreError> {
        Ok(self
            .setting(REGISTRATION_OPEN)
            .await?
            .is_none_or(|v| v == "true"))
    }

    /// Turns open registration on or off.
    pub async fn set_registration_open(&self, open: bool) -> Result<(), StoreError> {
        self.put_setting(REGISTRATION_OPEN, if open { "true" } else { "false" })
            .await
    }

    async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM instance_settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("value").map_err(StoreError::from))
            .transpose()
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instance_settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
