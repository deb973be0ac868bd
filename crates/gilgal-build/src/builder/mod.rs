//! Turns an unpacked source tree into an immutable, self-contained release directory.
//!
//! Layout of a release directory (`BuildRequest::artifact_dir`):
//! - `app/` — the source plus build products (`.venv`, `node_modules`, `target/release`);
//!   the working directory of every instance;
//! - `artifact.json` — the [`Artifact`] describing how to run it, written last and atomically,
//!   so a directory without it is an unfinished build.
//!
//! Every command runs from an argument vector (never a shell), in a controlled environment,
//! with its output streamed line by line to the [`LogSink`], a timeout per step, and its whole
//! process group killed on timeout, cancellation or completion.

mod cargo;
mod dep_cache;
mod fsops;
mod log;
mod node;
mod python;
pub(crate) mod runner;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use self::log::{LogLine, LogSink, LogStream};
use self::runner::StepRunner;
pub use self::runner::LOG_TAIL_LINES;
use crate::command::CommandLine;
use crate::config::{AppConfig, ConfigError, EffectiveConfig, ProcessSize};
use crate::detect::{resolve_stack, DetectError, Stack};
use crate::procfile::{ProcessType, Procfile, ProcfileError};

/// Name of the metadata file inside a release directory.
pub const ARTIFACT_FILE_NAME: &str = "artifact.json";
/// Name of the application directory inside a release directory.
pub const APP_DIR_NAME: &str = "app";
/// Default time limit of one build step.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Version of the `artifact.json` format.
pub const ARTIFACT_FORMAT_VERSION: u32 = 1;

/// Everything one build needs; exists so the API can describe a build without the builder
/// knowing about projects or the store.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The unpacked source. It is *moved* into the release directory (renamed when on the same
    /// file system, copied otherwise), so pass a directory the build may consume.
    pub source_dir: PathBuf,
    /// The release directory to create; must not exist or be empty. Its path is final: Python
    /// venvs are built in place and are not relocatable.
    pub artifact_dir: PathBuf,
    /// Per-app cache kept across builds (pip/npm caches, cached venvs, cargo target dir).
    pub cache_dir: PathBuf,
    /// The environment deployed to; selects `[environments.<name>]` overrides.
    pub environment: String,
    /// The stack, if already decided by the caller; `None` detects it (gilgal.toml first).
    pub stack: Option<Stack>,
    /// Extra variables for build commands (the app's config vars). Gilgal's own environment is
    /// not passed through, apart from PATH, HOME, locale, proxy and toolchain variables.
    pub env: BTreeMap<String, String>,
    /// Time limit of each build step.
    pub step_timeout: Duration,
    /// Cancels the build: the running step's process group is killed at once.
    pub cancel: CancellationToken,
    /// Runs every build command as this user instead of Gilgal's own (recommended: the app's
    /// own Unix user, so build scripts such as npm `postinstall` or `build.rs` cannot touch
    /// Gilgal's data). The release and cache directories are then chowned to it, and `HOME`
    /// is `<cache_dir>/home`. The toolchains must be readable by that user.
    pub run_as: Option<BuildUser>,
    /// Runs every build command in a mount namespace and cgroups, as instances run
    /// (recommended with `run_as`); the release and cache directories stay visible.
    pub sandbox: Option<BuildSandbox>,
}

/// The confinement of build commands beyond their user: what they may see of the host and how
/// much of it they may use. All steps of one build share one set of cgroups, and nothing a
/// step starts outlives it.
#[derive(Debug, Clone, Default)]
pub struct BuildSandbox {
    /// Hidden directories and private `/tmp`, as for the app's instances.
    pub mounts: gilgal_runtime::MountIsolation,
    /// Where cgroups live.
    pub cgroups: gilgal_runtime::CgroupConfig,
    /// Limits of the whole build.
    pub limits: gilgal_runtime::ResourceLimits,
}

/// A Unix user and group that build commands run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildUser {
    /// User id.
    pub uid: u32,
    /// Primary group id; supplementary groups are dropped.
    pub gid: u32,
}

