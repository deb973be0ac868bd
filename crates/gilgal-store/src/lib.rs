//! Persistence for Gilgal: the only crate that knows SQL.
//!
//! One portable SQL dialect runs on both backends through sqlx's `Any` driver: embedded SQLite
//! (the default, a file under the data dir) and PostgreSQL (for serious installs). Ids are UUIDs
//! stored as text and times are Unix milliseconds, so the same queries and the same versioned
//! migrations (`migrations/`) serve both. Every query that reads tenant data takes the caller's
//! user id, so another user's row is simply not found.

mod addons;
mod alerts;
mod audit;
mod canaries;
mod certificates;
mod deployments;
mod environments;
mod error;
mod events;
mod projects;
mod runs;
mod settings;
mod teams;
mod users;
mod webhooks;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::AnyPool;

pub use addons::{AddonRecord, BackupRecord, NewAddon};
pub use alerts::{AlertChannelRecord, AlertRecord, AlertRuleRecord, NotificationRecord};
pub use audit::{AuditFilter, AuditRecord};
pub use canaries::CanaryRecord;
pub use certificates::CertificateRecord;
pub use deployments::{
    DeploymentRecord, EnvironmentRecord, LogRecord, NewRelease, ProcessSizeRecord, ReleaseRecord,
    TransitionRecord,
};
pub use environments::{ConfigChange, ConfigVarRecord};
pub use error::StoreError;
pub use events::{ErrorGroupRecord, EventRecord, HealthTally};
pub use projects::{ProjectChanges, ProjectRecord};
pub use runs::{CronJobRecord, RunRecord};
pub use teams::{AcceptOutcome, MemberRecord, TeamRecord};
pub use users::{
    ApiTokenOwner, ApiTokenRecord, RefreshOutcome, SessionRecord, TokenGrant, UserCredentials,
    UserRecord,
};
pub use webhooks::{DeliveryRecord, NewWebhook, WebhookRecord};

/// Migrations, embedded at build time and applied on connect.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Which database backs the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// An embedded SQLite database in this file (created when missing).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL server, by `postgres://` URL.
    Postgres(String),
}

impl StoreBackend {
    /// The backend a server uses: PostgreSQL when a URL is given, else SQLite under `data_dir`.
    pub fn choose(database_url: Option<&str>, data_dir: &Path) -> Self {
        match database_url {
            Some(url) if !url.is_empty() => Self::Postgres(url.to_owned()),
            _ => Self::Sqlite(data_dir.join("gilgal.db")),
        }
    }

    /// A short name for logs (`sqlite` or `postgres`), never the URL with its password.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend_kind: &'static str,
}

impl Store {
    /// Connects, creates the SQLite file if needed, and applies pending migrations.
    pub async fn connect(backend: &StoreBackend) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (url, max_connections) = match backend {
            StoreBackend::Sqlite(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(StoreError::DataDir)?;
                }
                // WAL lets readers run beside the single writer; busy_timeout makes writers
                // queue instead of failing with SQLITE_BUSY.
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    path.to_str().ok_or(StoreError::NonUtf8Path)?
                );
                // One connection: SQLite has one writer anyway, and a single connection
                // never hits SQLITE_BUSY_SNAPSHOT when a read transaction upgrades to a write.
                (url, 1)
            }
            StoreBackend::Postgres(url) => (url.clone(), 8),
        };
        let mut options = AnyConnectOptions::from_str(&url).map_err(StoreError::Connect)?;
        options = sqlx::ConnectOptions::disable_statement_logging(options);
        let is_sqlite = matches!(backend, StoreBackend::Sqlite(_));
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(0)
            // One SQLite connection is shared by every task: on a loaded machine a burst of
            // writers may queue for seconds, which must slow a deploy, not fail it. (A
            // PostgreSQL server that does not answer is reported sooner.)
            .acquire_timeout(Duration::from_secs(if is_sqlite { 30 } else { 10 }))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if is_sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(StoreError::Connect)?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            backend_kind: backend.kind(),
        })
    }

    /// `sqlite` or `postgres`.
    pub fn backend_kind(&self) -> &'static str {
        self.backend_kind
    }

    /// Round-trips a trivial query; backs `GET /ready`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection (lets SQLite checkpoint its WAL on shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Now, in Unix milliseconds: the store's time unit.
/// Log lines per INSERT statement: one statement per chunk instead of one per line keeps a
/// batch's hold on SQLite's single connection short (500 round trips became 5).
const LOG_ROWS_PER_STATEMENT: usize = 100;

/// Inserts `lines` `(at_ms, stream, line)` into `table` (columns: owner, seq, at, stream,
/// line) numbered from `after + 1`, in multi-row statements; returns the last number.
pub(crate) async fn insert_numbered_lines(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    table: &str,
    owner_column: &str,
    owner: uuid::Uuid,
    after: i64,
    lines: &[(i64, &str, &str)],
) -> Result<i64, StoreError> {
    let mut next = after;
    for chunk in lines.chunks(LOG_ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| {
                let p = 2 + i * 4;
                format!("($1, ${}, ${}, ${}, ${})", p, p + 1, p + 2, p + 3)
            })
            .collect();
        let sql = format!(
            "INSERT INTO {table} ({owner_column}, seq, at, stream, line) VALUES {}",
            rows.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(owner.to_string());
        for (at, stream, line) in chunk {
            next += 1;
            query = query.bind(next).bind(*at).bind(*stream).bind(*line);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(next)
}

pub(crate) fn now_millis() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Unix milliseconds to a timestamp (saturating at the epoch for corrupt values).
pub(crate) fn from_millis(millis: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Parses an id column; a malformed id is store corruption, reported as such.
pub(crate) fn parse_id(raw: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::parse_str(raw).map_err(|_| StoreError::Corrupt(format!("malformed id {raw:?}")))
}

/// Creates a fresh, empty PostgreSQL database next to the one `admin_url` points at and returns
/// the URL of the new one. Test harnesses use it to give every test its own database.
pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
    use sqlx::Connection;
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(StoreError::Corrupt(format!(
            "refusing database name {name:?}"
        )));
    }
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(admin_url)
        .await
        .map_err(StoreError::Connect)?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .ok_or_else(|| StoreError::Corrupt("postgres URL has no database part".to_owned()))?;
    Ok(format!("{base}/{name}"))
}
