//! One deployment, step by step, each step recorded as a lifecycle transition.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gilgal_build::{Artifact, BuildRequest, GitFetchOptions, GitSource, LogSink, UnpackLimits};
use gilgal_core::lifecycle::{DeploymentState, ReleaseOutcome};
use gilgal_proxy::{Backend, RouteSpec, RouteTarget};
use gilgal_runtime::{HealthCheck, InstanceId, InstanceLabels, InstanceSpec, Probe, RestartPolicy};
use gilgal_secrets::Redactor;
use gilgal_store::{ConfigChange, ConfigVarRecord, EnvironmentRecord, NewRelease};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ConfigSnapshot;
use crate::converge::{Desired, RolloutError};
use crate::{DeployError, RolloutEngine};

/// Copies build/git log lines into the deployment log until the builder closes its sink.
pub(crate) fn forward_build_log(
    mut lines: mpsc::Receiver<gilgal_build::LogLine>,
    sender: mpsc::Sender<(i64, String, String)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            let at = line
                .at
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            let stream = match line.stream {
                gilgal_build::LogStream::Stdout => "stdout",
                gilgal_build::LogStream::Stderr => "stderr",
                gilgal_build::LogStream::System => "system",
            };
            let _ = sender.send((at, stream.to_owned(), line.text)).await;
        }
    })
}

/// Why a deployment did not go live.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The user cancelled it.
    Cancelled,
    /// A step failed; the text says which and why, with a log tail.
    Failed(String),
}

/// A rollout engine failure as a deployment's: a cancel stays a cancel.
pub(crate) fn rollout_failure(err: RolloutError) -> Failure {
    match err {
        RolloutError::Cancelled => Failure::Cancelled,
        other => Failure::Failed(other.to_string()),
    }
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(err: E) -> Self {
        Failure::Failed(err.to_string())
    }
}

/// Process type of the release phase in labels and logs.
pub(crate) const RELEASE_PROCESS: &str = "release";
/// Grace period when a release's own configuration cannot be read.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// How many log lines of a failed instance a failure reason quotes.
pub(crate) const FAILURE_TAIL_LINES: usize = 20;

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Batches log lines into the store from a channel, so builders never wait on SQL per line.
/// Secret values are redacted before anything is stored.
pub(crate) struct DeployLog {
    sender: mpsc::Sender<(i64, String, String)>,
    writer: tokio::task::JoinHandle<()>,
    redactor: Arc<Redactor>,
}

impl DeployLog {
    /// Starts the writer; with `copy_to`, every (redacted) line also goes to that
    /// environment's persistent log as process type `build`.
    pub(crate) fn start(
        store: gilgal_store::Store,
        deployment: Uuid,
        redactor: Redactor,
        copy_to: Option<(gilgal_logs::LogStore, Uuid)>,
    ) -> Self {
        let (sender, mut receiver) = mpsc::channel::<(i64, String, String)>(4096);
        let redactor = Arc::new(redactor);
        let hide = Arc::clone(&redactor);
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = receiver.recv().await {
                batch.push(first);
                while batch.len() < 500 {
                    match receiver.try_recv() {
                        Ok(line) => batch.push(line),
                        Err(_) => break,
                    }
                }
                for (_, _, line) in batch.iter_mut() {
                    if let std::borrow::Cow::Owned(clean) = hide.redact(line) {
                        *line = clean;
                    }
                }
                if let Some((logs, environment)) = &copy_to {
                    for (at, stream, line) in &batch {
                        logs.append(
                            *environment,
                            gilgal_logs::LogRecord::new(
                                *at,
                                crate::logs::BUILD_PROCESS,
                                stream.as_str(),
                                line.as_str(),
                            ),
                        );
                    }
                }
                let rows: Vec<(i64, &str, &str)> = batch
                    .iter()
                    .map(|(at, s, l)| (*at, s.as_str(), l.as_str()))
                    .collect();
                if let Err(e) = store.append_deployment_logs(deployment, &rows).await {
                    tracing::warn!(%deployment, error = %e, "could not store deployment log lines");
                }
                batch.clear();
            }
        });
        Self {
            sender,
            writer,
            redactor,
        }
    }

    /// `text` with secret values hidden (for failure reasons stored outside the log).
    pub(crate) fn redact(&self, text: &str) -> String {
        self.redactor.redact(text).into_owned()
    }

    pub(crate) async fn line(&self, stream: &str, text: impl Into<String>) {
        let _ = self
            .sender
            .send((now_millis(), stream.to_owned(), text.into()))
            .await;
    }

    pub(crate) async fn system(&self, text: impl Into<String>) {
        self.line("system", text).await;
    }

    pub(crate) fn sender(&self) -> mpsc::Sender<(i64, String, String)> {
        self.sender.clone()
    }

    pub(crate) async fn close(self) {
        drop(self.sender);
        let _ = self.writer.await;
    }
}

/// The runtime health check equivalent of the app's `gilgal.toml` one.
pub(crate) fn health_check(artifact: &Artifact) -> HealthCheck {
    let configured = &artifact.config.healthcheck;
    HealthCheck {
        probe: match &configured.path {
            Some(path) => Probe::Http {
                path: path.clone(),
                host: None,
            },
            None => Probe::Tcp,
        },
        interval: configured
            .interval()
            .min(Duration::from_millis(250))
            .max(Duration::from_millis(50)),
        timeout: configured.timeout(),
        success_threshold: configured.threshold.max(1),
        boot_deadline: configured.boot_deadline(),
        ..HealthCheck::default()
    }
}

