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

/// The document states what every operation can answer and where its parameters go: each
/// operation behind a credential documents 401, 403 and 429; each with a JSON body 400, 413,
/// 415 and 422; each path parameter is in the path template, and each query filter in the
/// query (they were once documented as required path parameters).
#[tokio::test]
async fn every_operation_documents_its_shared_statuses_and_parameter_places() {
    let server = TestServer::start(Backend::Sqlite).await;
    let (status, _, spec) = raw(&server, Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = spec["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            let responses = operation["responses"].as_object().expect("responses");
            let documents = |code: &str| responses.contains_key(code);
            let label = format!("{} {path}", method.to_uppercase());
            if operation["security"]
                .as_array()
                .is_some_and(|s| !s.is_empty())
            {
                for code in ["401", "403", "429"] {
                    assert!(documents(code), "{label} does not document {code}");
                }
            }
            let json_body = operation["requestBody"]["content"]
                .as_object()
                .is_some_and(|c| c.contains_key("application/json"));
            if json_body {
                for code in ["400", "413", "415", "422"] {
                    assert!(documents(code), "{label} does not document {code}");
                }
            }
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().expect("parameter name");
                if parameter["in"] == "path" {
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{label} documents `{name}` as a path parameter; it is not in the path"
                    );
                    assert!(documents("404"), "{label} does not document 404");
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 80, "only {checked} operations in the document");
    // The rules the server enforces are in the schemas: names, limits, enums.
    let schemas = &spec["components"]["schemas"];
    assert!(schemas["CreateTeamRequest"]["properties"]["name"]["pattern"].is_string());
    assert_eq!(
        schemas["RegisterRequest"]["properties"]["password"]["minLength"],
        10
    );
    let audit = &paths["/api/audit"]["get"]["parameters"];
    let limit = audit
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "limit"))
        .expect("audit limit");
    assert_eq!(
        (limit["in"].as_str(), &limit["schema"]["maximum"]),
        (Some("query"), &serde_json::json!(1000))
    );
}
