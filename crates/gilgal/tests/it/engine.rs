//! The rollout engine's rule holds whoever starts a rollout: a new instance that fails its
//! health gate gets no traffic, and the failure is reported. A scale-up, a health
//! replacement and the recovery after a restart each meet an instance that boots sick (the
//! `boot-gated` fixture finds a marker file in its release directory at boot), while every
//! request through the proxy is checked for who answered it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gilgal_testkit::Backend;
use serde_json::Value;

use super::{ok, stderr, ServerProcess, PASSWORD};

const HOST: &str = "gated.localhost";

/// Registers, creates project `gated` and deploys the fixture; returns the directory its
/// release runs from (where the marker goes).
fn deploy_gated(server: &ServerProcess) -> PathBuf {
    ok(server.cli(
        &["register", "--email", "ops@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "gated"], None));
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/boot-gated");
    ok(server.cli(&["deploy", fixture.to_str().unwrap(), "-p", "gated"], None));
    let releases = server.dir.path().join("data/releases");
    let found = super::build_isolation::find_named(&releases, "app.py");
    assert_eq!(found.len(), 1, "one release of the fixture: {found:?}");
    found[0].parent().unwrap().to_owned()
}

/// From now on, instances that start find the marker and boot sick.
fn new_instances_boot_sick(app_dir: &Path, sick: bool) {
    let marker = app_dir.join("sick-on-boot");
    if sick {
        std::fs::write(&marker, b"").unwrap();
    } else {
        std::fs::remove_file(&marker).unwrap();
    }
}

/// One request through the proxy: its status and, when an instance answered, who it was.
async fn who_answers(server: &ServerProcess) -> (u16, Option<Value>) {
    let response = reqwest::Client::new()
        .get(format!("{}/who", server.proxy_url))
        .header("host", HOST)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).ok())
}

/// `count` requests; every one that an instance answered names an instance that booted
/// healthy. Returns the pids that answered.
async fn no_sick_instance_answers(server: &ServerProcess, count: usize) -> Vec<i64> {
    let mut pids = Vec::new();
    for _ in 0..count {
        let (status, who) = who_answers(server).await;
        if let Some(who) = who {
            assert_eq!(who["sick_on_boot"], false, "a sick instance got traffic");
            pids.push(who["pid"].as_i64().unwrap());
        } else {
            assert_ne!(status, 200, "an answer without an instance");
        }
    }
    pids
}

/// The CLI's token. The stored login names the server's first address; the token also works
/// on the server restarted on a new one.
fn token(server: &ServerProcess) -> String {
    let credentials =
        std::fs::read_to_string(server.config_dir().join("credentials.json")).expect("logged in");
    let credentials: Value = serde_json::from_str(&credentials).unwrap();
    credentials["token"].as_str().unwrap().to_owned()
}

fn events(server: &ServerProcess) -> Vec<Value> {
    let text = ok(super::cli_with(
        &server.config_dir(),
        Some(&server.url),
        &["--json", "events", "-p", "gated", "-n", "200"],
        None,
        &[("GILGAL_TOKEN", &token(server))],
    ));
    let all: Value = serde_json::from_str(&text).unwrap();
    all["events"].as_array().unwrap().clone()
}

async fn wait_event(server: &ServerProcess, kind: &str, needle: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all = events(server);
        if let Some(event) = all
            .iter()
            .find(|e| e["kind"] == kind && e["message"].as_str().unwrap().contains(needle))
        {
            return event.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event with {needle:?} in {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every one of 10 requests is answered by an instance other than `not`.
async fn wait_served_by_another(server: &ServerProcess, not: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pids = no_sick_instance_answers(server, 10).await;
        if pids.len() == 10 && pids.iter().all(|p| *p != not) {
            return pids[0];
        }
        assert!(Instant::now() < deadline, "still answered by {pids:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn api_json(server: &ServerProcess, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.url))
        .bearer_auth(token(server))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

/// The web count the environment asks for (unset: the release's default, 1) and the number
/// running.
async fn web_formation(server: &ServerProcess) -> (u64, u64) {
    let projects = api_json(server, "/api/projects").await;
    let project = projects
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "gated")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let environments = api_json(server, &format!("/api/projects/{project}/environments")).await;
    let environment = &environments.as_array().unwrap()[0];
    let desired = environment["formation"]["web"].as_u64().unwrap_or(1);
    let id = environment["id"].as_str().unwrap();
    let running = api_json(server, &format!("/api/environments/{id}/formation")).await;
    (desired, running["counts"]["web"].as_u64().unwrap_or(0))
}

/// A scale-up whose new instance fails its health gate is refused with the reason; the new
/// instance never got a request, it is gone, and the formation is what it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_whose_new_instance_is_unhealthy_routes_nothing_to_it() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    let app_dir = deploy_gated(&server);
    let before = no_sick_instance_answers(&server, 10).await;
    assert_eq!(before.len(), 10, "v1 serves");
    new_instances_boot_sick(&app_dir, true);

    let scaled = server.cli(&["scale", "web=2", "-p", "gated"], None);
    assert!(!scaled.status.success(), "the scale-up was refused");
    assert!(
        stderr(&scaled).contains("never became healthy"),
        "{}",
        stderr(&scaled)
    );
    let after = no_sick_instance_answers(&server, 20).await;
    assert_eq!(after.len(), 20);
    assert!(after.iter().all(|pid| *pid == before[0]), "{after:?}");
    assert_eq!(web_formation(&server).await, (1, 1));
    wait_event(
        &server,
        "scale",
        "scaling failed, the formation is unchanged",
    )
    .await;
}

/// A health replacement whose successor fails its gate leaves the successor without traffic
/// and records why; once successors boot healthy, the sick instance is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_replacement_whose_successor_is_unhealthy_routes_nothing_to_it() {
    let server = ServerProcess::start_with(Backend::Sqlite, &["--health-interval-ms", "300"]).await;
    let app_dir = deploy_gated(&server);
    let original = no_sick_instance_answers(&server, 1).await[0];
    new_instances_boot_sick(&app_dir, true);
    let turned = reqwest::Client::new()
        .get(format!("{}/sick", server.proxy_url))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(turned.status(), 200);

    wait_event(&server, "health", "replacing it").await;
    let failed = wait_event(&server, "health", "failed: release v1 never became healthy").await;
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("got no traffic"),
        "{failed}"
    );
    let meanwhile = no_sick_instance_answers(&server, 20).await;
    assert_eq!(meanwhile.len(), 20, "the sick instance kept its place");
    assert!(
        meanwhile.iter().all(|pid| *pid == original),
        "{meanwhile:?}"
    );

    new_instances_boot_sick(&app_dir, false);
    wait_served_by_another(&server, original).await;
    assert_eq!(web_formation(&server).await, (1, 1));
}

/// After a crash of the server and of one of the app's two instances, recovery meets a
/// successor that boots sick: it gets no traffic and the failure is on the timeline, while
/// the surviving instance is routed again (one slot that cannot be filled keeps no healthy
/// one off the edge). Once successors boot healthy, the health watch restores both slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_whose_new_instance_is_unhealthy_routes_nothing_to_it() {
    let mut server =
        ServerProcess::start_with(Backend::Sqlite, &["--health-interval-ms", "300"]).await;
    let app_dir = deploy_gated(&server);
    ok(server.cli(&["scale", "web=2", "-p", "gated"], None));
    let mut pids = no_sick_instance_answers(&server, 10).await;
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 2, "two instances serve: {pids:?}");
    let (lost, survivor) = (pids[0], pids[1]);
    new_instances_boot_sick(&app_dir, true);

    // The server dies first (so nothing restarts the instance), then one instance.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let pid = i32::try_from(lost).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is the instance's, which
    // this test had the server start.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    server.crash_and_restart();

    // The runtime restarts the lost instance as it re-adopts it; it boots sick, fails the
    // gate every instance the edge does not route yet must pass, and so does its successor.
    wait_event(&server, "recovery", "never became healthy").await;
    let answered = no_sick_instance_answers(&server, 20).await;
    assert_eq!(answered, vec![survivor; 20], "only the survivor serves");

    new_instances_boot_sick(&app_dir, false);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut serving = no_sick_instance_answers(&server, 10).await;
        serving.sort_unstable();
        serving.dedup();
        if serving.len() == 2 {
            assert!(serving.contains(&survivor), "{serving:?}");
            assert!(!serving.contains(&lost), "{serving:?}");
            break;
        }
        assert!(Instant::now() < deadline, "still served by {serving:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The sick instance drains (its grace period) once its successor is routed, then stops.
    let deadline = Instant::now() + Duration::from_secs(30);
    while web_formation(&server).await != (2, 2) {
        assert!(
            Instant::now() < deadline,
            "{:?} instances",
            web_formation(&server).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long a lingering step sleeps: long enough to be cancelled, and a number no other test
/// uses, so the processes it leaves are found by their command line.
const LINGER: &str = "121.5";

/// Processes whose command line names [`LINGER`]: what a cancelled step must not leave.
fn lingering_processes() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(LINGER) && !cmdline.contains("gilgal") {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// A copy of the fixture whose new deployment lingers in `step`: a build command, a release
/// phase or a web process that never becomes ready, each sleeping.
fn lingering_copy(step: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/boot-gated");
    for file in ["app.py", "requirements.txt"] {
        std::fs::copy(fixture.join(file), dir.path().join(file)).unwrap();
    }
    let (procfile, extra) = match step {
        "building" => (
            "web: python3 app.py\n",
            format!("[build]\ncommand = \"sleep {LINGER}\"\n"),
        ),
        "releasing" => (
            "web: python3 app.py\n",
            format!("[release]\ncommand = \"sleep {LINGER}\"\n"),
        ),
        _ => (
            "web: python3 -c 'import time; time.sleep(121.5)'\n",
            String::new(),
        ),
    };
    std::fs::write(dir.path().join("Procfile"), procfile).unwrap();
    std::fs::write(
        dir.path().join("gilgal.toml"),
        format!(
            "grace_period_secs = 1\n\n[healthcheck]\npath = \"/health\"\nboot_deadline_secs = 120\n\n{extra}"
        ),
    )
    .unwrap();
    dir
}

/// `gilgal deployments cancel` stops a deployment in its build, its release phase, or while
/// its new instances start and wait for their health gate: the deployment ends cancelled,
/// nothing of it keeps running, and the release that was live serves every request meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_at_each_step_leaves_the_previous_release_serving() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    deploy_gated(&server);
    let live = no_sick_instance_answers(&server, 1).await[0];
    for step in ["building", "releasing", "starting"] {
        let source = lingering_copy(step);
        let mut deploying = std::process::Command::new(super::BIN)
            .args(["--server", &server.url])
            .args(["deploy", source.path().to_str().unwrap(), "-p", "gated"])
            .env("GILGAL_CONFIG_DIR", server.config_dir())
            .env_remove("GILGAL_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = deploying.stderr.take().unwrap();
        let id = {
            use std::io::BufRead;
            std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .find_map(|line| {
                    line.strip_prefix("Deployment ")
                        .and_then(|rest| rest.split_whitespace().next())
                        .map(str::to_owned)
                })
                .expect("the CLI names the deployment")
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let record = api_json(&server, &format!("/api/deployments/{id}")).await;
            if record["state"] == step {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{step}: the deployment never got there: {record}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The step is under way once its process runs.
        let deadline = Instant::now() + Duration::from_secs(60);
        while lingering_processes().is_empty() {
            assert!(
                Instant::now() < deadline,
                "{step}: its process never started"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("{step}: cancelling {id} while {:?}", lingering_processes());
        let cancelled = ok(server.cli(&["deployments", "cancel", &id], None));
        eprintln!("{step}: {cancelled}");
        assert!(cancelled.contains("Cancelled deployment"), "{cancelled}");
        let record = api_json(&server, &format!("/api/deployments/{id}")).await;
        assert_eq!(record["state"], "cancelled", "{step}: {record}");
        let status = deploying.wait().unwrap();
        assert!(
            !status.success(),
            "{step}: the deploy command reports the cancel"
        );

        let answered = no_sick_instance_answers(&server, 10).await;
        assert_eq!(answered, vec![live; 10], "{step}: v1 kept serving alone");
        assert_eq!(web_formation(&server).await, (1, 1), "{step}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = lingering_processes();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{step}: the cancelled step left {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
