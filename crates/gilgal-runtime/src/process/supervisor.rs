//! The per-instance supervisor task: spawns the process, watches it (as a child, or through a
//! pidfd when re-adopted), tails its logs, restarts it with backoff, and carries out stops.
//!
//! One task owns one instance; every record write for that instance happens here (and in
//! `ProcessRuntime::start`, before the task exists), so records are never written concurrently.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::unix::AsyncFd;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, Instant};

use super::cgroup::InstanceCgroup;
use super::logs::LogTailer;
use super::members::Members;
use super::procfs;
use super::record::{InstancePaths, Record, RecordKind};
use super::spawn;
use super::user;
use super::Inner;
use crate::backoff::BackoffState;
use crate::error::{Result, RuntimeError};
use crate::spec::{
    ExitInfo, InstanceId, InstanceState, InstanceStatus, LogLine, RunAs, RuntimeEvent,
    RuntimeEventKind,
};

/// After SIGKILL, how long to wait for the kernel to finish off every process.
const KILL_SETTLE: Duration = Duration::from_secs(5);
/// Poll interval while waiting for processes to disappear.
const REAP_POLL: Duration = Duration::from_millis(50);

/// Requests from the runtime API to the supervisor task.
#[derive(Debug)]
pub(crate) enum Control {
    /// Stop the instance and report how it ended.
    Stop {
        grace: Duration,
        reply: Option<oneshot::Sender<ExitInfo>>,
    },
}

/// The runtime's view of one instance, shared between the API and its supervisor task.
#[derive(Debug)]
pub(crate) struct Entry {
    pub id: InstanceId,
    pub kind: RecordKind,
    pub paths: InstancePaths,
    pub cgroup: InstanceCgroup,
    pub shared: Mutex<Shared>,
    pub ring: Mutex<VecDeque<LogLine>>,
    pub control: mpsc::Sender<Control>,
    /// Lines delivered so far ([`LogLine::seq`]).
    pub log_seq: std::sync::atomic::AtomicU64,
}

/// Mutable state of an instance.
#[derive(Debug)]
pub(crate) struct Shared {
    pub record: Record,
    pub adopted: bool,
}

