//! `gilgal metrics`: an environment's traffic and resource use over a window, computed from
//! two samples of the server's cumulative figures (`GET /api/projects/{id}/metrics`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use gilgal_types::EnvironmentMetrics;
use serde::Serialize;

use super::Session;
use crate::cli::Target;

/// Figures of one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    /// Length in seconds.
    pub seconds: f64,
    /// Requests answered in the window.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Share of 5xx responses (0 to 1).
    pub error_rate: f64,
    /// Latency percentiles (upper bound of the histogram bucket), when any request.
    pub p50_seconds: Option<f64>,
    /// 95th percentile.
    pub p95_seconds: Option<f64>,
    /// 99th percentile.
    pub p99_seconds: Option<f64>,
    /// CPU used by the environment's instances, in cores (1.0 = one core busy).
    pub cpu_cores: Option<f64>,
    /// Resident memory of the instances at the end of the window (bytes).
    pub memory_bytes: Option<u64>,
    /// Running instances at the end of the window.
    pub instances: usize,
}

/// Parses `10s`, `2m`, `1h` or `0`.
pub(crate) fn parse_window(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = digits
        .parse()
        .ok()
        .with_context(|| format!("{text:?}: use a duration like 10s, 1m or 1h, or 0"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("{text:?}: use a duration like 10s, 1m or 1h, or 0"),
    };
    Ok(Duration::from_secs(seconds))
}

/// The percentile `q` of a non-cumulative histogram (bucket upper bounds; `None` = +Inf).
fn quantile(buckets: &[(Option<f64>, u64)], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let wanted = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (le, n) in buckets {
        seen += n;
        if seen >= wanted {
            return Some(le.unwrap_or(f64::INFINITY));
        }
    }
    None
}

/// The window between two samples (`before = None`: everything since the server started).
pub fn window(
    before: Option<&EnvironmentMetrics>,
    after: &EnvironmentMetrics,
    seconds: f64,
) -> Window {
    let requests = after.requests - before.map_or(0, |b| b.requests.min(after.requests));
    let errors = |m: &EnvironmentMetrics| m.status_classes.get("5xx").copied().unwrap_or(0);
    let window_errors = errors(after).saturating_sub(before.map_or(0, errors));
    let buckets: Vec<(Option<f64>, u64)> = after
        .latency_buckets
        .iter()
        .enumerate()
        .map(|(i, bucket)| {
            let earlier = before
                .and_then(|b| b.latency_buckets.get(i))
                .map_or(0, |b| b.count);
            (bucket.le_seconds, bucket.count.saturating_sub(earlier))
        })
        .collect();
    let cpu_after: Option<f64> = after.instances.iter().map(|i| i.cpu_seconds).sum();
    let cpu_before: Option<f64> = before.map(|b| {
        // Only instances still running count: a replaced instance's CPU left with it.
        b.instances
            .iter()
            .filter(|i| {
                after.instances.iter().any(|a| {
                    a.process_type == i.process_type && a.index == i.index && a.release == i.release
                })
            })
            .filter_map(|i| i.cpu_seconds)
            .sum()
    });
    Window {
        seconds,
        requests,
        rps: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        error_rate: if requests == 0 {
            0.0
        } else {
            window_errors as f64 / requests as f64
        },
        p50_seconds: quantile(&buckets, 0.50),
        p95_seconds: quantile(&buckets, 0.95),
        p99_seconds: quantile(&buckets, 0.99),
        cpu_cores: match (cpu_after, cpu_before) {
            (Some(after), Some(before)) if seconds > 0.0 => {
                Some(((after - before) / seconds).max(0.0))
            }
            _ => None,
        },
        memory_bytes: after.instances.iter().map(|i| i.memory_bytes).sum(),
        instances: after.instances.len(),
    }
}

/// What one sample reads: a whole environment, or the release one deployment made.
enum Source {
    Environment { project: uuid::Uuid, env: String },
    Release { deployment: uuid::Uuid },
}

async fn sample(
    client: &gilgal_client::Client,
    source: &Source,
) -> anyhow::Result<EnvironmentMetrics> {
    match source {
        Source::Environment { project, env } => client
            .project_metrics(*project)
            .await?
            .into_iter()
            .find(|m| &m.environment == env)
            .with_context(|| format!("no environment {env:?} in this project")),
        Source::Release { deployment } => Ok(client.deployment_metrics(*deployment).await?),
    }
}

/// The deployment that made release `text` (`v7` or `7`) of the target environment.
async fn release_source(
    client: &gilgal_client::Client,
    target: &Target,
    text: &str,
) -> anyhow::Result<(u64, Source)> {
    let number: u64 = text
        .trim_start_matches('v')
        .parse()
        .ok()
        .with_context(|| format!("{text:?} is not a release like v7"))?;
    let env = super::apps::environment(client, target).await?;
    let release = client
        .releases(env.id)
        .await?
        .into_iter()
        .find(|r| r.number == number)
        .with_context(|| {
            format!(
                "{}/{} has no release v{number}; see `gilgal releases`",
                target.project, target.env
            )
        })?;
    let deployment = release
        .deployment_id
        .with_context(|| format!("release v{number} has no deployment to read figures from"))?;
    Ok((number, Source::Release { deployment }))
}

fn millis(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if s.is_infinite() => "> 10 s".to_owned(),
        Some(s) => format!("≤ {:.1} ms", s * 1000.0),
        None => "-".to_owned(),
    }
}

