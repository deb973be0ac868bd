//! Push webhooks, as the spec names them (`POST /api/webhooks`, `DELETE /api/webhooks/{id}`),
//! and their receiver: a git host posts every push to `/api/webhooks/{id}/deliver`; a push to
//! the webhook's branch, signed with its secret, deploys that exact commit to its environment.
//!
//! The receiver takes no user credential: the signature over the raw body is the credential,
//! checked before the body is parsed. A forged, unsigned or replayed-with-another-body
//! delivery is a 401 that changes nothing; a redelivery (same sender delivery id) answers what
//! the first did and never deploys twice. The repository fetched is the one stored with the
//! webhook (checked against the SSRF guard when it is created), never a URL from the payload.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use gilgal_deploy::DeploySource;
use gilgal_store::{DeliveryRecord, NewWebhook, StoreError, WebhookRecord};
use gilgal_types::{
    CreateWebhookRequest, CreatedWebhook, DeliveryOutcome, ErrorBody, Role, Webhook,
    WebhookDelivery,
};
use gilgal_webhooks::{Event, Provider, WebhookError};
use rand::RngCore;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::extract::{parse_path_id, ApiJson, ApiQuery, AuthUser, ClientAddr};
use crate::{ApiError, AppState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook))
        .routes(routes!(list_webhooks))
        .routes(routes!(delete_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(deliver))
}

/// The vault name a webhook's secret is sealed under (cannot collide with config var names,
/// which are identifiers).
fn secret_name(id: Uuid) -> String {
    format!("webhook:{id}")
}

/// The vault name a webhook's repository credential is sealed under.
fn credential_name(id: Uuid) -> String {
    format!("webhook-git:{id}")
}

fn receiver_path(id: Uuid) -> String {
    format!("/api/webhooks/{id}/deliver")
}

fn webhook_not_found(err: StoreError) -> ApiError {
    match err {
        StoreError::NotFound => ApiError::not_found("webhook"),
        other => other.into(),
    }
}

async fn to_wire(state: &AppState, record: WebhookRecord) -> Result<Webhook, ApiError> {
    let environment = state
        .store()
        .environment_by_id(record.environment_id)
        .await?;
    Ok(Webhook {
        receiver_path: receiver_path(record.id),
        id: record.id,
        project_id: record.project_id,
        environment: environment.name,
        provider: record.provider,
        // New rows hold no credential; older ones may, and it is never shown.
        repo_url: gilgal_deploy::redact_urls(&record.repo_url),
        branch: record.branch,
        created_at: record.created_at,
    })
}

/// A webhook the caller may see, with the role it needs checked (reads: viewer; changes:
/// admin, since a webhook decides what deploys).
async fn visible_webhook(
    state: &AppState,
    caller: &AuthUser,
    id: &str,
    needed: Role,
) -> Result<WebhookRecord, ApiError> {
    let id = parse_path_id(id, "webhook")?;
    let record = state.store().webhook(id).await.map_err(webhook_not_found)?;
    state
        .store()
        .project(caller.user.id, record.project_id)
        .await
        .map_err(webhook_not_found)?;
    caller.check_scope(record.project_id, Some(record.environment_id), "webhook")?;
    crate::routes::teams::require_role(state, caller, record.project_id, needed).await?;
    Ok(record)
}

