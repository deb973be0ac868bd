//! The runtime skeleton every driver shares, written once: the instance registry, the log and
//! event broadcasts with each instance's in-memory log tail, the recovery events, task
//! tracking, the recovery decision after a server restart, the per-instance [`Supervisor`]
//! loop (restart policy with backoff, stops, one-off runs), and the [`Runtime`] trait itself
//! (implemented once for every [`HostedRuntime`]). A driver (the process runtime in
//! [`crate::process`], the Docker runtime in `gilgal-docker`) implements only what differs:
//! [`HostedRuntime`] for the runtime handle (start, one-off start, cleanup on remove, stats)
//! and [`InstanceDriver`] for one instance (how it is started, waited for, stopped and swept,
//! and how its record is persisted).
//!
//! The crash-safety rules of the crate docs stay with the drivers (they own the records and
//! decide when a record is durable); the skeleton only calls them in the right order: a state
//! change is persisted before it is announced, and a one-off run is forgotten only after its
//! exit was handed out.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::sleep;

use crate::backoff::{BackoffPolicy, BackoffState};
use crate::error::{Result, RuntimeError};
use crate::runtime::{OneoffHandle, Runtime};
use crate::spec::{
    ExitInfo, InstanceId, InstanceLabels, InstanceSpec, InstanceState, InstanceStatus, LogLine,
    LogStream, ResourceStats, RestartPolicy, RuntimeEvent, RuntimeEventKind, StartedInstance,
};

/// Locks a mutex, recovering from poisoning: the data behind the runtime's mutexes are plain
/// values, valid after any panic, and a poisoned lock must not take supervision down.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An exit whose status cannot be known (the process vanished unseen, a start failed), so
/// restart decisions and `list` still get an [`ExitInfo`] that says why.
pub fn lost_exit(note: &str) -> ExitInfo {
    ExitInfo {
        code: None,
        signal: None,
        oom_killed: false,
        at: OffsetDateTime::now_utc(),
        uptime: None,
        note: Some(note.to_owned()),
    }
}

/// Creates a runtime's state directory (and parents) 0700, because records hold config vars.
pub fn create_state_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| RuntimeError::state(dir, err))
}

/// Writes `bytes` to `path` atomically and durably (temp file 0600, fsync, rename, fsync of
/// the directory), so a `kill -9` of the server leaves the old or the new record, never a
/// torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| RuntimeError::state(path, std::io::Error::other("no parent directory")))?;
    let tmp = path.with_extension("tmp");
    let result = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|err| RuntimeError::state(path, err))
}

/// Takes the state dir's exclusive `flock` (`<state_dir>/runtime.lock`), so two servers never
/// supervise the same instances; waits briefly for a just-dropped runtime in this same process
/// to let go. The lock lasts as long as the returned file.
pub async fn lock_state_dir(state_dir: &Path) -> Result<fs::File> {
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
        sleep(Duration::from_millis(20)).await;
    }
    Err(RuntimeError::StateDirInUse(state_dir.to_path_buf()))
}

/// Checks that a spec's working directory exists and is a directory, so `start` fails with a
/// clear error instead of a spawn failure deep in the driver.
pub fn check_working_dir(path: &Path) -> Result<()> {
    let reason = match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => "not a directory".to_owned(),
        Err(err) => err.to_string(),
    };
    Err(RuntimeError::WorkingDir {
        path: path.to_path_buf(),
        reason,
    })
}

/// What is left of an interrupted stop's grace period, so a restarted server finishes the stop
/// on the original schedule.
pub fn remaining_grace(stop_deadline: Option<OffsetDateTime>) -> Duration {
    stop_deadline
        .map(|deadline| deadline - OffsetDateTime::now_utc())
        .and_then(|left| Duration::try_from(left).ok())
        .unwrap_or(Duration::ZERO)
}

/// Whether an instance is supervised or a one-off run: one-off runs are never restarted, not
/// listed, and forgotten once their exit was handed out (or killed when a new server finds
/// them, since nobody waits for their output any more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceKind {
    /// Supervised, restarted per its policy, listed.
    Instance,
    /// Runs once (release phase, `gilgal run`, cron).
    Oneoff,
}

