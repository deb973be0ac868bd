//! The process driver: what the shared [`crate::host::Supervisor`] needs to run one instance
//! as local processes. It spawns the process (record first, see the crate docs), waits for it
//! (as a child, or through a pidfd when re-adopted), tails its log files, stops every process
//! of the instance (SIGTERM, grace, SIGKILL) and sweeps leftovers by marker, cgroup and
//! process group.
//!
//! One driver lives in one supervisor task; every record write for that instance happens here
//! (and in `ProcessRuntime::start`, before the task exists), so records are never written
//! concurrently.

use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::io::unix::AsyncFd;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};

use super::cgroup::InstanceCgroup;
use super::logs::LogTailer;
use super::members::Members;
use super::procfs;
use super::record::{InstancePaths, Record};
use super::spawn;
use super::user;
use super::Inner;
use crate::error::{Result, RuntimeError};
use crate::host::{
    lock, lost_exit, Hosted, InstanceCore, InstanceDriver, Lifecycle, RunEnd, StartFailure,
};
use crate::spec::{ExitInfo, InstanceState, InstanceStatus, LogLine, RunAs, RuntimeEventKind};

/// After SIGKILL, how long to wait for the kernel to finish off every process.
const KILL_SETTLE: Duration = Duration::from_secs(5);
/// Poll interval while waiting for processes to disappear.
const REAP_POLL: Duration = Duration::from_millis(50);

/// The process runtime's view of one instance, shared between the API and its supervisor
/// task (public only as the runtime's [`crate::host::HostedRuntime::Entry`]).
#[derive(Debug)]
pub struct Entry {
    pub(crate) core: InstanceCore,
    pub(crate) paths: InstancePaths,
    pub(crate) cgroup: InstanceCgroup,
    pub(crate) shared: Mutex<Shared>,
}

/// Mutable state of an instance.
#[derive(Debug)]
pub(crate) struct Shared {
    pub record: Record,
    pub adopted: bool,
}

impl Hosted for Entry {
    fn core(&self) -> &InstanceCore {
        &self.core
    }

    fn status(&self) -> InstanceStatus {
        let shared = lock(&self.shared);
        let record = &shared.record;
        let state = record.lifecycle.state;
        let pid = record
            .pid
            .filter(|_| matches!(state, InstanceState::Running | InstanceState::Stopping))
            .and_then(|pid| u32::try_from(pid).ok());
        self.core.status(
            &record.lifecycle,
            pid,
            record.spec.port,
            record.started_at,
            shared.adopted,
        )
    }
}

impl Entry {
    pub(crate) fn leader(&self) -> Option<(i32, u64)> {
        let shared = lock(&self.shared);
        shared.record.pid.zip(shared.record.start_time_ticks)
    }

    pub(crate) fn members(&self) -> Members<'_> {
        Members {
            id: &self.core.id,
            cgroup: &self.cgroup,
            leader: self.leader(),
        }
    }

    /// Applies `change` to the record and persists it.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Record)) -> Result<()> {
        let snapshot = {
            let mut shared = lock(&self.shared);
            change(&mut shared.record);
            shared.record.clone()
        };
        snapshot.save(&self.paths)
    }
}

/// How the watched process can be waited for.
#[derive(Debug)]
enum Proc {
    /// Spawned by this server: exit status available.
    Child(Child),
    /// Re-adopted after a server restart: only the fact of the exit is observable.
    Adopted(AsyncFd<OwnedFd>),
}

/// A live process of the instance.
#[derive(Debug)]
pub(crate) struct Running {
    proc: Proc,
    pid: i32,
    start_time: u64,
    started_at: OffsetDateTime,
    oom_baseline: Option<u64>,
}

impl Running {
    /// Wraps a re-adopted process after checking that `pid` still is the recorded process.
    pub fn adopt(
        pid: i32,
        start_time: u64,
        started_at: Option<OffsetDateTime>,
        cgroup: &InstanceCgroup,
    ) -> Option<Running> {
        let pidfd = procfs::pidfd_open(pid).ok()?;
        // Checked after opening the pidfd: from here on the pid cannot be reused under us.
        if procfs::live_start_time(pid) != Some(start_time) {
            return None;
        }
        // SAFETY: the OwnedFd keeps the pidfd open, unchanged, for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
            .ok()?;
        Some(Running {
            proc: Proc::Adopted(fd),
            pid,
            start_time,
            started_at: started_at.unwrap_or_else(OffsetDateTime::now_utc),
            // Unknown what happened while we were away; count OOMs from now on.
            oom_baseline: cgroup.oom_kills(),
        })
    }

    /// Waits for the process to exit. Cancel safe.
    async fn wait(&mut self) -> Option<ExitStatus> {
        match &mut self.proc {
            Proc::Child(child) => child.wait().await.ok(),
            Proc::Adopted(fd) => loop {
                match fd.readable().await {
                    Ok(_) => return None,
                    Err(_) => {
                        sleep(Duration::from_millis(200)).await;
                        if procfs::live_start_time(self.pid) != Some(self.start_time) {
                            return None;
                        }
                    }
                }
            },
        }
    }