/// The spec of one instance of `process_type` from `artifact`, release `number`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn instance_spec(
    artifact: &Artifact,
    environment: &EnvironmentRecord,
    config: &BTreeMap<String, String>,
    number: u64,
    process_type: &str,
    index: u32,
    port: Option<u16>,
    run_as: gilgal_runtime::RunAs,
) -> Result<InstanceSpec, Failure> {
    let process = artifact
        .processes
        .iter()
        .find(|p| p.process_type.as_str() == process_type)
        .ok_or_else(|| {
            Failure::Failed(format!("release v{number} has no {process_type} process"))
        })?;
    let mut env = release_env(artifact, config, number);
    env.insert("GILGAL_APP".to_owned(), environment.project_name.clone());
    env.insert("GILGAL_ENV".to_owned(), environment.name.clone());
    if let Some(port) = port {
        env.insert("PORT".to_owned(), port.to_string());
    }
    let argv = process.command.expand(&|key: &str| env.get(key).cloned());
    let labels = InstanceLabels {
        app: crate::identity::app_label(environment),
        env: crate::identity::env_label(environment),
        release: number,
        process_type: process_type.to_owned(),
        index,
    };
    let mut spec = InstanceSpec::new(labels, argv, artifact.app_dir.clone());
    spec.env = env;
    spec.port = port;
    spec.run_as = run_as;
    spec.image = artifact.image.clone();
    spec.limits.memory_mb = process.size.memory_mb;
    spec.limits.cpu_shares = process.size.cpu_shares;
    if let Some(size) = environment.sizes.get(process_type) {
        if size.memory_mb.is_some() {
            spec.limits.memory_mb = size.memory_mb;
        }
        if size.cpu_millicores.is_some() {
            spec.limits.cpu_millicores = size.cpu_millicores;
        }
    }
    Ok(spec)
}

/// The environment every process of a release gets: the build's (PATH, VIRTUAL_ENV, …), then
/// the config vars, then `GILGAL_RELEASE`. A release built as an image gets nothing of the
/// host's (its image sets PATH and the like) but `HOST=0.0.0.0`: inside a container the app
/// must listen on the container's address for its published port to reach it (a config var
/// may override it).
pub(crate) fn release_env(
    artifact: &Artifact,
    config: &BTreeMap<String, String>,
    number: u64,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = if artifact.image.is_some() {
        BTreeMap::from([("HOST".to_owned(), "0.0.0.0".to_owned())])
    } else {
        artifact
            .instance_env(gilgal_runtime::DEFAULT_PATH)
            .into_iter()
            .collect()
    };
    env.extend(config.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("GILGAL_RELEASE".to_owned(), format!("v{number}"));
    env
}

/// Instance counts per process type for a release in an environment: what `gilgal scale` set,
/// else the release's `gilgal.toml` count (the release phase never runs as an instance; `web`
/// runs at least once by default when the app has one).
pub(crate) fn formation_of(
    artifact: &Artifact,
    environment: &EnvironmentRecord,
) -> BTreeMap<String, u32> {
    artifact
        .processes
        .iter()
        .filter(|p| p.process_type.as_str() != RELEASE_PROCESS)
        .map(|p| {
            let name = p.process_type.as_str();
            let count = match environment.formation.get(name) {
                Some(scaled) => *scaled,
                None if p.process_type.is_web() => p.size.count.max(1),
                None => p.size.count,
            };
            (name.to_owned(), count)
        })
        .collect()
}

/// How a new release takes over from the live one.
#[derive(Debug, Clone, Default)]
pub enum Strategy {
    /// What the release's `gilgal.toml` `[deploy] strategy` says for a deploy of new source
    /// (immediate when it says nothing); a reused release (rollback, config change,
    /// promotion…) always rolls out at once.
    #[default]
    AsConfigured,
    /// All traffic moves once every new instance is healthy.
    Immediate,
    /// A share of traffic, step by step, judged against the live release (see
    /// [`gilgal_core::canary`]); a failing canary is rolled back on its own.
    Canary(gilgal_core::canary::Policy),
    /// The new release on a private hostname first; its smoke checks must pass before all
    /// traffic moves (see `blue_green.rs`).
    BlueGreen(Vec<gilgal_core::smoke::SmokeCheck>),
}

/// Where a deployment's artifact comes from.
#[derive(Debug, Clone)]
pub enum DeploySource {
    /// A gzipped tarball of the source, already saved at this path (removed afterwards).
    Upload(PathBuf),
    /// A git repository at a branch, tag or commit (cloned with an argument vector).
    Git(GitSource),
    /// An existing release's artifact, started again without a build.
    Release(ReuseRelease),
    /// An existing Docker image (`repo:tag` or an image id), run without a build; the Docker
    /// runtime only.
    Image(String),
}

/// Why an existing artifact is started again; decides whose config it gets and whether the
/// release phase runs by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReuseKind {
    /// The same artifact with the environment's current config (after a config change).
    ConfigChange,
    /// The same artifact with the current config, at the user's request.
    Redeploy,
    /// An earlier release: its artifact *and* its config snapshot.
    Rollback,
    /// Another environment's live artifact with this environment's config.
    Promote,
    /// The live release again with new process sizes.
    Resize,
}

