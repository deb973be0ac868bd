//! Shared state handed to every handler.

use std::sync::Arc;
use std::time::Duration;

use gilgal_auth::access::AccessTokenCodec;
use gilgal_auth::keys::SigningKey;
use gilgal_deploy::{
    Addons, AlertEvaluator, AppMetrics, Changes, Deployments, Platform, Runs, Services, Teardown,
};
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
    /// Browser origins allowed to call the API (CORS), e.g. a dashboard's; none by default.
    pub cors_origins: Vec<String>,
    /// Sustained requests per second each credential may make (bursts up to 10× that).
    pub requests_per_second: u32,
    /// How long a client may take to send a request head (also how long an idle keep-alive
    /// connection is kept): slow or silent clients must not hold connections forever.
    pub header_read_timeout: Duration,
    /// Connections held at once; beyond this new connections are closed at once, so a flood
    /// of half-open connections cannot exhaust file descriptors or memory.
    pub max_connections: usize,
    /// Reverse proxies in front of the API: only from them is `X-Forwarded-For` believed when
    /// deciding which client address a request came from (login limits, audit). Empty: the
    /// connection's peer is the client.
    pub trusted_proxies: Vec<gilgal_proxy::IpNet>,
    /// Password hashes (argon2, 19 MiB each) computed at once by logins and registrations;
    /// by default twice the CPU count, so a burst cannot allocate memory per request.
    pub password_hashes_at_once: usize,
    /// How long a login or registration waits for a hashing slot before it is answered 503.
    pub password_hash_wait: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            max_body_bytes: 1024 * 1024,
            cors_origins: Vec::new(),
            requests_per_second: 50,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            trusted_proxies: Vec::new(),
            password_hashes_at_once: std::thread::available_parallelism()
                .map_or(2, std::num::NonZeroUsize::get)
                .saturating_mul(2),
            password_hash_wait: Duration::from_secs(5),
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
    services: Services,
    codec: AccessTokenCodec,
    decoy_hash: String,
    account_failures: crate::limits::FailureLimiter,
    address_failures: crate::limits::FailureLimiter,
    request_budget: crate::limits::RequestBudget,
    follow_streams: Arc<crate::limits::PerUserSlots>,
    password_hashing: Arc<tokio::sync::Semaphore>,
    uploads_in_flight: Arc<crate::limits::PerUserSlots>,
}

impl AppState {
    /// Builds the state. Computes the timing-decoy hash once (tens of milliseconds).
    pub fn new(
        store: Store,
        services: Services,
        signing_key: &SigningKey,
        config: ApiConfig,
    ) -> Result<Self, gilgal_auth::AuthError> {
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                services,
                codec: AccessTokenCodec::new(signing_key),
                decoy_hash: gilgal_auth::password::timing_decoy_hash()?,
                account_failures: crate::limits::FailureLimiter::new(
                    crate::limits::FailurePolicy::ACCOUNT,
                ),
                address_failures: crate::limits::FailureLimiter::new(
                    crate::limits::FailurePolicy::ADDRESS,
                ),
                request_budget: crate::limits::RequestBudget::new(
                    config.requests_per_second,
                    config.requests_per_second.saturating_mul(10),
                ),
                follow_streams: Arc::default(),
                uploads_in_flight: Arc::default(),
                password_hashing: Arc::new(tokio::sync::Semaphore::new(
                    config.password_hashes_at_once.max(1),
                )),
            }),
            config,
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Every route's counters at the edge; 503 while the edge process cannot be reached.
    pub async fn edge_metrics(&self) -> Result<gilgal_proxy::MetricsSnapshot, crate::ApiError> {
        self.platform().edge().link().metrics().await.map_err(|e| {
            tracing::warn!(error = %e, "cannot read the edge's metrics");
            crate::ApiError::unavailable(
                "edge_unavailable",
                "the edge's metrics cannot be read right now; retry shortly",
                std::time::Duration::from_secs(1),
            )
        })
    }

    /// The shared platform: vault, settings, quotas, logs, certificates, URLs.
    pub fn platform(&self) -> &Arc<Platform> {
        &self.inner.services.platform
    }

    /// Deployments (upload, git, image) and their cancellation.
    pub fn deployments(&self) -> &Arc<Deployments> {
        &self.inner.services.deployments
    }

    /// Changes that start from what runs (config, rollback, promote, redeploy, scale, domains).
    pub fn changes(&self) -> &Arc<Changes> {
        &self.inner.services.changes
    }

    /// Add-on use-cases.
    pub fn addons(&self) -> &Arc<Addons> {
        &self.inner.services.addons
    }

    /// Project and environment deletion.
    pub fn teardown(&self) -> &Arc<Teardown> {
        &self.inner.services.teardown
    }

    /// One-off runs.
    pub fn runs(&self) -> &Arc<Runs> {
        &self.inner.services.runs
    }

    /// Alert rules, channels and notifications.
    pub fn alerts(&self) -> &Arc<AlertEvaluator> {
        &self.inner.services.alerts
    }

    /// Instance counts, resource use and apps' own metrics.
    pub fn metrics(&self) -> &Arc<AppMetrics> {
        &self.inner.services.metrics
    }

    /// The access-token codec.
    pub fn codec(&self) -> &AccessTokenCodec {
        &self.inner.codec
    }

    /// Failed logins per account.
    pub(crate) fn account_failures(&self) -> &crate::limits::FailureLimiter {
        &self.inner.account_failures
    }

    /// Failed credential checks per client address.
    pub(crate) fn address_failures(&self) -> &crate::limits::FailureLimiter {
        &self.inner.address_failures
    }

    /// Per-credential request budget.
    pub(crate) fn request_budget(&self) -> &crate::limits::RequestBudget {
        &self.inner.request_budget
    }

    /// Open log follow streams per user.
    pub(crate) fn follow_streams(&self) -> &Arc<crate::limits::PerUserSlots> {
        &self.inner.follow_streams
    }

    /// Source uploads being received, per user.
    pub(crate) fn uploads_in_flight(&self) -> &Arc<crate::limits::PerUserSlots> {
        &self.inner.uploads_in_flight
    }

    /// Slots for password hashing (see [`ApiConfig::password_hashes_at_once`]).
    pub(crate) fn password_hashing(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.password_hashing
    }

    /// A hash to verify against when an email is unknown, so timing reveals nothing.
    pub(crate) fn decoy_hash(&self) -> &str {
        &self.inner.decoy_hash
    }
}
