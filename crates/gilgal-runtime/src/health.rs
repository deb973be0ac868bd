//! Health checks that gate traffic: a TCP connect to the instance's port (default) or an
//! HTTP GET expecting 2xx/3xx. [`wait_healthy`] is the boot gate of a rollout and fails fast
//! when the instance dies first; [`HealthMonitor`] keeps checking afterwards so the
//! reconciler can replace an instance that turns unhealthy.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use crate::error::RuntimeError;
use crate::runtime::Runtime;
use crate::spec::{ExitInfo, InstanceId, InstanceState, RuntimeEventKind};

/// What one probe does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Probe {
    /// Healthy when a TCP connection to the port is accepted.
    Tcp,
    /// Healthy when `GET path` answers 2xx or 3xx.
    Http {
        /// Request path, starting with `/`.
        path: String,
        /// `Host` header to send (default `localhost`).
        host: Option<String>,
    },
}

/// Health-check settings (from `gilgal.toml`, with these defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The probe.
    pub probe: Probe,
    /// Pause between probes.
    pub interval: Duration,
    /// Longest a single probe may take.
    pub timeout: Duration,
    /// Consecutive successes needed to call an instance healthy.
    pub success_threshold: u32,
    /// Consecutive failures after which a healthy instance counts as unhealthy.
    pub failure_threshold: u32,
    /// How long a booting instance has to become healthy.
    pub boot_deadline: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            probe: Probe::Tcp,
            interval: Duration::from_millis(250),
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 3,
            boot_deadline: Duration::from_secs(60),
        }
    }
}

/// Why one probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Could not connect.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// Target.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The probe took longer than its timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// HTTP-level failure (bad response, connection reset mid-request).
    #[error("HTTP probe failed: {0}")]
    Http(String),
    /// The app answered with a non-2xx/3xx status.
    #[error("HTTP probe got status {0}")]
    Status(u16),
}

/// Why an instance did not become healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The instance exited (crashed on boot) before passing its health check.
    #[error("instance exited before becoming healthy: {}", describe_exit(.exit.as_ref()))]
    Exited {
        /// How it ended, when known.
        exit: Option<ExitInfo>,
    },
    /// The boot deadline passed without enough successful probes.
    #[error("not healthy within {deadline:?}: {last_error}")]
    DeadlineExceeded {
        /// The boot deadline.
        deadline: Duration,
        /// The last probe failure.
        last_error: String,
    },
    /// The runtime could not report on the instance.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

fn describe_exit(exit: Option<&ExitInfo>) -> String {
    exit.map_or_else(|| "status unknown".to_owned(), ExitInfo::describe)
}

/// Runs one probe against `addr`.
pub async fn probe(addr: SocketAddr, probe: &Probe, timeout: Duration) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, probe_inner(addr, probe)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

async fn probe_inner(addr: SocketAddr, probe: &Probe) -> Result<(), ProbeError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let Probe::Http { path, host } = probe else {
        return Ok(());
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| ProbeError::Http(err.to_string()))?;
    let request = http::Request::get(path.as_str())
        .header(http::header::HOST, host.as_deref().unwrap_or("localhost"))
        .header(http::header::USER_AGENT, "gilgal-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|err| ProbeError::Http(format!("bad health check path {path:?}: {err}")))?;
    // The connection future drives the socket; it lives in its own task for the probe.
    let connection = AbortOnDrop(tokio::spawn(connection));
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| ProbeError::Http(err.to_string()))?;
    drop(connection);
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(ProbeError::Status(status.as_u16()))
    }
}