impl ReuseKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::ConfigChange => "config",
            Self::Redeploy => "redeploy",
            Self::Rollback => "rollback",
            Self::Promote => "promote",
            Self::Resize => "resize",
        }
    }
}

/// A deployment of an existing artifact.
#[derive(Debug, Clone)]
pub struct ReuseRelease {
    /// Why.
    pub kind: ReuseKind,
    /// The environment the release belongs to (differs from the target only for promotion).
    pub from_environment: Uuid,
    /// Its number there. A config change or a resize of the environment's own release
    /// starts from whatever is live when its rollout begins, not from this number.
    pub number: u64,
    /// Run the artifact's release phase before starting it (default: only for promotion).
    pub run_release_phase: bool,
    /// Shown in the release history.
    pub description: String,
}

impl DeploySource {
    fn to_json(&self) -> String {
        let value = match self {
            Self::Upload(_) => serde_json::json!({"kind": "upload"}),
            Self::Git(git) => {
                // Stored and shown: never with the credential a URL may carry.
                let url = gilgal_build::git::redact_urls(&git.url);
                serde_json::json!({"kind": "git", "url": url, "ref": git.reference})
            }
            Self::Release(reuse) => serde_json::json!({
                "kind": reuse.kind.as_str(),
                "environment_id": reuse.from_environment,
                "release": reuse.number,
            }),
            Self::Image(reference) => serde_json::json!({"kind": "image", "image": reference}),
        };
        value.to_string()
    }
}

/// What a deployment runs: an artifact, where it lives, and the release it becomes.
pub(crate) struct Prepared {
    pub(crate) artifact: Artifact,
    pub(crate) artifact_dir: PathBuf,
    pub(crate) config: ConfigSnapshot,
    pub(crate) run_release_phase: bool,
    pub(crate) description: String,
}

/// Builds releases and rolls them out (upload, git, image, reuse), in the order their
/// changes were accepted; the use-cases that record a deployment go through it.
#[derive(Debug)]
pub struct Deployments {
    pub(crate) platform: Arc<crate::Platform>,
    pub(crate) engine: Arc<crate::RolloutEngine>,
    /// Cancellation tokens of deployments in progress.
    pub(crate) running: std::sync::Mutex<std::collections::HashMap<Uuid, CancellationToken>>,
    /// Canaries in progress, by environment: their status and `promote` signal.
    pub(crate) canaries: crate::canary::CanaryRegistry,
}

impl Deployments {
    pub(crate) fn new(platform: Arc<crate::Platform>, engine: Arc<crate::RolloutEngine>) -> Self {
        Self {
            platform,
            engine,
            running: std::sync::Mutex::default(),
            canaries: crate::canary::CanaryRegistry::default(),
        }
    }

    /// Whether this server would fetch from `url`: an accepted transport (`file://` only
    /// with `--allow-local-git`) and, unless private URLs are allowed, a host that resolves to
    /// public addresses only. Checked before anything is recorded, and when a webhook is made.
    pub async fn check_git_url(&self, url: &str) -> Result<(), DeployError> {
        self.check_git_source(url, None).await
    }

    /// [`Deployments::check_git_url`], and the ref when there is one (before any DNS lookup).
    async fn check_git_source(
        &self,
        url: &str,
        reference: Option<&str>,
    ) -> Result<(), DeployError> {
        gilgal_build::git::validate_url(url, self.platform.config.allow_local_git)
            .and_then(|()| reference.map_or(Ok(()), gilgal_build::git::validate_ref))
            .map_err(|e| DeployError::Invalid(e.to_string()))?;
        if !self.platform.config.allow_private_urls {
            crate::ssrf::check_public(url)
                .await
                .map_err(DeployError::Invalid)?;
        }
        Ok(())
    }

    /// Records a deployment of `source` to `environment` and runs it in the background, after
    /// every change accepted before it; returns its id at once. A quota that refuses it, or
    /// an existing release that cannot be started (pruned, unknown), is refused here, before
    /// anything is recorded.
    pub async fn deploy(
        self: &Arc<Self>,
        environment: EnvironmentRecord,
        source: DeploySource,
    ) -> Result<Uuid, DeployError> {
        self.deploy_with(environment, source, Strategy::AsConfigured)
            .await
    }

    /// [`Deployments::deploy`] with a release strategy (a canary) asked for by the caller.
    pub async fn deploy_with(
        self: &Arc<Self>,
        environment: EnvironmentRecord,
        source: DeploySource,
        strategy: Strategy,
    ) -> Result<Uuid, DeployError> {
        self.platform
            .check_quota(environment.project_id, source.work())
            .await?;
        let intake = self.platform.intake_lock(environment.id);
        let _in_order = intake.lock().await;
        self.enqueue_with(environment, source, strategy).await
    }

    /// [`Deployments::deploy`] for a use-case that has checked the quota itself: takes the
    /// environment's intake lock and queues the rollout.
    pub(crate) async fn queue_in_order(
        self: &Arc<Self>,
        environment: EnvironmentRecord,
        source: DeploySource,
    ) -> Result<Uuid, DeployError> {
        let intake = self.platform.intake_lock(environment.id);
        let _in_order = intake.lock().await;
        self.enqueue(environment, source).await
    }

