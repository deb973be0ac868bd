//! Alerts on the wire: an environment's rules, its notification channels, and its alerts
//! (incidents) with the delivery of each notification.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::Timestamp;

/// One rule of an environment (every environment has one of each kind).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AlertRule {
    /// `error_rate`, `latency_p95`, `health_check`, `crash_loop` or `backup_failed`.
    pub kind: String,
    /// The bound: a fraction for `error_rate` (0.01 = 1 %), seconds for `latency_p95`,
    /// consecutive failures for `health_check`, crashes for `crash_loop`, 1 for
    /// `backup_failed`.
    pub threshold: f64,
    /// How long the breach must last (`error_rate`, `latency_p95`), or the window crashes
    /// are counted in (`crash_loop`).
    pub for_seconds: u64,
    /// Disabled rules never fire.
    pub enabled: bool,
    /// The condition in words ("error rate > 1 % for 5 min").
    pub condition: String,
    /// Whether this is the default (never changed).
    pub default: bool,
}

/// `PUT /api/environments/{id}/alerts/rules/{kind}`: what to change (absent = keep).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpdateAlertRule {
    /// New threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// New period, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_seconds: Option<u64>,
    /// Enable or disable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// `POST /api/environments/{id}/alerts/channels`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateAlertChannel {
    /// `webhook` (generic JSON, signed with HMAC-SHA256), `slack` (incoming webhook) or
    /// `email`.
    pub kind: String,
    /// The URL (`webhook`, `slack`) or the email address.
    pub target: String,
}

/// A notification channel (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AlertChannel {
    /// Stable id.
    pub id: Uuid,
    /// `webhook`, `slack` or `email`.
    pub kind: String,
    /// The address, or the URL as scheme and host only (the rest can be a credential; the
    /// whole URL is shown once, when the channel is added).
    pub target: String,
    /// When it was added.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// The answer to creating a channel: a `webhook` channel's signing secret is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CreatedAlertChannel {
    /// The channel.
    #[serde(flatten)]
    pub channel: AlertChannel,
    /// `webhook` only: the key of the `X-Gilgal-Signature-256` HMAC-SHA256 header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// The delivery of one notification to one channel.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AlertDelivery {
    /// The channel.
    pub channel_id: Uuid,
    /// `firing` or `resolved`.
    pub event: String,
    /// Tries so far.
    pub attempts: u32,
    /// When it was delivered.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<Timestamp>,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One alert: a rule's breach from firing to resolving.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Alert {
    /// Stable id.
    pub id: Uuid,
    /// The rule's kind.
    pub kind: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// What fired it.
    pub message: String,
    /// The value measured when it fired.
    pub value: Option<f64>,
    /// The threshold it passed.
    pub threshold: f64,
    /// When it fired.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub fired_at: Timestamp,
    /// When it resolved.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub resolved_at: Option<Timestamp>,
    /// Why it resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_message: Option<String>,
    /// Its notifications, per channel and event.
    pub deliveries: Vec<AlertDelivery>,
}
