//! The process runtime: every instance is a supervised child process of `gilgal server`,
//! isolated with its own session, Unix user and cgroups. See the crate documentation for the
//! crash-safety invariant it maintains.

mod cgroup;
mod confine;
mod logs;
mod members;
mod procfs;
mod record;
mod spawn;
mod supervisor;
mod user;

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::AbortHandle;

pub use cgroup::CgroupConfig;
pub use confine::{Confinement, ConfinementSettings};
pub use spawn::{MountIsolation, DEFAULT_PATH, INSTANCE_ID_ENV};
pub use user::{app_user_ids, app_user_name};

use self::cgroup::Cgroups;
use self::logs::LogTailer;
use self::record::{create_instance_dir, instances_dir, InstancePaths, Record, RecordKind};
use self::supervisor::{
    lock, lost_exit, Begin, Control, Entry, OneoffSinks, Running, Shared, Supervisor,
};
use crate::backoff::{BackoffPolicy, BackoffState};
use crate::error::{Result, RuntimeError};
use crate::runtime::{OneoffHandle, Runtime};
use crate::spec::{
    ExitInfo, InstanceId, InstanceSpec, InstanceState, InstanceStatus, LogLine, ResourceStats,
    RuntimeEvent, RuntimeEventKind,
};

/// Tunables of the process runtime; `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct ProcessRuntimeConfig {
    /// Restart backoff for crashed instances.
    pub backoff: BackoffPolicy,
    /// cgroup v1 location, or disabled.
    pub cgroups: CgroupConfig,
    /// How often log files are polled for new lines (also the timestamp resolution).
    pub log_poll_interval: Duration,
    /// Log lines kept in memory per instance for [`Runtime::log_tail`].
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
    instances: Mutex<HashMap<InstanceId, Arc<Entry>>>,
    logs: broadcast::Sender<LogLine>,
    events: broadcast::Sender<RuntimeEvent>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Adopted/Lost events produced while opening, before anyone could subscribe.
    recovery_events: Mutex<Vec<RuntimeEvent>>,
}

impl Inner {
    fn entry(&self, id: &InstanceId) -> Result<Arc<Entry>> {
        lock(&self.instances)
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::UnknownInstance(id.clone()))
    }

    /// Drops an instance from memory and disk (used for finished one-off runs and `remove`).
    fn forget(&self, id: &InstanceId) {
        let entry = lock(&self.instances).remove(id);
        if let Some(entry) = entry {
            entry.cgroup.remove();
            if let Err(err) = fs::remove_dir_all(&entry.paths.dir) {
                tracing::warn!(instance = %id, error = %err, "cannot delete instance state");
            }
        }
    }
}

/// The default [`Runtime`]: instances are local processes.
///
/// Dropping it detaches: supervision stops but instances keep running, exactly as if the
/// server had been killed; a new `ProcessRuntime` on the same `state_dir` re-adopts them.
/// [`Runtime::shutdown`] stops them instead.
#[derive(Debug)]
pub struct ProcessRuntime {
    inner: Arc<Inner>,
    /// Exclusive `flock` on `<state_dir>/runtime.lock`: two servers must never supervise the
    /// same instances. Released when this handle drops (or the process dies).
    _lock: fs::File,
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
    }
}

