//! Store failures.

/// What can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not reach or open the database.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// The data directory could not be created.
    #[error("cannot create the data directory: {0}")]
    DataDir(#[source] std::io::Error),
    /// SQLite needs a UTF-8 path.
    #[error("the data directory path is not valid UTF-8")]
    NonUtf8Path,
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A uniqueness rule was broken; the string names what already exists.
    #[error("{0} already exists")]
    Conflict(&'static str),
    /// No row matched (or it belongs to someone else).
    #[error("not found")]
    NotFound,
    /// A deployment state change the lifecycle forbids (or lost a race).
    #[error("illegal state change: {0}")]
    IllegalTransition(String),
    /// A stored value could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::Conflict`], passing others through.
    pub(crate) fn conflict_on_unique(err: sqlx::Error, what: &'static str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict(what),
            _ => Self::Database(err),
        }
    }
}