/// The lifecycle fields every driver persists in its record (flattened into it), so the
/// skeleton can move an instance through its states without knowing the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Where the instance is in its life.
    pub state: InstanceState,
    /// Restarts so far (reported in `list`, and the attempt number of the next one).
    pub restarts: u32,
    /// How the last run ended.
    pub last_exit: Option<ExitInfo>,
    /// When the grace period of a stop in progress ends, so a restarted server can finish
    /// the stop on the original schedule.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub stop_deadline: Option<OffsetDateTime>,
}

impl Lifecycle {
    /// A new instance's lifecycle: starting, never restarted, no exit yet.
    pub fn starting() -> Self {
        Lifecycle {
            state: InstanceState::Starting,
            restarts: 0,
            last_exit: None,
            stop_deadline: None,
        }
    }
}

/// A request from the runtime API to an instance's supervisor task.
#[derive(Debug)]
pub enum Control {
    /// Stop the instance (signal, `grace`, kill) and report how it ended.
    Stop {
        /// How long the instance may take to exit after the polite signal.
        grace: Duration,
        /// Where the exit goes (`None` for a one-off run's cancel, whose exit goes to its
        /// handle).
        reply: Option<oneshot::Sender<ExitInfo>>,
    },
}

/// The receiving end of an instance's control channel, owned by its [`Supervisor`].
pub type ControlReceiver = mpsc::Receiver<Control>;

/// The part of a registry entry every driver has: identity, the supervisor's control channel
/// and the in-memory log tail.
#[derive(Debug)]
pub struct InstanceCore {
    /// The instance's id.
    pub id: InstanceId,
    /// Supervised instance or one-off run.
    pub kind: InstanceKind,
    /// Its labels, copied into every log line and event.
    pub labels: InstanceLabels,
    /// What to do after it exits.
    pub restart: RestartPolicy,
    control: mpsc::Sender<Control>,
    ring: Mutex<VecDeque<Arc<LogLine>>>,
    /// Lines delivered so far ([`LogLine::seq`]).
    log_seq: AtomicU64,
    /// The address its port is reached at by the edge.
    edge_ip: IpAddr,
}

impl InstanceCore {
    /// A new core and the receiving end of its control channel (for its [`Supervisor`]).
    pub fn new(
        id: InstanceId,
        kind: InstanceKind,
        labels: InstanceLabels,
        restart: RestartPolicy,
        edge_ip: IpAddr,
    ) -> (Self, mpsc::Receiver<Control>) {
        let (control, control_rx) = mpsc::channel(8);
        let core = InstanceCore {
            id,
            kind,
            labels,
            restart,
            control,
            ring: Mutex::new(VecDeque::new()),
            log_seq: AtomicU64::new(0),
            edge_ip,
        };
        (core, control_rx)
    }

    /// The instance's status as `list` reports it, from its lifecycle and what only the
    /// driver knows (pid, port, start time, adoption).
    pub fn status(
        &self,
        lifecycle: &Lifecycle,
        pid: Option<u32>,
        port: Option<u16>,
        started_at: Option<OffsetDateTime>,
        adopted: bool,
    ) -> InstanceStatus {
        InstanceStatus {
            id: self.id.clone(),
            labels: self.labels.clone(),
            state: lifecycle.state,
            pid,
            port,
            restarts: lifecycle.restarts,
            started_at,
            last_exit: lifecycle.last_exit.clone(),
            adopted,
            addr: port.map(|port| SocketAddr::new(self.edge_ip, port)),
        }
    }

    /// Asks the supervisor to stop the instance; `None` when no supervisor runs any more.
    async fn request_stop(&self, grace: Duration) -> Option<ExitInfo> {
        let (reply, answer) = oneshot::channel();
        let request = Control::Stop {
            grace,
            reply: Some(reply),
        };
        self.control.send(request).await.ok()?;
        answer.await.ok()
    }

    fn log_tail(&self, lines: usize) -> Vec<LogLine> {
        let ring = lock(&self.ring);
        let skip = ring.len().saturating_sub(lines);
        ring.iter()
            .skip(skip)
            .map(|line| LogLine::clone(line))
            .collect()
    }
}

/// A registry entry: a driver's per-instance data around its [`InstanceCore`].
pub trait Hosted: Send + Sync + 'static {
    /// The shared part.
    fn core(&self) -> &InstanceCore;
    /// The status `list` and `status` report (also the skeleton's view of restarts and the
    /// last exit).
    fn status(&self) -> InstanceStatus;
}

