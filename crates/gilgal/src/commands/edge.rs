//! `gilgal https` and `gilgal ratelimit`: what the edge enforces for an environment.

use std::process::ExitCode;

use anyhow::{bail, Context};
use gilgal_types::{EdgeSettings, RateLimitRule};

use super::Session;
use crate::cli::{RatelimitCommand, Target};

/// Parses `10/s`, `600/m`, `5000/h` or `100/d` into (requests, seconds).
pub(crate) fn parse_rate(text: &str) -> anyhow::Result<(u32, u32)> {
    let usage = || format!("{text:?}: a rate looks like 10/s, 600/m, 5000/h or 100000/d");
    let (count, unit) = text.trim().split_once('/').with_context(usage)?;
    let requests: u32 = count.trim().parse().ok().with_context(usage)?;
    let seconds = match unit.trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        _ => bail!(usage()),
    };
    anyhow::ensure!(requests > 0, "{text:?}: at least 1 request per period");
    Ok((requests, seconds))
}

fn describe_rule(rule: &RateLimitRule) -> String {
    let per = match rule.per_seconds {
        1 => "s".to_owned(),
        60 => "min".to_owned(),
        3600 => "h".to_owned(),
        86_400 => "day".to_owned(),
        n => format!("{n} s"),
    };
    format!(
        "{:<20} {}/{per}, burst {}",
        rule.path_prefix.as_deref().unwrap_or("(every path)"),
        rule.requests,
        rule.burst.unwrap_or(rule.requests)
    )
}

fn hsts_seconds(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(seconds);
    }
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = digits
        .parse()
        .ok()
        .with_context(|| format!("{text:?}: use 300, 1d, 30d or 1y"))?;
    Ok(match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        "y" => n * 365 * 86_400,
        _ => bail!("{text:?}: use 300, 1d, 30d or 1y"),
    })
}

fn print_https(target: &Target, settings: &EdgeSettings) {
    let hsts = match settings.hsts_max_age_seconds {
        Some(age) => format!(
            ", HSTS max-age={age}{}",
            if settings.hsts_include_subdomains {
                "; includeSubDomains"
            } else {
                ""
            }
        ),
        None => String::new(),
    };
    println!(
        "{}/{}: HTTPS {}{hsts}",
        target.project,
        target.env,
        if settings.https_only {
            "only (plain HTTP is redirected)"
        } else {
            "optional"
        }
    );
}

/// `gilgal https [on|off] [--hsts 1y]`.
pub async fn https(
    session: &Session,
    state: Option<String>,
    hsts: Option<String>,
    include_subdomains: bool,
    target: Target,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let env = super::apps::environment(&client, &target).await?;
    let mut settings = client.edge_settings(env.id).await?;
    if state.is_some() || hsts.is_some() {
        if let Some(state) = state {
            settings.https_only = state == "on";
        }
        if let Some(hsts) = hsts {
            let age = hsts_seconds(&hsts)?;
            settings.hsts_max_age_seconds = (age > 0).then_some(age);
            settings.hsts_include_subdomains = include_subdomains && age > 0;
        } else if !settings.https_only {
            // Turning HTTPS off also stops asking browsers to insist on it.
            settings.hsts_max_age_seconds = None;
            settings.hsts_include_subdomains = false;
        }
        settings = client.set_edge_settings(env.id, &settings).await?;
    }
    if json {
        crate::output::json(&settings)?;
    } else {
        print_https(&target, &settings);
    }
    Ok(ExitCode::SUCCESS)
}

/// `gilgal ratelimit …`.
pub async fn ratelimit(
    session: &Session,
    command: RatelimitCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = session.authenticated()?;
    let (target, change) = match command {
        RatelimitCommand::List { target } => (target, None),
        RatelimitCommand::Set {
            rate,
            burst,
            path,
            target,
        } => {
            let (requests, per_seconds) = parse_rate(&rate)?;
            let rule = RateLimitRule {
                path_prefix: path,
                requests,
                per_seconds,
                burst,
            };
            (target, Some((rule.path_prefix.clone(), Some(rule))))
        }
        RatelimitCommand::Remove { path, target } => (target, Some((path, None))),
    };
    let env = super::apps::environment(&client, &target).await?;
    let mut settings = client.edge_settings(env.id).await?;
    if let Some((path, rule)) = change {
        let before = settings.rate_limits.len();
        settings.rate_limits.retain(|r| r.path_prefix != path);
        match rule {
            Some(rule) => settings.rate_limits.push(rule),
            None if settings.rate_limits.len() == before => bail!(
                "no rate limit for {} in {}/{}; see `gilgal ratelimit list`",
                path.as_deref().unwrap_or("every path"),
                target.project,
                target.env
            ),
            None => {}
        }
        settings = client.set_edge_settings(env.id, &settings).await?;
    }
    if json {
        crate::output::json(&settings.rate_limits)?;
    } else if settings.rate_limits.is_empty() {
        println!("{}/{}: no rate limits", target.project, target.env);
    } else {
        for rule in &settings.rate_limits {
            println!("{}", describe_rule(rule));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_hsts_durations_parse() {
        assert_eq!(parse_rate("10/s").unwrap(), (10, 1));
        assert_eq!(parse_rate("600/m").unwrap(), (600, 60));
        assert_eq!(parse_rate("5000/h").unwrap(), (5000, 3600));
        for bad in ["10", "0/s", "x/s", "10/w", "/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(hsts_seconds("1y").unwrap(), 31_536_000);
        assert_eq!(hsts_seconds("300").unwrap(), 300);
        assert_eq!(hsts_seconds("30d").unwrap(), 2_592_000);
        assert!(hsts_seconds("soon").is_err());
    }
}
