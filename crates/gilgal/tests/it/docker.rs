//! The deploy pipeline suite again on the Docker runtime (`gilgal server --runtime docker`):
//! examples, an app with its own Dockerfile, httpbin from PyPI, the crash / no-bind /
//! ignores-SIGTERM fixtures, redeploys under load with zero failed requests, `kill -9`
//! convergence with containers re-adopted by id, one-off runs and config changes.
//!
//! These tests need dockerd and the base images (`scripts/docker-base-images`). Without
//! dockerd they fail, unless `GILGAL_SKIP_DOCKER=1`, which makes them print "skipped" and
//! pass.

use std::collections::HashMap;

use gilgal_docker::bollard::query_parameters::ListContainersOptions;
use gilgal_docker::Docker;

use super::*;

/// A `gilgal server --runtime docker` whose containers are removed when the test ends.
struct DockerServer {
    server: Option<ServerProcess>,
    docker: Docker,
    /// Project ids by name, looked up once: after a restart the stored login names the old
    /// server URL, and ids never change.
    project_ids: std::sync::Mutex<HashMap<String, String>>,
}

impl std::ops::Deref for DockerServer {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        self.server.as_ref().expect("server present until drop")
    }
}

impl std::ops::DerefMut for DockerServer {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        self.server.as_mut().expect("server present until drop")
    }
}