/// Where a one-off run's output and exit go (the driver's side of an [`OneoffHandle`]).
#[derive(Debug)]
pub struct OneoffSinks {
    /// Each output line, as delivered.
    pub lines: mpsc::UnboundedSender<LogLine>,
    /// The exit, once, after the last line.
    pub exit: oneshot::Sender<ExitInfo>,
}

impl OneoffSinks {
    /// Splits optional sinks into the output channel (for whoever delivers lines) and the
    /// exit channel (for the [`Supervisor`]).
    pub fn split(
        sinks: Option<OneoffSinks>,
    ) -> (
        Option<mpsc::UnboundedSender<LogLine>>,
        Option<oneshot::Sender<ExitInfo>>,
    ) {
        match sinks {
            Some(sinks) => (Some(sinks.lines), Some(sinks.exit)),
            None => (None, None),
        }
    }
}

/// The caller's side of a one-off run's channels, turned into an [`OneoffHandle`] by
/// [`InstanceHub::oneoff_handle`] once the run started.
#[derive(Debug)]
pub struct OneoffReceivers {
    lines: mpsc::UnboundedReceiver<LogLine>,
    exit: oneshot::Receiver<ExitInfo>,
}

/// The channels of a new one-off run.
pub fn oneoff_channels() -> (OneoffSinks, OneoffReceivers) {
    let (lines_tx, lines) = mpsc::unbounded_channel();
    let (exit_tx, exit) = oneshot::channel();
    let sinks = OneoffSinks {
        lines: lines_tx,
        exit: exit_tx,
    };
    (sinks, OneoffReceivers { lines, exit })
}

/// The instance registry and everything fanned out of it, shared by a runtime handle and its
/// tasks: the instances, the log and event broadcasts, the recovery events and the tracked
/// background tasks.
#[derive(Debug)]
pub struct InstanceHub<E> {
    instances: Mutex<HashMap<InstanceId, Arc<E>>>,
    logs: broadcast::Sender<Arc<LogLine>>,
    events: broadcast::Sender<RuntimeEvent>,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Adopted/Lost events produced while opening, before anyone could subscribe.
    recovery_events: Mutex<Vec<RuntimeEvent>>,
    log_ring_lines: usize,
    /// Where the edge reaches instances' ports (loopback for processes, the publish address
    /// for containers).
    edge_ip: IpAddr,
}

impl<E: Hosted> InstanceHub<E> {
    /// An empty hub; `channel_capacity` sizes the log broadcast (events get a short buffer,
    /// since a broadcast reserves every slot up front and events are rare), `log_ring_lines`
    /// the per-instance log tail.
    pub fn new(channel_capacity: usize, log_ring_lines: usize, edge_ip: IpAddr) -> Self {
        let (logs, _) = broadcast::channel(channel_capacity.max(16));
        let (events, _) = broadcast::channel(channel_capacity.clamp(16, 1024));
        InstanceHub {
            instances: Mutex::new(HashMap::new()),
            logs,
            events,
            tasks: Mutex::new(Vec::new()),
            recovery_events: Mutex::new(Vec::new()),
            log_ring_lines,
            edge_ip,
        }
    }

    /// The address the edge reaches instances' ports at.
    pub fn edge_ip(&self) -> IpAddr {
        self.edge_ip
    }

    /// A port free on the edge address now (the kernel's choice, as a bind to port 0 makes
    /// it), so the runtime, not its caller, picks ports.
    pub fn free_port(&self) -> Result<u16> {
        std::net::TcpListener::bind(SocketAddr::new(self.edge_ip, 0))
            .and_then(|probe| probe.local_addr())
            .map(|addr| addr.port())
            .map_err(|source| RuntimeError::Io {
                context: format!("finding a free port on {}", self.edge_ip),
                source,
            })
    }

