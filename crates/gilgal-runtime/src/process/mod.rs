//! The process runtime: every instance is a supervised child process of `gilgal server`,
//! isolated with its own session, Unix user and cgroups. See the crate documentation for the
//! crash-safety invariant it maintains.

mod cgroup;
mod confine;
mod driver;
mod logs;
mod members;
mod procfs;
mod record;
mod spawn;
mod user;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

pub use cgroup::CgroupConfig;
pub use confine::{Confinement, ConfinementSettings};
pub use spawn::{MountIsolation, DEFAULT_PATH, INSTANCE_ID_ENV};
pub use user::{app_user_ids, app_user_name};

use self::cgroup::Cgroups;
use self::driver::{Entry, ProcessDriver, Running, Shared};
use self::logs::LogTailer;
use self::record::{create_instance_dir, instances_dir, InstancePaths, Record};
use crate::backoff::BackoffPolicy;
use crate::error::{Result, RuntimeError};
use crate::host::{
    check_working_dir, create_state_dir, lock_state_dir, lost_exit, Begin, ControlReceiver,
    HostedRuntime, InstanceCore, InstanceHub, InstanceKind, Lifecycle, OneoffSinks, Supervisor,
};
use crate::spec::{InstanceId, InstanceSpec, InstanceState, ResourceStats};

/// Tunables of the process runtime; `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct ProcessRuntimeConfig {
    /// Restart backoff for crashed instances.
    pub backoff: BackoffPolicy,
    /// cgroup v1 location, or disabled.
    pub cgroups: CgroupConfig,
    /// How often log files are polled for new lines (also the timestamp resolution).
    pub log_poll_interval: Duration,
    /// Log lines kept in memory per instance for [`Runtime::log_tail`](crate::Runtime::log_tail).
    pub log_ring_lines: usize,
    /// A log file that grows past this is truncated once fully read.
    pub max_log_file_bytes: u64,
    /// PATH for apps whose env does not set one.
    pub default_path: String,
    /// Capacity of the log and event broadcast channels.
    pub channel_capacity: usize,
    /// Per-instance mount namespace (private /tmp, hidden paths); applied only as root.
    pub mount_isolation: MountIsolation,
    /// Where per-app writable HOME dirs live for [`crate::RunAs::AppUser`] instances
    /// (`<root>/gilgal-<app>`, 0700). Must be reachable by app users, so not inside the 0700
    /// data dir. `None`: HOME is the (read-only) release dir.
    pub app_home_root: Option<PathBuf>,
}

impl Default for ProcessRuntimeConfig {
    fn default() -> Self {
        ProcessRuntimeConfig {
            backoff: BackoffPolicy::default(),
            cgroups: CgroupConfig::default(),
            log_poll_interval: Duration::from_millis(100),
            log_ring_lines: 500,
            max_log_file_bytes: 64 * 1024 * 1024,
            default_path: DEFAULT_PATH.to_owned(),
            channel_capacity: 4096,
            mount_isolation: MountIsolation::default(),
            app_home_root: None,
        }
    }
}

/// State shared by the runtime handle and all supervisor tasks.
#[derive(Debug)]
pub(crate) struct Inner {
    state_dir: PathBuf,
    config: ProcessRuntimeConfig,
    cgroups: Cgroups,
    /// The instances, their log tails and the log/event broadcasts.
    hub: Arc<InstanceHub<Entry>>,
}

impl Inner {
    /// Drops an instance from memory and disk (used for finished one-off runs and `remove`).
    fn forget(&self, id: &InstanceId) {
        if let Some(entry) = self.hub.remove(id) {
            entry.cgroup.remove();
            if let Err(err) = fs::remove_dir_all(&entry.paths.dir) {
                tracing::warn!(instance = %id, error = %err, "cannot delete instance state");
            }
        }
    }
}

/// The default [`Runtime`](crate::Runtime): instances are local processes.
///
/// Dropping it detaches: supervision stops but instances keep running, exactly as if the
/// server had been killed; a new `ProcessRuntime` on the same `state_dir` re-adopts them.
/// [`Runtime::shutdown`](crate::Runtime::shutdown) stops them instead.
#[derive(Debug)]
pub struct ProcessRuntime {
    inner: Arc<Inner>,
    /// Exclusive `flock` on `<state_dir>/runtime.lock`: two servers must never supervise the
    /// same instances. Released when this handle drops (or the process dies).
    _lock: fs::File,
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        self.inner.hub.abort_tasks();
    }
}

