//! Push webhooks: a signed push deploys that exact commit; forged, unsigned, oversized,
//! other-branch, deleted-branch and redelivered pushes deploy nothing; secrets are shown once
//! and webhooks are invisible to strangers.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gilgal_testkit::{backend_tests, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{assert_error, finish, raw};

backend_tests!(
    a_signed_github_push_deploys_the_pushed_commit_once,
    forged_and_malformed_deliveries_change_nothing,
    gitlab_and_generic_senders_and_branch_rules,
    webhooks_are_managed_by_admins_and_hidden_from_strangers,
    git_credentials_are_sealed_and_never_shown
);

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A git repository holding a static site whose page names `marker`; returns the commit.
fn commit_site(repo: &Path, marker: &str) -> String {
    if !repo.join(".git").exists() {
        std::fs::create_dir_all(repo).unwrap();
        git(repo, &["init", "--quiet", "--initial-branch=main"]);
    }
    std::fs::write(
        repo.join("index.html"),
        format!("<!doctype html><title>{marker}</title><p>{marker}</p>\n"),
    )
    .unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "--quiet", "-m", marker]);
    git(repo, &["rev-parse", "HEAD"])
}

struct Fixture {
    server: TestServer,
    token: String,
    project_id: String,
    repo: tempfile::TempDir,
}