    /// The entry of `id`, or [`RuntimeError::UnknownInstance`].
    pub fn get(&self, id: &InstanceId) -> Result<Arc<E>> {
        lock(&self.instances)
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::UnknownInstance(id.clone()))
    }

    /// Registers an entry under its id.
    pub fn insert(&self, entry: Arc<E>) {
        let id = entry.core().id.clone();
        lock(&self.instances).insert(id, entry);
    }

    /// Unregisters an entry (the driver then deletes what it keeps elsewhere).
    pub fn remove(&self, id: &InstanceId) -> Option<Arc<E>> {
        lock(&self.instances).remove(id)
    }

    /// Every registered entry.
    pub fn entries(&self) -> Vec<Arc<E>> {
        lock(&self.instances).values().cloned().collect()
    }

    /// Keeps a background task's handle, so dropping the runtime (or `shutdown`) ends it.
    pub fn track(&self, task: AbortHandle) {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
    }

    /// A supervisor for one instance: `control` is the receiver made with its
    /// [`InstanceCore`]; `oneoff_exit` is where a one-off run's exit goes.
    pub fn supervisor<D: InstanceDriver<Entry = E>>(
        self: &Arc<Self>,
        driver: D,
        entry: Arc<E>,
        backoff: BackoffPolicy,
        control: mpsc::Receiver<Control>,
        oneoff_exit: Option<oneshot::Sender<ExitInfo>>,
    ) -> Supervisor<D> {
        Supervisor {
            driver,
            hub: self.clone(),
            entry,
            backoff_policy: backoff,
            control,
            oneoff_exit,
            backoff: BackoffState::default(),
        }
    }

    /// Starts an instance's supervisor task (tracked).
    pub fn launch<D: InstanceDriver<Entry = E>>(
        &self,
        supervisor: Supervisor<D>,
        begin: Begin<D::Run>,
    ) {
        let task = tokio::spawn(supervisor.run(begin));
        self.track(task.abort_handle());
    }

    /// Ends every tracked task: a dropped runtime detaches like a crash.
    pub fn abort_tasks(&self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }

    fn event(core: &InstanceCore, kind: RuntimeEventKind) -> RuntimeEvent {
        RuntimeEvent {
            instance: core.id.clone(),
            labels: core.labels.clone(),
            at: OffsetDateTime::now_utc(),
            kind,
        }
    }

    /// Announces a lifecycle event. No subscriber is fine: events are also reflected in
    /// `list`.
    pub fn emit(&self, core: &InstanceCore, kind: RuntimeEventKind) {
        let _ = self.events.send(Self::event(core, kind));
    }

    /// Announces an event of the recovery done while opening, and keeps it for
    /// [`InstanceHub::take_recovery_events`] (nobody could subscribe yet).
    pub fn emit_recovery(&self, core: &InstanceCore, kind: RuntimeEventKind) {
        let event = Self::event(core, kind);
        lock(&self.recovery_events).push(event.clone());
        let _ = self.events.send(event);
    }

    /// Hands out one log line of an instance: numbered, broadcast, kept in its tail, and
    /// sent to its one-off handle if it has one.
    pub fn deliver(
        &self,
        core: &InstanceCore,
        oneoff: Option<&mpsc::UnboundedSender<LogLine>>,
        stream: LogStream,
        at: OffsetDateTime,
        text: String,
    ) {
        let line = Arc::new(LogLine {
            instance: core.id.clone(),
            labels: core.labels.clone(),
            stream,
            at,
            line: text,
            seq: core.log_seq.fetch_add(1, Ordering::Relaxed) + 1,
        });
        if let Some(sink) = oneoff {
            let _ = sink.send(LogLine::clone(&line));
        }
        let _ = self.logs.send(line.clone());
        let mut ring = lock(&core.ring);
        if ring.len() >= self.log_ring_lines {
            ring.pop_front();
        }
        ring.push_back(line);
    }

    /// Decides what becomes of an instance a new server found, from its recorded `lifecycle`
    /// and its `live` run (if its process or container still runs), and announces `Adopted`
    /// (with `pid`) or `Lost` (with the reason and exit `lost` gives) as recovery events.
    /// `Ok`: supervise it from that [`Begin`] (`mark_running` was called if an adopted
    /// instance's record said otherwise). `Err`: it is recorded as ended and must not run;
    /// the driver ends what still runs of it (returned).
    pub fn recover<R>(
        &self,
        entry: &E,
        lifecycle: &Lifecycle,
        live: Option<R>,
        pid: u32,
        lost: impl FnOnce() -> (String, ExitInfo),
        mark_running: impl FnOnce(),
    ) -> std::result::Result<Begin<R>, Option<R>> {
        let core = entry.core();
        match lifecycle.state {
            InstanceState::Exited | InstanceState::Stopped => Err(live),
            InstanceState::Stopping => Ok(Begin::FinishStop(
                live,
                remaining_grace(lifecycle.stop_deadline),
            )),
            InstanceState::Starting | InstanceState::Running | InstanceState::Backoff => {
                match live {
                    Some(run) => {
                        tracing::info!(instance = %core.id, pid, "re-adopted running instance");
                        self.emit_recovery(core, RuntimeEventKind::Adopted { pid });
                        if lifecycle.state != InstanceState::Running {
                            mark_running();
                        }
                        Ok(Begin::Watch(run))
                    }
                    None => {
                        // Died (or never fully started) while the server was down; the
                        // supervisor sweeps leftovers before restarting it.
                        let (reason, exit) = lost();
                        self.emit_recovery(core, RuntimeEventKind::Lost { reason });
                        Ok(Begin::Lost(exit))
                    }
                }
            }
        }
    }

    /// [`crate::Runtime::stop`]: asks the supervisor, or reports the last exit when none runs.
    pub async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<ExitInfo> {
        let entry = self.get(id)?;
        Ok(stop_entry(entry.as_ref(), grace).await)
    }

    /// The entry of `id` if it may be removed ([`RuntimeError::StillRunning`] otherwise).
    pub fn removable(&self, id: &InstanceId) -> Result<Arc<E>> {
        let entry = self.get(id)?;
        if entry.status().state.is_active() {
            return Err(RuntimeError::StillRunning(id.clone()));
        }
        Ok(entry)
    }

    /// [`crate::Runtime::list`]: supervised instances (not one-off runs), sorted by id.
    pub fn list(&self) -> Vec<InstanceStatus> {
        let mut list: Vec<InstanceStatus> = self
            .entries()
            .iter()
            .filter(|entry| entry.core().kind == InstanceKind::Instance)
            .map(|entry| entry.status())
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// [`crate::Runtime::status`].
    pub fn status(&self, id: &InstanceId) -> Result<InstanceStatus> {
        Ok(self.get(id)?.status())
    }

    /// [`crate::Runtime::log_tail`]: the last `lines` lines held in memory.
    pub fn log_tail(&self, id: &InstanceId, lines: usize) -> Result<Vec<LogLine>> {
        Ok(self.get(id)?.core().log_tail(lines))
    }

    /// [`crate::Runtime::subscribe_logs`].
    pub fn subscribe_logs(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.logs.subscribe()
    }

    /// [`crate::Runtime::subscribe_events`].
    pub fn subscribe_events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    /// [`crate::Runtime::take_recovery_events`]: drains the recovery events.
    pub fn take_recovery_events(&self) -> Vec<RuntimeEvent> {
        std::mem::take(&mut *lock(&self.recovery_events))
    }

    /// [`crate::Runtime::shutdown`]: stops every instance at once, then ends supervision.
    pub async fn shutdown(&self, grace: Duration) {
        let mut stops = tokio::task::JoinSet::new();
        for entry in self.entries() {
            stops.spawn(async move { stop_entry(entry.as_ref(), grace).await });
        }
        while stops.join_next().await.is_some() {}
        self.abort_tasks();
    }

    /// The [`OneoffHandle`] of a started one-off run; a grace period sent to its cancel
    /// channel becomes a stop request to the run's supervisor.
    pub fn oneoff_handle(&self, core: &InstanceCore, receivers: OneoffReceivers) -> OneoffHandle {
        let (cancel_tx, mut cancel_rx) = mpsc::channel::<Duration>(1);
        let control = core.control.clone();
        let forwarder = tokio::spawn(async move {
            if let Some(grace) = cancel_rx.recv().await {
                let _ = control.send(Control::Stop { grace, reply: None }).await;
            }
        });
        self.track(forwarder.abort_handle());
        OneoffHandle::new(core.id.clone(), receivers.lines, receivers.exit, cancel_tx)
    }
}

