//! Alerts: every `AlertsConfig::interval` the evaluator measures each environment's signals
//! (5xx share and p95 latency from the proxy's counters over a window, health-check failure
//! streaks from the health watch, crashes on the events timeline, add-ons' latest backups),
//! feeds them to its rules (gilgal-core's defaults, or the owner's overrides), opens an alert
//! when a rule has been breached for its pending period and resolves it when the breach ends.
//! Each change is written with one notification per channel (the store's outbox), which is
//! then delivered and retried with backoff: at least once (a crash between sending and
//! recording sends it again; receivers deduplicate on `X-Gilgal-Delivery`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gilgal_core::alerts::{
    histogram_quantile, AlertKind, AlertRule, PendingState, TrafficHistory, TrafficSample,
};
use gilgal_notify::{Channel, Event, Notification, Notifier};
use gilgal_store::{
    AlertChannelRecord, AlertRecord, AlertRuleRecord, EnvironmentRecord, NotificationRecord,
    StoreError,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{DeployError, Platform};

/// How often rules are evaluated when the server does not say.
pub const DEFAULT_ALERT_INTERVAL: Duration = Duration::from_secs(15);
/// Rates and percentiles are measured over the rule's pending period, at most this long.
const MAX_TRAFFIC_WINDOW_MS: u64 = 60_000;
/// Tries per notification before giving up (about 5 minutes of retries in all).
pub const MAX_DELIVERY_ATTEMPTS: u32 = 6;

/// How alerts are evaluated and delivered.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    /// Time between evaluations ([`DEFAULT_ALERT_INTERVAL`]; tests use less).
    pub interval: Duration,
    /// Delivers to webhooks, Slack and email.
    pub notifier: Notifier,
}

/// The vault name a generic webhook channel's signing secret is sealed under.
pub fn channel_secret_name(id: Uuid) -> String {
    format!("alert-channel:{id}")
}

/// The environment's rules: the defaults of every kind, with the owner's overrides.
pub fn effective_rules(overrides: &[AlertRuleRecord]) -> Vec<AlertRule> {
    AlertKind::ALL
        .into_iter()
        .map(|kind| {
            overrides
                .iter()
                .find(|o| o.kind == kind.as_str())
                .map(|o| AlertRule {
                    kind,
                    threshold: o.threshold,
                    for_seconds: o.for_seconds,
                    enabled: o.enabled,
                })
                .unwrap_or_else(|| kind.default_rule())
        })
        .collect()
}

/// Health-check failure streaks of one environment, kept by the health watch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HealthStreak {
    /// The longest streak of any instance in the latest round.
    current: u32,
    /// The longest since the evaluator last looked (a streak that got its instance replaced
    /// between two evaluations still counts).
    peak: u32,
}

/// What the evaluator remembers between rounds.
#[derive(Default)]
struct EvaluatorState {
    traffic: HashMap<String, TrafficHistory>,
    pending: HashMap<(Uuid, AlertKind), PendingState>,
}

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Backoff after `attempts` failed tries: 5 s, 10 s, 20 s, … at most 10 minutes.
fn retry_after_ms(attempts: u32) -> u64 {
    (5_000u64 << attempts.min(10)).min(600_000)
}

impl Platform {
    /// Sets the streak of every environment the health watch did not check this round (no
    /// live release, no web process, deleted) to 0: nothing of theirs is failing.
    pub(crate) fn clear_health_streaks_except(&self, checked: &[Uuid]) {
        if let Ok(mut streaks) = self.health_streaks.lock() {
            for (id, streak) in streaks.iter_mut() {
                if !checked.contains(id) {
                    streak.current = 0;
                }
            }
        }
    }

    /// Records the health watch's longest failure streak in `environment` this round.
    pub(crate) fn note_health_streak(&self, environment: Uuid, streak: u32) {
        if let Ok(mut streaks) = self.health_streaks.lock() {
            let entry = streaks.entry(environment).or_default();
            entry.current = streak;
            entry.peak = entry.peak.max(streak);
        }
    }