    /// [`Deployments::deploy`] for a caller that already holds the environment's intake lock.
    pub(crate) async fn enqueue(
        self: &Arc<Self>,
        environment: EnvironmentRecord,
        source: DeploySource,
    ) -> Result<Uuid, DeployError> {
        self.enqueue_with(environment, source, Strategy::Immediate)
            .await
    }

    async fn enqueue_with(
        self: &Arc<Self>,
        environment: EnvironmentRecord,
        source: DeploySource,
        strategy: Strategy,
    ) -> Result<Uuid, DeployError> {
        match &source {
            DeploySource::Release(reuse) => {
                let release = self
                    .platform
                    .store
                    .release(reuse.from_environment, reuse.number)
                    .await
                    .map_err(|e| match e {
                        gilgal_store::StoreError::NotFound => {
                            DeployError::Invalid(format!("there is no release v{}", reuse.number))
                        }
                        other => other.into(),
                    })?;
                if release.pruned {
                    return Err(DeployError::Invalid(format!(
                        "release v{} was pruned (only the last {} releases keep their build); deploy the source again",
                        reuse.number, self.platform.config.keep_releases
                    )));
                }
            }
            DeploySource::Git(git) => {
                self.check_git_source(&git.url, Some(&git.reference))
                    .await?;
            }
            DeploySource::Image(reference) => {
                if self.platform.config.images.is_none() {
                    return Err(DeployError::Invalid(
                        "deploying an existing image needs the Docker runtime (gilgal server --runtime docker)".to_owned(),
                    ));
                }
                gilgal_docker::validate_reference(reference)
                    .map_err(|e| DeployError::Invalid(e.to_string()))?;
            }
            DeploySource::Upload(_) => {}
        }
        let id = self
            .platform
            .store
            .create_deployment(environment.project_id, environment.id, &source.to_json())
            .await?;
        let token = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(id, token.clone());
        }
        let (previous, done) = self.platform.join_rollout_queue(environment.id);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Some(previous) = previous {
                // Ended (or dropped) when the rollout queued before this one is over.
                let _ = previous.await;
            }
            let redactor = match this.platform.vault.current(environment.id).await {
                Ok(config) => config.redactor,
                Err(e) => {
                    tracing::error!(deployment = %id, error = %e, "cannot open the environment's config");
                    Redactor::default()
                }
            };
            let log = DeployLog::start(
                this.platform.store.clone(),
                id,
                redactor,
                Some((this.platform.config.logs.clone(), environment.id)),
            );
            let result = this
                .run(id, &environment, &source, &strategy, &token, &log)
                .await;
            if let DeploySource::Upload(tarball) = &source {
                let _ = tokio::fs::remove_file(tarball).await;
            }
            let _ =
                tokio::fs::remove_dir_all(this.platform.config.work_dir.join(id.to_string())).await;
            this.conclude(id, &environment, result, log).await;
            drop(done);
        });
        Ok(id)
    }

    /// Records how a deployment ended: an event on the timeline, the final state with its
    /// reason (a success recorded `Live` itself), the log closed, the cancel token dropped.
    pub(crate) async fn conclude(
        &self,
        id: Uuid,
        environment: &EnvironmentRecord,
        result: Result<(), Failure>,
        log: DeployLog,
    ) {
        let release = match self.platform.store.deployment_by_id(id).await {
            Ok(record) => record
                .release_number
                .map(|n| format!("v{n} "))
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        let said = match &result {
            Ok(()) => format!("{release}is live (deployment {id})"),
            Err(Failure::Cancelled) => format!("deployment {id} was cancelled"),
            Err(Failure::Failed(reason)) => {
                format!("deployment {id} {release}failed: {}", log.redact(reason))
            }
        };
        self.platform.event(environment.id, "deploy", said).await;
        if let Err(failure) = result {
            let (state, note) = match failure {
                Failure::Cancelled => (
                    DeploymentState::Cancelled,
                    "cancelled; the previous release kept serving".to_owned(),
                ),
                Failure::Failed(reason) => (DeploymentState::Failed, log.redact(&reason)),
            };
            log.system(format!("deployment {state}: {note}")).await;
            if let Err(e) = self
                .platform
                .store
                .transition_deployment(id, state, Some(&note))
                .await
            {
                tracing::error!(deployment = %id, error = %e, "could not record the deployment's end");
            }
        }
        log.close().await;
        if let Ok(mut running) = self.running.lock() {
            running.remove(&id);
        }
    }

    /// Records a deployment of the uploaded tarball (see [`Deployments::deploy`]).
    pub async fn deploy_upload(
        self: &Arc<Self>,
        environment: EnvironmentRecord,
        tarball: PathBuf,
    ) -> Result<Uuid, DeployError> {
        self.deploy(environment, DeploySource::Upload(tarball))
            .await
    }

    async fn step(
        &self,
        id: Uuid,
        to: DeploymentState,
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<(), Failure> {
        if token.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        self.platform
            .store
            .transition_deployment(id, to, None)
            .await?;
        log.system(format!("-----> {to}")).await;
        Ok(())
    }

    async fn run(
        &self,
        id: Uuid,
        environment: &EnvironmentRecord,
        source: &DeploySource,
        strategy: &Strategy,
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<(), Failure> {
        let lock = self.platform.environment_lock(environment.id);
        let _one_rollout_at_a_time = lock.lock().await;
        if token.is_cancelled() {
            return Err(Failure::Cancelled);
        }
        // Re-read: the formation, sizes or live release may have changed while this
        // deployment waited.
        let environment = &self
            .platform
            .store
            .environment_by_id(environment.id)
            .await?;
        let prepared = match source {
            DeploySource::Upload(tarball) => {
                self.step(id, DeploymentState::Building, token, log).await?;
                let source_dir = self.unpack(id, tarball, log).await?;
                self.build(
                    environment,
                    source_dir,
                    "Deploy (upload)".to_owned(),
                    token,
                    log,
                )
                .await?
            }
            DeploySource::Git(git) => {
                self.step(id, DeploymentState::Building, token, log).await?;
                let source_dir = self
                    .platform
                    .config
                    .work_dir
                    .join(id.to_string())
                    .join("src");
                let (lines_tx, lines_rx) = mpsc::channel::<gilgal_build::LogLine>(1024);
                let forward = forward_build_log(lines_rx, log.sender());
                let options = GitFetchOptions {
                    allow_local: self.platform.config.allow_local_git,
                    ..GitFetchOptions::default()
                };
                let fetched = gilgal_build::fetch_git(
                    git,
                    &source_dir,
                    &options,
                    token.child_token(),
                    LogSink::new(lines_tx),
                )
                .await;
                let _ = forward.await;
                let checkout = fetched.map_err(|e| match e {
                    gilgal_build::GitError::Git(gilgal_build::BuildError::Cancelled { .. }) => {
                        Failure::Cancelled
                    }
                    other => Failure::Failed(format!("git fetch failed: {other}")),
                })?;
                let shown_url = gilgal_build::git::redact_urls(&git.url);
                log.system(format!(
                    "fetched {shown_url} at {} ({} files)",
                    checkout.commit, checkout.summary.files
                ))
                .await;
                let short = checkout.commit.chars().take(12).collect::<String>();
                let description = format!("Deploy {shown_url}@{} ({short})", git.reference);
                self.build(environment, source_dir, description, token, log)
                    .await?
            }
            DeploySource::Release(reuse) => self.reuse(environment, reuse, log).await?,
            DeploySource::Image(reference) => {
                self.step(id, DeploymentState::Building, token, log).await?;
                let images = self.platform.config.images.as_ref().ok_or_else(|| {
                    Failure::Failed("this server does not run the Docker runtime".to_owned())
                })?;
                self.adopt_image(images, environment, reference, log)
                    .await?
            }
        };
        let config = self
            .platform
            .vault
            .resolve(environment.id, &prepared.config)
            .await
            .map_err(|e| Failure::Failed(format!("cannot open the release's config: {e}")))?;
        let manifest = serde_json::to_string(&prepared.artifact)?;
        let number = self
            .platform
            .store
            .create_release(
                environment.id,
                NewRelease {
                    artifact_dir: &prepared.artifact_dir.to_string_lossy(),
                    artifact_json: &manifest,
                    config_json: &prepared.config.to_json(),
                    description: &prepared.description,
                },
            )
            .await?;
        self.platform
            .store
            .set_deployment_release(id, number)
            .await?;
        log.system(format!("release v{number}: {}", prepared.description))
            .await;
        let artifact = &prepared.artifact;

        if prepared.run_release_phase {
            if let Some(release) = &artifact.release {
                self.step(id, DeploymentState::Releasing, token, log)
                    .await?;
                self.release_phase(
                    environment,
                    artifact,
                    &config.vars,
                    number,
                    release,
                    token,
                    log,
                )
                .await?;
            }
        }

        self.step(id, DeploymentState::Starting, token, log).await?;
        let replaced = match source {
            DeploySource::Release(ReuseRelease {
                kind: ReuseKind::Rollback,
                ..
            }) => ReleaseOutcome::RolledBack,
            _ => ReleaseOutcome::Superseded,
        };
        let desired = Desired {
            release: number,
            artifact,
            vars: &config.vars,
            aside: None,
        };
        // A deploy of new source follows its gilgal.toml's `[deploy]` unless the request
        // chose; reusing a release (rollback, config change, promotion…) is never a canary.
        let from_config = match (strategy, source) {
            (Strategy::AsConfigured, DeploySource::Release(_)) => Some(Strategy::Immediate),
            (Strategy::AsConfigured, _) => {
                let config = &artifact.config;
                match (&config.canary, &config.blue_green) {
                    (Some(canary), _) => Some(Strategy::Canary(
                        crate::canary::policy_from_settings(canary).map_err(Failure::Failed)?,
                    )),
                    (None, Some(blue_green)) => Some(Strategy::BlueGreen(
                        blue_green
                            .smoke
                            .iter()
                            .map(|c| gilgal_core::smoke::parse_smoke(c))
                            .collect::<Result<_, _>>()
                            .map_err(|e| {
                                Failure::Failed(format!("gilgal.toml [deploy] smoke: {e}"))
                            })?,
                    )),
                    (None, None) => Some(Strategy::Immediate),
                }
            }
            _ => None,
        };
        let strategy = match &from_config {
            Some(Strategy::Immediate) | None => from_config.as_ref().unwrap_or(strategy),
            Some(chosen) => {
                let name = match chosen {
                    Strategy::Canary(_) => "canary",
                    _ => "blue-green",
                };
                log.system(format!(
                    "gilgal.toml asks for a {name} deploy ([deploy] strategy = \"{name}\")"
                ))
                .await;
                chosen
            }
        };
        match strategy {
            Strategy::Canary(policy) => {
                self.roll_out_canary(id, environment, &desired, policy, token, log)
                    .await?
            }
            Strategy::BlueGreen(smoke) => {
                self.roll_out_blue_green(id, environment, &desired, smoke, token, log)
                    .await?
            }
            Strategy::Immediate | Strategy::AsConfigured => {
                self.roll_out(id, environment, &desired, replaced, token, log, false)
                    .await?
            }
        }
        self.prune_releases(environment, number).await;
        Ok(())
    }

    /// Unpacks an uploaded tarball into the deployment's scratch dir, refusing unsafe entries.
    async fn unpack(&self, id: Uuid, tarball: &Path, log: &DeployLog) -> Result<PathBuf, Failure> {
        let source = self
            .platform
            .config
            .work_dir
            .join(id.to_string())
            .join("src");
        tokio::fs::create_dir_all(&source).await?;
        let (from, into) = (tarball.to_path_buf(), source.clone());
        let summary = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&from)?;
            gilgal_build::unpack_tar_gz(
                std::io::BufReader::new(file),
                &into,
                &UnpackLimits::default(),
            )
            .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await?
        .map_err(|e| Failure::Failed(format!("the upload was refused: {e}")))?;
        log.system(format!(
            "unpacked {} files ({} bytes)",
            summary.files, summary.total_bytes
        ))
        .await;
        Ok(source)
    }

    /// Builds `source` into the next release directory of the environment.
    async fn build(
        &self,
        environment: &EnvironmentRecord,
        source: PathBuf,
        description: String,
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<Prepared, Failure> {
        if let Some(images) = &self.platform.config.images {
            return self
                .build_image(images, environment, source, description, token, log)
                .await;
        }
        let number = self
            .platform
            .store
            .next_release_number(environment.id)
            .await?;
        let artifact_dir =
            crate::identity::environment_dir(&self.platform.config.releases_dir, environment)
                .join(format!("v{number}"));
        if artifact_dir.exists() {
            // Left by a build that crashed before its release was recorded.
            tokio::fs::remove_dir_all(&artifact_dir).await?;
        }
        if let Some(parent) = artifact_dir.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let cache_dir =
            crate::identity::environment_dir(&self.platform.config.cache_dir, environment);
        let mut request = BuildRequest::new(source, artifact_dir.clone(), cache_dir);
        request.environment = environment.name.clone();
        request.cancel = token.child_token();
        if self.platform.config.app_users {
            // The build runs as the app's own user, hidden from Gilgal's data as its instances
            // are: build with interpreters every user can run.
            let (uid, gid) =
                gilgal_runtime::app_user_ids(&crate::identity::app_label(environment)).await?;
            request.run_as = Some(gilgal_build::BuildUser { uid, gid });
            request.sandbox = self.platform.config.build_sandbox.clone();
            request
                .env
                .insert("PATH".to_owned(), gilgal_runtime::DEFAULT_PATH.to_owned());
        }
        let (lines_tx, lines_rx) = mpsc::channel::<gilgal_build::LogLine>(1024);
        let forward = forward_build_log(lines_rx, log.sender());
        let built = gilgal_build::build(request, LogSink::new(lines_tx)).await;
        let _ = forward.await;
        let artifact = match built {
            Ok(artifact) => artifact,
            Err(gilgal_build::BuildError::Cancelled { .. }) => return Err(Failure::Cancelled),
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&artifact_dir).await;
                return Err(Failure::Failed(format!(
                    "build failed: {e}\n{}",
                    e.log_tail().join("\n")
                )));
            }
        };
        log.system(format!("built in {} ms", artifact.build_millis))
            .await;
        self.engine
            .share_with_app(environment, &artifact_dir)
            .await?;
        let records = self.platform.store.config_vars(environment.id).await?;
        Ok(Prepared {
            artifact,
            artifact_dir,
            config: ConfigSnapshot::from_records(&records),
            run_release_phase: true,
            description,
        })
    }

    /// An existing release's artifact, with the config its kind calls for.
    async fn reuse(
        &self,
        environment: &EnvironmentRecord,
        reuse: &ReuseRelease,
        log: &DeployLog,
    ) -> Result<Prepared, Failure> {
        // A config change or resize applies to whatever is live when its turn comes (the
        // rollouts queued before it may have changed that), not to what was live when it
        // was accepted.
        let number = match (reuse.kind, environment.live_release) {
            (ReuseKind::ConfigChange | ReuseKind::Resize, Some(live))
                if reuse.from_environment == environment.id =>
            {
                live
            }
            _ => reuse.number,
        };
        let release = self
            .platform
            .store
            .release(reuse.from_environment, number)
            .await?;
        if release.pruned {
            return Err(Failure::Failed(format!(
                "release v{number} was pruned; deploy the source again"
            )));
        }
        let mut artifact: Artifact = serde_json::from_str(&release.artifact_json)?;
        let config = match reuse.kind {
            ReuseKind::Rollback => ConfigSnapshot::parse(&release.config_json)?,
            _ => ConfigSnapshot::from_records(
                &self.platform.store.config_vars(environment.id).await?,
            ),
        };
        if reuse.from_environment != environment.id && artifact.image.is_none() {
            // Same bytes, this environment's `gilgal.toml` overrides (health check, sizes…).
            if let Ok(app_config) = gilgal_build::AppConfig::load(&artifact.app_dir) {
                artifact.config = app_config.for_environment(&environment.name);
            }
        }
        let artifact_dir = PathBuf::from(&release.artifact_dir);
        if !artifact_dir.starts_with(crate::identity::project_dir(
            &self.platform.config.releases_dir,
            environment,
        )) {
            // Built before directories and users were keyed by ids: its group is a name's.
            self.engine
                .share_with_app(environment, &artifact_dir)
                .await?;
        }
        log.system(format!(
            "reusing the artifact of release v{number} (no build)"
        ))
        .await;
        Ok(Prepared {
            artifact,
            artifact_dir,
            config,
            run_release_phase: reuse.run_release_phase,
            description: reuse.description.clone(),
        })
    }
}

