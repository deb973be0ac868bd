//! `kill -9` of the server at each step of a rollout (its new instances started, the route
//! switched, the old release draining), ten times each, while a client requests the app
//! without pause. The edge runs as its own process and outlives every kill, so the request
//! in flight at a kill is served too; the test also holds the proxy's socket and hands it to
//! every server it starts, as systemd socket activation does. After each restart the environment converges with no new deploy: one
//! instance of the app runs, the interrupted deployment is settled, and no request failed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gilgal_testkit::Backend;
use serde_json::Value;

use super::{count_processes_with_env, fixture_dir, ok, ServerProcess, PASSWORD};

const HOST: &str = "steps.localhost";
const ROUNDS_PER_STEP: usize = 10;

/// A rollout step and the server log message that says it was reached.
#[derive(Clone, Copy, Debug)]
enum Step {
    InstancesStarted,
    RouteSwitched,
    Draining,
}

impl Step {
    fn reached(self, line: &str, deployment: &str) -> bool {
        match self {
            // The new instance is up and in its (one second long) health gate.
            Step::InstancesStarted => {
                line.contains("\"instance started\"") && line.contains("\"app\":\"steps\"")
            }
            Step::RouteSwitched => line.contains("\"route switched\"") && line.contains(deployment),
            // The old instance gets SIGTERM and keeps serving a second before it exits.
            Step::Draining => {
                line.contains("\"draining the previous release\"") && line.contains(deployment)
            }
        }
    }
}

