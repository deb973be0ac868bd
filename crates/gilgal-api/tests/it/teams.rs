//! Teams: invitations bound to an email and single-use, the role matrix over a team project's
//! endpoints, owner protection, and transfers. A stranger gets 404 everywhere.

use gilgal_testkit::{backend_tests, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{assert_error, raw};

backend_tests!(teams_roles_and_invitations);

async fn teams_roles_and_invitations(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut tokens = std::collections::BTreeMap::new();
    let mut ids = std::collections::BTreeMap::new();
    for name in ["ada", "bob", "carol", "dave", "eve"] {
        let (_, pair) = server.user(&format!("{name}@example.com")).await;
        ids.insert(name, pair.user.id.to_string());
        tokens.insert(name, pair.access_token);
    }
    let t = |name: &str| Some(tokens[name].clone());
    let (status, _, team) = raw(
        &server,
        Method::POST,
        "/api/teams",
        t("ada").as_deref(),
        Some(json!({"name": "acme"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    assert_eq!(team["role"], "owner");
    let team_id = team["id"].as_str().unwrap().to_owned();
    let members = format!("/api/teams/{team_id}/members");

    for (name, role) in [("bob", "admin"), ("carol", "developer"), ("dave", "viewer")] {
        let (status, _, invitation) = raw(
            &server,
            Method::POST,
            &members,
            t("ada").as_deref(),
            Some(json!({"email": format!("{name}@example.com"), "role": role})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{invitation}");
        let secret = invitation["token"].as_str().unwrap().to_owned();
        // Bound to the invitee's email: eve cannot use it.
        let stolen = raw(
            &server,
            Method::POST,
            "/api/invitations/accept",
            t("eve").as_deref(),
            Some(json!({"token": secret})),
        )
        .await;
        assert_error(&stolen, StatusCode::NOT_FOUND, "not_found");
        let (status, _, joined) = raw(
            &server,
            Method::POST,
            "/api/invitations/accept",
            t(name).as_deref(),
            Some(json!({"token": secret})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{joined}");
        assert_eq!(joined["role"], role);
        // Single use.
        let again = raw(
            &server,
            Method::POST,
            "/api/invitations/accept",
            t(name).as_deref(),
            Some(json!({"token": secret})),
        )
        .await;
        assert_error(&again, StatusCode::NOT_FOUND, "not_found");
    }
    let (_, _, listed) = raw(&server, Method::GET, &members, t("dave").as_deref(), None).await;
    assert_eq!(listed.as_array().unwrap().len(), 4);
    let answer = raw(&server, Method::GET, &members, t("eve").as_deref(), None).await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    // Only owners invite owners; developers do not invite at all.
    let answer = raw(
        &server,
        Method::POST,
        &members,
        t("bob").as_deref(),
        Some(json!({"email": "x@example.com", "role": "owner"})),
    )
    .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "role_too_low");
    let answer = raw(
        &server,
        Method::POST,
        &members,
        t("carol").as_deref(),
        Some(json!({"email": "x@example.com", "role": "viewer"})),
    )
    .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "role_too_low");

    // A team project.
    let (_, _, project) = raw(
        &server,
        Method::POST,
        "/api/projects",
        t("ada").as_deref(),
        Some(json!({"name": "shop"})),
    )
    .await;
    let project_id = project["id"].as_str().unwrap().to_owned();
    let answer = raw(
        &server,
        Method::POST,
        &format!("/api/projects/{project_id}/transfer"),
        t("eve").as_deref(),
        Some(json!({"team_id": team_id})),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let (status, _, _) = raw(
        &server,
        Method::POST,
        &format!("/api/projects/{project_id}/transfer"),
        t("ada").as_deref(),
        Some(json!({"team_id": team_id})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, envs) = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{project_id}/environments"),
        t("dave").as_deref(),
        None,
    )
    .await;
    let env_id = envs[0]["id"].as_str().unwrap().to_owned();

    // The role matrix: (method, path, body, weakest role allowed).
    let calls: Vec<(Method, String, Option<Value>, &str)> = vec![
        (
            Method::GET,
            format!("/api/projects/{project_id}"),
            None,
            "viewer",
        ),
        (
            Method::GET,
            format!("/api/projects/{project_id}/environments"),
            None,
            "viewer",
        ),
        (
            Method::GET,
            format!("/api/environments/{env_id}/config"),
            None,
            "viewer",
        ),
        (
            Method::GET,
            format!("/api/environments/{env_id}/releases"),
            None,
            "viewer",
        ),
        (
            Method::GET,
            format!("/api/environments/{env_id}/runs"),
            None,
            "viewer",
        ),
        (
            Method::GET,
            format!("/api/environments/{env_id}/cron"),
            None,
            "viewer",
        ),
        (
            Method::GET,
            format!("/api/environments/{env_id}/domains"),
            None,
            "viewer",
        ),
        (
            Method::PATCH,
            format!("/api/environments/{env_id}/config"),
            Some(json!({"set": {"A": "1"}})),
            "developer",
        ),
        (
            Method::PUT,
            format!("/api/environments/{env_id}/formation"),
            Some(json!({"counts": {"web": 1}})),
            "developer",
        ),
        (
            Method::POST,
            format!("/api/environments/{env_id}/cron"),
            Some(json!({"schedule": "0 * * * *", "command": ["true"]})),
            "developer",
        ),
        (
            Method::POST,
            format!("/api/environments/{env_id}/runs"),
            Some(json!({"command": ["true"]})),
            "developer",
        ),
        (
            Method::POST,
            format!("/api/environments/{env_id}/rollback"),
            Some(json!({})),
            "developer",
        ),
        (
            Method::POST,
            format!("/api/projects/{project_id}/environments"),
            Some(json!({"name": "qa"})),
            "admin",
        ),
        (
            Method::PUT,
            format!("/api/projects/{project_id}"),
            Some(json!({"description": "x"})),
            "admin",
        ),
    ];
    let rank = |role: &str| {
        ["viewer", "developer", "admin", "owner"]
            .iter()
            .position(|r| *r == role)
            .unwrap()
    };
    for (method, path, body, weakest) in &calls {
        for (user, role) in [
            ("dave", "viewer"),
            ("carol", "developer"),
            ("bob", "admin"),
            ("ada", "owner"),
        ] {
            let answer = raw(
                &server,
                method.clone(),
                path,
                t(user).as_deref(),
                body.clone(),
            )
            .await;
            if rank(role) >= rank(weakest) {
                assert!(
                    ![StatusCode::FORBIDDEN, StatusCode::NOT_FOUND].contains(&answer.0),
                    "{role} may {method} {path}: {:?}",
                    answer
                );
            } else {
                assert_error(&answer, StatusCode::FORBIDDEN, "role_too_low");
            }
        }
        let answer = raw(
            &server,
            method.clone(),
            path,
            t("eve").as_deref(),
            body.clone(),
        )
        .await;
        assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    }

    // Role changes: admins cannot touch owners; the last owner stays.
    let ada_path = format!("{members}/{}", ids["ada"]);
    let answer = raw(
        &server,
        Method::PUT,
        &ada_path,
        t("bob").as_deref(),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "role_too_low");
    let answer = raw(
        &server,
        Method::DELETE,
        &ada_path,
        t("ada").as_deref(),
        None,
    )
    .await;
    assert_error(&answer, StatusCode::CONFLICT, "last_owner");
    let (status, _, _) = raw(
        &server,
        Method::PUT,
        &format!("{members}/{}", ids["dave"]),
        t("bob").as_deref(),
        Some(json!({"role": "developer"})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = raw(
        &server,
        Method::PATCH,
        &format!("/api/environments/{env_id}/config"),
        t("dave").as_deref(),
        Some(json!({"set": {"B": "2"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "promoted to developer");
    let (status, _, _) = raw(
        &server,
        Method::DELETE,
        &format!("{members}/{}", ids["dave"]),
        t("bob").as_deref(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let answer = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{project_id}"),
        t("dave").as_deref(),
        None,
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
}
