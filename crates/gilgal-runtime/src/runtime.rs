//! The [`Runtime`] trait: the one interface the deploy pipeline and the reconciler use to run
//! instances, implemented once in [`crate::host`] for every runtime built on the skeleton (the
//! process runtime, the Docker runtime).

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::error::{Result, RuntimeError};
use crate::spec::{
    ExitInfo, InstanceId, InstanceSpec, InstanceStatus, LogLine, ResourceStats, RuntimeEvent,
    StartedInstance,
};

/// Runs and supervises app instances. Object safe: share it as `Arc<dyn Runtime>`.
///
/// Contract for every implementation:
/// - `start` returns once the instance is durably recorded and its first process spawned;
///   from then on the runtime restarts it per its [`crate::RestartPolicy`] with backoff.
/// - `stop` signals every process of the instance (SIGTERM, `grace`, SIGKILL) and returns only
///   when none is left. Stopped instances stay listed until `remove`.
/// - `list` reports running *and* ended instances, so the reconciler can diff desired state.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Short name for logs and `gilgal server` status (`"process"`, `"docker"`).
    fn name(&self) -> &'static str;

    /// Starts a supervised instance; returns its id and the address the edge must use
    /// (a `port` of `Some(0)` gets a free one).
    async fn start(&self, spec: InstanceSpec) -> Result<StartedInstance>;

    /// A port free now on the runtime's edge address, for a spec whose command line must name
    /// its port before `start` (a Procfile's `--bind 0.0.0.0:$PORT`). The runtime, not its
    /// caller, knows where instances listen.
    fn choose_port(&self) -> Result<u16>;

    /// Stops an instance: SIGTERM to all its processes, up to `grace` for them to exit, then
    /// SIGKILL. Returns how the main process ended. Stopping an ended instance returns its last
    /// exit.
    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<ExitInfo>;

    /// Forgets a stopped or exited instance (its record and log files).
    async fn remove(&self, id: &InstanceId) -> Result<()>;

    /// All known instances, running and ended.
    async fn list(&self) -> Result<Vec<InstanceStatus>>;

    /// One instance's current status.
    async fn status(&self, id: &InstanceId) -> Result<InstanceStatus>;

    /// Runs a command once (release phase, `gilgal run`, cron) and streams its output.
    /// The spec's restart policy is ignored.
    async fn run_oneoff(&self, spec: InstanceSpec) -> Result<OneoffHandle>;

    /// CPU and memory use of an instance.
    async fn stats(&self, id: &InstanceId) -> Result<ResourceStats>;

    /// The last `lines` log lines of an instance still held in memory (for deploy failure
    /// reasons).
    async fn log_tail(&self, id: &InstanceId, lines: usize) -> Result<Vec<LogLine>>;

    /// The address a health probe of `id` should use, given the address the proxy reaches it
    /// at (`published`). The process runtime probes what the proxy uses; a container runtime
    /// may answer the container's own address, because a published port can accept TCP
    /// connections before the app listens (Docker's userland proxy).
    async fn probe_addr(&self, id: &InstanceId, published: SocketAddr) -> SocketAddr {
        let _ = id;
        published
    }

    /// Every log line of every instance from now on. A receiver that falls behind by more
    /// than the channel capacity loses the oldest lines (`RecvError::Lagged`). Lines are
    /// shared (`Arc`): a broadcast fills every slot of its buffer up front, so slots the size
    /// of a pointer keep an idle server's memory small.
    fn subscribe_logs(&self) -> broadcast::Receiver<std::sync::Arc<LogLine>>;

    /// Every lifecycle event (start, exit, OOM, restart, stop, adoption) from now on.
    fn subscribe_events(&self) -> broadcast::Receiver<RuntimeEvent>;

    /// Events produced while the runtime was opened (re-adoption, instances lost while the
    /// server was down), before anyone could subscribe. Drains the list.
    fn take_recovery_events(&self) -> Vec<RuntimeEvent> {
        Vec::new()
    }

    /// Stops every instance (SIGTERM, `grace`, SIGKILL), for an orderly server shutdown that
    /// should not leave apps running. Not calling it leaves instances running for the next
    /// server to re-adopt.
    async fn shutdown(&self, grace: Duration);
}

/// A running one-off process: its output lines as they come, then its exit.
///
/// Runtimes build it with [`OneoffHandle::new`]; callers read lines and `wait`.
#[derive(Debug)]
pub struct OneoffHandle {
    id: InstanceId,
    lines: mpsc::UnboundedReceiver<LogLine>,
    exit: Option<oneshot::Receiver<ExitInfo>>,
    cancel: mpsc::Sender<Duration>,
}

impl OneoffHandle {
    /// Assembles a handle: `lines` carries output, `exit` fires once after the last line,
    /// and a grace period sent on `cancel` asks the runtime to stop the process.
    pub fn new(
        id: InstanceId,
        lines: mpsc::UnboundedReceiver<LogLine>,
        exit: oneshot::Receiver<ExitInfo>,
        cancel: mpsc::Sender<Duration>,
    ) -> Self {
        OneoffHandle {
            id,
            lines,
            exit: Some(exit),
            cancel,
        }
    }

    /// The run's id (also in every line).
    pub fn id(&self) -> &InstanceId {
        &self.id
    }

    /// Next output line; `None` once the process has ended and all output was read.
    pub async fn next_line(&mut self) -> Option<LogLine> {
        self.lines.recv().await
    }

    /// Asks the runtime to stop the process (SIGTERM, `grace`, SIGKILL). `wait` then returns.
    pub async fn cancel(&self, grace: Duration) {
        // The runtime task may already be gone because the process ended: nothing to cancel.
        let _ = self.cancel.send(grace).await;
    }

    /// Waits for the exit, killing the process if `timeout` elapses first (then
    /// [`RuntimeError::OneoffTimedOut`]). Output lines not read yet stay readable.
    pub async fn wait(&mut self, timeout: Option<Duration>) -> Result<ExitInfo> {
        let Some(mut exit) = self.exit.take() else {
            return Err(RuntimeError::ShutDown);
        };
        let finished = match timeout {
            None => (&mut exit).await,
            Some(limit) => match tokio::time::timeout(limit, &mut exit).await {
                Ok(result) => result,
                Err(_) => {
                    self.cancel(Duration::from_secs(5)).await;
                    let info = exit.await.map_err(|_| RuntimeError::ShutDown)?;
                    return Err(RuntimeError::OneoffTimedOut {
                        after: limit,
                        exit: info,
                    });
                }
            },
        };
        finished.map_err(|_| RuntimeError::ShutDown)
    }

    /// Reads all remaining output and waits for the exit (convenience for short commands).
    pub async fn collect(mut self, timeout: Option<Duration>) -> Result<(Vec<LogLine>, ExitInfo)> {
        let exit = self.wait(timeout).await?;
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            lines.push(line);
        }
        Ok((lines, exit))
    }
}