impl RolloutEngine {
    /// With per-app users: the project's release tree becomes `root:<app group>` 0750 and the
    /// artifact (built as the app's user) root's and group-readable, so the app can read (not
    /// change) its own releases and no other app can reach them. The app's user is its project
    /// id's; the tree is the first directory under the releases dir (`<project id>`, or a project
    /// name for releases built before directories were keyed by ids). Image artifacts are left
    /// alone.
    pub(crate) async fn share_with_app(
        &self,
        environment: &EnvironmentRecord,
        artifact_dir: &Path,
    ) -> Result<(), Failure> {
        if !self.platform.config.app_users {
            return Ok(());
        }
        let Some(top) = artifact_dir
            .strip_prefix(&self.platform.config.releases_dir)
            .ok()
            .and_then(|rest| rest.components().next())
        else {
            return Ok(());
        };
        let project_dir = self.platform.config.releases_dir.join(top);
        let (uid, gid) =
            gilgal_runtime::app_user_ids(&crate::identity::app_label(environment)).await?;
        let artifact_dir = artifact_dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            crate::isolation::share_tree(&project_dir, &artifact_dir, uid, gid)
        })
        .await?
        .map_err(|e| Failure::Failed(format!("cannot share the release with the app's user: {e}")))
    }
}

impl Deployments {
    /// Makes an environment's config vars exactly those of `snapshot`.
    pub(crate) async fn restore_config(
        &self,
        environment: &EnvironmentRecord,
        snapshot: &ConfigSnapshot,
    ) -> Result<(), DeployError> {
        let current = self.platform.store.config_vars(environment.id).await?;
        let mut changes: Vec<ConfigChange> = current
            .iter()
            .filter(|var| !snapshot.vars.contains_key(&var.name))
            .map(|var| ConfigChange::Unset(var.name.clone()))
            .collect();
        changes.extend(snapshot.vars.iter().map(|(name, var)| {
            ConfigChange::Set(ConfigVarRecord {
                name: name.clone(),
                value: var.value.clone(),
                secret: var.secret,
            })
        }));
        self.platform
            .store
            .change_config_vars(environment.id, &changes)
            .await?;
        Ok(())
    }

