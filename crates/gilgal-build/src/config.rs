//! `gilgal.toml`: the per-app configuration file, parsed in two stages.
//!
//! Stage one deserialises the file into raw structs that reject unknown keys and keep the
//! source span of every value that needs checking; stage two validates ranges, commands and
//! names and produces [`AppConfig`]. Every error carries a 1-based line and column.
//! [`AppConfig::for_environment`] merges `[environments.<name>]` overrides over the top level
//! and fills in defaults, giving the [`EffectiveConfig`] a deploy actually uses.
//!
//! The doc comments on the raw structs below are the user documentation of each field
//! (also written out in `GILGAL_TOML.md` beside this crate).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::command::CommandLine;
use crate::detect::Stack;
use crate::procfile::ProcessType;

/// The file name Gilgal reads from the root of an app's source.
pub const CONFIG_FILE_NAME: &str = "gilgal.toml";
/// Default seconds between two health-check probes.
pub const DEFAULT_HEALTHCHECK_INTERVAL_SECS: u64 = 2;
/// Default seconds one health-check probe may take.
pub const DEFAULT_HEALTHCHECK_TIMEOUT_SECS: u64 = 2;
/// Default number of consecutive passing probes that make an instance healthy.
pub const DEFAULT_HEALTHCHECK_THRESHOLD: u32 = 1;
/// Default seconds a new instance has to become healthy before the deploy fails.
pub const DEFAULT_BOOT_DEADLINE_SECS: u64 = 60;
/// Default seconds the release phase may run.
pub const DEFAULT_RELEASE_TIMEOUT_SECS: u64 = 300;
/// Default seconds between SIGTERM and SIGKILL when an instance stops.
pub const DEFAULT_GRACE_PERIOD_SECS: u64 = 30;
/// Default number of instances of each process type.
pub const DEFAULT_PROCESS_COUNT: u32 = 1;

/// A `gilgal.toml` problem, always pointing at a line and column (or at the unreadable file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Syntax error, unknown key, wrong type or invalid value.
    #[error("gilgal.toml line {line}, column {column}: {message}")]
    Invalid {
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong and, where possible, what is expected.
        message: String,
    },
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

// ---------------------------------------------------------------------------------------------
// Stage one: the file as written.
// ---------------------------------------------------------------------------------------------

/// The whole file; the same keys are allowed inside `[environments.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLayer {
    /// Seconds an instance gets between SIGTERM and SIGKILL when it is stopped (for example
    /// when a newer release has taken over). 0 to 3600, default 30.
    grace_period_secs: Option<Spanned<u64>>,
    /// How the source is turned into a runnable release.
    build: Option<RawBuild>,
    /// Process commands, `name = "command"`; added to the Procfile's, and replacing a
    /// Procfile line of the same name. Example: `web = "gunicorn -b 0.0.0.0:$PORT app:app"`.
    run: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    /// How a new `web` instance is judged ready for traffic.
    healthcheck: Option<RawHealthcheck>,
    /// The release phase: a command run once per deploy, from the new build, before any new
    /// instance starts (database migrations). Replaces a Procfile `release:` line.
    release: Option<RawRelease>,
    /// Per-process-type sizes, `[processes.<type>]`.
    processes: Option<BTreeMap<Spanned<String>, RawProcessSize>>,
    /// Static sites served by the proxy itself.
    #[serde(rename = "static")]
    static_site: Option<RawStatic>,
    /// How a new release takes over from the live one.
    deploy: Option<RawDeploy>,
    /// Per-environment overrides, `[environments.<name>]`, with any of the keys above.
    /// Values given there replace the top-level ones for deploys to that environment.
    environments: Option<BTreeMap<Spanned<String>, RawLayer>>,
}

/// `[build]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    /// Forces the builder instead of detecting it from files: `"python"`, `"node"`, `"rust"`,
    /// `"static"` or `"command"`.
    builder: Option<Spanned<Stack>>,
    /// A build command, run without a shell in the app directory. With `builder = "command"`
    /// it is the whole build; with another builder it runs after that builder's own steps
    /// (e.g. `python manage.py collectstatic --noinput`).
    command: Option<Spanned<String>>,
}