impl ProcessRuntime {
    /// Opens the runtime on `state_dir` (created 0700 if missing) and re-adopts, restarts or
    /// sweeps whatever a previous server run left there. Must be called inside a Tokio runtime.
    pub async fn new(state_dir: impl Into<PathBuf>, config: ProcessRuntimeConfig) -> Result<Self> {
        let state_dir = state_dir.into();
        create_state_dir(&instances_dir(&state_dir))?;
        let lock = lock_state_dir(&state_dir).await?;
        let cgroups = Cgroups::detect(&config.cgroups);
        // Apps listen on loopback (`HOST`), where the edge on this machine reaches them.
        let hub = Arc::new(InstanceHub::new(
            config.channel_capacity,
            config.log_ring_lines,
            std::net::Ipv4Addr::LOCALHOST.into(),
        ));
        let runtime = ProcessRuntime {
            inner: Arc::new(Inner {
                state_dir,
                config,
                cgroups,
                hub,
            }),
            _lock: lock,
        };
        runtime.recover()?;
        Ok(runtime)
    }

    /// The directory holding instance records and logs.
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    fn new_entry(&self, record: Record, adopted: bool) -> (Arc<Entry>, ControlReceiver) {
        let id = record.id.clone();
        let (core, control) = InstanceCore::new(
            id.clone(),
            record.kind,
            record.spec.labels.clone(),
            record.spec.restart,
            self.inner.hub.edge_ip(),
        );
        let entry = Arc::new(Entry {
            core,
            paths: InstancePaths::new(&self.inner.state_dir, &id),
            cgroup: self.inner.cgroups.instance(&id),
            shared: Mutex::new(Shared { record, adopted }),
        });
        (entry, control)
    }

    fn supervisor(
        &self,
        entry: Arc<Entry>,
        control: ControlReceiver,
        resume_logs: bool,
        oneoff: Option<OneoffSinks>,
    ) -> Supervisor<ProcessDriver> {
        let (oneoff_lines, oneoff_exit) = OneoffSinks::split(oneoff);
        let driver = ProcessDriver {
            inner: self.inner.clone(),
            tailer: LogTailer::new(
                &entry.paths,
                resume_logs,
                self.inner.config.max_log_file_bytes,
            ),
            entry: entry.clone(),
            oneoff_lines,
        };
        let backoff = self.inner.config.backoff;
        self.inner
            .hub
            .supervisor(driver, entry, backoff, control, oneoff_exit)
    }

    /// Re-adopts live instances, restarts lost ones, finishes interrupted stops and kills
    /// leftovers of one-off runs. Invariant relied on: no process is spawned before its record
    /// exists on disk, and every process carries the instance id (env marker, cgroup, pgid).
    fn recover(&self) -> Result<()> {
        let dir = instances_dir(&self.inner.state_dir);
        let listing = fs::read_dir(&dir).map_err(|err| RuntimeError::state(&dir, err))?;
        for item in listing {
            let item = item.map_err(|err| RuntimeError::state(&dir, err))?;
            let Some(id) = item
                .file_name()
                .to_str()
                .and_then(|name| InstanceId::parse(name).ok())
            else {
                continue;
            };
            let paths = InstancePaths::new(&self.inner.state_dir, &id);
            let record = match Record::load(&paths) {
                Ok(record) => record,
                Err(err) => {
                    // A directory without a readable record never had a process spawned
                    // (records are written before spawn), but sweep by marker to be sure.
                    tracing::warn!(instance = %id, error = %err, "discarding unreadable instance state");
                    self.sweep_unrecorded(&id);
                    let _ = fs::remove_dir_all(&paths.dir);
                    continue;
                }
            };
            if record.id != id {
                tracing::warn!(instance = %id, "record id does not match its directory; skipped");
                continue;
            }
            self.recover_one(record);
        }
        Ok(())
    }

    fn sweep_unrecorded(&self, id: &InstanceId) {
        let cgroup = self.inner.cgroups.instance(id);
        let members = members::Members {
            id,
            cgroup: &cgroup,
            leader: None,
        };
        members.signal_all(libc::SIGKILL);
        cgroup.remove();
    }

