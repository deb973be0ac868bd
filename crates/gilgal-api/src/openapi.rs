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

/// Documents, on every operation, the error statuses that the layers every request crosses
/// can answer, so the document says what the server does (schemathesis checks it):
///
/// - a bearer credential: 401 (missing, invalid, expired or revoked), 403 (a scoped token's
///   scope), 429 (the credential's request budget);
/// - a JSON body: 400 (not JSON), 413 (over the body limit), 415 (not `application/json`),
///   422 (valid JSON of the wrong shape, or a value a rule refuses);
/// - path parameters: 404 (an id that does not exist, or that the caller cannot see), and
///   422 where one has a pattern or a set of values;
/// - query parameters: 400 (not parseable) and 422 (a value a rule refuses).
///
/// A handler's own annotation wins where it documents the same status.
pub fn document_shared_responses(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::PathItem;

    for item in spec.paths.paths.values_mut() {
        let PathItem {
            get,
            put,
            post,
            delete,
            patch,
            head,
            options,
            trace,
            ..
        } = item;
        for operation in [get, put, post, delete, patch, head, options, trace]
            .into_iter()
            .flatten()
        {
            let secured = operation
                .security
                .as_ref()
                .is_some_and(|requirements| !requirements.is_empty());
            let json_body = operation.request_body.as_ref().is_some_and(|body| {
                body.content
                    .keys()
                    .any(|media| media.starts_with("application/json"))
            });
            let parameters = operation.parameters.as_deref().unwrap_or_default();
            let in_path = parameters
                .iter()
                .any(|p| matches!(p.parameter_in, ParameterIn::Path));
            let path_rule = parameters.iter().any(|p| {
                matches!(p.parameter_in, ParameterIn::Path)
                    && matches!(
                        &p.schema,
                        Some(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(o)))
                            if o.pattern.is_some() || o.enum_values.is_some()
                    )
            });
            let in_query = parameters
                .iter()
                .any(|p| matches!(p.parameter_in, ParameterIn::Query));
            let mut shared: Vec<(&str, &str)> = Vec::new();
            if secured {
                shared.extend([
                    (
                        "401",
                        "Not authenticated: the token is missing, invalid, expired or revoked",
                    ),
                    (
                        "403",
                        "Not allowed: your role, or this API token's scope, does not cover it",
                    ),
                    (
                        "429",
                        "Too many requests with this credential; retry after `Retry-After` seconds",
                    ),
                ]);
            }
            if json_body {
                shared.extend([
                    ("400", "The body is not valid JSON"),
                    ("413", "The body is larger than this endpoint accepts"),
                    (
                        "415",
                        "The body must be sent with `Content-Type: application/json`",
                    ),
                    (
                        "422",
                        "The body is valid JSON but breaks a rule; the message names it",
                    ),
                ]);
            }
            if in_path {
                shared.push(("404", "No such resource for this caller"));
            }
            if path_rule {
                shared.push((
                    "422",
                    "A path parameter breaks its rule; the message names it",
                ));
            }
            if in_query {
                shared.extend([
                    ("400", "A query parameter cannot be parsed"),
                    (
                        "422",
                        "A query parameter breaks a rule; the message names it",
                    ),
                ]);
            }
            for (status, description) in shared {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| error_response(description));
            }
        }
    }
}

/// Rules of request bodies that span fields, which handler annotations cannot state: a
/// config change (`ConfigUpdate`) must set, set as secret or unset at least one variable.
pub fn document_body_rules(spec: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder};
    let Some(components) = spec.components.as_mut() else {
        return;
    };
    let Some(update) = components.schemas.remove("ConfigUpdate") else {
        return;
    };
    let non_empty = |field: &str| -> utoipa::openapi::Schema {
        let constraint: utoipa::openapi::Schema = if field == "unset" {
            ArrayBuilder::new().min_items(Some(1)).build().into()
        } else {
            ObjectBuilder::new().min_properties(Some(1)).build().into()
        };
        ObjectBuilder::new()
            .required(field)
            .property(field, constraint)
            .build()
            .into()
    };
    let changes_something = AnyOfBuilder::new()
        .item(non_empty("set"))
        .item(non_empty("set_secret"))
        .item(non_empty("unset"))
        .build();
    let changes_something = utoipa::openapi::Schema::AnyOf(changes_something);
    components.schemas.insert(
        "ConfigUpdate".to_owned(),
        utoipa::openapi::RefOr::T(utoipa::openapi::Schema::AllOf(
            AllOfBuilder::new()
                .item(update)
                .item(changes_something)
                .build(),
        )),
    );
}

/// A response with the one error body.
fn error_response(
    description: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::response::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}
