//! Gilgal's control-plane HTTP API.
//!
//! [`router`] builds the whole axum `Router` from an [`AppState`], so tests can drive it
//! without a socket and [`serve`] can run it on any listener with any shutdown signal.
//! Every failure leaves as one JSON shape (`{"error":{"code","message","request_id"}}`, see
//! [`ApiError`]); every request gets an id that is logged, echoed in `X-Request-Id` and quoted
//! in error bodies. The OpenAPI document is generated from the handlers' annotations and served
//! at `/api/openapi.json`, with a self-contained docs page at `/api/docs`.

mod error;
mod extract;
mod openapi;
mod request_id;
mod routes;
mod state;

use std::future::Future;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;
pub use extract::{AuthUser, Credential};
pub use routes::certificates::load_certificates_into_proxy;
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
        .merge(routes::health::routes())
        .split_for_parts();
    api.merge(openapi::docs_routes(spec))
        .fallback(routes::fallback::not_found)
        .method_not_allowed_fallback(routes::fallback::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(request_id::assign_request_id))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
