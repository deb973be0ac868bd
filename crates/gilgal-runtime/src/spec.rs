//! The data the runtime speaks: what to run ([`InstanceSpec`]) and what it reports back
//! ([`InstanceStatus`], [`ExitInfo`], [`LogLine`], [`RuntimeEvent`], [`ResourceStats`]).
//!
//! These types are runtime-neutral so the Docker runtime can implement the same trait.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Result, RuntimeError};

/// Opaque, path-safe identifier of one instance (or one-off run).
///
/// It names the instance's state directory and cgroup, so it is restricted to
/// `[a-z0-9-]`, 1 to 64 characters; [`InstanceId::parse`] enforces that for ids from outside.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceId(String);

impl InstanceId {
    /// A fresh random id (`i-` followed by 32 hex digits).
    pub fn generate() -> Self {
        InstanceId(format!("i-{}", uuid::Uuid::new_v4().simple()))
    }

    /// Validates an id that came from outside (API path, record file).
    pub fn parse(value: &str) -> Result<Self> {
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(InstanceId(value.to_owned()))
        } else {
            Err(RuntimeError::InvalidSpec(format!(
                "instance id {value:?} must be 1-64 characters of [a-z0-9-]"
            )))
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for InstanceId {
    type Error = RuntimeError;
    fn try_from(value: String) -> Result<Self> {
        InstanceId::parse(&value)
    }
}

impl From<InstanceId> for String {
    fn from(id: InstanceId) -> String {
        id.0
    }
}

/// Who an instance belongs to; the reconciler diffs desired state against these labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstanceLabels {
    /// The app: Gilgal puts its project's immutable id here, never its name (names can be
    /// renamed away and reused). Names the per-app Unix user ([`crate::app_user_name`]).
    pub app: String,
    /// The environment: Gilgal puts the environment's id here.
    pub env: String,
    /// Release number this instance runs.
    pub release: u64,
    /// Procfile process type (`web`, `worker`, `release`, ...).
    pub process_type: String,
    /// Index of this instance among the replicas of its process type.
    pub index: u32,
}

impl InstanceLabels {
    fn validate(&self) -> Result<()> {
        validate_label("app", &self.app)?;
        validate_label("env", &self.env)?;
        validate_label("process type", &self.process_type)?;
        Ok(())
    }
}

fn validate_label(what: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !value.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!(
            "{what} label {value:?} must be 1-63 characters of [a-z0-9_-], not starting with '-'"
        )))
    }
}

/// Resource ceilings for one instance; `None` means unlimited.
///
/// Enforced with cgroups where the runtime can write them, otherwise logged and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Memory ceiling in MiB; exceeding it gets the instance OOM-killed.
    pub memory_mb: Option<u64>,
    /// Relative CPU weight (cgroup v1 `cpu.shares`, default 1024).
    pub cpu_shares: Option<u64>,
    /// Hard CPU cap in thousandths of a core (500 = half a core; CFS quota).
    pub cpu_millicores: Option<u64>,
    /// Maximum number of processes/threads (fork-bomb guard).
    pub max_pids: Option<u64>,
}

/// Which Unix identity the app runs as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunAs {
    /// The server's own user: for development runs as a normal user. No user isolation.
    #[default]
    ServerUser,
    /// A dedicated unprivileged system user per app label ([`crate::app_user_name`]), created
    /// on demand.
    /// Needs root; the app then cannot read anything private to root, like Gilgal's data dir.
    AppUser,
}

/// When the supervisor brings a dead instance back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Always restart, whatever the exit status (long-running `web`/`worker` processes).
    #[default]
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    /// Never restart (one-off tasks).
    Never,
}

impl RestartPolicy {
    /// Whether an instance that ended with `exit` should be started again.
    pub fn should_restart(self, exit: &ExitInfo) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        }
    }
}