impl BuildRequest {
    /// A request with defaults: environment `production`, detected stack, no extra variables,
    /// [`DEFAULT_STEP_TIMEOUT`], a fresh cancellation token.
    pub fn new(
        source_dir: impl Into<PathBuf>,
        artifact_dir: impl Into<PathBuf>,
        cache_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            source_dir: source_dir.into(),
            artifact_dir: artifact_dir.into(),
            cache_dir: cache_dir.into(),
            environment: "production".to_owned(),
            stack: None,
            env: BTreeMap::new(),
            step_timeout: DEFAULT_STEP_TIMEOUT,
            cancel: CancellationToken::new(),
            run_as: None,
            sandbox: None,
        }
    }
}

/// One process type of a release, ready for the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Its name; `web` gets `$PORT` and traffic.
    pub process_type: ProcessType,
    /// What to run, expanded per instance with [`CommandLine::expand`].
    pub command: CommandLine,
    /// Instance count and limits.
    pub size: ProcessSize,
}

/// The release phase of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePhase {
    /// Run once, from this release's app directory, before its instances start.
    pub command: CommandLine,
    /// Seconds it may take before the deploy is aborted.
    pub timeout_secs: u64,
}

/// Whether the build reused cached dependencies; reported so deploy timings can be explained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCache {
    /// Dependencies were copied from the cache; no installer ran.
    Reused,
    /// Dependencies were installed and stored in the cache.
    Populated,
    /// This stack has no whole-dependency cache (it may still use a package cache).
    NotApplicable,
}

/// The result of a build: what was built and how to run it. Serialisable, so the store can
/// keep it (as JSON) in the release row and a release can be started again without rebuilding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// [`ARTIFACT_FORMAT_VERSION`] at build time.
    pub format_version: u32,
    /// The builder used.
    pub stack: Stack,
    /// The release directory.
    pub artifact_dir: PathBuf,
    /// The app directory inside it: instances' working directory.
    pub app_dir: PathBuf,
    /// Long-running process types, Procfile order first, then `[run]` additions, then defaults.
    pub processes: Vec<ProcessSpec>,
    /// The release phase, if the app has one.
    pub release: Option<ReleasePhase>,
    /// For static sites: the directory the proxy serves.
    pub static_dir: Option<PathBuf>,
    /// Directories to put in front of `PATH` for instances (venv `bin`, `node_modules/.bin`).
    pub path_prepend: Vec<PathBuf>,
    /// Variables every instance gets (e.g. `VIRTUAL_ENV`, `PYTHONUNBUFFERED`, `NODE_ENV`).
    pub env: BTreeMap<String, String>,
    /// The configuration in effect for this release.
    pub config: EffectiveConfig,
    /// Whether dependencies came from the cache.
    pub dependency_cache: DependencyCache,
    /// When the build finished.
    pub built_at: SystemTime,
    /// How long the build took, in milliseconds.
    pub build_millis: u64,
    /// The container image (id) this release runs, for releases built as images on the Docker
    /// runtime; then `app_dir` is the path inside the image and nothing is on the host.
    /// `None` for host builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl Artifact {
    /// Reads `artifact.json` from a release directory, to restart a release without rebuilding.
    pub fn load(artifact_dir: &Path) -> Result<Self, BuildError> {
        let path = artifact_dir.join(ARTIFACT_FILE_NAME);
        let text = fs::read(&path).map_err(io_error("cannot read", &path))?;
        serde_json::from_slice(&text)
            .map_err(|err| BuildError::InvalidManifest(format!("{}: {err}", path.display())))
    }

    /// The process of type `process_type`, if the release has one.
    pub fn process(&self, process_type: &ProcessType) -> Option<&ProcessSpec> {
        self.processes
            .iter()
            .find(|spec| &spec.process_type == process_type)
    }

    /// Whether the release serves HTTP through a `web` process.
    pub fn has_web(&self) -> bool {
        self.processes.iter().any(|spec| spec.process_type.is_web())
    }

    /// The variables an instance needs from the build, given the base `PATH` it would
    /// otherwise have: `PATH` with [`Artifact::path_prepend`] in front, plus [`Artifact::env`].
    /// The runtime adds `PORT`, config vars and `GILGAL_RELEASE` on top.
    pub fn instance_env(&self, base_path: &str) -> Vec<(String, String)> {
        let mut path: Vec<String> = self
            .path_prepend
            .iter()
            .map(|dir| dir.display().to_string())
            .collect();
        if !base_path.is_empty() {
            path.push(base_path.to_owned());
        }
        let mut env = vec![("PATH".to_owned(), path.join(":"))];
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}