/// Create a push webhook: pushes to `branch` of `repo_url`, delivered by the git host to the
/// returned receiver path and signed with the returned secret (shown once), deploy that commit
/// to the environment. Needs the admin role on the project.
#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks",
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "Created; the secret is shown this once", body = CreatedWebhook),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such project or environment", body = ErrorBody),
        (status = 422, description = "Invalid provider, branch or repository URL", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_webhook(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(request): ApiJson<CreateWebhookRequest>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let project_id = request.project_id;
    let project_missing = |e| match e {
        StoreError::NotFound => ApiError::not_found("project"),
        other => other.into(),
    };
    state
        .store()
        .project(caller.user.id, project_id)
        .await
        .map_err(project_missing)?;
    let environment_name = request
        .environment
        .unwrap_or_else(|| "production".to_owned());
    let environment = state
        .store()
        .environment(caller.user.id, project_id, &environment_name)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => {
                ApiError::not_found(&format!("environment {environment_name:?}"))
            }
            other => other.into(),
        })?;
    caller.check_scope(project_id, Some(environment.id), "project")?;
    crate::routes::teams::require_role(&state, &caller, project_id, Role::Admin).await?;

    let provider = Provider::parse(&request.provider).ok_or_else(|| {
        ApiError::invalid(format!(
            "unknown provider {:?}: use github, gitlab or generic",
            request.provider.chars().take(40).collect::<String>()
        ))
    })?;
    let branch = request.branch.unwrap_or_else(|| "main".to_owned());
    gilgal_webhooks::validate_ref(&format!("refs/heads/{branch}")).map_err(|_| {
        ApiError::invalid(
            "branch must be a plain branch name (letters, digits, `.`, `_`, `-`, `/`)",
        )
    })?;
    state
        .deployments()
        .check_git_url(&request.repo_url)
        .await
        .map_err(|e| ApiError::invalid(e.to_string()))?;

    let id = Uuid::new_v4();
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!("gilgal_whsec_{}", hex::encode(bytes));
    let sealed = state
        .platform()
        .vault()
        .seal(environment.id, &secret_name(id), &secret)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    // A credential in the URL is sealed apart; the URL is stored and shown without it.
    let (repo_url, credential) = gilgal_deploy::split_credential(&request.repo_url);
    let credential_sealed = match credential {
        Some(credential) => Some(
            state
                .platform()
                .vault()
                .seal(
                    environment.id,
                    &credential_name(id),
                    &credential.to_userinfo(),
                )
                .await
                .map_err(|e| ApiError::internal(&e))?,
        ),
        None => None,
    };
    let record = state
        .store()
        .create_webhook(&NewWebhook {
            id,
            project_id,
            environment_id: environment.id,
            provider: provider.as_str(),
            repo_url: &repo_url,
            branch: &branch,
            secret_sealed: &sealed,
            git_credential_sealed: credential_sealed.as_deref(),
            created_by: caller.user.id,
        })
        .await?;
    crate::audit::note("webhook", serde_json::json!(id));
    crate::audit::note("provider", serde_json::json!(provider.as_str()));
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            webhook: to_wire(&state, record).await?,
            secret,
        }),
    ))
}

/// A project's push webhooks (never their secrets).
#[utoipa::path(get, path = "/api/projects/{id}/webhooks", tag = "webhooks",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "Webhooks", body = Vec<Webhook>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such project", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_webhooks(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<Webhook>>, ApiError> {
    let project_id = parse_path_id(&id, "project")?;
    state
        .store()
        .project(caller.user.id, project_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("project"),
            other => other.into(),
        })?;
    caller.check_project(project_id, "project")?;
    crate::routes::teams::require_role(&state, &caller, project_id, Role::Viewer).await?;
    let mut out = Vec::new();
    for record in state.store().webhooks(project_id).await? {
        if caller
            .check_scope(record.project_id, Some(record.environment_id), "webhook")
            .is_ok()
        {
            out.push(to_wire(&state, record).await?);
        }
    }
    Ok(Json(out))
}

