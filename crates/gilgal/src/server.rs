//! `gilgal server`: opens the store, loads or creates the signing key, and serves the API
//! until SIGINT or SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use gilgal_api::{ApiConfig, AppState};
use gilgal_auth::keys::SigningKey;
use gilgal_store::{Store, StoreBackend};
use tracing_subscriber::EnvFilter;

use crate::cli::{LogFormat, Registration, ServerArgs};

/// Runs the server on a small multi-threaded runtime (two workers keep idle memory low).
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("GILGAL_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
}

/// The default data directory: system-wide as root, per-user otherwise.
fn default_data_dir() -> anyhow::Result<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/var/lib/gilgal"));
    }
    Ok(dirs::data_local_dir()
        .context("cannot find a home directory; pass --data-dir")?
        .join("gilgal"))
}

/// Creates the data dir owner-only (0700): apps and other users must not read keys or data.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    Ok(())
}

async fn serve(args: ServerArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    prepare_data_dir(&data_dir)?;
    let backend = StoreBackend::choose(args.database_url.as_deref(), &data_dir);
    let store = Store::connect(&backend)
        .await
        .with_context(|| format!("cannot open the {} store", backend.kind()))?;
    if let Some(registration) = args.registration {
        store
            .set_registration_open(registration == Registration::Open)
            .await?;
    }
    let key = SigningKey::load_or_generate(&data_dir.join("keys").join("signing.key"))?;
    let state = AppState::new(store.clone(), &key, ApiConfig::default())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let api_addr = listener.local_addr()?;
    tracing::info!(
        api = %format!("http://{api_addr}"),
        store = backend.kind(),
        data_dir = %data_dir.display(),
        "gilgal server ready"
    );
    gilgal_api::serve(listener, state, shutdown_signal()).await?;
    store.close().await;
    tracing::info!("gilgal server stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
