//! Environments, config vars, releases, process formation, one-off runs and cron jobs on the
//! wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::Timestamp;

/// An environment of a project (`production`, `staging`, …) with its own config, formation,
/// releases and hostname.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Environment {
    /// Stable id.
    pub id: Uuid,
    /// Owning project.
    pub project_id: Uuid,
    /// Name (a DNS label).
    pub name: String,
    /// The release serving now, if any.
    pub live_release: Option<u64>,
    /// Instance counts set with `gilgal scale` (types not listed use the release's defaults).
    pub formation: BTreeMap<String, u32>,
    /// Where it is served.
    pub url: String,
}

/// Body of `POST /api/projects/{id}/environments` and `PUT /api/environments/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct EnvironmentRequest {
    /// Name (a DNS label, e.g. `staging`).
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
    pub name: String,
}

/// A config var as the API shows it: a secret's value is never returned.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ConfigVar {
    /// Name (`DATABASE_URL`).
    pub name: String,
    /// The value; `None` for secrets (write-only).
    pub value: Option<String>,
    /// Whether it is a secret (encrypted at rest, redacted from logs).
    pub secret: bool,
}

/// The OpenAPI schema of a map from config var names to values: names are letters, digits
/// and `_`, not starting with a digit; values have no NUL and at most 32768 characters (the
/// server refuses others with 422).
fn config_map_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Za-z_][A-Za-z0-9_]*$")),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[^\\x00]*$"))
                .max_length(Some(32 * 1024)),
        ))
        .build()
}

/// The OpenAPI schema of instance counts by process type: 0 to 100 each.
fn instance_counts_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                    utoipa::openapi::KnownFormat::Int32,
                )))
                .minimum(Some(0))
                .maximum(Some(100)),
        ))
        .build()
}

/// One argument of a command, as the schema documents it: no NUL bytes.
#[derive(ToSchema)]
#[schema(value_type = String, pattern = "^[^\\x00]*$")]
pub struct CommandArgument(#[allow(dead_code)] String);

/// A config var's name, as the schema documents it: letters, digits and `_`, not starting
/// with a digit.
#[derive(ToSchema)]
#[schema(value_type = String, pattern = "^[A-Za-z_][A-Za-z0-9_]*$", example = "DATABASE_URL")]
pub struct ConfigVarName(#[allow(dead_code)] String);

/// Body of `PATCH /api/environments/{id}/config`: one change, one new release. It must change
/// something: at least one of its fields is not empty (the OpenAPI document says so too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ConfigUpdate {
    /// Variables to set (plain).
    #[serde(default)]
    #[schema(schema_with = config_map_schema)]
    pub set: BTreeMap<String, String>,
    /// Secrets to set (encrypted at rest, never returned).
    #[serde(default)]
    #[schema(schema_with = config_map_schema)]
    pub set_secret: BTreeMap<String, String>,
    /// Variables to remove.
    #[serde(default)]
    #[schema(value_type = Vec<ConfigVarName>)]
    pub unset: Vec<String>,
}

/// Answer to a config change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ConfigChanged {
    /// The config now (secrets masked).
    pub vars: Vec<ConfigVar>,
    /// The deployment rolling the change out, when something is live.
    pub deployment: Option<Uuid>,
}

/// A release: an immutable artifact plus the config it runs with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Release {
    /// Number within the environment.
    pub number: u64,
    /// What made it ("Deploy (upload)", "Rollback to v3", "Set FOO", …).
    pub description: String,
    /// Whether it is serving now.
    pub live: bool,
    /// What became of it: live, failed, superseded, rolled back, or pending while it rolls out.
    pub outcome: ReleaseOutcome,
    /// Whether its artifact was pruned (it can no longer be started).
    pub pruned: bool,
    /// Names of its config vars (values are not shown).
    pub config_names: Vec<String>,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// The deployment that made it: its logs, figures (`/api/deployments/{id}/metrics`) and
    /// `redeploy` go by this id.
    #[serde(default)]
    pub deployment_id: Option<Uuid>,
}

/// What became of a release, as recorded at each step of its rollout.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseOutcome {
    /// Recorded; its rollout has not finished.
    Pending,
    /// It serves the environment now.
    Live,
    /// Its rollout failed or was cancelled: it never got traffic.
    Failed,
    /// It was live until a newer release replaced it.
    Superseded,
    /// It was live until a rollback replaced it.
    RolledBack,
}

impl ReleaseOutcome {
    /// How `gilgal releases` prints it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Live => "live",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
            Self::RolledBack => "rolled back",
        }
    }
}

/// Body of `POST /api/environments/{id}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RollbackRequest {
    /// Release to go back to; default: the last one that was live before the live one.
    #[serde(default)]
    pub release: Option<u64>,
    /// Run that release's release phase again (default false).
    #[serde(default)]
    pub run_release_phase: bool,
}