async fn stop_entry(entry: &impl Hosted, grace: Duration) -> ExitInfo {
    if let Some(exit) = entry.core().request_stop(grace).await {
        return exit;
    }
    // No supervisor task (already exited or stopped): report the last exit.
    entry
        .status()
        .last_exit
        .unwrap_or_else(|| lost_exit("instance was not running"))
}

/// A runtime built on the skeleton: it supplies its hub and the few operations that differ per
/// driver, and gets the whole [`Runtime`] trait from the skeleton (the blanket implementation
/// below), so `stop`, `remove`, `list`, `status`, `log_tail`, the subscriptions, the recovery
/// events and `shutdown` are written once for every driver.
#[async_trait]
pub trait HostedRuntime: Send + Sync {
    /// The registry entry type.
    type Entry: Hosted;

    /// [`Runtime::name`].
    fn runtime_name(&self) -> &'static str;
    /// The runtime's registry.
    fn hub(&self) -> &InstanceHub<Self::Entry>;
    /// Starts a supervised instance (record durable first), registers and supervises it.
    async fn start_instance(&self, spec: InstanceSpec) -> Result<InstanceId>;
    /// Starts a one-off run whose output and exit go to `sinks`; returns its entry (the run
    /// may already be over and forgotten, so the entry is not looked up again).
    async fn start_oneoff(
        &self,
        spec: InstanceSpec,
        sinks: OneoffSinks,
    ) -> Result<Arc<Self::Entry>>;
    /// Deletes an ended instance from the registry and from whatever else holds it.
    async fn forget_instance(&self, id: &InstanceId);
    /// [`Runtime::stats`].
    async fn instance_stats(&self, id: &InstanceId) -> Result<ResourceStats>;
    /// [`Runtime::probe_addr`]; by default the published address.
    async fn instance_probe_addr(&self, id: &InstanceId, published: SocketAddr) -> SocketAddr {
        let _ = id;
        published
    }
}

