//! Quotas: every one of the ten ways a rollout starts is refused 429 `deploy_quota`, with
//! `Retry-After`, once the team's hourly deploy quota is spent, and records nothing.

use gilgal_api::ApiConfig;
use gilgal_deploy::Quotas;
use gilgal_testkit::{backend_tests, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::raw;

backend_tests!(every_entry_point_is_refused_once_the_hourly_quota_is_spent);

async fn every_entry_point_is_refused_once_the_hourly_quota_is_spent(backend: Backend) {
    let server = TestServer::start_with_quotas(
        backend,
        ApiConfig::default(),
        Quotas {
            deploys_per_hour: 1,
            concurrent_builds: 100,
        },
    )
    .await;
    let (_, pair) = server.user("ci@example.com").await;
    let token = pair.access_token.as_str();
    let (_, _, project) = raw(
        &server,
        Method::POST,
        "/api/projects",
        Some(token),
        Some(json!({"name": "busy"})),
    )
    .await;
    let project_id: uuid::Uuid = project["id"].as_str().unwrap().parse().unwrap();
    let envs = get(
        &server,
        token,
        &format!("/api/projects/{project_id}/environments"),
    )
    .await;
    let production: uuid::Uuid = envs[0]["id"].as_str().unwrap().parse().unwrap();
    let (status, _, staging) = raw(
        &server,
        Method::POST,
        &format!("/api/projects/{project_id}/environments"),
        Some(token),
        Some(json!({"name": "staging"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{staging}");
    let staging = staging["id"].as_str().unwrap().to_owned();
    let repo = tempfile::tempdir().unwrap();
    let (status, _, webhook) = raw(
        &server,
        Method::POST,
        "/api/webhooks",
        Some(token),
        Some(json!({
            "project_id": project_id,
            "provider": "github",
            "repo_url": format!("file://{}", repo.path().display()),
            "branch": "main",
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{webhook}");

    // The hour's one deployment, recorded directly (it failed at once).
    let spent = server
        .state
        .store()
        .create_deployment(project_id, production, r#"{"kind":"upload"}"#)
        .await
        .unwrap();
    server
        .state
        .store()
        .transition_deployment(
            spent,
            gilgal_core::lifecycle::DeploymentState::Failed,
            Some("test"),
        )
        .await
        .unwrap();

    let http = server.http();
    let url = |path: &str| format!("{}{path}", server.url);
    let push = json!({
        "ref": "refs/heads/main",
        "before": "0".repeat(40),
        "after": "a".repeat(40),
        "deleted": false,
        "head_commit": {"id": "a".repeat(40), "message": "ship it"},
    })
    .to_string()
    .into_bytes();
    let secret = webhook["secret"].as_str().unwrap();
    let cases = [
        (
            "upload",
            http.post(url(&format!("/api/projects/{project_id}/deployments")))
                .bearer_auth(token)
                .header("content-type", "application/gzip")
                .body(vec![0x1f; 64]),
        ),
        (
            "git",
            http.post(url(&format!("/api/projects/{project_id}/deployments")))
                .bearer_auth(token)
                .json(&json!({"url": format!("file://{}", repo.path().display()), "ref": "main"})),
        ),
        (
            "image",
            http.post(url(&format!("/api/projects/{project_id}/deployments")))
                .bearer_auth(token)
                .json(&json!({"image": "nginx:1"})),
        ),
        (
            "webhook",
            http.post(url(webhook["receiver_path"].as_str().unwrap()))
                .header("content-type", "application/json")
                .header("x-github-event", "push")
                .header("x-github-delivery", "quota-1")
                .header(
                    "x-hub-signature-256",
                    gilgal_webhooks::sign(secret.as_bytes(), &push),
                )
                .body(push.clone()),
        ),
        (
            "config change",
            http.patch(url(&format!("/api/environments/{production}/config")))
                .bearer_auth(token)
                .json(&json!({"set": {"GREETING": "hi"}})),
        ),
        (
            "rollback",
            http.post(url(&format!("/api/environments/{production}/rollback")))
                .bearer_auth(token)
                .json(&json!({})),
        ),
        (
            "promote",
            http.post(url(&format!("/api/environments/{staging}/promote")))
                .bearer_auth(token)
                .json(&json!({"from": "production"})),
        ),
        (
            "redeploy",
            http.post(url(&format!("/api/deployments/{spent}/redeploy")))
                .bearer_auth(token)
                .json(&json!({})),
        ),
        (
            "scale",
            http.put(url(&format!("/api/environments/{production}/formation")))
                .bearer_auth(token)
                .json(&json!({"counts": {"web": 2}})),
        ),
        (
            "add-on attach",
            http.post(url(&format!("/api/environments/{production}/addons")))
                .bearer_auth(token)
                .json(&json!({"kind": "redis"})),
        ),
    ];
    for (entry_point, request) in cases {
        let response = request.send().await.expect("request sent");
        assert!(
            response.headers().contains_key("retry-after"),
            "{entry_point}: {response:?}"
        );
        let (status, _, body) = finish_response(response).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "{entry_point}: {body}"
        );
        assert_eq!(
            body["error"]["code"], "deploy_quota",
            "{entry_point}: {body}"
        );
    }

    // Nothing of the refused changes was recorded.
    let (recent, _) = server
        .state
        .store()
        .deployment_usage(project_id, 0)
        .await
        .unwrap();
    assert_eq!(recent, 1, "only the spent deployment exists");
    let config = get(
        &server,
        token,
        &format!("/api/environments/{production}/config"),
    )
    .await;
    assert_eq!(config, json!([]), "the refused config change set nothing");
    let addons = get(
        &server,
        token,
        &format!("/api/environments/{production}/addons"),
    )
    .await;
    assert_eq!(addons, json!([]), "the refused add-on was not created");
    let envs = get(
        &server,
        token,
        &format!("/api/projects/{project_id}/environments"),
    )
    .await;
    assert_ne!(
        envs[0]["formation"]["web"], 2,
        "the refused scale changed nothing: {envs}"
    );
    let deliveries = get(
        &server,
        token,
        &format!(
            "/api/webhooks/{}/deliveries",
            webhook["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(deliveries[0]["outcome"], "failed", "{deliveries}");
}

/// Status and JSON body of a response whose headers were already looked at.
async fn finish_response(response: reqwest::Response) -> (StatusCode, String, serde_json::Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, String::new(), json)
}

/// The JSON body of an authenticated GET.
async fn get(server: &TestServer, token: &str, path: &str) -> serde_json::Value {
    raw(server, Method::GET, path, Some(token), None).await.2
}