/// Body of `POST /api/environments/{id}/promote`: ship another environment's live artifact
/// here, with this environment's config.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PromoteRequest {
    /// The environment (of the same project) whose live release is promoted.
    pub from: String,
}

/// Body of `POST /api/deployments/{id}/redeploy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RedeployRequest {
    /// Run the release phase again (default false).
    #[serde(default)]
    pub run_release_phase: bool,
}

/// Body of `POST /api/projects/{id}/deployments` when deploying from git (JSON instead of a
/// tarball).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct GitDeployRequest {
    /// Repository URL (`https://…`, `ssh://…`, `git@host:path`).
    pub url: String,
    /// Branch, tag or commit id (default `main`).
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
}

/// Body of `POST /api/projects/{id}/deployments` when deploying an existing Docker image
/// (Docker runtime only): no build, the image's CMD is the web process.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ImageDeployRequest {
    /// Image reference (`registry/repo:tag`) or image id (`sha256:…`).
    pub image: String,
}

/// The JSON bodies `POST /api/projects/{id}/deployments` accepts: a git source or an image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum JsonDeployRequest {
    /// Deploy an existing image.
    Image(ImageDeployRequest),
    /// Fetch and build a git repository.
    Git(GitDeployRequest),
}

/// Size of one process type. Only a JSON object is one (serde would also take an array of
/// the fields in order, which the OpenAPI document does not allow).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(from = "ProcessSizeObject")]
pub struct ProcessSize {
    /// Memory ceiling in MiB (16 to 1048576).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 16, maximum = 1048576)]
    pub memory_mb: Option<u64>,
    /// CPU cap in thousandths of a core (500 = half a core; 10 to 256000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 10, maximum = 256000)]
    pub cpu_millicores: Option<u64>,
}

/// The fields of a [`ProcessSize`], read from a JSON object only.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessSizeObject {
    memory_mb: Option<u64>,
    cpu_millicores: Option<u64>,
}

impl<'de> Deserialize<'de> for ProcessSizeObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// The fields as serde derives them; only reached through a map.
        #[derive(Deserialize)]
        struct Fields {
            #[serde(default)]
            memory_mb: Option<u64>,
            #[serde(default)]
            cpu_millicores: Option<u64>,
        }
        struct ObjectOnly;
        impl<'de> serde::de::Visitor<'de> for ObjectOnly {
            type Value = ProcessSizeObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object with memory_mb and/or cpu_millicores")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let fields =
                    Fields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ProcessSizeObject {
                    memory_mb: fields.memory_mb,
                    cpu_millicores: fields.cpu_millicores,
                })
            }
        }
        deserializer.deserialize_map(ObjectOnly)
    }
}

impl From<ProcessSizeObject> for ProcessSize {
    fn from(object: ProcessSizeObject) -> Self {
        Self {
            memory_mb: object.memory_mb,
            cpu_millicores: object.cpu_millicores,
        }
    }
}

/// Body of `PUT /api/environments/{id}/formation` (`gilgal scale web=3 worker=1`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FormationUpdate {
    /// Instance counts by process type (0 to 100 each).
    #[serde(default)]
    #[schema(schema_with = instance_counts_schema)]
    pub counts: BTreeMap<String, u32>,
    /// Sizes by process type.
    #[serde(default)]
    pub sizes: BTreeMap<String, ProcessSize>,
}

/// The formation of an environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Formation {
    /// Instance counts by process type, as running.
    pub counts: BTreeMap<String, u32>,
    /// Sizes by process type set with `gilgal scale`.
    pub sizes: BTreeMap<String, ProcessSize>,
    /// The resize deployment, when sizes changed.
    pub deployment: Option<Uuid>,
}

/// Body of `POST /api/environments/{id}/runs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RunRequest {
    /// The command and its arguments (never passed through a shell): 1 to 256 arguments
    /// without NUL bytes, the first not empty, 64 KiB in all.
    #[schema(value_type = Vec<CommandArgument>, min_items = 1, max_items = 256)]
    pub command: Vec<String>,
}

/// A one-off run (`gilgal run`, cron).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Run {
    /// Stable id.
    pub id: Uuid,
    /// Environment.
    pub environment_id: Uuid,
    /// The cron job that started it.
    pub cron_job_id: Option<Uuid>,
    /// The cron tick it ran for (Unix seconds).
    pub tick: Option<i64>,
    /// The command.
    pub command: Vec<String>,
    /// Release it ran from.
    pub release: Option<u64>,
    /// `running`, `succeeded`, `failed` or `skipped`.
    pub state: String,
    /// Exit code once exited.
    pub exit_code: Option<i64>,
    /// Why it failed or was skipped.
    pub failure: Option<String>,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it ended.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}

