//! Alerts of an environment: its rules (defaults every environment has, which an owner can
//! tune or disable), where notifications go (generic signed webhooks, Slack, email), and the
//! alerts themselves with the delivery of each notification. Reading needs the viewer role;
//! changing rules the developer role; channels, which send the environment's data out of
//! the platform, the admin role (as push webhooks do).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use gilgal_core::alerts::{AlertKind, AlertRule as CoreRule};
use gilgal_store::{AlertChannelRecord, AlertRuleRecord, EnvironmentRecord, StoreError};
use gilgal_types::{
    Alert, AlertChannel, AlertDelivery, AlertRule, CreateAlertChannel, CreatedAlertChannel,
    ErrorBody, Role, UpdateAlertRule,
};
use rand::RngCore;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::extract::{parse_path_id, AuthUser, JsonBody};
use crate::routes::environments::owned_environment;
use crate::{ApiError, AppState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_alerts))
        .routes(routes!(list_rules))
        .routes(routes!(update_rule))
        .routes(routes!(list_channels, create_channel))
        .routes(routes!(delete_channel))
        .routes(routes!(test_channel))
}

/// The environment `id` and its channel `channel`, for a caller with the admin role on the
/// project (another environment's channel is not found).
async fn admin_channel(
    state: &AppState,
    caller: &AuthUser,
    id: &str,
    channel: &str,
) -> Result<(EnvironmentRecord, AlertChannelRecord), ApiError> {
    let environment = owned_environment(state, caller, id).await?;
    crate::routes::teams::require_role(state, caller, environment.project_id, Role::Admin).await?;
    let record = channel_of(state, &environment, channel).await?;
    Ok((environment, record))
}

/// The caller's environment's channel `channel` (another environment's is not found).
async fn channel_of(
    state: &AppState,
    environment: &EnvironmentRecord,
    channel: &str,
) -> Result<AlertChannelRecord, ApiError> {
    let not_found = || ApiError::not_found("alert channel");
    let id = parse_path_id(channel, "alert channel")?;
    let record = state.store().alert_channel(id).await.map_err(|e| match e {
        StoreError::NotFound => not_found(),
        other => other.into(),
    })?;
    if record.environment_id != environment.id {
        return Err(not_found());
    }
    Ok(record)
}

fn rule_to_wire(rule: &CoreRule, overridden: bool) -> AlertRule {
    AlertRule {
        kind: rule.kind.as_str().to_owned(),
        threshold: rule.threshold,
        for_seconds: rule.for_seconds,
        enabled: rule.enabled,
        condition: rule.kind.condition(rule.threshold, rule.for_seconds),
        default: !overridden,
    }
}

/// A channel as listed: URLs (a Slack URL is itself the credential) shown as scheme and
/// host only; the creator sees the whole target once, in the creation answer.
fn channel_to_wire(record: &AlertChannelRecord) -> AlertChannel {
    AlertChannel {
        id: record.id,
        kind: record.kind.clone(),
        target: if record.kind == "email" {
            record.target.clone()
        } else {
            gilgal_notify::redact_url(&record.target)
        },
        created_at: record.created_at,
    }
}

