//! `/api/projects`.

use gilgal_testkit::{backend_tests, Backend, TestServer};
use gilgal_types::{CreateProjectRequest, UpdateProjectRequest};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{assert_error, raw};

backend_tests!(
    project_crud,
    project_validation,
    other_users_projects_are_invisible
);

async fn project_crud(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (client, pair) = server.user("ada@example.com").await;
    let created = raw(
        &server,
        Method::POST,
        "/api/projects",
        Some(&pair.access_token),
        Some(json!({"name": "billing-api", "description": "invoices"})),
    )
    .await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.2);
    assert_eq!(created.2["name"], "billing-api");
    assert_eq!(created.2["owner_id"], pair.user.id.to_string());
    let id: uuid::Uuid = created.2["id"].as_str().unwrap().parse().unwrap();

    client
        .create_project(&CreateProjectRequest {
            name: "alpha".parse().unwrap(),
            description: String::new(),
        })
        .await
        .unwrap();
    let names: Vec<String> = client
        .list_projects()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name.to_string())
        .collect();
    assert_eq!(names, ["alpha", "billing-api"]);

    let fetched = client.project(id).await.unwrap();
    assert_eq!(fetched.description, "invoices");
    let updated = client
        .update_project(
            id,
            &UpdateProjectRequest {
                name: Some("billing".parse().unwrap()),
                description: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (updated.name.as_str(), updated.description.as_str()),
        ("billing", "invoices")
    );
    assert!(updated.updated_at >= fetched.updated_at);

    let duplicate = raw(
        &server,
        Method::POST,
        "/api/projects",
        Some(&pair.access_token),
        Some(json!({"name": "alpha"})),
    )
    .await;
    assert_error(&duplicate, StatusCode::CONFLICT, "name_taken");
    let rename_clash = raw(
        &server,
        Method::PUT,
        &format!("/api/projects/{id}"),
        Some(&pair.access_token),
        Some(json!({"name": "alpha"})),
    )
    .await;
    assert_error(&rename_clash, StatusCode::CONFLICT, "name_taken");

    client.delete_project(id).await.unwrap();
    let gone = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{id}"),
        Some(&pair.access_token),
        None,
    )
    .await;
    assert_error(&gone, StatusCode::NOT_FOUND, "not_found");
    let again = raw(
        &server,
        Method::DELETE,
        &format!("/api/projects/{id}"),
        Some(&pair.access_token),
        None,
    )
    .await;
    assert_error(&again, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &raw(&server, Method::GET, "/api/projects", None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
}

async fn project_validation(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, pair) = server.user("ada@example.com").await;
    for name in [
        "",
        "Upper",
        "under_score",
        "-lead",
        "trail-",
        "dot.ted",
        "semi;colon",
        "$(touch x)",
        &"a".repeat(64),
    ] {
        let answer = raw(
            &server,
            Method::POST,
            "/api/projects",
            Some(&pair.access_token),
            Some(json!({"name": name})),
        )
        .await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
    let long = raw(
        &server,
        Method::POST,
        "/api/projects",
        Some(&pair.access_token),
        Some(json!({"name": "ok", "description": "d".repeat(1001)})),
    )
    .await;
    assert_error(&long, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let wrong_type = raw(
        &server,
        Method::POST,
        "/api/projects",
        Some(&pair.access_token),
        Some(json!({"name": 5})),
    )
    .await;
    assert_error(
        &wrong_type,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    let malformed = crate::finish(
        server
            .http()
            .post(format!("{}/api/projects", server.url))
            .bearer_auth(&pair.access_token)
            .header("content-type", "application/json")
            .body("{"),
    )
    .await;
    assert_error(&malformed, StatusCode::BAD_REQUEST, "malformed_json");
    assert!(
        server
            .state
            .store()
            .list_projects(pair.user.id)
            .await
            .unwrap()
            .is_empty(),
        "nothing created"
    );
}

async fn other_users_projects_are_invisible(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (ada, _) = server.user("ada@example.com").await;
    let (_, mallory) = server.user("mallory@example.com").await;
    let project = ada
        .create_project(&CreateProjectRequest {
            name: "secret".parse().unwrap(),
            description: String::new(),
        })
        .await
        .unwrap();
    let path = format!("/api/projects/{}", project.id);
    let missing = format!("/api/projects/{}", uuid::Uuid::new_v4());
    for (method, body) in [
        (Method::GET, None),
        (Method::PUT, Some(json!({"description": "pwned"}))),
        (Method::DELETE, None),
    ] {
        let theirs = raw(
            &server,
            method.clone(),
            &path,
            Some(&mallory.access_token),
            body.clone(),
        )
        .await;
        assert_error(&theirs, StatusCode::NOT_FOUND, "not_found");
        let nobody = raw(&server, method, &missing, Some(&mallory.access_token), body).await;
        assert_eq!(
            theirs.2["error"]["message"], nobody.2["error"]["message"],
            "indistinguishable from a missing id"
        );
    }
    let (_, _, list) = raw(
        &server,
        Method::GET,
        "/api/projects",
        Some(&mallory.access_token),
        None,
    )
    .await;
    assert_eq!(list, json!([]));
    let unchanged = ada.project(project.id).await.unwrap();
    assert_eq!(unchanged.description, "");
}
