//! The deploy pipeline and the reconciler.
//!
//! [`Deployments::deploy_upload`] turns an uploaded tarball into a live release through the
//! explicit lifecycle of `gilgal-core` (Pending → Building → Releasing → Starting → Healthy →
//! Live; the previous release Draining → Retired), recording every transition in the store:
//! unpack safely and build (`gilgal-build`), run the release phase once from the new build,
//! start the new instances and gate them on health checks (`gilgal-runtime`), swap the proxy
//! route atomically (`gilgal-proxy`), then drain and stop the old instances. A release that
//! never becomes healthy never gets traffic: the old one keeps serving.
//!
//! [`Recovery::recover`] is the reconciler's start-up pass: deployments interrupted by a crash
//! are failed (never left "in progress"), each environment's desired state (live release ×
//! formation) is diffed against what the runtime reports (re-adopted instances included), the
//! difference is applied, and routes are reinstalled.
//!
//! One struct per job, each over the shared [`Platform`] and only the services it really
//! uses, so that none carries more than a couple of dozen methods: the use-cases the API calls
//! ([`Deployments`], [`Changes`], [`Addons`], [`Teardown`], [`Runs`], [`AppMetrics`]), the
//! [`RolloutEngine`] they converge through, and the loops the server starts ([`LogIngest`],
//! [`EventRecorder`], [`AlertEvaluator`], [`Recovery`], [`HealthWatch`], [`AddonSupervisor`],
//! the cron of [`Runs`]). [`Services::new`] wires them.

mod addons;
mod alerts;
mod blue_green;
mod canary;
mod changes;
mod config;
mod converge;
mod edge;
mod edge_policy;
mod health;
mod identity;
mod images;
mod isolation;
mod logs;
mod pipeline;
mod quotas;
mod reconcile;
mod runs;
mod ssrf;
mod teardown;

pub use addons::{
    config_var_names, validate_addon_name, AddonSupervisor, Addons, AddonsConfig,
    DEFAULT_BACKUP_RETENTION, DEFAULT_BACKUP_SCHEDULE, KINDS as ADDON_KINDS,
};
pub use alerts::{
    channel_secret_name, effective_rules, AlertEvaluator, AlertsConfig, DEFAULT_ALERT_INTERVAL,
    MAX_DELIVERY_ATTEMPTS,
};
pub use canary::CanaryStatus;
pub use changes::{Changes, ConfigEdit, MAX_CONFIG_VALUE_BYTES, MAX_CONFIG_VARS};
pub use config::{ConfigSnapshot, ResolvedConfig, SnapshotVar, Vault, VaultError};
pub use converge::{RolloutEngine, RolloutError};
pub use edge::{CertificateError, Edge, EdgeState};
pub use edge_policy::{EdgePolicy, EdgeRateLimit, MAX_HSTS_SECONDS, MAX_RATE_LIMITS};
/// Credentials in git URLs: split off for sealing, put back for a fetch, redacted for display.
pub use gilgal_build::git::{redact_urls, split_credential, with_credential, GitCredential};
pub use gilgal_build::GitSource;
pub use health::{EventRecorder, HealthWatch, DEFAULT_HEALTH_INTERVAL};
pub use identity::owns as instance_belongs_to;
pub use identity::release_group;
pub use images::ImageSettings;
pub use logs::{LogIngest, BUILD_PROCESS, ROUTER_PROCESS};
pub use pipeline::{DeploySource, Deployments, ReuseKind, ReuseRelease, Strategy};
pub use quotas::{QuotaError, Quotas, Work};
pub use reconcile::{AppMetrics, AppScrape, InstanceUsage, Recovery};
pub use runs::{parse_schedule, RunOutput, RunRequest, Runs};
pub use teardown::Teardown;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gilgal_edge::EdgeLink;
use gilgal_runtime::Runtime;
use gilgal_store::Store;
use uuid::Uuid;