    /// The streak each environment reached since the last call (then forgets the peaks).
    fn take_health_streaks(&self) -> HashMap<Uuid, u32> {
        let Ok(mut streaks) = self.health_streaks.lock() else {
            return HashMap::new();
        };
        streaks
            .iter_mut()
            .map(|(id, s)| {
                let reached = s.current.max(s.peak);
                s.peak = s.current;
                (*id, reached)
            })
            .collect()
    }
}

/// The loop that evaluates alert rules and delivers their notifications, and the checks
/// the API makes on alert channels.
#[derive(Debug)]
pub struct AlertEvaluator {
    pub(crate) platform: Arc<crate::Platform>,
}

impl AlertEvaluator {
    pub(crate) fn new(platform: Arc<crate::Platform>) -> Self {
        Self { platform }
    }

    /// Delivers notifications (shared with the API, which checks channels against it).
    pub fn notifier(&self) -> &Notifier {
        &self.platform.config.alerts.notifier
    }

    /// Refuses a notification URL whose host is on the server's own network, unless the
    /// administrator allowed private URLs (as for git sources).
    pub async fn check_notification_url(&self, url: &str) -> Result<(), DeployError> {
        gilgal_notify::check_url(url).map_err(|e| DeployError::Invalid(e.to_string()))?;
        if self.platform.config.allow_private_urls {
            return Ok(());
        }
        crate::ssrf::check_public(url)
            .await
            .map_err(DeployError::Invalid)
    }

    /// The environment's rules, defaults included.
    pub async fn alert_rules(&self, environment: Uuid) -> Result<Vec<AlertRule>, StoreError> {
        Ok(effective_rules(
            &self
                .platform
                .store
                .alert_rule_overrides(environment)
                .await?,
        ))
    }

