//! Push-to-deploy end to end: `gilgal webhooks add` against a real server, a git repository,
//! and GitHub-shaped deliveries signed by an independent HMAC implementation (Python's
//! `hmac`), so the receiver is held to what real senders compute.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gilgal_testkit::Backend;

use super::{ok, stdout, ServerProcess, PASSWORD};

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(repo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `sha256=<hex>` of `body` under `secret`, computed by Python's standard library.
fn python_signature(secret: &str, body: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hmac, hashlib, sys; print('sha256=' + hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())",
            secret,
            body,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn push(url: &str, secret: &str, delivery: &str, commit: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "ref": "refs/heads/main",
        "before": "0".repeat(40),
        "after": commit,
        "repository": {"clone_url": "https://example.invalid/x.git"},
        "head_commit": {"id": commit, "message": "change the greeting"},
    })
    .to_string();
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", python_signature(secret, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn release_serving(server: &ServerProcess, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = reqwest::Client::new()
            .get(format!("{}/config?name=X", server.proxy_url))
            .header("host", "hooked.localhost")
            .send()
            .await;
        if let Ok(response) = answer {
            if response.status() == 200 {
                let body: serde_json::Value = response.json().await.unwrap();
                if body["release"] == want {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "release {want} never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_webhook_deploys_each_pushed_commit() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &["register", "--email", "ops@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "hooked"], None));
    let repo = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config-echo");
    for entry in std::fs::read_dir(fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), repo.path().join(entry.file_name())).unwrap();
    }
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "first"]);
    let first = git(repo.path(), &["rev-parse", "HEAD"]);

    let repo_url = format!("file://{}", repo.path().display());
    let added = ok(server.cli(
        &["webhooks", "add", "--repo", &repo_url, "-p", "hooked"],
        None,
    ));
    let field = |label: &str| {
        added
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|v| v.split_whitespace().next().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no {label} in {added}"))
    };
    let url = field("Payload URL:");
    let secret = field("Secret:");
    assert!(
        url.starts_with(&server.url) && url.ends_with("/deliver"),
        "{url}"
    );

    let (status, answer) = push(&url, &secret, "delivery-1", &first).await;
    assert_eq!(status, 202, "{answer}");
    release_serving(&server, "v1").await;

    // A second commit, pushed: v2 serves, without anyone running `gilgal deploy`.
    std::fs::write(repo.path().join("CHANGELOG"), "second\n").unwrap();
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "second"]);
    let second = git(repo.path(), &["rev-parse", "HEAD"]);
    let (status, answer) = push(&url, &secret, "delivery-2", &second).await;
    assert_eq!(status, 202, "{answer}");
    release_serving(&server, "v2").await;

    // The same delivery again, and a forged one: nothing new.
    let (status, answer) = push(&url, &secret, "delivery-2", &second).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("duplicate"))
    );
    let (status, _) = push(&url, "not-the-secret", "delivery-3", &second).await;
    assert_eq!(status, 401);

    let listed = ok(server.cli(&["webhooks", "list", "-p", "hooked"], None));
    let id = listed.split_whitespace().next().unwrap().to_owned();
    let deliveries = stdout(&server.cli(&["webhooks", "deliveries", &id], None));
    assert_eq!(deliveries.lines().count(), 2, "{deliveries}");
    assert!(
        deliveries.contains(&second[..12]) && deliveries.contains("deploying"),
        "{deliveries}"
    );
    let releases = ok(server.cli(&["releases", "-p", "hooked", "--json"], None));
    let releases: serde_json::Value = serde_json::from_str(releases.trim()).unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 2, "{releases}");
    assert!(
        releases.to_string().contains(&second[..7]),
        "the release names the commit: {releases}"
    );

    ok(server.cli(&["webhooks", "remove", &id], None));
    let (status, _) = push(&url, &secret, "delivery-4", &second).await;
    assert_eq!(status, 404);
}