    fn uptime(&self) -> Option<Duration> {
        let elapsed = OffsetDateTime::now_utc() - self.started_at;
        Duration::try_from(elapsed).ok()
    }
}

/// Runs one instance as local processes for its [`crate::host::Supervisor`].
pub(crate) struct ProcessDriver {
    pub inner: Arc<Inner>,
    pub entry: Arc<Entry>,
    pub tailer: LogTailer,
    /// A one-off run's output channel.
    pub oneoff_lines: Option<mpsc::UnboundedSender<LogLine>>,
}

impl ProcessDriver {
    fn save(&self, change: impl FnOnce(&mut Record)) {
        if let Err(err) = self.entry.update(change) {
            tracing::error!(instance = %self.entry.core.id, error = %err, "cannot persist instance record");
        }
    }

    /// Reads new log lines and hands them out.
    fn pump_logs(&mut self, flush: bool) {
        for (stream, line) in self.tailer.poll(flush) {
            self.inner.hub.deliver(
                &self.entry.core,
                self.oneoff_lines.as_ref(),
                stream,
                OffsetDateTime::now_utc(),
                line,
            );
        }
    }

    /// Writes the "starting" record, then spawns. The record comes first so that a crash
    /// between the two leaves a record the next server run will sweep.
    pub async fn spawn_process(&mut self) -> Result<Running> {
        let spec = lock(&self.entry.shared).record.spec.clone();
        let identity = match spec.run_as {
            RunAs::ServerUser => None,
            RunAs::AppUser => Some(user::ensure_app_user(&spec.labels.app).await?),
        };
        let user_name = identity.map(|_| user::app_user_name(&spec.labels.app));
        self.entry.update(|record| {
            record.lifecycle.state = InstanceState::Starting;
            record.pid = None;
            record.start_time_ticks = None;
            record.boot_id = None;
        })?;
        let mut cgroup = self.entry.cgroup.clone();
        cgroup.create(&spec.limits);
        let oom_baseline = cgroup.oom_kills();
        let home = match (&self.inner.config.app_home_root, identity, &user_name) {
            (Some(root), Some(identity), Some(name)) => {
                Some(spawn::prepare_home(root, name, identity)?)
            }
            _ => None,
        };
        let env = spawn::build_env(
            &self.entry.core.id,
            &spec,
            user_name.as_deref(),
            home.as_deref(),
            &self.inner.config.default_path,
        );
        // The instance's own directories stay visible through the namespace's covers.
        let mut visible = vec![spec.working_dir.as_path()];
        visible.extend(home.as_deref());
        let mounts = spawn::MountPlan::prepare(&self.inner.config.mount_isolation, &visible)?;
        if mounts.is_some() {
            if let Some(reason) = self.inner.config.mount_isolation.hides(&spec.working_dir) {
                return Err(RuntimeError::WorkingDir {
                    path: spec.working_dir.clone(),
                    reason,
                });
            }
        }
        let child = spawn::spawn(&spec, &env, &self.entry.paths, &cgroup, identity, mounts)?;
        let pid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or_else(|| RuntimeError::io("spawned process", std::io::Error::other("no pid")))?;
        // The child is not reaped until we wait for it, so its /proc entry is still there.
        let start_time = procfs::read_stat(pid).map_or(0, |stat| stat.start_time);
        let started_at = OffsetDateTime::now_utc();
        let recorded = self.entry.update(|record| {
            record.lifecycle.state = InstanceState::Running;
            record.pid = Some(pid);
            record.start_time_ticks = Some(start_time);
            record.boot_id = procfs::boot_id();
            record.started_at = Some(started_at);
        });
        if let Err(err) = recorded {
            // An instance we cannot record must not run: nobody could find it after a crash.
            let mut child = child;
            // SAFETY: signals the new process group we just created.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait().await;
            self.entry.members().signal_all(libc::SIGKILL);
            return Err(err);
        }
        lock(&self.entry.shared).adopted = false;
        let restarts = lock(&self.entry.shared).record.lifecycle.restarts;
        self.inner.hub.emit(
            &self.entry.core,
            RuntimeEventKind::Started {
                pid: u32::try_from(pid).unwrap_or(0),
                restarts,
            },
        );
        Ok(Running {
            proc: Proc::Child(child),
            pid,
            start_time,
            started_at,
            oom_baseline,
        })
    }

