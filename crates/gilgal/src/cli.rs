//! Command-line grammar (clap derive). Each subcommand maps to one API call or a short flow.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Gilgal: a self-hosted platform for deploying apps.
#[derive(Debug, Parser)]
#[command(name = "gilgal", version, about, propagate_version = true)]
pub struct Cli {
    /// Options every client command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every client command.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// API server URL; defaults to the one you logged in to, else http://127.0.0.1:8080.
    #[arg(long, global = true, env = "GILGAL_SERVER")]
    pub server: Option<String>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Subcommands.
// Parsed once per process; boxing `ServerArgs` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the platform: API server, edge proxy and supervisor.
    Server(ServerArgs),
    /// The edge proxy as its own process; started (and re-adopted) by `gilgal server`.
    #[command(hide = true)]
    Edge(EdgeArgs),
    /// Create an account on a server (the first account becomes the administrator) and log in.
    Register(CredentialArgs),
    /// Log in and keep an API token in ~/.config/gilgal (0600).
    Login(CredentialArgs),
    /// Revoke the stored token and forget it.
    Logout,
    /// Show who you are logged in as.
    Whoami,
    /// Link this directory (and those below it) to a project and environment, so commands
    /// run here need no `-p`/`-e`; without `-p`, show the link.
    Link(LinkArgs),
    /// Remove this directory's link.
    Unlink,
    /// Manage projects.
    #[command(subcommand)]
    Projects(ProjectsCommand),
    /// Deploy a directory: pack it (honouring .gitignore and .gilgalignore; never .env,
    /// .venv or node_modules unless re-included), upload it, stream the build log, and print
    /// the app's URL once it is live.
    Deploy(DeployArgs),
    /// Manage personal API tokens (for CI and scripts).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Config vars and secrets of an environment.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Environments of a project (production, staging, …).
    #[command(subcommand)]
    Environments(EnvironmentsCommand),
    /// The canary in progress (`gilgal deploy --canary`): status, promote, abort.
    #[command(subcommand)]
    Canary(CanaryCommand),
    /// Enforce HTTPS for an environment: redirect plain HTTP (308) and, with `--hsts`, tell
    /// browsers to use HTTPS only. `gilgal https` alone shows the setting.
    Https {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
        /// Strict-Transport-Security max-age (`1d`, `30d`, `1y`, or seconds); start small.
        #[arg(long, value_name = "DURATION")]
        hsts: Option<String>,
        /// Add includeSubDomains to the HSTS header.
        #[arg(long, requires = "hsts")]
        include_subdomains: bool,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Per-client rate limits at the edge: past one, a client is answered 429 with
    /// Retry-After.
    #[command(subcommand)]
    Ratelimit(RatelimitCommand),
    /// An environment's release history.
    Releases {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Go back to an earlier release (default: the one before the live one), no rebuild.
    Rollback {
        /// Release, e.g. `v3`.
        release: Option<String>,
        /// Run that release's release phase again.
        #[arg(long)]
        run_release_phase: bool,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Ship one environment's live artifact to another with the target's config.
    Promote {
        /// Project name.
        #[arg(long, short = 'p', env = "GILGAL_PROJECT")]
        project: String,
        /// Source environment.
        #[arg(long)]
        from: String,
        /// Target environment.
        #[arg(long, default_value = "production")]
        to: String,
    },
    /// Start a deployment's release again with the current config, no rebuild.
    Redeploy {
        /// Deployment id.
        deployment: String,
        /// Run the release phase again.
        #[arg(long)]
        run_release_phase: bool,
    },
    /// Scale process types (`web=3 worker=1`) and size them, with zero downtime.
    Scale {
        /// Counts, `TYPE=N`.
        #[arg(value_name = "TYPE=N")]
        counts: Vec<String>,
        /// Memory per instance, `TYPE=MB`.
        #[arg(long, value_name = "TYPE=MB")]
        memory: Vec<String>,
        /// CPU cap per instance, `TYPE=MILLICORES` (500 = half a core).
        #[arg(long, value_name = "TYPE=MILLICORES")]
        cpu: Vec<String>,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Run a command once in a new instance of the live release; exits with its status.
    Run {
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// An environment's log: app output, release phase, runs, cron and builds, kept across
    /// redeploys and restarts.
    Logs(LogsArgs),
    /// Requests per second, error rate, latency percentiles, CPU and memory of an
    /// environment over a window (two samples `--window` apart; `0` = since the server started).
    Metrics {
        /// Length of the window: `10s`, `1m`, or `0`.
        #[arg(long, default_value = "10s")]
        window: String,
        /// Only the requests one release answered (`v7`), e.g. a canary against the stable one.
        #[arg(long, value_name = "RELEASE")]
        release: Option<String>,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Uptime and what happened to an environment: deploys, crashes (exit code, OOM),
    /// restarts, scale changes, failing health checks.
    Events {
        /// How many of the newest events.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: u32,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Tracebacks in the app's output (Python, Node.js, Rust panics) grouped by signature,
    /// with counts, first and last seen, and release.
    Errors {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Scheduled commands.
    #[command(subcommand)]
    Cron(CronCommand),
    /// Custom domains of an environment.
    #[command(subcommand)]
    Domains(DomainsCommand),
    /// Push-to-deploy webhooks for GitHub, GitLab or any CI.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Deployments in progress: cancel one.
    #[command(subcommand)]
    Deployments(DeploymentsCommand),
    /// Alerts: what fired, the rules (error rate, p95 latency, health checks, crash loops,
    /// failed backups) and where notifications go (webhooks, Slack, email).
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// Managed PostgreSQL, Redis and S3 storage: create, back up, restore, connect.
    #[command(subcommand)]
    Addons(AddonsCommand),
    /// Who did what, when, from where (your own calls; everyone's for administrators).
    Audit {
        /// Only actions containing this text (`deployments`, `config`, `DELETE`, `login`).
        #[arg(long)]
        action: Option<String>,
        /// Only since this time (RFC 3339, e.g. 2026-11-22T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Instance administration.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// `gilgal logs` filters.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new lines as they come (Ctrl-C stops).
    #[arg(short, long)]
    pub follow: bool,
    /// Only this process type: `web`, a worker's name, `release`, `run`, `build`.
    #[arg(long = "type", value_name = "TYPE")]
    pub process_type: Option<String>,
    /// Only this release (`v3` or `3`).
    #[arg(long)]
    pub release: Option<String>,
    /// Only lines since a duration ago (`30s`, `15m`, `1h`, `7d`) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines containing this text (case-sensitive).
    #[arg(long)]
    pub grep: Option<String>,
    /// How many of the newest matching lines to print first.
    #[arg(short = 'n', long, default_value_t = 100)]
    pub lines: u32,
    /// Where.
    #[command(flatten)]
    pub target: Target,
}

/// `gilgal deploy` options.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Directory to deploy.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Project to deploy to.
    #[arg(long, short = 'p', env = "GILGAL_PROJECT")]
    pub project: String,
    /// Environment to deploy to.
    #[arg(long, short = 'e', env = "GILGAL_ENV", default_value = "production")]
    pub env: String,
    /// Return once the upload is accepted instead of following the build.
    #[arg(long)]
    pub no_follow: bool,
    /// Deploy from this git repository instead of the directory (cloned by the server).
    #[arg(long, conflicts_with = "dir")]
    pub git: Option<String>,
    /// Branch, tag or commit to deploy with --git (default `main`).
    #[arg(long = "ref", requires = "git")]
    pub reference: Option<String>,
    /// Deploy this existing Docker image (`repo:tag` or an id) without a build; its CMD is the
    /// web process (servers on the Docker runtime).
    #[arg(long, conflicts_with_all = ["dir", "git"])]
    pub image: Option<String>,
    /// Roll out as a canary: percentages of new requests rising to 100, `pause` waiting for
    /// `gilgal canary promote` (e.g. `10,25,pause,50,100`). Before each step the canary is
    /// judged against the live release over the same window (5xx share and p99); one that
    /// fails is rolled back on its own.
    #[arg(long, value_name = "STEPS")]
    pub canary: Option<String>,
    /// How long each canary step is held and judged (`30s`, `1m`; default 1m).
    #[arg(long, requires = "canary", value_name = "DURATION")]
    pub interval: Option<String>,
    /// Keep each client on the release it first got during the canary (a cookie).
    #[arg(long, requires = "canary")]
    pub sticky: bool,
    /// Canary requests a step needs before it can pass (default 100).
    #[arg(long, requires = "canary", value_name = "N")]
    pub min_requests: Option<u64>,
    /// How long past the interval a step waits for those requests (default 5m).
    #[arg(long, requires = "canary", value_name = "DURATION")]
    pub traffic_deadline: Option<String>,
    /// What happens when that deadline passes: `rollback` (default) or `proceed`.
    #[arg(long, requires = "canary", value_parser = ["rollback", "proceed"])]
    pub no_traffic: Option<String>,
    /// Roll out blue-green: the new release answers on a private hostname (`v8.NAME…`)
    /// first, and its `--smoke` checks must pass there before it gets any traffic.
    #[arg(long, conflicts_with = "canary")]
    pub blue_green: bool,
    /// A blue-green smoke check, `GET /health 200` (repeat for more).
    #[arg(long, requires = "blue_green", value_name = "CHECK")]
    pub smoke: Vec<String>,
    /// Roll out at once, whatever gilgal.toml's `[deploy] strategy` says.
    #[arg(long, conflicts_with_all = ["canary", "blue_green"])]
    pub immediate: bool,
}

impl DeployArgs {
    /// The canary options to send, if a canary was asked for.
    pub fn canary_options(&self) -> anyhow::Result<Option<gilgal_types::CanaryOptions>> {
        if self.blue_green || self.immediate {
            for check in &self.smoke {
                gilgal_core::smoke::parse_smoke(check)?;
            }
            return Ok(Some(gilgal_types::CanaryOptions {
                strategy: Some(
                    if self.immediate {
                        "immediate"
                    } else {
                        "blue-green"
                    }
                    .to_owned(),
                ),
                smoke: (!self.smoke.is_empty()).then(|| self.smoke.join(";")),
                ..Default::default()
            }));
        }
        let Some(steps) = &self.canary else {
            return Ok(None);
        };
        let seconds = |text: &Option<String>| -> anyhow::Result<Option<u64>> {
            text.as_deref()
                .map(|t| crate::commands::metrics::parse_window(t).map(|d| d.as_secs()))
                .transpose()
        };
        Ok(Some(gilgal_types::CanaryOptions {
            canary: Some(steps.clone()),
            interval_seconds: seconds(&self.interval)?,
            sticky: self.sticky.then_some(true),
            min_requests: self.min_requests,
            traffic_deadline_seconds: seconds(&self.traffic_deadline)?,
            no_traffic: self.no_traffic.clone(),
            ..Default::default()
        }))
    }
}

/// `gilgal ratelimit …`.
#[derive(Debug, Subcommand)]
pub enum RatelimitCommand {
    /// Set the limit for the environment (or one path prefix): `10/s`, `600/m`, `5000/h`.
    Set {
        /// Requests per period, sustained.
        #[arg(value_name = "RATE")]
        rate: String,
        /// Requests a client may make at once (default: the rate's count).
        #[arg(long)]
        burst: Option<u32>,
        /// Only for requests under this path prefix (e.g. `/api/login`).
        #[arg(long)]
        path: Option<String>,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Remove the limit of the environment (or of one path prefix).
    Remove {
        /// The path prefix whose limit goes.
        #[arg(long)]
        path: Option<String>,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// The limits in force.
    List {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
}

/// `gilgal canary …`.
#[derive(Debug, Subcommand)]
pub enum CanaryCommand {
    /// Where the canary in progress stands: step, weight, and its figures against the live
    /// release's over the same window.
    Status {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Move the canary past its pause (or current step); `--full` makes it live now.
    Promote {
        /// Skip every remaining step.
        #[arg(long)]
        full: bool,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Roll the canary back: weight 0 at once, its instances drained and stopped.
    Abort {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
}

/// `gilgal link` options.
#[derive(Debug, Args)]
pub struct LinkArgs {
    /// Project to link to (checked on the server).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
    /// Environment to link to (default `production`).
    #[arg(long, short = 'e', requires = "project")]
    pub env: Option<String>,
}

/// Which project and environment a command acts on.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// Project name.
    #[arg(long, short = 'p', env = "GILGAL_PROJECT")]
    pub project: String,
    /// Environment name.
    #[arg(long, short = 'e', env = "GILGAL_ENV", default_value = "production")]
    pub env: String,
}

/// `gilgal env …`: config vars and secrets.
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Set variables (`KEY=VALUE …`); a live app rolls out a new release with them.
    Set {
        /// Assignments.
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
        /// Store them as secrets: encrypted at rest, never shown again, redacted from logs.
        #[arg(long)]
        secret: bool,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Remove variables.
    Unset {
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// List variables (secret values are masked).
    List {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Import a `.env` file (`KEY=VALUE` lines, `#` comments, optional quotes and `export`).
    Import {
        /// The file.
        file: PathBuf,
        /// Store every imported value as a secret.
        #[arg(long)]
        secret: bool,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
}

/// `gilgal environments …`.
#[derive(Debug, Subcommand)]
pub enum EnvironmentsCommand {
    /// Add an environment (served at `{project}-{name}.{base domain}`).
    Create {
        /// Name, e.g. `staging`.
        name: String,
        /// Project name.
        #[arg(long, short = 'p', env = "GILGAL_PROJECT")]
        project: String,
    },
    /// List a project's environments.
    List {
        /// Project name.
        #[arg(long, short = 'p', env = "GILGAL_PROJECT")]
        project: String,
    },
    /// Delete an environment, stopping what it runs.
    Delete {
        /// Name.
        name: String,
        /// Project name.
        #[arg(long, short = 'p', env = "GILGAL_PROJECT")]
        project: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// `gilgal deployments …`.
#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// Stop a deployment during its build, release phase, start or health gate; the release
    /// that was live keeps serving. Waits until the deployment has stopped.
    Cancel {
        /// Deployment id (printed by `gilgal deploy`).
        deployment: String,
    },
}

/// `gilgal cron …`.
#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Schedule a command: `gilgal cron add "0 * * * *" -- python cleanup.py`.
    Add {
        /// Cron expression, UTC: five fields (minute resolution; seconds are refused).
        schedule: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        /// Start a run even while the previous one is still going.
        #[arg(long)]
        allow_overlap: bool,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// List scheduled commands.
    List {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Remove a scheduled command by id.
    Remove {
        /// Job id (from `gilgal cron list`).
        id: String,
    },
}

/// `gilgal domains …`.
#[derive(Debug, Subcommand)]
pub enum DomainsCommand {
    /// Serve the environment at a domain you point at this machine.
    Add {
        /// Hostname, e.g. `www.example.com`.
        hostname: String,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// List custom domains.
    List {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Stop serving at a custom domain.
    Remove {
        /// Hostname.
        hostname: String,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
}

/// `gilgal addons …`.
#[derive(Debug, Subcommand)]
pub enum AddonsCommand {
    /// Create an add-on and attach it (DATABASE_URL / REDIS_URL; NAME_ prefixed with --as).
    Create {
        /// `postgres` or `redis`.
        kind: String,
        /// Name it (needed for a second add-on of a kind): `--as rate-limit` sets
        /// `RATE_LIMIT_DATABASE_URL`.
        #[arg(long = "as")]
        name: Option<String>,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// List the environment's add-ons.
    List {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Destroy an add-on (a final backup is kept unless --no-backup).
    Destroy {
        /// Add-on name.
        name: String,
        /// Skip the final backup.
        #[arg(long)]
        no_backup: bool,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Back an add-on up now.
    Backup {
        /// Add-on name.
        name: String,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// List an add-on's backups (failed ones with their error).
    Backups {
        /// Add-on name.
        name: String,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Restore a backup into an add-on (replaces its data, in one transaction).
    Restore {
        /// Add-on name (the target).
        name: String,
        /// Backup id (see `gilgal addons backups`); it may be another add-on's of the
        /// environment, to restore into a new database.
        backup: uuid::Uuid,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// When backups run (cron, UTC) and how many are kept.
    BackupPolicy {
        /// Add-on name.
        name: String,
        /// Cron schedule, e.g. "0 3 * * *".
        #[arg(long)]
        schedule: String,
        /// Successful backups kept.
        #[arg(long, default_value_t = 7)]
        retention: u32,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Open psql on a PostgreSQL add-on (extra arguments go to psql, e.g. `-- -c 'select 1'`).
    Psql {
        /// Add-on name (default `postgres`).
        #[arg(default_value = "postgres")]
        name: String,
        /// Where.
        #[command(flatten)]
        target: Target,
        /// Arguments for psql.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Open redis-cli on a Redis add-on (extra arguments go to redis-cli).
    RedisCli {
        /// Add-on name (default `redis`).
        #[arg(default_value = "redis")]
        name: String,
        /// Where.
        #[command(flatten)]
        target: Target,
        /// Arguments for redis-cli.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// `gilgal webhooks …`.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Deploy every push to a branch: prints the URL and secret to give the git host.
    Add {
        /// `github` (also Gitea/Forgejo), `gitlab`, or `generic` (HMAC-signed JSON from any CI).
        #[arg(long, default_value = "github")]
        provider: String,
        /// Repository Gilgal fetches on a push (`https://…`, `ssh://…`, `git@host:path`).
        #[arg(long)]
        repo: String,
        /// Only pushes to this branch deploy.
        #[arg(long, default_value = "main")]
        branch: String,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// List a project's webhooks.
    List {
        /// Project name.
        #[arg(long, short = 'p', env = "GILGAL_PROJECT")]
        project: String,
    },
    /// Recent deliveries of a webhook and what each did.
    Deliveries {
        /// Webhook id.
        id: uuid::Uuid,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Delete a webhook.
    Remove {
        /// Webhook id.
        id: uuid::Uuid,
    },
}

/// `gilgal alerts …`.
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// The environment's alerts, newest first, with their notifications.
    List {
        /// At most this many.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: u32,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// The environment's rules (defaults unless changed).
    Rules {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Change a rule: `gilgal alerts set error_rate --threshold 0.02 --for 10m`.
    Set {
        /// `error_rate`, `latency_p95`, `health_check`, `crash_loop` or `backup_failed`.
        #[arg(value_parser = ["error_rate", "latency_p95", "health_check", "crash_loop", "backup_failed"])]
        kind: String,
        /// The bound: a fraction for error_rate (0.01 = 1 %), seconds for latency_p95,
        /// a count for health_check and crash_loop.
        #[arg(long)]
        threshold: Option<f64>,
        /// How long the breach must last (`5m`), or crash_loop's counting window.
        #[arg(long = "for", value_name = "DURATION")]
        for_duration: Option<String>,
        /// Turn the rule on.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Turn the rule off (resolves what it fired).
        #[arg(long)]
        disable: bool,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Where the environment's notifications go.
    Channels {
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Send notifications somewhere more: a signed JSON `webhook`, a `slack` incoming
    /// webhook, or an `email` address.
    Notify {
        /// `webhook`, `slack` or `email`.
        #[arg(value_parser = ["webhook", "slack", "email"])]
        kind: String,
        /// The URL, or the address.
        destination: String,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Send a test notification to a channel now.
    Test {
        /// Channel id (from `gilgal alerts channels`).
        id: uuid::Uuid,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
    /// Stop sending notifications to a channel.
    RemoveChannel {
        /// Channel id (from `gilgal alerts channels`).
        id: uuid::Uuid,
        /// Where.
        #[command(flatten)]
        target: Target,
    },
}

/// `gilgal admin …`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Replace the master key that protects secrets (re-wraps every data key).
    RotateKey,
}

/// How to pass credentials without a prompt.
#[derive(Debug, Args)]
pub struct CredentialArgs {
    /// Account email (prompted for when omitted on a terminal).
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from standard input (one line) instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `gilgal server` options.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where Gilgal keeps its database, keys and apps; default /var/lib/gilgal as root, else
    /// ~/.local/share/gilgal.
    #[arg(long, env = "GILGAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the API.
    #[arg(long, default_value = "127.0.0.1:8080", env = "GILGAL_LISTEN")]
    pub listen: SocketAddr,
    /// Address of the edge proxy (plain HTTP) that serves the apps.
    #[arg(long, default_value = "127.0.0.1:8000", env = "GILGAL_PROXY_LISTEN")]
    pub proxy_listen: SocketAddr,
    /// Address of the edge proxy's HTTPS listener (TLS with certificates from the store);
    /// off when omitted.
    #[arg(long, env = "GILGAL_PROXY_TLS_LISTEN")]
    pub proxy_tls_listen: Option<SocketAddr>,
    /// Load balancers in front of the proxy (addresses or CIDR ranges, comma-separated, e.g.
    /// `10.0.0.0/8`): only their X-Forwarded-For/-Proto/-Host, X-Real-IP and Forwarded
    /// headers reach the apps. From anyone else Gilgal writes its own, so a client cannot
    /// pass a made-up address off as its own.
    #[arg(
        long,
        env = "GILGAL_PROXY_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_network
    )]
    pub proxy_trusted_proxies: Vec<gilgal_proxy::IpNet>,
    /// Reverse proxies in front of the API (addresses or CIDR ranges, comma-separated): only
    /// from them is X-Forwarded-For believed, so login limits count the real client's address
    /// rather than the proxy's. From anyone else the connection's own address counts.
    #[arg(
        long,
        env = "GILGAL_API_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_network
    )]
    pub api_trusted_proxies: Vec<gilgal_proxy::IpNet>,
    /// Most connections the API holds at once; beyond that new ones are closed at once, so
    /// a flood of slow or idle connections cannot exhaust the server.
    #[arg(long, default_value_t = 1024, env = "GILGAL_API_MAX_CONNECTIONS")]
    pub api_max_connections: usize,
    /// Domain under which apps get hostnames: `{project}.{base}` and `{project}-{env}.{base}`.
    #[arg(long, default_value = "localhost", env = "GILGAL_BASE_DOMAIN")]
    pub base_domain: String,
    /// Use this PostgreSQL database instead of the embedded SQLite (postgres://…).
    #[arg(long, env = "GILGAL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Open or close self-service registration (kept in the store; omitted: unchanged).
    #[arg(long, value_enum)]
    pub registration: Option<Registration>,
    /// Stop every app instance (and the edge process) when the server exits. By default
    /// instances and the edge keep running and are re-adopted by the next `gilgal server`,
    /// so a server upgrade or crash costs apps no downtime; tests and throwaway installs want
    /// a clean exit instead.
    #[arg(long, env = "GILGAL_STOP_APPS_ON_EXIT")]
    pub stop_apps_on_exit: bool,
    /// How many releases per environment keep their build artifact (for rollback); older
    /// ones are pruned.
    #[arg(long, default_value_t = 10, env = "GILGAL_KEEP_RELEASES")]
    pub keep_releases: usize,
    /// Days an environment's logs are kept (app output, builds, runs).
    #[arg(long, default_value_t = 30, env = "GILGAL_LOG_RETENTION_DAYS")]
    pub log_retention_days: u64,
    /// Most MiB of logs kept per environment; the oldest go first.
    #[arg(long, default_value_t = 256, env = "GILGAL_LOG_MAX_MB")]
    pub log_max_mb: u64,
    /// Milliseconds between health checks of running web instances (uptime and replacement
    /// of instances that fail 3 checks in a row).
    #[arg(long, default_value_t = 10_000, env = "GILGAL_HEALTH_INTERVAL_MS")]
    pub health_interval_ms: u64,
    /// Milliseconds between evaluations of alert rules (error rate, p95 latency, health
    /// checks, crash loops, failed backups) and deliveries of their notifications.
    #[arg(long, default_value_t = 15_000, env = "GILGAL_ALERT_INTERVAL_MS")]
    pub alert_interval_ms: u64,
    /// SMTP relay for email alerts: `smtp://host:25` (plain, a local relay),
    /// `smtp://user:pass@host:587?tls=required` (STARTTLS) or `smtps://user:pass@host:465`.
    #[arg(long, env = "GILGAL_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// The `From` of alert emails.
    #[arg(
        long,
        default_value = "Gilgal <gilgal@localhost>",
        env = "GILGAL_SMTP_FROM"
    )]
    pub smtp_from: String,
    /// Accept `file://` git URLs in deployments (single-user machines and tests).
    #[arg(long, env = "GILGAL_ALLOW_LOCAL_GIT")]
    pub allow_local_git: bool,
    /// Accept git URLs on loopback, private and link-local addresses (refused by default:
    /// users must not make the server probe its own network).
    #[arg(long, env = "GILGAL_ALLOW_PRIVATE_URLS")]
    pub allow_private_urls: bool,
    /// Create PostgreSQL add-ons on this server (an admin URL with CREATEROLE and CREATEDB)
    /// instead of the managed cluster Gilgal runs under the data dir.
    #[arg(long, env = "GILGAL_ADDONS_POSTGRES_URL")]
    pub addons_postgres_url: Option<String>,
    /// Browser origin allowed to call the API (CORS), e.g. a dashboard; repeatable.
    #[arg(
        long = "cors-origin",
        env = "GILGAL_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// App isolation: `auto` runs and builds each app as its own Unix user with Gilgal's data
    /// hidden from it when the server runs as root; `off` runs and builds apps as the server's
    /// user.
    #[arg(long, value_enum, default_value_t = Isolation::Auto, env = "GILGAL_ISOLATION")]
    pub isolation: Isolation,
    /// Log format on standard error.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, env = "GILGAL_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What runs app instances: `process` (supervised host processes, no Docker needed) or
    /// `docker` (releases are built as images and run as containers on the local dockerd).
    #[arg(long, value_enum, default_value_t = RuntimeKind::Process, env = "GILGAL_RUNTIME")]
    pub runtime: RuntimeKind,
    /// Where the edge proxy runs: `process` (its own process, which outlives a crash or
    /// restart of the server, so no request in flight is cut) or `in-process` (inside the
    /// server: one process less, but a server crash cuts the requests it holds).
    #[arg(long, value_enum, default_value_t = EdgeKind::Process, env = "GILGAL_EDGE")]
    pub edge: EdgeKind,
}

/// `--edge` values.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum EdgeKind {
    /// The edge runs as its own process (`gilgal edge`), adopted across server restarts.
    Process,
    /// The edge runs inside the server.
    InProcess,
}

/// `gilgal edge` (started by `gilgal server`, never by hand).
#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// The edge's directory (`DATA_DIR/edge`): admin socket, pid file.
    #[arg(long)]
    pub dir: std::path::PathBuf,
}

/// `--runtime` values.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RuntimeKind {
    /// Host processes supervised by Gilgal (the default; per-app users with `--isolation`).
    Process,
    /// Containers on the local dockerd; `--isolation` does not apply (the container is the
    /// boundary, and images run apps as an unprivileged user).
    Docker,
}

/// Registration switch values.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Registration {
    /// Anyone who can reach the API may sign up.
    Open,
    /// Only existing accounts (and the first user) may sign in.
    Closed,
}

/// Log output formats.
/// How apps are isolated from each other and from Gilgal.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Isolation {
    /// Per-app Unix users and hidden data when running as root; none otherwise.
    Auto,
    /// Apps run and build as the server's own user (development only).
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (for collectors).
    Json,
    /// Human-readable lines.
    Pretty,
}

/// `gilgal projects …`.
#[derive(Debug, Subcommand)]
pub enum ProjectsCommand {
    /// Create a project.
    Create {
        /// Name: lowercase letters, digits and hyphens; becomes the hostname.
        name: String,
        /// Free-text description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List your projects.
    List,
    /// Show one project.
    Show {
        /// Project name.
        name: String,
    },
    /// Delete a project.
    Delete {
        /// Project name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// `gilgal tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; its secret is printed once.
    Create {
        /// A label, e.g. `github-actions`.
        name: String,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// What it may do: `full`, `read` (GET only) or `deploy` (read + deploy, for CI).
        #[arg(long, default_value = "full")]
        scope: String,
        /// Bind it to this project.
        #[arg(long, short = 'p')]
        project: Option<String>,
        /// Bind it to this environment of the project (needs --project).
        #[arg(long, short = 'e', requires = "project")]
        env: Option<String>,
    },
    /// List your tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke {
        /// Token id (from `gilgal tokens list`).
        id: String,
    },
}

/// A CIDR range, or one address as the range holding only it.
fn parse_network(text: &str) -> Result<gilgal_proxy::IpNet, String> {
    let text = text.trim();
    text.parse::<gilgal_proxy::IpNet>()
        .or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(gilgal_proxy::IpNet::from)
        })
        .map_err(|_| format!("`{text}` is neither an IP address nor a CIDR range like 10.0.0.0/8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_take_addresses_and_ranges() {
        let cli = Cli::try_parse_from([
            "gilgal",
            "server",
            "--proxy-trusted-proxies",
            "10.0.0.0/8, 192.0.2.7,::1",
        ])
        .unwrap();
        let Command::Server(args) = cli.command else {
            panic!("parsed as another command");
        };
        let nets: Vec<String> = args
            .proxy_trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "::1/128"]);

        let err = Cli::try_parse_from(["gilgal", "server", "--proxy-trusted-proxies", "10.0.0/8"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("neither an IP address nor a CIDR range"),
            "{err}"
        );
    }
}