/// Why a build failed. Failures of a command name it and carry the last lines of its output.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The release directory already has content.
    #[error("the release directory {} already exists and is not empty", .0.display())]
    ArtifactDirNotEmpty(PathBuf),
    /// gilgal.toml is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Procfile is invalid.
    #[error(transparent)]
    Procfile(#[from] ProcfileError),
    /// No builder applies.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// A build command exited unsuccessfully.
    #[error("build command failed ({status}): {command}{}", format_tail(log_tail))]
    CommandFailed {
        /// The command, shell-quoted for display.
        command: String,
        /// How it ended, e.g. "exit status 1".
        status: String,
        /// Its last output lines (stdout and stderr interleaved).
        log_tail: Vec<String>,
    },
    /// A build command ran past the step timeout and was killed.
    #[error(
        "build command timed out after {after_secs} s and was killed: {command}{}",
        format_tail(log_tail)
    )]
    TimedOut {
        /// The command, shell-quoted for display.
        command: String,
        /// The timeout.
        after_secs: u64,
        /// Its last output lines.
        log_tail: Vec<String>,
    },
    /// A command could not be started (tool missing?).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command, shell-quoted for display.
        command: String,
        /// The error from the operating system.
        source: std::io::Error,
    },
    /// The build was cancelled.
    #[error("the build was cancelled{}", command.as_ref().map(|c| format!(" while running {c}")).unwrap_or_default())]
    Cancelled {
        /// The command that was running and was killed, if any.
        command: Option<String>,
    },
    /// The build produced nothing to run.
    #[error(
        "the {stack} app defines no process to run: add a Procfile (e.g. `web: ...`) or \
         `[run] web = \"...\"` in gilgal.toml"
    )]
    NothingToRun {
        /// The stack that was built.
        stack: Stack,
    },
    /// A static site's directory is missing or resolves outside the app.
    #[error("the static site directory {} does not exist inside the app", .0.display())]
    StaticDirMissing(PathBuf),
    /// A symlink in a static site's directory leads outside it (or nowhere).
    #[error(
        "the static site links {} to {}, which is outside the served directory {}: copy \
         the files in instead of linking to them",
        link.display(),
        target.display(),
        root.display()
    )]
    StaticLinkOutside {
        /// The symlink.
        link: PathBuf,
        /// What it points to, as written.
        target: PathBuf,
        /// The served directory.
        root: PathBuf,
    },
    /// package.json, cargo metadata or artifact.json could not be understood.
    #[error("invalid {0}")]
    InvalidManifest(String),
    /// A toolchain answered unexpectedly.
    #[error("toolchain problem: {0}")]
    Toolchain(String),
    /// A file-system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A background task failed unexpectedly.
    #[error("internal build error: {0}")]
    Internal(String),
}

impl BuildError {
    /// The last output lines of the failing command, if this error has them.
    pub fn log_tail(&self) -> &[String] {
        match self {
            BuildError::CommandFailed { log_tail, .. } | BuildError::TimedOut { log_tail, .. } => {
                log_tail
            }
            _ => &[],
        }
    }
}

fn format_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("\nlast output:\n{}", lines.join("\n"))
    }
}

pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_owned();
    move |source| BuildError::Io {
        action,
        path,
        source,
    }
}

/// What a stack-specific builder adds to the artifact.
pub(crate) struct StackOutput {
    pub path_prepend: Vec<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub default_web: Option<CommandLine>,
    pub dependency_cache: DependencyCache,
}