/// Where the pipeline keeps its files and how apps are addressed.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Scratch space for uploads and unpacked sources.
    pub work_dir: PathBuf,
    /// Immutable release directories, `<project id>/<environment id>/v<N>`.
    pub releases_dir: PathBuf,
    /// Build caches (pip, npm, cargo), `<project id>/<environment id>`.
    pub cache_dir: PathBuf,
    /// Apps are served at `{project}.{base_domain}` / `{project}-{env}.{base_domain}`.
    pub base_domain: String,
    /// Port of the proxy, to print URLs (`http://app.localhost:PORT`).
    pub public_port: Option<u16>,
    /// How many releases per environment keep their artifact (older ones are pruned).
    pub keep_releases: usize,
    /// Accept `file://` git URLs (single-user installs and tests).
    pub allow_local_git: bool,
    /// Accept git URLs whose host resolves to loopback, private or link-local addresses.
    pub allow_private_urls: bool,
    /// Run every app as its own Unix user (`gilgal-<project>`), with its release files
    /// readable by that user's group only, and build with the system toolchains (which every
    /// user can run) instead of the server's `PATH`. Needs root.
    pub app_users: bool,
    /// With `app_users`: the namespace and cgroups builds run in (as the app's user), so a
    /// build command sees and may use no more of the host than the app's instances.
    pub build_sandbox: Option<gilgal_build::BuildSandbox>,
    /// Build releases as container images on this dockerd (the Docker runtime) instead of
    /// host artifact directories; `None` builds on the host (the process runtime).
    pub images: Option<ImageSettings>,
    /// Where add-ons' servers and backups live.
    pub addons: AddonsConfig,
    /// Where every environment's output (instances, release phase, runs, builds) is kept;
    /// fed by [`LogIngest::run_log_ingest`] and the deploy log.
    pub logs: gilgal_logs::LogStore,
    /// How often running web instances are health-checked after their deploy
    /// ([`DEFAULT_HEALTH_INTERVAL`]; tests use less).
    pub health_interval: std::time::Duration,
    /// How alert rules are evaluated and their notifications delivered.
    pub alerts: AlertsConfig,
    /// Deploy and build limits per team, checked by every change that starts a rollout.
    pub quotas: Quotas,
}

/// Failures starting a deployment (failures *during* one are recorded on the deployment).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] gilgal_store::StoreError),
    /// Local files could not be prepared.
    #[error("cannot prepare the deployment: {0}")]
    Io(#[from] std::io::Error),
    /// The request cannot be carried out as asked (unknown or pruned release, bad git URL).
    #[error("{0}")]
    Invalid(String),
    /// The request itself is malformed (a config var name or value, nothing to change, an
    /// environment promoted to itself): the caller must change it, not the situation.
    #[error("{0}")]
    Rejected(String),
    /// A quota refuses the change for now.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The runtime failed.
    #[error("runtime: {0}")]
    Runtime(String),
    /// Secrets could not be opened.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A change to what runs (scale, domain refresh) failed at one of its steps; what served
    /// keeps serving.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
}