impl DockerServer {
    /// Starts the server with an admin logged in, or `None` when Docker tests are skipped.
    /// Panics (fails the test) when dockerd is unreachable and skipping was not asked for.
    async fn start() -> Option<Self> {
        if std::env::var("GILGAL_SKIP_DOCKER").is_ok_and(|v| v == "1") {
            eprintln!("skipped: GILGAL_SKIP_DOCKER=1 (no Docker tests)");
            return None;
        }
        let docker = match gilgal_docker::connect().await {
            Ok(docker) => docker,
            Err(e) => panic!(
                "dockerd is not reachable ({e}); run scripts/docker-base-images, or set GILGAL_SKIP_DOCKER=1 to skip the Docker tests"
            ),
        };
        let server = ServerProcess::start_with(Backend::Sqlite, &["--runtime", "docker"]).await;
        ok(server.cli(
            &[
                "register",
                "--email",
                "admin@example.com",
                "--password-stdin",
            ],
            Some(PASSWORD),
        ));
        Some(DockerServer {
            server: Some(server),
            docker,
            project_ids: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The namespace this server's containers carry.
    fn namespace(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("data/docker/namespace"))
            .expect("namespace file")
            .trim()
            .to_owned()
    }

    /// The id of project `name`: containers are labelled (and images tagged) with ids.
    fn project_id(&self, name: &str) -> String {
        if let Some(id) = self.project_ids.lock().unwrap().get(name) {
            return id.clone();
        }
        let shown = ok(self.cli(&["--json", "projects", "show", name], None));
        let project: serde_json::Value = serde_json::from_str(shown.trim()).unwrap();
        let id = project["id"].as_str().unwrap().to_owned();
        self.project_ids
            .lock()
            .unwrap()
            .insert(name.to_owned(), id.clone());
        id
    }

    /// Ids of this server's running containers of project `app` (web and workers).
    async fn running_containers(&self, app: &str) -> Vec<String> {
        let filters = HashMap::from([
            (
                "label".to_owned(),
                vec![
                    format!("dev.gilgal.namespace={}", self.namespace()),
                    format!("dev.gilgal.app={}", self.project_id(app)),
                    "dev.gilgal.kind=instance".to_owned(),
                ],
            ),
            ("status".to_owned(), vec!["running".to_owned()]),
        ]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let mut ids: Vec<String> = self
            .docker
            .list_containers(Some(options))
            .await
            .expect("list containers")
            .into_iter()
            .filter_map(|c| c.id)
            .collect();
        ids.sort();
        ids
    }

    /// Image ids of the running containers of `app`.
    async fn running_images(&self, app: &str) -> Vec<String> {
        let mut images = Vec::new();
        for id in self.running_containers(app).await {
            let info = self
                .docker
                .inspect_container(&id, None)
                .await
                .expect("inspect");
            images.push(info.image.unwrap_or_default());
        }
        images
    }

    /// Waits until exactly `count` containers of `app` run, up to `limit`.
    async fn wait_for_containers(&self, app: &str, count: usize, limit: Duration) -> Vec<String> {
        let started = std::time::Instant::now();
        loop {
            let ids = self.running_containers(app).await;
            if ids.len() == count || started.elapsed() > limit {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn deploy(&self, dir: &Path, project: &str) -> Output {
        self.cli(
            &["deploy", dir.to_str().unwrap(), "--project", project],
            None,
        )
    }
}

impl Drop for DockerServer {
    /// Stops the server (it stops its containers), then removes every container of its
    /// namespace so no test leaves containers behind.
    fn drop(&mut self) {
        let namespace = std::fs::read_to_string(self.dir.path().join("data/docker/namespace"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        drop(self.server.take());
        if namespace.is_empty() {
            return;
        }
        let listed = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=dev.gilgal.namespace={namespace}"))
            .output();
        if let Ok(listed) = listed {
            let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .output();
            }
        }
    }
}

/// An app with its own Dockerfile and no Procfile: its `CMD` is the web process. It answers
/// with its environment, so the test can check what an instance gets.
fn dockerfile_app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM gilgal/python:bookworm\n\
         RUN useradd --system --create-home web\n\
         WORKDIR /srv/own\n\
         COPY serve.py ./\n\
         USER web\n\
         CMD [\"python3\", \"/srv/own/serve.py\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("serve.py"),
        "import json, os\n\
         from http.server import BaseHTTPRequestHandler, HTTPServer\n\
         class H(BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       body = json.dumps({'own_dockerfile': True, 'cwd': os.getcwd(), 'env': dict(os.environ)}).encode()\n\
         \x20       self.send_response(200)\n\
         \x20       self.send_header('Content-Length', str(len(body)))\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(body)\n\
         HTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()\n",
    )
    .unwrap();
    dir
}

/// The Python example builds into an image (generated Dockerfile) and serves through the
/// proxy; `gilgal run` returns the one-off's exit code; a config change rolls out a new
/// release on the same image (no rebuild); rollback restores the previous one; an app with
/// its own Dockerfile runs its `CMD` with only config vars, `GILGAL_*`, `PORT` (and `HOST`)
/// from Gilgal and none of the host's PATH/VIRTUAL_ENV; the static example is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_examples_dockerfile_runs_and_config() {
    let Some(server) = DockerServer::start().await else {
        return;
    };
    ok(server.cli(&["projects", "create", "dk-hello"], None));
    let app = example_dir("python-hello");
    let printed = ok(server.deploy(&app, "dk-hello"));
    assert!(
        printed.contains("Deployed v1 to production: http://dk-hello.localhost:"),
        "{printed}"
    );
    let (status, body) = get_via_proxy(&server, "dk-hello.localhost").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"release\": \"v1\""), "{body}");
    assert_eq!(server.running_containers("dk-hello").await.len(), 1);

    // One-off run in the release's image, with its exit code.
    let run = server.cli(
        &[
            "run",
            "-p",
            "dk-hello",
            "--",
            "python3",
            "-c",
            "import os, sys; print('in', os.getcwd()); sys.exit(7)",
        ],
        None,
    );
    assert_eq!(run.status.code(), Some(7), "{}", stderr(&run));
    assert!(stdout(&run).contains("in /app"), "{}", stdout(&run));

    // Config change: new release, same image, new value served.
    let image_v1 = server.running_images("dk-hello").await;
    ok(server.cli(&["env", "set", "GREETING=Hola", "-p", "dk-hello"], None));
    let (_, body) = get_via_proxy(&server, "dk-hello.localhost").await;
    assert!(
        body.contains("Hola") && body.contains("\"release\": \"v2\""),
        "{body}"
    );
    let ids = server
        .wait_for_containers("dk-hello", 1, Duration::from_secs(20))
        .await;
    assert_eq!(ids.len(), 1, "old container retired");
    assert_eq!(
        server.running_images("dk-hello").await,
        image_v1,
        "config change reuses the image"
    );
    ok(server.cli(&["rollback", "-p", "dk-hello"], None));
    let (_, body) = get_via_proxy(&server, "dk-hello.localhost").await;
    assert!(
        body.contains("Hello from Gilgal") && body.contains("\"release\": \"v3\""),
        "rollback restores v1's config: {body}"
    );

    // Own Dockerfile, CMD as the web process.
    ok(server.cli(&["projects", "create", "dk-own"], None));
    let own = dockerfile_app();
    ok(server.cli(&["env", "set", "COLOUR=teal", "-p", "dk-own"], None));
    let out = ok(server.deploy(own.path(), "dk-own"));
    assert!(out.contains("Deployed v1"), "{out}");
    let (status, body) = get_via_proxy(&server, "dk-own.localhost").await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["cwd"], "/srv/own", "the image's WORKDIR");
    let env = &answer["env"];
    assert_eq!(env["COLOUR"], "teal");
    assert_eq!(env["GILGAL_RELEASE"], "v1");
    assert_eq!(env["GILGAL_APP"], "dk-own");
    assert!(env["PORT"].is_string());
    assert!(env.get("VIRTUAL_ENV").is_none(), "{env}");
    let host_path = std::env::var("PATH").unwrap_or_default();
    assert_ne!(env["PATH"].as_str(), Some(host_path.as_str()), "{env}");

    // A static site: the generated image's web process serves it.
    ok(server.cli(&["projects", "create", "dk-site"], None));
    ok(server.deploy(&example_dir("static-site"), "dk-site"));
    let (status, body) = get_via_proxy(&server, "dk-site.localhost").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("Hello from a static site on Gilgal"),
        "{body}"
    );
}

/// Unmodified httpbin from PyPI under gunicorn, built into an image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_httpbin_from_pypi() {
    let Some(server) = DockerServer::start().await else {
        return;
    };
    ok(server.cli(&["projects", "create", "dk-httpbin"], None));
    let out = ok(server.deploy(&fixture_dir("httpbin"), "dk-httpbin"));
    assert!(out.contains("Deployed v1"), "{out}");
    let response = reqwest::Client::new()
        .get(format!("{}/get?probe=1", server.proxy_url))
        .header("host", "dk-httpbin.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echoed["args"]["probe"], "1");
    assert_eq!(
        echoed["headers"]["Host"], "dk-httpbin.localhost",
        "{echoed}"
    );
}

/// Crash on boot: the deploy fails quoting the log tail and the previous release serves.
/// Never binds: fails at the fixture's 3 s boot deadline. Ignores SIGTERM: the replaced
/// container is killed after its 2 s grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_misbehaving_releases() {
    let Some(server) = DockerServer::start().await else {
        return;
    };
    ok(server.cli(&["projects", "create", "dk-stubborn"], None));
    ok(server.deploy(&fixture_dir("ignores-sigterm"), "dk-stubborn"));
    let (status, body) = get_via_proxy(&server, "dk-stubborn.localhost").await;
    assert_eq!((status, body.as_str()), (200, "v1"));