    fn recover_one(&self, mut record: Record) {
        if record.boot_id.is_some() && record.boot_id != procfs::boot_id() {
            // Recorded before a reboot: the pid and process group now belong to strangers.
            record.pid = None;
            record.start_time_ticks = None;
        }
        let live = record
            .pid
            .zip(record.start_time_ticks)
            .and_then(|(pid, start)| {
                Running::adopt(
                    pid,
                    start,
                    record.started_at,
                    &self.inner.cgroups.instance(&record.id),
                )
            });
        let kind = record.kind;
        let lifecycle = record.lifecycle.clone();
        let adopted = live.is_some();
        let (entry, control) = self.new_entry(record, adopted);
        let id = entry.core.id.clone();

        if kind == InstanceKind::Oneoff {
            // Nobody is waiting for its output any more: end it.
            drop(live);
            entry.members().signal_all(libc::SIGKILL);
            entry.cgroup.remove();
            let _ = fs::remove_dir_all(&entry.paths.dir);
            tracing::info!(instance = %id, "killed one-off run left by a previous server");
            return;
        }
        self.inner.hub.insert(entry.clone());
        let pid = entry
            .leader()
            .and_then(|(pid, _)| u32::try_from(pid).ok())
            .unwrap_or(0);
        let lost = || {
            let reason = "process was gone when the server restarted".to_owned();
            let exit = lost_exit(&reason);
            (reason, exit)
        };
        let mark_running = || {
            let _ = entry.update(|record| record.lifecycle.state = InstanceState::Running);
        };
        match self
            .inner
            .hub
            .recover(&entry, &lifecycle, live, pid, lost, mark_running)
        {
            Ok(begin) => {
                let supervisor = self.supervisor(entry.clone(), control, true, None);
                self.inner.hub.launch(supervisor, begin);
            }
            Err(_) => {
                // Nothing should run; make sure nothing does.
                entry.members().signal_all(libc::SIGKILL);
            }
        }
    }

    async fn start_entry(
        &self,
        spec: InstanceSpec,
        kind: InstanceKind,
        oneoff: Option<OneoffSinks>,
    ) -> Result<(Arc<Entry>, Running, Supervisor<ProcessDriver>)> {
        spec.validate()?;
        check_working_dir(&spec.working_dir)?;
        let id = InstanceId::generate();
        let record = Record {
            version: 1,
            id: id.clone(),
            kind,
            spec,
            lifecycle: Lifecycle::starting(),
            pid: None,
            start_time_ticks: None,
            boot_id: None,
            started_at: None,
        };
        let (entry, control) = self.new_entry(record, false);
        create_instance_dir(&entry.paths)?;
        let mut supervisor = self.supervisor(entry.clone(), control, false, oneoff);
        match supervisor.driver_mut().spawn_process().await {
            Ok(running) => {
                self.inner.hub.insert(entry.clone());
                Ok((entry, running, supervisor))
            }
            Err(err) => {
                entry.cgroup.remove();
                let _ = fs::remove_dir_all(&entry.paths.dir);
                Err(err)
            }
        }
    }
}

#[async_trait]
impl HostedRuntime for ProcessRuntime {
    type Entry = Entry;

    fn runtime_name(&self) -> &'static str {
        "process"
    }

    fn hub(&self) -> &InstanceHub<Entry> {
        &self.inner.hub
    }

    async fn start_instance(&self, spec: InstanceSpec) -> Result<InstanceId> {
        let (entry, running, supervisor) =
            self.start_entry(spec, InstanceKind::Instance, None).await?;
        self.inner.hub.launch(supervisor, Begin::Watch(running));
        Ok(entry.core.id.clone())
    }

    async fn start_oneoff(&self, spec: InstanceSpec, sinks: OneoffSinks) -> Result<Arc<Entry>> {
        let (entry, running, supervisor) = self
            .start_entry(spec, InstanceKind::Oneoff, Some(sinks))
            .await?;
        self.inner.hub.launch(supervisor, Begin::Watch(running));
        Ok(entry)
    }

    async fn forget_instance(&self, id: &InstanceId) {
        self.inner.forget(id);
    }

    async fn instance_stats(&self, id: &InstanceId) -> Result<ResourceStats> {
        let entry = self.inner.hub.get(id)?;
        let pids = entry.members().live_pids();
        let ticks = procfs::clock_ticks_per_second();
        let page = procfs::page_size();
        let mut cpu_ticks = 0u64;
        let mut rss_pages = 0u64;
        let mut processes = 0u32;
        for pid in pids {
            if let Some(stat) = procfs::read_stat(pid) {
                cpu_ticks = cpu_ticks.saturating_add(stat.utime + stat.stime);
                rss_pages = rss_pages.saturating_add(stat.rss_pages);
                processes += 1;
            }
        }
        Ok(ResourceStats {
            cpu_time: Duration::from_millis(cpu_ticks.saturating_mul(1000) / ticks),
            rss_bytes: rss_pages.saturating_mul(page),
            memory_cgroup_bytes: entry.cgroup.memory_usage(),
            memory_limit_bytes: entry.cgroup.memory_limit(),
            processes,
        })
    }
}
