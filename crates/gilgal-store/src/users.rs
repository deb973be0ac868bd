//! Accounts, login sessions with rotating refresh tokens, and personal API tokens.

use gilgal_types::{Email, TokenScope};
use sqlx::Row;
use uuid::Uuid;

use crate::{from_millis, now_millis, parse_id, Store, StoreError};

/// An account as stored; the API turns it into its wire `User`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Stable id.
    pub id: Uuid,
    /// Login email.
    pub email: Email,
    /// Instance administrators manage settings and every account.
    pub is_admin: bool,
    /// When the account was created.
    pub created_at: time::OffsetDateTime,
}

/// A personal API token as stored (its digest stays in the store); the API turns it into
/// its wire `ApiToken`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRecord {
    /// Stable id, used to revoke it.
    pub id: Uuid,
    /// The label given at creation.
    pub name: String,
    /// The first characters of the token, to tell tokens apart without revealing them.
    pub prefix: String,
    /// When it was created.
    pub created_at: time::OffsetDateTime,
    /// When it last authenticated, if ever.
    pub last_used_at: Option<time::OffsetDateTime>,
    /// When it stops working, if it expires.
    pub expires_at: Option<time::OffsetDateTime>,
    /// What it may do.
    pub scope: TokenScope,
    /// The project it is bound to, if any.
    pub project_id: Option<Uuid>,
    /// The environment it is bound to, if any.
    pub environment_id: Option<Uuid>,
}

/// A user plus the password hash to verify a login against.
#[derive(Debug, Clone)]
pub struct UserCredentials {
    /// The account.
    pub user: UserRecord,
    /// argon2id PHC string.
    pub password_hash: String,
}

/// A login session: the family that every refresh token of one login belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Family id; access tokens carry it as `sid`.
    pub id: Uuid,
    /// The account.
    pub user_id: Uuid,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was valid: it is now spent and the new one (already stored) replaces it.
    Rotated(SessionRecord),
    /// No such token.
    Unknown,
    /// The token had expired.
    Expired,
    /// The token was already spent: treated as theft, the whole session is now revoked.
    Reused,
    /// The session was logged out or revoked earlier.
    Revoked,
}

/// Who an API token authenticates as.
#[derive(Debug, Clone)]
pub struct ApiTokenOwner {
    /// The token's id.
    pub token_id: Uuid,
    /// The account it acts for.
    pub user: UserRecord,
    /// What it may do and where.
    pub grant: TokenGrant,
}

/// Don't write `last_used_at` more often than this, to keep reads read-only on hot paths.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

fn user_from_row(row: &sqlx::any::AnyRow) -> Result<UserRecord, StoreError> {
    let email: String = row.try_get("email")?;
    Ok(UserRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        email: email
            .parse::<Email>()
            .map_err(|e| StoreError::Corrupt(format!("stored email: {e}")))?,
        is_admin: row.try_get::<i64, _>("is_admin")? != 0,
        created_at: from_millis(row.try_get("created_at")?),
    })
}

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<ApiTokenRecord, StoreError> {
    Ok(ApiTokenRecord {
        id: parse_id(&row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        prefix: row.try_get("display_prefix")?,
        created_at: from_millis(row.try_get("created_at")?),
        last_used_at: row
            .try_get::<Option<i64>, _>("last_used_at")?
            .map(from_millis),
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")?
            .map(from_millis),
        scope: TokenScope::from_stored(&row.try_get::<String, _>("scope")?),
        project_id: row
            .try_get::<Option<String>, _>("project_id")?
            .as_deref()
            .map(parse_id)
            .transpose()?,
        environment_id: row
            .try_get::<Option<String>, _>("environment_id")?
            .as_deref()
            .map(parse_id)
            .transpose()?,
    })
}

/// What a new API token may do and where.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenGrant {
    /// Its scope.
    pub scope: TokenScope,
    /// Bound project.
    pub project_id: Option<Uuid>,
    /// Bound environment.
    pub environment_id: Option<Uuid>,
}