/// `[healthcheck]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthcheck {
    /// HTTP path probed with GET (a 2xx or 3xx answer passes), e.g. `"/healthz"`. When
    /// absent, a TCP connect to `$PORT` is the check.
    path: Option<Spanned<String>>,
    /// Seconds between probes, 1 to 3600, default 2.
    interval_secs: Option<Spanned<u64>>,
    /// Seconds one probe may take, 1 to 3600, default 2.
    timeout_secs: Option<Spanned<u64>>,
    /// Consecutive passing probes needed, 1 to 100, default 1.
    threshold: Option<Spanned<u32>>,
    /// Seconds a new instance has to pass before the deploy fails and the old release keeps
    /// serving, 1 to 3600, default 60.
    boot_deadline_secs: Option<Spanned<u64>>,
}

/// `[release]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    /// The command, e.g. `"alembic upgrade head"`. A non-zero exit aborts the deploy.
    command: Option<Spanned<String>>,
    /// Seconds the command may run before it is killed and the deploy aborted, 1 to 86400,
    /// default 300.
    timeout_secs: Option<Spanned<u64>>,
}

/// `[processes.<type>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcessSize {
    /// Memory limit per instance in MiB, 16 to 1048576; no limit when absent.
    memory_mb: Option<Spanned<u64>>,
    /// Relative CPU weight per instance (cgroup cpu.shares), 2 to 262144; 1024 is one
    /// ordinary share. No weight set when absent.
    cpu_shares: Option<Spanned<u64>>,
    /// Number of instances, 0 to 100, default 1.
    count: Option<Spanned<u32>>,
}

/// `[deploy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeploy {
    /// `"immediate"` (default: all traffic moves once the new instances are healthy),
    /// `"canary"` (a share of traffic, step by step, judged against the live release) or
    /// `"blue-green"` (the new release on a private hostname, smoke-checked, then switched).
    strategy: Option<Spanned<String>>,
    /// Blue-green smoke checks, e.g. `["GET /health 200", "GET /api/version 200"]`.
    smoke: Option<Vec<Spanned<String>>>,
    /// Canary steps: percentages rising to 100, `pause` waiting for `gilgal canary promote`;
    /// default `"10,25,50,100"`.
    canary: Option<Spanned<String>>,
    /// Seconds each canary step is held and judged, 1 to 3600, default 60.
    interval_secs: Option<Spanned<u64>>,
    /// Keep each client on the release it first got (a cookie), default false.
    sticky: Option<bool>,
    /// Canary requests a step needs before it can pass, 1 to 1000000, default 100.
    min_requests: Option<Spanned<u64>>,
    /// Seconds past the interval a step waits for them, 0 to 86400, default 300.
    traffic_deadline_secs: Option<Spanned<u64>>,
    /// What happens at that deadline: `"rollback"` (default) or `"proceed"`.
    no_traffic: Option<Spanned<String>>,
}

/// `[static]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    /// Directory, relative to the app root, whose files the proxy serves; default `"."`.
    dir: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// Stage two: validated values.
// ---------------------------------------------------------------------------------------------

/// One validated layer of settings (the top level, or one environment's overrides); `None`
/// means "not set here", so layers can be merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigLayer {
    /// `[build] builder`.
    pub builder: Option<Stack>,
    /// `[build] command`.
    pub build_command: Option<CommandLine>,
    /// `[run]` process commands.
    pub run: BTreeMap<ProcessType, CommandLine>,
    /// `[healthcheck]`.
    pub healthcheck: HealthCheckLayer,
    /// `[release] command`.
    pub release_command: Option<CommandLine>,
    /// `[release] timeout_secs`.
    pub release_timeout_secs: Option<u64>,
    /// `[processes.<type>]`.
    pub processes: BTreeMap<ProcessType, ProcessSizeLayer>,
    /// `grace_period_secs`.
    pub grace_period_secs: Option<u64>,
    /// `[static] dir`, relative to the app root.
    pub static_dir: Option<PathBuf>,
    /// `[deploy]`.
    pub deploy: DeployLayer,
}

