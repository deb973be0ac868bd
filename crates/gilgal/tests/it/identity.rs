//! What a project is known by on the machine (files, instances, routes, Unix users) is its
//! immutable id: a renamed project's old name taken by another tenant reaches nothing of it.
//! Deleting a project stops and removes everything it ran: instances, route, add-ons.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gilgal_testkit::Backend;

use super::{cli_with, ok, ServerProcess, PASSWORD};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn token(config: &Path) -> String {
    let text = std::fs::read_to_string(config.join("credentials.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["token"].as_str().unwrap().to_owned()
}

/// One user of the server, with their own CLI config dir.
struct User {
    config: tempfile::TempDir,
}

impl User {
    fn register(server: &ServerProcess, email: &str) -> Self {
        let user = User {
            config: tempfile::tempdir().unwrap(),
        };
        user.cli(
            server,
            &["register", "--email", email, "--password-stdin"],
            Some(PASSWORD),
        );
        user
    }

    fn cli(&self, server: &ServerProcess, args: &[&str], stdin: Option<&str>) -> String {
        ok(cli_with(
            self.config.path(),
            Some(&server.url),
            args,
            stdin,
            &[],
        ))
    }

    fn deploy(&self, server: &ServerProcess, dir: &Path, project: &str) -> String {
        self.cli(
            server,
            &["deploy", dir.to_str().unwrap(), "--project", project],
            None,
        )
    }

    async fn api(
        &self,
        server: &ServerProcess,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", server.url))
            .bearer_auth(token(self.config.path()));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    async fn project_id(&self, server: &ServerProcess, name: &str) -> String {
        let (_, projects) = self
            .api(server, reqwest::Method::GET, "/api/projects", None)
            .await;
        projects
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no project {name} in {projects}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// What the config-echo fixture answers for `WHO` at `host` (status, body).
async fn probe(server: &ServerProcess, host: &str, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.proxy_url))
        .header("host", host)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_default())
}

async fn who(server: &ServerProcess, host: &str) -> serde_json::Value {
    let (status, body) = probe(server, host, "/config?name=WHO").await;
    assert_eq!(status, 200, "{host} answers: {body}");
    body
}

/// The config-echo fixture with one marker line, so two builds differ byte for byte.
fn marked_copy(marker: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("config-echo")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let app = dir.path().join("app.py");
    let mut text = std::fs::read_to_string(&app).unwrap();
    text.push_str(&format!("\n# built for {marker}\n"));
    std::fs::write(&app, text).unwrap();
    dir
}

fn alive(pid: i64) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// User A deploys `alpha` and renames it `beta`; user B creates a new `alpha` and deploys it
/// twice. A's artifact, instance (same process, A's code and secret, at A's hostname), and
/// Unix user are untouched by B's builds, rollouts and retirements, and A's next rollout
/// still runs A's code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_project_keeps_its_files_instances_and_user_from_a_newcomer_with_its_old_name() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    let a = User::register(&server, "a@example.com");
    a.cli(&server, &["projects", "create", "alpha"], None);
    a.cli(
        &server,
        &["env", "set", "WHO=tenant-a", "--secret", "-p", "alpha"],
        None,
    );
    let a_source = marked_copy("tenant a");
    a.deploy(&server, a_source.path(), "alpha");
    let before = who(&server, "alpha.localhost").await;
    assert_eq!(before["value"], "tenant-a");
    let a_file = PathBuf::from(before["file"].as_str().unwrap());
    let a_code = std::fs::read_to_string(&a_file).unwrap();
    assert!(a_code.contains("built for tenant a"));

    let id = a.project_id(&server, "alpha").await;
    let (status, renamed) = a
        .api(
            &server,
            reqwest::Method::PUT,
            &format!("/api/projects/{id}"),
            Some(serde_json::json!({"name": "beta"})),
        )
        .await;
    assert_eq!(status, 200, "{renamed}");

    let b = User::register(&server, "b@example.com");
    b.cli(&server, &["projects", "create", "alpha"], None);
    b.cli(
        &server,
        &["env", "set", "WHO=tenant-b", "--secret", "-p", "alpha"],
        None,
    );
    let b_source = marked_copy("tenant b");
    b.deploy(&server, b_source.path(), "alpha");
    // A second rollout of B's retires B's previous release, and only B's.
    b.deploy(&server, b_source.path(), "alpha");
    let newcomer = who(&server, "alpha.localhost").await;
    assert_eq!(newcomer["value"], "tenant-b");
    assert_eq!(newcomer["release"], "v2");

    // A's instance: the same process, A's code and A's secret, at A's (new) hostname.
    let after = who(&server, "beta.localhost").await;
    assert_eq!(after["value"], "tenant-a", "{after}");
    assert_eq!(after["pid"], before["pid"], "A's instance kept running");
    assert_eq!(after["file"], before["file"]);
    assert!(alive(before["pid"].as_i64().unwrap()));
    // A's artifact: untouched, and not B's.
    let b_file = PathBuf::from(newcomer["file"].as_str().unwrap());
    assert_ne!(a_file.parent(), b_file.parent(), "two artifact directories");
    assert_eq!(std::fs::read_to_string(&a_file).unwrap(), a_code);
    assert!(std::fs::read_to_string(&b_file)
        .unwrap()
        .contains("built for tenant b"));
    // A's Unix user (as root, each app runs as its own).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let (_, a_access) = probe(
            &server,
            "beta.localhost",
            &format!("/access?path={}", a_file.display()),
        )
        .await;
        let (_, b_access) = probe(
            &server,
            "alpha.localhost",
            &format!("/access?path={}", a_file.display()),
        )
        .await;
        assert_ne!(a_access["uid"], b_access["uid"], "two Unix users");
        assert_eq!(a_access["read"], true, "{a_access}");
        assert_eq!(
            b_access["read"], false,
            "B cannot read A's code: {b_access}"
        );
    }

    // A's next rollout (a config change reuses A's artifact) still runs A's code.
    a.cli(&server, &["env", "set", "EXTRA=1", "-p", "beta"], None);
    let rolled = who(&server, "beta.localhost").await;
    assert_eq!(rolled["release"], "v2");
    assert_eq!(rolled["value"], "tenant-a");
    assert_eq!(rolled["file"], before["file"]);
    assert_eq!(std::fs::read_to_string(&a_file).unwrap(), a_code);
    assert_eq!(who(&server, "alpha.localhost").await["value"], "tenant-b");
}