#[async_trait]
impl<T: HostedRuntime> Runtime for T {
    fn name(&self) -> &'static str {
        self.runtime_name()
    }

    async fn start(&self, mut spec: InstanceSpec) -> Result<StartedInstance> {
        if spec.port == Some(0) {
            spec.port = Some(self.hub().free_port()?);
        }
        let addr = spec
            .port
            .map(|port| SocketAddr::new(self.hub().edge_ip(), port));
        let id = self.start_instance(spec).await?;
        Ok(StartedInstance { id, addr })
    }

    fn choose_port(&self) -> Result<u16> {
        self.hub().free_port()
    }

    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<ExitInfo> {
        self.hub().stop(id, grace).await
    }

    async fn remove(&self, id: &InstanceId) -> Result<()> {
        self.hub().removable(id)?;
        self.forget_instance(id).await;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<InstanceStatus>> {
        Ok(self.hub().list())
    }

    async fn status(&self, id: &InstanceId) -> Result<InstanceStatus> {
        self.hub().status(id)
    }

    async fn run_oneoff(&self, spec: InstanceSpec) -> Result<OneoffHandle> {
        let (sinks, receivers) = oneoff_channels();
        let entry = self.start_oneoff(spec, sinks).await?;
        Ok(self.hub().oneoff_handle(entry.core(), receivers))
    }

    async fn stats(&self, id: &InstanceId) -> Result<ResourceStats> {
        self.instance_stats(id).await
    }

    async fn log_tail(&self, id: &InstanceId, lines: usize) -> Result<Vec<LogLine>> {
        self.hub().log_tail(id, lines)
    }

    async fn probe_addr(&self, id: &InstanceId, published: SocketAddr) -> SocketAddr {
        self.instance_probe_addr(id, published).await
    }

    fn subscribe_logs(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.hub().subscribe_logs()
    }

    fn subscribe_events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.hub().subscribe_events()
    }

    /// The `Adopted` and `Lost` events of the recovery done when the runtime was opened.
    /// Events of supervisors started by the recovery (restarts of lost instances) go to
    /// [`Runtime::subscribe_events`] as usual; subscribe right after opening to see them.
    fn take_recovery_events(&self) -> Vec<RuntimeEvent> {
        self.hub().take_recovery_events()
    }

    /// Stops every instance (polite signal, `grace`, kill) and ends supervision. Records
    /// stay, marked stopped, so `list` still shows them.
    async fn shutdown(&self, grace: Duration) {
        self.hub().shutdown(grace).await;
    }
}

/// Why a driver could not start a run.
#[derive(Debug)]
pub enum StartFailure {
    /// The start failed (the text says why); the restart policy decides what follows.
    Failed(String),
    /// The instance no longer exists (its container was removed outside Gilgal).
    Gone,
}