/// `[deploy]` settings of one layer; unset fields fall through to the next layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployLayer {
    /// `strategy`: `immediate`, `canary` or `blue-green`.
    pub strategy: Option<String>,
    /// Blue-green smoke checks, validated.
    pub smoke: Option<Vec<String>>,
    /// Canary steps, validated.
    pub steps: Option<String>,
    /// Seconds per step.
    pub interval_secs: Option<u64>,
    /// Sticky clients.
    pub sticky: Option<bool>,
    /// Requests a step needs.
    pub min_requests: Option<u64>,
    /// Seconds to wait for them.
    pub traffic_deadline_secs: Option<u64>,
    /// `rollback` or `proceed`.
    pub no_traffic: Option<String>,
}

/// A blue-green deploy as `gilgal.toml` asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlueGreenSettings {
    /// Smoke checks (`GET /health 200`) the new release must pass on its private hostname.
    pub smoke: Vec<String>,
}

/// A canary as `gilgal.toml` asks for it (defaults filled in); `gilgal-deploy` turns it into
/// its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanarySettings {
    /// Steps, e.g. `10,25,pause,50,100`.
    pub steps: String,
    /// Seconds each step is held and judged.
    pub interval_secs: u64,
    /// Keep each client on the release it first got.
    pub sticky: bool,
    /// Canary requests a step needs before it can pass.
    pub min_requests: u64,
    /// Seconds past the interval a step waits for them.
    pub traffic_deadline_secs: u64,
    /// `rollback` or `proceed` at that deadline.
    pub no_traffic: String,
}

/// Health-check settings of one layer; unset fields fall through to the next layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthCheckLayer {
    /// HTTP path to probe.
    pub path: Option<String>,
    /// Seconds between probes.
    pub interval_secs: Option<u64>,
    /// Seconds per probe.
    pub timeout_secs: Option<u64>,
    /// Consecutive passes needed.
    pub threshold: Option<u32>,
    /// Seconds to become healthy.
    pub boot_deadline_secs: Option<u64>,
}

/// Process size of one layer; unset fields fall through to the next layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSizeLayer {
    /// Memory limit in MiB.
    pub memory_mb: Option<u64>,
    /// CPU weight.
    pub cpu_shares: Option<u64>,
    /// Instance count.
    pub count: Option<u32>,
}

/// A validated `gilgal.toml`: top-level settings plus per-environment overrides. Exists so
/// invalid configuration is caught before a build starts, with a line and column.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppConfig {
    /// Top-level settings, used by every environment.
    pub base: ConfigLayer,
    /// `[environments.<name>]` overrides by environment name.
    pub environments: BTreeMap<String, ConfigLayer>,
}

/// The settings one deploy uses: overrides merged, defaults filled in. Serialisable so it can
/// be stored with the release it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveConfig {
    /// The environment these settings are for.
    pub environment: String,
    /// Forced builder, if any.
    pub builder: Option<Stack>,
    /// Extra or sole build command, if any.
    pub build_command: Option<CommandLine>,
    /// `[run]` commands (the Procfile is merged with these by the builder).
    pub run: BTreeMap<ProcessType, CommandLine>,
    /// Health check of `web` instances.
    pub healthcheck: HealthCheck,
    /// Release phase settings.
    pub release: ReleaseSettings,
    /// Explicitly configured process sizes; see [`EffectiveConfig::process_size`].
    pub processes: BTreeMap<ProcessType, ProcessSize>,
    /// Seconds between SIGTERM and SIGKILL.
    pub grace_period_secs: u64,
    /// Directory served for static sites, relative to the app root.
    pub static_dir: Option<PathBuf>,
    /// `[deploy] strategy = "canary"`: how this release's deploys roll out (none: at once).
    #[serde(default)]
    pub canary: Option<CanarySettings>,
    /// `[deploy] strategy = "blue-green"`.
    #[serde(default)]
    pub blue_green: Option<BlueGreenSettings>,
}

