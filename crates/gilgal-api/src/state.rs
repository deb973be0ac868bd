//! Shared state handed to every handler.

use std::sync::Arc;
use std::time::Duration;

use gilgal_auth::access::AccessTokenCodec;
use gilgal_auth::keys::SigningKey;
use gilgal_deploy::Deployer;
use gilgal_proxy::ProxyHandle;
use gilgal_store::Store;

/// Tunables of the API, with production defaults.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Lifetime of access tokens; short, because they are checked without a refresh.
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token (each use replaces it with a fresh one).
    pub refresh_token_ttl: Duration,
    /// Largest JSON body accepted.
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// Everything handlers need; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
    /// Tunables, copied out for cheap access.
    pub config: ApiConfig,
}

struct Inner {
    store: Store,
    proxy: ProxyHandle,
    deployer: Arc<Deployer>,
    codec: AccessTokenCodec,
    decoy_hash: String,
}

impl AppState {
    /// Builds the state. Computes the timing-decoy hash once (tens of milliseconds).
    pub fn new(
        store: Store,
        proxy: ProxyHandle,
        deployer: Arc<Deployer>,
        signing_key: &SigningKey,
        config: ApiConfig,
    ) -> Result<Self, gilgal_auth::AuthError> {
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                proxy,
                deployer,
                codec: AccessTokenCodec::new(signing_key),
                decoy_hash: gilgal_auth::password::timing_decoy_hash()?,
            }),
            config,
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The edge proxy's control handle (routes, certificates, metrics).
    pub fn proxy(&self) -> &ProxyHandle {
        &self.inner.proxy
    }

    /// The deploy pipeline.
    pub fn deployer(&self) -> &Arc<Deployer> {
        &self.inner.deployer
    }

    /// The access-token codec.
    pub fn codec(&self) -> &AccessTokenCodec {
        &self.inner.codec
    }

    /// A hash to verify against when an email is unknown, so timing reveals nothing.
    pub(crate) fn decoy_hash(&self) -> &str {
        &self.inner.decoy_hash
    }
}
