//! Durable per-instance records in `<state_dir>/instances/<id>/record.json`, written
//! temp-file + fsync + rename (+ fsync of the directory), so a `kill -9` of the server leaves
//! either the old or the new record, never a torn one.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Result, RuntimeError};
use crate::host::{write_atomic, InstanceKind, Lifecycle};
use crate::spec::{InstanceId, InstanceSpec};

/// What survives a server restart about one instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Format version, for future migrations.
    pub version: u32,
    pub id: InstanceId,
    pub kind: InstanceKind,
    /// The full spec, so the instance can be restarted after re-adoption.
    pub spec: InstanceSpec,
    /// State, restarts, last exit and stop deadline (flattened: the file keeps its shape).
    #[serde(flatten)]
    pub lifecycle: Lifecycle,
    /// PID (= process group id) of the current process; `None` before spawn.
    pub pid: Option<i32>,
    /// `/proc/PID/stat` field 22 of that process: PID + start time identify it uniquely.
    pub start_time_ticks: Option<u64>,
    /// Kernel boot id when the process was spawned: after a reboot pids mean nothing.
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
}

/// Paths of one instance's state.
#[derive(Debug, Clone)]
pub(crate) struct InstancePaths {
    pub dir: PathBuf,
}

impl InstancePaths {
    pub fn new(state_dir: &Path, id: &InstanceId) -> Self {
        InstancePaths {
            dir: instances_dir(state_dir).join(id.as_str()),
        }
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("record.json")
    }
    pub fn stdout(&self) -> PathBuf {
        self.dir.join("stdout.log")
    }
    pub fn stderr(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }
    pub fn offsets(&self) -> PathBuf {
        self.dir.join("offsets.json")
    }
}

/// `<state_dir>/instances`.
pub(crate) fn instances_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("instances")
}

impl Record {
    /// Persists the record.
    pub fn save(&self, paths: &InstancePaths) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|err| RuntimeError::state(paths.record(), std::io::Error::other(err)))?;
        write_atomic(&paths.record(), &bytes)
    }

    /// Loads a record.
    pub fn load(paths: &InstancePaths) -> Result<Record> {
        let bytes =
            fs::read(paths.record()).map_err(|err| RuntimeError::state(paths.record(), err))?;
        serde_json::from_slice(&bytes)
            .map_err(|err| RuntimeError::state(paths.record(), std::io::Error::other(err)))
    }
}

/// Creates the instance directory (0700: it holds config vars and logs).
pub(crate) fn create_instance_dir(paths: &InstancePaths) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.dir)
        .map_err(|err| RuntimeError::state(&paths.dir, err))
}

use std::os::unix::fs::DirBuilderExt;
