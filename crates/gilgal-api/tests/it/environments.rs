//! Environments, config vars, releases, formation, runs and cron: validation, secrets never
//! returned, and another user's resources are a 404.

use gilgal_testkit::{backend_tests, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{assert_error, raw};

backend_tests!(
    environments_and_config_vars,
    other_users_environments_are_invisible,
    json_deploys_are_validated_before_anything_is_recorded
);

/// JSON deploy bodies: an image needs the Docker runtime (this server runs processes), a
/// body that is neither shape is a 422; nothing is recorded for either.
async fn json_deploys_are_validated_before_anything_is_recorded(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, pair) = server.user("ada@example.com").await;
    let token = Some(pair.access_token.as_str());
    let (_, _, project) = raw(
        &server,
        Method::POST,
        "/api/projects",
        token,
        Some(json!({"name": "img"})),
    )
    .await;
    let path = format!(
        "/api/projects/{}/deployments",
        project["id"].as_str().unwrap()
    );
    let answer = raw(
        &server,
        Method::POST,
        &path,
        token,
        Some(json!({"image": "nginx:1"})),
    )
    .await;
    assert_error(&answer, StatusCode::CONFLICT, "not_possible");
    assert!(
        answer.2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--runtime docker"),
        "{answer:?}"
    );
    let answer = raw(
        &server,
        Method::POST,
        &path,
        token,
        Some(json!({"nothing": 1})),
    )
    .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let releases = server
        .state
        .store()
        .deployment_usage(project["id"].as_str().unwrap().parse().unwrap(), 0)
        .await
        .unwrap();
    assert_eq!(releases.0, 0, "no deployment was recorded");
}