/// How a new `web` instance is judged healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// HTTP path to GET; `None` means a TCP connect to `$PORT`.
    pub path: Option<String>,
    /// Seconds between probes.
    pub interval_secs: u64,
    /// Seconds one probe may take.
    pub timeout_secs: u64,
    /// Consecutive passing probes needed.
    pub threshold: u32,
    /// Seconds an instance has to become healthy.
    pub boot_deadline_secs: u64,
}

impl HealthCheck {
    /// Time between probes.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }
    /// Time one probe may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
    /// Time an instance has to become healthy.
    pub fn boot_deadline(&self) -> Duration {
        Duration::from_secs(self.boot_deadline_secs)
    }
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: None,
            interval_secs: DEFAULT_HEALTHCHECK_INTERVAL_SECS,
            timeout_secs: DEFAULT_HEALTHCHECK_TIMEOUT_SECS,
            threshold: DEFAULT_HEALTHCHECK_THRESHOLD,
            boot_deadline_secs: DEFAULT_BOOT_DEADLINE_SECS,
        }
    }
}

/// Release-phase settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSettings {
    /// `[release] command`, if set (a Procfile `release:` line is the fallback).
    pub command: Option<CommandLine>,
    /// Seconds the release command may run.
    pub timeout_secs: u64,
}

impl ReleaseSettings {
    /// Time the release command may run.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// Size of each instance of one process type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSize {
    /// Memory limit in MiB, if any.
    pub memory_mb: Option<u64>,
    /// CPU weight (cgroup cpu.shares), if any.
    pub cpu_shares: Option<u64>,
    /// Number of instances.
    pub count: u32,
}

impl Default for ProcessSize {
    fn default() -> Self {
        Self {
            memory_mb: None,
            cpu_shares: None,
            count: DEFAULT_PROCESS_COUNT,
        }
    }
}

impl EffectiveConfig {
    /// The size of `process_type`, defaults included (one instance, no limits).
    pub fn process_size(&self, process_type: &ProcessType) -> ProcessSize {
        self.processes
            .get(process_type)
            .cloned()
            .unwrap_or_default()
    }

    /// Grace period between SIGTERM and SIGKILL.
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.grace_period_secs)
    }
}

impl Default for EffectiveConfig {
    fn default() -> Self {
        AppConfig::default().for_environment("production")
    }
}