    // Crashes on boot.
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("requirements.txt"), "").unwrap();
    std::fs::write(
        broken.path().join("Procfile"),
        "web: python3 -c \"import sys; print('boom on boot'); sys.exit(3)\"\n",
    )
    .unwrap();
    let failed = server.deploy(broken.path(), "dk-stubborn");
    assert!(!failed.status.success());
    let err = stderr(&failed);
    assert!(err.contains("never became healthy"), "{err}");
    assert!(err.contains("boom on boot"), "log tail quoted: {err}");
    let (status, body) = get_via_proxy(&server, "dk-stubborn.localhost").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "v1"),
        "previous release serves"
    );

    // Never binds its port.
    let started = std::time::Instant::now();
    let failed = server.deploy(&fixture_dir("never-binds"), "dk-stubborn");
    assert!(!failed.status.success());
    let err = stderr(&failed);
    assert!(err.contains("never became healthy"), "{err}");
    assert!(
        err.contains("up, but not listening"),
        "log tail quoted: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the 3 s boot deadline applied"
    );
    let (status, body) = get_via_proxy(&server, "dk-stubborn.localhost").await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    assert_eq!(
        server.running_containers("dk-stubborn").await.len(),
        1,
        "failed releases' containers are gone"
    );

    // Replacing the SIGTERM-ignoring release: killed after its 2 s grace period.
    let started = std::time::Instant::now();
    ok(server.deploy(&example_dir("python-hello"), "dk-stubborn"));
    let ids = server
        .wait_for_containers("dk-stubborn", 1, Duration::from_secs(25))
        .await;
    assert_eq!(ids.len(), 1, "old container killed");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the old release's 2 s grace period was honoured, not the default 30 s"
    );
}

