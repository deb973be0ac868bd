//! The little state Docker cannot keep for us, one JSON file per container in the runtime's
//! state dir (`<state_dir>/containers/<container id>.json`, written temp file + fsync +
//! rename): whether a stop was requested (so a stopped container is not mistaken for a crash
//! after a server restart), the restart count, the last exit, and how far logs were delivered.
//! Ownership itself lives in container labels, so a lost record only loses this detail.

use std::fs;
use std::path::{Path, PathBuf};

use gilgal_runtime::host::{write_atomic, Lifecycle};
use gilgal_runtime::{InstanceId, RuntimeError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Persisted per-instance state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub version: u32,
    pub id: InstanceId,
    /// State, restarts, last exit and stop deadline (flattened: the file keeps its shape).
    #[serde(flatten)]
    pub lifecycle: Lifecycle,
    /// Timestamp (from Docker's log) of the last stdout line delivered. One per stream:
    /// Docker orders lines within a stream, not across the two.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub stdout_cursor: Option<OffsetDateTime>,
    /// Same for stderr.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub stderr_cursor: Option<OffsetDateTime>,
}

impl Record {
    pub fn new(id: InstanceId) -> Self {
        Record {
            version: 1,
            id,
            lifecycle: Lifecycle::starting(),
            stdout_cursor: None,
            stderr_cursor: None,
        }
    }
}

impl Record {
    /// The delivery cursor of one stream.
    pub fn cursor(&mut self, stream: gilgal_runtime::LogStream) -> &mut Option<OffsetDateTime> {
        match stream {
            gilgal_runtime::LogStream::Stdout => &mut self.stdout_cursor,
            gilgal_runtime::LogStream::Stderr => &mut self.stderr_cursor,
        }
    }

    /// Where to resume reading the log: the older of the two cursors (whole seconds, as the
    /// logs API takes them); lines already delivered are skipped per stream.
    pub fn resume_since(&self) -> Option<OffsetDateTime> {
        match (self.stdout_cursor, self.stderr_cursor) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (one, other) => one.or(other),
        }
    }
}

/// `<state_dir>/containers`.
pub(crate) fn records_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("containers")
}

fn record_path(state_dir: &Path, id: &InstanceId) -> PathBuf {
    records_dir(state_dir).join(format!("{id}.json"))
}

/// Reads a record; `Ok(None)` when there is none.
pub(crate) fn load(state_dir: &Path, id: &InstanceId) -> Result<Option<Record>, RuntimeError> {
    let path = record_path(state_dir, id);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| RuntimeError::State {
                path,
                source: std::io::Error::other(err),
            }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(RuntimeError::State { path, source: err }),
    }
}

/// Writes a record atomically and durably, so a crash never leaves a torn file.
pub(crate) fn save(state_dir: &Path, record: &Record) -> Result<(), RuntimeError> {
    let path = record_path(state_dir, &record.id);
    let bytes = serde_json::to_vec_pretty(record).map_err(|err| RuntimeError::State {
        path: path.clone(),
        source: std::io::Error::other(err),
    })?;
    write_atomic(&path, &bytes)
}

/// Deletes a record (missing is fine).
pub(crate) fn delete(state_dir: &Path, id: &InstanceId) {
    let path = record_path(state_dir, id);
    if let Err(err) = fs::remove_file(&path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %err, "cannot delete container record");
        }
    }
}

/// Ids of all records on disk (to drop those whose container is gone).
pub(crate) fn list(state_dir: &Path) -> Vec<InstanceId> {
    let Ok(entries) = fs::read_dir(records_dir(state_dir)) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let name = name.to_str()?;
            InstanceId::parse(name.strip_suffix(".json")?).ok()
        })
        .collect()
}