    /// Keeps the artifacts of the newest `keep_releases` releases (and the live one); older
    /// ones are deleted once no release of any environment still uses them.
    async fn prune_releases(&self, environment: &EnvironmentRecord, live: u64) {
        let keep = self.platform.config.keep_releases.max(1);
        let releases = match self.platform.store.releases(environment.id).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list releases to prune");
                return;
            }
        };
        for release in releases.iter().skip(keep) {
            if release.pruned || release.number == live {
                continue;
            }
            if let Err(e) = self
                .platform
                .store
                .mark_release_pruned(environment.id, release.number)
                .await
            {
                tracing::warn!(error = %e, "cannot mark a release pruned");
                continue;
            }
            match self
                .platform
                .store
                .artifact_in_use(&release.artifact_dir)
                .await
            {
                Ok(false) => {
                    let dir = PathBuf::from(&release.artifact_dir);
                    if dir.starts_with(&self.platform.config.releases_dir) {
                        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                            tracing::warn!(dir = %dir.display(), error = %e, "cannot delete a pruned artifact");
                        }
                    } else if let Some(images) = &self.platform.config.images {
                        crate::images::remove_tag(images, &release.artifact_dir).await;
                    }
                }
                Ok(true) => {}
                Err(e) => tracing::warn!(error = %e, "cannot check artifact use"),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn release_phase(
        &self,
        environment: &EnvironmentRecord,
        artifact: &Artifact,
        config: &BTreeMap<String, String>,
        number: u64,
        release: &gilgal_build::builder::ReleasePhase,
        token: &CancellationToken,
        log: &DeployLog,
    ) -> Result<(), Failure> {
        let env = release_env(artifact, config, number);
        let argv = release.command.expand(&|key: &str| env.get(key).cloned());
        log.system(format!("running release command: {}", release.command))
            .await;
        let labels = InstanceLabels {
            app: crate::identity::app_label(environment),
            env: crate::identity::env_label(environment),
            release: number,
            process_type: RELEASE_PROCESS.to_owned(),
            index: 0,
        };
        let mut spec = InstanceSpec::new(labels, argv, artifact.app_dir.clone());
        spec.env = env;
        spec.restart = RestartPolicy::Never;
        spec.run_as = self.platform.run_as();
        spec.image = artifact.image.clone();
        let mut handle = self.platform.runtime.run_oneoff(spec).await?;
        let timeout = Duration::from_secs(release.timeout_secs.max(1));
        let waited = tokio::select! {
            exit = handle.wait(Some(timeout)) => exit,
            _ = token.cancelled() => {
                handle.cancel(Duration::from_secs(5)).await;
                return Err(Failure::Cancelled);
            }
        };
        while let Some(line) = handle.next_line().await {
            let stream = match line.stream {
                gilgal_runtime::LogStream::Stdout => "stdout",
                gilgal_runtime::LogStream::Stderr => "stderr",
            };
            log.line(stream, line.line).await;
        }
        let exit = waited.map_err(|e| Failure::Failed(format!("release command failed: {e}")))?;
        if !exit.success() {
            return Err(Failure::Failed(format!(
                "release command failed: {}",
                exit.describe()
            )));
        }
        Ok(())
    }

    /// Rolls the environment onto a new release through the rollout engine, recording the
    /// deployment's steps between the engine's: Starting → (gate) → Healthy → (route) → Live,
    /// and the previous deployment Draining → Retired around the drain.
    /// A canary that walked all its steps comes here too (`after_canary`): its web instances
    /// stay (the plan finds them), the rest of its formation starts, and it goes live.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn roll_out(
        &self,
        id: Uuid,
        environment: &EnvironmentRecord,
        desired: &Desired<'_>,
        replaced: ReleaseOutcome,
        token: &CancellationToken,
        log: &DeployLog,
        after_canary: bool,
    ) -> Result<(), Failure> {
        let number = desired.release;
        let plan = self
            .engine
            .plan(environment, desired, &[])
            .await
            .map_err(rollout_failure)?;
        let started = self
            .engine
            .start_gated(environment, desired, &plan, token, Some(log))
            .await
            .map_err(rollout_failure)?;
        let routed = async {
            if !after_canary {
                self.step(id, DeploymentState::Healthy, token, log).await?;
            }
            let mut serving = plan.staying().to_vec();
            serving.extend(started.iter().cloned());
            self.engine
                .switch_route(environment, desired.release, desired.artifact, &serving)
                .await
                .map_err(rollout_failure)
        }
        .await;
        if let Err(failure) = routed {
            self.engine.stop_started(&started).await;
            return Err(failure);
        }
        tracing::info!(deployment = %id, release = number, "route switched");
        let previous = self.platform.store.live_deployment(environment.id).await?;
        self.platform
            .store
            .set_live_release(environment.id, number, replaced)
            .await?;
        self.platform
            .store
            .transition_deployment(id, DeploymentState::Live, None)
            .await?;
        log.system(format!(
            "release v{number} is live at {}",
            self.platform
                .url(&environment.project_name, &environment.name)
        ))
        .await;
        if let Some(previous) = previous {
            let _ = self
                .platform
                .store
                .transition_deployment(previous, DeploymentState::Draining, None)
                .await;
        }
        tracing::info!(deployment = %id, leaving = plan.leaving().len(), "draining the previous release");
        self.engine
            .drain_and_stop(environment, plan.leaving())
            .await;
        if let Some(previous) = previous {
            log.system("previous release drained and stopped").await;
            let _ = self
                .platform
                .store
                .transition_deployment(previous, DeploymentState::Retired, None)
                .await;
        }
        Ok(())
    }
}