impl AppConfig {
    /// Parses and validates `gilgal.toml` text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        // A byte-order mark (Windows editors) is not content; spans stay correct without it.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let raw: RawLayer = toml::from_str(text).map_err(|err| {
            let (line, column) = err
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((1, 1));
            ConfigError::Invalid {
                line,
                column,
                message: friendly_message(err.message()),
            }
        })?;
        let validator = Validator { text };
        validator.app(raw)
    }

    /// Reads `gilgal.toml` from an app's source directory; a missing file is an empty config.
    pub fn load(source_dir: &Path) -> Result<Self, ConfigError> {
        let path = source_dir.join(CONFIG_FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// The settings for a deploy to `environment`: its overrides (if any) over the top level,
    /// over the defaults. An environment without a section just gets the top level.
    pub fn for_environment(&self, environment: &str) -> EffectiveConfig {
        let empty = ConfigLayer::default();
        let over = self.environments.get(environment).unwrap_or(&empty);
        let base = &self.base;
        let mut run = base.run.clone();
        run.extend(over.run.clone());
        let mut processes: BTreeMap<ProcessType, ProcessSize> = BTreeMap::new();
        for name in base.processes.keys().chain(over.processes.keys()) {
            let lower = base.processes.get(name).cloned().unwrap_or_default();
            let upper = over.processes.get(name).cloned().unwrap_or_default();
            processes.insert(
                name.clone(),
                ProcessSize {
                    memory_mb: upper.memory_mb.or(lower.memory_mb),
                    cpu_shares: upper.cpu_shares.or(lower.cpu_shares),
                    count: upper.count.or(lower.count).unwrap_or(DEFAULT_PROCESS_COUNT),
                },
            );
        }
        let (bh, oh) = (&base.healthcheck, &over.healthcheck);
        EffectiveConfig {
            environment: environment.to_owned(),
            builder: over.builder.or(base.builder),
            build_command: over
                .build_command
                .clone()
                .or_else(|| base.build_command.clone()),
            run,
            healthcheck: HealthCheck {
                path: oh.path.clone().or_else(|| bh.path.clone()),
                interval_secs: oh
                    .interval_secs
                    .or(bh.interval_secs)
                    .unwrap_or(DEFAULT_HEALTHCHECK_INTERVAL_SECS),
                timeout_secs: oh
                    .timeout_secs
                    .or(bh.timeout_secs)
                    .unwrap_or(DEFAULT_HEALTHCHECK_TIMEOUT_SECS),
                threshold: oh
                    .threshold
                    .or(bh.threshold)
                    .unwrap_or(DEFAULT_HEALTHCHECK_THRESHOLD),
                boot_deadline_secs: oh
                    .boot_deadline_secs
                    .or(bh.boot_deadline_secs)
                    .unwrap_or(DEFAULT_BOOT_DEADLINE_SECS),
            },
            release: ReleaseSettings {
                command: over
                    .release_command
                    .clone()
                    .or_else(|| base.release_command.clone()),
                timeout_secs: over
                    .release_timeout_secs
                    .or(base.release_timeout_secs)
                    .unwrap_or(DEFAULT_RELEASE_TIMEOUT_SECS),
            },
            processes,
            grace_period_secs: over
                .grace_period_secs
                .or(base.grace_period_secs)
                .unwrap_or(DEFAULT_GRACE_PERIOD_SECS),
            static_dir: over.static_dir.clone().or_else(|| base.static_dir.clone()),
            blue_green: {
                let (b, o) = (&base.deploy, &over.deploy);
                (o.strategy
                    .as_ref()
                    .or(b.strategy.as_ref())
                    .map(String::as_str)
                    == Some("blue-green"))
                .then(|| BlueGreenSettings {
                    smoke: o
                        .smoke
                        .clone()
                        .or_else(|| b.smoke.clone())
                        .unwrap_or_default(),
                })
            },
            canary: {
                let (b, o) = (&base.deploy, &over.deploy);
                (o.strategy
                    .as_ref()
                    .or(b.strategy.as_ref())
                    .map(String::as_str)
                    == Some("canary"))
                .then(|| CanarySettings {
                    steps: o
                        .steps
                        .clone()
                        .or_else(|| b.steps.clone())
                        .unwrap_or_else(|| "10,25,50,100".to_owned()),
                    interval_secs: o.interval_secs.or(b.interval_secs).unwrap_or(60),
                    sticky: o.sticky.or(b.sticky).unwrap_or(false),
                    min_requests: o.min_requests.or(b.min_requests).unwrap_or(100),
                    traffic_deadline_secs: o
                        .traffic_deadline_secs
                        .or(b.traffic_deadline_secs)
                        .unwrap_or(300),
                    no_traffic: o
                        .no_traffic
                        .clone()
                        .or_else(|| b.no_traffic.clone())
                        .unwrap_or_else(|| "rollback".to_owned()),
                })
            },
        }
    }
}

/// Rewords serde's messages where they would expose Rust type names.
fn friendly_message(message: &str) -> String {
    let mut message = message
        .trim()
        .replace("expected u64", "expected a whole number")
        .replace("expected u32", "expected a whole number")
        .replace("expected a map", "expected a table");
    if let Some(index) = message.find("expected struct Raw") {
        message.truncate(index);
        message.push_str("expected a table");
    }
    if message == "wanted string or table" {
        message =
            "expected a string, one of \"python\", \"node\", \"rust\", \"static\", \"command\""
                .to_owned();
    }
    message
}

/// Converts a byte offset into a 1-based (line, column-in-characters) pair.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let mut boundary = offset;
    while !text.is_char_boundary(boundary) {
        boundary -= 1;
    }
    let before = &text[..boundary];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |index| index + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Whether `name` is a valid environment name: `[a-z][a-z0-9-]{0,29}` (it ends up in host names).
pub fn is_valid_environment_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 30
        && !name.ends_with('-')
}

