//! Per-route traffic counters, kept in atomics so the hot path never locks.
//!
//! A route's [`RouteMetrics`] lives in the handle's registry keyed by route id and survives table
//! swaps; [`MetricsSnapshot`] is the plain copy the observability layer renders.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the latency histogram buckets; a final `+Inf` bucket is implied.
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const BUCKET_BOUNDS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Live counters for one route (or for unrouted traffic).
#[derive(Debug, Default)]
pub struct RouteMetrics {
    status_classes: [AtomicU64; 5],
    latency_buckets: [AtomicU64; 15],
    latency_sum_micros: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    open: AtomicI64,
    rate_limited: AtomicU64,
}

impl RouteMetrics {
    /// Count one answered request: its status class and time to response headers.
    pub(crate) fn record_response(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status_classes[class].fetch_add(1, Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKET_BOUNDS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(BUCKET_BOUNDS_MICROS.len());
        self.latency_buckets[bucket].fetch_add(1, Relaxed);
        self.latency_sum_micros.fetch_add(micros, Relaxed);
    }

    /// Count request body bytes received from the client.
    pub(crate) fn add_bytes_in(&self, n: u64) {
        if n > 0 {
            self.bytes_in.fetch_add(n, Relaxed);
        }
    }

    /// Count response body bytes sent to the client.
    pub(crate) fn add_bytes_out(&self, n: u64) {
        if n > 0 {
            self.bytes_out.fetch_add(n, Relaxed);
        }
    }

    /// Count one request refused by a rate limit (it is also counted as its 429).
    pub(crate) fn add_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }

    /// A request or tunnel on this route opened (+1) or closed (-1).
    pub(crate) fn add_open(&self, delta: i64) {
        self.open.fetch_add(delta, Relaxed);
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> RouteMetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Relaxed);
        RouteMetricsSnapshot {
            status_classes: std::array::from_fn(|i| load(&self.status_classes[i])),
            latency_buckets: std::array::from_fn(|i| load(&self.latency_buckets[i])),
            latency_sum_seconds: load(&self.latency_sum_micros) as f64 / 1e6,
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            open_connections: self.open.load(Relaxed).max(0) as u64,
            rate_limited: load(&self.rate_limited),
        }
    }
}

/// Plain copy of one route's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteMetricsSnapshot {
    /// Responses by status class: index 0 = 1xx ... index 4 = 5xx.
    pub status_classes: [u64; 5],
    /// Non-cumulative counts per bucket of [`LATENCY_BUCKETS_SECONDS`], the last one being `+Inf`.
    pub latency_buckets: [u64; 15],
    /// Sum of all observed latencies.
    pub latency_sum_seconds: f64,
    /// Request body bytes received.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Requests and upgraded tunnels currently open on the route.
    pub open_connections: u64,
    /// Requests refused by a rate limit (429).
    #[serde(default)]
    pub rate_limited: u64,
}

impl RouteMetricsSnapshot {
    /// Total number of answered requests.
    pub fn requests(&self) -> u64 {
        self.status_classes.iter().sum()
    }
}

/// Answers of one release (a backend group) of a route: what a canary is judged by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseMetricsSnapshot {
    /// The route id.
    pub route: String,
    /// The release (backend group) name, e.g. `v7`.
    pub release: String,
    /// Its responses and latencies (byte and connection figures stay with the route).
    pub metrics: RouteMetricsSnapshot,
}

/// Copy of every route's counters plus connection-level gauges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Per route id (the pseudo-route `"_unrouted"` holds 404s, redirects and rejections).
    pub routes: Vec<(String, RouteMetricsSnapshot)>,
    /// Per route and release: responses from that release's instances, including the 502s
    /// and 504s the edge answered for them. Each is also counted in its route's totals.
    #[serde(default)]
    pub releases: Vec<ReleaseMetricsSnapshot>,
    /// Client connections currently open on all listeners.
    pub open_client_connections: u64,
}

impl MetricsSnapshot {
    /// Counters for one route id, if it has seen traffic or exists.
    pub fn route(&self, id: &str) -> Option<&RouteMetricsSnapshot> {
        self.routes.iter().find(|(r, _)| r == id).map(|(_, m)| m)
    }

    /// Counters of `release` on route `id`, if that release has been routed.
    pub fn release(&self, id: &str, release: &str) -> Option<&RouteMetricsSnapshot> {
        self.releases
            .iter()
            .find(|r| r.route == id && r.release == release)
            .map(|r| &r.metrics)
    }

    /// Prometheus text exposition of the snapshot (for the observability endpoint).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(1024 + self.routes.len() * 1024);
        let _ = writeln!(out, "# TYPE gilgal_proxy_requests_total counter");
        for (route, m) in &self.routes {
            let route = escape_label(route);
            for (i, n) in m.status_classes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "gilgal_proxy_requests_total{{route=\"{route}\",class=\"{}xx\"}} {n}",
                    i + 1
                );
            }
        }
        let _ = writeln!(
            out,
            "# TYPE gilgal_proxy_request_duration_seconds histogram"
        );
        for (route, m) in &self.routes {
            let labels = format!("route=\"{}\"", escape_label(route));
            write_histogram(
                &mut out,
                "gilgal_proxy_request_duration_seconds",
                &labels,
                m,
            );
        }
        for (name, kind, pick) in [
            ("gilgal_proxy_bytes_in_total", "counter", 0),
            ("gilgal_proxy_bytes_out_total", "counter", 1),
            ("gilgal_proxy_open_connections", "gauge", 2),
            ("gilgal_proxy_rate_limited_total", "counter", 3),
        ] {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (route, m) in &self.routes {
                let value = [m.bytes_in, m.bytes_out, m.open_connections, m.rate_limited][pick];
                let _ = writeln!(out, "{name}{{route=\"{}\"}} {value}", escape_label(route));
            }
        }
        let _ = writeln!(out, "# TYPE gilgal_proxy_release_requests_total counter");
        for r in &self.releases {
            let (route, release) = (escape_label(&r.route), escape_label(&r.release));
            for (i, n) in r.metrics.status_classes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "gilgal_proxy_release_requests_total{{route=\"{route}\",release=\"{release}\",class=\"{}xx\"}} {n}",
                    i + 1
                );
            }
        }
        let _ = writeln!(
            out,
            "# TYPE gilgal_proxy_release_request_duration_seconds histogram"
        );
        for r in &self.releases {
            let labels = format!(
                "route=\"{}\",release=\"{}\"",
                escape_label(&r.route),
                escape_label(&r.release)
            );
            write_histogram(
                &mut out,
                "gilgal_proxy_release_request_duration_seconds",
                &labels,
                &r.metrics,
            );
        }
        let _ = writeln!(out, "# TYPE gilgal_proxy_client_connections gauge");
        let _ = writeln!(
            out,
            "gilgal_proxy_client_connections {}",
            self.open_client_connections
        );
        out
    }
}

/// One histogram's `_bucket`, `_sum` and `_count` lines for `labels` (already escaped).
fn write_histogram(out: &mut String, name: &str, labels: &str, m: &RouteMetricsSnapshot) {
    let mut cumulative = 0;
    for (i, n) in m.latency_buckets.iter().enumerate() {
        cumulative += n;
        let le = LATENCY_BUCKETS_SECONDS
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", m.latency_sum_seconds);
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
