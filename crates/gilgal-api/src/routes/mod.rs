//! Handlers, one module per resource; each module exposes `routes()` for [`crate::router`].

pub mod addons;
pub mod admin;
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod certificates;
pub mod deployments;
pub mod environments;
pub mod fallback;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod projects;
pub mod teams;
pub mod tokens;
pub mod webhooks;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A list's `limit` query parameter: `default` when absent; 1 to `max`, else a 422 that
/// names the range (the OpenAPI document states the same bounds).
pub(crate) fn list_limit(
    limit: Option<u32>,
    default: u32,
    max: u32,
) -> Result<u32, crate::ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(crate::ApiError::invalid(format!(
            "limit must be between 1 and {max} (got {n})"
        ))),
    }
}

/// Seconds since the epoch, for token lifetimes.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the epoch, `ttl` from now, in the store's unit.
pub(crate) fn millis_from_now(ttl: Duration) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from((now + ttl).as_millis()).unwrap_or(i64::MAX)
}
