//! Environment logs on the wire: one [`EnvironmentLogLine`] per NDJSON line of
//! `GET /api/environments/{id}/logs`; the events timeline and uptime of an environment.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Timestamp;

/// One stored line of an environment's log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct EnvironmentLogLine {
    /// Position in the environment's log; pass it as `after` to continue from here.
    pub id: u64,
    /// When it was printed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// Process type: `web`, a worker's name, `release`, `run` (one-off and cron), `build`,
    /// or `gilgal` for Gilgal's own notes (e.g. dropped lines).
    pub process_type: String,
    /// Instance that printed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Release the instance ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<u64>,
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    /// The text, without its newline.
    pub line: String,
    /// When the line is a JSON object: its fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
    /// On Gilgal's notes about lost output: how many lines were dropped because the app printed
    /// faster than they could be stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
}

/// One entry of an environment's events timeline.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct EnvironmentEvent {
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// `deploy`, `crash`, `oom`, `restart`, `scale` or `health`.
    pub kind: String,
    /// What happened.
    pub message: String,
}

/// Share of health checks in which the environment's web process answered, per period
/// (absent when no check ran in it, e.g. an environment without a web process).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Uptime {
    /// Percentage over the last 24 hours.
    pub last_24h: Option<f64>,
    /// Percentage over the last 7 days.
    pub last_7d: Option<f64>,
    /// Percentage over the last 30 days.
    pub last_30d: Option<f64>,
    /// Health checks in the last 24 hours.
    pub checks_24h: u64,
}

/// Tracebacks with the same signature (error type and innermost frame) in one environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ErrorGroup {
    /// Grouping key, e.g. `python:KeyError@app.py:do_GET`.
    pub signature: String,
    /// The latest occurrence's one-line summary.
    pub title: String,
    /// How many times it happened.
    pub count: u64,
    /// First occurrence.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub first_seen: Timestamp,
    /// Latest occurrence.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_seen: Timestamp,
    /// Release of the first occurrence.
    pub first_release: Option<u64>,
    /// Release of the latest occurrence.
    pub last_release: Option<u64>,
    /// The latest occurrence's whole traceback.
    pub sample: String,
}