impl Store {
    /// Creates an account. The first account ever created becomes the instance admin; a
    /// uniqueness row in `instance_settings` makes that race-free on both backends.
    pub async fn create_user(
        &self,
        email: &Email,
        password_hash: &str,
    ) -> Result<UserRecord, StoreError> {
        let id = Uuid::new_v4();
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO users (id, email, password_hash, is_admin, created_at) VALUES ($1, $2, $3, 0, $4)")
            .bind(id.to_string())
            .bind(email.as_str())
            .bind(password_hash)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::conflict_on_unique(e, "an account with this email"))?;
        let claimed = sqlx::query(
            "INSERT INTO instance_settings (key, value) VALUES ('first_admin', $1) ON CONFLICT (key) DO NOTHING",
        )
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if claimed {
            sqlx::query("UPDATE users SET is_admin = 1 WHERE id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(UserRecord {
            id,
            email: email.clone(),
            is_admin: claimed,
            created_at: from_millis(now),
        })
    }

    /// Looks an account up by login email, with its password hash.
    pub async fn user_credentials(
        &self,
        email: &Email,
    ) -> Result<Option<UserCredentials>, StoreError> {
        let row = sqlx::query(
            "SELECT id, email, is_admin, created_at, password_hash FROM users WHERE email = $1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(UserCredentials {
                user: user_from_row(&row)?,
                password_hash: row.try_get("password_hash")?,
            })
        })
        .transpose()
    }

    /// Fetches an account by id.
    pub async fn user(&self, id: Uuid) -> Result<UserRecord, StoreError> {
        let row = sqlx::query("SELECT id, email, is_admin, created_at FROM users WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        user_from_row(&row)
    }

    /// How many accounts exist (the first one becomes admin).
    pub async fn user_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    /// Starts a login session and stores its first refresh token (by digest).
    pub async fn create_session(
        &self,
        user_id: Uuid,
        refresh_digest: &str,
        refresh_expires_at_ms: i64,
    ) -> Result<SessionRecord, StoreError> {
        let session = SessionRecord {
            id: Uuid::new_v4(),
            user_id,
        };
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO sessions (id, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(session.id.to_string())
            .bind(user_id.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        insert_refresh_token(
            &mut tx,
            session.id,
            refresh_digest,
            now,
            refresh_expires_at_ms,
        )
        .await?;
        tx.commit().await?;
        Ok(session)
    }

    /// Spends a refresh token and stores its successor in the same session.
    ///
    /// Presenting a spent token revokes the whole session (refresh-token reuse detection), so a
    /// stolen token is useful at most until its legitimate owner refreshes.
    pub async fn rotate_refresh_token(
        &self,
        presented_digest: &str,
        next_digest: &str,
        next_expires_at_ms: i64,
    ) -> Result<RefreshOutcome, StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT rt.id, rt.session_id, rt.expires_at, rt.used_at, s.user_id, s.revoked_at \
             FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id WHERE rt.token_hash = $1",
        )
        .bind(presented_digest)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(RefreshOutcome::Unknown);
        };
        let token_id: String = row.try_get("id")?;
        let session = SessionRecord {
            id: parse_id(&row.try_get::<String, _>("session_id")?)?,
            user_id: parse_id(&row.try_get::<String, _>("user_id")?)?,
        };
        if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
            return Ok(RefreshOutcome::Revoked);
        }
        let already_used = row.try_get::<Option<i64>, _>("used_at")?.is_some();
        let spent_now = !already_used
            && sqlx::query(
                "UPDATE refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL",
            )
            .bind(now)
            .bind(&token_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
        if !spent_now {
            revoke_session_in(&mut tx, session.id, now, "refresh token reused").await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Reused);
        }
        if row.try_get::<i64, _>("expires_at")? <= now {
            tx.commit().await?;
            return Ok(RefreshOutcome::Expired);
        }
        insert_refresh_token(&mut tx, session.id, next_digest, now, next_expires_at_ms).await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated(session))
    }

    /// Ends the session a refresh token belongs to (logout). Returns false for unknown tokens.
    pub async fn revoke_session_by_refresh_token(
        &self,
        digest: &str,
        user_id: Uuid,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT s.id FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id \
             WHERE rt.token_hash = $1 AND s.user_id = $2",
        )
        .bind(digest)
        .bind(user_id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(false) };
        let session_id = parse_id(&row.try_get::<String, _>("id")?)?;
        self.revoke_session(session_id, user_id).await
    }

    /// Ends a session by id (logout with an access token). Returns false if it wasn't the user's.
    pub async fn revoke_session(
        &self,
        session_id: Uuid,
        user_id: Uuid,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoked_reason = 'logout' \
             WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(now_millis())
        .bind(session_id.to_string())
        .bind(user_id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether a session still stands; access tokens of a revoked session stop working at once.
    pub async fn session_is_active(
        &self,
        session_id: Uuid,
        user_id: Uuid,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT revoked_at FROM sessions WHERE id = $1 AND user_id = $2")
            .bind(session_id.to_string())
            .bind(user_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<Option<i64>, _>("revoked_at")?.is_none(),
            None => false,
        })
    }

    /// Stores a new personal API token (by digest) for `user_id`.
    pub async fn create_api_token(
        &self,
        user_id: Uuid,
        name: &str,
        digest: &str,
        display_prefix: &str,
        expires_at_ms: Option<i64>,
        grant: TokenGrant,
    ) -> Result<ApiTokenRecord, StoreError> {
        let id = Uuid::new_v4();
        let now = now_millis();
        sqlx::query(
            "INSERT INTO api_tokens (id, user_id, name, token_hash, display_prefix, created_at, expires_at, scope, project_id, environment_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(id.to_string())
        .bind(user_id.to_string())
        .bind(name)
        .bind(digest)
        .bind(display_prefix)
        .bind(now)
        .bind(expires_at_ms)
        .bind(grant.scope.as_str())
        .bind(grant.project_id.map(|id| id.to_string()))
        .bind(grant.environment_id.map(|id| id.to_string()))
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::conflict_on_unique(e, "a token with this secret"))?;
        Ok(ApiTokenRecord {
            id,
            name: name.to_owned(),
            prefix: display_prefix.to_owned(),
            created_at: from_millis(now),
            last_used_at: None,
            expires_at: expires_at_ms.map(from_millis),
            scope: grant.scope,
            project_id: grant.project_id,
            environment_id: grant.environment_id,
        })
    }

    /// The user's live (unrevoked) API tokens, newest first.
    pub async fn list_api_tokens(&self, user_id: Uuid) -> Result<Vec<ApiTokenRecord>, StoreError> {
        sqlx::query(
            "SELECT id, name, display_prefix, created_at, last_used_at, expires_at, scope, project_id, environment_id \
             FROM api_tokens WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC, id",
        )
        .bind(user_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(token_from_row)
        .collect()
    }

    /// Revokes one of the user's tokens; another user's token id is simply not found.
    pub async fn revoke_api_token(&self, user_id: Uuid, token_id: Uuid) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
        )
        .bind(now_millis())
        .bind(token_id.to_string())
        .bind(user_id.to_string())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    /// Whether one of the user's API tokens still works (not revoked, not expired): requests
    /// that stay open (log follow streams) end when it stops.
    pub async fn api_token_is_active(
        &self,
        token_id: Uuid,
        user_id: Uuid,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT id FROM api_tokens WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $3)",
        )
        .bind(token_id.to_string())
        .bind(user_id.to_string())
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Resolves a presented API token (by digest) to its owner, if it is live.
    pub async fn authenticate_api_token(
        &self,
        digest: &str,
    ) -> Result<Option<ApiTokenOwner>, StoreError> {
        let now = now_millis();
        let row = sqlx::query(
            "SELECT t.id AS token_id, t.last_used_at, t.scope, t.project_id, t.environment_id, u.id, u.email, u.is_admin, u.created_at \
             FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2)",
        )
        .bind(digest)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let token_id = parse_id(&row.try_get::<String, _>("token_id")?)?;
        let stale = row
            .try_get::<Option<i64>, _>("last_used_at")?
            .is_none_or(|at| now - at >= LAST_USED_RESOLUTION_MS);
        if stale {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(token_id.to_string())
                .execute(&self.pool)
                .await?;
        }
        let grant = TokenGrant {
            scope: TokenScope::from_stored(&row.try_get::<String, _>("scope")?),
            project_id: row
                .try_get::<Option<String>, _>("project_id")?
                .as_deref()
                .map(parse_id)
                .transpose()?,
            environment_id: row
                .try_get::<Option<String>, _>("environment_id")?
                .as_deref()
                .map(parse_id)
                .transpose()?,
        };
        Ok(Some(ApiTokenOwner {
            token_id,
            user: user_from_row(&row)?,
            grant,
        }))
    }
}

async fn insert_refresh_token(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    session_id: Uuid,
    digest: &str,
    now: i64,
    expires_at_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(session_id.to_string())
    .bind(digest)
    .bind(now)
    .bind(expires_at_ms)
    .execute(&mut **tx)
    .await
    .map_err(|e| StoreError::conflict_on_unique(e, "a refresh token with this secret"))?;
    Ok(())
}

async fn revoke_session_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    session_id: Uuid,
    now: i64,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE sessions SET revoked_at = $1, revoked_reason = $2 WHERE id = $3 AND revoked_at IS NULL")
        .bind(now)
        .bind(reason)
        .bind(session_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