/// Body of `POST /api/environments/{id}/cron`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CronJobRequest {
    /// Cron expression, UTC: five fields (minute hour day-of-month month day-of-week); at most once a minute.
    pub schedule: String,
    /// The command and its arguments: 1 to 256 arguments without NUL bytes, the first not
    /// empty, 64 KiB in all.
    #[schema(value_type = Vec<CommandArgument>, min_items = 1, max_items = 256)]
    pub command: Vec<String>,
    /// Start a run even while the previous one is still going (default false: skip).
    #[serde(default)]
    pub allow_overlap: bool,
}

/// A scheduled command.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CronJob {
    /// Stable id.
    pub id: Uuid,
    /// Environment.
    pub environment_id: Uuid,
    /// Cron expression.
    pub schedule: String,
    /// The command.
    pub command: Vec<String>,
    /// Whether runs may overlap.
    pub allow_overlap: bool,
}

/// Body of `POST /api/environments/{id}/domains`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DomainRequest {
    /// A hostname you control, pointed at this machine (`www.example.com`).
    #[schema(
        pattern = "^(\\*\\.)?(([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?|[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt])\\.*$",
        max_length = 253
    )]
    pub hostname: String,
}

/// A custom domain of an environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Domain {
    /// The hostname.
    pub hostname: String,
    /// The environment it serves.
    pub environment_id: Uuid,
}

/// Traffic and resource figures of one environment since the server started.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct EnvironmentMetrics {
    /// Environment id.
    pub environment_id: Uuid,
    /// Environment name.
    pub environment: String,
    /// Requests answered through the proxy.
    pub requests: u64,
    /// Responses by status class, `1xx` … `5xx`.
    pub status_classes: BTreeMap<String, u64>,
    /// Share of 5xx responses (0 to 1).
    pub error_rate: f64,
    /// Latency percentiles (seconds, upper bound of the histogram bucket), when any request.
    pub p50_seconds: Option<f64>,
    /// 95th percentile.
    pub p95_seconds: Option<f64>,
    /// 99th percentile.
    pub p99_seconds: Option<f64>,
    /// Requests and tunnels open now.
    pub open_connections: u64,
    /// Latency histogram (non-cumulative), so clients can compute percentiles over a window
    /// from two samples.
    #[serde(default)]
    pub latency_buckets: Vec<LatencyBucket>,
    /// Running instances.
    pub instances: Vec<InstanceMetrics>,
    /// The release these figures are limited to (a deployment's figures), or none for the
    /// whole environment.
    #[serde(default)]
    pub release: Option<u64>,
}

/// One bucket of a latency histogram.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct LatencyBucket {
    /// Upper bound in seconds; absent for the last bucket (+Inf).
    pub le_seconds: Option<f64>,
    /// Requests whose latency fell in this bucket (and not in a lower one).
    pub count: u64,
}

/// One instance's resource use.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct InstanceMetrics {
    /// Process type.
    pub process_type: String,
    /// Index within the type.
    pub index: u32,
    /// Release it runs.
    pub release: u64,
    /// CPU time used (seconds).
    pub cpu_seconds: Option<f64>,
    /// Resident memory (bytes).
    pub memory_bytes: Option<u64>,
    /// Restarts since it was started.
    pub restarts: u32,
}

/// `GET`/`PUT /api/environments/{id}/edge`: what the edge enforces for an environment, on
/// its default hostname and every custom domain.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct EdgeSettings {
    /// Answer plain-HTTP requests with a 308 to the same URL over HTTPS.
    #[serde(default)]
    pub https_only: bool,
    /// `Strict-Transport-Security: max-age` (seconds, 1 to 63072000) on HTTPS answers; none
    /// when absent. Browsers then refuse plain HTTP for that long: start small.
    #[serde(default)]
    pub hsts_max_age_seconds: Option<u64>,
    /// Add `includeSubDomains` to that header.
    #[serde(default)]
    pub hsts_include_subdomains: bool,
    /// Per-client request budgets (at most 16; one per path prefix). A client past one is
    /// answered 429 with `Retry-After`.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitRule>,
}

/// A request budget per client address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RateLimitRule {
    /// Only requests under this path prefix count (`/api` matches `/api` and `/api/…`);
    /// every request when absent.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Requests allowed per period, sustained (1 to 1000000).
    pub requests: u32,
    /// The period in seconds (1 to 86400).
    pub per_seconds: u32,
    /// Requests a client may make at once (1 to 1000000; default: `requests`).
    #[serde(default)]
    pub burst: Option<u32>,
}
