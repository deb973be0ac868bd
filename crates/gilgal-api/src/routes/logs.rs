//! Environment logs: search the persistent log (`gilgal logs`) and follow it live, as NDJSON;
//! and what happened to the environment (`gilgal events`): its timeline and uptime.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gilgal_logs::{LogRecord, LogStore};
use gilgal_types::{EnvironmentEvent, EnvironmentLogLine, ErrorBody, ErrorGroup, Uptime};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::extract::{parse_path_id, AuthUser};
use crate::{ApiError, AppState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(environment_logs))
        .routes(routes!(environment_events))
        .routes(routes!(environment_uptime))
        .routes(routes!(environment_errors))
}

/// How often a follower looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(300);
/// A follower with nothing new gets an empty line this often, so a client that went away is
/// noticed (the write fails) and its poller stops.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Filters of `GET /api/environments/{id}/logs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnvironmentLogsQuery {
    /// Only this process type: `web`, a worker's name, `release`, `run`, `build`.
    #[serde(default, rename = "type")]
    #[param(rename = "type")]
    pub process_type: Option<String>,
    /// Only lines of this release (`3` or `v3`); empty is no filter, as if absent.
    #[serde(default)]
    #[param(pattern = "^(v*[0-9]{1,19})?$")]
    pub release: Option<String>,
    /// Only lines printed since: a duration back from now (`90s`, `15m`, `1h`, `7d`) or an
    /// RFC 3339 time.
    #[serde(default)]
    #[param(schema_with = since_schema)]
    pub since: Option<String>,
    /// Only lines containing this text (case-sensitive).
    #[serde(default)]
    pub grep: Option<String>,
    /// Only lines after this position (the `id` of a line already seen).
    #[serde(default)]
    #[param(maximum = 9223372036854775807_i64)]
    pub after: Option<u64>,
    /// At most this many lines: the newest ones, or the first ones after `after` (default
    /// 1000, at most 10000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// Keep the response open and stream new lines as they are stored.
    #[serde(default)]
    pub follow: Option<bool>,
}

/// The OpenAPI schema of `since`: a duration (`90s`, `15m`, `1h`, `7d`) or an RFC 3339 time.
fn since_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]{1,18}[smhd]$")),
        )
        // Empty: no lower bound, as if absent.
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(0)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .build()
        .into()
}

/// Parses `since`: `<n>s|m|h|d` back from `now_ms`, or an RFC 3339 time.
fn parse_since(text: &str, now_ms: i64) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::invalid(
            "since must be a duration like 30s, 15m, 1h or 7d, or an RFC 3339 time like 2026-11-22T10:00:00Z",
        )
    };
    let text = text.trim();
    if let Some(unit) = text.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        let digits = &text[..text.len() - unit.len_utf8()];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let n: i64 = digits.parse().map_err(|_| bad())?;
            let seconds = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(bad()),
            };
            return Ok(now_ms.saturating_sub(n.saturating_mul(seconds).saturating_mul(1000)));
        }
    }
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    Ok(i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

fn parse_release(text: &str) -> Result<u64, ApiError> {
    text.trim()
        .trim_start_matches('v')
        .parse()
        .map_err(|_| ApiError::invalid("release must be a release number like 3 or v3"))
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn wire(record: LogRecord) -> EnvironmentLogLine {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(record.at) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    EnvironmentLogLine {
        id: record.id,
        at,
        process_type: record.process,
        instance: record.instance,
        release: record.release,
        stream: record.stream,
        line: record.line,
        fields: record.fields,
        dropped: record.dropped,
    }
}

fn ndjson(records: Vec<LogRecord>) -> String {
    let mut chunk = String::new();
    for record in records {
        if let Ok(json) = serde_json::to_string(&wire(record)) {
            chunk.push_str(&json);
            chunk.push('\n');
        }
    }
    chunk
}

async fn run_query(
    logs: &LogStore,
    environment: Uuid,
    query: gilgal_logs::Query,
) -> Result<Vec<LogRecord>, ApiError> {
    let logs = logs.clone();
    tokio::task::spawn_blocking(move || logs.query(environment, &query))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))
}

