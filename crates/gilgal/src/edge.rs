//! The binary's side of the edge process: `gilgal edge` itself, and how `gilgal server`
//! starts one or re-adopts the one that outlived its previous run.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use gilgal_edge::{EdgeClient, EdgeListeners, EdgePaths, EdgeStatus, EDGE_PROTOCOL};
use gilgal_proxy::ProxySettings;

use crate::cli::{EdgeArgs, ServerArgs};
use crate::listeners::InheritedListeners;

/// `gilgal edge`: serves the sockets `gilgal server` passed until SIGTERM, SIGINT or an
/// admin shutdown, then drains.
pub fn run(args: EdgeArgs) -> anyhow::Result<ExitCode> {
    // Before any thread exists: it edits the environment.
    let (listeners, settings) = EdgeListeners::take_from_env()?;
    crate::link::forget_defaults();
    crate::server::init_logging(crate::cli::LogFormat::Json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        {
            let (stop, signal) = (stop.clone(), crate::server::ShutdownSignal::install());
            tokio::spawn(async move {
                signal.received().await;
                stop.cancel();
            });
        }
        gilgal_edge::run_edge(&EdgePaths::new(&args.dir), listeners, settings, stop).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The edge process `gilgal server` routes through.
pub struct RunningEdge {
    /// Its admin API.
    pub client: EdgeClient,
    /// What it said about itself (addresses, pid).
    pub status: EdgeStatus,
    /// Whether it outlived a previous server (its routes are read back, not rebuilt).
    pub adopted: bool,
    /// This server's copies of the listening sockets (none for an adopted edge started
    /// without socket activation): a restarted edge gets them, so connections that arrive
    /// while it is down wait in the queue instead of being refused.
    listeners: Option<EdgeListeners>,
    /// The edge, when this server started it (to reap it).
    child: Option<tokio::process::Child>,
    paths: EdgePaths,
    settings: ProxySettings,
}

/// Adopts the edge process that answers on `DATA_DIR/edge/admin.sock` when it runs this
/// binary with these settings and listens where asked; otherwise stops it (gracefully: it drains) and
/// starts a new one on the configured listeners.
pub async fn start_or_adopt(
    data_dir: &Path,
    args: &ServerArgs,
    inherited: &mut InheritedListeners,
    settings: &ProxySettings,
) -> anyhow::Result<RunningEdge> {
    let paths = EdgePaths::new(data_dir.join("edge"));
    let client = paths.client();
    if let Ok(status) = client.status().await {
        let wanted_proxy = inherited.addr_of("proxy").unwrap_or(args.proxy_listen);
        let wanted_tls = inherited.addr_of("proxy-tls").or(args.proxy_tls_listen);
        let fits = status.protocol == EDGE_PROTOCOL
            && status.binary == gilgal_edge::binary_identity()
            && &status.settings == settings
            && listens_where_asked(Some(status.proxy_addr), Some(wanted_proxy))
            && listens_where_asked(status.tls_addr, wanted_tls);
        if fits {
            tracing::info!(pid = status.pid, proxy = %status.proxy_addr, "adopting the running edge process");
            let listeners = inherited.take("proxy").map(|proxy| EdgeListeners {
                proxy,
                tls: inherited.take("proxy-tls"),
            });
            return Ok(RunningEdge {
                client,
                status,
                adopted: true,
                listeners,
                child: None,
                paths,
                settings: settings.clone(),
            });
        }
        tracing::info!(
            pid = status.pid,
            "replacing the edge process: its binary, settings or listeners differ"
        );
        let _ = client.shutdown().await;
        wait_for_exit(status.pid, settings.shutdown_grace + Duration::from_secs(5)).await?;
    }
    let proxy = inherited
        .listen("proxy", args.proxy_listen, "proxy")
        .await?
        .into_std()?;
    let tls = match args.proxy_tls_listen {
        Some(addr) => Some(
            inherited
                .listen("proxy-tls", addr, "proxy TLS")
                .await?
                .into_std()?,
        ),
        None => None,
    };
    let listeners = EdgeListeners { proxy, tls };
    let (client, status, child) = spawn(&paths, &listeners, settings).await?;
    tracing::info!(pid = status.pid, proxy = %status.proxy_addr, "edge process started");
    Ok(RunningEdge {
        client,
        status,
        adopted: false,
        listeners: Some(listeners),
        child: Some(child),
        paths,
        settings: settings.clone(),
    })
}

async fn spawn(
    paths: &EdgePaths,
    listeners: &EdgeListeners,
    settings: &ProxySettings,
) -> anyhow::Result<(EdgeClient, EdgeStatus, tokio::process::Child)> {
    let exe = std::env::current_exe().context("cannot find the gilgal binary to run the edge")?;
    gilgal_edge::spawn_edge(&exe, paths, listeners, settings)
        .await
        .context("cannot start the edge process")
}

/// How often the server checks that its edge process answers.
const EDGE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Checks failed in a row before the edge counts as gone and is restarted.
const EDGE_CHECKS_BEFORE_RESTART: u32 = 2;

impl RunningEdge {
    /// Keeps the edge process running until `stop`: an edge that no longer answers (it
    /// crashed or was killed) is replaced on the same sockets and given the whole desired
    /// state before it accepts. Connections that arrive meanwhile wait in the socket's queue
    /// when this server holds a copy of it.
    pub async fn supervise(
        mut self,
        platform: std::sync::Arc<gilgal_deploy::Platform>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        let mut failed_checks = 0;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return self,
                _ = tokio::time::sleep(EDGE_CHECK_INTERVAL) => {}
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(exit)) = child.try_wait() {
                    tracing::warn!(%exit, pid = self.status.pid, "the edge process exited");
                    self.child = None;
                }
            }
            match self.client.status().await {
                Ok(status) if status.pid == self.status.pid => {
                    failed_checks = 0;
                    continue;
                }
                Ok(status) => {
                    tracing::warn!(
                        pid = status.pid,
                        "another edge process answers; giving it the desired state"
                    );
                    self.status = status;
                }
                Err(e) => {
                    failed_checks += 1;
                    if failed_checks < EDGE_CHECKS_BEFORE_RESTART {
                        continue;
                    }
                    tracing::error!(error = %e, pid = self.status.pid, "the edge process does not answer; restarting it");
                    if let Err(e) = self.restart().await {
                        tracing::error!(error = %e, "cannot restart the edge process");
                        continue;
                    }
                }
            }
            failed_checks = 0;
            match platform.edge().resync().await {
                Ok(()) => tracing::info!(
                    pid = self.status.pid,
                    "the edge process serves the desired state again"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot give the edge process the desired state")
                }
            }
            if let Err(e) = self.client.open().await {
                tracing::warn!(error = %e, "cannot open the edge");
            }
        }
    }

    /// Starts a new edge process on this server's copies of the sockets, or on new ones
    /// bound to the previous edge's addresses.
    async fn restart(&mut self) -> anyhow::Result<()> {
        if self.listeners.is_none() {
            let bind = |addr: SocketAddr| -> anyhow::Result<std::net::TcpListener> {
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("cannot listen on {addr} for the edge"))?;
                Ok(listener)
            };
            self.listeners = Some(EdgeListeners {
                proxy: bind(self.status.proxy_addr)?,
                tls: self.status.tls_addr.map(bind).transpose()?,
            });
        }
        let Some(listeners) = &self.listeners else {
            anyhow::bail!("no sockets for the edge");
        };
        let (client, status, child) = spawn(&self.paths, listeners, &self.settings).await?;
        tracing::info!(pid = status.pid, "edge process restarted");
        self.client = client;
        self.status = status;
        self.child = Some(child);
        Ok(())
    }
}

