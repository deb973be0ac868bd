//! The authorization matrix: every operation in the OpenAPI document, called as a team's
//! viewer, developer, admin and owner, as a stranger, and as a non-admin for instance
//! endpoints, gets the documented outcome. A new endpoint fails this test until it is
//! classified here.
//!
//! The team's project was made by a member who moved it into the team and was then demoted
//! to viewer (she is checked as a viewer) and, at the end, removed (she then gets 404 on every
//! project operation). Every operation is also called with API tokens bound to this project
//! and to another one, in each scope (read, deploy, full).

use std::collections::BTreeSet;

use gilgal_testkit::{backend_tests, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::raw;

backend_tests!(every_documented_operation_answers_each_role_as_documented);

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Access {
    /// No credentials needed.
    Public,
    /// Any signed-in user, on their own things.
    SelfService,
    /// Instance administrators only.
    InstanceAdmin,
    /// Project resources: this role or above on the project; strangers get 404.
    Project(&'static str),
    /// Team resources: this role or above on the team; strangers get 404.
    Team(&'static str),
    /// No user credential: a signature over the body is the credential (webhook receiver).
    Signed,
}

/// One row: method, documented path, concrete path, body, who may call it, destructive.
type Operation = (Method, &'static str, String, Option<Value>, Access, bool);

const ROLES: [&str; 4] = ["viewer", "developer", "admin", "owner"];

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).unwrap_or(0)
}

async fn every_documented_operation_answers_each_role_as_documented(backend: Backend) {
    let server = TestServer::start(backend).await;
    // The first account is the instance administrator; the team's people are not.
    let (_, root) = server.user("root@example.com").await;
    let mut token = std::collections::BTreeMap::new();
    let mut user_id = std::collections::BTreeMap::new();
    for name in ["ada", "bob", "carol", "dave", "eve", "frank", "gina"] {
        let (_, pair) = server.user(&format!("{name}@example.com")).await;
        user_id.insert(name, pair.user.id.to_string());
        token.insert(name, pair.access_token);
    }
    let as_user = |name: &str| Some(token[name].clone());
    let (_, _, team) = raw(
        &server,
        Method::POST,
        "/api/teams",
        as_user("ada").as_deref(),
        Some(json!({"name": "acme"})),
    )
    .await;
    let team_id = team["id"].as_str().unwrap().to_owned();
    for (name, role) in [
        ("bob", "admin"),
        ("carol", "developer"),
        ("dave", "viewer"),
        ("frank", "viewer"),
        ("gina", "admin"),
    ] {
        let (_, _, invitation) = raw(
            &server,
            Method::POST,
            &format!("/api/teams/{team_id}/members"),
            as_user("ada").as_deref(),
            Some(json!({"email": format!("{name}@example.com"), "role": role})),
        )
        .await;
        let (status, _, _) = raw(
            &server,
            Method::POST,
            "/api/invitations/accept",
            as_user(name).as_deref(),
            Some(json!({"token": invitation["token"]})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    // Gina, an admin, makes the project and moves it into the team; she is demoted below.
    let (_, _, project) = raw(
        &server,
        Method::POST,
        "/api/projects",
        as_user("gina").as_deref(),
        Some(json!({"name": "shop"})),
    )
    .await;
    let project_id = project["id"].as_str().unwrap().to_owned();
    let (status, _, _) = raw(
        &server,
        Method::POST,
        &format!("/api/projects/{project_id}/transfer"),
        as_user("gina").as_deref(),
        Some(json!({"team_id": team_id})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let gina = user_id["gina"].clone();
    let (status, _, _) = raw(
        &server,
        Method::PUT,
        &format!("/api/teams/{team_id}/members/{gina}"),
        as_user("ada").as_deref(),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Another project (ada's own), for tokens bound elsewhere.
    let (_, _, other) = raw(
        &server,
        Method::POST,
        "/api/projects",
        as_user("ada").as_deref(),
        Some(json!({"name": "elsewhere"})),
    )
    .await;
    let other_project_id = other["id"].as_str().unwrap().to_owned();
    let mut bound_tokens = Vec::new();
    for (bound_to, project) in [("this", &project_id), ("another", &other_project_id)] {
        for scope in ["read", "deploy", "full"] {
            let (status, _, created) = raw(
                &server,
                Method::POST,
                "/api/tokens",
                as_user("ada").as_deref(),
                Some(json!({"name": format!("{scope}-{bound_to}"), "scope": scope, "project_id": project})),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{created}");
            let secret = created["token"].as_str().unwrap().to_owned();
            bound_tokens.push((scope, bound_to == "this", secret));
        }
    }
    let (_, _, envs) = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{project_id}/environments"),
        as_user("ada").as_deref(),
        None,
    )
    .await;
    let env_id = envs[0]["id"].as_str().unwrap().to_owned();
    let env_uuid: uuid::Uuid = env_id.parse().unwrap();
    let project_uuid: uuid::Uuid = project_id.parse().unwrap();
    // A deployment, a run, a cron job and a domain to address.
    let deployment = server
        .state
        .store()
        .create_deployment(project_uuid, env_uuid, r#"{"kind":"upload"}"#)
        .await
        .unwrap();
    server
        .state
        .store()
        .transition_deployment(
            deployment,
            gilgal_core::lifecycle::DeploymentState::Failed,
            Some("fixture"),
        )
        .await
        .unwrap();
    let run = server
        .state
        .store()
        .create_run(env_uuid, None, None, r#"["true"]"#, "failed")
        .await
        .unwrap()
        .unwrap();
    let (_, _, cron) = raw(
        &server,
        Method::POST,
        &format!("/api/environments/{env_id}/cron"),
        as_user("ada").as_deref(),
        Some(json!({"schedule": "0 * * * *", "command": ["true"]})),
    )
    .await;
    let cron_id = cron["id"].as_str().unwrap().to_owned();
    // A Redis add-on row (no server is started: the matrix checks authorization), and a
    // failed backup of it to name in a restore.
    let addon_id = uuid::Uuid::new_v4();
    let sealed_credentials = server
        .state
        .platform()
        .vault()
        .seal(
            env_uuid,
            &format!("addon:{addon_id}"),
            r#"{"password":"fixture","port":9}"#,
        )
        .await
        .unwrap();
    let addon = server
        .state
        .store()
        .create_addon(&gilgal_store::NewAddon {
            id: addon_id,
            environment_id: env_uuid,
            kind: "redis",
            name: "cache",
            var_prefix: "CACHE_",
            resource: &format!("addon_{}", addon_id.simple()),
            credentials_sealed: &sealed_credentials,
            backup_schedule: "0 3 * * *",
            backup_retention: 7,
        })
        .await
        .unwrap();
    let failed_backup = server
        .state
        .store()
        .start_backup(&addon, "manual", None)
        .await
        .unwrap()
        .unwrap();
    server
        .state
        .store()
        .finish_backup(failed_backup, Err("fixture"))
        .await
        .unwrap();
    // A webhook, made through the store (creating one through the API checks that the
    // repository's host is public, which needs DNS).
    let webhook_id = uuid::Uuid::new_v4();
    let sealed = server
        .state
        .platform()
        .vault()
        .seal(env_uuid, &format!("webhook:{webhook_id}"), "fixture-secret")
        .await
        .unwrap();
    server
        .state
        .store()
        .create_webhook(&gilgal_store::NewWebhook {
            id: webhook_id,
            project_id: project_uuid,
            environment_id: env_uuid,
            provider: "github",
            repo_url: "https://example.com/shop.git",
            branch: "main",
            secret_sealed: &sealed,
            git_credential_sealed: None,
            created_by: user_id["ada"].parse().unwrap(),
        })
        .await
        .unwrap();
    raw(
        &server,
        Method::POST,
        &format!("/api/environments/{env_id}/domains"),
        as_user("ada").as_deref(),
        Some(json!({"hostname": "www.shop.test"})),
    )
    .await;
    let (_, _, eve_token) = raw(
        &server,
        Method::POST,
        "/api/tokens",
        as_user("eve").as_deref(),
        Some(json!({"name": "own"})),
    )
    .await;
    let eve_token_id = eve_token["id"].as_str().unwrap().to_owned();

    // An alert channel to delete (created in the store: the API refuses internal hosts).
    let alert_channel_id = uuid::Uuid::new_v4();
    server
        .state
        .store()
        .create_alert_channel(
            alert_channel_id,
            env_uuid,
            "slack",
            "https://203.0.113.9/hook",
            None,
        )
        .await
        .unwrap();
    // One to test: its loopback host is refused (422) before anything is sent.
    let internal_channel_id = uuid::Uuid::new_v4();
    server
        .state
        .store()
        .create_alert_channel(
            internal_channel_id,
            env_uuid,
            "slack",
            "http://127.0.0.1:9/hook",
            None,
        )
        .await
        .unwrap();

    let carol = user_id["carol"].clone();
    let frank = user_id["frank"].clone();
    // (method, documented path, concrete path, body, who may call it, destructive)
    let table: Vec<Operation> = vec![
        (
            Method::GET,
            "/health",
            "/health".into(),
            None,
            Access::Public,
            false,
        ),
        (
            Method::GET,
            "/ready",
            "/ready".into(),
            None,
            Access::Public,
            false,
        ),
        (
            Method::POST,
            "/api/auth/register",
            "/api/auth/register".into(),
            Some(json!({"email": "new@example.com", "password": "a long enough password"})),
            Access::Public,
            true,
        ),
        (
            Method::POST,
            "/api/auth/login",
            "/api/auth/login".into(),
            Some(json!({"email": "nobody@example.com", "password": "x"})),
            Access::Public,
            false,
        ),
        (
            Method::POST,
            "/api/auth/refresh",
            "/api/auth/refresh".into(),
            Some(json!({"refresh_token": "gilgal_rt_x"})),
            Access::Public,
            false,
        ),
        (
            Method::POST,
            "/api/auth/logout",
            "/api/auth/logout".into(),
            Some(json!({})),
            Access::SelfService,
            true,
        ),
        (
            Method::GET,
            "/api/auth/me",
            "/api/auth/me".into(),
            None,
            Access::SelfService,
            false,
        ),
        (
            Method::GET,
            "/api/tokens",
            "/api/tokens".into(),
            None,
            Access::SelfService,
            false,
        ),
        (
            Method::POST,
            "/api/tokens",
            "/api/tokens".into(),
            Some(json!({"name": "t"})),
            Access::SelfService,
            false,
        ),
        (
            Method::DELETE,
            "/api/tokens/{id}",
            format!("/api/tokens/{eve_token_id}"),
            None,
            Access::SelfService,
            true,
        ),
        (
            Method::GET,
            "/api/projects",
            "/api/projects".into(),
            None,
            Access::SelfService,
            false,
        ),
        (
            Method::POST,
            "/api/projects",
            "/api/projects".into(),
            Some(json!({"name": "mine"})),
            Access::SelfService,
            false,
        ),
        (
            Method::GET,
            "/api/teams",
            "/api/teams".into(),
            None,
            Access::SelfService,
            false,
        ),
        (
            Method::POST,
            "/api/teams",
            "/api/teams".into(),
            Some(json!({"name": "other-team"})),
            Access::SelfService,
            false,
        ),
        (
            Method::POST,
            "/api/invitations/accept",
            "/api/invitations/accept".into(),
            Some(json!({"token": "gilgal_inv_unknown"})),
            Access::SelfService,
            false,
        ),
        (
            Method::GET,
            "/api/audit",
            "/api/audit".into(),
            None,
            Access::SelfService,
            false,
        ),
        (
            Method::GET,
            "/api/admin/settings",
            "/api/admin/settings".into(),
            None,
            Access::InstanceAdmin,
            false,
        ),
        (
            Method::PUT,
            "/api/admin/settings",
            "/api/admin/settings".into(),
            Some(json!({"registration_open": true})),
            Access::InstanceAdmin,
            false,
        ),
        (
            Method::GET,
            "/api/admin/certificates",
            "/api/admin/certificates".into(),
            None,
            Access::InstanceAdmin,
            false,
        ),
        (
            Method::PUT,
            "/api/admin/certificates/{domain}",
            "/api/admin/certificates/shop.example.com".into(),
            Some(json!({"cert_chain_pem": "x", "key_pem": "y"})),
            Access::InstanceAdmin,
            false,
        ),
        (
            Method::DELETE,
            "/api/admin/certificates/{domain}",
            "/api/admin/certificates/shop.example.com".into(),
            None,
            Access::InstanceAdmin,
            false,
        ),
        (
            Method::POST,
            "/api/admin/rotate-key",
            "/api/admin/rotate-key".into(),
            Some(json!({})),
            Access::InstanceAdmin,
            false,
        ),
        (
            Method::GET,
            "/metrics",
            "/metrics".into(),
            None,
            Access::InstanceAdmin,
            false,
        ),
        (
            Method::GET,
            "/api/projects/{id}/metrics",
            format!("/api/projects/{project_id}/metrics"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::GET,
            "/api/deployments/{id}/metrics",
            format!("/api/deployments/{deployment}/metrics"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::GET,
            "/api/projects/{id}",
            format!("/api/projects/{project_id}"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::PUT,
            "/api/projects/{id}",
            format!("/api/projects/{project_id}"),
            Some(json!({"description": "x"})),
            Access::Project("admin"),
            false,
        ),
        (
            Method::DELETE,
            "/api/projects/{id}",
            format!("/api/projects/{project_id}"),
            None,
            Access::Project("admin"),
            true,
        ),
        (
            Method::POST,
            "/api/projects/{id}/transfer",
            format!("/api/projects/{project_id}/transfer"),
            Some(json!({"team_id": team_id})),
            Access::Project("owner"),
            true,
        ),
        (
            Method::GET,
            "/api/projects/{id}/environments",
            format!("/api/projects/{project_id}/environments"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::POST,
            "/api/projects/{id}/environments",
            format!("/api/projects/{project_id}/environments"),
            Some(json!({"name": "qa"})),
            Access::Project("admin"),
            false,
        ),
        (
            Method::POST,
            "/api/projects/{id}/deployments",
            format!("/api/projects/{project_id}/deployments"),
            Some(json!({"url": "https://git.invalid/x.git"})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::PUT,
            "/api/environments/{id}",
            format!("/api/environments/{env_id}"),
            Some(json!({"name": "production"})),
            Access::Project("admin"),
            false,
        ),
        (
            Method::DELETE,
            "/api/environments/{id}",
            format!("/api/environments/{env_id}"),
            None,
            Access::Project("admin"),
            true,
        ),
        (
            Method::GET,
            "/api/environments/{id}/config",
            format!("/api/environments/{env_id}/config"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::PATCH,
            "/api/environments/{id}/config",
            format!("/api/environments/{env_id}/config"),
            Some(json!({"set": {"A": "1"}})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/logs",
            format!("/api/environments/{env_id}/logs?type=web&since=1h&grep=x"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/events",
            format!("/api/environments/{env_id}/events?limit=10"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/errors",
            format!("/api/environments/{env_id}/errors"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/alerts",
            format!("/api/environments/{env_id}/alerts?limit=5"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/metrics/app",
            format!("/api/environments/{env_id}/metrics/app?path=/metrics"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/alerts/rules",
            format!("/api/environments/{env_id}/alerts/rules"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::PUT,
            "/api/environments/{id}/alerts/rules/{kind}",
            format!("/api/environments/{env_id}/alerts/rules/error_rate"),
            Some(json!({"threshold": 0.05})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/alerts/channels",
            format!("/api/environments/{env_id}/alerts/channels"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::POST,
            "/api/environments/{id}/alerts/channels",
            format!("/api/environments/{env_id}/alerts/channels"),
            Some(json!({"kind": "slack", "target": "https://203.0.113.9/slack"})),
            Access::Project("admin"),
            false,
        ),
        (
            Method::POST,
            "/api/environments/{id}/alerts/channels/{channel}/test",
            format!("/api/environments/{env_id}/alerts/channels/{internal_channel_id}/test"),
            None,
            Access::Project("admin"),
            false,
        ),
        (
            Method::DELETE,
            "/api/environments/{id}/alerts/channels/{channel}",
            format!("/api/environments/{env_id}/alerts/channels/{alert_channel_id}"),
            None,
            Access::Project("admin"),
            true,
        ),
        (
            Method::GET,
            "/api/environments/{id}/uptime",
            format!("/api/environments/{env_id}/uptime"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/releases",
            format!("/api/environments/{env_id}/releases"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::POST,
            "/api/environments/{id}/rollback",
            format!("/api/environments/{env_id}/rollback"),
            Some(json!({})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::POST,
            "/api/environments/{id}/promote",
            format!("/api/environments/{env_id}/promote"),
            Some(json!({"from": "production"})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/canary",
            format!("/api/environments/{env_id}/canary"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::POST,
            "/api/environments/{id}/canary/promote",
            format!("/api/environments/{env_id}/canary/promote"),
            Some(json!({})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::POST,
            "/api/environments/{id}/canary/abort",
            format!("/api/environments/{env_id}/canary/abort"),
            None,
            Access::Project("developer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/edge",
            format!("/api/environments/{env_id}/edge"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::PUT,
            "/api/environments/{id}/edge",
            format!("/api/environments/{env_id}/edge"),
            Some(json!({"rate_limits": [{"requests": 100, "per_seconds": 1}]})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/formation",
            format!("/api/environments/{env_id}/formation"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::PUT,
            "/api/environments/{id}/formation",
            format!("/api/environments/{env_id}/formation"),
            Some(json!({"counts": {"web": 1}})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/runs",
            format!("/api/environments/{env_id}/runs"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::POST,
            "/api/environments/{id}/runs",
            format!("/api/environments/{env_id}/runs"),
            Some(json!({"command": ["true"]})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::GET,
            "/api/environments/{id}/cron",
            format!("/api/environments/{env_id}/cron"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::POST,
            "/api/environments/{id}/cron",
            format!("/api/environments/{env_id}/cron"),
            Some(json!({"schedule": "0 * * * *", "command": ["true"]})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::DELETE,
            "/api/cron/{id}",
            format!("/api/cron/{cron_id}"),
            None,
            Access::Project("developer"),
            true,
        ),
        (
            Method::GET,
            "/api/environments/{id}/domains",
            format!("/api/environments/{env_id}/domains"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::POST,
            "/api/environments/{id}/domains",
            format!("/api/environments/{env_id}/domains"),
            Some(json!({"hostname": "api.shop.test"})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::DELETE,
            "/api/environments/{id}/domains/{hostname}",
            format!("/api/environments/{env_id}/domains/www.shop.test"),
            None,
            Access::Project("developer"),
            true,
        ),
        (
            Method::GET,
            "/api/deployments/{id}",
            format!("/api/deployments/{deployment}"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::DELETE,
            "/api/deployments/{id}",
            format!("/api/deployments/{deployment}"),
            None,
            Access::Project("developer"),
            false,
        ),
        (
            Method::GET,
            "/api/deployments/{id}/logs",
            format!("/api/deployments/{deployment}/logs"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::POST,
            "/api/deployments/{id}/redeploy",
            format!("/api/deployments/{deployment}/redeploy"),
            Some(json!({})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::GET,
            "/api/runs/{id}",
            format!("/api/runs/{run}"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::GET,
            "/api/runs/{id}/logs",
            format!("/api/runs/{run}/logs"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::GET,
            "/api/teams/{id}/members",
            format!("/api/teams/{team_id}/members"),
            None,
            Access::Team("viewer"),
            false,
        ),
        (
            Method::POST,
            "/api/teams/{id}/members",
            format!("/api/teams/{team_id}/members"),
            Some(json!({"email": "new@example.com", "role": "viewer"})),
            Access::Team("admin"),
            false,
        ),
        (
            Method::PUT,
            "/api/teams/{id}/members/{user_id}",
            format!("/api/teams/{team_id}/members/{carol}"),
            Some(json!({"role": "developer"})),
            Access::Team("admin"),
            false,
        ),
        (
            Method::DELETE,
            "/api/teams/{id}/members/{user_id}",
            format!("/api/teams/{team_id}/members/{frank}"),
            None,
            Access::Team("admin"),
            true,
        ),
        (
            Method::GET,
            "/api/environments/{id}/addons",
            format!("/api/environments/{env_id}/addons"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::POST,
            "/api/environments/{id}/addons",
            format!("/api/environments/{env_id}/addons"),
            Some(json!({"kind": "mysql"})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::GET,
            "/api/addons/{id}/backups",
            format!("/api/addons/{addon_id}/backups"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::POST,
            "/api/addons/{id}/backups",
            format!("/api/addons/{addon_id}/backups"),
            None,
            Access::Project("developer"),
            false,
        ),
        (
            Method::POST,
            "/api/addons/{id}/restore",
            format!("/api/addons/{addon_id}/restore"),
            Some(json!({"backup_id": failed_backup})),
            Access::Project("admin"),
            false,
        ),
        (
            Method::PUT,
            "/api/addons/{id}/backup-policy",
            format!("/api/addons/{addon_id}/backup-policy"),
            Some(json!({"schedule": "0 4 * * *", "retention": 3})),
            Access::Project("developer"),
            false,
        ),
        (
            Method::POST,
            "/api/addons/{id}/credentials",
            format!("/api/addons/{addon_id}/credentials"),
            None,
            Access::Project("developer"),
            false,
        ),
        (
            Method::DELETE,
            "/api/addons/{id}",
            format!("/api/addons/{addon_id}?backup=false"),
            None,
            Access::Project("admin"),
            true,
        ),
        (
            Method::POST,
            "/api/webhooks",
            "/api/webhooks".into(),
            Some(
                json!({"project_id": project_id, "provider": "github", "repo_url": "https://example.com/shop.git"}),
            ),
            Access::Project("admin"),
            false,
        ),
        (
            Method::GET,
            "/api/projects/{id}/webhooks",
            format!("/api/projects/{project_id}/webhooks"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::GET,
            "/api/webhooks/{id}/deliveries",
            format!("/api/webhooks/{webhook_id}/deliveries"),
            None,
            Access::Project("viewer"),
            false,
        ),
        (
            Method::DELETE,
            "/api/webhooks/{id}",
            format!("/api/webhooks/{webhook_id}"),
            None,
            Access::Project("admin"),
            true,
        ),
        (
            Method::POST,
            "/api/webhooks/{id}/deliver",
            format!("/api/webhooks/{webhook_id}/deliver"),
            Some(json!({"zen": "unsigned"})),
            Access::Signed,
            false,
        ),
    ];

    // Every documented operation is classified, and nothing classified is undocumented.
    let (_, _, document) = raw(&server, Method::GET, "/api/openapi.json", None, None).await;
    let documented: BTreeSet<String> = document["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|m| ["get", "put", "post", "patch", "delete"].contains(&m.as_str()))
                .map(move |m| format!("{} {path}", m.to_uppercase()))
        })
        .collect();
    let classified: BTreeSet<String> = table.iter().map(|(m, p, ..)| format!("{m} {p}")).collect();
    assert_eq!(
        documented.difference(&classified).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "classify these endpoints in the authorization matrix"
    );
    assert_eq!(
        classified.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new()
    );

    let denied = |answer: &(StatusCode, String, Value)| {
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
        ]
        .contains(&answer.0)
    };
    for (method, documented_path, path, body, access, destructive) in &table {
        let what = format!("{method} {documented_path}");
        let call = |who: Option<String>| {
            let (method, path, body) = (method.clone(), path.clone(), body.clone());
            let server = &server;
            async move { raw(server, method, &path, who.as_deref(), body).await }
        };
        match access {
            Access::Public => {
                let answer = call(None).await;
                assert!(
                    !denied(&answer)
                        || answer.0 == StatusCode::UNAUTHORIZED && what.contains("/auth/"),
                    "{what} anonymously: {answer:?}"
                );
                assert!(!answer.0.is_server_error(), "{what}: {answer:?}");
            }
            Access::SelfService => {
                let answer = call(None).await;
                assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "{what} needs a login");
                if !destructive {
                    let answer = call(as_user("dave")).await;
                    assert!(
                        !denied(&answer) || what.contains("invitations"),
                        "{what} as a user: {answer:?}"
                    );
                    assert!(!answer.0.is_server_error(), "{what}: {answer:?}");
                } else if what.starts_with("DELETE /api/tokens") {
                    // Someone else's token id is not found; one's own is revoked.
                    let answer = call(as_user("dave")).await;
                    assert_eq!(answer.0, StatusCode::NOT_FOUND, "{what}: {answer:?}");
                    let answer = call(as_user("eve")).await;
                    assert_eq!(answer.0, StatusCode::NO_CONTENT, "{what}: {answer:?}");
                }
            }
            Access::InstanceAdmin => {
                for user in ["ada", "eve"] {
                    let answer = call(as_user(user)).await;
                    assert_eq!(
                        answer.0,
                        StatusCode::FORBIDDEN,
                        "{what} as {user}: {answer:?}"
                    );
                    assert_eq!(answer.2["error"]["code"], "admin_only");
                }
                if !what.contains("rotate-key") {
                    let answer = call(Some(root.access_token.clone())).await;
                    // Allowed: anything but an authorization refusal or a server error (the
                    // fixture certificate is not valid PEM, so it is a 422, then a 404).
                    assert!(
                        ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&answer.0)
                            && !answer.0.is_server_error(),
                        "{what} as admin: {answer:?}"
                    );
                }
            }
            Access::Signed => {
                // Neither anonymity nor a user token stands in for the signature.
                for who in [None, as_user("ada")] {
                    let answer = call(who).await;
                    assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "{what}: {answer:?}");
                    assert_eq!(answer.2["error"]["code"], "missing_signature");
                }
            }
            Access::Project(weakest) | Access::Team(weakest) => {
                let answer = call(as_user("eve")).await;
                assert_eq!(
                    answer.0,
                    StatusCode::NOT_FOUND,
                    "{what} as a stranger learns nothing: {answer:?}"
                );
                for (user, role) in [
                    ("dave", "viewer"),
                    ("gina", "viewer"),
                    ("carol", "developer"),
                    ("bob", "admin"),
                    ("ada", "owner"),
                ] {
                    let allowed = rank(role) >= rank(weakest);
                    if allowed && *destructive {
                        continue; // exercised once below, after everything else
                    }
                    let answer = call(as_user(user)).await;
                    if allowed {
                        assert!(!denied(&answer), "{role} may {what}: {answer:?}");
                        assert!(!answer.0.is_server_error(), "{what} as {role}: {answer:?}");
                    } else {
                        assert_eq!(
                            answer.0,
                            StatusCode::FORBIDDEN,
                            "{role} may not {what}: {answer:?}"
                        );
                        assert_eq!(answer.2["error"]["code"], "role_too_low");
                    }
                }
            }
        }
        // Project-bound tokens (ada's, the team's owner): a token reaches its own project's
        // resources within its scope, another project's are not found, and nothing account-
        // or instance-wide (403 `token_scope`).
        if *access == Access::Public {
            continue;
        }
        for (scope, this_project, secret) in &bound_tokens {
            let who = format!(
                "a {scope} token bound to {}",
                if *this_project {
                    "this project"
                } else {
                    "another project"
                }
            );
            if *access == Access::Signed {
                let answer = call(Some(secret.clone())).await;
                assert_eq!(
                    answer.0,
                    StatusCode::UNAUTHORIZED,
                    "{what} with {who}: {answer:?}"
                );
                continue;
            }
            let expected =
                bound_token_outcome(access, scope, *this_project, method, documented_path);
            if expected == Bound::Allowed && (*destructive || what == "POST /api/auth/logout") {
                continue; // would destroy the fixture or the token; the roles cover it
            }
            let answer = call(Some(secret.clone())).await;
            match expected {
                Bound::Allowed => {
                    assert!(!denied(&answer), "{who} may {what}: {answer:?}");
                    assert!(!answer.0.is_server_error(), "{what} with {who}: {answer:?}");
                }
                Bound::NotFound => {
                    assert_eq!(
                        answer.0,
                        StatusCode::NOT_FOUND,
                        "{what} with {who}: {answer:?}"
                    );
                }
                Bound::OutOfScope => {
                    assert_eq!(
                        answer.0,
                        StatusCode::FORBIDDEN,
                        "{what} with {who}: {answer:?}"
                    );
                    assert_eq!(
                        answer.2["error"]["code"], "token_scope",
                        "{what} with {who}"
                    );
                }
            }
        }
    }
    // Removed from the team, the member who made and moved the project sees none of it.
    let (status, _, _) = raw(
        &server,
        Method::DELETE,
        &format!("/api/teams/{team_id}/members/{gina}"),
        as_user("ada").as_deref(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (method, documented_path, path, body, access, _) in &table {
        if let Access::Project(_) | Access::Team(_) = access {
            let answer = raw(
                &server,
                method.clone(),
                path,
                as_user("gina").as_deref(),
                body.clone(),
            )
            .await;
            assert_eq!(
                answer.0,
                StatusCode::NOT_FOUND,
                "{method} {documented_path} by the removed member who made the project: {answer:?}"
            );
        }
    }
    // Destructive operations, by their weakest allowed role, in an order that keeps the ids
    // valid until used.
    for (what, user, path) in [
        (
            "DELETE a domain as developer",
            "carol",
            format!("/api/environments/{env_id}/domains/www.shop.test"),
        ),
        (
            "DELETE a cron job as developer",
            "carol",
            format!("/api/cron/{cron_id}"),
        ),
        (
            "DELETE an add-on as admin",
            "bob",
            format!("/api/addons/{addon_id}?backup=false"),
        ),
        (
            "DELETE a webhook as admin",
            "bob",
            format!("/api/webhooks/{webhook_id}"),
        ),
        (
            "DELETE an alert channel as admin",
            "bob",
            format!("/api/environments/{env_id}/alerts/channels/{alert_channel_id}"),
        ),
        (
            "DELETE a member as admin",
            "bob",
            format!("/api/teams/{team_id}/members/{frank}"),
        ),
        (
            "DELETE the project as admin",
            "bob",
            format!("/api/projects/{project_id}"),
        ),
    ] {
        let answer = raw(
            &server,
            Method::DELETE,
            &path,
            as_user(user).as_deref(),
            None,
        )
        .await;
        let expected = if what.contains("add-on") {
            StatusCode::OK
        } else {
            StatusCode::NO_CONTENT
        };
        assert_eq!(answer.0, expected, "{what}: {answer:?}");
    }
}

/// What a project-bound API token gets.
#[derive(Debug, PartialEq)]
enum Bound {
    /// Anything but a refusal (the token's owner is the team's owner).
    Allowed,
    /// 404: another project's resource.
    NotFound,
    /// 403 `token_scope`: outside the token's scope or not addressed to one project.
    OutOfScope,
}

/// The documented outcome for a project-bound token (README, "API tokens"): `read` reads,
/// `deploy` also deploys, redeploys and cancels, `full` does anything its owner may, but only
/// on routes addressed to one project's resources; of those, another project's are 404. The
/// project list, the caller's identity and logout are allowed; everything else account- or
/// instance-wide is refused, as is moving the project between owners.
fn bound_token_outcome(
    access: &Access,
    scope: &str,
    this_project: bool,
    method: &Method,
    path: &str,
) -> Bound {
    let reading = *method == Method::GET;
    let account_wide_allowed = matches!(
        (method.as_str(), path),
        ("GET", "/api/projects") | ("GET", "/api/auth/me") | ("POST", "/api/auth/logout")
    );
    let project_route =
        matches!(access, Access::Project(_)) && path != "/api/projects/{id}/transfer";
    if !project_route {
        return if account_wide_allowed {
            Bound::Allowed
        } else {
            Bound::OutOfScope
        };
    }
    let in_scope = match scope {
        "read" => reading,
        "deploy" => {
            reading
                || matches!(
                    (method.as_str(), path),
                    ("POST", "/api/projects/{id}/deployments")
                        | ("POST", "/api/deployments/{id}/redeploy")
                        | ("DELETE", "/api/deployments/{id}")
                )
        }
        _ => true,
    };
    match (in_scope, this_project) {
        (false, _) => Bound::OutOfScope,
        (true, true) => Bound::Allowed,
        (true, false) => Bound::NotFound,
    }
}