/// Delete a webhook; later deliveries to its receiver are 404s.
#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn delete_webhook(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let record = visible_webhook(&state, &caller, &id, Role::Admin).await?;
    state
        .store()
        .delete_webhook(record.id)
        .await
        .map_err(webhook_not_found)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of the deliveries list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// At most this many, newest first (default 50, at most 500).
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// A webhook's latest authenticated deliveries and what each did.
#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id"), DeliveriesQuery),
    responses(
        (status = 200, description = "Deliveries, newest first", body = Vec<WebhookDelivery>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<DeliveriesQuery>,
) -> Result<Json<Vec<WebhookDelivery>>, ApiError> {
    let record = visible_webhook(&state, &caller, &id, Role::Viewer).await?;
    let limit = super::list_limit(query.limit, 50, 500)?;
    let deliveries = state.store().deliveries(record.id, limit).await?;
    Ok(Json(deliveries.into_iter().map(delivery_to_wire).collect()))
}

fn delivery_to_wire(record: DeliveryRecord) -> WebhookDelivery {
    WebhookDelivery {
        id: record.id,
        delivery_id: record.delivery_id,
        received_at: record.received_at,
        event: record.event,
        reference: record.reference,
        commit: record.commit_id,
        outcome: record.outcome,
        detail: record.detail,
        deployment_id: record.deployment_id,
    }
}

fn signature_error(err: WebhookError) -> ApiError {
    match err {
        WebhookError::MissingHeader(name) => ApiError::unauthorized(
            "missing_signature",
            format!("the delivery has no {name} header; set the webhook's secret in the git host"),
        ),
        WebhookError::BadSignature => ApiError::unauthorized(
            "bad_signature",
            "the signature does not match this webhook's secret",
        ),
        other => ApiError::invalid(other.to_string()),
    }
}

/// The receiver git hosts post to. Authenticated by the webhook's secret (GitHub/generic:
/// HMAC-SHA256 of the body in `X-Hub-Signature-256`/`X-Gilgal-Signature-256`; GitLab:
/// `X-Gitlab-Token`), not by a user token. A push to the webhook's branch deploys the pushed
/// commit (202); pings answer `pong`; other events and branches are acknowledged and ignored.
#[utoipa::path(post, path = "/api/webhooks/{id}/deliver", tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    request_body(content = serde_json::Value, description = "The git host's event payload"),
    responses(
        (status = 200, description = "Ping, ignored event or duplicate delivery", body = DeliveryOutcome),
        (status = 202, description = "Deploying the pushed commit", body = DeliveryOutcome),
        (status = 400, description = "Not a payload of the announced event", body = ErrorBody),
        (status = 401, description = "Missing or wrong signature", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody),
        (status = 413, description = "Payload too large", body = ErrorBody),
        (status = 429, description = "Deploy or build quota reached; see Retry-After", body = ErrorBody),
    ))]
