//! Store records to the API's wire types: the store keeps its own records, and what a
//! response shows of them is decided here, in one place.

use gilgal_store::{ApiTokenRecord, ProjectRecord, UserRecord};
use gilgal_types::{ApiToken, Project, User};

/// An account as the API shows it.
pub(crate) fn user(record: UserRecord) -> User {
    User {
        id: record.id,
        email: record.email,
        is_admin: record.is_admin,
        created_at: record.created_at,
    }
}

/// A project as the API shows it.
pub(crate) fn project(record: ProjectRecord) -> Project {
    Project {
        id: record.id,
        name: record.name,
        description: record.description,
        owner_id: record.owner_id,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

/// An API token's metadata as the API shows it (never the secret).
pub(crate) fn api_token(record: ApiTokenRecord) -> ApiToken {
    ApiToken {
        id: record.id,
        name: record.name,
        prefix: record.prefix,
        created_at: record.created_at,
        last_used_at: record.last_used_at,
        expires_at: record.expires_at,
        scope: record.scope,
        project_id: record.project_id,
        environment_id: record.environment_id,
    }
}