/// Builds a release from `req.source_dir` into `req.artifact_dir`, logging to `log`.
///
/// On failure or cancellation the partially built release directory is removed, and no process
/// started by the build is left running.
pub async fn build(req: BuildRequest, log: LogSink) -> Result<Artifact, BuildError> {
    let started = Instant::now();
    let artifact_dir = req.artifact_dir.clone();
    let mut created_dir = false;
    let result = build_inner(&req, &log, started, &mut created_dir).await;
    match &result {
        Ok(artifact) => {
            log.system(format!(
                "build finished in {:.1} s",
                artifact.build_millis as f64 / 1000.0
            ))
            .await;
        }
        Err(err) => {
            // The failing command's output was streamed already: log the headline only.
            let message = err.to_string();
            let headline = message.lines().next().unwrap_or_default();
            log.system(format!("build failed: {headline}")).await;
            if created_dir {
                let _ = tokio::task::spawn_blocking(move || fs::remove_dir_all(artifact_dir)).await;
            }
        }
    }
    result
}

async fn build_inner(
    req: &BuildRequest,
    log: &LogSink,
    started: Instant,
    created_dir: &mut bool,
) -> Result<Artifact, BuildError> {
    let source_dir = &req.source_dir;
    if !source_dir.is_dir() {
        let missing = std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory");
        return Err(io_error("cannot read the source", source_dir)(missing));
    }
    // Validate everything the user wrote before any work is done.
    let app_config = AppConfig::load(source_dir)?;
    let config = app_config.for_environment(&req.environment);
    let procfile_path = source_dir.join("Procfile");
    let procfile = match fs::read_to_string(&procfile_path) {
        Ok(text) => Procfile::parse(&text)?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Procfile::default(),
        Err(err) => return Err(io_error("cannot read", &procfile_path)(err)),
    };
    let stack = match req.stack {
        Some(stack) => stack,
        None => resolve_stack(source_dir, &config)?,
    };
    log.system(format!("building a {stack} app for {}", req.environment))
        .await;

    let artifact_dir = &req.artifact_dir;
    if fs::read_dir(artifact_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(BuildError::ArtifactDirNotEmpty(artifact_dir.clone()));
    }
    fs::create_dir_all(artifact_dir).map_err(io_error("cannot create", artifact_dir))?;
    *created_dir = true;
    let artifact_dir = artifact_dir
        .canonicalize()
        .map_err(io_error("cannot resolve", artifact_dir))?;
    fs::create_dir_all(&req.cache_dir).map_err(io_error("cannot create", &req.cache_dir))?;
    let cache_dir = req
        .cache_dir
        .canonicalize()
        .map_err(io_error("cannot resolve", &req.cache_dir))?;
    let app_dir = artifact_dir.join(APP_DIR_NAME);
    {
        let (from, to) = (source_dir.clone(), app_dir.clone());
        tokio::task::spawn_blocking(move || fsops::move_tree(&from, &to))
            .await
            .map_err(|err| BuildError::Internal(err.to_string()))?
            .map_err(io_error("cannot move the source into", &app_dir))?;
    }

    let build_home = cache_dir.join("home");
    if let Some(user) = req.run_as {
        fs::create_dir_all(&build_home).map_err(io_error("cannot create", &build_home))?;
        let (app, cache) = (app_dir.clone(), cache_dir.clone());
        tokio::task::spawn_blocking(move || {
            fsops::chown_tree(&app, user.uid, user.gid)?;
            fsops::chown_tree_once(&cache, user.uid, user.gid)
        })
        .await
        .map_err(|err| BuildError::Internal(err.to_string()))?
        .map_err(io_error(
            "cannot hand the build directories to the build user:",
            &app_dir,
        ))?;
    }
    let confinement = confinement(req, &artifact_dir, &cache_dir)?;
    let runner = StepRunner::new(
        log.clone(),
        req.cancel.clone(),
        req.step_timeout,
        &req.env,
        req.run_as.map(|_| build_home.as_path()),
    )
    .confined(confinement);
    let output = match stack {
        Stack::Python => python::build(&runner, &app_dir, &cache_dir).await?,
        Stack::Node => node::build(&runner, &app_dir, &cache_dir).await?,
        Stack::Rust => cargo::build(&runner, &app_dir, &cache_dir).await?,
        Stack::Static | Stack::Command => StackOutput {
            path_prepend: Vec::new(),
            env: BTreeMap::new(),
            default_web: None,
            dependency_cache: DependencyCache::NotApplicable,
        },
    };

    if let Some(command) = &config.build_command {
        let argv: Vec<OsString> = command
            .expand(&|name| runner.env_value(name))
            .into_iter()
            .map(OsString::from)
            .collect();
        let path = prepend_path(&output.path_prepend, runner.env_value("PATH"));
        let mut env: Vec<(OsString, OsString)> = output
            .env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        if let Some(path) = path {
            env.push(("PATH".into(), path));
        }
        runner.run(&argv, &app_dir, &env).await?;
    }
    runner.check_cancelled()?;

    let static_dir = if stack == Stack::Static {
        let dir = app_dir.join(
            config
                .static_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".")),
        );
        if !dir.is_dir() {
            return Err(BuildError::StaticDirMissing(dir));
        }
        // The build may have created links; the proxy must never serve from outside the app.
        let resolved = match dir.canonicalize() {
            Ok(resolved) if resolved.starts_with(&app_dir) => resolved,
            _ => return Err(BuildError::StaticDirMissing(dir)),
        };
        // Nor through a link inside it: every symlink must resolve within the served
        // directory (the proxy checks again on every request).
        let root = resolved.clone();
        tokio::task::spawn_blocking(move || refuse_links_leaving(&root))
            .await
            .map_err(|err| BuildError::Internal(err.to_string()))??;
        // Stored resolved: the proxy refuses to serve a root that no longer resolves to itself.
        Some(resolved)
    } else {
        None
    };

    let (processes, release) = collect_processes(&procfile, &config, output.default_web);
    if processes.is_empty() && stack != Stack::Static {
        return Err(BuildError::NothingToRun { stack });
    }

    let artifact = Artifact {
        format_version: ARTIFACT_FORMAT_VERSION,
        stack,
        artifact_dir: artifact_dir.clone(),
        app_dir,
        processes,
        release,
        static_dir,
        path_prepend: output.path_prepend,
        env: output.env,
        config,
        dependency_cache: output.dependency_cache,
        built_at: SystemTime::now(),
        build_millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        image: None,
    };
    let json = serde_json::to_vec_pretty(&artifact)
        .map_err(|err| BuildError::Internal(err.to_string()))?;
    let manifest = artifact_dir.join(ARTIFACT_FILE_NAME);
    fsops::write_atomically(&manifest, &json).map_err(io_error("cannot write", &manifest))?;
    Ok(artifact)
}