/// Zero downtime on Docker: redeploys while two clients (keep-alive and a new connection per
/// request) hit the app through the proxy; not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_redeploys_under_load_drop_no_request() {
    let Some(server) = DockerServer::start().await else {
        return;
    };
    ok(server.cli(&["projects", "create", "dk-steady"], None));
    let app = example_dir("python-hello");
    ok(server.deploy(&app, "dk-steady"));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for keep_alive in [true, false] {
        let stop = stop.clone();
        let url = format!("{}/", server.proxy_url);
        clients.push(tokio::spawn(async move {
            let mut builder = reqwest::Client::builder();
            if !keep_alive {
                builder = builder.pool_max_idle_per_host(0);
            }
            let client = builder.build().unwrap();
            let (mut ok_count, mut failures) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client
                    .get(&url)
                    .header("host", "dk-steady.localhost")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok_count += 1,
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (ok_count, failures)
        }));
    }
    const ROUNDS: u32 = 6;
    for round in 2..=ROUNDS + 1 {
        let out = ok(server.deploy(&app, "dk-steady"));
        assert!(out.contains(&format!("Deployed v{round}")), "{out}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        let (ok_count, failures) = client.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} failed requests, e.g. {:?}",
            failures.len(),
            failures.first()
        );
        assert!(ok_count > 50, "the client kept sending ({ok_count} ok)");
    }
    let (_, body) = get_via_proxy(&server, "dk-steady.localhost").await;
    assert!(
        body.contains(&format!("\"release\": \"v{}\"", ROUNDS + 1)),
        "{body}"
    );
}

/// `kill -9` of the server: after a restart the running container is re-adopted with the same
/// id (no restart); `kill -9` mid-rollout converges to exactly one serving release, the
/// interrupted deployment settled (live or failed, never stuck), no orphan container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_kill_9_converges_and_readopts() {
    let Some(mut server) = DockerServer::start().await else {
        return;
    };
    ok(server.cli(&["projects", "create", "dk-phoenix"], None));
    let app = example_dir("python-hello");
    ok(server.deploy(&app, "dk-phoenix"));
    let token = ok(server.cli(&["tokens", "create", "check"], None))
        .trim()
        .to_owned();
    let before = server.running_containers("dk-phoenix").await;
    assert_eq!(before.len(), 1);
    let started_at = |info: gilgal_docker::bollard::models::ContainerInspectResponse| {
        info.state.and_then(|s| s.started_at).unwrap_or_default()
    };
    let first_start = started_at(
        server
            .docker
            .inspect_container(&before[0], None)
            .await
            .unwrap(),
    );

    // A plain crash: the same container, never restarted, keeps serving.
    server.crash_and_restart();
    let mut status = 0;
    for _ in 0..100 {
        status = get_via_proxy(&server, "dk-phoenix.localhost").await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "serves after the restart");
    assert_eq!(server.running_containers("dk-phoenix").await, before);
    let again = started_at(
        server
            .docker
            .inspect_container(&before[0], None)
            .await
            .unwrap(),
    );
    assert_eq!(again, first_start, "re-adopted, not restarted");

    // Mid-rollout (the stored login names the old server URL: use the token).
    let accepted = ok(cli_with(
        &server.config_dir(),
        Some(&server.url),
        &[
            "deploy",
            app.to_str().unwrap(),
            "--project",
            "dk-phoenix",
            "--no-follow",
            "--json",
        ],
        None,
        &[("GILGAL_TOKEN", &token)],
    ));
    let deployment: serde_json::Value = serde_json::from_str(&accepted).unwrap();
    let id = deployment["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.crash_and_restart();

    let mut body = String::new();
    for _ in 0..100 {
        let (status, text) = get_via_proxy(&server, "dk-phoenix.localhost").await;
        if status == 200 {
            body = text;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        body.contains("\"release\": \"v"),
        "serves after restart: {body}"
    );
    let record: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/deployments/{id}", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let state = record["state"].as_str().unwrap().to_owned();
    assert!(
        ["live", "failed"].contains(&state.as_str()),
        "interrupted deployment settled, not stuck: {record}"
    );
    let after = server
        .wait_for_containers("dk-phoenix", 1, Duration::from_secs(20))
        .await;
    assert_eq!(after.len(), 1, "one container of the app, no orphans");
    if state == "failed" {
        assert_eq!(after, before, "v1's container re-adopted by id");
    }
}

/// A deploy can name an existing image: built here out of band (as a registry pull would
/// leave it), deployed by reference without a build, served with its CMD, tagged as the
/// release's image so a later release can roll back to it; a missing image fails the deploy
/// with a clear message and the live release keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_deploys_an_existing_image_by_reference() {
    let Some(server) = DockerServer::start().await else {
        return;
    };
    let app = dockerfile_app();
    let reference = format!("gilgal-e2e/prebuilt-{}:1.0", std::process::id());
    let built = Command::new("docker")
        .args(["build", "-q", "-t", &reference])
        .arg(app.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let image_id = String::from_utf8_lossy(&built.stdout).trim().to_owned();

    ok(server.cli(&["projects", "create", "dk-image"], None));
    ok(server.cli(&["env", "set", "COLOUR=plum", "-p", "dk-image"], None));
    let out = ok(server.cli(&["deploy", "--image", &reference, "-p", "dk-image"], None));
    assert!(out.contains("Deployed v1"), "{out}");
    let (status, body) = get_via_proxy(&server, "dk-image.localhost").await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["own_dockerfile"], true);
    assert_eq!(answer["env"]["COLOUR"], "plum");
    assert_eq!(
        server.running_images("dk-image").await,
        vec![image_id.clone()],
        "the container runs exactly the named image"
    );
    let project = server.project_id("dk-image");
    let environments: serde_json::Value = serde_json::from_str(
        ok(server.cli(&["--json", "environments", "list", "-p", "dk-image"], None)).trim(),
    )
    .unwrap();
    let tag = format!(
        "gilgal/app-{project}-{}:v1",
        environments[0]["id"].as_str().unwrap()
    );
    let tagged = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &tag])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&tagged.stdout).trim(), image_id);

    let missing = server.cli(
        &[
            "deploy",
            "--image",
            "gilgal-e2e/no-such-image:9",
            "-p",
            "dk-image",
        ],
        None,
    );
    assert!(!missing.status.success());
    let said = format!("{}{}", stdout(&missing), stderr(&missing));
    assert!(said.contains("no-such-image"), "{said}");
    let (status, _) = get_via_proxy(&server, "dk-image.localhost").await;
    assert_eq!(status, 200, "v1 keeps serving");

    let bad = server.cli(
        &["deploy", "--image", "UPPER/Case;rm", "-p", "dk-image"],
        None,
    );
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("invalid image reference"),
        "{}",
        stderr(&bad)
    );

    let _ = Command::new("docker").args(["rmi", &reference]).output();
}

