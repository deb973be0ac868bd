//! The OpenAPI 3 document (generated from handler annotations) and its offline docs page.

use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Gilgal API", description = "Control plane of the Gilgal self-hosted PaaS."),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts, sessions and logout"),
        (name = "tokens", description = "Personal API tokens for the CLI and CI"),
        (name = "projects", description = "Projects (apps)"),
        (name = "deployments", description = "Deployments and their logs"),
        (name = "logs", description = "Environment logs: search and follow"),
        (name = "alerts", description = "Alert rules, notification channels and alerts"),
        (name = "admin", description = "Instance administration"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token from /api/auth/login, or a personal API token",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document the handler annotations are merged into.
pub fn base_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `/api/openapi.json` and the Swagger UI at `/api/docs`, served from assets compiled into
/// the binary (no CDN: the page works on a machine without internet).
pub fn docs_routes(spec: utoipa::openapi::OpenApi) -> Router<AppState> {
    // The docs page runs Swagger UI's own (compiled-in) scripts and styles; nothing remote.
    Router::from(SwaggerUi::new("/api/docs").url("/api/openapi.json", spec)).layer(
        tower_http::set_header::SetResponseHeaderLayer::overriding(
            axum::http::header::CONTENT_SECURITY_POLICY,
            axum::http::HeaderValue::from_static(
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ),
    )
}
