//! `gilgal server`: opens the store, loads or creates the signing key, and serves the API
//! until SIGINT or SIGTERM.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use gilgal_api::{ApiConfig, AppState};
use gilgal_auth::keys::SigningKey;
use gilgal_deploy::{Platform, PlatformConfig, Services};
use gilgal_proxy::{ProxyHandle, ProxySettings};
use gilgal_store::{Store, StoreBackend};
use tracing_subscriber::EnvFilter;

use crate::cli::{EdgeKind, Isolation, LogFormat, Registration, RuntimeKind, ServerArgs};
use crate::listeners::InheritedListeners;

/// How long the edge waits for recovery to route what runs before it accepts anyway.
const ROUTES_RESTORE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Capacity of the runtimes' log broadcast: about three 100 ms polls of an app printing
/// 100,000 lines/s (lines beyond it are counted as dropped in the app's log, not lost silently).
const LOG_CHANNEL_CAPACITY: usize = 32 * 1024;

/// Runs the server on a small multi-threaded runtime (two workers keep idle memory low).
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    // Before any thread exists: it edits the environment.
    let inherited = InheritedListeners::take_from_env()?;
    crate::link::forget_defaults();
    tune_allocator();
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()?;
    runtime.block_on(serve(args, inherited))?;
    Ok(ExitCode::SUCCESS)
}