/// Everything needed to start one instance of one process type of one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Ownership labels, reported back by `list`.
    pub labels: InstanceLabels,
    /// The command, already expanded: never a shell string. `argv[0]` is looked up in `PATH`
    /// from `env` (or the default PATH) when it has no `/`.
    pub argv: Vec<String>,
    /// The release's artifact directory; the instance's working directory, and its `HOME`
    /// unless the runtime gives app users their own (`app_home_root`).
    pub working_dir: PathBuf,
    /// Environment variables (config vars, `GILGAL_RELEASE`, ...). The server's own environment
    /// is NOT inherited: only a minimal PATH/HOME/LANG is added under these.
    pub env: BTreeMap<String, String>,
    /// The port the instance must listen on; exported as `PORT` when set. `Some(0)`: any
    /// free port, chosen by the runtime (the address `start` returns says where).
    pub port: Option<u16>,
    /// Memory/CPU/pids ceilings.
    pub limits: ResourceLimits,
    /// Unix identity to run as.
    pub run_as: RunAs,
    /// What to do when the process exits (ignored for one-off runs).
    pub restart: RestartPolicy,
    /// The container image to run (Docker runtime: the release's image id), so a release
    /// that reuses another's build runs exactly that image. `None` lets a container runtime
    /// pick its default; the process runtime ignores it (it runs `working_dir`).
    #[serde(default)]
    pub image: Option<String>,
}

impl InstanceSpec {
    /// A spec with defaults for everything but the essentials, for callers and tests.
    pub fn new(labels: InstanceLabels, argv: Vec<String>, working_dir: impl Into<PathBuf>) -> Self {
        InstanceSpec {
            labels,
            argv,
            working_dir: working_dir.into(),
            env: BTreeMap::new(),
            port: None,
            limits: ResourceLimits::default(),
            run_as: RunAs::default(),
            restart: RestartPolicy::default(),
            image: None,
        }
    }

    /// Checks everything that can be checked without touching the system.
    pub fn validate(&self) -> Result<()> {
        self.labels.validate()?;
        let Some(program) = self.argv.first() else {
            return Err(RuntimeError::InvalidSpec("argv must not be empty".into()));
        };
        if program.is_empty() {
            return Err(RuntimeError::InvalidSpec(
                "argv[0] must not be empty".into(),
            ));
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(RuntimeError::InvalidSpec(
                "argv must not contain NUL bytes".into(),
            ));
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
                return Err(RuntimeError::InvalidSpec(format!(
                    "environment variable {key:?} has an invalid name or value"
                )));
            }
        }
        if !self.working_dir.is_absolute() {
            return Err(RuntimeError::InvalidSpec(format!(
                "working dir {} must be absolute",
                self.working_dir.display()
            )));
        }
        Ok(())
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited normally and the status is known.
    pub code: Option<i32>,
    /// Terminating signal number, when killed by a signal.
    pub signal: Option<i32>,
    /// Whether the kernel OOM killer ended it (cgroup `oom_kill` counter rose, or, without a
    /// memory cgroup, an unrequested SIGKILL).
    pub oom_killed: bool,
    /// When the exit was observed.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// How long the process had been running, when known.
    pub uptime: Option<Duration>,
    /// Extra explanation, e.g. "exit status unknown: adopted after a server restart".
    pub note: Option<String>,
}

impl ExitInfo {
    /// True for a clean `exit(0)`.
    pub fn success(&self) -> bool {
        self.code == Some(0) && self.signal.is_none() && !self.oom_killed
    }

    /// One-line human description for deploy failure reasons.
    pub fn describe(&self) -> String {
        let mut text = match (self.code, self.signal) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "exited (status unknown)".to_owned(),
        };
        if self.oom_killed {
            text.push_str(" (out of memory)");
        }
        if let Some(note) = &self.note {
            text.push_str(": ");
            text.push_str(note);
        }
        text
    }
}

/// Lifecycle state of an instance as the runtime sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Being spawned (record written, process maybe not yet).
    Starting,
    /// Process alive.
    Running,
    /// Crashed; waiting out the restart backoff.
    Backoff,
    /// Being stopped (SIGTERM sent, grace period running).
    Stopping,
    /// Exited and will not be restarted (restart policy said no).
    Exited,
    /// Stopped on request.
    Stopped,
}

