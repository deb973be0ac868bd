//! Metrics: Prometheus exposition of the platform at `/metrics` (administrators), and JSON
//! figures per project and per deployment, as the spec names them.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use gilgal_deploy::InstanceUsage;
use gilgal_proxy::{RouteMetricsSnapshot, LATENCY_BUCKETS_SECONDS};
use gilgal_store::{EnvironmentRecord, StoreError};
use gilgal_types::{EnvironmentMetrics, ErrorBody, InstanceMetrics, LatencyBucket};
use std::fmt::Write as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::{parse_path_id, AuthUser};
use crate::{ApiError, AppState};

/// Routes of this module.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(prometheus))
        .routes(routes!(project_metrics))
        .routes(routes!(deployment_metrics))
        .routes(routes!(app_metrics))
}

/// The most text one app-metrics answer carries (labels make each sample longer; samples
/// past this are dropped and counted in `gilgal_app_scrape_dropped_lines`).
const MAX_APP_METRICS_OUTPUT: usize = 16 << 20;

/// Which path of the app to read.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AppMetricsQuery {
    /// The app's metrics path (default `/metrics`): `/` then letters, digits and `/ - _ . ~`,
    /// never `..`, at most 256 characters.
    #[serde(default)]
    #[param(pattern = r"^/(\.?[A-Za-z0-9/_~-])*\.?$", max_length = 256)]
    pub path: Option<String>,
}

/// The app's own Prometheus metrics: `path` (default `/metrics`) read from every running web
/// instance of the live release, with `app`, `env`, `release` and `instance` labels added
/// (a label the app already uses becomes `exported_<name>`), plus `gilgal_app_scrape_up`
/// per instance. Point Prometheus here with a read-scoped API token.
#[utoipa::path(get, path = "/api/environments/{id}/metrics/app", tag = "metrics",
    params(("id" = String, Path, description = "Environment id"), AppMetricsQuery),
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 404, description = "No such environment for this caller", body = ErrorBody),
        (status = 422, description = "Invalid path", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn app_metrics(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<AppMetricsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let environment = crate::routes::environments::owned_environment(&state, &caller, &id).await?;
    let path = query.path.unwrap_or_else(|| "/metrics".to_owned());
    if !path.starts_with('/')
        || path.len() > 256
        || path.contains("..")
        || !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
    {
        return Err(ApiError::invalid(
            "path must be an absolute URL path of letters, digits and / - _ . ~ (e.g. /metrics)",
        ));
    }
    let scrapes = state
        .metrics()
        .scrape_app_metrics(&environment, &path)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let mut out = String::new();
    let mut seen = std::collections::HashSet::new();
    let mut up = String::from("# TYPE gilgal_app_scrape_up gauge\n");
    let mut dropped_lines = String::from("# TYPE gilgal_app_scrape_dropped_lines gauge\n");
    for scrape in scrapes {
        let l = &scrape.labels;
        let extra = [
            // Labels carry ids; the exposition names the project and environment.
            ("app", environment.project_name.clone()),
            ("env", environment.name.clone()),
            ("release", l.release.to_string()),
            ("instance", format!("{}.{}", l.process_type, l.index)),
        ];
        let (ok, dropped) = match &scrape.result {
            Ok(text) => (
                1,
                gilgal_core::exposition::relabel(
                    text,
                    &extra,
                    &mut out,
                    &mut seen,
                    MAX_APP_METRICS_OUTPUT,
                ),
            ),
            Err(error) => {
                tracing::debug!(instance = %extra[3].1, %error, "app metrics unreadable");
                (0, 0)
            }
        };
        let labels: Vec<String> = extra
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let labels = labels.join(",");
        let _ = writeln!(up, "gilgal_app_scrape_up{{{labels}}} {ok}");
        let _ = writeln!(
            dropped_lines,
            "gilgal_app_scrape_dropped_lines{{{labels}}} {dropped}"
        );
    }
    out.push_str(&up);
    out.push_str(&dropped_lines);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
}

fn label(value: &str) -> String {
    gilgal_core::exposition::escape_label(value)
}

/// The upper bound of the bucket holding quantile `q`, from non-cumulative bucket counts.
fn quantile(buckets: &[u64; 15], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let wanted = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= wanted {
            return Some(
                LATENCY_BUCKETS_SECONDS
                    .get(i)
                    .copied()
                    .unwrap_or(f64::INFINITY),
            );
        }
    }
    None
}