impl ProcessRuntime {
    /// Opens the runtime on `state_dir` (created 0700 if missing) and re-adopts, restarts or
    /// sweeps whatever a previous server run left there. Must be called inside a Tokio runtime.
    pub async fn new(state_dir: impl Into<PathBuf>, config: ProcessRuntimeConfig) -> Result<Self> {
        let state_dir = state_dir.into();
        let dir = instances_dir(&state_dir);
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|err| RuntimeError::state(&dir, err))?;
        }
        let lock = lock_state_dir(&state_dir).await?;
        let cgroups = Cgroups::detect(&config.cgroups);
        let (logs, _) = broadcast::channel(config.channel_capacity.max(16));
        // Events are rare (starts, exits, restarts): a short buffer, since a broadcast
        // reserves every slot up front.
        let (events, _) = broadcast::channel(config.channel_capacity.clamp(16, 1024));
        let runtime = ProcessRuntime {
            inner: Arc::new(Inner {
                state_dir,
                config,
                cgroups,
                instances: Mutex::new(HashMap::new()),
                logs,
                events,
                tasks: Mutex::new(Vec::new()),
                recovery_events: Mutex::new(Vec::new()),
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

    fn launch(&self, supervisor: Supervisor, begin: Begin) {
        let handle = tokio::spawn(supervisor.run(begin));
        let mut tasks = lock(&self.inner.tasks);
        tasks.retain(|task| !task.is_finished());
        tasks.push(handle.abort_handle());
    }

    fn new_entry(&self, record: Record, adopted: bool) -> (Arc<Entry>, mpsc::Receiver<Control>) {
        let (control, control_rx) = mpsc::channel(8);
        let id = record.id.clone();
        let entry = Arc::new(Entry {
            paths: InstancePaths::new(&self.inner.state_dir, &id),
            cgroup: self.inner.cgroups.instance(&id),
            kind: record.kind,
            id,
            shared: Mutex::new(Shared { record, adopted }),
            ring: Mutex::new(VecDeque::new()),
            control,
            log_seq: std::sync::atomic::AtomicU64::new(0),
        });
        (entry, control_rx)
    }

    fn supervisor(
        &self,
        entry: Arc<Entry>,
        control: mpsc::Receiver<Control>,
        resume_logs: bool,
        oneoff: Option<OneoffSinks>,
    ) -> Supervisor {
        Supervisor {
            inner: self.inner.clone(),
            tailer: LogTailer::new(
                &entry.paths,
                resume_logs,
                self.inner.config.max_log_file_bytes,
            ),
            entry,
            backoff: BackoffState::default(),
            control,
            oneoff,
        }
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
        let state = record.state;
        // What is left of an interrupted stop's grace period.
        let grace = record
            .stop_deadline
            .map(|deadline| deadline - time::OffsetDateTime::now_utc())
            .and_then(|left| Duration::try_from(left).ok())
            .unwrap_or(Duration::ZERO);
        let adopted = live.is_some();
        let (entry, control) = self.new_entry(record, adopted);
        let id = entry.id.clone();

        if kind == RecordKind::Oneoff {
            // Nobody is waiting for its output any more: end it.
            drop(live);
            entry.members().signal_all(libc::SIGKILL);
            entry.cgroup.remove();
            let _ = fs::remove_dir_all(&entry.paths.dir);
            tracing::info!(instance = %id, "killed one-off run left by a previous server");
            return;
        }
        lock(&self.inner.instances).insert(id.clone(), entry.clone());
        let emit = |kind: RuntimeEventKind| {
            let labels = lock(&entry.shared).record.spec.labels.clone();
            let event = RuntimeEvent {
                instance: id.clone(),
                labels,
                at: time::OffsetDateTime::now_utc(),
                kind,
            };
            lock(&self.inner.recovery_events).push(event.clone());
            let _ = self.inner.events.send(event);
        };
        match state {
            InstanceState::Exited | InstanceState::Stopped => {
                // Nothing should run; make sure nothing does.
                entry.members().signal_all(libc::SIGKILL);
            }
            InstanceState::Stopping => {
                let supervisor = self.supervisor(entry.clone(), control, true, None);
                self.launch(supervisor, Begin::FinishStop(live, grace));
            }
            InstanceState::Starting | InstanceState::Running | InstanceState::Backoff => {
                let supervisor = self.supervisor(entry.clone(), control, true, None);
                match live {
                    Some(running) => {
                        let pid = entry
                            .leader()
                            .and_then(|(pid, _)| u32::try_from(pid).ok())
                            .unwrap_or(0);
                        tracing::info!(instance = %id, pid, "re-adopted running instance");
                        emit(RuntimeEventKind::Adopted { pid });
                        if state != InstanceState::Running {
                            let _ = entry.update(|record| record.state = InstanceState::Running);
                        }
                        self.launch(supervisor, Begin::Watch(running));
                    }
                    None => {
                        // Died (or never fully started) while the server was down. The
                        // supervisor kills any leftovers before restarting it.
                        let reason = "process was gone when the server restarted".to_owned();
                        emit(RuntimeEventKind::Lost {
                            reason: reason.clone(),
                        });
                        self.launch(supervisor, Begin::Lost(lost_exit(&reason)));
                    }
                }
            }
        }
    }

    async fn start_entry(
        &self,
        spec: InstanceSpec,
        kind: RecordKind,
        oneoff: Option<OneoffSinks>,
    ) -> Result<(Arc<Entry>, Running, Supervisor)> {
        spec.validate()?;
        match fs::metadata(&spec.working_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(RuntimeError::WorkingDir {
                    path: spec.working_dir.clone(),
                    reason: "not a directory".into(),
                })
            }
            Err(err) => {
                return Err(RuntimeError::WorkingDir {
                    path: spec.working_dir.clone(),
                    reason: err.to_string(),
                })
            }
        }
        let id = InstanceId::generate();
        let record = Record {
            version: 1,
            id: id.clone(),
            kind,
            spec,
            state: InstanceState::Starting,
            pid: None,
            start_time_ticks: None,
            boot_id: None,
            started_at: None,
            restarts: 0,
            last_exit: None,
            stop_deadline: None,
        };
        let (entry, control) = self.new_entry(record, false);
        create_instance_dir(&entry.paths)?;
        let mut supervisor = self.supervisor(entry.clone(), control, false, oneoff);
        match supervisor.spawn_process().await {
            Ok(running) => {
                lock(&self.inner.instances).insert(id, entry.clone());
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

/// Takes the state dir's exclusive lock, waiting briefly for a previous owner in this same
/// process (a just-dropped runtime) to let go.
async fn lock_state_dir(state_dir: &Path) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let path = state_dir.join("runtime.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| RuntimeError::state(&path, err))?;
    for _ in 0..50 {
        // SAFETY: flock on a valid fd we own; no memory involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock {
            return Err(RuntimeError::state(&path, err));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(RuntimeError::StateDirInUse(state_dir.to_path_buf()))
}

async fn stop_entry(entry: &Entry, grace: Duration) -> ExitInfo {
    let (reply, answer) = oneshot::channel();
    let sent = entry
        .control
        .send(Control::Stop {
            grace,
            reply: Some(reply),
        })
        .await;
    if sent.is_ok() {
        if let Ok(exit) = answer.await {
            return exit;
        }
    }
    // No supervisor task (already exited or stopped): report the last exit.
    let status = entry.status();
    status
        .last_exit
        .unwrap_or_else(|| lost_exit("instance was not running"))
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: InstanceSpec) -> Result<InstanceId> {
        let (entry, running, supervisor) =
            self.start_entry(spec, RecordKind::Instance, None).await?;
        self.launch(supervisor, Begin::Watch(running));
        Ok(entry.id.clone())
    }

    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<ExitInfo> {
        let entry = self.inner.entry(id)?;
        Ok(stop_entry(&entry, grace).await)
    }

    async fn remove(&self, id: &InstanceId) -> Result<()> {
        let entry = self.inner.entry(id)?;
        if entry.status().state.is_active() {
            return Err(RuntimeError::StillRunning(id.clone()));
        }
        self.inner.forget(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<InstanceStatus>> {
        let entries: Vec<Arc<Entry>> = lock(&self.inner.instances).values().cloned().collect();
        let mut list: Vec<InstanceStatus> = entries
            .iter()
            .filter(|entry| entry.kind == RecordKind::Instance)
            .map(|entry| entry.status())
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn status(&self, id: &InstanceId) -> Result<InstanceStatus> {
        Ok(self.inner.entry(id)?.status())
    }

    async fn run_oneoff(&self, spec: InstanceSpec) -> Result<OneoffHandle> {
        let (lines_tx, lines_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        let sinks = OneoffSinks {
            lines: lines_tx,
            exit: Some(exit_tx),
        };
        let (entry, running, supervisor) = self
            .start_entry(spec, RecordKind::Oneoff, Some(sinks))
            .await?;
        self.launch(supervisor, Begin::Watch(running));
        let (cancel_tx, mut cancel_rx) = mpsc::channel::<Duration>(1);
        let control = entry.control.clone();
        let forwarder = tokio::spawn(async move {
            if let Some(grace) = cancel_rx.recv().await {
                let _ = control.send(Control::Stop { grace, reply: None }).await;
            }
        });
        lock(&self.inner.tasks).push(forwarder.abort_handle());
        Ok(OneoffHandle::new(
            entry.id.clone(),
            lines_rx,
            exit_rx,
            cancel_tx,
        ))
    }

    async fn stats(&self, id: &InstanceId) -> Result<ResourceStats> {
        let entry = self.inner.entry(id)?;
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

    async fn log_tail(&self, id: &InstanceId, lines: usize) -> Result<Vec<LogLine>> {
        let entry = self.inner.entry(id)?;
        let ring = lock(&entry.ring);
        let skip = ring.len().saturating_sub(lines);
        Ok(ring.iter().skip(skip).cloned().collect())
    }

    fn subscribe_logs(&self) -> broadcast::Receiver<LogLine> {
        self.inner.logs.subscribe()
    }

    fn subscribe_events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    /// The `Adopted` and `Lost` events of the recovery done by [`ProcessRuntime::new`].
    /// Events of supervisors started by the recovery (restarts of lost instances) go to
    /// [`Runtime::subscribe_events`] as usual; subscribe right after `new` to see them.
    fn take_recovery_events(&self) -> Vec<RuntimeEvent> {
        std::mem::take(&mut *lock(&self.inner.recovery_events))
    }

    /// Stops every instance (SIGTERM, `grace`, SIGKILL) and ends supervision. Records stay,
    /// marked stopped, so `list` still shows them.
    async fn shutdown(&self, grace: Duration) {
        let entries: Vec<Arc<Entry>> = lock(&self.inner.instances).values().cloned().collect();
        let mut stops = tokio::task::JoinSet::new();
        for entry in entries {
            stops.spawn(async move { stop_entry(&entry, grace).await });
        }
        while stops.join_next().await.is_some() {}
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
    }
}
