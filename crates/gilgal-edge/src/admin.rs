//! The edge's admin API: what the control plane may ask of the edge process, served on a
//! Unix socket only root can open. Every change is validated by the proxy before it is
//! swapped in, so a refused change leaves the edge serving what it served.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use gilgal_proxy::{
    AccessLogEntry, CertificatePem, DrainOutcome, MetricsSnapshot, ProxyHandle, ProxySettings,
    RouteDiff, RouteSpec,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Version of the admin API; a server adopts only an edge that speaks its version (an older
/// edge is stopped gracefully and replaced).
pub const EDGE_PROTOCOL: u32 = 1;

/// Access log entries buffered for the control plane; beyond it they are dropped and
/// counted by the proxy, never waited for.
const ACCESS_BUFFER: usize = 16 * 1024;

/// Largest admin request (the full certificate set travels in one).
const MAX_ADMIN_BODY: usize = 64 * 1024 * 1024;

/// What an edge process says about itself: how to adopt it or whether to replace it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeStatus {
    /// Admin API version ([`EDGE_PROTOCOL`]).
    pub protocol: u32,
    /// The edge process's id (to wait for its exit after a shutdown).
    pub pid: u32,
    /// Where it serves plain HTTP.
    pub proxy_addr: SocketAddr,
    /// Where it serves HTTPS, if it does.
    pub tls_addr: Option<SocketAddr>,
    /// The settings its proxy runs with.
    pub settings: ProxySettings,
    /// Which executable it runs ([`crate::binary_identity`]): a server upgraded to another
    /// binary replaces the edge instead of adopting the old proxy code.
    #[serde(default)]
    pub binary: String,
}

/// A drain request: wait until the backend has no request in flight, up to the deadline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DrainRequest {
    pub backend: String,
    pub deadline_ms: u64,
}

#[derive(Clone)]
struct Admin {
    proxy: ProxyHandle,
    status: EdgeStatus,
    stop: CancellationToken,
    open: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

/// Serves the admin API on `listener` until `stop` is cancelled; `POST /v1/shutdown`
/// cancels it too (the edge then stops accepting and drains). `POST /v1/open` sets `open`
/// (the edge's listeners start accepting).
pub async fn serve_admin(
    listener: tokio::net::UnixListener,
    proxy: ProxyHandle,
    status: EdgeStatus,
    stop: CancellationToken,
    open: tokio::sync::watch::Sender<bool>,
) -> std::io::Result<()> {
    let admin = Admin {
        proxy,
        status,
        stop: stop.clone(),
        open: std::sync::Arc::new(open),
    };
    let app = Router::new()
        .route("/v1/status", get(status_handler))
        .route("/v1/routes", get(routes).post(apply))
        .route("/v1/certificates", put(certificates))
        .route("/v1/drain", post(drain))
        .route("/v1/metrics", get(metrics))
        .route("/v1/access", get(access))
        .route("/v1/open", post(open_listeners))
        .route("/v1/shutdown", post(shutdown))
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY))
        .with_state(admin);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn status_handler(State(admin): State<Admin>) -> Json<EdgeStatus> {
    Json(admin.status)
}

async fn routes(State(admin): State<Admin>) -> Json<Vec<RouteSpec>> {
    Json(admin.proxy.routes())
}

fn refused(error: impl std::fmt::Display) -> Response {
    (StatusCode::CONFLICT, error.to_string()).into_response()
}

async fn apply(State(admin): State<Admin>, Json(diff): Json<RouteDiff>) -> Response {
    match admin.proxy.apply(diff) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refused(e),
    }
}

async fn certificates(
    State(admin): State<Admin>,
    Json(certificates): Json<Vec<CertificatePem>>,
) -> Response {
    match admin.proxy.set_certificates(certificates) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refused(e),
    }
}

async fn drain(
    State(admin): State<Admin>,
    Json(request): Json<DrainRequest>,
) -> Json<DrainOutcome> {
    Json(
        admin
            .proxy
            .wait_drained(&request.backend, Duration::from_millis(request.deadline_ms))
            .await,
    )
}

async fn metrics(State(admin): State<Admin>) -> Json<MetricsSnapshot> {
    Json(admin.proxy.metrics())
}

/// The access log as newline-delimited JSON, for as long as the caller reads it. A new
/// reader replaces the previous one (its stream ends), so one control plane receives each
/// entry once.
async fn access(State(admin): State<Admin>) -> Response {
    let (sink, entries) = tokio::sync::mpsc::channel::<AccessLogEntry>(ACCESS_BUFFER);
    admin.proxy.set_access_log(sink);
    let lines = futures_util::stream::unfold(entries, |mut entries| async move {
        let entry = entries.recv().await?;
        let mut line = serde_json::to_vec(&entry).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(line), entries))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn open_listeners(State(admin): State<Admin>) -> StatusCode {
    admin.open.send_replace(true);
    StatusCode::NO_CONTENT
}

async fn shutdown(State(admin): State<Admin>) -> StatusCode {
    tracing::info!("shutdown requested over the admin API");
    admin.stop.cancel();
    StatusCode::ACCEPTED
}