/// What the continuous client saw.
#[derive(Default)]
struct Traffic {
    served: AtomicU64,
    /// Requests whose connection closed before any response.
    cut: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// Requests the app through the proxy, one new connection each, until `stop`.
async fn request_continuously(proxy: String, traffic: Arc<Traffic>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    while !stop.load(Ordering::Relaxed) {
        let answer = client
            .get(format!("{proxy}/who"))
            .header("host", HOST)
            .send()
            .await;
        match answer {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                let answered = serde_json::from_str::<Value>(&body)
                    .ok()
                    .is_some_and(|who| who["pid"].is_i64());
                if status == 200 && answered {
                    traffic.served.fetch_add(1, Ordering::Relaxed);
                } else {
                    traffic
                        .failures
                        .lock()
                        .unwrap()
                        .push(format!("{status}: {body}"));
                }
            }
            Err(e) if e.is_timeout() => traffic.failures.lock().unwrap().push(e.to_string()),
            Err(_) => {
                traffic.cut.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn api(server: &ServerProcess, token: &str, method: reqwest::Method, path: &str) -> Value {
    let response = reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

/// Waits until `deployment` is settled and exactly one instance of the app runs; returns
/// the deployment's final state.
async fn converged(server: &ServerProcess, token: &str, deployment: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let record = api(
            server,
            token,
            reqwest::Method::GET,
            &format!("/api/deployments/{deployment}"),
        )
        .await;
        let state = record["state"].as_str().unwrap_or_default().to_owned();
        let settled = ["live", "failed", "retired", "cancelled"].contains(&state.as_str());
        let instances = count_processes_with_env("GILGAL_APP=steps");
        if settled && instances == 1 {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "not converged after a restart: deployment {state}, {instances} instances"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_each_rollout_step_converges_and_fails_no_request() {
    let mut server = ServerProcess::start_with_proxy_socket(Backend::Sqlite).await;
    ok(server.cli(
        &["register", "--email", "ops@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "steps"], None));
    let fixture = fixture_dir("rollout-steps");
    let accepted = ok(server.cli(
        &[
            "deploy",
            fixture.to_str().unwrap(),
            "-p",
            "steps",
            "--no-follow",
            "--json",
        ],
        None,
    ));
    let first: Value = serde_json::from_str(&accepted).unwrap();
    // The CLI's stored login names the server's first URL; the token works on the next.
    let token = ok(server.cli(&["tokens", "create", "crash"], None))
        .trim()
        .to_owned();
    let mut live = first["id"].as_str().unwrap().to_owned();
    assert_eq!(converged(&server, &token, &live).await, "live");

    let edge = edge_pid(&server);
    let traffic = Arc::new(Traffic::default());
    let stop = Arc::new(AtomicBool::new(false));
    let client = tokio::spawn(request_continuously(
        server.proxy_url.clone(),
        traffic.clone(),
        stop.clone(),
    ));
    let mut kills = 0u64;
    let mut outcomes = Vec::new();
    for step in [Step::InstancesStarted, Step::RouteSwitched, Step::Draining] {
        for round in 0..ROUNDS_PER_STEP {
            let (ear, lines) = std::sync::mpsc::channel();
            *server.tap.lock().unwrap() = Some(ear);
            let deployment = api(
                &server,
                &token,
                reqwest::Method::POST,
                &format!("/api/deployments/{live}/redeploy"),
            )
            .await;
            let deployment = deployment["id"].as_str().unwrap().to_owned();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = lines
                    .recv_timeout(left)
                    .unwrap_or_else(|_| panic!("{step:?} never reached in round {round}"));
                if step.reached(&line, &deployment) {
                    break;
                }
            }
            server.crash_and_restart();
            kills += 1;
            *server.tap.lock().unwrap() = None;
            let state = converged(&server, &token, &deployment).await;
            if state == "live" {
                live = deployment;
            }
            outcomes.push(format!("{step:?}#{round}: {state}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();

    let failures = traffic.failures.lock().unwrap().clone();
    let served = traffic.served.load(Ordering::Relaxed);
    let cut = traffic.cut.load(Ordering::Relaxed);
    eprintln!("{kills} kills, {served} requests served, {cut} cut by a kill; {outcomes:?}");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(
        cut, 0,
        "the edge process outlives the server: no request may be cut by a kill"
    );
    assert!(served > kills * 10, "the client kept requesting: {served}");
    assert_eq!(
        edge_pid(&server),
        edge,
        "every restarted server adopted the one edge process"
    );
    // The interrupted rollouts settled both ways: killed before the switch they failed and
    // the previous release kept serving; killed while draining, the new release is live.
    assert!(outcomes
        .iter()
        .any(|o| o.starts_with("InstancesStarted") && o.ends_with("failed")));
    assert!(outcomes
        .iter()
        .any(|o| o.starts_with("Draining") && o.ends_with("live")));
}

/// Registers on a fresh server and deploys the `rollout-steps` fixture as `project`.
fn deploy_steps_fixture(server: &ServerProcess, project: &str) {
    ok(server.cli(
        &["register", "--email", "ops@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", project], None));
    let fixture = fixture_dir("rollout-steps");
    ok(server.cli(&["deploy", fixture.to_str().unwrap(), "-p", project], None));
}

/// The edge process's pid, from its pid file.
fn edge_pid(server: &ServerProcess) -> i32 {
    std::fs::read_to_string(server.dir.path().join("data/edge/edge.pid"))
        .expect("the edge writes its pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// GET /who through the proxy: the status and the app's answer.
async fn who(proxy: &str, host: &str) -> Result<(u16, Value), reqwest::Error> {
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .get(format!("{proxy}/who"))
        .header("host", host)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_edge_process_is_restarted_with_every_route_and_loses_no_new_connection() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    // Its own project name: the other test here counts the processes of `steps`.
    deploy_steps_fixture(&server, "edgekill");
    let (status, app) = who(&server.proxy_url, "edgekill.localhost").await.unwrap();
    assert_eq!(status, 200, "{app}");

    let killed = edge_pid(&server);
    // SAFETY: kill(2) on the pid of this test's own edge process.
    assert_eq!(unsafe { libc::kill(killed, libc::SIGKILL) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Sent while no edge runs: the connection waits in the socket's queue (the server keeps
    // a copy of it) and is served by the edge the server starts in its place.
    let started = Instant::now();
    let (status, answered) = who(&server.proxy_url, "edgekill.localhost")
        .await
        .expect("a connection made while the edge was down is served, not refused");
    let waited = started.elapsed();
    assert_eq!(status, 200, "{answered}");
    assert_eq!(
        answered["pid"], app["pid"],
        "the same instance serves: the app was never touched"
    );
    let restarted = edge_pid(&server);
    assert_ne!(restarted, killed, "a new edge process serves");
    eprintln!("served after {waited:?} by edge {restarted} (killed {killed})");
    assert_eq!(count_processes_with_env("GILGAL_APP=edgekill"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_other_edge_settings_replaces_the_edge_and_keeps_the_apps() {
    let mut server = ServerProcess::start(Backend::Sqlite).await;
    deploy_steps_fixture(&server, "edgeswap");
    let (status, app) = who(&server.proxy_url, "edgeswap.localhost").await.unwrap();
    assert_eq!(status, 200, "{app}");
    let first = edge_pid(&server);

    // Restarted with settings the running edge does not have: it is stopped (it drains)
    // and a new one serves every route, from the same app instance.
    server.extra_args.extend([
        "--proxy-trusted-proxies".to_owned(),
        "10.0.0.0/8".to_owned(),
    ]);
    server.crash_and_restart();
    let second = edge_pid(&server);
    assert_ne!(second, first, "the edge was replaced");
    // SAFETY: signal 0 only checks whether the process exists.
    assert_ne!(unsafe { libc::kill(first, 0) }, 0, "the old edge is gone");
    let (status, answered) = who(&server.proxy_url, "edgeswap.localhost").await.unwrap();
    assert_eq!(status, 200, "{answered}");
    assert_eq!(answered["pid"], app["pid"], "the app kept running");
    assert_eq!(count_processes_with_env("GILGAL_APP=edgeswap"), 1);

    // Restarted with the same settings: adopted, not replaced.
    server.crash_and_restart();
    assert_eq!(edge_pid(&server), second, "the edge was adopted");
}

/// Whether process `pid` has exited (a zombie until its parent reaps it, or gone).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// A SIGTERM that reaches a restarted server the moment it says it is ready is a graceful
/// stop (with `--stop-apps-on-exit`: its apps and its edge stop too), never the default
/// action that kills the server and leaves them running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_right_after_ready_stops_the_apps_and_the_edge() {
    let mut server = ServerProcess::start(Backend::Sqlite).await;
    deploy_steps_fixture(&server, "sigterm");
    assert_eq!(count_processes_with_env("GILGAL_APP=sigterm"), 1);
    server.crash_and_restart();
    let edge = edge_pid(&server);
    let pid = server.child.id();
    // SAFETY: kill(2) on this test's own server process, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !exited(pid) {
        assert!(Instant::now() < deadline, "the server did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count_processes_with_env("GILGAL_APP=sigterm"),
        0,
        "the app was stopped"
    );
    // SAFETY: signal 0 only checks whether the process exists.
    assert_ne!(unsafe { libc::kill(edge, 0) }, 0, "the edge was stopped");
}