    /// Evaluates every environment's rules and delivers due notifications every
    /// `AlertsConfig::interval` until `stop`.
    pub async fn run_alerts(self: &Arc<Self>, stop: CancellationToken) {
        let mut state = EvaluatorState::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.platform.config.alerts.interval) => {}
            }
            if let Err(e) = self.evaluate_alerts(&mut state).await {
                tracing::warn!(error = %e, "alert evaluation failed");
            }
            if let Err(e) = self.deliver_notifications().await {
                tracing::warn!(error = %e, "alert delivery failed");
            }
        }
    }

    async fn evaluate_alerts(&self, state: &mut EvaluatorState) -> Result<(), StoreError> {
        let now = now_ms();
        let interval_ms =
            u64::try_from(self.platform.config.alerts.interval.as_millis()).unwrap_or(0);
        let environments = self.platform.store.all_environments().await?;
        let mut open: HashMap<(Uuid, String), AlertRecord> = self
            .platform
            .store
            .open_alerts()
            .await?
            .into_iter()
            .map(|a| ((a.environment_id, a.kind.clone()), a))
            .collect();
        let mut overrides: HashMap<Uuid, Vec<AlertRuleRecord>> = HashMap::new();
        for (environment, rule) in self.platform.store.all_alert_rule_overrides().await? {
            overrides.entry(environment).or_default().push(rule);
        }
        let snapshot = match self.platform.edge.link().metrics().await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                // Traffic alerts wait for the edge's next answer; nothing is judged blind.
                tracing::warn!(error = %e, "cannot read the edge's metrics; alerts skip this round");
                return Ok(());
            }
        };
        let streaks = self.platform.take_health_streaks();
        let keep_ms = MAX_TRAFFIC_WINDOW_MS + 2 * interval_ms;
        for environment in &environments {
            let route = self.platform.route_of(environment);
            if let Some(m) = snapshot.route(&route) {
                state.traffic.entry(route.clone()).or_default().push(
                    TrafficSample {
                        at_ms: now,
                        status_classes: m.status_classes,
                        latency_buckets: m.latency_buckets.to_vec(),
                    },
                    keep_ms,
                );
            }
            let rules = effective_rules(
                overrides
                    .get(&environment.id)
                    .map_or(&[][..], Vec::as_slice),
            );
            for rule in rules {
                let (value, known, window) = if rule.enabled {
                    self.measure(environment, &rule, state, &streaks, now, interval_ms)
                        .await?
                } else {
                    (None, true, String::new())
                };
                let breached = value.map(|v| rule.breached_by(v));
                let firing = state
                    .pending
                    .entry((environment.id, rule.kind))
                    .or_default()
                    .observe(now, breached, rule.pending_millis());
                let condition = rule.kind.condition(rule.threshold, rule.for_seconds);
                let existing = open.remove(&(environment.id, rule.kind.as_str().to_owned()));
                match existing {
                    None if firing => {
                        let measured = value.map(|v| rule.kind.format_value(v));
                        let message =
                            format!("{condition}: {}{window}", measured.unwrap_or_default());
                        if self
                            .platform
                            .store
                            .fire_alert(
                                environment.id,
                                rule.kind.as_str(),
                                &message,
                                value,
                                rule.threshold,
                            )
                            .await?
                        {
                            tracing::warn!(environment = %environment.id, rule = %rule.kind, %message, "alert firing");
                            self.platform
                                .event(environment.id, "alert", format!("firing: {message}"))
                                .await;
                        }
                    }
                    // Resolved only by a measurement: right after a restart there is not yet
                    // a window of traffic or a health round, and an open alert stays open.
                    Some(alert) if known && breached != Some(true) => {
                        let message = match value {
                            _ if !rule.enabled => "the rule was disabled".to_owned(),
                            Some(v) => {
                                format!("back to normal: {}{window}", rule.kind.format_value(v))
                            }
                            None => "back to normal: no traffic to measure".to_owned(),
                        };
                        if self
                            .platform
                            .store
                            .resolve_alert(alert.id, &message)
                            .await?
                        {
                            tracing::info!(environment = %environment.id, rule = %rule.kind, %message, "alert resolved");
                            self.platform
                                .event(
                                    environment.id,
                                    "alert",
                                    format!("resolved: {condition} ({message})"),
                                )
                                .await;
                        }
                    }
                    _ => {}
                }
            }
        }
        // Forget what belongs to deleted environments.
        let routes: std::collections::HashSet<String> = environments
            .iter()
            .map(|e| self.platform.route_of(e))
            .collect();
        state.traffic.retain(|route, _| routes.contains(route));
        let ids: std::collections::HashSet<Uuid> = environments.iter().map(|e| e.id).collect();
        state.pending.retain(|(id, _), _| ids.contains(id));
        Ok(())
    }

    /// The rule's signal now (`None`: nothing to measure), whether it was measured at all
    /// (`false` before the server has watched a whole window or a health round), and, for
    /// traffic rules, the window it was measured over, for the message.
    async fn measure(
        &self,
        environment: &EnvironmentRecord,
        rule: &AlertRule,
        state: &EvaluatorState,
        streaks: &HashMap<Uuid, u32>,
        now: u64,
        interval_ms: u64,
    ) -> Result<(Option<f64>, bool, String), StoreError> {
        Ok(match rule.kind {
            AlertKind::ErrorRate | AlertKind::LatencyP95 => {
                let window_ms = rule
                    .for_seconds
                    .saturating_mul(1000)
                    .clamp(2 * interval_ms, MAX_TRAFFIC_WINDOW_MS.max(2 * interval_ms));
                let history = state.traffic.get(&self.platform.route_of(environment));
                let known = history.is_some_and(|h| h.spans(window_ms));
                let delta = history.and_then(|h| h.over(window_ms));
                let value = delta.and_then(|d| match rule.kind {
                    AlertKind::ErrorRate => d.error_rate(),
                    _ => histogram_quantile(
                        &gilgal_proxy::LATENCY_BUCKETS_SECONDS,
                        &d.latency_buckets,
                        0.95,
                    ),
                });
                (
                    value,
                    known,
                    format!(" over the last {:.0} s", window_ms as f64 / 1000.0),
                )
            }
            AlertKind::HealthCheck => match streaks.get(&environment.id) {
                Some(streak) => (Some(f64::from(*streak)), true, String::new()),
                None => (None, false, String::new()),
            },
            AlertKind::CrashLoop => {
                let since = now.saturating_sub(rule.for_seconds.saturating_mul(1000));
                let crashes = self
                    .platform
                    .store
                    .crashes_since(environment.id, i64::try_from(since).unwrap_or(0))
                    .await?;
                (Some(crashes as f64), true, String::new())
            }
            AlertKind::BackupFailed => (
                Some(
                    self.platform
                        .store
                        .addons_with_failed_backup(environment.id)
                        .await? as f64,
                ),
                true,
                String::new(),
            ),
        })
    }

    /// Delivers the notifications that are due, concurrently; each attempt is recorded.
    async fn deliver_notifications(&self) -> Result<(), StoreError> {
        let due = self
            .platform
            .store
            .due_notifications(MAX_DELIVERY_ATTEMPTS, 100)
            .await?;
        let deliveries = due.iter().map(|n| self.deliver(n));
        for result in futures_util::future::join_all(deliveries).await {
            result?;
        }
        Ok(())
    }

    /// Sends a test notification to one channel now (not through the outbox: the caller
    /// waits for the outcome). The error says why it did not arrive.
    pub async fn test_alert_channel(
        &self,
        channel: &AlertChannelRecord,
        environment: &EnvironmentRecord,
    ) -> Result<(), String> {
        let target = self.channel(channel).await?;
        let notification = Notification {
            event: Event::Test,
            alert_id: format!("test-{}", Uuid::new_v4()),
            rule: "test".to_owned(),
            condition: "test notification".to_owned(),
            message: format!(
                "A test from Gilgal: alerts of {}/{} reach this {} channel.",
                environment.project_name, environment.name, channel.kind
            ),
            value: None,
            threshold: 0.0,
            project: environment.project_name.clone(),
            environment: environment.name.clone(),
            fired_at: time::OffsetDateTime::now_utc(),
            resolved_at: None,
            url: Some(
                self.platform
                    .url(&environment.project_name, &environment.name),
            ),
        };
        self.send(&target, &notification).await
    }

    async fn send(&self, target: &Channel, notification: &Notification) -> Result<(), String> {
        self.platform
            .config
            .alerts
            .notifier
            .send(target, notification)
            .await
            .map_err(|e| e.to_string())
    }

    async fn deliver(&self, pending: &NotificationRecord) -> Result<(), StoreError> {
        let alert = self.platform.store.alert(pending.alert_id).await?;
        if pending.event == Event::Resolved.as_str() {
            // Never let "resolved" overtake its "firing" (still being retried) on a channel.
            let firing_waits = self
                .platform
                .store
                .alert_notifications(alert.id)
                .await?
                .iter()
                .any(|n| {
                    n.channel_id == pending.channel_id
                        && n.event == Event::Firing.as_str()
                        && n.delivered_at.is_none()
                        && n.attempts < MAX_DELIVERY_ATTEMPTS
                });
            if firing_waits {
                return Ok(());
            }
        }
        let channel = self
            .platform
            .store
            .alert_channel(pending.channel_id)
            .await?;
        let environment = self
            .platform
            .store
            .environment_by_id(alert.environment_id)
            .await?;
        let outcome = match self.channel(&channel).await {
            Ok(target) => {
                let notification = self.notification(&alert, &environment, &pending.event);
                self.send(&target, &notification).await
            }
            Err(e) => Err(e),
        };
        let attempts = pending.attempts + 1;
        if let Err(error) = &outcome {
            tracing::warn!(alert = %alert.id, channel = %channel.id, attempts, %error, "alert notification failed");
            if attempts >= MAX_DELIVERY_ATTEMPTS {
                self.platform
                    .event(
                        environment.id,
                        "alert",
                        format!(
                        "the {} notification to {} {} failed {attempts} times; giving up: {error}",
                        pending.event,
                        channel.kind,
                        if channel.kind == "email" {
                            channel.target.clone()
                        } else {
                            gilgal_notify::redact_url(&channel.target)
                        }
                    ),
                    )
                    .await;
            }
        }
        self.platform
            .store
            .notification_attempted(
                pending,
                outcome.as_ref().map(|_| ()).map_err(String::as_str),
                retry_after_ms(pending.attempts),
            )
            .await
    }

    /// The channel as the notifier takes it; a URL whose host now resolves to the server's
    /// own network is refused at every delivery, not only when the channel was added.
    async fn channel(&self, channel: &AlertChannelRecord) -> Result<Channel, String> {
        if channel.kind != "email" {
            self.check_notification_url(&channel.target)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(match channel.kind.as_str() {
            "webhook" => {
                let sealed = channel
                    .secret_sealed
                    .as_deref()
                    .ok_or("the webhook channel has no secret")?;
                let secret = self
                    .platform
                    .vault
                    .open(
                        channel.environment_id,
                        &channel_secret_name(channel.id),
                        sealed,
                    )
                    .await
                    .map_err(|e| format!("cannot open the channel's secret: {e}"))?;
                Channel::Webhook {
                    url: channel.target.clone(),
                    secret: secret.to_string(),
                }
            }
            "slack" => Channel::Slack {
                url: channel.target.clone(),
            },
            "email" => Channel::Email {
                to: channel.target.clone(),
            },
            other => return Err(format!("unknown channel kind {other:?}")),
        })
    }

    fn notification(
        &self,
        alert: &AlertRecord,
        environment: &EnvironmentRecord,
        event: &str,
    ) -> Notification {
        let resolved = event == Event::Resolved.as_str();
        // A fired alert's message starts with the rule's condition as it was then.
        let condition = alert
            .message
            .split_once(": ")
            .map_or_else(|| alert.kind.clone(), |(c, _)| c.to_owned());
        Notification {
            event: if resolved {
                Event::Resolved
            } else {
                Event::Firing
            },
            alert_id: alert.id.to_string(),
            rule: alert.kind.clone(),
            condition,
            message: if resolved {
                alert
                    .resolved_message
                    .clone()
                    .unwrap_or_else(|| "resolved".to_owned())
            } else {
                alert.message.clone()
            },
            value: alert.value,
            threshold: alert.threshold,
            project: environment.project_name.clone(),
            environment: environment.name.clone(),
            fired_at: alert.fired_at,
            resolved_at: alert.resolved_at,
            url: Some(
                self.platform
                    .url(&environment.project_name, &environment.name),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_their_kind_and_defaults_fill_the_rest() {
        let rules = effective_rules(&[AlertRuleRecord {
            kind: "error_rate".into(),
            threshold: 0.05,
            for_seconds: 60,
            enabled: false,
        }]);
        assert_eq!(rules.len(), AlertKind::ALL.len());
        assert_eq!(rules[0].kind, AlertKind::ErrorRate);
        assert_eq!((rules[0].threshold, rules[0].for_seconds), (0.05, 60));
        assert!(!rules[0].enabled);
        assert_eq!(rules[1], AlertKind::LatencyP95.default_rule());
    }

    #[test]
    fn retries_back_off_to_ten_minutes() {
        assert_eq!(retry_after_ms(0), 5_000);
        assert_eq!(retry_after_ms(1), 10_000);
        assert_eq!(retry_after_ms(3), 40_000);
        assert_eq!(retry_after_ms(40), 600_000);
    }
}