/// How a watched run ended, as the driver read it.
#[derive(Debug)]
pub enum RunEnd {
    /// It exited.
    Exited(ExitInfo),
    /// The instance itself vanished (its container was removed outside Gilgal).
    Gone,
}

/// What a driver does for one instance; the [`Supervisor`] decides when.
///
/// One driver value lives in one supervisor task, so a driver's record writes for its
/// instance never run concurrently with each other.
#[async_trait]
pub trait InstanceDriver: Send + 'static {
    /// The registry entry type.
    type Entry: Hosted;
    /// A live run (a child process, an adopted pidfd, or nothing for a container).
    type Run: Send + 'static;
    /// What [`InstanceDriver::wait`] learnt, read into an exit by
    /// [`InstanceDriver::collect_exit`].
    type Ended: Send;

    /// Applies `change` to the persisted lifecycle and saves the record; a failed save is
    /// logged (supervision goes on with the in-memory state).
    fn update_lifecycle(&self, change: impl FnOnce(&mut Lifecycle) + Send);

    /// Starts a new run (the record says `Starting` on disk before anything runs).
    async fn start(&mut self) -> Result<Self::Run, StartFailure>;
    /// Waits until the run ends. Must be cancel safe: a stop request interrupts it.
    async fn wait(&mut self, run: &mut Self::Run) -> Self::Ended;
    /// After the run ended: clean up after it, flush its logs, read how it ended.
    async fn collect_exit(&mut self, run: Self::Run, ended: Self::Ended) -> RunEnd;
    /// Stops the run (polite signal, `grace`, kill) and reads how it ended. `None`: the
    /// record says a stop was under way but the run was not found alive.
    async fn stop(&mut self, run: Option<Self::Run>, grace: Duration) -> ExitInfo;
    /// Kills whatever may be left of earlier runs before a restart.
    async fn sweep(&mut self) {}
    /// How often [`InstanceDriver::tick`] runs while a run is watched (`None`: never).
    fn tick_interval(&self) -> Option<Duration> {
        None
    }
    /// Periodic work while a run is watched (polling log files).
    fn tick(&mut self) {}
    /// Frees what the instance holds while it does not run (cgroups).
    fn release(&self) {}
    /// Deletes a finished one-off run from the registry, the disk and the engine.
    fn forget(&self);
}

/// What a supervisor task begins with.
#[derive(Debug)]
pub enum Begin<R> {
    /// A run already started (by `start`, or re-adopted): watch it.
    Watch(R),
    /// The instance died while the server was down: apply the restart policy now.
    Lost(ExitInfo),
    /// The server died during a stop: finish it (with the run if still alive) using what is
    /// left of the grace period.
    FinishStop(Option<R>, Duration),
}

enum Watched {
    Exited(ExitInfo),
    Stopped,
    Gone,
}

/// The per-instance supervisor task: watches runs, restarts them per the restart policy with
/// backoff, carries out stops, and hands a one-off run's exit to its handle.
/// Made by [`InstanceHub::supervisor`].
pub struct Supervisor<D: InstanceDriver> {
    driver: D,
    hub: Arc<InstanceHub<D::Entry>>,
    entry: Arc<D::Entry>,
    backoff_policy: BackoffPolicy,
    control: mpsc::Receiver<Control>,
    oneoff_exit: Option<oneshot::Sender<ExitInfo>>,
    backoff: BackoffState,
}

impl<D: InstanceDriver> Supervisor<D> {
    /// The driver, for a first start before the task is launched.
    pub fn driver_mut(&mut self) -> &mut D {
        &mut self.driver
    }

    fn emit(&self, kind: RuntimeEventKind) {
        self.hub.emit(self.entry.core(), kind);
    }