/// Aborts a spawned task when dropped, so a probe never leaves a connection task behind.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits until instance `id` answers `check` at `addr` `success_threshold` times in a row.
///
/// Fails with [`HealthError::Exited`] as soon as the instance exits or restarts (crash on
/// boot), and with [`HealthError::DeadlineExceeded`] after `boot_deadline`.
pub async fn wait_healthy(
    runtime: &dyn Runtime,
    id: &InstanceId,
    addr: SocketAddr,
    check: &HealthCheck,
) -> Result<(), HealthError> {
    let deadline = Instant::now() + check.boot_deadline;
    let mut events = runtime.subscribe_events();
    let initial = runtime.status(id).await?;
    let mut successes = 0u32;
    let mut last_error = "no probe completed".to_owned();
    let mut probes_failed = 0u32;
    loop {
        let status = runtime.status(id).await?;
        let alive = matches!(
            status.state,
            InstanceState::Running | InstanceState::Starting
        );
        if !alive || status.restarts != initial.restarts {
            return Err(HealthError::Exited {
                exit: status.last_exit,
            });
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HealthError::DeadlineExceeded {
                deadline: check.boot_deadline,
                last_error,
            });
        }
        let clipped = deadline - now < check.timeout;
        match probe(addr, &check.probe, check.timeout.min(deadline - now)).await {
            Ok(()) => {
                successes += 1;
                if successes >= check.success_threshold.max(1) {
                    return Ok(());
                }
            }
            // A probe cut short by the deadline says less than the failure before it.
            Err(ProbeError::Timeout(_)) if clipped && probes_failed > 0 => successes = 0,
            Err(err) => {
                successes = 0;
                probes_failed += 1;
                last_error = err.to_string();
            }
        }
        let pause = sleep(
            check
                .interval
                .min(deadline.saturating_duration_since(Instant::now())),
        );
        tokio::pin!(pause);
        // Wake early when this instance exits, so a crash on boot is reported at once.
        loop {
            tokio::select! {
                _ = &mut pause => break,
                event = events.recv() => match event {
                    Ok(event) if &event.instance == id
                        && matches!(event.kind, RuntimeEventKind::Exited(_) | RuntimeEventKind::Stopped(_)) => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        (&mut pause).await;
                        break;
                    }
                },
            }
        }
    }
}

/// Continuous health of an instance after it went live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthState {
    /// Not enough probes yet.
    Unknown,
    /// The last `success_threshold` probes passed.
    Healthy,
    /// The last `failure_threshold` probes failed.
    Unhealthy {
        /// Failures in a row so far.
        consecutive_failures: u32,
        /// The last failure.
        last_error: String,
    },
}

/// Probes an instance forever in the background; dropping it stops the probing.
#[derive(Debug)]
pub struct HealthMonitor {
    state: watch::Receiver<HealthState>,
    task: JoinHandle<()>,
}

impl HealthMonitor {
    /// Starts probing `addr` every `check.interval`.
    pub fn spawn(addr: SocketAddr, check: HealthCheck) -> HealthMonitor {
        let (tx, state) = watch::channel(HealthState::Unknown);
        let task = tokio::spawn(async move {
            let mut successes = 0u32;
            let mut failures = 0u32;
            loop {
                match probe(addr, &check.probe, check.timeout).await {
                    Ok(()) => {
                        failures = 0;
                        successes = successes.saturating_add(1);
                        if successes >= check.success_threshold.max(1) {
                            tx.send_if_modified(|state| {
                                let changed = *state != HealthState::Healthy;
                                *state = HealthState::Healthy;
                                changed
                            });
                        }
                    }
                    Err(err) => {
                        successes = 0;
                        failures = failures.saturating_add(1);
                        if failures >= check.failure_threshold.max(1) {
                            let _ = tx.send(HealthState::Unhealthy {
                                consecutive_failures: failures,
                                last_error: err.to_string(),
                            });
                        }
                    }
                }
                sleep(check.interval).await;
            }
        });
        HealthMonitor { state, task }
    }

    /// The current verdict.
    pub fn state(&self) -> HealthState {
        self.state.borrow().clone()
    }

    /// A receiver that wakes on every verdict change.
    pub fn subscribe(&self) -> watch::Receiver<HealthState> {
        self.state.clone()
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}