async fn environments_and_config_vars(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, pair) = server.user("ada@example.com").await;
    let token = Some(pair.access_token.as_str());
    let (status, _, project) = raw(
        &server,
        Method::POST,
        "/api/projects",
        token,
        Some(json!({"name": "shop"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let project_id = project["id"].as_str().unwrap();
    let path = format!("/api/projects/{project_id}/environments");

    let (status, _, list) = raw(&server, Method::GET, &path, token, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "production");
    assert_eq!(list[0]["url"], "http://shop.localhost");

    let (status, _, staging) = raw(
        &server,
        Method::POST,
        &path,
        token,
        Some(json!({"name": "staging"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{staging}");
    assert_eq!(staging["url"], "http://shop-staging.localhost");
    let staging_id = staging["id"].as_str().unwrap().to_owned();

    for bad in ["Staging", "-x", "a b", "", "../etc"] {
        let response = raw(
            &server,
            Method::POST,
            &path,
            token,
            Some(json!({"name": bad})),
        )
        .await;
        assert_error(
            &response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        );
    }
    let dup = raw(
        &server,
        Method::POST,
        &path,
        token,
        Some(json!({"name": "staging"})),
    )
    .await;
    assert_error(&dup, StatusCode::CONFLICT, "name_taken");
    // A project named like another project's environment hostname is refused too.
    raw(
        &server,
        Method::POST,
        "/api/projects",
        token,
        Some(json!({"name": "api"})),
    )
    .await;

    let config = format!("/api/environments/{staging_id}/config");
    let (status, _, changed) = raw(
        &server,
        Method::PATCH,
        &config,
        token,
        Some(json!({"set": {"GREETING": "hi"}, "set_secret": {"STRIPE_KEY": "sk_live_abcdef123456"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        changed["deployment"],
        serde_json::Value::Null,
        "nothing live yet"
    );
    let (_, _, vars) = raw(&server, Method::GET, &config, token, None).await;
    assert_eq!(
        vars,
        json!([
            {"name": "GREETING", "value": "hi", "secret": false},
            {"name": "STRIPE_KEY", "value": null, "secret": true},
        ])
    );
    assert!(!vars.to_string().contains("sk_live"));
    for (body, why) in [
        (json!({"set": {"PORT": "1"}}), "PORT"),
        (json!({"set": {"GILGAL_RELEASE": "1"}}), "GILGAL_RELEASE"),
        (json!({"set": {"1BAD": "1"}}), "1BAD"),
        (json!({"set": {"A-B": "1"}}), "A-B"),
        (json!({"set": {"BIG": "x".repeat(40 * 1024)}}), "BIG"),
        (json!({}), "nothing to change"),
    ] {
        let response = raw(&server, Method::PATCH, &config, token, Some(body)).await;
        assert_error(
            &response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        );
        assert!(response.2.to_string().contains(why), "{}", response.2);
    }
    let (status, _, changed) = raw(
        &server,
        Method::PATCH,
        &config,
        token,
        Some(json!({"unset": ["GREETING"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(changed["vars"].as_array().unwrap().len(), 1);

    // Nothing live: rollback, promotion and runs explain why not.
    let env_path = format!("/api/environments/{staging_id}");
    let response = raw(
        &server,
        Method::POST,
        &format!("{env_path}/rollback"),
        token,
        Some(json!({})),
    )
    .await;
    assert_error(&response, StatusCode::CONFLICT, "not_possible");
    let response = raw(
        &server,
        Method::POST,
        &format!("{env_path}/runs"),
        token,
        Some(json!({"command": ["echo", "hi"]})),
    )
    .await;
    assert_error(&response, StatusCode::CONFLICT, "not_possible");
    let response = raw(
        &server,
        Method::POST,
        &format!("{env_path}/runs"),
        token,
        Some(json!({"command": []})),
    )
    .await;
    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    let response = raw(
        &server,
        Method::POST,
        &format!("{env_path}/cron"),
        token,
        Some(json!({"schedule": "every day", "command": ["echo"]})),
    )
    .await;
    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    );
    // Minute resolution: a seconds field (6) or a years field (7) is refused, naming the rule.
    for too_fine in ["* * * * * *", "0 0 3 * * * 2030"] {
        let response = raw(
            &server,
            Method::POST,
            &format!("{env_path}/cron"),
            token,
            Some(json!({"schedule": too_fine, "command": ["pg_dump"]})),
        )
        .await;
        assert_error(
            &response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        );
        let message = response.2["error"]["message"].as_str().unwrap();
        assert!(message.contains("exactly 5 fields"), "{message}");
    }
    let (status, _, job) = raw(
        &server,
        Method::POST,
        &format!("{env_path}/cron"),
        token,
        Some(json!({"schedule": "0 * * * *", "command": ["python", "cleanup.py"]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["command"], json!(["python", "cleanup.py"]));

    let domains = format!("{env_path}/domains");
    let (status, _, domain) = raw(
        &server,
        Method::POST,
        &domains,
        token,
        Some(json!({"hostname": "Shop.Example.COM."})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{domain}");
    assert_eq!(domain["hostname"], "shop.example.com");
    for bad in [
        "evil.localhost",
        "localhost",
        "no_underscores.com",
        "intranet",
        "",
    ] {
        let response = raw(
            &server,
            Method::POST,
            &domains,
            token,
            Some(json!({"hostname": bad})),
        )
        .await;
        assert_error(
            &response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        );
    }
    let dup = raw(
        &server,
        Method::POST,
        &domains,
        token,
        Some(json!({"hostname": "shop.example.com"})),
    )
    .await;
    assert_error(&dup, StatusCode::CONFLICT, "domain_taken");
    let (_, _, listed) = raw(&server, Method::GET, &domains, token, None).await;
    assert_eq!(listed[0]["hostname"], "shop.example.com");
    let (status, _, _) = raw(
        &server,
        Method::DELETE,
        &format!("{domains}/shop.example.com"),
        token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let again = raw(
        &server,
        Method::DELETE,
        &format!("{domains}/shop.example.com"),
        token,
        None,
    )
    .await;
    assert_error(&again, StatusCode::NOT_FOUND, "not_found");

    let (status, _, renamed) = raw(
        &server,
        Method::PUT,
        &env_path,
        token,
        Some(json!({"name": "qa"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["url"], "http://shop-qa.localhost");
    let production_id = list[0]["id"].as_str().unwrap();
    let response = raw(
        &server,
        Method::DELETE,
        &format!("/api/environments/{production_id}"),
        token,
        None,
    )
    .await;
    assert_error(&response, StatusCode::CONFLICT, "production_is_fixed");
    let (status, _, _) = raw(&server, Method::DELETE, &env_path, token, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let response = raw(&server, Method::GET, &config, token, None).await;
    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
}

async fn other_users_environments_are_invisible(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, ada) = server.user("ada@example.com").await;
    let (_, eve) = server.user("eve@example.com").await;
    let ada_token = Some(ada.access_token.as_str());
    let eve_token = Some(eve.access_token.as_str());
    let (_, _, project) = raw(
        &server,
        Method::POST,
        "/api/projects",
        ada_token,
        Some(json!({"name": "private"})),
    )
    .await;
    let project_id = project["id"].as_str().unwrap();
    let (_, _, envs) = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{project_id}/environments"),
        ada_token,
        None,
    )
    .await;
    let env_id = envs[0]["id"].as_str().unwrap();
    let (_, _, job) = raw(
        &server,
        Method::POST,
        &format!("/api/environments/{env_id}/cron"),
        ada_token,
        Some(json!({"schedule": "0 * * * *", "command": ["true"]})),
    )
    .await;
    let job_id = job["id"].as_str().unwrap();
    for (method, path, body) in [
        (
            Method::GET,
            format!("/api/projects/{project_id}/environments"),
            None,
        ),
        (
            Method::POST,
            format!("/api/projects/{project_id}/environments"),
            Some(json!({"name": "x"})),
        ),
        (
            Method::PUT,
            format!("/api/environments/{env_id}"),
            Some(json!({"name": "x"})),
        ),
        (Method::DELETE, format!("/api/environments/{env_id}"), None),
        (
            Method::GET,
            format!("/api/environments/{env_id}/config"),
            None,
        ),
        (
            Method::PATCH,
            format!("/api/environments/{env_id}/config"),
            Some(json!({"set": {"A": "1"}})),
        ),
        (
            Method::GET,
            format!("/api/environments/{env_id}/releases"),
            None,
        ),
        (
            Method::POST,
            format!("/api/environments/{env_id}/rollback"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/environments/{env_id}/promote"),
            Some(json!({"from": "production"})),
        ),
        (
            Method::GET,
            format!("/api/environments/{env_id}/formation"),
            None,
        ),
        (
            Method::PUT,
            format!("/api/environments/{env_id}/formation"),
            Some(json!({"counts": {"web": 2}})),
        ),
        (
            Method::GET,
            format!("/api/environments/{env_id}/runs"),
            None,
        ),
        (
            Method::POST,
            format!("/api/environments/{env_id}/runs"),
            Some(json!({"command": ["id"]})),
        ),
        (
            Method::GET,
            format!("/api/environments/{env_id}/cron"),
            None,
        ),
        (Method::DELETE, format!("/api/cron/{job_id}"), None),
        (
            Method::GET,
            format!("/api/environments/{env_id}/domains"),
            None,
        ),
        (
            Method::POST,
            format!("/api/environments/{env_id}/domains"),
            Some(json!({"hostname": "x.example.org"})),
        ),
        (
            Method::DELETE,
            format!("/api/environments/{env_id}/domains/x.example.org"),
            None,
        ),
    ] {
        let response = raw(&server, method.clone(), &path, eve_token, body).await;
        assert_error(&response, StatusCode::NOT_FOUND, "not_found");
    }
    // Ada's config is untouched.
    let (_, _, vars) = raw(
        &server,
        Method::GET,
        &format!("/api/environments/{env_id}/config"),
        ada_token,
        None,
    )
    .await;
    assert_eq!(vars, json!([]));
}