/// The parts every service shares (store, runtime, edge, vault, settings, per-environment
/// locks), so that no service reaches into another for them; shared as `Arc<Platform>`.
pub struct Platform {
    store: Store,
    runtime: Arc<dyn Runtime>,
    /// The single writer of routes and certificates, and the link to the edge for metrics,
    /// drains and the access log.
    edge: Edge,
    config: PlatformConfig,
    vault: Arc<Vault>,
    /// One rollout at a time per environment.
    environment_locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// The per-environment ordering point of changes (deploy, config, rollback, promote,
    /// redeploy, resize, add-ons): held from reading what a change starts from until its
    /// deployment is queued, so each change starts from what the previous one left.
    intake_locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    /// Per environment, the completion of the last queued rollout: the next one waits for it,
    /// so rollouts run in the order their changes were accepted.
    rollout_tails: Mutex<HashMap<Uuid, tokio::sync::oneshot::Receiver<()>>>,
    /// Health-check failure streaks per environment, from the health watch to the alerts.
    health_streaks: Mutex<HashMap<Uuid, alerts::HealthStreak>>,
    /// When the health watch (the loop that keeps running instances converged to the
    /// desired state) last finished a round.
    last_health_round: Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Every service wired over one [`Platform`], built in one place so that the server and the
/// tests wire them alike; the server starts the loops, the API calls the use-cases.
#[derive(Debug, Clone)]
pub struct Services {
    /// The shared parts.
    pub platform: Arc<Platform>,
    /// Converges environments on what should run (plan, gate, route, drain).
    pub engine: Arc<RolloutEngine>,
    /// Builds and rolls out releases (deploy, upload, git, cancel).
    pub deployments: Arc<Deployments>,
    /// Changes to what runs that start from the live release (config, rollback, promote,
    /// redeploy, scale).
    pub changes: Arc<Changes>,
    /// Add-on provisioning, attachment, backups and restores.
    pub addons: Arc<Addons>,
    /// Deletes projects and environments, and finishes deletions a crash interrupted.
    pub teardown: Arc<Teardown>,
    /// One-off runs and the cron scheduler that starts them.
    pub runs: Arc<Runs>,
    /// Evaluates alert rules and delivers their notifications.
    pub alerts: Arc<AlertEvaluator>,
    /// Instance resource use and apps' own metrics, read on request.
    pub metrics: Arc<AppMetrics>,
    /// The start-up pass: converge after a (re)start, then stop leftovers.
    pub recovery: Arc<Recovery>,
    /// Keeps running instances healthy and converged.
    pub health_watch: Arc<HealthWatch>,
    /// Keeps add-on servers up and takes scheduled backups.
    pub addon_supervisor: Arc<AddonSupervisor>,
    /// Records the runtime's events on environments' timelines.
    pub event_recorder: Arc<EventRecorder>,
    /// Writes the runtime's output and the edge's access log to the log store.
    pub log_ingest: Arc<LogIngest>,
}

impl Services {
    /// Wires every service over `platform`. The log and event subscriptions are taken here,
    /// so nothing the runtime prints or reports before the loops start is missed.
    pub fn new(platform: Arc<Platform>) -> Self {
        let engine = Arc::new(RolloutEngine::new(platform.clone()));
        let deployments = Arc::new(Deployments::new(platform.clone(), engine.clone()));
        let changes = Arc::new(Changes::new(
            platform.clone(),
            engine.clone(),
            deployments.clone(),
        ));
        let addons = Arc::new(Addons::new(platform.clone(), changes.clone()));
        let teardown = Arc::new(Teardown::new(
            platform.clone(),
            engine.clone(),
            addons.clone(),
        ));
        let runs = Arc::new(Runs::new(platform.clone()));
        Self {
            alerts: Arc::new(AlertEvaluator::new(platform.clone())),
            metrics: Arc::new(AppMetrics::new(platform.clone())),
            recovery: Arc::new(Recovery::new(
                platform.clone(),
                engine.clone(),
                teardown.clone(),
                runs.clone(),
                deployments.clone(),
            )),
            health_watch: Arc::new(HealthWatch::new(platform.clone(), engine.clone())),
            addon_supervisor: Arc::new(AddonSupervisor::new(platform.clone(), addons.clone())),
            event_recorder: Arc::new(EventRecorder::new(platform.clone())),
            log_ingest: Arc::new(LogIngest::new(platform.clone())),
            engine,
            deployments,
            changes,
            addons,
            teardown,
            runs,
            platform,
        }
    }
}

impl Platform {
    /// The shared parts, from the server's store, runtime, proxy, settings and vault.
    pub fn new(
        store: Store,
        runtime: Arc<dyn Runtime>,
        edge: EdgeLink,
        config: PlatformConfig,
        vault: Arc<Vault>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            runtime,
            edge: Edge::new(edge),
            config,
            vault,
            environment_locks: Mutex::new(HashMap::new()),
            intake_locks: Mutex::new(HashMap::new()),
            rollout_tails: Mutex::new(HashMap::new()),
            health_streaks: Mutex::new(HashMap::new()),
            last_health_round: Mutex::new(None),
        })
    }

    /// The edge: its routes and certificates (written through the platform's use-cases)
    /// and its link (metrics, drains).
    pub fn edge(&self) -> &Edge {
        &self.edge
    }

    /// Seals and opens secret config values.
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// How many releases per environment keep their artifact.
    pub fn keep_releases(&self) -> usize {
        self.config.keep_releases
    }

    /// Scratch space for uploads and sources (same file system as the builds).
    pub fn work_dir(&self) -> &std::path::Path {
        &self.config.work_dir
    }

    /// The public URL of an environment.
    pub fn url(&self, project: &str, environment: &str) -> String {
        let host = gilgal_core::hostnames::default_hostname(
            project,
            environment,
            &self.config.base_domain,
        );
        match self.config.public_port {
            Some(80) | None => format!("http://{host}"),
            Some(port) => format!("http://{host}:{port}"),
        }
    }

    /// Which Unix user instances run as.
    pub(crate) fn run_as(&self) -> gilgal_runtime::RunAs {
        if self.config.app_users {
            gilgal_runtime::RunAs::AppUser
        } else {
            gilgal_runtime::RunAs::ServerUser
        }
    }

    pub(crate) fn environment_lock(&self, environment: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.environment_locks.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.entry(environment).or_default().clone()
    }

    /// The environment's ordering point for changes (see `changes.rs`).
    pub(crate) fn intake_lock(&self, environment: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.intake_locks.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.entry(environment).or_default().clone()
    }

    /// Joins the environment's rollout queue: returns what to wait for before rolling out
    /// (the previous rollout's end) and what to drop when done (this one's end).
    pub(crate) fn join_rollout_queue(
        &self,
        environment: Uuid,
    ) -> (
        Option<tokio::sync::oneshot::Receiver<()>>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (done, finished) = tokio::sync::oneshot::channel();
        let mut tails = match self.rollout_tails.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        (tails.insert(environment, finished), done)
    }
}

impl Deployments {
    /// Asks a deployment in progress to stop; the previous release keeps serving.
    /// Returns false when it is not running here.
    pub fn cancel(&self, deployment: Uuid) -> bool {
        match self
            .running
            .lock()
            .ok()
            .and_then(|map| map.get(&deployment).cloned())
        {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}
