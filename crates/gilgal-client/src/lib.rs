//! A typed client for the Gilgal API.
//!
//! One method per endpoint, returning the wire types of `gilgal-types`. Failures come back as
//! [`ClientError`], which keeps the server's error code, message and request id, or says the
//! server could not be reached, so the CLI can print one line that tells the user what to do.

use std::time::Duration;

use gilgal_types::{
    ApiToken, AuditEntry, ConfigChanged, ConfigUpdate, ConfigVar, CreateApiTokenRequest,
    CreateProjectRequest, CreateWebhookRequest, CreatedApiToken, CreatedWebhook, CronJob,
    CronJobRequest, Deployment, Domain, DomainRequest, Environment, EnvironmentRequest, ErrorBody,
    Formation, FormationUpdate, GitDeployRequest, InstanceSettings, LoginRequest, Project,
    PromoteRequest, RedeployRequest, RefreshRequest, RegisterAccepted, RegisterRequest, Release,
    RollbackRequest, Run, RunRequest, TokenPair, UpdateProjectRequest, User, Webhook,
    WebhookDelivery,
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{message} ({code}, HTTP {status}, request {request_id})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code, e.g. `invalid_credentials`.
        code: String,
        /// The server's message.
        message: String,
        /// The request id to quote.
        request_id: String,
    },
    /// No HTTP exchange happened: connection refused, DNS, TLS, timeout.
    #[error("cannot reach the Gilgal server at {url}: {reason}")]
    Unreachable {
        /// The server URL tried.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The server answered something that is not the API's JSON.
    #[error("unexpected response from {url} (HTTP {status}); is this a Gilgal server?")]
    Unexpected {
        /// The server URL.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// The server URL given is not a usable URL.
    #[error("invalid server URL {0:?}: use the form http://host:port")]
    BadUrl(String),
}

impl ClientError {
    /// The API error code, if the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } | Self::Unexpected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection to one Gilgal server, optionally with a bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://"))
            || reqwest::Url::parse(&base).is_err()
        {
            return Err(ClientError::BadUrl(base_url.to_owned()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("gilgal-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            base,
            token: None,
        })
    }

    /// The same client, authenticating with `token` (access token or API token).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send(&self, builder: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = builder.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: root_cause(&e),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        match response.json::<ErrorBody>().await {
            Ok(body) => Err(ClientError::Api {
                status,
                code: body.error.code,
                message: body.error.message,
                request_id: body.error.request_id,
            }),
            Err(_) => Err(ClientError::Unexpected {
                url: self.base.clone(),
                status,
            }),
        }
    }

    async fn json<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T, ClientError> {
        let response = self.send(builder).await?;
        let status = response.status().as_u16();
        response
            .json::<T>()
            .await
            .map_err(|_| ClientError::Unexpected {
                url: self.base.clone(),
                status,
            })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.json(self.request(method, path).json(body)).await
    }

    async fn empty(&self, method: Method, path: &str) -> Result<(), ClientError> {
        let response = self.send(self.request(method, path)).await?;
        if response.status() == StatusCode::NO_CONTENT || response.status().is_success() {
            Ok(())
        } else {
            Err(ClientError::Unexpected {
                url: self.base.clone(),
                status: response.status().as_u16(),
            })
        }
    }

    /// `POST /api/auth/register`: the answer does not say whether the account is new (the
    /// server does not reveal who has an account); log in next, or use
    /// [`Client::register_and_login`].
    pub async fn register(
        &self,
        request: &RegisterRequest,
    ) -> Result<RegisterAccepted, ClientError> {
        self.call(Method::POST, "/api/auth/register", request).await
    }

    /// Registers, then logs in with the same email and password. A login refused after the
    /// registration means the email already had an account with another password.
    pub async fn register_and_login(
        &self,
        request: &RegisterRequest,
    ) -> Result<TokenPair, ClientError> {
        self.register(request).await?;
        self.login(&LoginRequest {
            email: request.email.clone(),
            password: request.password.clone(),
        })
        .await
    }

    /// `POST /api/auth/login`.
    pub async fn login(&self, request: &LoginRequest) -> Result<TokenPair, ClientError> {
        self.call(Method::POST, "/api/auth/login", request).await
    }

    /// `POST /api/auth/refresh`.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, ClientError> {
        let body = RefreshRequest {
            refresh_token: refresh_token.to_owned(),
        };
        self.call(Method::POST, "/api/auth/refresh", &body).await
    }

    /// `POST /api/auth/logout`: ends the session, or revokes the API token used.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.empty(Method::POST, "/api/auth/logout").await
    }

    /// `GET /api/auth/me`.
    pub async fn me(&self) -> Result<User, ClientError> {
        self.json(self.request(Method::GET, "/api/auth/me")).await
    }

    /// `POST /api/tokens`.
    pub async fn create_token(
        &self,
        request: &CreateApiTokenRequest,
    ) -> Result<CreatedApiToken, ClientError> {
        self.call(Method::POST, "/api/tokens", request).await
    }

    /// `GET /api/tokens`.
    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>, ClientError> {
        self.json(self.request(Method::GET, "/api/tokens")).await
    }

    /// `DELETE /api/tokens/{id}`.
    pub async fn revoke_token(&self, id: Uuid) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &format!("/api/tokens/{id}"))
            .await
    }

    /// `GET /api/projects`.
    pub async fn list_projects(&self) -> Result<Vec<Project>, ClientError> {
        self.json(self.request(Method::GET, "/api/projects")).await
    }

    /// `POST /api/projects`.
    pub async fn create_project(
        &self,
        request: &CreateProjectRequest,
    ) -> Result<Project, ClientError> {
        self.call(Method::POST, "/api/projects", request).await
    }

    /// `GET /api/projects/{id}`.
    pub async fn project(&self, id: Uuid) -> Result<Project, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/projects/{id}")))
            .await
    }

    /// `PUT /api/projects/{id}`.
    pub async fn update_project(
        &self,
        id: Uuid,
        request: &UpdateProjectRequest,
    ) -> Result<Project, ClientError> {
        self.call(Method::PUT, &format!("/api/projects/{id}"), request)
            .await
    }

    /// `DELETE /api/projects/{id}`.
    pub async fn delete_project(&self, id: Uuid) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &format!("/api/projects/{id}"))
            .await
    }

    /// Finds one of the caller's projects by name (the CLI's way of naming projects).
    pub async fn project_by_name(&self, name: &str) -> Result<Project, ClientError> {
        self.list_projects()
            .await?
            .into_iter()
            .find(|p| p.name.as_str() == name)
            .ok_or_else(|| ClientError::Api {
                status: 404,
                code: "not_found".to_owned(),
                message: format!("project {name:?} not found; `gilgal projects list` shows yours"),
                request_id: "-".to_owned(),
            })
    }

    /// `PUT /api/admin/settings`.
    pub async fn put_settings(
        &self,
        settings: &InstanceSettings,
    ) -> Result<InstanceSettings, ClientError> {
        self.call(Method::PUT, "/api/admin/settings", settings)
            .await
    }

    /// `POST /api/projects/{id}/deployments`: uploads a tar.gz of the source.
    pub async fn create_deployment(
        &self,
        project_id: Uuid,
        environment: &str,
        canary: Option<&gilgal_types::CanaryOptions>,
        tarball: reqwest::Body,
    ) -> Result<Deployment, ClientError> {
        let request = self
            .request(
                Method::POST,
                &format!("/api/projects/{project_id}/deployments"),
            )
            .query(&[("environment", environment)])
            .query(&canary)
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .body(tarball);
        self.json(request).await
    }

    /// `GET /api/deployments/{id}`.
    pub async fn deployment(&self, id: Uuid) -> Result<Deployment, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/deployments/{id}")))
            .await
    }

    /// `DELETE /api/deployments/{id}`: cancels a deployment in progress.
    pub async fn cancel_deployment(&self, id: Uuid) -> Result<Deployment, ClientError> {
        self.json(self.request(Method::DELETE, &format!("/api/deployments/{id}")))
            .await
    }

    /// `GET /api/deployments/{id}/logs`: the NDJSON response, to read line by line
    /// (`follow` keeps it open until the deployment settles).
    pub async fn deployment_logs(
        &self,
        id: Uuid,
        follow: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let request = self
            .request(Method::GET, &format!("/api/deployments/{id}/logs"))
            .query(&[("follow", if follow { "true" } else { "false" })]);
        self.send(request).await
    }

    /// `POST /api/projects/{id}/deployments` with a git URL and ref.
    pub async fn create_git_deployment(
        &self,
        project_id: Uuid,
        environment: &str,
        canary: Option<&gilgal_types::CanaryOptions>,
        request: &GitDeployRequest,
    ) -> Result<Deployment, ClientError> {
        self.json_deployment(project_id, environment, canary, request)
            .await
    }

    /// `POST /api/projects/{id}/deployments` with a JSON body (git source or image).
    async fn json_deployment<B: Serialize>(
        &self,
        project_id: Uuid,
        environment: &str,
        canary: Option<&gilgal_types::CanaryOptions>,
        body: &B,
    ) -> Result<Deployment, ClientError> {
        let builder = self
            .request(
                Method::POST,
                &format!("/api/projects/{project_id}/deployments"),
            )
            .query(&[("environment", environment)])
            .query(&canary)
            .json(body);
        self.json(builder).await
    }

    /// `POST /api/projects/{id}/deployments` with `{"image": …}`: an existing Docker image,
    /// no build (servers on the Docker runtime).
    pub async fn create_image_deployment(
        &self,
        project_id: Uuid,
        environment: &str,
        canary: Option<&gilgal_types::CanaryOptions>,
        image: &str,
    ) -> Result<Deployment, ClientError> {
        let body = gilgal_types::ImageDeployRequest {
            image: image.to_owned(),
        };
        self.json_deployment(project_id, environment, canary, &body)
            .await
    }

    /// `POST /api/deployments/{id}/redeploy`.
    pub async fn redeploy(
        &self,
        id: Uuid,
        request: &RedeployRequest,
    ) -> Result<Deployment, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/deployments/{id}/redeploy"),
            request,
        )
        .await
    }

    /// `GET /api/projects/{id}/environments`.
    pub async fn environments(&self, project_id: Uuid) -> Result<Vec<Environment>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/projects/{project_id}/environments"),
        ))
        .await
    }

    /// The environment of a project by name.
    pub async fn environment_by_name(
        &self,
        project_id: Uuid,
        name: &str,
    ) -> Result<Environment, ClientError> {
        self.environments(project_id)
            .await?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| ClientError::Api {
                status: 404,
                code: "not_found".to_owned(),
                message: format!("no environment named {name:?}; see `gilgal env list-envs`"),
                request_id: String::new(),
            })
    }

    /// `POST /api/projects/{id}/environments`.
    pub async fn create_environment(
        &self,
        project_id: Uuid,
        name: &str,
    ) -> Result<Environment, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/projects/{project_id}/environments"),
            &EnvironmentRequest {
                name: name.to_owned(),
            },
        )
        .await
    }

    /// `PUT /api/environments/{id}`.
    pub async fn rename_environment(
        &self,
        id: Uuid,
        name: &str,
    ) -> Result<Environment, ClientError> {
        self.call(
            Method::PUT,
            &format!("/api/environments/{id}"),
            &EnvironmentRequest {
                name: name.to_owned(),
            },
        )
        .await
    }

    /// `DELETE /api/environments/{id}`.
    pub async fn delete_environment(&self, id: Uuid) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &format!("/api/environments/{id}"))
            .await
    }

    /// `GET /api/environments/{id}/config` (secret values are never returned).
    pub async fn config(&self, environment: Uuid) -> Result<Vec<ConfigVar>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/config"),
        ))
        .await
    }

    /// `PATCH /api/environments/{id}/config`.
    pub async fn change_config(
        &self,
        environment: Uuid,
        update: &ConfigUpdate,
    ) -> Result<ConfigChanged, ClientError> {
        self.call(
            Method::PATCH,
            &format!("/api/environments/{environment}/config"),
            update,
        )
        .await
    }

    /// `GET /api/environments/{id}/releases`.
    pub async fn releases(&self, environment: Uuid) -> Result<Vec<Release>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/releases"),
        ))
        .await
    }

    /// `POST /api/environments/{id}/rollback`.
    pub async fn rollback(
        &self,
        environment: Uuid,
        request: &RollbackRequest,
    ) -> Result<Deployment, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/environments/{environment}/rollback"),
            request,
        )
        .await
    }

    /// `POST /api/environments/{id}/promote`.
    pub async fn promote(
        &self,
        environment: Uuid,
        request: &PromoteRequest,
    ) -> Result<Deployment, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/environments/{environment}/promote"),
            request,
        )
        .await
    }

    /// `GET /api/environments/{id}/formation`.
    pub async fn formation(&self, environment: Uuid) -> Result<Formation, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/formation"),
        ))
        .await
    }

    /// `PUT /api/environments/{id}/formation`.
    pub async fn scale(
        &self,
        environment: Uuid,
        update: &FormationUpdate,
    ) -> Result<Formation, ClientError> {
        self.call(
            Method::PUT,
            &format!("/api/environments/{environment}/formation"),
            update,
        )
        .await
    }

    /// `POST /api/environments/{id}/runs`.
    pub async fn start_run(
        &self,
        environment: Uuid,
        command: Vec<String>,
    ) -> Result<Run, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/environments/{environment}/runs"),
            &RunRequest { command },
        )
        .await
    }

    /// `GET /api/environments/{id}/runs`.
    pub async fn runs(&self, environment: Uuid) -> Result<Vec<Run>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/runs"),
        ))
        .await
    }

    /// `GET /api/runs/{id}`.
    pub async fn run(&self, id: Uuid) -> Result<Run, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/runs/{id}")))
            .await
    }

    /// `GET /api/runs/{id}/logs`: NDJSON, `follow` keeps it open until the run exits.
    pub async fn run_logs(&self, id: Uuid, follow: bool) -> Result<reqwest::Response, ClientError> {
        let request = self
            .request(Method::GET, &format!("/api/runs/{id}/logs"))
            .query(&[("follow", if follow { "true" } else { "false" })]);
        self.send(request).await
    }

    /// `GET /api/environments/{id}/logs`: the NDJSON response of an environment's log, to read
    /// line by line (`follow` keeps it open and streams new lines; empty lines are
    /// keep-alives). `filters` are the endpoint's query parameters (`type`, `release`,
    /// `since`, `grep`, `limit`, `after`).
    pub async fn environment_logs(
        &self,
        environment: Uuid,
        filters: &[(&str, String)],
        follow: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let request = self
            .request(
                Method::GET,
                &format!("/api/environments/{environment}/logs"),
            )
            .query(filters)
            .query(&[("follow", if follow { "true" } else { "false" })]);
        self.send(request).await
    }

    /// `GET /api/projects/{id}/metrics`: traffic and resource figures per environment since
    /// the server started.
    pub async fn project_metrics(
        &self,
        project: Uuid,
    ) -> Result<Vec<gilgal_types::EnvironmentMetrics>, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/projects/{project}/metrics")))
            .await
    }

    /// `GET /api/environments/{id}/edge`.
    pub async fn edge_settings(
        &self,
        environment: Uuid,
    ) -> Result<gilgal_types::EdgeSettings, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/edge"),
        ))
        .await
    }

    /// `PUT /api/environments/{id}/edge`.
    pub async fn set_edge_settings(
        &self,
        environment: Uuid,
        settings: &gilgal_types::EdgeSettings,
    ) -> Result<gilgal_types::EdgeSettings, ClientError> {
        self.call(
            Method::PUT,
            &format!("/api/environments/{environment}/edge"),
            settings,
        )
        .await
    }

    /// `GET /api/environments/{id}/canary`.
    pub async fn canary_status(
        &self,
        environment: Uuid,
    ) -> Result<Option<gilgal_types::CanaryStatus>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/canary"),
        ))
        .await
    }

    /// `POST /api/environments/{id}/canary/promote`.
    pub async fn promote_canary(
        &self,
        environment: Uuid,
        full: bool,
    ) -> Result<gilgal_types::CanaryStatus, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/environments/{environment}/canary/promote"),
            &gilgal_types::CanaryPromoteRequest { full },
        )
        .await
    }

    /// `POST /api/environments/{id}/canary/abort`.
    pub async fn abort_canary(&self, environment: Uuid) -> Result<Deployment, ClientError> {
        self.json(self.request(
            Method::POST,
            &format!("/api/environments/{environment}/canary/abort"),
        ))
        .await
    }

    /// `GET /api/deployments/{id}/metrics`: the figures of the release a deployment made.
    pub async fn deployment_metrics(
        &self,
        deployment: Uuid,
    ) -> Result<gilgal_types::EnvironmentMetrics, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/deployments/{deployment}/metrics"),
        ))
        .await
    }

    /// `GET /api/environments/{id}/events`: the newest `limit` events, oldest first.
    pub async fn environment_events(
        &self,
        environment: Uuid,
        limit: u32,
    ) -> Result<Vec<gilgal_types::EnvironmentEvent>, ClientError> {
        self.json(
            self.request(
                Method::GET,
                &format!("/api/environments/{environment}/events"),
            )
            .query(&[("limit", limit)]),
        )
        .await
    }

    /// `GET /api/environments/{id}/errors`: traceback groups, most recent first.
    pub async fn environment_errors(
        &self,
        environment: Uuid,
    ) -> Result<Vec<gilgal_types::ErrorGroup>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/errors"),
        ))
        .await
    }

    /// `GET /api/environments/{id}/uptime`.
    pub async fn environment_uptime(
        &self,
        environment: Uuid,
    ) -> Result<gilgal_types::Uptime, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/uptime"),
        ))
        .await
    }

    /// `GET /api/environments/{id}/cron`.
    pub async fn cron_jobs(&self, environment: Uuid) -> Result<Vec<CronJob>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/cron"),
        ))
        .await
    }

    /// `POST /api/environments/{id}/cron`.
    pub async fn create_cron_job(
        &self,
        environment: Uuid,
        request: &CronJobRequest,
    ) -> Result<CronJob, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/environments/{environment}/cron"),
            request,
        )
        .await
    }

    /// `DELETE /api/cron/{id}`.
    pub async fn delete_cron_job(&self, id: Uuid) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &format!("/api/cron/{id}")).await
    }

    /// `GET /api/environments/{id}/domains`.
    pub async fn domains(&self, environment: Uuid) -> Result<Vec<Domain>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/domains"),
        ))
        .await
    }

    /// `POST /api/environments/{id}/domains`.
    pub async fn add_domain(
        &self,
        environment: Uuid,
        hostname: &str,
    ) -> Result<Domain, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/environments/{environment}/domains"),
            &DomainRequest {
                hostname: hostname.to_owned(),
            },
        )
        .await
    }

    /// `DELETE /api/environments/{id}/domains/{hostname}`.
    pub async fn remove_domain(
        &self,
        environment: Uuid,
        hostname: &str,
    ) -> Result<(), ClientError> {
        self.empty(
            Method::DELETE,
            &format!("/api/environments/{environment}/domains/{hostname}"),
        )
        .await
    }

    /// `GET /api/environments/{id}/addons`.
    pub async fn addons(&self, environment: Uuid) -> Result<Vec<gilgal_types::Addon>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/addons"),
        ))
        .await
    }

    /// `POST /api/environments/{id}/addons`.
    pub async fn create_addon(
        &self,
        environment: Uuid,
        request: &gilgal_types::CreateAddonRequest,
    ) -> Result<gilgal_types::AddonChanged, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/environments/{environment}/addons"),
            request,
        )
        .await
    }

    /// `DELETE /api/addons/{id}?backup=…`.
    pub async fn destroy_addon(
        &self,
        id: Uuid,
        final_backup: bool,
    ) -> Result<gilgal_types::AddonChanged, ClientError> {
        self.json(self.request(
            Method::DELETE,
            &format!("/api/addons/{id}?backup={final_backup}"),
        ))
        .await
    }

    /// `POST /api/addons/{id}/backups`.
    pub async fn backup_addon(&self, id: Uuid) -> Result<gilgal_types::Backup, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/addons/{id}/backups")))
            .await
    }

    /// `GET /api/addons/{id}/backups`.
    pub async fn addon_backups(&self, id: Uuid) -> Result<Vec<gilgal_types::Backup>, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/addons/{id}/backups")))
            .await
    }

    /// `POST /api/addons/{id}/restore`.
    pub async fn restore_addon(&self, id: Uuid, backup: Uuid) -> Result<(), ClientError> {
        let builder = self
            .request(Method::POST, &format!("/api/addons/{id}/restore"))
            .json(&gilgal_types::RestoreRequest { backup_id: backup });
        self.send(builder).await.map(|_| ())
    }

    /// `PUT /api/addons/{id}/backup-policy`.
    pub async fn set_backup_policy(
        &self,
        id: Uuid,
        policy: &gilgal_types::BackupPolicy,
    ) -> Result<gilgal_types::Addon, ClientError> {
        self.call(
            Method::PUT,
            &format!("/api/addons/{id}/backup-policy"),
            policy,
        )
        .await
    }

    /// `POST /api/addons/{id}/credentials`.
    pub async fn addon_credentials(
        &self,
        id: Uuid,
    ) -> Result<gilgal_types::AddonCredentials, ClientError> {
        self.json(self.request(Method::POST, &format!("/api/addons/{id}/credentials")))
            .await
    }

    /// `POST /api/webhooks`: the answer carries the secret, shown this once.
    pub async fn create_webhook(
        &self,
        request: &CreateWebhookRequest,
    ) -> Result<CreatedWebhook, ClientError> {
        self.call(Method::POST, "/api/webhooks", request).await
    }

    /// `GET /api/projects/{id}/webhooks`.
    pub async fn webhooks(&self, project: Uuid) -> Result<Vec<Webhook>, ClientError> {
        self.json(self.request(Method::GET, &format!("/api/projects/{project}/webhooks")))
            .await
    }

    /// `DELETE /api/webhooks/{id}`.
    pub async fn delete_webhook(&self, id: Uuid) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &format!("/api/webhooks/{id}"))
            .await
    }

    /// `GET /api/webhooks/{id}/deliveries`.
    pub async fn webhook_deliveries(
        &self,
        id: Uuid,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/webhooks/{id}/deliveries?limit={limit}"),
        ))
        .await
    }

    /// `GET /api/environments/{id}/alerts`: the newest `limit` alerts, newest first.
    pub async fn alerts(
        &self,
        environment: Uuid,
        limit: u32,
    ) -> Result<Vec<gilgal_types::Alert>, ClientError> {
        self.json(
            self.request(
                Method::GET,
                &format!("/api/environments/{environment}/alerts"),
            )
            .query(&[("limit", limit)]),
        )
        .await
    }

    /// `GET /api/environments/{id}/alerts/rules`.
    pub async fn alert_rules(
        &self,
        environment: Uuid,
    ) -> Result<Vec<gilgal_types::AlertRule>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/alerts/rules"),
        ))
        .await
    }

    /// `PUT /api/environments/{id}/alerts/rules/{kind}`.
    pub async fn update_alert_rule(
        &self,
        environment: Uuid,
        kind: &str,
        change: &gilgal_types::UpdateAlertRule,
    ) -> Result<gilgal_types::AlertRule, ClientError> {
        self.call(
            Method::PUT,
            &format!("/api/environments/{environment}/alerts/rules/{kind}"),
            change,
        )
        .await
    }

    /// `GET /api/environments/{id}/alerts/channels`.
    pub async fn alert_channels(
        &self,
        environment: Uuid,
    ) -> Result<Vec<gilgal_types::AlertChannel>, ClientError> {
        self.json(self.request(
            Method::GET,
            &format!("/api/environments/{environment}/alerts/channels"),
        ))
        .await
    }

    /// `POST /api/environments/{id}/alerts/channels`.
    pub async fn create_alert_channel(
        &self,
        environment: Uuid,
        request: &gilgal_types::CreateAlertChannel,
    ) -> Result<gilgal_types::CreatedAlertChannel, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/environments/{environment}/alerts/channels"),
            request,
        )
        .await
    }

    /// `DELETE /api/environments/{id}/alerts/channels/{channel}`.
    pub async fn delete_alert_channel(
        &self,
        environment: Uuid,
        channel: Uuid,
    ) -> Result<(), ClientError> {
        self.empty(
            Method::DELETE,
            &format!("/api/environments/{environment}/alerts/channels/{channel}"),
        )
        .await
    }

    /// `POST /api/environments/{id}/alerts/channels/{channel}/test`.
    pub async fn test_alert_channel(
        &self,
        environment: Uuid,
        channel: Uuid,
    ) -> Result<(), ClientError> {
        self.empty(
            Method::POST,
            &format!("/api/environments/{environment}/alerts/channels/{channel}/test"),
        )
        .await
    }

    /// `GET /api/audit` with filters (`action`, `since` RFC 3339, `limit`).
    pub async fn audit(
        &self,
        action: Option<&str>,
        since: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, ClientError> {
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(action) = action {
            query.push(("action", action.to_owned()));
        }
        if let Some(since) = since {
            query.push(("since", since.to_owned()));
        }
        self.json(self.request(Method::GET, "/api/audit").query(&query))
            .await
    }

    /// `POST /api/admin/rotate-key`: returns how many data keys were re-wrapped.
    pub async fn rotate_key(&self) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::POST,
            "/api/admin/rotate-key",
            &serde_json::json!({}),
        )
        .await
    }

    /// `GET /ready`: whether the server and its store answer.
    pub async fn ready(&self) -> Result<(), ClientError> {
        self.empty(Method::GET, "/ready").await
    }
}

/// The innermost cause of a transport error (e.g. "Connection refused"), not reqwest's wrapper.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