/// `gilgal metrics`.
pub async fn metrics(
    session: &Session,
    window_text: &str,
    release: Option<String>,
    target: Target,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let length = parse_window(window_text)?;
    let client = session.authenticated()?;
    let (release, source) = match &release {
        Some(text) => {
            let (number, source) = release_source(&client, &target, text).await?;
            (Some(number), source)
        }
        None => {
            let project = client.project_by_name(&target.project).await?;
            let env = target.env.clone();
            (
                None,
                Source::Environment {
                    project: project.id,
                    env,
                },
            )
        }
    };
    let figures = if length.is_zero() {
        let now = sample(&client, &source).await?;
        window(None, &now, 0.0)
    } else {
        let first = sample(&client, &source).await?;
        if !json {
            eprintln!("Sampling for {} s…", length.as_secs());
        }
        let started = std::time::Instant::now();
        tokio::time::sleep(length).await;
        let second = sample(&client, &source).await?;
        window(Some(&first), &second, started.elapsed().as_secs_f64())
    };
    if json {
        crate::output::json(&figures)?;
        return Ok(ExitCode::SUCCESS);
    }
    let over = if length.is_zero() {
        "since the server started".to_owned()
    } else {
        format!("over {:.0} s", figures.seconds)
    };
    let which = release
        .map(|n| format!(" release v{n}"))
        .unwrap_or_default();
    println!("{}/{}{which} {over}", target.project, target.env);
    println!(
        "requests  {} ({:.1}/s), errors {:.2} %",
        figures.requests,
        figures.rps,
        figures.error_rate * 100.0
    );
    println!(
        "latency   p50 {}, p95 {}, p99 {}",
        millis(figures.p50_seconds),
        millis(figures.p95_seconds),
        millis(figures.p99_seconds)
    );
    println!(
        "instances {}, CPU {}, memory {}",
        figures.instances,
        figures
            .cpu_cores
            .map(|c| format!("{:.0} %", c * 100.0))
            .unwrap_or_else(|| "-".to_owned()),
        figures
            .memory_bytes
            .map(|b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "-".to_owned())
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gilgal_types::{InstanceMetrics, LatencyBucket};

    fn sample(requests: u64, errors: u64, buckets: [u64; 3], cpu: f64) -> EnvironmentMetrics {
        EnvironmentMetrics {
            environment_id: uuid::Uuid::nil(),
            environment: "production".into(),
            requests,
            status_classes: [
                ("2xx".to_owned(), requests - errors),
                ("5xx".to_owned(), errors),
            ]
            .into_iter()
            .collect(),
            error_rate: 0.0,
            p50_seconds: None,
            p95_seconds: None,
            p99_seconds: None,
            open_connections: 0,
            latency_buckets: [Some(0.01), Some(0.5), None]
                .into_iter()
                .zip(buckets)
                .map(|(le_seconds, count)| LatencyBucket { le_seconds, count })
                .collect(),
            instances: vec![InstanceMetrics {
                process_type: "web".into(),
                index: 0,
                release: 1,
                cpu_seconds: Some(cpu),
                memory_bytes: Some(1 << 20),
                restarts: 0,
            }],
            release: None,
        }
    }

    #[test]
    fn a_window_is_the_difference_of_two_samples() {
        let before = sample(100, 1, [100, 0, 0], 10.0);
        // 20 more requests: 14 fast, 4 slow, 2 very slow; 5 of them 5xx; 1 s of CPU in 2 s.
        let after = sample(120, 6, [114, 4, 2], 11.0);
        let w = window(Some(&before), &after, 2.0);
        assert_eq!(w.requests, 20);
        assert_eq!(w.rps, 10.0);
        assert_eq!(w.error_rate, 0.25);
        assert_eq!(w.p50_seconds, Some(0.01));
        assert_eq!(w.p95_seconds, Some(f64::INFINITY));
        assert_eq!(w.p99_seconds, Some(f64::INFINITY));
        assert_eq!(w.cpu_cores, Some(0.5));
        assert_eq!(w.memory_bytes, Some(1 << 20));
        let all = window(None, &after, 0.0);
        assert_eq!(all.requests, 120);
        assert_eq!(all.error_rate, 0.05);
        assert_eq!(all.cpu_cores, None);
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_window("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_window("0").unwrap(), Duration::ZERO);
        for bad in ["", "s", "10", "1.5m", "-1s", "10d"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }
}
