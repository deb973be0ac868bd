//! Tenancy boundaries, attacked as a hostile tenant would: a project moved into a team by a
//! member later demoted or removed, API tokens bound to one project, log follow streams that
//! must end when access does, the anonymous webhook receiver, and JSON bodies that are not
//! objects or arrive before the caller is authorized.

use std::time::Duration;

use gilgal_testkit::{backend_tests, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{assert_error, raw};

backend_tests!(
    a_transferred_project_is_governed_by_team_roles_only,
    a_project_bound_token_reaches_only_its_project,
    follow_streams_end_with_access_and_are_capped,
    the_webhook_receiver_audits_only_signed_calls_and_has_a_budget,
    bodies_must_be_objects_and_authorization_comes_first,
    a_viewer_is_refused_before_any_body_is_judged,
);

/// A team `name` owned by `owner`, with each `(token, email, role)` invited and joined.
async fn team_with(
    server: &TestServer,
    owner: &str,
    name: &str,
    members: &[(&str, &str, &str)],
) -> String {
    let (status, _, team) = raw(
        server,
        Method::POST,
        "/api/teams",
        Some(owner),
        Some(json!({ "name": name })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    let team_id = team["id"].as_str().unwrap().to_owned();
    for (token, email, role) in members {
        let (status, _, invitation) = raw(
            server,
            Method::POST,
            &format!("/api/teams/{team_id}/members"),
            Some(owner),
            Some(json!({ "email": email, "role": role })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{invitation}");
        let (status, _, joined) = raw(
            server,
            Method::POST,
            "/api/invitations/accept",
            Some(token),
            Some(json!({ "token": invitation["token"] })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{joined}");
    }
    team_id
}

/// Creates a project as `token` and returns its id and its production environment's id.
async fn project(server: &TestServer, token: &str, name: &str) -> (String, String) {
    let (status, _, project) = raw(
        server,
        Method::POST,
        "/api/projects",
        Some(token),
        Some(json!({ "name": name })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    let id = project["id"].as_str().unwrap().to_owned();
    let (_, _, environments) = raw(
        server,
        Method::GET,
        &format!("/api/projects/{id}/environments"),
        Some(token),
        None,
    )
    .await;
    let environment = environments[0]["id"].as_str().unwrap().to_owned();
    (id, environment)
}

/// A deployment of `project` in `environment`, made in the store; `settled` ones failed.
async fn deployment(
    server: &TestServer,
    project: &str,
    environment: &str,
    settled: bool,
) -> String {
    let store = server.state.store();
    let id = store
        .create_deployment(
            project.parse().unwrap(),
            environment.parse().unwrap(),
            r#"{"kind":"upload"}"#,
        )
        .await
        .unwrap();
    if settled {
        store
            .transition_deployment(
                id,
                gilgal_core::lifecycle::DeploymentState::Failed,
                Some("fixture"),
            )
            .await
            .unwrap();
    }
    id.to_string()
}

/// Mints an API token as `owner` with `grant` (scope, project_id, environment_id) and returns
/// its secret and id.
async fn api_token(server: &TestServer, owner: &str, grant: Value) -> (String, String) {
    let mut body = json!({ "name": "scoped" });
    body.as_object_mut()
        .unwrap()
        .extend(grant.as_object().unwrap().clone());
    let (status, _, created) =
        raw(server, Method::POST, "/api/tokens", Some(owner), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (
        created["token"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    )
}

async fn a_transferred_project_is_governed_by_team_roles_only(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, _root) = server.user("root@example.com").await;
    let (_, ada) = server.user("ada@example.com").await;
    let (_, gina) = server.user("gina@example.com").await;
    let (_, ivan) = server.user("ivan@example.com").await;
    let (ada, gina_id, gina, ivan) = (
        ada.access_token,
        gina.user.id.to_string(),
        gina.access_token,
        ivan.access_token,
    );
    let acme = team_with(
        &server,
        &ada,
        "acme",
        &[
            (gina.as_str(), "gina@example.com", "admin"),
            (ivan.as_str(), "ivan@example.com", "admin"),
        ],
    )
    .await;
    // Gina, an admin, makes a project and moves it into the team.
    let (project_id, env_id) = project(&server, &gina, "gadget").await;
    let dep = deployment(&server, &project_id, &env_id, true).await;
    let transfer = format!("/api/projects/{project_id}/transfer");
    let (status, _, body) = raw(
        &server,
        Method::POST,
        &transfer,
        Some(&gina),
        Some(json!({ "team_id": acme })),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    // Demoted to viewer, she is a viewer on it: no config, no rename, no transfer back out.
    let (status, _, _) = raw(
        &server,
        Method::PUT,
        &format!("/api/teams/{acme}/members/{gina_id}"),
        Some(&ada),
        Some(json!({ "role": "viewer" })),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let project_path = format!("/api/projects/{project_id}");
    let answer = raw(
        &server,
        Method::PUT,
        &project_path,
        Some(&gina),
        Some(json!({ "description": "still mine" })),
    )
    .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "role_too_low");
    let answer = raw(
        &server,
        Method::PATCH,
        &format!("/api/environments/{env_id}/config"),
        Some(&gina),
        Some(json!({ "set": { "EVIL": "1" } })),
    )
    .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "role_too_low");
    let answer = raw(
        &server,
        Method::POST,
        &transfer,
        Some(&gina),
        Some(json!({ "team_id": null })),
    )
    .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "role_too_low");
    let (status, _, _) = raw(&server, Method::GET, &project_path, Some(&gina), None).await;
    assert_eq!(status, StatusCode::OK, "a viewer still reads it");

    // Removed, she sees nothing of it at all.
    let (status, _, _) = raw(
        &server,
        Method::DELETE,
        &format!("/api/teams/{acme}/members/{gina_id}"),
        Some(&ada),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (method, path, body) in [
        (Method::GET, project_path.clone(), None),
        (
            Method::PUT,
            project_path.clone(),
            Some(json!({ "description": "x" })),
        ),
        (
            Method::POST,
            transfer.clone(),
            Some(json!({ "team_id": null })),
        ),
        (
            Method::GET,
            format!("/api/environments/{env_id}/config"),
            None,
        ),
        (Method::GET, format!("/api/deployments/{dep}"), None),
        (Method::DELETE, project_path.clone(), None),
    ] {
        let answer = raw(&server, method.clone(), &path, Some(&gina), body).await;
        assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    }
    let (_, _, listed) = raw(&server, Method::GET, "/api/projects", Some(&gina), None).await;
    assert_eq!(listed, json!([]), "her list no longer has it");
    let (status, _, _) = raw(&server, Method::GET, &project_path, Some(&ada), None).await;
    assert_eq!(status, StatusCode::OK, "the team keeps its project");

    // Between teams: owner of the source team, admin of the target.
    let ivanco = team_with(&server, &ivan, "ivanco", &[]).await;
    let answer = raw(
        &server,
        Method::POST,
        &transfer,
        Some(&ivan),
        Some(json!({ "team_id": ivanco })),
    )
    .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "role_too_low");
    let answer = raw(
        &server,
        Method::POST,
        &transfer,
        Some(&ada),
        Some(json!({ "team_id": ivanco })),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let beta = team_with(&server, &ada, "beta", &[]).await;
    let (status, _, body) = raw(
        &server,
        Method::POST,
        &transfer,
        Some(&ada),
        Some(json!({ "team_id": beta })),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let answer = raw(&server, Method::GET, &project_path, Some(&ivan), None).await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    // Out of the team again, by the team's owner, it is hers alone.
    let (status, _, body) = raw(
        &server,
        Method::POST,
        &transfer,
        Some(&ada),
        Some(json!({ "team_id": null })),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, _, body) = raw(&server, Method::GET, &project_path, Some(&ada), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = raw(&server, Method::GET, &project_path, Some(&gina), None).await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
}

async fn a_project_bound_token_reaches_only_its_project(backend: Backend) {
    let server = TestServer::start(backend).await;
    // The first account is the instance administrator: the most a stolen token could reach.
    let (_, root) = server.user("root@example.com").await;
    let (_, ada) = server.user("ada@example.com").await;
    let root = root.access_token;
    project(&server, &ada.access_token, "adas").await;
    let (alpha, alpha_production) = project(&server, &root, "alpha").await;
    let (beta, _) = project(&server, &root, "beta").await;

    let (read, _) = api_token(
        &server,
        &root,
        json!({ "scope": "read", "project_id": alpha }),
    )
    .await;
    for path in ["/api/audit", "/metrics", "/api/tokens", "/api/teams"] {
        let answer = raw(&server, Method::GET, path, Some(&read), None).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "token_scope");
    }
    let (status, _, _) = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{alpha}"),
        Some(&read),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{beta}"),
        Some(&read),
        None,
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let (_, _, listed) = raw(&server, Method::GET, "/api/projects", Some(&read), None).await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["alpha"]);

    let (full, _) = api_token(
        &server,
        &root,
        json!({ "scope": "full", "project_id": alpha }),
    )
    .await;
    for (path, body) in [
        ("/api/projects".to_owned(), json!({ "name": "sneaky" })),
        ("/api/teams".to_owned(), json!({ "name": "sneaky" })),
        (
            "/api/invitations/accept".to_owned(),
            json!({ "token": "gilgal_inv_x" }),
        ),
        (
            format!("/api/projects/{alpha}/transfer"),
            json!({ "team_id": null }),
        ),
        ("/api/tokens".to_owned(), json!({ "name": "wider" })),
    ] {
        let answer = raw(&server, Method::POST, &path, Some(&full), Some(body)).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "token_scope");
    }
    for path in ["/api/audit", "/metrics", "/api/admin/settings"] {
        let answer = raw(&server, Method::GET, path, Some(&full), None).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "token_scope");
    }
    let (status, _, body) = raw(
        &server,
        Method::PUT,
        &format!("/api/projects/{alpha}"),
        Some(&full),
        Some(json!({ "description": "changed by its token" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = raw(
        &server,
        Method::PUT,
        &format!("/api/projects/{beta}"),
        Some(&full),
        Some(json!({ "description": "x" })),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");

    // Promote reads the source environment: a token bound to staging cannot take
    // production's artifact.
    let (status, _, staging) = raw(
        &server,
        Method::POST,
        &format!("/api/projects/{alpha}/environments"),
        Some(&root),
        Some(json!({ "name": "staging" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{staging}");
    let staging = staging["id"].as_str().unwrap().to_owned();
    let (bound, _) = api_token(
        &server,
        &root,
        json!({ "scope": "full", "environment_id": staging }),
    )
    .await;
    let answer = raw(
        &server,
        Method::POST,
        &format!("/api/environments/{staging}/promote"),
        Some(&bound),
        Some(json!({ "from": "production" })),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = raw(
        &server,
        Method::GET,
        &format!("/api/environments/{alpha_production}/config"),
        Some(&bound),
        None,
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
}

/// Opens a follow stream and checks it started.
async fn follow(server: &TestServer, path: &str, token: &str) -> reqwest::Response {
    let response = server
        .http()
        .get(format!("{}{path}", server.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    response
}

/// Whether the response ends (or breaks) within `limit`.
async fn ends_within(mut response: reqwest::Response, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => return false,
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) | Ok(Err(_)) => return true,
        }
    }
}

/// Well past the re-check period, far below the 15 s heartbeat.
const ENDS_WITHIN: Duration = Duration::from_secs(8);

async fn follow_streams_end_with_access_and_are_capped(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, _root) = server.user("root@example.com").await;
    let (_, ada) = server.user("ada@example.com").await;
    let (_, gina) = server.user("gina@example.com").await;
    let (_, hal) = server.user("hal@example.com").await;
    let (ada, gina_id, gina, hal) = (
        ada.access_token,
        gina.user.id.to_string(),
        gina.access_token,
        hal.access_token,
    );
    let acme = team_with(
        &server,
        &ada,
        "acme",
        &[(gina.as_str(), "gina@example.com", "viewer")],
    )
    .await;
    let (project_id, env_id) = project(&server, &ada, "shop").await;
    let (status, _, _) = raw(
        &server,
        Method::POST,
        &format!("/api/projects/{project_id}/transfer"),
        Some(&ada),
        Some(json!({ "team_id": acme })),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let building = deployment(&server, &project_id, &env_id, false).await;
    let running = server
        .state
        .store()
        .create_run(
            env_id.parse().unwrap(),
            None,
            None,
            r#"["sleep"]"#,
            "running",
        )
        .await
        .unwrap()
        .unwrap();
    let env_logs = format!("/api/environments/{env_id}/logs?follow=true");
    let dep_logs = format!("/api/deployments/{building}/logs?follow=true");
    let run_logs = format!("/api/runs/{running}/logs?follow=true");

    // Removed from the team: every stream she follows ends.
    let streams = vec![
        follow(&server, &env_logs, &gina).await,
        follow(&server, &dep_logs, &gina).await,
        follow(&server, &run_logs, &gina).await,
    ];
    let (status, _, _) = raw(
        &server,
        Method::DELETE,
        &format!("/api/teams/{acme}/members/{gina_id}"),
        Some(&ada),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (stream, what) in streams
        .into_iter()
        .zip(["environment", "deployment", "run"])
    {
        assert!(
            ends_within(stream, ENDS_WITHIN).await,
            "{what} log stream outlived removal from the team"
        );
    }

    // A revoked API token's streams end.
    let (token, token_id) = api_token(&server, &ada, json!({ "scope": "read" })).await;
    let streams = vec![
        follow(&server, &env_logs, &token).await,
        follow(&server, &dep_logs, &token).await,
    ];
    let (status, _, _) = raw(
        &server,
        Method::DELETE,
        &format!("/api/tokens/{token_id}"),
        Some(&ada),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for stream in streams {
        assert!(
            ends_within(stream, ENDS_WITHIN).await,
            "a stream outlived its revoked token"
        );
    }

    // The cap: eight at once per user, the ninth is refused until one ends.
    let mut held = Vec::new();
    for _ in 0..7 {
        held.push(follow(&server, &env_logs, &ada).await);
    }
    let run_stream = follow(&server, &run_logs, &ada).await;
    let answer = raw(&server, Method::GET, &env_logs, Some(&hal), None).await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = raw(&server, Method::GET, &env_logs, Some(&ada), None).await;
    assert_error(&answer, StatusCode::TOO_MANY_REQUESTS, "too_many_streams");
    // Reading without following is not capped.
    let (status, _, _) = raw(
        &server,
        Method::GET,
        &format!("/api/environments/{env_id}/logs"),
        Some(&ada),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    server
        .state
        .store()
        .finish_run(running, "succeeded", Some(0), None)
        .await
        .unwrap();
    assert!(ends_within(run_stream, ENDS_WITHIN).await, "the run ended");
    let again = follow(&server, &env_logs, &ada).await;
    held.push(again);

    // Logging out ends the session's streams.
    let (status, _, _) = raw(&server, Method::POST, "/api/auth/logout", Some(&ada), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for stream in held {
        assert!(
            ends_within(stream, ENDS_WITHIN).await,
            "a stream outlived logout"
        );
    }
}

async fn the_webhook_receiver_audits_only_signed_calls_and_has_a_budget(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        gilgal_api::ApiConfig {
            requests_per_second: 1,
            ..Default::default()
        },
    )
    .await;
    let (_, root) = server.user("root@example.com").await;
    let (root_id, root) = (root.user.id, root.access_token);
    let (project_id, env_id) = project(&server, &root, "site").await;
    let webhook_id = uuid::Uuid::new_v4();
    let sealed = server
        .state
        .platform()
        .vault()
        .seal(
            env_id.parse().unwrap(),
            &format!("webhook:{webhook_id}"),
            "fixture-secret",
        )
        .await
        .unwrap();
    server
        .state
        .store()
        .create_webhook(&gilgal_store::NewWebhook {
            id: webhook_id,
            project_id: project_id.parse().unwrap(),
            environment_id: env_id.parse().unwrap(),
            provider: "github",
            repo_url: "https://example.com/site.git",
            branch: "main",
            secret_sealed: &sealed,
            git_credential_sealed: None,
            created_by: root_id,
        })
        .await
        .unwrap();
    // A signed ping is a credential: audited.
    let body = br#"{"zen":"hi"}"#;
    let signed = crate::finish(
        server
            .http()
            .post(format!("{}/api/webhooks/{webhook_id}/deliver", server.url))
            .header("content-type", "application/json")
            .header("x-github-event", "ping")
            .header("x-github-delivery", "d-1")
            .header(
                "x-hub-signature-256",
                gilgal_webhooks::sign(b"fixture-secret", body),
            )
            .body(body.to_vec()),
    )
    .await;
    assert_eq!(signed.0, StatusCode::OK, "{:?}", signed.2);
    // Anonymous noise: unknown ids and unsigned calls write nothing, and run out of budget.
    let mut refused = 0;
    for n in 0..14 {
        let target = if n % 2 == 0 {
            uuid::Uuid::new_v4()
        } else {
            webhook_id
        };
        let answer = raw(
            &server,
            Method::POST,
            &format!("/api/webhooks/{target}/deliver"),
            None,
            Some(json!({})),
        )
        .await;
        if answer.0 == StatusCode::TOO_MANY_REQUESTS {
            assert_error(&answer, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
            refused += 1;
        } else {
            assert!(
                [StatusCode::NOT_FOUND, StatusCode::UNAUTHORIZED].contains(&answer.0),
                "{answer:?}"
            );
        }
    }
    assert!(refused > 0, "the receiver has a request budget");
    let (status, _, rows) = raw(
        &server,
        Method::GET,
        "/api/audit?action=deliver",
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    let rows = rows.as_array().unwrap();
    assert_eq!(
        rows.len(),
        1,
        "only the signed delivery is audited: {rows:?}"
    );
    assert_eq!(rows[0]["credential"], format!("webhook:{webhook_id}"));
    assert_eq!(rows[0]["status"], 200);
}

async fn bodies_must_be_objects_and_authorization_comes_first(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, root) = server.user("root@example.com").await;
    let (_, ada) = server.user("ada@example.com").await;
    let (_, bob) = server.user("bob@example.com").await;
    let (root, ada, bob_id, bob) = (
        root.access_token,
        ada.access_token,
        bob.user.id.to_string(),
        bob.access_token,
    );
    let (project_id, env_id) = project(&server, &ada, "shop").await;
    let project_path = format!("/api/projects/{project_id}");

    // An array is not an object, even if serde would read it as one.
    let answer = raw(
        &server,
        Method::PUT,
        &project_path,
        Some(&ada),
        Some(json!(["x", "y"])),
    )
    .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let (_, _, unchanged) = raw(&server, Method::GET, &project_path, Some(&ada), None).await;
    assert_eq!(unchanged["name"], "shop");
    let dep = deployment(&server, &project_id, &env_id, true).await;
    let answer = raw(
        &server,
        Method::POST,
        &format!("/api/deployments/{dep}/redeploy"),
        Some(&ada),
        Some(json!([])),
    )
    .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    for scalar in [json!("x"), json!(1), json!(null)] {
        let answer = raw(
            &server,
            Method::POST,
            "/api/teams",
            Some(&ada),
            Some(scalar),
        )
        .await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
    // Not JSON at all is still a 400.
    let answer = crate::finish(
        server
            .http()
            .put(format!("{}{project_path}", server.url))
            .bearer_auth(&ada)
            .header("content-type", "application/json")
            .body("{\"name\": "),
    )
    .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, "malformed_json");

    // A type error in valid JSON is a 422; a viewer is refused before the body is judged.
    let team = team_with(
        &server,
        &ada,
        "acme",
        &[(bob.as_str(), "bob@example.com", "viewer")],
    )
    .await;
    let answer = raw(
        &server,
        Method::PUT,
        &format!("/api/teams/{team}/members/{bob_id}"),
        Some(&ada),
        Some(json!({ "role": {} })),
    )
    .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    for (method, path) in [
        (Method::PUT, format!("/api/teams/{team}/members/{bob_id}")),
        (Method::POST, format!("/api/teams/{team}/members")),
    ] {
        let answer = raw(
            &server,
            method,
            &path,
            Some(&bob),
            Some(json!({ "role": {} })),
        )
        .await;
        assert_error(&answer, StatusCode::FORBIDDEN, "role_too_low");
    }
    let answer = raw(
        &server,
        Method::POST,
        &format!("{project_path}/transfer"),
        Some(&bob),
        Some(json!([])),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");

    // A non-administrator learns nothing about the admin bodies.
    for (path, body) in [
        ("/api/admin/settings", json!({})),
        ("/api/admin/settings", json!([])),
        ("/api/admin/certificates/shop.example.com", json!({})),
    ] {
        let answer = raw(&server, Method::PUT, path, Some(&ada), Some(body)).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "admin_only");
    }
    for body in [
        json!({}),
        json!([true]),
        json!({ "registration_open": "yes" }),
    ] {
        let answer = raw(
            &server,
            Method::PUT,
            "/api/admin/settings",
            Some(&root),
            Some(body),
        )
        .await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
}

/// On every project route that changes something, a viewer of the project is refused (403)
/// before its body is read: a body that is not even an object says nothing about the rules.
async fn a_viewer_is_refused_before_any_body_is_judged(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, ada) = server.user("ada@example.com").await;
    let (_, bob) = server.user("bob@example.com").await;
    let (ada, bob) = (ada.access_token, bob.access_token);
    let team = team_with(
        &server,
        &ada,
        "acme",
        &[(bob.as_str(), "bob@example.com", "viewer")],
    )
    .await;
    let (project_id, env_id) = project(&server, &ada, "shop").await;
    let (status, _, _) = raw(
        &server,
        Method::POST,
        &format!("/api/projects/{project_id}/transfer"),
        Some(&ada),
        Some(json!({ "team_id": team })),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let env = format!("/api/environments/{env_id}");
    for (method, path) in [
        (Method::PUT, format!("/api/projects/{project_id}")),
        (
            Method::POST,
            format!("/api/projects/{project_id}/environments"),
        ),
        (Method::PUT, env.clone()),
        (Method::PATCH, format!("{env}/config")),
        (Method::POST, format!("{env}/rollback")),
        (Method::POST, format!("{env}/promote")),
        (Method::PUT, format!("{env}/formation")),
        (Method::POST, format!("{env}/runs")),
        (Method::POST, format!("{env}/cron")),
        (Method::POST, format!("{env}/domains")),
        (Method::POST, format!("{env}/addons")),
        (Method::PUT, format!("{env}/alerts/rules/error_rate")),
        (Method::POST, format!("{env}/alerts/channels")),
    ] {
        let answer = raw(&server, method.clone(), &path, Some(&bob), Some(json!([]))).await;
        assert_eq!(
            answer.0,
            StatusCode::FORBIDDEN,
            "{method} {path} judged the body before the role: {:?}",
            answer.2
        );
    }
}