impl InstanceState {
    /// True while the instance is, or is about to be, running again.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            InstanceState::Starting
                | InstanceState::Running
                | InstanceState::Backoff
                | InstanceState::Stopping
        )
    }
}

/// A snapshot of one instance, as returned by `list`/`status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The instance.
    pub id: InstanceId,
    /// Its labels.
    pub labels: InstanceLabels,
    /// Current state.
    pub state: InstanceState,
    /// PID of the instance's main process (also its process-group id), while running.
    pub pid: Option<u32>,
    /// Port it was told to listen on.
    pub port: Option<u16>,
    /// How many times the supervisor restarted it.
    pub restarts: u32,
    /// When the current (or last) process started.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    /// How the previous process ended, if any has.
    pub last_exit: Option<ExitInfo>,
    /// True when the current process was re-adopted after a server restart.
    pub adopted: bool,
    /// Where the edge reaches it (its port on the runtime's edge address), if it listens.
    #[serde(default)]
    pub addr: Option<SocketAddr>,
}

/// What [`crate::Runtime::start`] started: the instance and where the edge must send its
/// traffic (the runtime decides, so instances need not live on loopback or on this host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedInstance {
    /// The new instance.
    pub id: InstanceId,
    /// Its address for the edge, when it listens on a port.
    pub addr: Option<SocketAddr>,
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line an instance printed, timestamped when the runtime read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Instance that printed it.
    pub instance: InstanceId,
    /// Its labels, so a log consumer does not need a lookup.
    pub labels: InstanceLabels,
    /// stdout or stderr.
    pub stream: LogStream,
    /// When the runtime read the line (within one poll interval of it being written, or at
    /// re-adoption for lines written while the server was down).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The line, without its newline; invalid UTF-8 replaced.
    pub line: String,
    /// Position of the line among those this runtime delivered for the instance since it
    /// opened it (1, 2, 3, …). A subscriber that sees a gap knows exactly how many lines of
    /// that instance it missed (a lagging broadcast receiver), so it can count them.
    #[serde(default)]
    pub seq: u64,
}

/// Something that happened to an instance that the lead stores as a deploy/instance event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeEvent {
    /// Instance concerned.
    pub instance: InstanceId,
    /// Its labels.
    pub labels: InstanceLabels,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What happened.
    pub kind: RuntimeEventKind,
}

/// The kinds of [`RuntimeEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeEventKind {
    /// A process was spawned (first start or restart number `restarts`).
    Started {
        /// Its pid.
        pid: u32,
        /// Restart count at this start (0 for the first).
        restarts: u32,
    },
    /// A live process from a previous server run was taken over.
    Adopted {
        /// Its pid.
        pid: u32,
    },
    /// The record said running but the process was gone (died while the server was down).
    Lost {
        /// Explanation.
        reason: String,
    },
    /// Spawning failed (bad executable, permissions...).
    SpawnFailed {
        /// The error text.
        error: String,
    },
    /// The process exited on its own (crash, OOM, or normal exit).
    Exited(ExitInfo),
    /// The supervisor will restart it after `delay`.
    RestartScheduled {
        /// Restart attempt number (1-based).
        attempt: u32,
        /// Backoff delay before the attempt.
        delay: Duration,
    },
    /// Stopped on request.
    Stopped(ExitInfo),
}

/// Resource usage of one instance (all its processes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStats {
    /// User + system CPU time consumed by live processes.
    pub cpu_time: Duration,
    /// Sum of resident set sizes.
    pub rss_bytes: u64,
    /// Memory charged to the instance's memory cgroup (includes page cache), when it has one.
    pub memory_cgroup_bytes: Option<u64>,
    /// Memory limit applied, when one is enforced.
    pub memory_limit_bytes: Option<u64>,
    /// Number of live processes.
    pub processes: u32,
}