/// An environment's log: app output (web, workers), release phase, one-off and cron runs and
/// builds, kept across redeploys and restarts. Without `follow`, the newest matching lines
/// (oldest first); with it, those and then new lines as they are stored.
#[utoipa::path(get, path = "/api/environments/{id}/logs", tag = "logs",
    params(("id" = String, Path, description = "Environment id"), EnvironmentLogsQuery),
    responses(
        (status = 200, description = "NDJSON log lines, oldest first (empty lines are keep-alives while following)", body = EnvironmentLogLine, content_type = "application/x-ndjson"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such environment for this caller", body = ErrorBody),
        (status = 422, description = "Invalid filter", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn environment_logs(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    query: Result<Query<EnvironmentLogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let id = parse_path_id(&id, "environment")?;
    let environment = state
        .store()
        .environment_of(caller.user.id, id)
        .await
        .map_err(|e| match e {
            gilgal_store::StoreError::NotFound => ApiError::not_found("environment"),
            other => other.into(),
        })?;
    caller.check_scope(environment.project_id, Some(environment.id), "environment")?;
    crate::routes::teams::require_for_method(&state, &caller, environment.project_id).await?;

    let filter = gilgal_logs::Query {
        since: query
            .since
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| parse_since(s, now_ms()))
            .transpose()?,
        after: match query.after {
            Some(after) if i64::try_from(after).is_err() => {
                return Err(ApiError::invalid(format!(
                    "after must be a line id between 0 and {}",
                    i64::MAX
                )))
            }
            other => other,
        },
        process: query.process_type.filter(|t| !t.is_empty()),
        release: query
            .release
            .as_deref()
            .filter(|r| !r.is_empty())
            .map(parse_release)
            .transpose()?,
        grep: query.grep.filter(|g| !g.is_empty()),
        limit: super::list_limit(
            query.limit,
            gilgal_logs::DEFAULT_LIMIT as u32,
            gilgal_logs::MAX_LIMIT as u32,
        )? as usize,
    };
    let logs = state.platform().logs().clone();
    let first = run_query(&logs, environment.id, filter.clone()).await?;
    let headers = [
        (header::CONTENT_TYPE, "application/x-ndjson"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    if !query.follow.unwrap_or(false) {
        return Ok((headers, ndjson(first)).into_response());
    }
    let cursor = first
        .last()
        .map(|r| r.id)
        .or(filter.after)
        .unwrap_or_else(|| {
            // Nothing yet: follow from now on (ids are microsecond times of the write).
            u64::try_from(now_ms()).unwrap_or(0).saturating_mul(1000)
        });
    let environment_id = environment.id;
    let head = futures_util::stream::once(async move { Ok::<_, std::io::Error>(ndjson(first)) });
    let tail = futures_util::stream::unfold(
        (cursor, Instant::now()),
        move |(mut cursor, mut quiet_since)| {
            let logs = logs.clone();
            let mut filter = filter.clone();
            async move {
                loop {
                    tokio::time::sleep(FOLLOW_POLL).await;
                    filter.after = Some(cursor);
                    filter.limit = gilgal_logs::MAX_LIMIT;
                    let records = match run_query(&logs, environment_id, filter.clone()).await {
                        Ok(records) => records,
                        Err(_) => {
                            return Some((
                                Err(std::io::Error::other("cannot read the log")),
                                (cursor, quiet_since),
                            ))
                        }
                    };
                    if let Some(last) = records.last() {
                        cursor = last.id;
                        return Some((Ok(ndjson(records)), (cursor, Instant::now())));
                    }
                    if quiet_since.elapsed() >= HEARTBEAT {
                        quiet_since = Instant::now();
                        return Some((Ok("\n".to_owned()), (cursor, quiet_since)));
                    }
                }
            }
        },
    );
    use futures_util::StreamExt;
    let stream = crate::follow::guard(
        &state,
        &caller,
        environment.project_id,
        true,
        head.chain(tail),
    )?;
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// The environment the caller may read, or the one 404.
async fn readable_environment(
    state: &AppState,
    caller: &AuthUser,
    id: &str,
) -> Result<gilgal_store::EnvironmentRecord, ApiError> {
    let id = parse_path_id(id, "environment")?;
    let environment = state
        .store()
        .environment_of(caller.user.id, id)
        .await
        .map_err(|e| match e {
            gilgal_store::StoreError::NotFound => ApiError::not_found("environment"),
            other => other.into(),
        })?;
    caller.check_scope(environment.project_id, Some(environment.id), "environment")?;
    crate::routes::teams::require_for_method(state, caller, environment.project_id).await?;
    Ok(environment)
}

/// Filters of `GET /api/environments/{id}/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The newest this many events (default 100, at most 1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// What happened to an environment, oldest first: deploys, crashes (exit code or OOM),
/// restarts, scale changes, failing health checks and replaced instances.
#[utoipa::path(get, path = "/api/environments/{id}/events", tag = "logs",
    params(("id" = String, Path, description = "Environment id"), EventsQuery),
    responses(
        (status = 200, description = "Events, oldest first", body = Vec<EnvironmentEvent>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such environment for this caller", body = ErrorBody),
        (status = 422, description = "Invalid filter", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn environment_events(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<EnvironmentEvent>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let environment = readable_environment(&state, &caller, &id).await?;
    let events = state
        .store()
        .events(environment.id, super::list_limit(query.limit, 100, 1000)?)
        .await?;
    Ok(Json(
        events
            .into_iter()
            .map(|e| EnvironmentEvent {
                at: e.at,
                kind: e.kind,
                message: e.message,
            })
            .collect(),
    ))
}

/// Uptime of the environment's web process: the share of health checks (made every few
/// seconds on running instances) in which at least one instance answered.
#[utoipa::path(get, path = "/api/environments/{id}/uptime", tag = "logs",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Uptime percentages", body = Uptime),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such environment for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn environment_uptime(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Uptime>, ApiError> {
    let environment = readable_environment(&state, &caller, &id).await?;
    let mut percent = Vec::new();
    let mut checks_24h = 0;
    for minutes in [24 * 60, 7 * 24 * 60, 30 * 24 * 60] {
        let tally = state.store().health_tally(environment.id, minutes).await?;
        if minutes == 24 * 60 {
            checks_24h = tally.checks;
        }
        percent.push((tally.checks > 0).then(|| tally.up as f64 * 100.0 / tally.checks as f64));
    }
    Ok(Json(Uptime {
        last_24h: percent.first().copied().flatten(),
        last_7d: percent.get(1).copied().flatten(),
        last_30d: percent.get(2).copied().flatten(),
        checks_24h,
    }))
}

/// Tracebacks found in the environment's output (Python, Node.js, Rust panics), grouped by
/// signature, with counts, first and last occurrence and release; most recent first.
#[utoipa::path(get, path = "/api/environments/{id}/errors", tag = "logs",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Error groups, most recently seen first", body = Vec<ErrorGroup>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such environment for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn environment_errors(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<ErrorGroup>>, ApiError> {
    let environment = readable_environment(&state, &caller, &id).await?;
    let groups = state.store().error_groups(environment.id).await?;
    Ok(Json(
        groups
            .into_iter()
            .map(|g| ErrorGroup {
                signature: g.signature,
                title: g.title,
                count: g.occurrences,
                first_seen: g.first_seen,
                last_seen: g.last_seen,
                first_release: g.first_release,
                last_release: g.last_release,
                sample: g.sample,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_and_times() {
        let now = 1_000_000_000;
        assert_eq!(parse_since("90s", now).ok(), Some(now - 90_000));
        assert_eq!(parse_since("15m", now).ok(), Some(now - 900_000));
        assert_eq!(parse_since("1h", now).ok(), Some(now - 3_600_000));
        assert_eq!(parse_since("2d", now).ok(), Some(now - 172_800_000));
        assert_eq!(
            parse_since("2026-11-22T10:00:00Z", now).ok(),
            Some(1_795_341_600_000)
        );
        for bad in ["", "h", "1y", "-1h", "yesterday", "1.5h", "é"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
        assert_eq!(parse_release("v3").ok(), Some(3));
        assert_eq!(parse_release("12").ok(), Some(12));
        assert!(parse_release("latest").is_err());
    }
}
