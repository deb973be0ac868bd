//! Alerts through the API: default rules and their validation, channels (kinds, URL and
//! address checks, the SSRF guard, secrets shown once, strangers see nothing), and the
//! crash-loop and failed-backup rules firing and resolving from what the store records
//! (the test server evaluates rules every 200 ms).

use std::time::{Duration, Instant};

use gilgal_testkit::{backend_tests, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{assert_error, raw};

backend_tests!(
    rules_and_channels_are_validated_and_private_to_their_environment,
    crash_loops_and_failed_backups_fire_and_resolve
);

/// A user with a project; returns (token, production environment id).
async fn owner_with_environment(
    server: &TestServer,
    email: &str,
    project: &str,
) -> (String, String) {
    let (_, pair) = server.user(email).await;
    let token = pair.access_token;
    let (status, _, created) = raw(
        server,
        Method::POST,
        "/api/projects",
        Some(&token),
        Some(json!({"name": project})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (_, _, envs) = raw(
        server,
        Method::GET,
        &format!(
            "/api/projects/{}/environments",
            created["id"].as_str().unwrap()
        ),
        Some(&token),
        None,
    )
    .await;
    (token, envs[0]["id"].as_str().unwrap().to_owned())
}

async fn alerts_wait(
    server: &TestServer,
    token: &str,
    env: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, alerts) = raw(
            server,
            Method::GET,
            &format!("/api/environments/{env}/alerts"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{alerts}");
        let alerts = alerts.as_array().unwrap().clone();
        if done(&alerts) {
            return alerts;
        }
        assert!(Instant::now() < deadline, "{what}: {alerts:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn rules_and_channels_are_validated_and_private_to_their_environment(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (token, env) = owner_with_environment(&server, "ada@example.com", "shop").await;
    let (eve, eve_env) = owner_with_environment(&server, "eve@example.com", "other").await;
    let call = |method: Method, path: String, who: &str, body: Option<Value>| {
        let server = &server;
        let who = who.to_owned();
        async move { raw(server, method, &path, Some(&who), body).await }
    };

    // Defaults: one rule of each kind.
    let (status, _, rules) = call(
        Method::GET,
        format!("/api/environments/{env}/alerts/rules"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let kinds: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "error_rate",
            "latency_p95",
            "health_check",
            "crash_loop",
            "backup_failed"
        ]
    );
    assert!(rules
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["default"] == true && r["enabled"] == true));
    assert_eq!(rules[0]["threshold"], 0.01);
    assert_eq!(rules[0]["for_seconds"], 300);
    assert_eq!(rules[1]["threshold"], 0.5);
    assert_eq!(rules[1]["for_seconds"], 600);

    // A change keeps the fields it leaves out.
    let (status, _, changed) = call(
        Method::PUT,
        format!("/api/environments/{env}/alerts/rules/error_rate"),
        &token,
        Some(json!({"threshold": 0.05})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["condition"], "error rate > 5 % for 5 min");
    assert_eq!(changed["default"], false);
    let (_, _, rules) = call(
        Method::GET,
        format!("/api/environments/{env}/alerts/rules"),
        &token,
        None,
    )
    .await;
    assert_eq!(rules[0]["threshold"], 0.05);
    assert_eq!(rules[0]["for_seconds"], 300);
    for bad in [
        json!({"threshold": 2}),
        json!({"threshold": 0}),
        json!({"for_seconds": 10_000_000}),
    ] {
        let answer = call(
            Method::PUT,
            format!("/api/environments/{env}/alerts/rules/error_rate"),
            &token,
            Some(bad.clone()),
        )
        .await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    }
    let answer = call(
        Method::PUT,
        format!("/api/environments/{env}/alerts/rules/health_check"),
        &token,
        Some(json!({"threshold": 2.5})),
    )
    .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let answer = call(
        Method::PUT,
        format!("/api/environments/{env}/alerts/rules/error_rate"),
        &token,
        Some(json!({"thresold": 0.1})),
    )
    .await;
    assert_eq!(
        answer.0,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown fields are refused"
    );
    let answer = call(
        Method::PUT,
        format!("/api/environments/{env}/alerts/rules/cpu"),
        &token,
        Some(json!({"threshold": 0.5})),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");

    // Channels: kinds, targets, the SSRF guard, no SMTP relay on this server.
    let channels = format!("/api/environments/{env}/alerts/channels");
    for (body, needle) in [
        (
            json!({"kind": "sms", "target": "+15550100"}),
            "unknown channel kind",
        ),
        (
            json!({"kind": "webhook", "target": "ftp://203.0.113.9/x"}),
            "only http and https",
        ),
        (
            json!({"kind": "webhook", "target": "http://127.0.0.1:9/x"}),
            "internal address",
        ),
        (
            json!({"kind": "slack", "target": "http://[::1]/x"}),
            "internal address",
        ),
        (
            json!({"kind": "webhook", "target": "https://u:p@203.0.113.9/x"}),
            "no credentials",
        ),
        (
            json!({"kind": "email", "target": "nobody"}),
            "not an email address",
        ),
        (
            json!({"kind": "email", "target": "ops@example.com"}),
            "no SMTP relay",
        ),
    ] {
        let answer = call(Method::POST, channels.clone(), &token, Some(body.clone())).await;
        assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
        assert!(
            answer.2["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{body}: {answer:?}"
        );
    }
    let (status, _, slack) = call(
        Method::POST,
        channels.clone(),
        &token,
        Some(json!({"kind": "slack", "target": "https://203.0.113.9/services/T0/B0/x"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{slack}");
    assert!(slack.get("secret").is_none(), "{slack}");
    let (status, _, hook) = call(
        Method::POST,
        channels.clone(),
        &token,
        Some(json!({"kind": "webhook", "target": "https://203.0.113.9/hook"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let secret = hook["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("gilgal_alsec_") && secret.len() > 60,
        "{hook}"
    );
    let (_, _, listed) = call(Method::GET, channels.clone(), &token, None).await;
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains(secret),
        "secrets are shown once"
    );

    // Strangers see nothing; another environment's channel is not found through it.
    let hook_id = hook["id"].as_str().unwrap();
    let answer = call(Method::GET, channels.clone(), &eve, None).await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = call(
        Method::PUT,
        format!("/api/environments/{env}/alerts/rules/error_rate"),
        &eve,
        Some(json!({"enabled": false})),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = call(
        Method::DELETE,
        format!("/api/environments/{eve_env}/alerts/channels/{hook_id}"),
        &eve,
        None,
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = call(
        Method::DELETE,
        format!("/api/environments/{env}/alerts/channels/not-a-uuid"),
        &token,
        None,
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");

    // A channel whose host turned internal is refused when tested, and nothing is sent.
    let internal = Uuid::new_v4();
    server
        .state
        .store()
        .create_alert_channel(
            internal,
            env.parse().unwrap(),
            "webhook",
            "http://127.0.0.1:9/hook",
            None,
        )
        .await
        .unwrap();
    let answer = call(
        Method::POST,
        format!("/api/environments/{env}/alerts/channels/{internal}/test"),
        &token,
        None,
    )
    .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    assert!(
        answer.2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("internal address"),
        "{answer:?}"
    );
    let answer = call(
        Method::POST,
        format!("/api/environments/{eve_env}/alerts/channels/{internal}/test"),
        &eve,
        None,
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        call(
            Method::DELETE,
            format!("/api/environments/{env}/alerts/channels/{internal}"),
            &token,
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );

    let gone = format!("/api/environments/{env}/alerts/channels/{hook_id}");
    assert_eq!(
        call(Method::DELETE, gone.clone(), &token, None).await.0,
        StatusCode::NO_CONTENT
    );
    let answer = call(Method::DELETE, gone, &token, None).await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let (_, _, listed) = call(Method::GET, channels, &token, None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

async fn crash_loops_and_failed_backups_fire_and_resolve(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (token, env) = owner_with_environment(&server, "ops@example.com", "shop").await;
    let env_id: Uuid = env.parse().unwrap();
    let store = server.state.store().clone();

    // Three crashes on the timeline: the default crash-loop rule (3 within 5 min) fires.
    for code in [1, 2, 3] {
        store
            .record_event(
                env_id,
                "crash",
                &format!("web.1 (v1) exited with code {code}"),
            )
            .await
            .unwrap();
    }
    let last_crash = Instant::now();
    let alerts = alerts_wait(&server, &token, &env, "a crash-loop alert", |a| {
        a.iter().any(|x| x["kind"] == "crash_loop")
    })
    .await;
    let crash = alerts.iter().find(|a| a["kind"] == "crash_loop").unwrap();
    assert_eq!(crash["state"], "firing");
    assert_eq!(crash["value"], 3.0);
    assert_eq!(crash["message"], "3 crashes within 5 min: 3 crashes");
    // Counting over the last second only, the crashes are behind it: resolved. (Once they
    // all are: events a few ms apart could otherwise straddle the window's edge.)
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(last_crash.elapsed())).await;
    let (status, _, _) = raw(
        &server,
        Method::PUT,
        &format!("/api/environments/{env}/alerts/rules/crash_loop"),
        Some(&token),
        Some(json!({"for_seconds": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let alerts = alerts_wait(&server, &token, &env, "the crash loop resolved", |a| {
        a.iter()
            .any(|x| x["kind"] == "crash_loop" && x["state"] == "resolved")
    })
    .await;
    assert_eq!(alerts.len(), 1, "it fired once: {alerts:#?}");
    assert_eq!(alerts[0]["resolved_message"], "back to normal: 0 crashes");

    // An add-on whose latest backup failed fires; the next good backup resolves it.
    let addon = store
        .create_addon(&gilgal_store::NewAddon {
            id: Uuid::new_v4(),
            environment_id: env_id,
            kind: "redis",
            name: "cache",
            var_prefix: "",
            resource: "addon_test",
            credentials_sealed: "unused",
            backup_schedule: "",
            backup_retention: 3,
        })
        .await
        .unwrap();
    let good = store
        .start_backup(&addon, "manual", None)
        .await
        .unwrap()
        .unwrap();
    store
        .finish_backup(good, Ok(("/dev/null", 1, "00")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let bad = store
        .start_backup(&addon, "manual", None)
        .await
        .unwrap()
        .unwrap();
    store
        .finish_backup(bad, Err("redis-cli: connection refused"))
        .await
        .unwrap();
    let alerts = alerts_wait(&server, &token, &env, "a failed-backup alert", |a| {
        a.iter().any(|x| x["kind"] == "backup_failed")
    })
    .await;
    let backup = alerts
        .iter()
        .find(|a| a["kind"] == "backup_failed")
        .unwrap();
    assert_eq!(backup["state"], "firing");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = store
        .start_backup(&addon, "manual", None)
        .await
        .unwrap()
        .unwrap();
    store
        .finish_backup(again, Ok(("/dev/null", 1, "00")))
        .await
        .unwrap();
    let alerts = alerts_wait(&server, &token, &env, "the failed backup resolved", |a| {
        a.iter()
            .any(|x| x["kind"] == "backup_failed" && x["state"] == "resolved")
    })
    .await;
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a["kind"] == "backup_failed")
            .count(),
        1,
        "{alerts:#?}"
    );
    // Both are on the events timeline.
    let (_, _, events) = raw(
        &server,
        Method::GET,
        &format!("/api/environments/{env}/events"),
        Some(&token),
        None,
    )
    .await;
    let messages: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "alert")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert!(
        messages[0].starts_with("firing: 3 crashes within 5 min"),
        "{messages:?}"
    );
}