impl RolloutEngine {
    /// The route serving `artifact`'s web instances of release `release` (or its static
    /// files); the backends carry the release, so the edge keeps figures per release.
    pub(crate) fn route_for(
        &self,
        environment: &EnvironmentRecord,
        domains: &[String],
        release: u64,
        artifact: &Artifact,
        instances: &[(InstanceId, Option<SocketAddr>)],
    ) -> Option<RouteSpec> {
        let mut hosts = vec![gilgal_core::hostnames::default_hostname(
            &environment.project_name,
            &environment.name,
            &self.platform.config.base_domain,
        )];
        hosts.extend(domains.iter().cloned());
        let id = crate::identity::route_id(environment);
        if let Some(static_dir) = &artifact.static_dir {
            let mut route = RouteSpec::upstream(id, hosts, vec![]);
            route.target = RouteTarget::Static {
                root: static_dir.clone(),
                fallback: None,
            };
            return Some(route);
        }
        let backends: Vec<Backend> = instances
            .iter()
            .filter_map(|(instance, addr)| {
                addr.map(|a| {
                    Backend::in_group(
                        instance.as_str(),
                        a,
                        crate::identity::release_group(release),
                    )
                })
            })
            .collect();
        (!backends.is_empty()).then(|| RouteSpec::upstream(id, hosts, backends))
    }

    /// The grace period configured by release `number` (its own `gilgal.toml`).
    pub(crate) async fn grace_period_of(
        &self,
        environment: &EnvironmentRecord,
        number: u64,
    ) -> Duration {
        match self.platform.store.release(environment.id, number).await {
            Ok(release) => serde_json::from_str::<Artifact>(&release.artifact_json)
                .map(|a| a.config.grace_period())
                .unwrap_or(DEFAULT_GRACE),
            Err(_) => DEFAULT_GRACE,
        }
    }
}
