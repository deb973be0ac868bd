//! Brute-force limits, per-credential request budgets, the audit trail, security headers and
//! CORS.

use std::time::Duration;

use gilgal_api::ApiConfig;
use gilgal_deploy::Quotas;
use gilgal_testkit::{backend_tests, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{assert_error, raw};

backend_tests!(
    failed_logins_earn_waits_and_the_wait_is_no_oracle,
    many_accounts_from_one_address_are_slowed_too,
    mutating_calls_are_audited_without_values,
    responses_carry_security_headers
);

async fn login(
    server: &TestServer,
    email: &str,
    password: &str,
) -> (StatusCode, String, serde_json::Value) {
    raw(
        server,
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

async fn failed_logins_earn_waits_and_the_wait_is_no_oracle(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user("ada@example.com").await;
    let password = "correct horse battery staple";
    for _ in 0..6 {
        let answer = login(&server, "ada@example.com", "wrong password!").await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    // Locked for a second now: even the right password is refused, with Retry-After.
    let response = server
        .http()
        .post(format!("{}/api/auth/login", server.url))
        .json(&json!({"email": "ada@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_attempts");
    // Another account from… the same address is not locked by ada's failures alone.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = login(&server, "ada@example.com", password).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "after the wait the right password works"
    );
    // Success cleared the account's failures: five more free attempts.
    for _ in 0..5 {
        let answer = login(&server, "ada@example.com", "wrong password!").await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
}

async fn many_accounts_from_one_address_are_slowed_too(backend: Backend) {
    let server = TestServer::start(backend).await;
    for i in 0..21 {
        let answer = login(
            &server,
            &format!("nobody{i}@example.com"),
            "whatever password",
        )
        .await;
        assert_error(&answer, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    let answer = login(&server, "someone-else@example.com", "whatever password").await;
    assert_error(&answer, StatusCode::TOO_MANY_REQUESTS, "too_many_attempts");
}

async fn mutating_calls_are_audited_without_values(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, admin) = server.user("admin@example.com").await;
    let (_, dev) = server.user("dev@example.com").await;
    let dev_token = Some(dev.access_token.as_str());
    let (_, _, project) = raw(
        &server,
        Method::POST,
        "/api/projects",
        dev_token,
        Some(json!({"name": "audited"})),
    )
    .await;
    let project_id = project["id"].as_str().unwrap();
    let (_, _, envs) = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{project_id}/environments"),
        dev_token,
        None,
    )
    .await;
    let env_id = envs[0]["id"].as_str().unwrap();
    let (status, _, _) = raw(
        &server,
        Method::PATCH,
        &format!("/api/environments/{env_id}/config"),
        dev_token,
        Some(json!({"set": {"MODE": "plain-value-1"}, "set_secret": {"DB_PASSWORD": "hunter2-secret-9"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    login(&server, "dev@example.com", "not the password").await;

    let (status, _, rows) = raw(&server, Method::GET, "/api/audit", dev_token, None).await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    let rows = rows.as_array().unwrap();
    let config = rows
        .iter()
        .find(|r| r["action"] == "PATCH /api/environments/{id}/config")
        .expect("the config change is audited");
    assert_eq!(config["actor_email"], "dev@example.com");
    assert_eq!(config["status"], 200);
    assert_eq!(config["details"]["set"], json!(["MODE"]));
    assert_eq!(config["details"]["set_secret"], json!(["DB_PASSWORD"]));
    assert!(config["credential"]
        .as_str()
        .unwrap()
        .starts_with("session:"));
    assert!(config["ip"].as_str().unwrap().starts_with("127.0.0.1"));
    let everything = serde_json::Value::Array(rows.clone()).to_string();
    assert!(
        !everything.contains("plain-value-1") && !everything.contains("hunter2"),
        "{everything}"
    );
    assert!(rows
        .iter()
        .any(|r| r["action"] == "POST /api/projects" && r["status"] == 201));
    assert!(
        rows.iter().all(|r| r["actor_email"] == "dev@example.com"),
        "only the caller's own rows"
    );

    // The administrator sees everything, including the failed login (no actor, email noted).
    let (_, _, all) = raw(
        &server,
        Method::GET,
        "/api/audit?action=login&limit=50",
        Some(&admin.access_token),
        None,
    )
    .await;
    let failed = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == 401)
        .expect("failed login audited");
    assert_eq!(failed["details"]["email"], "dev@example.com");
    assert_eq!(failed["actor_id"], serde_json::Value::Null);
    let answer = raw(
        &server,
        Method::GET,
        "/api/audit?since=yesterday",
        dev_token,
        None,
    )
    .await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
}

async fn responses_carry_security_headers(backend: Backend) {
    let server = TestServer::start(backend).await;
    let response = server
        .http()
        .get(format!("{}/api/projects", server.url))
        .send()
        .await
        .unwrap();
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    assert!(
        headers.get("access-control-allow-origin").is_none(),
        "no CORS unless configured"
    );
    let docs = server
        .http()
        .get(format!("{}/api/docs/", server.url))
        .send()
        .await
        .unwrap();
    assert!(docs.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
}

#[tokio::test]
async fn cors_and_request_budgets_follow_the_configuration() {
    let server = TestServer::start_with(
        Backend::Sqlite,
        ApiConfig {
            cors_origins: vec!["https://dash.example.com".to_owned()],
            requests_per_second: 2,
            ..ApiConfig::default()
        },
    )
    .await;
    let preflight = server
        .http()
        .request(Method::OPTIONS, format!("{}/api/projects", server.url))
        .header("origin", "https://dash.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://dash.example.com"
    );
    let other = server
        .http()
        .get(format!("{}/health", server.url))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    let (_, pair) = server.user("busy@example.com").await;
    let mut limited = None;
    for i in 0..40 {
        let response = server
            .http()
            .get(format!("{}/api/projects", server.url))
            .bearer_auth(&pair.access_token)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((
                i,
                response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            ));
            break;
        }
    }
    let (after, retry) = limited.expect("the budget runs out");
    assert!(after >= 19, "a burst of 20 is allowed first ({after})");
    assert_eq!(retry, "1");
}

backend_tests!(scoped_tokens_do_only_what_they_say);

async fn scoped_tokens_do_only_what_they_say(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, ada) = server.user("ada@example.com").await;
    let (_, eve) = server.user("eve@example.com").await;
    let session = Some(ada.access_token.as_str());
    let mut ids = Vec::new();
    for name in ["alpha", "beta"] {
        let (_, _, project) = raw(
            &server,
            Method::POST,
            "/api/projects",
            session,
            Some(json!({"name": name})),
        )
        .await;
        ids.push(project["id"].as_str().unwrap().to_owned());
    }
    let (alpha, beta) = (ids[0].clone(), ids[1].clone());
    let (_, _, staging) = raw(
        &server,
        Method::POST,
        &format!("/api/projects/{alpha}/environments"),
        session,
        Some(json!({"name": "staging"})),
    )
    .await;
    let staging = staging["id"].as_str().unwrap().to_owned();
    let (_, _, envs) = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{alpha}/environments"),
        session,
        None,
    )
    .await;
    let production = envs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "production")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mint = |body: serde_json::Value| {
        let server = &server;
        async move {
            let (status, _, created) =
                raw(server, Method::POST, "/api/tokens", session, Some(body)).await;
            assert_eq!(status, StatusCode::CREATED, "{created}");
            created["token"].as_str().unwrap().to_owned()
        }
    };

    let read = mint(json!({"name": "dash", "scope": "read"})).await;
    let read = Some(read.as_str());
    let (status, _, list) = raw(&server, Method::GET, "/api/projects", read, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    for (method, path, body) in [
        (
            Method::POST,
            "/api/projects".to_owned(),
            json!({"name": "gamma"}),
        ),
        (
            Method::PATCH,
            format!("/api/environments/{production}/config"),
            json!({"set": {"A": "1"}}),
        ),
        (
            Method::POST,
            "/api/tokens".to_owned(),
            json!({"name": "wider"}),
        ),
    ] {
        let answer = raw(&server, method, &path, read, Some(body)).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "token_scope");
    }

    let ci_token = mint(json!({"name": "ci", "scope": "deploy", "project_id": alpha})).await;
    let ci = Some(ci_token.as_str());
    let (_, _, list) = raw(&server, Method::GET, "/api/projects", ci, None).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "only its project: {list}"
    );
    let answer = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{beta}"),
        ci,
        None,
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let empty_upload = server
        .http()
        .post(format!("{}/api/projects/{alpha}/deployments", server.url))
        .bearer_auth(&ci_token)
        .header("content-type", "application/gzip")
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(
        empty_upload.status(),
        StatusCode::BAD_REQUEST,
        "deploying is in scope (the empty body is what fails)"
    );
    let answer = raw(
        &server,
        Method::PATCH,
        &format!("/api/environments/{production}/config"),
        ci,
        Some(json!({"set": {"A": "1"}})),
    )
    .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "token_scope");
    let answer = raw(
        &server,
        Method::POST,
        "/api/tokens",
        ci,
        Some(json!({"name": "escalate"})),
    )
    .await;
    assert_error(&answer, StatusCode::FORBIDDEN, "token_scope");

    let stage = mint(json!({"name": "staging-ops", "environment_id": staging})).await;
    let stage = Some(stage.as_str());
    let (status, _, _) = raw(
        &server,
        Method::PATCH,
        &format!("/api/environments/{staging}/config"),
        stage,
        Some(json!({"set": {"A": "1"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer = raw(
        &server,
        Method::PATCH,
        &format!("/api/environments/{production}/config"),
        stage,
        Some(json!({"set": {"A": "1"}})),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let answer = raw(
        &server,
        Method::DELETE,
        &format!("/api/projects/{alpha}"),
        stage,
        None,
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let (status, _, _) = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{alpha}"),
        stage,
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an environment token may read its project"
    );
    let (_, _, visible) = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{alpha}/environments"),
        stage,
        None,
    )
    .await;
    assert_eq!(visible.as_array().unwrap().len(), 1, "{visible}");

    // A token cannot be bound to someone else's project.
    let answer = raw(
        &server,
        Method::POST,
        "/api/tokens",
        Some(eve.access_token.as_str()),
        Some(json!({"name": "steal", "project_id": alpha})),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn deploy_and_build_quotas_answer_429() {
    let server = TestServer::start_with_quotas(
        Backend::Sqlite,
        ApiConfig::default(),
        Quotas {
            deploys_per_hour: 3,
            concurrent_builds: 1,
        },
    )
    .await;
    let (_, pair) = server.user("ci@example.com").await;
    let token = Some(pair.access_token.as_str());
    let (_, _, project) = raw(
        &server,
        Method::POST,
        "/api/projects",
        token,
        Some(json!({"name": "busy"})),
    )
    .await;
    let project_id: uuid::Uuid = project["id"].as_str().unwrap().parse().unwrap();
    let upload = || {
        server
            .http()
            .post(format!(
                "{}/api/projects/{project_id}/deployments",
                server.url
            ))
            .bearer_auth(&pair.access_token)
            .header("content-type", "application/gzip")
            .body(b"not a tarball".to_vec())
            .send()
    };
    // A build in progress (recorded directly): the next deploy waits for it.
    let (_, _, envs) = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{project_id}/environments"),
        token,
        None,
    )
    .await;
    let env_id: uuid::Uuid = envs[0]["id"].as_str().unwrap().parse().unwrap();
    let stuck = server
        .state
        .store()
        .create_deployment(project_id, env_id, r#"{"kind":"upload"}"#)
        .await
        .unwrap();
    let refused = upload().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "build_quota");
    server
        .state
        .store()
        .transition_deployment(
            stuck,
            gilgal_core::lifecycle::DeploymentState::Failed,
            Some("test"),
        )
        .await
        .unwrap();
    // Three per hour: the stuck one counts, two more are accepted, the next is refused.
    for _ in 0..2 {
        let accepted = upload().await.unwrap();
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
        let id = accepted.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        for _ in 0..100 {
            let (_, _, d) = raw(
                &server,
                Method::GET,
                &format!("/api/deployments/{id}"),
                token,
                None,
            )
            .await;
            if d["state"] == "failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let refused = upload().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "deploy_quota");
}

/// Reads from `stream` until the server closes it; `None` if it is still open after `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_and_connections_beyond_the_cap_are_closed() {
    use tokio::io::AsyncWriteExt as _;
    let server = TestServer::start_with(
        Backend::Sqlite,
        ApiConfig {
            header_read_timeout: Duration::from_millis(800),
            max_connections: 4,
            ..ApiConfig::default()
        },
    )
    .await;
    // Four half-sent requests take every connection slot.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: gilgal\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fifth connection is closed without an answer, even with a complete request.
    let mut surplus = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let _ = surplus
        .write_all(b"GET /health HTTP/1.1\r\nHost: gilgal\r\n\r\n")
        .await;
    let answer = closed_within(&mut surplus, Duration::from_millis(500))
        .await
        .expect("a connection beyond the cap is closed at once");
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The half-sent requests are closed once the head timeout passes.
    for stream in &mut slow {
        let answer = closed_within(stream, Duration::from_secs(3))
            .await
            .expect("a half-sent request is closed within the head timeout");
        assert!(
            !answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Their slots are free again: a normal request works.
    let status = server
        .http()
        .get(format!("{}/health", server.url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
}

/// Uploads still being received count against the build quota before a byte of a second one
/// is written: with one concurrent build allowed, a second upload sent while the first is
/// still arriving is refused at once (429 `build_quota`) and leaves no file; once the first
/// connection is gone its slot is free again.
#[tokio::test]
async fn uploads_in_flight_count_against_the_build_quota() {
    use tokio::io::AsyncWriteExt;

    let server = TestServer::start_with_quotas(
        Backend::Sqlite,
        ApiConfig::default(),
        Quotas {
            concurrent_builds: 1,
            ..Quotas::default()
        },
    )
    .await;
    let (_, pair) = server.user("uploader@example.com").await;
    let (_, _, project) = raw(
        &server,
        Method::POST,
        "/api/projects",
        Some(&pair.access_token),
        Some(json!({"name": "slowpoke"})),
    )
    .await;
    let project_id = project["id"].as_str().unwrap().to_owned();
    let path = format!("/api/projects/{project_id}/deployments");
    // The first upload announces 1 MiB and sends 16 bytes of it.
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: application/gzip\r\nContent-Length: 1048576\r\n\r\n",
        pair.access_token
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&[0x1f; 16]).await.unwrap();
    let uploads = server.state.platform().work_dir().join("uploads");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(&uploads).map_or(0, |d| d.count()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first upload never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let upload = || {
        server
            .http()
            .post(format!("{}{path}", server.url))
            .bearer_auth(&pair.access_token)
            .header("content-type", "application/gzip")
            .body(vec![0x1f; 4096])
            .send()
    };
    let refused = upload().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "build_quota", "{body}");
    assert_eq!(
        std::fs::read_dir(&uploads).unwrap().count(),
        1,
        "only the first upload is on disk"
    );
    // The first client goes away: its slot (and its partial file) go with it.
    drop(slow);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = upload().await.unwrap();
        if answer.status() == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