/// Add-ons are reachable from containers: the FastAPI example, built into an image, runs its
/// Alembic migration in the release phase and reads and writes its managed PostgreSQL
/// database (the add-on listens on the Docker bridge too; the app's DATABASE_URL names
/// `host.docker.internal`), and a Redis add-on answers from inside a container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_apps_reach_their_addons() {
    let Some(server) = DockerServer::start().await else {
        return;
    };
    ok(server.cli(&["projects", "create", "dk-notes"], None));
    ok(server.cli(&["addons", "create", "postgres", "-p", "dk-notes"], None));
    ok(server.cli(&["addons", "create", "redis", "-p", "dk-notes"], None));
    let out = ok(server.deploy(&example_dir("fastapi-notes"), "dk-notes"));
    assert!(out.contains("Deployed v1"), "{out}");
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/notes", server.proxy_url))
        .header("host", "dk-notes.localhost")
        .json(&serde_json::json!({"body": "from a container"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let (status, body) = get_via_proxy(&server, "dk-notes.localhost").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"notes\":1"), "{body}");

    // Redis from inside the app's container, with the URL Gilgal gave it.
    let run = server.cli(
        &[
            "run",
            "-p",
            "dk-notes",
            "--",
            "python3",
            "-c",
            "import os, socket, urllib.parse as u; r = u.urlparse(os.environ['REDIS_URL']); \
             s = socket.create_connection((r.hostname, r.port), timeout=5); \
             s.sendall(b'AUTH ' + r.password.encode() + b'\\r\\nPING\\r\\n'); \
             import time; time.sleep(0.5); print(s.recv(100).decode().split())",
        ],
        None,
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stdout(&run).contains("+PONG"), "{}", stdout(&run));
}