fn environment_figures(
    environment: &EnvironmentRecord,
    route: Option<&RouteMetricsSnapshot>,
    usage: &[InstanceUsage],
    release: Option<u64>,
) -> EnvironmentMetrics {
    let empty = RouteMetricsSnapshot {
        status_classes: [0; 5],
        latency_buckets: [0; 15],
        latency_sum_seconds: 0.0,
        bytes_in: 0,
        bytes_out: 0,
        open_connections: 0,
        rate_limited: 0,
    };
    let m = route.unwrap_or(&empty);
    let requests = m.requests();
    EnvironmentMetrics {
        environment_id: environment.id,
        environment: environment.name.clone(),
        requests,
        status_classes: m
            .status_classes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("{}xx", i + 1), *n))
            .collect(),
        error_rate: if requests == 0 {
            0.0
        } else {
            m.status_classes[4] as f64 / requests as f64
        },
        p50_seconds: quantile(&m.latency_buckets, 0.50),
        p95_seconds: quantile(&m.latency_buckets, 0.95),
        p99_seconds: quantile(&m.latency_buckets, 0.99),
        open_connections: m.open_connections,
        latency_buckets: m
            .latency_buckets
            .iter()
            .enumerate()
            .map(|(i, count)| LatencyBucket {
                le_seconds: LATENCY_BUCKETS_SECONDS.get(i).copied(),
                count: *count,
            })
            .collect(),
        instances: usage
            .iter()
            .filter(|u| {
                gilgal_deploy::instance_belongs_to(environment, &u.status.labels)
                    && u.status.state.is_active()
                    && release.is_none_or(|r| u.status.labels.release == r)
            })
            .map(|u| InstanceMetrics {
                process_type: u.status.labels.process_type.clone(),
                index: u.status.labels.index,
                release: u.status.labels.release,
                cpu_seconds: u.stats.as_ref().map(|s| s.cpu_time.as_secs_f64()),
                memory_bytes: u.stats.as_ref().map(|s| s.rss_bytes),
                restarts: u.status.restarts,
            })
            .collect(),
        release,
    }
}

