//! Gilgal's control-plane HTTP API.
//!
//! [`router`] builds the whole axum `Router` from an [`AppState`], so tests can drive it
//! without a socket and [`serve`] can run it on any listener with any shutdown signal.
//! Every failure leaves as one JSON shape (`{"error":{"code","message","request_id"}}`, see
//! [`ApiError`]); every request gets an id that is logged, echoed in `X-Request-Id` and quoted
//! in error bodies. The OpenAPI document is generated from the handlers' annotations and served
//! at `/api/openapi.json`, with a self-contained docs page at `/api/docs`.

mod audit;
mod error;
mod extract;
mod follow;
mod limits;
mod openapi;
mod request_id;
mod routes;
mod state;
mod wire;

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;
pub use extract::{AuthUser, Credential};
pub use state::{ApiConfig, AppState};

/// The complete API router over `state`.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let (api, spec) = OpenApiRouter::with_openapi(openapi::base_document())
        .merge(routes::auth::routes())
        .merge(routes::tokens::routes())
        .merge(routes::projects::routes())
        .merge(routes::admin::routes())
        .merge(routes::certificates::routes())
        .merge(routes::deployments::routes())
        .merge(routes::environments::routes())
        .merge(routes::logs::routes())
        .merge(routes::health::routes())
        .merge(routes::audit::routes())
        .merge(routes::teams::routes())
        .merge(routes::metrics::routes())
        .merge(routes::webhooks::routes())
        .merge(routes::addons::routes())
        .merge(routes::alerts::routes())
        .split_for_parts();
    let mut spec = spec;
    openapi::document_shared_responses(&mut spec);
    openapi::document_body_rules(&mut spec);
    let api = api.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        audit::record,
    ));
    let cors = cors_layer(&state.config.cors_origins);
    let router = api
        .merge(openapi::docs_routes(spec))
        .fallback(routes::fallback::not_found)
        .method_not_allowed_fallback(routes::fallback::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body));
    let router = security_headers(router);
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router
        .layer(axum::middleware::from_fn(request_id::assign_request_id))
        .with_state(state)
}

/// Headers every response carries unless a route set its own: no MIME sniffing, no framing,
/// no referrer leaks, nothing cached, and a content policy that allows nothing (JSON needs
/// none; the docs page sets its own).
fn security_headers(router: Router<AppState>) -> Router<AppState> {
    use axum::http::{header, HeaderValue};
    use tower_http::set_header::SetResponseHeaderLayer;
    router
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
}

/// CORS for the configured dashboard origins only (credentials travel in the Authorization
/// header, never cookies, so no `allow_credentials`).
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderValue, Method};
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if allowed.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([
                header::RETRY_AFTER,
                header::HeaderName::from_static("x-request-id"),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
///
/// HTTP/1.1 on hyper's connection builder with a timer, so a client that does not finish a
/// request head within [`ApiConfig::header_read_timeout`] (slowloris, or an idle keep-alive
/// connection) is closed, and at most [`ApiConfig::max_connections`] connections are held:
/// beyond that, new ones are closed at once. Handlers see the peer as `ConnectInfo`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::{Service as _, ServiceExt as _};

    let header_read_timeout = state.config.header_read_timeout;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(
        state.config.max_connections.max(1),
    ));
    let mut make_service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "API listener cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "API connection refused: too many connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok(service) = make_service.call(peer).await;
        let service = hyper::service::service_fn(move |request| service.clone().oneshot(request));
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "API connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