/// Filters of `GET /api/environments/{id}/alerts`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// The newest this many alerts (default 50, at most 1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The environment's alerts, newest first: what fired them, when they resolved, and the
/// delivery of each notification.
#[utoipa::path(get, path = "/api/environments/{id}/alerts", tag = "alerts",
    params(("id" = String, Path, description = "Environment id"), AlertsQuery),
    responses(
        (status = 200, description = "Alerts, newest first", body = Vec<Alert>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such environment for this caller", body = ErrorBody),
        (status = 422, description = "Invalid filter", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_alerts(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    query: Result<Query<AlertsQuery>, QueryRejection>,
) -> Result<Json<Vec<Alert>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let environment = owned_environment(&state, &caller, &id).await?;
    let records = state
        .store()
        .alerts(environment.id, super::list_limit(query.limit, 50, 1000)?)
        .await?;
    let mut alerts = Vec::with_capacity(records.len());
    for record in records {
        let deliveries = state
            .store()
            .alert_notifications(record.id)
            .await?
            .into_iter()
            .map(|n| AlertDelivery {
                channel_id: n.channel_id,
                event: n.event,
                attempts: n.attempts,
                delivered_at: n.delivered_at,
                last_error: n.last_error,
            })
            .collect();
        alerts.push(Alert {
            id: record.id,
            kind: record.kind,
            state: if record.resolved_at.is_some() {
                "resolved"
            } else {
                "firing"
            }
            .to_owned(),
            message: record.message,
            value: record.value,
            threshold: record.threshold,
            fired_at: record.fired_at,
            resolved_at: record.resolved_at,
            resolved_message: record.resolved_message,
            deliveries,
        });
    }
    Ok(Json(alerts))
}

async fn rules_of(
    state: &AppState,
    environment: &EnvironmentRecord,
) -> Result<Vec<AlertRule>, ApiError> {
    let overrides = state.store().alert_rule_overrides(environment.id).await?;
    Ok(gilgal_deploy::effective_rules(&overrides)
        .iter()
        .map(|rule| {
            let overridden = overrides.iter().any(|o| o.kind == rule.kind.as_str());
            rule_to_wire(rule, overridden)
        })
        .collect())
}

/// The environment's rules: one of each kind, the defaults unless changed (error rate > 1 %
/// for 5 min, p95 > 500 ms for 10 min, health check failing 3 times in a row, 3 crashes
/// within 5 min, an add-on's latest backup failed).
#[utoipa::path(get, path = "/api/environments/{id}/alerts/rules", tag = "alerts",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Rules", body = Vec<AlertRule>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such environment for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_rules(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<AlertRule>>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    Ok(Json(rules_of(&state, &environment).await?))
}

/// Change a rule's threshold, period or whether it is enabled (fields left out keep their
/// value). Disabling a rule resolves what it had fired at the next evaluation.
#[utoipa::path(put, path = "/api/environments/{id}/alerts/rules/{kind}", tag = "alerts",
    params(
        ("id" = String, Path, description = "Environment id"),
        ("kind" = String, Path, description = "error_rate, latency_p95, health_check, crash_loop or backup_failed"),
    ),
    request_body = UpdateAlertRule,
    responses(
        (status = 200, description = "The rule now", body = AlertRule),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such environment or rule kind", body = ErrorBody),
        (status = 422, description = "Threshold or period out of range", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn update_rule(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((id, kind)): Path<(String, String)>,
    change: JsonBody<UpdateAlertRule>,
) -> Result<Json<AlertRule>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let change = change.parse()?;
    let kind = AlertKind::parse(&kind).ok_or_else(|| ApiError::not_found("alert rule kind"))?;
    let current = state
        .alerts()
        .alert_rules(environment.id)
        .await?
        .into_iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| kind.default_rule());
    let rule = CoreRule {
        kind,
        threshold: change.threshold.unwrap_or(current.threshold),
        for_seconds: change.for_seconds.unwrap_or(current.for_seconds),
        enabled: change.enabled.unwrap_or(current.enabled),
    };
    rule.validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    state
        .store()
        .set_alert_rule(
            environment.id,
            &AlertRuleRecord {
                kind: kind.as_str().to_owned(),
                threshold: rule.threshold,
                for_seconds: rule.for_seconds,
                enabled: rule.enabled,
            },
        )
        .await?;
    crate::audit::note("rule", serde_json::json!(kind.as_str()));
    Ok(Json(rule_to_wire(&rule, true)))
}

/// Where the environment's alert notifications go.
#[utoipa::path(get, path = "/api/environments/{id}/alerts/channels", tag = "alerts",
    params(("id" = String, Path, description = "Environment id")),
    responses(
        (status = 200, description = "Channels, oldest first", body = Vec<AlertChannel>),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such environment for this caller", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn list_channels(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<AlertChannel>>, ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    let channels = state.store().alert_channels(environment.id).await?;
    Ok(Json(channels.iter().map(channel_to_wire).collect()))
}

/// Most channels per environment.
const MAX_CHANNELS: usize = 20;

/// Send the environment's alert notifications (firing and resolved, once each) somewhere
/// more: `webhook` posts JSON signed with HMAC-SHA256 in `X-Gilgal-Signature-256` (the
/// secret is returned this once), `slack` posts to an incoming webhook, `email` mails the
/// address through the server's SMTP relay. Needs the admin role on the project.
#[utoipa::path(post, path = "/api/environments/{id}/alerts/channels", tag = "alerts",
    params(("id" = String, Path, description = "Environment id")),
    request_body = CreateAlertChannel,
    responses(
        (status = 201, description = "Added; a webhook's secret is shown this once", body = CreatedAlertChannel),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such environment for this caller", body = ErrorBody),
        (status = 422, description = "Unknown kind, bad URL or address, internal host, no SMTP relay, too many channels", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_channel(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    request: JsonBody<CreateAlertChannel>,
) -> Result<(StatusCode, Json<CreatedAlertChannel>), ApiError> {
    let environment = owned_environment(&state, &caller, &id).await?;
    crate::routes::teams::require_role(&state, &caller, environment.project_id, Role::Admin)
        .await?;
    let request = request.parse()?;
    let target = request.target.trim();
    if target.len() > 2048 {
        return Err(ApiError::invalid("target must be at most 2048 characters"));
    }
    match request.kind.as_str() {
        "webhook" | "slack" => state
            .alerts()
            .check_notification_url(target)
            .await
            .map_err(|e| ApiError::invalid(e.to_string()))?,
        "email" => {
            gilgal_notify::check_email(target).map_err(|e| ApiError::invalid(e.to_string()))?;
            if !state.alerts().notifier().has_smtp() {
                return Err(ApiError::invalid(
                    "this server has no SMTP relay for email alerts; its administrator starts it with --smtp-url and --smtp-from",
                ));
            }
        }
        other => {
            return Err(ApiError::invalid(format!(
                "unknown channel kind {:?}: use webhook, slack or email",
                other.chars().take(40).collect::<String>()
            )))
        }
    }
    if state.store().alert_channels(environment.id).await?.len() >= MAX_CHANNELS {
        return Err(ApiError::invalid(format!(
            "an environment has at most {MAX_CHANNELS} alert channels"
        )));
    }
    let channel_id = Uuid::new_v4();
    let (secret, sealed) = if request.kind == "webhook" {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let secret = format!("gilgal_alsec_{}", hex::encode(bytes));
        let sealed = state
            .platform()
            .vault()
            .seal(
                environment.id,
                &gilgal_deploy::channel_secret_name(channel_id),
                &secret,
            )
            .await
            .map_err(|e| ApiError::internal(&e))?;
        (Some(secret), Some(sealed))
    } else {
        (None, None)
    };
    let record = state
        .store()
        .create_alert_channel(
            channel_id,
            environment.id,
            &request.kind,
            target,
            sealed.as_deref(),
        )
        .await?;
    crate::audit::note("channel", serde_json::json!(channel_id));
    crate::audit::note("kind", serde_json::json!(request.kind));
    Ok((
        StatusCode::CREATED,
        Json(CreatedAlertChannel {
            channel: AlertChannel {
                target: record.target.clone(),
                ..channel_to_wire(&record)
            },
            secret,
        }),
    ))
}

/// Stop sending the environment's notifications to a channel (its pending deliveries are
/// dropped). Needs the admin role on the project.
#[utoipa::path(delete, path = "/api/environments/{id}/alerts/channels/{channel}", tag = "alerts",
    params(
        ("id" = String, Path, description = "Environment id"),
        ("channel" = String, Path, description = "Channel id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such environment or channel", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn delete_channel(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((id, channel)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (_, record) = admin_channel(&state, &caller, &id, &channel).await?;
    let channel_id = record.id;
    let not_found = || ApiError::not_found("alert channel");
    state
        .store()
        .delete_alert_channel(channel_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => not_found(),
            other => other.into(),
        })?;
    crate::audit::note("channel", serde_json::json!(channel_id));
    Ok(StatusCode::NO_CONTENT)
}

/// Send a test notification to a channel now and say whether it arrived (the receiver's
/// answer or the SMTP relay's error on failure). Needs the admin role on the project.
#[utoipa::path(post, path = "/api/environments/{id}/alerts/channels/{channel}/test", tag = "alerts",
    params(
        ("id" = String, Path, description = "Environment id"),
        ("channel" = String, Path, description = "Channel id"),
    ),
    responses(
        (status = 204, description = "Delivered"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Role too low", body = ErrorBody),
        (status = 404, description = "No such environment or channel", body = ErrorBody),
        (status = 422, description = "The channel's host is now on the server's own network", body = ErrorBody),
        (status = 502, description = "Not delivered; the message says why", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn test_channel(
    State(state): State<AppState>,
    caller: AuthUser,
    Path((id, channel)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (environment, record) = admin_channel(&state, &caller, &id, &channel).await?;
    // Checked when the channel was added, but its host may resolve elsewhere now.
    if record.kind != "email" {
        state
            .alerts()
            .check_notification_url(&record.target)
            .await
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    state
        .alerts()
        .test_alert_channel(&record, &environment)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "delivery_failed",
                format!("the test notification did not arrive: {e}"),
            )
        })?;
    crate::audit::note("channel", serde_json::json!(record.id));
    Ok(StatusCode::NO_CONTENT)
}