async fn fixture(backend: Backend) -> Fixture {
    let server = TestServer::start(backend).await;
    let (_, pair) = server.user("owner@example.com").await;
    let token = pair.access_token;
    let (status, _, project) = raw(
        &server,
        Method::POST,
        "/api/projects",
        Some(&token),
        Some(json!({"name": "site"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    Fixture {
        project_id: project["id"].as_str().unwrap().to_owned(),
        server,
        token,
        repo: tempfile::tempdir().unwrap(),
    }
}

impl Fixture {
    async fn create(&self, provider: &str, branch: &str) -> Value {
        let (status, _, created) = raw(
            &self.server,
            Method::POST,
            "/api/webhooks",
            Some(&self.token),
            Some(json!({
                "project_id": self.project_id,
                "provider": provider,
                "repo_url": format!("file://{}", self.repo.path().display()),
                "branch": branch,
            })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created
    }

    async fn deliver(
        &self,
        webhook: &Value,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (StatusCode, String, Value) {
        let mut request = self
            .server
            .http()
            .post(format!(
                "{}{}",
                self.server.url,
                webhook["receiver_path"].as_str().unwrap()
            ))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        finish(request).await
    }

    async fn deliveries(&self, webhook: &Value) -> Vec<Value> {
        let (status, _, list) = raw(
            &self.server,
            Method::GET,
            &format!(
                "/api/webhooks/{}/deliveries",
                webhook["id"].as_str().unwrap()
            ),
            Some(&self.token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list.as_array().unwrap().clone()
    }

    async fn deployment_count(&self) -> usize {
        let (_, _, envs) = raw(
            &self.server,
            Method::GET,
            &format!("/api/projects/{}/environments", self.project_id),
            Some(&self.token),
            None,
        )
        .await;
        let env = envs[0]["id"].as_str().unwrap();
        let (_, _, releases) = raw(
            &self.server,
            Method::GET,
            &format!("/api/environments/{env}/releases"),
            Some(&self.token),
            None,
        )
        .await;
        releases.as_array().map_or(0, Vec::len)
    }

    async fn wait_settled(&self, deployment: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, _, d) = raw(
                &self.server,
                Method::GET,
                &format!("/api/deployments/{deployment}"),
                Some(&self.token),
                None,
            )
            .await;
            let state = d["state"].as_str().unwrap_or_default().to_owned();
            if ["live", "failed", "cancelled"].contains(&state.as_str()) {
                return d;
            }
            assert!(Instant::now() < deadline, "deployment never settled: {d}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn github_push(branch: &str, commit: &str) -> Vec<u8> {
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0".repeat(40),
        "after": commit,
        "deleted": false,
        "repository": {"clone_url": "https://attacker.example/other.git"},
        "pusher": {"name": "ada"},
        "head_commit": {"id": commit, "message": "ship it"},
    })
    .to_string()
    .into_bytes()
}

fn github_headers(secret: &str, body: &[u8], delivery: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-github-event", "push".to_owned()),
        ("x-github-delivery", delivery.to_owned()),
        (
            "x-hub-signature-256",
            gilgal_webhooks::sign(secret.as_bytes(), body),
        ),
    ]
}

async fn a_signed_github_push_deploys_the_pushed_commit_once(backend: Backend) {
    let f = fixture(backend).await;
    let first = commit_site(f.repo.path(), "first");
    let second = commit_site(f.repo.path(), "second");
    let webhook = f.create("github", "main").await;
    let secret = webhook["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("gilgal_whsec_") && secret.len() > 40);

    // The older commit is deployed even though the branch has moved on: the push names it.
    let body = github_push("main", &first);
    let answer = f
        .deliver(&webhook, &github_headers(&secret, &body, "d-1"), &body)
        .await;
    assert_eq!(answer.0, StatusCode::ACCEPTED, "{answer:?}");
    assert_eq!(answer.2["status"], "deploying");
    let deployment = answer.2["deployment_id"].as_str().unwrap().to_owned();
    let settled = f.wait_settled(&deployment).await;
    assert_eq!(settled["state"], "live", "{settled}");
    let (_, _, logs) = raw(
        &f.server,
        Method::GET,
        &format!("/api/deployments/{deployment}/logs"),
        Some(&f.token),
        None,
    )
    .await;
    let logs = logs.to_string();
    assert!(logs.contains(&first[..12]), "log names the commit: {logs}");
    assert!(!logs.contains("attacker.example"), "payload URL never used");

    // A redelivery of the same delivery id deploys nothing and reports the first outcome.
    let releases = f.deployment_count().await;
    let again = f
        .deliver(&webhook, &github_headers(&secret, &body, "d-1"), &body)
        .await;
    assert_eq!(again.0, StatusCode::OK, "{again:?}");
    assert_eq!(again.2["status"], "duplicate");
    assert_eq!(again.2["deployment_id"], deployment.as_str());
    assert_eq!(f.deployment_count().await, releases);

    // The next push deploys the next commit.
    let body = github_push("main", &second);
    let answer = f
        .deliver(&webhook, &github_headers(&secret, &body, "d-2"), &body)
        .await;
    assert_eq!(answer.0, StatusCode::ACCEPTED, "{answer:?}");
    let settled = f
        .wait_settled(answer.2["deployment_id"].as_str().unwrap())
        .await;
    assert_eq!(settled["state"], "live", "{settled}");
    assert_eq!(settled["release"], 2);

    let deliveries = f.deliveries(&webhook).await;
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    assert_eq!(deliveries[0]["commit"], second.as_str());
    assert_eq!(deliveries[0]["outcome"], "deploying");
    assert_eq!(deliveries[1]["delivery_id"], "d-1");
    assert_eq!(deliveries[1]["deployment_id"], deployment.as_str());
}

async fn forged_and_malformed_deliveries_change_nothing(backend: Backend) {
    let f = fixture(backend).await;
    let commit = commit_site(f.repo.path(), "one");
    let webhook = f.create("github", "main").await;
    let secret = webhook["secret"].as_str().unwrap().to_owned();
    let body = github_push("main", &commit);

    // No signature, a signature under another secret, a signature of another body.
    let unsigned = f
        .deliver(&webhook, &[("x-github-event", "push".to_owned())], &body)
        .await;
    assert_error(&unsigned, StatusCode::UNAUTHORIZED, "missing_signature");
    let forged = f
        .deliver(&webhook, &github_headers("guess", &body, "f-1"), &body)
        .await;
    assert_error(&forged, StatusCode::UNAUTHORIZED, "bad_signature");
    let other_body = github_push("main", &"a".repeat(40));
    let replayed = f
        .deliver(
            &webhook,
            &github_headers(&secret, &body, "f-2"),
            &other_body,
        )
        .await;
    assert_error(&replayed, StatusCode::UNAUTHORIZED, "bad_signature");

    // Signed but malformed: not JSON, a hostile ref, a short commit id.
    for bad in [
        b"{not json".to_vec(),
        json!({"ref": "refs/heads/$(touch /tmp/x)", "after": commit})
            .to_string()
            .into_bytes(),
        json!({"ref": "refs/heads/main", "after": "abc"})
            .to_string()
            .into_bytes(),
    ] {
        let answer = f
            .deliver(&webhook, &github_headers(&secret, &bad, "f-3"), &bad)
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_payload");
    }

    // Oversized bodies are refused before anything else.
    let huge = vec![b' '; gilgal_webhooks::MAX_PAYLOAD_BYTES + 1];
    let answer = f
        .deliver(&webhook, &github_headers(&secret, &huge, "f-4"), &huge)
        .await;
    assert_error(&answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Unknown and malformed webhook ids are plain 404s.
    for path in [
        format!("/api/webhooks/{}/deliver", uuid::Uuid::new_v4()),
        "/api/webhooks/not-a-uuid/deliver".to_owned(),
    ] {
        let answer = finish(
            f.server
                .http()
                .post(format!("{}{path}", f.server.url))
                .body(body.clone()),
        )
        .await;
        assert_eq!(answer.0, StatusCode::NOT_FOUND, "{answer:?}");
    }

    assert_eq!(f.deployment_count().await, 0, "nothing was deployed");
    assert!(f.deliveries(&webhook).await.is_empty(), "nothing recorded");
}

async fn gitlab_and_generic_senders_and_branch_rules(backend: Backend) {
    let f = fixture(backend).await;
    let commit = commit_site(f.repo.path(), "gl");

    let gitlab = f.create("gitlab", "release").await;
    let token = gitlab["secret"].as_str().unwrap().to_owned();
    let push = |branch: &str, after: &str| {
        json!({
            "object_kind": "push",
            "ref": format!("refs/heads/{branch}"),
            "after": after,
            "checkout_sha": after,
            "user_username": "bob",
            "commits": [{"message": "x"}],
        })
        .to_string()
        .into_bytes()
    };
    let headers = |token: &str| {
        vec![
            ("x-gitlab-event", "Push Hook".to_owned()),
            ("x-gitlab-token", token.to_owned()),
        ]
    };
    // Wrong token, then a push to another branch, then a branch deletion: nothing deploys.
    let body = push("release", &commit);
    let answer = f.deliver(&gitlab, &headers("wrong"), &body).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, "bad_signature");
    let answer = f
        .deliver(&gitlab, &headers(&token), &push("main", &commit))
        .await;
    assert_eq!(answer.0, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.2["status"], "ignored");
    let answer = f
        .deliver(&gitlab, &headers(&token), &push("release", &"0".repeat(40)))
        .await;
    assert_eq!(answer.2["status"], "ignored", "{answer:?}");
    assert!(answer.2["reason"].as_str().unwrap().contains("deleted"));
    // A merge request event is acknowledged and ignored.
    let answer = f
        .deliver(
            &gitlab,
            &[
                ("x-gitlab-event", "Merge Request Hook".to_owned()),
                ("x-gitlab-token", token.clone()),
            ],
            b"{}",
        )
        .await;
    assert_eq!(answer.2["status"], "ignored", "{answer:?}");
    assert_eq!(f.deployment_count().await, 0);
    // The right branch deploys.
    let answer = f.deliver(&gitlab, &headers(&token), &body).await;
    assert_eq!(answer.0, StatusCode::ACCEPTED, "{answer:?}");
    let settled = f
        .wait_settled(answer.2["deployment_id"].as_str().unwrap())
        .await;
    assert_eq!(settled["state"], "live", "{settled}");

    // The generic sender: Gilgal's own headers, any CI can produce them with openssl.
    let generic = f.create("generic", "main").await;
    let secret = generic["secret"].as_str().unwrap().to_owned();
    let ping = f
        .deliver(
            &generic,
            &[
                ("x-gilgal-event", "ping".to_owned()),
                (
                    "x-gilgal-signature-256",
                    gilgal_webhooks::sign(secret.as_bytes(), b"{}"),
                ),
            ],
            b"{}",
        )
        .await;
    assert_eq!(ping.0, StatusCode::OK, "{ping:?}");
    assert_eq!(ping.2["status"], "pong");
    let body = json!({"ref": "main", "commit": commit})
        .to_string()
        .into_bytes();
    let answer = f
        .deliver(
            &generic,
            &[
                ("x-gilgal-event", "push".to_owned()),
                (
                    "x-gilgal-signature-256",
                    gilgal_webhooks::sign(secret.as_bytes(), &body),
                ),
            ],
            &body,
        )
        .await;
    assert_eq!(answer.0, StatusCode::ACCEPTED, "{answer:?}");
    let settled = f
        .wait_settled(answer.2["deployment_id"].as_str().unwrap())
        .await;
    assert_eq!(settled["state"], "live", "{settled}");
}

async fn webhooks_are_managed_by_admins_and_hidden_from_strangers(backend: Backend) {
    let f = fixture(backend).await;
    commit_site(f.repo.path(), "x");
    let webhook = f.create("github", "main").await;
    let id = webhook["id"].as_str().unwrap();

    // Listing never shows the secret.
    let (status, _, list) = raw(
        &f.server,
        Method::GET,
        &format!("/api/projects/{}/webhooks", f.project_id),
        Some(&f.token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(list[0].get("secret").is_none(), "{list}");
    assert!(!list.to_string().contains("gilgal_whsec_"));

    // Validation.
    for (body, needle) in [
        (
            json!({"project_id": f.project_id, "provider": "bitbucket", "repo_url": "https://example.com/a.git"}),
            "provider",
        ),
        (
            json!({"project_id": f.project_id, "provider": "github", "repo_url": "ext::sh -c touch% /tmp/pwned"}),
            "git URL",
        ),
        (
            json!({"project_id": f.project_id, "provider": "github", "repo_url": "http://127.0.0.1:9/x.git"}),
            "127.0.0.1",
        ),
        (
            json!({"project_id": f.project_id, "provider": "github", "repo_url": "https://example.com/a.git", "branch": "-x"}),
            "branch",
        ),
        (
            json!({"project_id": f.project_id, "provider": "github", "repo_url": "https://example.com/a.git", "environment": "nope"}),
            "environment",
        ),
    ] {
        let answer = raw(
            &f.server,
            Method::POST,
            "/api/webhooks",
            Some(&f.token),
            Some(body),
        )
        .await;
        assert!(
            answer.0 == StatusCode::UNPROCESSABLE_ENTITY || answer.0 == StatusCode::NOT_FOUND,
            "{answer:?}"
        );
        assert!(
            answer.2["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{needle}: {answer:?}"
        );
    }

    // A stranger learns nothing: every id is a 404, including creating on their project.
    let (_, stranger) = f.server.user("stranger@example.com").await;
    let stranger = stranger.access_token;
    for (method, path, body) in [
        (Method::GET, format!("/api/webhooks/{id}/deliveries"), None),
        (Method::DELETE, format!("/api/webhooks/{id}"), None),
        (
            Method::GET,
            format!("/api/projects/{}/webhooks", f.project_id),
            None,
        ),
        (
            Method::POST,
            "/api/webhooks".to_owned(),
            Some(
                json!({"project_id": f.project_id, "provider": "github", "repo_url": "https://example.com/a.git"}),
            ),
        ),
    ] {
        let answer = raw(&f.server, method, &path, Some(&stranger), body).await;
        assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    }

    // Deleting it makes its receiver a 404.
    let (status, _, _) = raw(
        &f.server,
        Method::DELETE,
        &format!("/api/webhooks/{id}"),
        Some(&f.token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let answer = f.deliver(&webhook, &[], b"{}").await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
}

async fn git_credentials_are_sealed_and_never_shown(backend: Backend) {
    let f = fixture(backend).await;
    let secret = "ghs_n0tForV1ewers";
    // 192.0.2.0/24 is public (documentation) space: it passes the SSRF check unfetched.
    let with_credential = format!("https://x-access-token:{secret}@192.0.2.1/acme/site.git");
    let (status, _, created) = raw(
        &f.server,
        Method::POST,
        "/api/webhooks",
        Some(&f.token),
        Some(json!({
            "project_id": f.project_id,
            "provider": "github",
            "repo_url": with_credential,
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(!created.to_string().contains(secret), "{created}");
    assert_eq!(created["repo_url"], "https://192.0.2.1/acme/site.git");
    // Stored without the credential; the credential is sealed.
    let id = created["id"].as_str().unwrap().parse().unwrap();
    let record = f.server.state.store().webhook(id).await.unwrap();
    assert_eq!(record.repo_url, "https://192.0.2.1/acme/site.git");
    let sealed = record
        .git_credential_sealed
        .expect("credential kept sealed");
    assert!(!sealed.contains(secret));

    // A row written before credentials were split off is shown without it too.
    let legacy_id = uuid::Uuid::new_v4();
    f.server
        .state
        .store()
        .create_webhook(&gilgal_store::NewWebhook {
            id: legacy_id,
            project_id: f.project_id.parse().unwrap(),
            environment_id: record.environment_id,
            provider: "github",
            repo_url: &with_credential,
            branch: "main",
            secret_sealed: &record.secret_sealed,
            git_credential_sealed: None,
            created_by: record.created_by.unwrap(),
        })
        .await
        .unwrap();
    let (status, _, listed) = raw(
        &f.server,
        Method::GET,
        &format!("/api/projects/{}/webhooks", f.project_id),
        Some(&f.token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert!(!listed.to_string().contains(secret), "{listed}");

    // A git deploy with the credential: neither the log nor the deployment shows it.
    let (status, _, deployment) = raw(
        &f.server,
        Method::POST,
        &format!("/api/projects/{}/deployments", f.project_id),
        Some(&f.token),
        Some(json!({"url": with_credential, "ref": "main"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deployment}");
    let deployment_id = deployment["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = f
            .server
            .http()
            .get(format!(
                "{}/api/deployments/{deployment_id}/logs",
                f.server.url
            ))
            .bearer_auth(&f.token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if log.contains("fetch") || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(log.contains("https://192.0.2.1/acme/site.git"), "{log}");
    assert!(!log.contains(secret), "{log}");
    let stored = f
        .server
        .state
        .store()
        .deployment_by_id(deployment_id.parse().unwrap())
        .await
        .map(|record| record.source);
    let _ = raw(
        &f.server,
        Method::POST,
        &format!("/api/deployments/{deployment_id}/cancel"),
        Some(&f.token),
        None,
    )
    .await;
    let (_, _, shown) = raw(
        &f.server,
        Method::GET,
        &format!("/api/deployments/{deployment_id}"),
        Some(&f.token),
        None,
    )
    .await;
    assert!(!shown.to_string().contains(secret), "{shown}");
    let stored = stored.unwrap();
    assert!(stored.contains("192.0.2.1"), "{stored}");
    assert!(!stored.contains(secret), "{stored}");
}