/// Keeps idle memory low: each argon2id hash allocates 19 MiB; with glibc's default dynamic
/// mmap threshold those blocks end up in per-thread heaps that are never returned to the OS.
/// A fixed 1 MiB threshold makes big blocks mmap'd (returned on free), and two arenas bound
/// the per-thread heaps.
fn tune_allocator() {
    // SAFETY: mallopt only adjusts glibc allocator parameters; it is called before any other
    // thread exists, and invalid values are rejected by glibc (return 0), not undefined.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

pub(crate) fn init_logging(format: LogFormat) {
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
/// With per-app users, or as root (add-on servers run as the `postgres` and `redis` system
/// users under `addons/`), it is 0711 instead (others may pass through, never list it), and
/// everything private inside it is 0700/0600.
fn prepare_data_dir(dir: &Path, app_users: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    // SAFETY: geteuid(2) has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mode = if app_users || as_root { 0o711 } else { 0o700 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    if app_users {
        for ancestor in dir.ancestors().skip(1) {
            let meta = std::fs::metadata(ancestor)
                .with_context(|| format!("cannot read {}", ancestor.display()))?;
            anyhow::ensure!(
                meta.permissions().mode() & 0o001 != 0,
                "apps run as their own users but cannot pass through {} (mode {:o}) to reach their releases; \
                 use a data dir whose parents are searchable by others, or --isolation off",
                ancestor.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    if app_users || as_root {
        for (private, mode) in [
            ("keys", 0o700),
            ("runtime", 0o700),
            ("work", 0o700),
            ("cache", 0o700),
            ("backups", 0o700),
            ("releases", 0o711),
            ("homes", 0o711),
            ("addons", 0o711),
        ] {
            let path = dir.join(private);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot restrict permissions of {}", path.display()))?;
        }
    }
    Ok(())
}

/// The SQLite files must stay owner-only inside a 0711 data dir (SQLite creates them 0644
/// and gives its WAL and shared-memory files the database file's mode).
fn restrict_database_files(dir: &Path) -> anyhow::Result<()> {
    for name in ["gilgal.db", "gilgal.db-wal", "gilgal.db-shm"] {
        let path = dir.join(name);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict permissions of {}", path.display()))?;
        }
    }
    Ok(())
}

async fn serve(args: ServerArgs, mut inherited: InheritedListeners) -> anyhow::Result<()> {
    // First: from here on SIGTERM is a graceful stop.
    let shutdown = ShutdownSignal::install();
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => default_data_dir()?,
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let app_users = args.runtime == RuntimeKind::Process
        && args.isolation == Isolation::Auto
        && unsafe { libc::geteuid() } == 0;
    prepare_data_dir(&data_dir, app_users)?;
    let backend = StoreBackend::choose(args.database_url.as_deref(), &data_dir);
    let store = Store::connect(&backend)
        .await
        .with_context(|| format!("cannot open the {} store", backend.kind()))?;
    restrict_database_files(&data_dir)?;
    if let Some(registration) = args.registration {
        store
            .set_registration_open(registration == Registration::Open)
            .await?;
    }
    let key = SigningKey::load_or_generate(&data_dir.join("keys").join("signing.key"))?;
    let mut proxy_settings = ProxySettings {
        trusted_proxies: args.proxy_trusted_proxies.clone(),
        ..ProxySettings::default()
    };
    if let Some(tls) = args.proxy_tls_listen {
        proxy_settings.https_port = tls.port();
    }
    let (runtime, images): (std::sync::Arc<dyn gilgal_runtime::Runtime>, _) = match args.runtime {
        RuntimeKind::Process => (process_runtime(&data_dir, app_users).await?, None),
        RuntimeKind::Docker => {
            let (runtime, images) = docker_runtime(&data_dir).await?;
            (runtime, Some(images))
        }
    };
    let container_gateway = match &images {
        Some(images) => gilgal_docker::bridge_gateway(&images.docker).await,
        None => None,
    };
    // Where the proxy runs: its own process (started, or adopted from a previous run) or
    // this one.
    let (edge_link, edge_run) = match args.edge {
        EdgeKind::Process => {
            let running =
                crate::edge::start_or_adopt(&data_dir, &args, &mut inherited, &proxy_settings)
                    .await?;
            (
                gilgal_edge::EdgeLink::Process(running.client.clone()),
                EdgeRun::Process(Box::new(running)),
            )
        }
        EdgeKind::InProcess => {
            let proxy = ProxyHandle::new(proxy_settings.clone());
            let listener = inherited
                .listen("proxy", args.proxy_listen, "proxy")
                .await?;
            let tls = match args.proxy_tls_listen {
                Some(addr) => Some(inherited.listen("proxy-tls", addr, "proxy TLS").await?),
                None => None,
            };
            (
                proxy.clone().into(),
                EdgeRun::InProcess {
                    proxy,
                    listener,
                    tls,
                },
            )
        }
    };
    let (proxy_addr, tls_addr) = edge_run.addrs()?;
    let vault = std::sync::Arc::new(
        gilgal_deploy::Vault::open_or_create(
            &data_dir.join("keys").join("master.key"),
            store.clone(),
        )
        .context("cannot open the master key that protects secrets")?,
    );
    let logs = open_logs(&data_dir, args.log_retention_days, args.log_max_mb)?;
    let smtp = match &args.smtp_url {
        Some(url) => Some(
            gilgal_notify::SmtpRelay::from_url(url, &args.smtp_from)
                .context("cannot use --smtp-url/--smtp-from")?,
        ),
        None => None,
    };
    let notifier = gilgal_notify::Notifier::new(smtp).context("cannot set up notifications")?;
    let platform = Platform::new(
        store.clone(),
        runtime.clone(),
        edge_link,
        PlatformConfig {
            work_dir: data_dir.join("work"),
            releases_dir: data_dir.join("releases"),
            cache_dir: data_dir.join("cache"),
            base_domain: args.base_domain.clone(),
            public_port: Some(proxy_addr.port()),
            keep_releases: args.keep_releases,
            allow_local_git: args.allow_local_git,
            allow_private_urls: args.allow_private_urls,
            app_users,
            build_sandbox: app_users.then(|| gilgal_build::BuildSandbox {
                mounts: app_mount_isolation(&data_dir),
                cgroups: gilgal_runtime::CgroupConfig::default(),
                limits: BUILD_LIMITS,
            }),
            images,
            addons: gilgal_deploy::AddonsConfig {
                dir: data_dir.join("addons"),
                backups_dir: data_dir.join("backups"),
                postgres_url: args.addons_postgres_url.clone(),
                container_gateway,
            },
            logs,
            health_interval: std::time::Duration::from_millis(args.health_interval_ms.max(100)),
            alerts: gilgal_deploy::AlertsConfig {
                interval: std::time::Duration::from_millis(args.alert_interval_ms.max(100)),
                notifier,
            },
            quotas: gilgal_deploy::Quotas::default(),
        },
        vault,
    );
    // Every service over the one platform; the log and event subscriptions start here.
    let services = Services::new(platform);
    let state = AppState::new(
        store.clone(),
        services.clone(),
        &key,
        ApiConfig {
            cors_origins: args.cors_origins.clone(),
            trusted_proxies: args.api_trusted_proxies.clone(),
            max_connections: args.api_max_connections,
            ..ApiConfig::default()
        },
    )?;
    if let EdgeRun::Process(running) = &edge_run {
        if running.adopted {
            let routes = services
                .platform
                .edge()
                .adopt()
                .await
                .context("cannot read the routes of the running edge process")?;
            tracing::info!(
                routes,
                "the edge kept serving; recovery starts from its routes"
            );
        }
    }
    services
        .platform
        .restore_certificates()
        .await
        .context("cannot load TLS certificates from the store")?;

    let api_listener = inherited.listen("api", args.listen, "API").await?;
    let api_addr = api_listener.local_addr()?;

    // One shutdown signal fans out to every listener.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    // The edge accepts once recovery has routed what runs (a restarted server knows no
    // routes before): until then connections wait in the accept queue rather than meet a
    // 404. Bounded, so one slow environment cannot keep every app off the edge.
    let (routes_restored, routes_restored_rx) = tokio::sync::watch::channel(false);
    let edge_open = move || {
        let mut restored = routes_restored_rx.clone();
        async move {
            let _ =
                tokio::time::timeout(ROUTES_RESTORE_WAIT, restored.wait_for(|done| *done)).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let edge_watch = tokio_util::sync::CancellationToken::new();
    let edge_process = match edge_run {
        EdgeRun::InProcess {
            proxy,
            listener,
            tls,
        } => {
            {
                let (proxy, open, stop) = (proxy.clone(), edge_open(), stopped());
                tasks.spawn(async move {
                    open.await;
                    gilgal_proxy::serve(listener, proxy, stop).await
                });
            }
            if let Some(listener) = tls {
                let (proxy, open, stop) = (proxy.clone(), edge_open(), stopped());
                tasks.spawn(async move {
                    open.await;
                    gilgal_proxy::serve_tls(listener, proxy, stop).await
                });
            }
            None
        }
        EdgeRun::Process(running) => {
            if !running.adopted {
                // A new edge holds its connections until recovery has routed what runs.
                let (client, open) = (running.client.clone(), edge_open());
                tokio::spawn(async move {
                    open.await;
                    if let Err(e) = client.open().await {
                        tracing::warn!(error = %e, "cannot open the edge");
                    }
                });
            }
            let platform = services.platform.clone();
            Some(tokio::spawn(
                running.supervise(platform, edge_watch.clone()),
            ))
        }
    };
    tracing::info!(
        api = %format!("http://{api_addr}"),
        proxy = %format!("http://{proxy_addr}"),
        proxy_tls = %tls_addr.map(|a| format!("https://{a}")).unwrap_or_default(),
        base_domain = %args.base_domain,
        store = backend.kind(),
        app_users,
        runtime = runtime.name(),
        data_dir = %data_dir.display(),
        "gilgal server ready"
    );
    // Converge to the stored desired state (re-adopting instances that outlived a crash),
    // then start the cron scheduler.
    let cron_stop = tokio_util::sync::CancellationToken::new();
    {
        let ingest = services.log_ingest.clone();
        let stop = cron_stop.clone();
        tokio::spawn(async move { ingest.run_log_ingest(stop).await });
    }
    {
        let recorder = services.event_recorder.clone();
        let stop = cron_stop.clone();
        tokio::spawn(async move { recorder.run_event_recorder(stop).await });
    }
    {
        let alerts = services.alerts.clone();
        let stop = cron_stop.clone();
        tokio::spawn(async move { alerts.run_alerts(stop).await });
    }
    {
        let cron_stop = cron_stop.clone();
        let Services {
            recovery,
            health_watch,
            addon_supervisor,
            runs,
            ..
        } = services;
        tokio::spawn(async move {
            match recovery.recover().await {
                Ok(()) => tracing::info!("desired state reconciled"),
                Err(e) => tracing::error!(error = %e, "reconciling desired state failed"),
            }
            let _ = routes_restored.send(true);
            if let Err(e) = recovery.sweep_leftovers().await {
                tracing::error!(error = %e, "stopping instances no environment owns failed");
            }
            // The health watch converges too: it starts from what recovery left, never
            // beside it.
            let watch_stop = cron_stop.clone();
            tokio::spawn(async move { health_watch.run_health_watch(watch_stop).await });
            let supervisor_stop = cron_stop.clone();
            tokio::spawn(
                async move { addon_supervisor.run_addon_supervisor(supervisor_stop).await },
            );
            runs.run_cron(cron_stop).await;
        });
    }
    tokio::spawn(async move {
        shutdown.received().await;
        let _ = stop_tx.send(true);
    });
    gilgal_api::serve(api_listener, state, stopped())
        .await
        .context("API server failed")?;
    cron_stop.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err(e)) = joined {
            tracing::warn!(error = %e, "proxy listener ended with an error");
        }
    }
    edge_watch.cancel();
    let edge_process = match edge_process {
        Some(supervisor) => supervisor.await.ok(),
        None => None,
    };
    if args.stop_apps_on_exit {
        if let Some(edge) = edge_process {
            tracing::info!("stopping the edge process (--stop-apps-on-exit)");
            edge.stop().await;
        }
        tracing::info!("stopping every app instance (--stop-apps-on-exit)");
        runtime.shutdown(std::time::Duration::from_secs(10)).await;
        let addons_dir = data_dir.join("addons");
        tokio::task::spawn_blocking(move || {
            gilgal_addons::stop_all(&addons_dir, std::time::Duration::from_secs(10))
        })
        .await
        .ok();
    }
    store.close().await;
    tracing::info!("gilgal server stopped");
    Ok(())
}

/// Where this server's edge proxy runs.
enum EdgeRun {
    /// In this process, on these listeners.
    InProcess {
        proxy: ProxyHandle,
        listener: tokio::net::TcpListener,
        tls: Option<tokio::net::TcpListener>,
    },
    /// In the edge process.
    Process(Box<crate::edge::RunningEdge>),
}

impl EdgeRun {
    /// The proxy's plain and TLS addresses.
    fn addrs(&self) -> anyhow::Result<(std::net::SocketAddr, Option<std::net::SocketAddr>)> {
        Ok(match self {
            Self::InProcess { listener, tls, .. } => (
                listener.local_addr()?,
                tls.as_ref().map(|l| l.local_addr()).transpose()?,
            ),
            Self::Process(running) => (running.status.proxy_addr, running.status.tls_addr),
        })
    }
}

/// The persistent log store in `DATA_DIR/logs` (0700) with the retention flags.
fn open_logs(
    data_dir: &Path,
    retention_days: u64,
    max_mb: u64,
) -> anyhow::Result<gilgal_logs::LogStore> {
    let mut config = gilgal_logs::LogConfig::new(data_dir.join("logs"));
    config.retention.max_age =
        std::time::Duration::from_secs(retention_days.saturating_mul(86_400));
    config.retention.max_bytes = max_mb.saturating_mul(1024 * 1024);
    config.retention.segment_bytes = config
        .retention
        .segment_bytes
        .min((config.retention.max_bytes / 4).max(64 * 1024));
    gilgal_logs::LogStore::open(config).context("cannot open the log store")
}

/// What an app's processes (instances and build steps) see of the host with per-app users:
/// a private `/tmp`, Gilgal's private dirs hidden, and of the releases dir only their own
/// release (or, building, the release being built and the app's cache).
fn app_mount_isolation(data_dir: &Path) -> gilgal_runtime::MountIsolation {
    gilgal_runtime::MountIsolation {
        private_tmp: true,
        hidden_paths: ["keys", "runtime", "work", "cache"]
            .iter()
            .map(|p| data_dir.join(p))
            .collect(),
        own_only_paths: vec![data_dir.join("releases")],
    }
}

/// Limits of one build with per-app users (all its steps together): room for a Rust or
/// webpack build, a fork-bomb guard, and half the CPU weight of an instance so builds do not
/// slow running apps down.
const BUILD_LIMITS: gilgal_runtime::ResourceLimits = gilgal_runtime::ResourceLimits {
    memory_mb: Some(4096),
    cpu_shares: Some(512),
    cpu_millicores: None,
    max_pids: Some(4096),
};

/// The process runtime over `DATA_DIR/runtime`, with per-app users and hidden data when
/// `app_users`.
async fn process_runtime(
    data_dir: &Path,
    app_users: bool,
) -> anyhow::Result<std::sync::Arc<dyn gilgal_runtime::Runtime>> {
    let mut runtime_config = gilgal_runtime::ProcessRuntimeConfig {
        // Room for a few polls of a 100,000 lines/s app before the log pump lags.
        channel_capacity: LOG_CHANNEL_CAPACITY,
        ..Default::default()
    };
    if app_users {
        runtime_config.mount_isolation = app_mount_isolation(data_dir);
        runtime_config.app_home_root = Some(data_dir.join("homes"));
    }
    let runtime = gilgal_runtime::ProcessRuntime::new(data_dir.join("runtime"), runtime_config)
        .await
        .context("cannot start the process runtime")?;
    Ok(std::sync::Arc::new(runtime))
}

/// The Docker runtime: records in `DATA_DIR/docker`, containers labelled with this data
/// dir's namespace (generated once and kept there, so a restarted server re-adopts its own
/// containers and two servers on one dockerd never touch each other's).
async fn docker_runtime(
    data_dir: &Path,
) -> anyhow::Result<(
    std::sync::Arc<dyn gilgal_runtime::Runtime>,
    gilgal_deploy::ImageSettings,
)> {
    let docker = gilgal_docker::connect()
        .await
        .map_err(|e| anyhow::anyhow!("--runtime docker: {e}; or use --runtime process"))?;
    let state_dir = data_dir.join("docker");
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict permissions of {}", state_dir.display()))?;
    let namespace = docker_namespace(&state_dir)?;
    let config = gilgal_docker::DockerRuntimeConfig {
        namespace,
        channel_capacity: LOG_CHANNEL_CAPACITY,
        ..Default::default()
    };
    let runtime = gilgal_docker::DockerRuntime::new(docker.clone(), &state_dir, config)
        .await
        .context("cannot start the Docker runtime")?;
    let images = gilgal_deploy::ImageSettings {
        docker,
        bases: gilgal_docker::BaseImages::default(),
    };
    Ok((std::sync::Arc::new(runtime), images))
}

/// This data dir's container namespace from `<state_dir>/namespace`, created on first use
/// (temp file + fsync + rename).
fn docker_namespace(state_dir: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    let path = state_dir.join("namespace");
    match std::fs::read_to_string(&path) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let random = uuid::Uuid::new_v4().simple().to_string();
    let namespace = format!("g{}", &random[..12]);
    let temp = state_dir.join("namespace.tmp");
    let mut file =
        std::fs::File::create(&temp).with_context(|| format!("cannot write {}", temp.display()))?;
    file.write_all(namespace.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(namespace)
}

/// SIGINT and SIGTERM, caught from the moment it is made: a signal that arrives while the
/// server is still starting (even before it said it was ready) is a graceful stop, never the
/// default action that kills the process and leaves its apps behind.
pub(crate) struct ShutdownSignal {
    term: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    /// Installs the handlers now (inside the async runtime).
    pub(crate) fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let watch = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch {name}");
                None
            }
        };
        Self {
            term: watch(SignalKind::terminate(), "SIGTERM"),
            interrupt: watch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Resolves on the first SIGINT or SIGTERM.
    pub(crate) async fn received(mut self) {
        let term = async {
            match &mut self.term {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        let interrupt = async {
            match &mut self.interrupt {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term => {}
            _ = interrupt => {}
        }
        tracing::info!("shutting down");
    }
}