async fn deliver(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<DeliveryOutcome>), ApiError> {
    // Anyone can call this: it costs a budget per address before any lookup, and an audit
    // row only once the signature checks out.
    crate::audit::only_if_authenticated();
    let sender = address.map(|a| a.to_string()).unwrap_or_default();
    crate::extract::spend_budget(&state, &format!("webhook-sender:{sender}"))?;
    let id = parse_path_id(&id, "webhook")?;
    let webhook = state.store().webhook(id).await.map_err(webhook_not_found)?;
    let provider = Provider::parse(&webhook.provider)
        .ok_or_else(|| ApiError::internal(&"stored webhook has an unknown provider"))?;
    let body = axum::body::to_bytes(body, gilgal_webhooks::MAX_PAYLOAD_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "webhook payloads are limited to {} MiB",
                    gilgal_webhooks::MAX_PAYLOAD_BYTES >> 20
                ),
            )
        })?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    crate::audit::note("webhook", serde_json::json!(id));
    let secret = state
        .platform()
        .vault()
        .open(
            webhook.environment_id,
            &secret_name(id),
            &webhook.secret_sealed,
        )
        .await
        .map_err(|e| ApiError::internal(&e))?;
    if let Err(e) = gilgal_webhooks::verify(provider, secret.as_bytes(), header, &body) {
        tracing::warn!(webhook = %id, error = %e, "webhook delivery refused");
        return Err(signature_error(e));
    }
    crate::audit::authenticated_by(format!("webhook:{id}"));
    let event = gilgal_webhooks::parse(provider, header, &body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_payload", e.to_string()))?;
    let delivery_id = gilgal_webhooks::delivery_id(provider, header);
    if let Some(delivery) = &delivery_id {
        crate::audit::note("delivery", serde_json::json!(delivery));
    }
    let (event_name, push) = match &event {
        Event::Ping => ("ping".to_owned(), None),
        Event::Push(push) => ("push".to_owned(), Some(push)),
        Event::Other(name) => (name.clone(), None),
    };
    let claim = state
        .store()
        .claim_delivery(
            id,
            delivery_id.as_deref(),
            &event_name,
            push.map(|p| p.reference.as_str()),
            push.and_then(|p| p.commit.as_deref()),
        )
        .await?;
    let claimed = match claim {
        Ok(claimed) => claimed,
        Err(earlier) => {
            return Ok((
                StatusCode::OK,
                Json(DeliveryOutcome {
                    status: "duplicate".into(),
                    reason: Some(format!(
                        "delivery {} was received before ({})",
                        earlier.delivery_id.unwrap_or_default(),
                        earlier.outcome
                    )),
                    deployment_id: earlier.deployment_id,
                }),
            ));
        }
    };
    let ignore = |reason: String| async {
        state
            .store()
            .finish_delivery(claimed, "ignored", Some(&reason), None)
            .await?;
        Ok::<_, ApiError>((
            StatusCode::OK,
            Json(DeliveryOutcome {
                status: "ignored".into(),
                reason: Some(reason),
                deployment_id: None,
            }),
        ))
    };
    let push = match event {
        Event::Ping => {
            state
                .store()
                .finish_delivery(claimed, "pong", None, None)
                .await?;
            return Ok((
                StatusCode::OK,
                Json(DeliveryOutcome {
                    status: "pong".into(),
                    reason: None,
                    deployment_id: None,
                }),
            ));
        }
        Event::Other(name) => return ignore(format!("{name} events do not deploy")).await,
        Event::Push(push) => push,
    };
    if push.branch() != Some(webhook.branch.as_str()) {
        return ignore(format!(
            "{} is not the deployed branch {}",
            push.reference, webhook.branch
        ))
        .await;
    }
    let Some(commit) = push.commit.clone() else {
        return ignore(format!("{} was deleted", push.reference)).await;
    };
    let environment = state
        .store()
        .environment_by_id(webhook.environment_id)
        .await
        .map_err(webhook_not_found)?;
    let url = match &webhook.git_credential_sealed {
        Some(sealed) => {
            let userinfo = state
                .platform()
                .vault()
                .open(webhook.environment_id, &credential_name(id), sealed)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            gilgal_deploy::with_credential(
                &webhook.repo_url,
                &gilgal_deploy::GitCredential::from_userinfo(&userinfo),
            )
        }
        None => webhook.repo_url.clone(),
    };
    let source = DeploySource::Git(gilgal_deploy::GitSource {
        url,
        reference: commit.clone(),
    });
    match state.deployments().deploy(environment, source).await {
        Ok(deployment) => {
            state
                .store()
                .finish_delivery(claimed, "deploying", None, Some(deployment))
                .await?;
            crate::audit::note("deployment", serde_json::json!(deployment));
            tracing::info!(webhook = %id, deployment = %deployment, commit = %commit, "push deployment accepted");
            Ok((
                StatusCode::ACCEPTED,
                Json(DeliveryOutcome {
                    status: "deploying".into(),
                    reason: None,
                    deployment_id: Some(deployment),
                }),
            ))
        }
        Err(e) => {
            let over_quota = matches!(e, gilgal_deploy::DeployError::Quota(_));
            let error = crate::routes::environments::deploy_error(e);
            let reason = if over_quota {
                "deploy quota reached"
            } else {
                error.message()
            };
            state
                .store()
                .finish_delivery(claimed, "failed", Some(reason), None)
                .await?;
            Err(error)
        }
    }
}