/// Upper bounds of the build-duration histogram, in seconds.
const BUILD_BUCKETS_SECONDS: [f64; 10] =
    [1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

/// `gilgal_build_duration_seconds`: a cumulative histogram of the builds in the store.
fn render_build_durations(out: &mut String, durations_ms: &[u64]) {
    let _ = writeln!(out, "# TYPE gilgal_build_duration_seconds histogram");
    for bound in BUILD_BUCKETS_SECONDS {
        let n = durations_ms
            .iter()
            .filter(|d| (**d as f64) / 1000.0 <= bound)
            .count();
        let _ = writeln!(
            out,
            "gilgal_build_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "gilgal_build_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        durations_ms.len()
    );
    let sum: u64 = durations_ms.iter().sum();
    let _ = writeln!(
        out,
        "gilgal_build_duration_seconds_sum {}",
        sum as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "gilgal_build_duration_seconds_count {}",
        durations_ms.len()
    );
}

/// Prometheus exposition of the whole platform: proxy traffic per route, deployments by
/// state, build durations, reconciler lag, desired and running instances per environment,
/// firing alerts, and every instance's CPU, memory and restarts. Administrators only (scrape with an
/// administrator's read-scoped API token).
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, description = "Not authenticated", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn prometheus(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<impl IntoResponse, ApiError> {
    crate::routes::admin::require_admin(&caller)?;
    let mut out = state.edge_metrics().await?.render_prometheus();
    let _ = writeln!(out, "# TYPE gilgal_deployments_total counter");
    for (deployment_state, n) in state.store().deployment_outcomes().await? {
        let _ = writeln!(
            out,
            "gilgal_deployments_total{{state=\"{}\"}} {n}",
            label(&deployment_state)
        );
    }
    render_build_durations(&mut out, &state.store().build_durations_ms().await?);
    if let Some(lag) = state.platform().reconciler_lag() {
        let _ = writeln!(out, "# TYPE gilgal_reconciler_lag_seconds gauge");
        let _ = writeln!(out, "gilgal_reconciler_lag_seconds {}", lag.as_secs_f64());
    }
    let usage = state
        .metrics()
        .instance_usage()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let environments = state.store().all_environments().await?;
    let _ = writeln!(out, "# TYPE gilgal_environment_instances gauge");
    for environment in environments.iter().filter(|e| e.live_release.is_some()) {
        let desired: u32 = environment.formation.values().sum();
        let running = usage
            .iter()
            .filter(|u| {
                gilgal_deploy::instance_belongs_to(environment, &u.status.labels)
                    && Some(u.status.labels.release) == environment.live_release
                    && u.status.state.is_active()
            })
            .count();
        let labels = format!(
            "app=\"{}\",env=\"{}\"",
            label(&environment.project_name),
            label(&environment.name)
        );
        let _ = writeln!(
            out,
            "gilgal_environment_instances{{{labels},state=\"desired\"}} {desired}"
        );
        let _ = writeln!(
            out,
            "gilgal_environment_instances{{{labels},state=\"running\"}} {running}"
        );
    }
    let _ = writeln!(out, "# TYPE gilgal_alerts_firing gauge");
    for alert in state.store().open_alerts().await? {
        if let Some(environment) = environments.iter().find(|e| e.id == alert.environment_id) {
            let _ = writeln!(
                out,
                "gilgal_alerts_firing{{app=\"{}\",env=\"{}\",rule=\"{}\"}} 1",
                label(&environment.project_name),
                label(&environment.name),
                label(&alert.kind)
            );
        }
    }
    for (name, kind) in [
        ("gilgal_instance_up", "gauge"),
        ("gilgal_instance_cpu_seconds_total", "counter"),
        ("gilgal_instance_memory_bytes", "gauge"),
        ("gilgal_instance_restarts_total", "counter"),
    ] {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for u in &usage {
            let l = &u.status.labels;
            // Labels carry ids; the exposition names projects and environments.
            let Some(environment) = environments
                .iter()
                .find(|e| gilgal_deploy::instance_belongs_to(e, l))
            else {
                continue;
            };
            let labels = format!(
                "app=\"{}\",env=\"{}\",release=\"v{}\",process=\"{}\",index=\"{}\"",
                label(&environment.project_name),
                label(&environment.name),
                l.release,
                label(&l.process_type),
                l.index
            );
            let value = match name {
                "gilgal_instance_up" => Some(if u.status.state.is_active() { 1.0 } else { 0.0 }),
                "gilgal_instance_cpu_seconds_total" => {
                    u.stats.as_ref().map(|s| s.cpu_time.as_secs_f64())
                }
                "gilgal_instance_memory_bytes" => u.stats.as_ref().map(|s| s.rss_bytes as f64),
                _ => Some(f64::from(u.status.restarts)),
            };
            if let Some(value) = value {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
}

/// Traffic (requests by status class, error rate, latency percentiles) and instance CPU and
/// memory of each of the project's environments; traffic since the edge process started (its
/// counters outlive restarts of the server).
#[utoipa::path(get, path = "/api/projects/{id}/metrics", tag = "metrics",
    params(("id" = String, Path, description = "Project id")),
    responses(
        (status = 200, description = "Per environment", body = Vec<EnvironmentMetrics>),
        (status = 404, description = "No such project", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn project_metrics(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<EnvironmentMetrics>>, ApiError> {
    let project = parse_path_id(&id, "project")?;
    caller.check_project(project, "project")?;
    crate::routes::teams::require_for_method(&state, &caller, project).await?;
    let environments = state
        .store()
        .list_environments(caller.user.id, project)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("project"),
            other => other.into(),
        })?;
    let snapshot = state.edge_metrics().await?;
    let usage = state
        .metrics()
        .instance_usage()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(
        environments
            .iter()
            .filter(|e| {
                caller
                    .check_scope(e.project_id, Some(e.id), "environment")
                    .is_ok()
            })
            .map(|e| {
                let route = state.platform().route_of(e);
                environment_figures(e, snapshot.route(&route), &usage, None)
            })
            .collect(),
    ))
}

/// The figures of the release a deployment made: the requests its instances answered
/// (including the edge's 502/504 for them), error rate and latency percentiles, and its
/// instances' CPU and memory. A deployment whose build failed has no release: all zero.
#[utoipa::path(get, path = "/api/deployments/{id}/metrics", tag = "metrics",
    params(("id" = String, Path, description = "Deployment id")),
    responses(
        (status = 200, description = "Figures", body = EnvironmentMetrics),
        (status = 404, description = "No such deployment", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn deployment_metrics(
    State(state): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<EnvironmentMetrics>, ApiError> {
    let id = parse_path_id(&id, "deployment")?;
    let record = state
        .store()
        .deployment(caller.user.id, id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("deployment"),
            other => other.into(),
        })?;
    caller.check_scope(record.project_id, Some(record.environment_id), "deployment")?;
    crate::routes::teams::require_for_method(&state, &caller, record.project_id).await?;
    let environment = state
        .store()
        .environment_by_id(record.environment_id)
        .await?;
    let snapshot = state.edge_metrics().await?;
    let usage = state
        .metrics()
        .instance_usage()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let route = state.platform().route_of(&environment);
    let release = record.release_number.unwrap_or(0);
    Ok(Json(environment_figures(
        &environment,
        snapshot.release(&route, &gilgal_deploy::release_group(release)),
        &usage,
        Some(release),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_upper_bounds() {
        let mut buckets = [0u64; 15];
        buckets[0] = 90; // ≤ first bound
        buckets[5] = 9;
        buckets[14] = 1; // +Inf
        assert_eq!(quantile(&buckets, 0.5), Some(LATENCY_BUCKETS_SECONDS[0]));
        assert_eq!(quantile(&buckets, 0.95), Some(LATENCY_BUCKETS_SECONDS[5]));
        assert_eq!(quantile(&buckets, 1.0), Some(f64::INFINITY));
        assert_eq!(quantile(&[0; 15], 0.5), None);
    }

    #[test]
    fn build_durations_are_a_cumulative_histogram() {
        let mut out = String::new();
        render_build_durations(&mut out, &[800, 4_000, 45_000]);
        assert!(
            out.contains("gilgal_build_duration_seconds_bucket{le=\"1\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("gilgal_build_duration_seconds_bucket{le=\"5\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("gilgal_build_duration_seconds_bucket{le=\"60\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("gilgal_build_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("gilgal_build_duration_seconds_sum 49.8\n"),
            "{out}"
        );
        assert!(
            out.contains("gilgal_build_duration_seconds_count 3\n"),
            "{out}"
        );
    }
}