    /// After the main process exited: kill leftovers, drain logs, build the exit info.
    async fn collect_exit_of(
        &mut self,
        running: &Running,
        status: Option<ExitStatus>,
        stop_requested: bool,
    ) -> ExitInfo {
        // Leftover children of a dead main process must not outlive it (no orphans, and
        // they would hold the port against the restart).
        if self.entry.members().signal_all(libc::SIGKILL) > 0 {
            self.wait_members_gone(Instant::now() + KILL_SETTLE).await;
        }
        self.pump_logs(true);
        let oom_now = self.entry.cgroup.oom_kills();
        exit_info(
            status,
            running,
            oom_now,
            self.inner.cgroups.has_memory(),
            stop_requested,
        )
    }

    /// SIGTERM to every process, up to `grace` for all to exit, then SIGKILL.
    async fn stop_running(&mut self, mut running: Running, grace: Duration) -> ExitInfo {
        self.save(|record| {
            record.lifecycle.state = InstanceState::Stopping;
            record.lifecycle.stop_deadline = Some(OffsetDateTime::now_utc() + grace);
        });
        let deadline = Instant::now() + grace;
        self.entry.members().signal_all(libc::SIGTERM);
        let mut status = None;
        let mut leader_done = false;
        let mut all_gone = false;
        loop {
            if leader_done {
                all_gone = self.entry.members().live_pids().is_empty();
                if all_gone {
                    break;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let pause = REAP_POLL.min(deadline - now);
            tokio::select! {
                result = running.wait(), if !leader_done => {
                    status = result;
                    leader_done = true;
                }
                _ = sleep(pause) => {}
            }
            self.pump_logs(false);
        }
        if !all_gone {
            self.entry.members().signal_all(libc::SIGKILL);
            if !leader_done {
                if let Ok(result) = tokio::time::timeout(KILL_SETTLE, running.wait()).await {
                    status = result;
                }
            }
            self.wait_members_gone(Instant::now() + KILL_SETTLE).await;
        }
        let mut exit = self.collect_exit_of(&running, status, true).await;
        if !all_gone && exit.note.is_none() {
            exit.note = Some(format!("killed after the {grace:?} grace period"));
        }
        exit
    }

    /// Polls until no process of the instance is left (or the deadline passes).
    async fn wait_members_gone(&mut self, deadline: Instant) {
        loop {
            let left = self.entry.members().signal_all(libc::SIGKILL);
            if left == 0 {
                return;
            }
            if Instant::now() >= deadline {
                tracing::error!(instance = %self.entry.core.id, left, "processes survived SIGKILL");
                return;
            }
            sleep(REAP_POLL).await;
        }
    }
}

#[async_trait]
impl InstanceDriver for ProcessDriver {
    type Entry = Entry;
    type Run = Running;
    type Ended = Option<ExitStatus>;

    fn update_lifecycle(&self, change: impl FnOnce(&mut Lifecycle) + Send) {
        self.save(|record| change(&mut record.lifecycle));
    }

    async fn start(&mut self) -> Result<Running, StartFailure> {
        self.spawn_process()
            .await
            .map_err(|err| StartFailure::Failed(err.to_string()))
    }

    async fn wait(&mut self, running: &mut Running) -> Option<ExitStatus> {
        running.wait().await
    }

    async fn collect_exit(&mut self, running: Running, status: Option<ExitStatus>) -> RunEnd {
        RunEnd::Exited(self.collect_exit_of(&running, status, false).await)
    }

    async fn stop(&mut self, running: Option<Running>, grace: Duration) -> ExitInfo {
        match running {
            Some(running) => self.stop_running(running, grace).await,
            None => {
                self.sweep().await;
                lost_exit("process ended while the server was down")
            }
        }
    }

    async fn sweep(&mut self) {
        self.entry.members().signal_all(libc::SIGKILL);
        self.wait_members_gone(Instant::now() + KILL_SETTLE).await;
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(self.inner.config.log_poll_interval)
    }

    fn tick(&mut self) {
        self.pump_logs(false);
    }

    fn release(&self) {
        self.entry.cgroup.remove();
    }

    fn forget(&self) {
        self.inner.forget(&self.entry.core.id);
    }
}

fn exit_info(
    status: Option<ExitStatus>,
    running: &Running,
    oom_now: Option<u64>,
    has_memory_cgroup: bool,
    stop_requested: bool,
) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    let code = status.and_then(|s| s.code());
    let signal = status.and_then(|s| s.signal());
    let oom_killed = match (running.oom_baseline, oom_now) {
        (Some(before), Some(after)) => after > before,
        _ => !has_memory_cgroup && !stop_requested && signal == Some(libc::SIGKILL),
    };
    let note = match (&running.proc, status) {
        (Proc::Adopted(_), _) => {
            Some("exit status unknown: process was adopted after a server restart".to_owned())
        }
        (Proc::Child(_), None) => Some("exit status could not be read".to_owned()),
        _ => None,
    };
    ExitInfo {
        code,
        signal,
        oom_killed,
        at: OffsetDateTime::now_utc(),
        uptime: running.uptime(),
        note,
    }
}