    /// The task body.
    pub async fn run(mut self, begin: Begin<D::Run>) {
        let mut next = match begin {
            Begin::Watch(run) => Some(run),
            Begin::Lost(exit) => {
                // Leftovers of the lost run must be gone before a replacement starts.
                self.driver.sweep().await;
                if !self.after_exit(exit, true).await {
                    return;
                }
                None
            }
            Begin::FinishStop(run, grace) => {
                let exit = self.driver.stop(run, grace).await;
                self.finish_stopped(exit, None);
                return;
            }
        };
        loop {
            let run = match next.take() {
                Some(run) => run,
                None => match self.driver.start().await {
                    Ok(run) => run,
                    Err(StartFailure::Gone) => return self.gone(),
                    Err(StartFailure::Failed(error)) => {
                        let exit = lost_exit(&format!("could not start: {error}"));
                        self.emit(RuntimeEventKind::SpawnFailed { error });
                        if !self.after_exit(exit, false).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            match self.watch(run).await {
                Watched::Exited(exit) => {
                    if !self.after_exit(exit, false).await {
                        return;
                    }
                }
                Watched::Stopped => return,
                Watched::Gone => return self.gone(),
            }
        }
    }

    /// Watches a run until it ends or a stop is requested.
    async fn watch(&mut self, mut run: D::Run) -> Watched {
        let mut tick = self.driver.tick_interval().map(|period| {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        loop {
            let next_tick = async {
                match tick.as_mut() {
                    Some(tick) => {
                        tick.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = self.driver.wait(&mut run) => {
                    return match self.driver.collect_exit(run, ended).await {
                        RunEnd::Exited(exit) => {
                            self.emit(RuntimeEventKind::Exited(exit.clone()));
                            Watched::Exited(exit)
                        }
                        RunEnd::Gone => Watched::Gone,
                    };
                }
                Some(control) = self.control.recv() => {
                    let Control::Stop { grace, reply } = control;
                    let exit = self.driver.stop(Some(run), grace).await;
                    self.finish_stopped(exit, reply);
                    return Watched::Stopped;
                }
                _ = next_tick => self.driver.tick(),
            }
        }
    }

    /// The instance vanished outside Gilgal: it ended, with nothing to restart.
    fn gone(&mut self) {
        let exit = lost_exit("container was removed outside Gilgal");
        self.driver.update_lifecycle(|lifecycle| {
            lifecycle.state = InstanceState::Exited;
            lifecycle.last_exit = Some(exit.clone());
        });
        self.emit(RuntimeEventKind::Exited(exit.clone()));
        self.finish_oneoff(exit);
    }

    fn finish_stopped(&mut self, exit: ExitInfo, reply: Option<oneshot::Sender<ExitInfo>>) {
        self.driver.update_lifecycle(|lifecycle| {
            lifecycle.state = InstanceState::Stopped;
            lifecycle.last_exit = Some(exit.clone());
            lifecycle.stop_deadline = None;
        });
        self.driver.release();
        self.emit(RuntimeEventKind::Stopped(exit.clone()));
        if let Some(reply) = reply {
            let _ = reply.send(exit.clone());
        }
        self.finish_oneoff(exit);
    }

    fn finish_oneoff(&mut self, exit: ExitInfo) {
        if let Some(tx) = self.oneoff_exit.take() {
            let _ = tx.send(exit);
            self.driver.forget();
        }
    }

    /// Decides about a restart after an exit; returns false when the task should end.
    async fn after_exit(&mut self, exit: ExitInfo, immediate: bool) -> bool {
        let core = self.entry.core();
        let restart = core.kind == InstanceKind::Instance && core.restart.should_restart(&exit);
        if !restart {
            self.driver.update_lifecycle(|lifecycle| {
                lifecycle.state = InstanceState::Exited;
                lifecycle.last_exit = Some(exit.clone());
            });
            self.driver.release();
            self.finish_oneoff(exit);
            return false;
        }
        let restarts = self.entry.status().restarts;
        let delay = if immediate {
            Duration::ZERO
        } else {
            self.backoff.next_delay(&self.backoff_policy, exit.uptime)
        };
        self.driver.update_lifecycle(|lifecycle| {
            lifecycle.state = InstanceState::Backoff;
            lifecycle.last_exit = Some(exit.clone());
        });
        self.emit(RuntimeEventKind::RestartScheduled {
            attempt: restarts.saturating_add(1),
            delay,
        });
        // A closed control channel disables its branch; the sleep then decides.
        tokio::select! {
            _ = sleep(delay) => {}
            Some(control) = self.control.recv() => {
                let Control::Stop { reply, .. } = control;
                // Nothing runs during backoff, but sweep in case something lingers.
                self.driver.sweep().await;
                self.finish_stopped(exit, reply);
                return false;
            }
        }
        self.driver.update_lifecycle(|lifecycle| {
            lifecycle.restarts = lifecycle.restarts.saturating_add(1)
        });
        true
    }
}