/// Whether an edge listening on `actual` serves what `wanted` asks for (port 0: any port).
fn listens_where_asked(actual: Option<SocketAddr>, wanted: Option<SocketAddr>) -> bool {
    match (actual, wanted) {
        (None, None) => true,
        (Some(actual), Some(wanted)) => {
            (wanted.port() == 0 && wanted.ip() == actual.ip()) || wanted == actual
        }
        _ => false,
    }
}

/// Waits until process `pid` is gone (it is not this process's child: poll with signal 0).
async fn wait_for_exit(pid: u32, deadline: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let pid = libc::pid_t::try_from(pid).context("edge pid out of range")?;
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        anyhow::ensure!(
            started.elapsed() < deadline,
            "the previous edge process {pid} did not stop within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

impl RunningEdge {
    /// Stops the edge process and waits until it has drained (`--stop-apps-on-exit`).
    pub async fn stop(mut self) {
        if let Err(e) = self.client.shutdown().await {
            tracing::warn!(error = %e, "cannot ask the edge process to stop");
            return;
        }
        let deadline = self.settings.shutdown_grace + Duration::from_secs(5);
        let stopped = match &mut self.child {
            // This server's child: reap it (a zombie would look alive to kill(2)).
            Some(child) => match tokio::time::timeout(deadline, child.wait()).await {
                Ok(_) => Ok(()),
                Err(_) => Err(anyhow::anyhow!(
                    "the edge process did not stop within {deadline:?}"
                )),
            },
            None => wait_for_exit(self.status.pid, deadline).await,
        };
        if let Err(e) = stopped {
            tracing::warn!(error = %e, "the edge process is still running");
        }
    }
}