/// The pid in a redis add-on's pid file under the server's data dir, if one is there.
fn redis_pids(data: &Path) -> Vec<(PathBuf, i64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(data.join("addons/redis"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = entry.path();
        if let Ok(text) = std::fs::read_to_string(dir.join("redis.pid")) {
            if let Ok(pid) = text.trim().parse() {
                found.push((dir, pid));
            }
        }
    }
    found
}

/// Deleting an environment removes its add-ons (server and data); deleting a project with a
/// running instance and a redis add-on leaves no app process, no route (the proxy answers
/// 404 for its host) and no add-on server or data; the add-ons' final backups are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_project_stops_its_instances_route_and_addons() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    let owner = User::register(&server, "ops@example.com");
    owner.cli(&server, &["projects", "create", "doomed"], None);
    let data = server.dir.path().join("data");
    owner.cli(
        &server,
        &["environments", "create", "staging", "-p", "doomed"],
        None,
    );
    owner.cli(
        &server,
        &["addons", "create", "redis", "-p", "doomed", "-e", "staging"],
        None,
    );
    let staging_redis = redis_pids(&data);
    assert_eq!(staging_redis.len(), 1, "{staging_redis:?}");
    owner.cli(
        &server,
        &["environments", "delete", "staging", "-p", "doomed", "--yes"],
        None,
    );
    let (staging_dir, staging_pid) = staging_redis[0].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(staging_pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !alive(staging_pid),
        "the environment's redis-server is gone"
    );
    assert!(
        !staging_dir.exists(),
        "the environment's add-on data is gone"
    );

    owner.cli(
        &server,
        &["addons", "create", "redis", "-p", "doomed"],
        None,
    );
    owner.deploy(&server, &fixture("config-echo"), "doomed");
    let running = who(&server, "doomed.localhost").await;
    let app_pid = running["pid"].as_i64().unwrap();
    let redis = redis_pids(&data);
    assert_eq!(redis.len(), 1, "one redis-server: {redis:?}");
    let (redis_dir, redis_pid) = redis[0].clone();
    assert!(alive(app_pid) && alive(redis_pid));
    let project = owner.project_id(&server, "doomed").await;
    let (_, environments) = owner
        .api(
            &server,
            reqwest::Method::GET,
            &format!("/api/projects/{project}/environments"),
            None,
        )
        .await;
    let environment = environments[0]["id"].as_str().unwrap().to_owned();
    let (_, addons) = owner
        .api(
            &server,
            reqwest::Method::GET,
            &format!("/api/environments/{environment}/addons"),
            None,
        )
        .await;
    let addon = addons[0]["id"].as_str().unwrap().to_owned();

    owner.cli(&server, &["projects", "delete", "doomed", "--yes"], None);

    let (status, _) = probe(&server, "doomed.localhost", "/config").await;
    assert_eq!(status, 404, "no route for the deleted project's host");
    let deadline = Instant::now() + Duration::from_secs(10);
    while (alive(app_pid) || alive(redis_pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!alive(app_pid), "the app's process is gone");
    assert!(!alive(redis_pid), "the add-on's redis-server is gone");
    assert!(!redis_dir.exists(), "the add-on's data is gone");
    let backups: Vec<PathBuf> = std::fs::read_dir(data.join("backups"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rdb"))
        .collect();
    assert_eq!(backups.len(), 2, "the final backups are kept: {backups:?}");
    assert!(
        !data.join("releases").join(&project).exists(),
        "its artifacts are gone"
    );
    let (status, _) = owner
        .api(
            &server,
            reqwest::Method::GET,
            &format!("/api/addons/{addon}/backups"),
            None,
        )
        .await;
    assert_eq!(status, 404, "the add-on went with its project");
}
