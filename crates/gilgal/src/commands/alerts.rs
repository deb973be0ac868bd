//! `gilgal alerts`: what fired and resolved, the rules, and where notifications go.

use std::process::ExitCode;

use gilgal_types::{CreateAlertChannel, UpdateAlertRule};

use super::apps::environment;
use super::Session;
use crate::cli::AlertsCommand;

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Runs one `gilgal alerts` subcommand.
pub async fn run(
    session: &Session,
    command: AlertsCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    match command {
        AlertsCommand::List { limit, target } => {
            let env = environment(&client, &target).await?;
            let alerts = client.alerts(env.id, limit).await?;
            if json {
                crate::output::json(&alerts)?;
                return Ok(ExitCode::SUCCESS);
            }
            if alerts.is_empty() {
                println!("No alerts yet.");
            }
            for alert in alerts {
                let delivered = alert
                    .deliveries
                    .iter()
                    .filter(|d| d.delivered_at.is_some())
                    .count();
                println!(
                    "{} {:<8} {:<13} {}",
                    rfc3339(alert.fired_at),
                    alert.state,
                    alert.kind,
                    alert.message
                );
                if let (Some(at), Some(why)) = (alert.resolved_at, &alert.resolved_message) {
                    println!("{:>20}  resolved {} — {why}", "", rfc3339(at));
                }
                if !alert.deliveries.is_empty() {
                    println!(
                        "{:>20}  notifications: {delivered} of {} delivered",
                        "",
                        alert.deliveries.len()
                    );
                }
                for failed in alert.deliveries.iter().filter(|d| d.delivered_at.is_none()) {
                    if let Some(error) = &failed.last_error {
                        println!(
                            "{:>20}  {} to {} not delivered after {} tries: {error}",
                            "", failed.event, failed.channel_id, failed.attempts
                        );
                    }
                }
            }
        }
        AlertsCommand::Rules { target } => {
            let env = environment(&client, &target).await?;
            let rules = client.alert_rules(env.id).await?;
            if json {
                crate::output::json(&rules)?;
            } else {
                for rule in rules {
                    let state = match (rule.enabled, rule.default) {
                        (false, _) => "off",
                        (true, true) => "default",
                        (true, false) => "custom",
                    };
                    println!("{:<14} {:<8} {}", rule.kind, state, rule.condition);
                }
            }
        }
        AlertsCommand::Set {
            kind,
            threshold,
            for_duration,
            enable,
            disable,
            target,
        } => {
            let env = environment(&client, &target).await?;
            let for_seconds = match for_duration {
                Some(text) => Some(super::metrics::parse_window(&text)?.as_secs()),
                None => None,
            };
            let enabled = match (enable, disable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let rule = client
                .update_alert_rule(
                    env.id,
                    &kind,
                    &UpdateAlertRule {
                        threshold,
                        for_seconds,
                        enabled,
                    },
                )
                .await?;
            if json {
                crate::output::json(&rule)?;
            } else {
                let state = if rule.enabled { "on" } else { "off" };
                println!("{} ({state}): {}", rule.kind, rule.condition);
            }
        }
        AlertsCommand::Channels { target } => {
            let env = environment(&client, &target).await?;
            let channels = client.alert_channels(env.id).await?;
            if json {
                crate::output::json(&channels)?;
            } else if channels.is_empty() {
                println!(
                    "No channels: alerts show in `gilgal alerts list` and `gilgal events` only."
                );
            } else {
                for channel in channels {
                    println!("{}  {:<7} {}", channel.id, channel.kind, channel.target);
                }
            }
        }
        AlertsCommand::Notify {
            kind,
            destination,
            target,
        } => {
            let env = environment(&client, &target).await?;
            let created = client
                .create_alert_channel(
                    env.id,
                    &CreateAlertChannel {
                        kind: kind.clone(),
                        target: destination,
                    },
                )
                .await?;
            if json {
                crate::output::json(&created)?;
            } else {
                println!(
                    "Alerts of {} ({}) now also go to {} {} (channel {}).",
                    target.project,
                    target.env,
                    created.channel.kind,
                    created.channel.target,
                    created.channel.id
                );
                if let Some(secret) = created.secret {
                    println!("Secret:  {secret}   (shown once)");
                    println!(
                        "Each POST carries X-Gilgal-Signature-256: sha256=<HMAC-SHA256 of the body under the secret>; reject others."
                    );
                }
            }
        }
        AlertsCommand::Test { id, target } => {
            let env = environment(&client, &target).await?;
            client.test_alert_channel(env.id, id).await?;
            if !json {
                println!("Test notification delivered to channel {id}.");
            }
        }
        AlertsCommand::RemoveChannel { id, target } => {
            let env = environment(&client, &target).await?;
            client.delete_alert_channel(env.id, id).await?;
            if !json {
                println!("Channel {id} removed.");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
