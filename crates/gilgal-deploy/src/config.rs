//! Config snapshots of releases and the vault that seals and opens secret values.
//!
//! A release is an artifact plus a config snapshot: the environment's config vars at the time
//! the release was made, secrets still sealed. Starting a release (deploy, rollback, restart
//! after a crash) opens the snapshot's secrets with the environment's data key, so a rollback
//! gets exactly the config it had, and nothing in the database is readable without the master
//! key file.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use gilgal_secrets::{DataKey, KeyRing, Redactor, Rotation, SealedValue, WrappedKey};
use gilgal_store::{ConfigVarRecord, Store};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A release's config vars; secret values stay sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigSnapshot {
    /// Variables by name.
    #[serde(default)]
    pub vars: BTreeMap<String, SnapshotVar>,
}

/// One variable in a snapshot.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotVar {
    /// The plain value, or the sealed one when `secret`.
    pub value: String,
    /// Whether `value` is sealed.
    #[serde(default)]
    pub secret: bool,
}

impl std::fmt::Debug for SnapshotVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotVar")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

impl ConfigSnapshot {
    /// The snapshot of an environment's current config vars.
    pub fn from_records(records: &[ConfigVarRecord]) -> Self {
        Self {
            vars: records
                .iter()
                .map(|r| {
                    (
                        r.name.clone(),
                        SnapshotVar {
                            value: r.value.clone(),
                            secret: r.secret,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Parses a stored snapshot (`{}` for releases made before config existed).
    pub fn parse(raw: &str) -> Result<Self, VaultError> {
        serde_json::from_str(raw).map_err(|e| VaultError::Corrupt(e.to_string()))
    }

    /// The stored form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// Opened config: every value in plain text, for instance environments, plus a redactor
/// that hides the secret ones from logs and messages.
pub struct ResolvedConfig {
    /// Variables by name, secrets opened.
    pub vars: BTreeMap<String, String>,
    /// Hides secret values in text.
    pub redactor: Redactor,
}

impl std::fmt::Debug for ResolvedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedConfig")
            .field("names", &self.vars.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why secrets could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The cryptography refused (wrong master key, tampered value).
    #[error("secret store: {0}")]
    Secrets(#[from] gilgal_secrets::SecretsError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] gilgal_store::StoreError),
    /// A snapshot could not be decoded.
    #[error("config snapshot is corrupt: {0}")]
    Corrupt(String),
}

/// Seals and opens secret config values with per-environment data keys wrapped by the master
/// key. Shared by the API (writes) and the pipeline (reads).
pub struct Vault {
    ring: std::sync::RwLock<KeyRing>,
    key_path: std::path::PathBuf,
    store: Store,
    /// One rotation at a time.
    rotating: tokio::sync::Mutex<()>,
    /// Opened data keys by environment.
    keys: Mutex<HashMap<Uuid, DataKey>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").finish_non_exhaustive()
    }
}

/// Associated data binding a sealed value to its environment and name, so ciphertexts cannot
/// be moved between variables or environments.
fn associated_data(environment: Uuid, name: &str) -> Vec<u8> {
    format!("gilgal-config:{environment}:{name}").into_bytes()
}

impl Vault {
    /// A vault over the master key file at `path` (created with 0600 on first start).
    pub fn open_or_create(path: &Path, store: Store) -> Result<Self, VaultError> {
        Ok(Self {
            ring: std::sync::RwLock::new(KeyRing::load_or_create(path)?),
            key_path: path.to_owned(),
            store,
            rotating: tokio::sync::Mutex::new(()),
            keys: Mutex::new(HashMap::new()),
        })
    }

    fn wrap(&self, key: &DataKey) -> Result<WrappedKey, VaultError> {
        let ring = self
            .ring
            .read()
            .map_err(|_| VaultError::Corrupt("key ring lock poisoned".to_owned()))?;
        Ok(ring.wrap(key))
    }

    fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<DataKey, VaultError> {
        let ring = self
            .ring
            .read()
            .map_err(|_| VaultError::Corrupt("key ring lock poisoned".to_owned()))?;
        Ok(ring.unwrap(wrapped)?)
    }

    /// Replaces the master key: a new key is written beside the old one, every environment's
    /// data key is re-wrapped with it in one transaction, then the new key replaces the old
    /// file. Sealed values stay as they are (they are under the data keys). A crash at any
    /// point leaves both keys on disk and the next start (or rotation) finishes the job.
    /// Returns how many data keys were re-wrapped.
    pub async fn rotate_master_key(&self) -> Result<usize, VaultError> {
        let _one_at_a_time = self.rotating.lock().await;
        let rotation = Rotation::begin(&self.key_path)?;
        // From now on new data keys are wrapped with the new key.
        let reloaded = KeyRing::load_or_create(&self.key_path)?;
        if let Ok(mut ring) = self.ring.write() {
            *ring = reloaded;
        }
        let stored = self.store.wrapped_data_keys().await?;
        let mut changes = Vec::new();
        for (environment, text) in &stored {
            let wrapped = WrappedKey::parse(text)?;
            let rewrapped = rotation.rewrap(&wrapped)?;
            if rewrapped.as_str() != text {
                changes.push((*environment, text.clone(), rewrapped.as_str().to_owned()));
            }
        }
        self.store.replace_wrapped_data_keys(&changes).await?;
        let now_stored = self.store.wrapped_data_keys().await?;
        let parsed = now_stored
            .iter()
            .map(|(_, text)| WrappedKey::parse(text))
            .collect::<Result<Vec<_>, _>>()?;
        rotation.commit(parsed.iter())?;
        let committed = KeyRing::load_or_create(&self.key_path)?;
        if let Ok(mut ring) = self.ring.write() {
            *ring = committed;
        }
        Ok(changes.len())
    }

    async fn data_key(&self, environment: Uuid) -> Result<DataKey, VaultError> {
        if let Some(key) = self
            .keys
            .lock()
            .ok()
            .and_then(|k| k.get(&environment).cloned())
        {
            return Ok(key);
        }
        let candidate = self.wrap(&DataKey::generate())?;
        let stored = self
            .store
            .environment_data_key(environment, candidate.as_str())
            .await?;
        let key = self.unwrap_key(&WrappedKey::parse(&stored)?)?;
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(environment, key.clone());
        }
        Ok(key)
    }

    /// Seals a secret value of `environment`'s variable `name`.
    pub async fn seal(
        &self,
        environment: Uuid,
        name: &str,
        value: &str,
    ) -> Result<String, VaultError> {
        let key = self.data_key(environment).await?;
        let sealed = key.seal(value, &associated_data(environment, name))?;
        Ok(sealed.as_str().to_owned())
    }

    /// Opens one value sealed by [`Vault::seal`] under `environment` and `name` (webhook
    /// secrets use this; config vars go through [`Vault::resolve`]).
    pub async fn open(
        &self,
        environment: Uuid,
        name: &str,
        sealed: &str,
    ) -> Result<gilgal_secrets::Zeroizing<String>, VaultError> {
        let key = self.data_key(environment).await?;
        Ok(key.open(
            &SealedValue::parse(sealed)?,
            &associated_data(environment, name),
        )?)
    }

    /// Opens every secret of a snapshot taken in `environment`.
    pub async fn resolve(
        &self,
        environment: Uuid,
        snapshot: &ConfigSnapshot,
    ) -> Result<ResolvedConfig, VaultError> {
        let mut vars = BTreeMap::new();
        let mut secrets = Vec::new();
        for (name, var) in &snapshot.vars {
            if var.secret {
                let key = self.data_key(environment).await?;
                let opened = key.open(
                    &SealedValue::parse(&var.value)?,
                    &associated_data(environment, name),
                )?;
                secrets.push(opened.to_string());
                vars.insert(name.clone(), opened.to_string());
            } else {
                vars.insert(name.clone(), var.value.clone());
            }
        }
        Ok(ResolvedConfig {
            vars,
            redactor: Redactor::new(secrets)?,
        })
    }

    /// The current config of `environment`, opened.
    pub async fn current(&self, environment: Uuid) -> Result<ResolvedConfig, VaultError> {
        let records = self.store.config_vars(environment).await?;
        self.resolve(environment, &ConfigSnapshot::from_records(&records))
            .await
    }
}