/// The confinement of this build's commands, if it has a user or a sandbox: the release and
/// cache directories are its own and stay visible.
fn confinement(
    req: &BuildRequest,
    artifact_dir: &Path,
    cache_dir: &Path,
) -> Result<Option<gilgal_runtime::Confinement>, BuildError> {
    if req.run_as.is_none() && req.sandbox.is_none() {
        return Ok(None);
    }
    let sandbox = req.sandbox.clone().unwrap_or(BuildSandbox {
        cgroups: gilgal_runtime::CgroupConfig::Disabled,
        ..BuildSandbox::default()
    });
    let settings = gilgal_runtime::ConfinementSettings {
        user: req.run_as.map(|user| (user.uid, user.gid)),
        mounts: sandbox.mounts,
        visible: vec![artifact_dir.to_owned(), cache_dir.to_owned()],
        cgroups: sandbox.cgroups,
        limits: sandbox.limits,
    };
    gilgal_runtime::Confinement::new(settings)
        .map(Some)
        .map_err(|err| BuildError::Toolchain(format!("cannot confine the build: {err}")))
}

/// Fails with [`BuildError::StaticLinkOutside`] for the first symlink under `root` (a
/// resolved path) that does not resolve to something inside `root`; dangling links are
/// refused too, since what they name could appear later.
fn refuse_links_leaving(root: &Path) -> Result<(), BuildError> {
    let entries = fs::read_dir(root).map_err(io_error("cannot read", root))?;
    let mut pending = vec![entries];
    while let Some(entries) = pending.last_mut() {
        let Some(entry) = entries.next() else {
            pending.pop();
            continue;
        };
        let entry = entry.map_err(io_error("cannot read", root))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_error("cannot read", &path))?;
        if file_type.is_symlink() {
            let inside = path
                .canonicalize()
                .is_ok_and(|resolved| resolved.starts_with(root));
            if !inside {
                let target = fs::read_link(&path).map_err(io_error("cannot read", &path))?;
                return Err(BuildError::StaticLinkOutside {
                    link: path,
                    target,
                    root: root.to_owned(),
                });
            }
        } else if file_type.is_dir() {
            pending.push(fs::read_dir(&path).map_err(io_error("cannot read", &path))?);
        }
    }
    Ok(())
}

