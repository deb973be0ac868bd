//! The one error type of the runtime crate, so callers (the deploy pipeline and the reconciler)
//! can tell "bad spec" from "unknown instance" from "the machine refused".

use std::path::PathBuf;
use std::time::Duration;

use crate::spec::{ExitInfo, InstanceId};

/// Everything a [`crate::Runtime`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The instance spec is malformed (empty argv, bad label, NUL in an env value...).
    #[error("invalid instance spec: {0}")]
    InvalidSpec(String),
    /// No instance with this id is known to the runtime.
    #[error("unknown instance {0}")]
    UnknownInstance(InstanceId),
    /// The operation needs the instance to be stopped first (e.g. `remove`).
    #[error("instance {0} is still running")]
    StillRunning(InstanceId),
    /// The release's working directory is missing or not a directory.
    #[error("working directory {path} is not usable: {reason}")]
    WorkingDir {
        /// The directory from the spec.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The process could not be started (exec failed, pre-exec isolation step refused...).
    #[error("could not start `{program}` in {}: {source}", working_dir.display())]
    Spawn {
        /// `argv[0]` of the spec.
        program: String,
        /// The working directory it was to run in (a permission error often means the app
        /// user cannot reach it).
        working_dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Running as a per-app Unix user was requested but is not possible here.
    #[error("per-app user isolation unavailable: {0}")]
    UserIsolation(String),
    /// A one-off process did not finish within its timeout and was killed.
    #[error("one-off process timed out after {after:?} and was killed")]
    OneoffTimedOut {
        /// The timeout that elapsed.
        after: Duration,
        /// How the killed process ended.
        exit: ExitInfo,
    },
    /// The runtime's state directory could not be read or written.
    #[error("runtime state {path}: {source}")]
    State {
        /// File or directory concerned.
        path: PathBuf,
        /// The OS or parse error.
        #[source]
        source: std::io::Error,
    },
    /// Another runtime (another `gilgal server`) already manages this state directory.
    #[error("runtime state dir {0} is in use by another process")]
    StateDirInUse(PathBuf),
    /// The runtime (or its background task for this instance) has shut down.
    #[error("runtime is shut down")]
    ShutDown,
    /// Any other OS failure, with context.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Wraps an I/O error with a short description of what was being attempted.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps a state-dir I/O error with the path concerned.
    pub(crate) fn state(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::State {
            path: path.into(),
            source,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