struct Validator<'a> {
    text: &'a str,
}

impl Validator<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_column(self.text, span.start);
        ConfigError::Invalid {
            line,
            column,
            message: message.into(),
        }
    }

    fn app(&self, mut raw: RawLayer) -> Result<AppConfig, ConfigError> {
        let environments = raw.environments.take();
        let base = self.layer(raw, None)?;
        let mut result = AppConfig {
            base,
            environments: BTreeMap::new(),
        };
        if let Some(environments) = environments {
            for (name, mut layer) in environments {
                if !is_valid_environment_name(name.get_ref()) {
                    return Err(self.error(
                        name.span(),
                        format!(
                            "invalid environment name `{}`: use 1 to 30 characters of a-z, 0-9 and `-`, starting with a letter",
                            name.get_ref()
                        ),
                    ));
                }
                if layer.environments.take().is_some() {
                    return Err(self.error(
                        name.span(),
                        "`environments` cannot be nested inside an environment",
                    ));
                }
                let validated = self.layer(layer, Some(&result.base))?;
                result.environments.insert(name.into_inner(), validated);
            }
        }
        Ok(result)
    }

    fn command(&self, value: Spanned<String>) -> Result<CommandLine, ConfigError> {
        let span = value.span();
        CommandLine::parse(value.get_ref()).map_err(|err| self.error(span, err.to_string()))
    }

    fn ranged<T>(
        &self,
        value: Option<Spanned<T>>,
        field: &str,
        min: T,
        max: T,
    ) -> Result<Option<T>, ConfigError>
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        let Some(value) = value else { return Ok(None) };
        let number = *value.get_ref();
        if number < min || number > max {
            return Err(self.error(
                value.span(),
                format!("`{field}` must be between {min} and {max}, not {number}"),
            ));
        }
        Ok(Some(number))
    }

    fn layer(&self, raw: RawLayer, base: Option<&ConfigLayer>) -> Result<ConfigLayer, ConfigError> {
        let mut layer = ConfigLayer {
            grace_period_secs: self.ranged(raw.grace_period_secs, "grace_period_secs", 0, 3600)?,
            ..ConfigLayer::default()
        };

        if let Some(build) = raw.build {
            let builder_span = build.builder.as_ref().map(|b| b.span());
            layer.builder = build.builder.map(Spanned::into_inner);
            layer.build_command = build.command.map(|c| self.command(c)).transpose()?;
            if let (Some(Stack::Command), Some(span)) = (layer.builder, builder_span) {
                let inherited = base.is_some_and(|b| b.build_command.is_some());
                if layer.build_command.is_none() && !inherited {
                    return Err(self.error(
                        span,
                        "`builder = \"command\"` needs `command` in [build], e.g. command = \"make build\"",
                    ));
                }
            }
        }

        for (name, command) in raw.run.unwrap_or_default() {
            let process_type = ProcessType::new(name.get_ref())
                .map_err(|err| self.error(name.span(), err.to_string()))?;
            if process_type.is_release() {
                return Err(self.error(
                    name.span(),
                    "the release phase is configured with `[release] command`, not in [run]",
                ));
            }
            layer.run.insert(process_type, self.command(command)?);
        }

        if let Some(health) = raw.healthcheck {
            if let Some(path) = health.path {
                let text = path.get_ref();
                let valid = text.starts_with('/')
                    && text.len() <= 1024
                    && !text.chars().any(|c| c.is_whitespace() || c.is_control());
                if !valid {
                    return Err(self.error(
                        path.span(),
                        "`path` must start with `/` and contain no spaces or control characters, e.g. \"/healthz\"",
                    ));
                }
                layer.healthcheck.path = Some(path.into_inner());
            }
            layer.healthcheck.interval_secs =
                self.ranged(health.interval_secs, "interval_secs", 1, 3600)?;
            layer.healthcheck.timeout_secs =
                self.ranged(health.timeout_secs, "timeout_secs", 1, 3600)?;
            layer.healthcheck.threshold = self.ranged(health.threshold, "threshold", 1, 100)?;
            layer.healthcheck.boot_deadline_secs =
                self.ranged(health.boot_deadline_secs, "boot_deadline_secs", 1, 3600)?;
        }

        if let Some(release) = raw.release {
            layer.release_command = release.command.map(|c| self.command(c)).transpose()?;
            layer.release_timeout_secs =
                self.ranged(release.timeout_secs, "timeout_secs", 1, 86_400)?;
        }

        for (name, size) in raw.processes.unwrap_or_default() {
            let process_type = ProcessType::new(name.get_ref())
                .map_err(|err| self.error(name.span(), err.to_string()))?;
            if process_type.is_release() {
                return Err(self.error(
                    name.span(),
                    "`release` runs once per deploy and has no size; use `[release] timeout_secs`",
                ));
            }
            layer.processes.insert(
                process_type,
                ProcessSizeLayer {
                    memory_mb: self.ranged(size.memory_mb, "memory_mb", 16, 1_048_576)?,
                    cpu_shares: self.ranged(size.cpu_shares, "cpu_shares", 2, 262_144)?,
                    count: self.ranged(size.count, "count", 0, 100)?,
                },
            );
        }

        if let Some(static_site) = raw.static_site {
            if let Some(dir) = static_site.dir {
                let path = PathBuf::from(dir.get_ref());
                let valid = !dir.get_ref().is_empty()
                    && path
                        .components()
                        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
                if !valid {
                    return Err(self.error(
                        dir.span(),
                        "`dir` must be a relative path inside the app without `..`, e.g. \"public\"",
                    ));
                }
                layer.static_dir = Some(path);
            }
        }

        if let Some(deploy) = raw.deploy {
            if let Some(strategy) = deploy.strategy {
                if !matches!(
                    strategy.get_ref().as_str(),
                    "immediate" | "canary" | "blue-green"
                ) {
                    return Err(self.error(
                        strategy.span(),
                        "`strategy` must be \"immediate\", \"canary\" or \"blue-green\"",
                    ));
                }
                layer.deploy.strategy = Some(strategy.into_inner());
            }
            if let Some(checks) = deploy.smoke {
                if checks.len() > gilgal_core::smoke::MAX_SMOKE_CHECKS {
                    return Err(self.error(
                        checks[gilgal_core::smoke::MAX_SMOKE_CHECKS].span(),
                        format!(
                            "at most {} smoke checks",
                            gilgal_core::smoke::MAX_SMOKE_CHECKS
                        ),
                    ));
                }
                let mut valid = Vec::with_capacity(checks.len());
                for check in checks {
                    gilgal_core::smoke::parse_smoke(check.get_ref())
                        .map_err(|e| self.error(check.span(), e.to_string()))?;
                    valid.push(check.into_inner());
                }
                layer.deploy.smoke = Some(valid);
            }
            if let Some(steps) = deploy.canary {
                gilgal_core::canary::parse_steps(steps.get_ref())
                    .map_err(|e| self.error(steps.span(), format!("`canary`: {e}")))?;
                layer.deploy.steps = Some(steps.into_inner());
            }
            layer.deploy.interval_secs =
                self.ranged(deploy.interval_secs, "interval_secs", 1, 3600)?;
            layer.deploy.sticky = deploy.sticky;
            layer.deploy.min_requests =
                self.ranged(deploy.min_requests, "min_requests", 1, 1_000_000)?;
            layer.deploy.traffic_deadline_secs = self.ranged(
                deploy.traffic_deadline_secs,
                "traffic_deadline_secs",
                0,
                86_400,
            )?;
            if let Some(policy) = deploy.no_traffic {
                if !matches!(policy.get_ref().as_str(), "rollback" | "proceed") {
                    return Err(self.error(
                        policy.span(),
                        "`no_traffic` must be \"rollback\" or \"proceed\"",
                    ));
                }
                layer.deploy.no_traffic = Some(policy.into_inner());
            }
        }
        Ok(layer)
    }
}