/// What a source tree says about running it, without building it: its validated
/// `gilgal.toml` (for one environment) and its process types. Exists for builds that happen
/// elsewhere (container images), which still run the same Procfile/`gilgal.toml` processes.
#[derive(Debug, Clone)]
pub struct SourcePlan {
    /// The configuration in effect for the environment.
    pub config: EffectiveConfig,
    /// Long-running process types (see [`Artifact::processes`]).
    pub processes: Vec<ProcessSpec>,
    /// The release phase, if any.
    pub release: Option<ReleasePhase>,
}

/// Reads and validates `gilgal.toml` and the `Procfile` of `source_dir` for `environment`
/// (errors name the line), merging them as a build would; `default_web` is used when neither
/// defines any process (a stack's or an image's default command).
pub fn plan_source(
    source_dir: &Path,
    environment: &str,
    default_web: Option<CommandLine>,
) -> Result<SourcePlan, BuildError> {
    let config = AppConfig::load(source_dir)?.for_environment(environment);
    let procfile_path = source_dir.join("Procfile");
    let procfile = match fs::read_to_string(&procfile_path) {
        Ok(text) => Procfile::parse(&text)?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Procfile::default(),
        Err(err) => return Err(io_error("cannot read", &procfile_path)(err)),
    };
    let (processes, release) = collect_processes(&procfile, &config, default_web);
    Ok(SourcePlan {
        config,
        processes,
        release,
    })
}

fn prepend_path(dirs: &[PathBuf], existing: Option<String>) -> Option<OsString> {
    if dirs.is_empty() {
        return None;
    }
    let mut parts: Vec<PathBuf> = dirs.to_vec();
    if let Some(existing) = existing {
        parts.extend(std::env::split_paths(&existing));
    }
    std::env::join_paths(parts).ok()
}

/// Merges Procfile lines and `[run]` (which wins per name), splits off `release`, applies the
/// stack's default `web` when nothing at all is defined, and attaches sizes.
fn collect_processes(
    procfile: &Procfile,
    config: &EffectiveConfig,
    default_web: Option<CommandLine>,
) -> (Vec<ProcessSpec>, Option<ReleasePhase>) {
    let mut commands: Vec<(ProcessType, CommandLine)> = Vec::new();
    for entry in &procfile.entries {
        let command = config
            .run
            .get(&entry.process_type)
            .unwrap_or(&entry.command)
            .clone();
        commands.push((entry.process_type.clone(), command));
    }
    for (process_type, command) in &config.run {
        if !commands
            .iter()
            .any(|(existing, _)| existing == process_type)
        {
            commands.push((process_type.clone(), command.clone()));
        }
    }
    let release_command = config.release.command.clone().or_else(|| {
        commands
            .iter()
            .find(|(process_type, _)| process_type.is_release())
            .map(|(_, command)| command.clone())
    });
    commands.retain(|(process_type, _)| !process_type.is_release());
    if commands.is_empty() {
        if let Some(command) = default_web {
            commands.push((ProcessType::web(), command));
        }
    }
    let processes = commands
        .into_iter()
        .map(|(process_type, command)| ProcessSpec {
            size: config.process_size(&process_type),
            process_type,
            command,
        })
        .collect();
    let release = release_command.map(|command| ReleasePhase {
        command,
        timeout_secs: config.release.timeout_secs,
    });
    (processes, release)
}
