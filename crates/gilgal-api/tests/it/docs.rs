//! Health endpoints, OpenAPI document, docs page and fallbacks.

use gilgal_testkit::{backend_tests, Backend, TestServer};
use reqwest::{Method, StatusCode};

use crate::{assert_error, raw};

backend_tests!(health_ready_openapi_and_fallbacks);

async fn health_ready_openapi_and_fallbacks(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, _, body) = raw(&server, Method::GET, "/health", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, _, body) = raw(&server, Method::GET, "/ready", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );

    let (status, _, spec) = raw(&server, Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/api/auth/register", "post"),
        ("/api/auth/login", "post"),
        ("/api/auth/me", "get"),
        ("/api/auth/refresh", "post"),
        ("/api/auth/logout", "post"),
        ("/api/projects", "get"),
        ("/api/projects", "post"),
        ("/api/projects/{id}", "get"),
        ("/api/projects/{id}", "put"),
        ("/api/projects/{id}", "delete"),
        ("/api/tokens", "post"),
        ("/api/tokens", "get"),
        ("/api/tokens/{id}", "delete"),
    ] {
        assert!(
            spec["paths"][path][method].is_object(),
            "{method} {path} missing from OpenAPI"
        );
    }
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());

    let page = server
        .http()
        .get(format!("{}/api/docs/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "docs page is Swagger UI");
    assert!(
        !html.contains("://cdn") && !html.contains("unpkg.com"),
        "docs page needs no CDN"
    );
    let bundle = server
        .http()
        .get(format!("{}/api/docs/swagger-ui-bundle.js", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK, "assets are served locally");

    assert_error(
        &raw(&server, Method::GET, "/api/nope", None, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &raw(&server, Method::PATCH, "/api/projects", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}
