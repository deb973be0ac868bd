//! Test harness shared by Gilgal's integration tests.
//!
//! [`TestServer::start`] runs the real API on `127.0.0.1:0` over a fresh store: a SQLite file in
//! a temp dir, or a new database on the PostgreSQL server named by `GILGAL_TEST_POSTGRES_URL`
//! (the test script starts one). [`backend_tests!`] turns one async test body into a SQLite
//! and a PostgreSQL test, so the same suite runs against both backends.

use std::net::SocketAddr;

use gilgal_api::{ApiConfig, AppState};
use gilgal_auth::keys::SigningKey;
use gilgal_store::{Store, StoreBackend};
use tokio::sync::oneshot;

/// Env var naming an admin URL of the PostgreSQL server used by tests.
pub const POSTGRES_URL_VAR: &str = "GILGAL_TEST_POSTGRES_URL";

/// Which store a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite in a temp dir.
    Sqlite,
    /// A fresh database on the test PostgreSQL server.
    Postgres,
}

/// A running API server for one test; stops when dropped.
pub struct TestServer {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Bound address.
    pub addr: SocketAddr,
    /// The server's state (store, token codec) for white-box checks.
    pub state: AppState,
    /// The in-process proxy the platform routes through, for white-box checks.
    pub proxy: gilgal_proxy::ProxyHandle,
    /// The data directory (removed on drop).
    pub data_dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    /// Starts a server with default settings.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, ApiConfig::default()).await
    }

    /// Starts a server with `config`. Panics with a clear message if the backend is missing.
    pub async fn start_with(backend: Backend, config: ApiConfig) -> Self {
        Self::start_with_quotas(backend, config, gilgal_deploy::Quotas::default()).await
    }

    /// Starts a server with `config` and deploy/build `quotas` (which the deployer enforces,
    /// not the API), for tests of the limits.
    pub async fn start_with_quotas(
        backend: Backend,
        config: ApiConfig,
        quotas: gilgal_deploy::Quotas,
    ) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        // As root, add-on servers run as their own system users and must pass through.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir.path(), std::fs::Permissions::from_mode(0o711))
                .expect("chmod data dir");
        }
        let store_backend = match backend {
            Backend::Sqlite => StoreBackend::Sqlite(data_dir.path().join("gilgal.db")),
            Backend::Postgres => StoreBackend::Postgres(fresh_postgres_database().await),
        };
        let store = Store::connect(&store_backend)
            .await
            .expect("store connects");
        let key = SigningKey::load_or_generate(&data_dir.path().join("keys/signing.key"))
            .expect("signing key");
        let proxy = gilgal_proxy::ProxyHandle::new(gilgal_proxy::ProxySettings::default());
        let runtime = gilgal_runtime::ProcessRuntime::new(
            data_dir.path().join("runtime"),
            gilgal_runtime::ProcessRuntimeConfig {
                cgroups: gilgal_runtime::CgroupConfig::Disabled,
                ..Default::default()
            },
        )
        .await
        .expect("process runtime");
        let vault = std::sync::Arc::new(
            gilgal_deploy::Vault::open_or_create(
                &data_dir.path().join("keys/master.key"),
                store.clone(),
            )
            .expect("master key"),
        );
        let platform = gilgal_deploy::Platform::new(
            store.clone(),
            std::sync::Arc::new(runtime),
            proxy.clone().into(),
            gilgal_deploy::PlatformConfig {
                work_dir: data_dir.path().join("work"),
                releases_dir: data_dir.path().join("releases"),
                cache_dir: data_dir.path().join("cache"),
                base_domain: "localhost".to_owned(),
                public_port: None,
                keep_releases: 10,
                allow_local_git: true,
                allow_private_urls: false,
                app_users: false,
                build_sandbox: None,
                images: None,
                addons: gilgal_deploy::AddonsConfig {
                    dir: data_dir.path().join("addons"),
                    backups_dir: data_dir.path().join("backups"),
                    postgres_url: None,
                    container_gateway: None,
                },
                logs: gilgal_logs::LogStore::open(gilgal_logs::LogConfig::new(
                    data_dir.path().join("logs"),
                ))
                .expect("log store"),
                health_interval: gilgal_deploy::DEFAULT_HEALTH_INTERVAL,
                alerts: gilgal_deploy::AlertsConfig {
                    interval: std::time::Duration::from_millis(200),
                    notifier: gilgal_notify::Notifier::new(None).expect("notifier"),
                },
                quotas,
            },
            vault,
        );
        let services = gilgal_deploy::Services::new(platform);
        {
            // Runtime output into the persistent logs, as `gilgal server` does.
            let ingest = services.log_ingest.clone();
            tokio::spawn(async move {
                ingest
                    .run_log_ingest(tokio_util::sync::CancellationToken::new())
                    .await
            });
        }
        {
            // Alert rules evaluated every 200 ms (no channels unless a test adds them).
            let alerts = services.alerts.clone();
            tokio::spawn(async move {
                alerts
                    .run_alerts(tokio_util::sync::CancellationToken::new())
                    .await
            });
        }
        let state = AppState::new(store, services, &key, config).expect("app state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel();
        let serve_state = state.clone();
        tokio::spawn(async move {
            let _ = gilgal_api::serve(listener, serve_state, async {
                let _ = rx.await;
            })
            .await;
        });
        Self {
            url: format!("http://{addr}"),
            addr,
            state,
            proxy,
            data_dir,
            shutdown: Some(tx),
        }
    }

    /// An anonymous typed client for this server.
    pub fn client(&self) -> gilgal_client::Client {
        gilgal_client::Client::new(&self.url).expect("client")
    }

    /// A raw HTTP client, for requests the typed client would never send.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// Registers `email` with a fixed strong password and returns a client logged in as it.
    pub async fn user(&self, email: &str) -> (gilgal_client::Client, gilgal_types::TokenPair) {
        let pair = self
            .client()
            .register_and_login(&gilgal_types::RegisterRequest {
                email: email.parse().expect("valid email"),
                password: TEST_PASSWORD.to_owned(),
            })
            .await
            .expect("register");
        (self.client().with_token(pair.access_token.clone()), pair)
    }
}

/// The password [`TestServer::user`] registers with.
pub const TEST_PASSWORD: &str = "correct horse battery staple";

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Add-on servers run detached (they outlive a Gilgal restart); a test's must not
        // outlive the test.
        gilgal_addons::stop_all(
            &self.data_dir.path().join("addons"),
            std::time::Duration::from_secs(10),
        );
    }
}

async fn fresh_postgres_database() -> String {
    let admin = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{POSTGRES_URL_VAR} is not set: PostgreSQL tests need a server. Run `scripts/test`, \
             which installs and starts one, or set {POSTGRES_URL_VAR}=postgres://user:pass@host:port/postgres"
        )
    });
    let name = format!("gilgal_test_{}", uuid::Uuid::new_v4().simple());
    gilgal_store::create_postgres_database(&admin, &name)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database on {POSTGRES_URL_VAR}: {e}"))
}

/// Declares each listed `async fn NAME(backend: Backend)` as two tests, `NAME::sqlite` and
/// `NAME::postgres`, so every behaviour is checked on both stores. The body starts its own
/// [`TestServer`] (with any [`gilgal_api::ApiConfig`] it needs).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::Backend::Postgres).await
                }
            }
        )*
    };
}
