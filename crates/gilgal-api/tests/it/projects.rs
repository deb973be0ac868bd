//! `/api/projects`.

use gilgal_testkit::{backend_tests, Backend, TestServer};
use gilgal_types::{CreateProjectRequest, UpdateProjectRequest};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{assert_error, raw};

backend_tests!(
    project_crud,
    project_validation,
    other_users_projects_are_invisible,
    renames_never_take_another_projects_hostname
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

/// A rename changes every hostname of a project (`{name}` and `{name}-{env}`): none may take
/// another project's, whoever owns it, and of two concurrent claims of one hostname only
/// one succeeds.
async fn renames_never_take_another_projects_hostname(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, a) = server.user("a@example.com").await;
    let (_, b) = server.user("b@example.com").await;
    let create = |token: String, name: &'static str| {
        let server = &server;
        async move {
            let (status, _, body) = raw(
                server,
                Method::POST,
                "/api/projects",
                Some(&token),
                Some(json!({"name": name})),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body["id"].as_str().unwrap().to_owned()
        }
    };
    let beta = create(a.access_token.clone(), "beta").await;
    let staging = raw(
        &server,
        Method::POST,
        &format!("/api/projects/{beta}/environments"),
        Some(&a.access_token),
        Some(json!({"name": "staging"})),
    )
    .await;
    assert_eq!(staging.0, StatusCode::CREATED, "{}", staging.2);
    let rename = |token: String, id: String, name: &'static str| {
        let server = &server;
        async move {
            raw(
                server,
                Method::PUT,
                &format!("/api/projects/{id}"),
                Some(&token),
                Some(json!({"name": name})),
            )
            .await
        }
    };

    // B's project may not be renamed onto A's staging hostname (beta-staging.…).
    let other = create(b.access_token.clone(), "other").await;
    let taken = rename(b.access_token.clone(), other.clone(), "beta-staging").await;
    assert_error(&taken, StatusCode::CONFLICT, "name_taken");
    // Nor may A's project be renamed so that its staging hostname is B's project's.
    let _ = create(b.access_token.clone(), "gamma-staging").await;
    let taken = rename(a.access_token.clone(), beta.clone(), "gamma").await;
    assert_error(&taken, StatusCode::CONFLICT, "name_taken");
    let unchanged = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{beta}"),
        Some(&a.access_token),
        None,
    )
    .await;
    assert_eq!(unchanged.2["name"], "beta");
    // An environment of B's may not take it either.
    let env = raw(
        &server,
        Method::POST,
        &format!("/api/projects/{other}/environments"),
        Some(&b.access_token),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(env.0, StatusCode::CREATED, "{}", env.2);

    // Two concurrent claims: A renames `beta` to `delta` (claiming `delta-staging`) while B
    // renames `other` to `delta-staging`; exactly one wins, every time.
    for round in 0..5 {
        let (a_name, b_name): (&'static str, &'static str) = match round {
            0 => ("delta", "delta-staging"),
            1 => ("eps", "eps-staging"),
            2 => ("zeta", "zeta-staging"),
            3 => ("eta", "eta-staging"),
            _ => ("theta", "theta-staging"),
        };
        let (first, second) = tokio::join!(
            rename(a.access_token.clone(), beta.clone(), a_name),
            rename(b.access_token.clone(), other.clone(), b_name),
        );
        let won = [&first, &second]
            .iter()
            .filter(|r| r.0 == StatusCode::OK)
            .count();
        assert_eq!(won, 1, "round {round}: {} / {}", first.2, second.2);
        // Back to where the round started.
        if first.0 == StatusCode::OK {
            assert_eq!(
                rename(a.access_token.clone(), beta.clone(), "beta").await.0,
                StatusCode::OK
            );
        } else {
            assert_eq!(
                rename(b.access_token.clone(), other.clone(), "other")
                    .await
                    .0,
                StatusCode::OK
            );
        }
    }
}
