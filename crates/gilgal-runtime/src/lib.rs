//! Runs Gilgal app instances: the [`Runtime`] trait the deploy pipeline and reconciler use,
//! the default [`ProcessRuntime`], restart [`backoff`], and [`health`] checks.
//!
//! # One skeleton, two drivers
//! What every runtime does the same way is written once in [`host`]: the instance registry
//! ([`host::InstanceHub`]: lookups, `list`, the in-memory log tail behind
//! [`Runtime::log_tail`], the log and event broadcasts, recovery events, task tracking,
//! `stop`/`shutdown`, one-off handles), the recovery decision after a restart
//! ([`host::InstanceHub::recover`]), the persisted [`host::Lifecycle`], and the per-instance
//! [`host::Supervisor`] loop (restart policy with backoff, stops, one-off exits). The
//! [`Runtime`] trait itself is implemented once, for every [`host::HostedRuntime`] (a runtime
//! handle supplies its hub, `start`, one-off start, `remove`'s cleanup and `stats`). A driver
//! implements [`host::InstanceDriver`] for one instance: the process driver here (`process/driver.rs`: spawn
//! with the record durable first, child or pidfd waits, log-file tailing, cgroups, sweeps by
//! marker/cgroup/process group) and the Docker driver in `gilgal-docker` (`docker start`, the
//! wait API, Docker's stop, exits from `inspect`, its log pump). The crash-safety rules below
//! stay with the drivers, which own their records; the skeleton calls them in order.
//!
//! # Isolation (for ARCHITECTURE.md)
//! Each app runs as its own unprivileged system user `gilgal-<app>` (no extra groups,
//! `no_new_privs`, own session, environment built from scratch): the cheapest isolation that
//! works on any Linux without Docker, and it keeps apps out of each other's files and out of
//! Gilgal's 0700 root data dir. Each instance gets cgroup v1 memory/cpu/pids groups for limits,
//! OOM detection and complete process tracking (skipped with a warning where not writable), and
//! optionally ([`MountIsolation`]) a mount namespace with a private /tmp and the data dir hidden.
//! [`Confinement`] applies the same to commands that are not instances (build steps).
//!
//! # Crash-safety invariant
//! *No instance process is ever spawned before the instance's record is durably on disk*
//! (`<state_dir>/instances/<id>/record.json`, temp file + fsync + rename, state `Starting`),
//! and every process of an instance is findable from that record: by the `GILGAL_INSTANCE_ID`
//! marker in its environment, by its cgroup (joined before exec), and by its process group
//! (pid + `/proc` start time recorded right after spawn, defeating PID reuse). Output goes to
//! append-only files, not pipes, so apps survive the server. Hence, after `kill -9` of the
//! server, [`ProcessRuntime::new`] on the same state dir can: re-adopt every live instance
//! (verified pid + start time, watched via pidfd, log tailing resumed from saved offsets);
//! restart instances whose process died meanwhile; finish interrupted stops; and kill every
//! process of one-off runs, stopped instances and half-spawned instances. Dropping a
//! `ProcessRuntime` detaches like a crash; [`Runtime::shutdown`] stops everything.
//!
//! # Operating notes (for the server and the reconciler)
//! - Put `state_dir` inside Gilgal's 0700 data dir: records hold config vars.
//! - An app user must be able to reach its release dir: keep releases outside the 0700 data
//!   dir (or give the path 0711 traverse rights) with files 0644/0755 owned by root, which
//!   also makes them read-only to the app. Otherwise `start` fails with a permission error.
//! - Under systemd use `KillMode=process` for `gilgal server`, or a restart of the unit
//!   kills the apps too (they would then be restarted, not re-adopted).
//! - After a restart, instances keep their ids and labels: match desired state by labels
//!   (app, env, release, process type, index), not by remembering ids.
//! - Log lines are timestamped when read (one poll interval late at most); lines written
//!   while the server was down get the time of re-adoption and may be delivered twice.
//! - Backoff resets after an instance ran `reset_after` (10 min), whatever its health.
//! - Suggested production config as root: `run_as: AppUser` in every spec, and
//!   `ProcessRuntimeConfig { mount_isolation: MountIsolation { private_tmp: true,
//!   hidden_paths: vec![data_dir], own_only_paths: vec![releases_dir] },
//!   app_home_root: Some("/var/lib/gilgal-homes".into()), ..Default::default() }` (release
//!   dirs then must be outside the hidden paths; under /tmp or the releases dir they stay
//!   visible, alone). Build steps get the same through [`Confinement`].
//!
//! # Use
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use gilgal_runtime::*;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime: Arc<dyn Runtime> =
//!     Arc::new(ProcessRuntime::new("/var/lib/gilgal/runtime", ProcessRuntimeConfig::default()).await?);
//! let labels = InstanceLabels {
//!     app: "billing".into(),
//!     env: "production".into(),
//!     release: 12,
//!     process_type: "web".into(),
//!     index: 0,
//! };
//! let mut spec = InstanceSpec::new(labels, vec!["gunicorn".into(), "app:app".into()], "/srv/gilgal/releases/billing/12");
//! spec.port = Some(20_001);
//! spec.run_as = RunAs::AppUser;
//! spec.limits.memory_mb = Some(512);
//! let id = runtime.start(spec).await?;
//! let addr = "127.0.0.1:20001".parse()?;
//! if let Err(err) = wait_healthy(runtime.as_ref(), &id, addr, &HealthCheck::default()).await {
//!     let tail = runtime.log_tail(&id, 20).await?;
//!     eprintln!("deploy failed: {err}; last lines: {tail:?}");
//!     runtime.stop(&id, Duration::from_secs(30)).await?;
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod backoff;
pub mod error;
pub mod health;
pub mod host;
pub mod process;
pub mod runtime;
pub mod spec;

pub use backoff::{BackoffPolicy, BackoffState};
pub use error::{Result, RuntimeError};
pub use health::{
    wait_healthy, HealthCheck, HealthError, HealthMonitor, HealthState, Probe, ProbeError,
};
pub use process::{
    app_user_ids, app_user_name, CgroupConfig, Confinement, ConfinementSettings, MountIsolation,
    ProcessRuntime, ProcessRuntimeConfig, DEFAULT_PATH, INSTANCE_ID_ENV,
};
pub use runtime::{OneoffHandle, Runtime};
pub use spec::{
    ExitInfo, InstanceId, InstanceLabels, InstanceSpec, InstanceState, InstanceStatus, LogLine,
    LogStream, ResourceLimits, ResourceStats, RestartPolicy, RunAs, RuntimeEvent, RuntimeEventKind,
    StartedInstance,
};