/// Locks a mutex, recovering from poisoning (a panicked holder leaves plain data behind).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Entry {
    pub fn status(&self) -> InstanceStatus {
        let shared = lock(&self.shared);
        let record = &shared.record;
        InstanceStatus {
            id: self.id.clone(),
            labels: record.spec.labels.clone(),
            state: record.state,
            pid: record
                .pid
                .filter(|_| {
                    matches!(
                        record.state,
                        InstanceState::Running | InstanceState::Stopping
                    )
                })
                .and_then(|pid| u32::try_from(pid).ok()),
            port: record.spec.port,
            restarts: record.restarts,
            started_at: record.started_at,
            last_exit: record.last_exit.clone(),
            adopted: shared.adopted,
        }
    }

    pub fn leader(&self) -> Option<(i32, u64)> {
        let shared = lock(&self.shared);
        shared.record.pid.zip(shared.record.start_time_ticks)
    }

    pub fn members(&self) -> Members<'_> {
        Members {
            id: &self.id,
            cgroup: &self.cgroup,
            leader: self.leader(),
        }
    }

    /// Applies `change` to the record and persists it.
    pub fn update(&self, change: impl FnOnce(&mut Record)) -> Result<()> {
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

/// Where a one-off run's output and exit go.
#[derive(Debug)]
pub(crate) struct OneoffSinks {
    pub lines: mpsc::UnboundedSender<LogLine>,
    pub exit: Option<oneshot::Sender<ExitInfo>>,
}

/// What the supervisor task begins with.
#[derive(Debug)]
pub(crate) enum Begin {
    /// A process already running (just spawned by `start`, or re-adopted).
    Watch(Running),
    /// The process died while the server was down: apply the restart policy now.
    Lost(ExitInfo),
    /// The server died during a stop: finish it (with the process if still alive).
    FinishStop(Option<Running>, Duration),
}

/// Outcome of one watch period.
enum Watched {
    Exited(ExitInfo),
    Stopped,
}

/// The per-instance supervisor.
pub(crate) struct Supervisor {
    pub inner: Arc<Inner>,
    pub entry: Arc<Entry>,
    pub tailer: LogTailer,
    pub backoff: BackoffState,
    pub control: mpsc::Receiver<Control>,
    pub oneoff: Option<OneoffSinks>,
}

impl Supervisor {
    fn emit(&self, kind: RuntimeEventKind) {
        let labels = lock(&self.entry.shared).record.spec.labels.clone();
        // No subscriber is fine: events are also reflected in `list`.
        let _ = self.inner.events.send(RuntimeEvent {
            instance: self.entry.id.clone(),
            labels,
            at: OffsetDateTime::now_utc(),
            kind,
        });
    }

    fn save(&self, change: impl FnOnce(&mut Record)) {
        if let Err(err) = self.entry.update(change) {
            tracing::error!(instance = %self.entry.id, error = %err, "cannot persist instance record");
        }
    }

    /// Reads new log lines and hands them out.
    fn pump_logs(&mut self, flush: bool) {
        let lines = self.tailer.poll(flush);
        if lines.is_empty() {
            return;
        }
        let labels = lock(&self.entry.shared).record.spec.labels.clone();
        let capacity = self.inner.config.log_ring_lines;
        let mut ring = lock(&self.entry.ring);
        for (stream, line) in lines {
            let line = LogLine {
                instance: self.entry.id.clone(),
                labels: labels.clone(),
                stream,
                at: OffsetDateTime::now_utc(),
                line,
                seq: self
                    .entry
                    .log_seq
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1,
            };
            if let Some(sinks) = &self.oneoff {
                let _ = sinks.lines.send(line.clone());
            }
            let _ = self.inner.logs.send(line.clone());
            if ring.len() >= capacity {
                ring.pop_front();
            }
            ring.push_back(line);
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
            record.state = InstanceState::Starting;
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
            &self.entry.id,
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
            record.state = InstanceState::Running;
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
        let restarts = lock(&self.entry.shared).record.restarts;
        self.emit(RuntimeEventKind::Started {
            pid: u32::try_from(pid).unwrap_or(0),
            restarts,
        });
        Ok(Running {
            proc: Proc::Child(child),
            pid,
            start_time,
            started_at,
            oom_baseline,
        })
    }

    /// The task body.
    pub async fn run(mut self, begin: Begin) {
        let mut next = match begin {
            Begin::Watch(running) => Some(running),
            Begin::Lost(exit) => {
                // Leftovers of the lost process (or of a spawn the old server never recorded)
                // must be gone before a replacement starts.
                self.entry.members().signal_all(libc::SIGKILL);
                self.wait_members_gone(Instant::now() + KILL_SETTLE).await;
                if !self.after_exit(exit, true).await {
                    return;
                }
                None
            }
            Begin::FinishStop(running, grace) => {
                let exit = match running {
                    Some(running) => self.stop_running(running, grace).await,
                    None => {
                        self.entry.members().signal_all(libc::SIGKILL);
                        self.wait_members_gone(Instant::now() + KILL_SETTLE).await;
                        lost_exit("process ended while the server was down")
                    }
                };
                self.finish_stopped(exit, None);
                return;
            }
        };
        loop {
            let running = match next.take() {
                Some(running) => running,
                None => match self.spawn_process().await {
                    Ok(running) => running,
                    Err(err) => {
                        self.emit(RuntimeEventKind::SpawnFailed {
                            error: err.to_string(),
                        });
                        let exit = lost_exit(&format!("could not start: {err}"));
                        if !self.after_exit(exit, false).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            match self.watch(running).await {
                Watched::Exited(exit) => {
                    if !self.after_exit(exit, false).await {
                        return;
                    }
                }
                Watched::Stopped => return,
            }
        }
    }

    /// Watches a running process until it exits or a stop is requested.
    async fn watch(&mut self, mut running: Running) -> Watched {
        let mut tick = tokio::time::interval(self.inner.config.log_poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                status = running.wait() => {
                    let exit = self.collect_exit(&running, status, false).await;
                    self.emit(RuntimeEventKind::Exited(exit.clone()));
                    return Watched::Exited(exit);
                }
                Some(control) = self.control.recv() => {
                    let Control::Stop { grace, reply } = control;
                    let exit = self.stop_running(running, grace).await;
                    self.finish_stopped(exit, reply);
                    return Watched::Stopped;
                }
                _ = tick.tick() => self.pump_logs(false),
            }
        }
    }

    /// After the main process exited: kill leftovers, drain logs, build the exit info.
    async fn collect_exit(
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
            record.state = InstanceState::Stopping;
            record.stop_deadline = Some(OffsetDateTime::now_utc() + grace);
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
        let mut exit = self.collect_exit(&running, status, true).await;
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
                tracing::error!(instance = %self.entry.id, left, "processes survived SIGKILL");
                return;
            }
            sleep(REAP_POLL).await;
        }
    }

    fn finish_stopped(&mut self, exit: ExitInfo, reply: Option<oneshot::Sender<ExitInfo>>) {
        self.save(|record| {
            record.state = InstanceState::Stopped;
            record.last_exit = Some(exit.clone());
            record.stop_deadline = None;
        });
        self.entry.cgroup.remove();
        self.emit(RuntimeEventKind::Stopped(exit.clone()));
        if let Some(reply) = reply {
            let _ = reply.send(exit.clone());
        }
        self.finish_oneoff(exit);
    }

    fn finish_oneoff(&mut self, exit: ExitInfo) {
        if let Some(mut sinks) = self.oneoff.take() {
            if let Some(tx) = sinks.exit.take() {
                let _ = tx.send(exit);
            }
            self.inner.forget(&self.entry.id);
        }
    }

    /// Decides about a restart after an exit; returns false when the task should end.
    async fn after_exit(&mut self, exit: ExitInfo, immediate: bool) -> bool {
        let (policy, restarts) = {
            let shared = lock(&self.entry.shared);
            (shared.record.spec.restart, shared.record.restarts)
        };
        let restart = self.entry.kind == RecordKind::Instance && policy.should_restart(&exit);
        if !restart {
            self.save(|record| {
                record.state = InstanceState::Exited;
                record.last_exit = Some(exit.clone());
            });
            self.entry.cgroup.remove();
            self.finish_oneoff(exit);
            return false;
        }
        let delay = if immediate {
            Duration::ZERO
        } else {
            self.backoff
                .next_delay(&self.inner.config.backoff, exit.uptime)
        };
        self.save(|record| {
            record.state = InstanceState::Backoff;
            record.last_exit = Some(exit.clone());
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
                self.entry.members().signal_all(libc::SIGKILL);
                self.finish_stopped(exit, reply);
                return false;
            }
        }
        self.save(|record| record.restarts = record.restarts.saturating_add(1));
        true
    }
}

/// An exit whose status cannot be known.
pub(crate) fn lost_exit(note: &str) -> ExitInfo {
    ExitInfo {
        code: None,
        signal: None,
        oom_killed: false,
        at: OffsetDateTime::now_utc(),
        uptime: None,
        note: Some(note.to_owned()),
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
