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
    crate::server::init_logging(crate::cli::LogFormat::Json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                crate::server::shutdown_signal().await;
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
}

/// Adopts the edge process that answers on `DATA_DIR/edge/admin.sock` when it runs with
/// these settings and listens where asked; otherwise stops it (gracefully: it drains) and
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
            && &status.settings == settings
            && listens_where_asked(Some(status.proxy_addr), Some(wanted_proxy))
            && listens_where_asked(status.tls_addr, wanted_tls);
        if fits {
            tracing::info!(pid = status.pid, proxy = %status.proxy_addr, "adopting the running edge process");
            inherited.discard(&["proxy", "proxy-tls"]);
            return Ok(RunningEdge {
                client,
                status,
                adopted: true,
            });
        }
        tracing::info!(
            pid = status.pid,
            "replacing the edge process: its settings or listeners differ"
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
    let exe = std::env::current_exe().context("cannot find the gilgal binary to run the edge")?;
    let (client, status, mut child) = gilgal_edge::spawn_edge(&exe, &paths, &listeners, settings)
        .await
        .context("cannot start the edge process")?;
    // The edge holds the sockets now; this process's copies would only keep the ports open
    // after the edge stopped.
    drop(listeners);
    tokio::spawn(async move {
        match child.wait().await {
            Ok(exit) => tracing::warn!(%exit, "the edge process exited"),
            Err(e) => tracing::warn!(error = %e, "cannot wait for the edge process"),
        }
    });
    tracing::info!(pid = status.pid, proxy = %status.proxy_addr, "edge process started");
    Ok(RunningEdge {
        client,
        status,
        adopted: false,
    })
}

/// Whether an edge listening on `actual` serves what `wanted` asks for (port 0: any port).
fn listens_where_asked(actual: Option<SocketAddr>, wanted: Option<SocketAddr>) -> bool {
    match (actual, wanted) {
        (None, None) => true,
        (Some(actual), Some(wanted)) => {
            wanted.port() == 0 && wanted.ip() == actual.ip() || wanted == actual
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

/// Stops the edge process and waits until it has drained (`--stop-apps-on-exit`).
pub async fn stop(client: &EdgeClient, pid: u32, grace: Duration) {
    if let Err(e) = client.shutdown().await {
        tracing::warn!(error = %e, "cannot ask the edge process to stop");
        return;
    }
    if let Err(e) = wait_for_exit(pid, grace + Duration::from_secs(5)).await {
        tracing::warn!(error = %e, "the edge process is still running");
    }
}
