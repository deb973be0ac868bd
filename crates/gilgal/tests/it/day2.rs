//! Day-two operations end to end: config and secrets (never shown, never logged, sealed in the
//! store), rollback under load, promotion of the exact artifact, scaling, one-off runs, cron
//! across a restart, git sources, redeploy and release pruning.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gilgal_testkit::Backend;

use super::{ok, stderr, stdout, ServerProcess, PASSWORD};

const SECRET: &str = "s3cr3t-Value-9f8e7d6c";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn token(server: &ServerProcess) -> String {
    let text = std::fs::read_to_string(server.config_dir().join("credentials.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["token"].as_str().unwrap().to_owned()
}

async fn api_get(server: &ServerProcess, path: &str) -> String {
    reqwest::Client::new()
        .get(format!("{}{path}", server.url))
        .bearer_auth(token(server))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// What the config-echo fixture reports for `name` via `host`.
async fn probe(server: &ServerProcess, host: &str, name: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .get(format!("{}/config?name={name}", server.proxy_url))
        .header("host", host)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn setup(server: &ServerProcess, project: &str) {
    ok(server.cli(
        &["register", "--email", "ops@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", project], None));
}

fn deploy(server: &ServerProcess, dir: &Path, project: &str, env: &str) -> String {
    ok(server.cli(
        &[
            "deploy",
            dir.to_str().unwrap(),
            "--project",
            project,
            "--env",
            env,
        ],
        None,
    ))
}

/// A load client's result: requests that succeeded, and what failed.
type ClientResult = tokio::task::JoinHandle<(u32, Vec<String>)>;

/// Continuous clients (keep-alive and not) against `host` until stopped; returns failures.
fn load(server: &ServerProcess, host: &'static str) -> (Arc<AtomicBool>, Vec<ClientResult>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for keep_alive in [true, false] {
        let stop = stop.clone();
        let url = format!("{}/config", server.proxy_url);
        clients.push(tokio::spawn(async move {
            let mut builder = reqwest::Client::builder();
            if !keep_alive {
                builder = builder.pool_max_idle_per_host(0);
            }
            let client = builder.build().unwrap();
            let (mut ok_count, mut failures) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).header("host", host).send().await {
                    Ok(r) if r.status() == 200 => ok_count += 1,
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (ok_count, failures)
        }));
    }
    (stop, clients)
}

async fn assert_no_failures(stop: Arc<AtomicBool>, clients: Vec<ClientResult>) {
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let (ok_count, failures) = client.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} failed requests, e.g. {:?}",
            failures.len(),
            failures.first()
        );
        assert!(ok_count > 20, "the client kept sending ({ok_count} ok)");
    }
}

/// Config vars and secrets: a change rolls out a new release; the app sees the secret, but no
/// API response, CLI output, build/release log, run output or stored byte ever shows it.
/// Rollback restores an earlier release's config with zero failed requests; promotion ships
/// staging's exact artifact with production's config.
pub(super) async fn config_secrets_rollback_and_promotion(backend: Backend) {
    let server = ServerProcess::start(backend).await;
    setup(&server, "cfg");
    let app = fixture("config-echo");
    let mut outputs = Vec::new();
    outputs.push(deploy(&server, &app, "cfg", "production"));
    let host = "cfg.localhost";
    assert_eq!(probe(&server, host, "GREETING").await["release"], "v1");

    // A plain var: new release v2, no build.
    let out = server.cli(&["env", "set", "GREETING=hi there", "-p", "cfg"], None);
    outputs.push(stderr(&out));
    assert!(ok(out).contains("Deployed v2"));
    let seen = probe(&server, host, "GREETING").await;
    assert_eq!(seen["value"], "hi there");
    assert_eq!(seen["release"], "v2");

    // A secret: v3; the app gets it.
    let out = server.cli(
        &[
            "env",
            "set",
            &format!("API_TOKEN={SECRET}"),
            "--secret",
            "-p",
            "cfg",
        ],
        None,
    );
    outputs.push(stderr(&out));
    assert!(ok(out).contains("Deployed v3"));
    assert_eq!(probe(&server, host, "API_TOKEN").await["value"], SECRET);

    // A build with the secret set: the release phase prints it, the log shows it redacted.
    let out = server.cli(
        &[
            "deploy",
            app.to_str().unwrap(),
            "--project",
            "cfg",
            "--json",
        ],
        None,
    );
    outputs.push(stderr(&out));
    let printed = ok(out);
    let v4: serde_json::Value = serde_json::from_str(printed.trim()).unwrap();
    assert_eq!(v4["release"], 4);
    outputs.push(printed);
    let build_log = api_get(
        &server,
        &format!("/api/deployments/{}/logs", v4["id"].as_str().unwrap()),
    )
    .await;
    assert!(
        build_log.contains("release sees token [REDACTED]"),
        "release phase output is redacted: {build_log}"
    );
    outputs.push(build_log);

    let listed = ok(server.cli(&["env", "list", "-p", "cfg"], None));
    assert!(listed.contains("API_TOKEN=******** (secret)"), "{listed}");
    assert!(listed.contains("GREETING=hi there"), "{listed}");
    outputs.push(listed);
    outputs.push(ok(server.cli(&["env", "list", "-p", "cfg", "--json"], None)));
    outputs.push(ok(server.cli(&["releases", "-p", "cfg", "--json"], None)));

    // A one-off run sees the secret; its output is redacted and its exit status kept.
    let run = server.cli(
        &[
            "run",
            "-p",
            "cfg",
            "--",
            "python3",
            "-c",
            "import os, sys; print('run sees', os.environ['API_TOKEN']); sys.exit(3)",
        ],
        None,
    );
    assert_eq!(run.status.code(), Some(3), "exit status is passed on");
    assert!(
        stdout(&run).contains("run sees [REDACTED]"),
        "{}",
        stdout(&run)
    );
    outputs.push(stdout(&run));
    outputs.push(stderr(&run));

    // Master key rotation: a new key file, every data key re-wrapped, secrets still open.
    let key_path = server.dir.path().join("data/keys/master.key");
    let before = std::fs::read(&key_path).unwrap();
    let rotated = ok(server.cli(&["admin", "rotate-key"], None));
    assert!(rotated.contains("1 data keys re-wrapped"), "{rotated}");
    assert_ne!(
        std::fs::read(&key_path).unwrap(),
        before,
        "a new master key"
    );
    assert!(!server.dir.path().join("data/keys/master.key.next").exists());
    let run = server.cli(
        &[
            "run",
            "-p",
            "cfg",
            "--",
            "python3",
            "-c",
            "import os; print('secret length', len(os.environ['API_TOKEN']))",
        ],
        None,
    );
    assert_eq!(
        stdout(&run).trim(),
        format!("secret length {}", SECRET.len()),
        "the secret opens after rotation"
    );

    // Every API view of this project.
    let environments = api_get(
        &server,
        &format!(
            "/api/projects/{}/environments",
            project_id(&server, "cfg").await
        ),
    )
    .await;
    let production: Vec<serde_json::Value> = serde_json::from_str(&environments).unwrap();
    let env_id = production[0]["id"].as_str().unwrap().to_owned();
    outputs.push(environments);
    for path in [
        format!("/api/environments/{env_id}/config"),
        format!("/api/environments/{env_id}/releases"),
        format!("/api/environments/{env_id}/runs"),
        format!("/api/environments/{env_id}/formation"),
        format!("/api/deployments/{}", v4["id"].as_str().unwrap()),
        format!("/api/deployments/{}/logs", v4["id"].as_str().unwrap()),
    ] {
        outputs.push(api_get(&server, &path).await);
    }
    let runs: Vec<serde_json::Value> =
        serde_json::from_str(&api_get(&server, &format!("/api/environments/{env_id}/runs")).await)
            .unwrap();
    let run_logs = api_get(
        &server,
        &format!(
            "/api/runs/{}/logs",
            runs.iter()
                .find(|r| r["command"].to_string().contains("run sees"))
                .unwrap()["id"]
                .as_str()
                .unwrap()
        ),
    )
    .await;
    assert!(run_logs.contains("[REDACTED]"), "{run_logs}");
    outputs.push(run_logs);
    for output in &outputs {
        assert!(!output.contains(SECRET), "the secret leaked into: {output}");
    }
    // Nor is it readable in the store.
    if backend == Backend::Sqlite {
        for name in ["gilgal.db", "gilgal.db-wal"] {
            let path = server.dir.path().join("data").join(name);
            if let Ok(bytes) = std::fs::read(&path) {
                assert!(
                    !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                    "{name} holds the secret in plain text"
                );
            }
        }
    }

    // Rollback to v2 (GREETING set, no secret) under continuous load.
    let (stop, clients) = load(&server, "cfg.localhost");
    let started = Instant::now();
    let rolled = ok(server.cli(&["rollback", "v2", "-p", "cfg"], None));
    let mut serving_after = None;
    for _ in 0..100 {
        if probe(&server, host, "API_TOKEN").await["release"] == "v5" {
            serving_after = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let serving_after = serving_after.expect("the rollback release serves");
    eprintln!("rollback to serving: {} ms", serving_after.as_millis());
    assert!(rolled.contains("Deployed v5"), "{rolled}");
    assert_no_failures(stop, clients).await;
    let seen = probe(&server, host, "API_TOKEN").await;
    assert_eq!(
        seen["value"],
        serde_json::Value::Null,
        "v2's config has no secret"
    );
    assert_eq!(probe(&server, host, "GREETING").await["value"], "hi there");
    let listed = ok(server.cli(&["env", "list", "-p", "cfg"], None));
    assert!(
        !listed.contains("API_TOKEN"),
        "the config is now v2's: {listed}"
    );
    let history = ok(server.cli(&["releases", "-p", "cfg"], None));
    assert!(history.contains("Rollback to v2"), "{history}");

    // Promotion: staging's artifact, production's config.
    ok(server.cli(&["environments", "create", "staging", "-p", "cfg"], None));
    deploy(&server, &app, "cfg", "staging");
    ok(server.cli(
        &[
            "env",
            "set",
            "GREETING=from staging",
            "-p",
            "cfg",
            "-e",
            "staging",
        ],
        None,
    ));
    let staging = probe(&server, "cfg-staging.localhost", "GREETING").await;
    assert_eq!(staging["value"], "from staging");
    assert_eq!(staging["env"], "staging");
    let promoted = ok(server.cli(
        &[
            "promote",
            "-p",
            "cfg",
            "--from",
            "staging",
            "--to",
            "production",
        ],
        None,
    ));
    assert!(promoted.contains("Deployed v6 to production"), "{promoted}");
    let production = probe(&server, host, "GREETING").await;
    assert_eq!(
        production["file"], staging["file"],
        "the very same artifact"
    );
    let staging_dir = releases_dir(&server, "cfg", "staging").await;
    let staging_ids: Vec<_> = staging_dir.iter().rev().take(3).collect();
    assert!(
        production["file"].as_str().unwrap().contains(&format!(
            "/{}/{}/{}/",
            staging_ids[2].to_string_lossy(),
            staging_ids[1].to_string_lossy(),
            staging_ids[0].to_string_lossy()
        )),
        "{production}"
    );
    assert_eq!(production["env"], "production");
    assert_eq!(production["value"], "hi there", "production's own config");
}

async fn project_id(server: &ServerProcess, name: &str) -> String {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&api_get(server, "/api/projects").await).unwrap();
    list.iter().find(|p| p["name"] == name).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// An environment's release directory: `releases/<project id>/<environment id>` (ids, never
/// names, so a rename or a re-used name never shares one).
async fn releases_dir(server: &ServerProcess, project: &str, environment: &str) -> PathBuf {
    let pid = project_id(server, project).await;
    let envs: Vec<serde_json::Value> =
        serde_json::from_str(&api_get(server, &format!("/api/projects/{pid}/environments")).await)
            .unwrap();
    let env = envs.iter().find(|e| e["name"] == environment).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    server.dir.path().join("data/releases").join(pid).join(env)
}

/// `gilgal scale` up spreads requests over the new instances; down drains with no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_up_and_down_without_failures() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "wide");
    deploy(&server, &fixture("config-echo"), "wide", "production");
    // A custom domain routes at once; one under the base domain is refused.
    ok(server.cli(&["domains", "add", "www.wide.test", "-p", "wide"], None));
    assert_eq!(probe(&server, "www.wide.test", "X").await["release"], "v1");
    let refused = server.cli(&["domains", "add", "other.localhost", "-p", "wide"], None);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("base domain"),
        "{}",
        stderr(&refused)
    );
    ok(server.cli(&["domains", "remove", "www.wide.test", "-p", "wide"], None));
    let gone = reqwest::Client::new()
        .get(format!("{}/", server.proxy_url))
        .header("host", "www.wide.test")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404, "a removed domain is no longer routed");
    let out = ok(server.cli(&["scale", "web=3", "-p", "wide"], None));
    assert!(out.contains("web=3"), "{out}");
    let mut pids = BTreeSet::new();
    for _ in 0..60 {
        let seen = probe(&server, "wide.localhost", "X").await;
        pids.insert(seen["pid"].as_i64().unwrap());
    }
    assert_eq!(pids.len(), 3, "three instances answer: {pids:?}");
    let (stop, clients) = load(&server, "wide.localhost");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = ok(server.cli(&["scale", "web=1", "-p", "wide"], None));
    assert!(out.contains("web=1"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_no_failures(stop, clients).await;
    // The traffic shows in the metrics: per project as JSON, and for the platform as
    // Prometheus text (administrators).
    let pid = project_id(&server, "wide").await;
    let figures: Vec<serde_json::Value> =
        serde_json::from_str(&api_get(&server, &format!("/api/projects/{pid}/metrics")).await)
            .unwrap();
    let production = &figures[0];
    assert!(
        production["requests"].as_u64().unwrap() > 50,
        "{production}"
    );
    assert_eq!(production["status_classes"]["5xx"], 0);
    assert_eq!(production["error_rate"], 0.0);
    assert!(
        production["p99_seconds"].as_f64().unwrap() > 0.0,
        "{production}"
    );
    let instances = production["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "scaled back to one: {production}");
    assert!(instances[0]["memory_bytes"].as_u64().unwrap() > 1_000_000);
    let text = api_get(&server, "/metrics").await;
    // Routes are keyed by ids (`<project id>/<environment id>`), never by renameable names.
    assert!(
        text.lines().any(|l| l
            .starts_with(&format!("gilgal_proxy_requests_total{{route=\"{pid}/"))
            && l.contains("class=\"2xx\"")),
        "{text}"
    );
    assert!(
        text.contains("gilgal_instance_memory_bytes{app=\"wide\""),
        "{text}"
    );
    assert!(
        text.contains("gilgal_deployments_total{state=\"live\"} 1"),
        "{text}"
    );
    // The one build, desired = running after the scale-down, and the reconciler's lag.
    assert!(
        text.contains("gilgal_build_duration_seconds_count 1\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "gilgal_environment_instances{app=\"wide\",env=\"production\",state=\"desired\"} 1\n"
        ) && text.contains(
            "gilgal_environment_instances{app=\"wide\",env=\"production\",state=\"running\"} 1\n"
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE gilgal_alerts_firing gauge"), "{text}");
    let refused = server.cli(&["scale", "worker=2", "-p", "wide"], None);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("has no worker process"),
        "{}",
        stderr(&refused)
    );
}

/// The environment's runs once at least `count` runs of cron job `job` have ended (run,
/// failed or skipped), polled every second until `within` has passed.
async fn cron_runs_once(
    server: &ServerProcess,
    env: &str,
    job: &serde_json::Value,
    count: usize,
    within: Duration,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let runs: Vec<serde_json::Value> =
            serde_json::from_str(&api_get(server, &format!("/api/environments/{env}/runs")).await)
                .unwrap();
        let ended = runs
            .iter()
            .filter(|r| &r["cron_job_id"] == job && r["state"] != "running")
            .count();
        if ended >= count {
            return runs;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {count} runs of cron job {job} ended within {within:?}: {runs:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A cron job runs once per tick (schedules have minute resolution), skips ticks while a run
/// is still going, and a `kill -9` of the server in between neither repeats nor invents a tick.
/// Takes about three minutes: three ticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cron_fires_once_per_tick_across_a_restart() {
    let mut server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "tick");
    deploy(&server, &fixture("config-echo"), "tick", "production");
    // Seconds are refused: a schedule runs at most once a minute.
    let refused = server.cli(
        &["cron", "add", "* * * * * *", "-p", "tick", "--", "true"],
        None,
    );
    assert!(!refused.status.success(), "a seconds field is refused");
    assert!(
        stderr(&refused).contains("exactly 5 fields"),
        "{}",
        stderr(&refused)
    );
    let added = ok(server.cli(
        &[
            "cron",
            "add",
            "* * * * *",
            "-p",
            "tick",
            "--",
            "python3",
            "-c",
            "print('tick')",
        ],
        None,
    ));
    assert!(added.contains("Scheduled"), "{added}");
    // Outlasts the next tick, which is then skipped.
    ok(server.cli(
        &[
            "cron",
            "add",
            "*/1 * * * *",
            "-p",
            "tick",
            "--",
            "python3",
            "-c",
            "import time; time.sleep(90)",
        ],
        None,
    ));
    let env = {
        let pid = project_id(&server, "tick").await;
        let list: Vec<serde_json::Value> = serde_json::from_str(
            &api_get(&server, &format!("/api/projects/{pid}/environments")).await,
        )
        .unwrap();
        list[0]["id"].as_str().unwrap().to_owned()
    };
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(&api_get(&server, &format!("/api/environments/{env}/cron")).await)
            .unwrap();
    let job =
        |schedule: &str| jobs.iter().find(|j| j["schedule"] == schedule).unwrap()["id"].clone();
    let (ticking, slow) = (job("* * * * *"), job("*/1 * * * *"));
    // Two ticks before the crash (the slow job's second is skipped), one after.
    cron_runs_once(&server, &env, &ticking, 2, Duration::from_secs(150)).await;
    server.crash_and_restart();
    let runs = cron_runs_once(&server, &env, &ticking, 3, Duration::from_secs(90)).await;
    let mut ticks: Vec<i64> = runs
        .iter()
        .filter(|r| r["cron_job_id"] == ticking)
        .map(|r| r["tick"].as_i64().unwrap())
        .collect();
    ticks.sort_unstable();
    let unique: BTreeSet<i64> = ticks.iter().copied().collect();
    assert_eq!(unique.len(), ticks.len(), "no tick ran twice: {ticks:?}");
    assert!(
        ticks.len() >= 3,
        "it kept firing across the restart: {ticks:?}"
    );
    assert!(
        ticks.iter().all(|t| t % 60 == 0),
        "only minute ticks: {ticks:?}"
    );
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] == 60),
        "no tick was lost or invented across the restart: {ticks:?}"
    );
    let succeeded: Vec<&serde_json::Value> = runs
        .iter()
        .filter(|r| r["cron_job_id"] == ticking && r["state"] == "succeeded")
        .collect();
    assert!(succeeded.len() >= 3, "{runs:?}");
    let skipped = runs
        .iter()
        .filter(|r| r["cron_job_id"] == slow && r["state"] == "skipped")
        .count();
    assert!(skipped >= 1, "an overlapping tick is skipped: {runs:?}");
    let output = api_get(
        &server,
        &format!("/api/runs/{}/logs", succeeded[0]["id"].as_str().unwrap()),
    )
    .await;
    assert!(output.contains("\"line\":\"tick\""), "{output}");
}

/// Deploy from a git repository and ref; redeploy a release without a build; only the last
/// three releases keep their artifact, and rolling back to a pruned one is refused clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_source_redeploy_and_pruning() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "gitapp");
    let repo = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("config-echo")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), repo.path().join(entry.file_name())).unwrap();
    }
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(repo.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "first"]);
    let url = format!("file://{}", repo.path().display());
    let out = ok(server.cli(
        &[
            "deploy", "--git", &url, "--ref", "main", "-p", "gitapp", "--json",
        ],
        None,
    ));
    let first: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(first["state"], "live");
    assert_eq!(
        probe(&server, "gitapp.localhost", "X").await["release"],
        "v1"
    );

    let bad = server.cli(&["deploy", "--git", "ext::sh -c id", "-p", "gitapp"], None);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("unsupported git URL"),
        "{}",
        stderr(&bad)
    );

    let out = ok(server.cli(
        &[
            "deploy", "--git", &url, "--ref", "main", "-p", "gitapp", "--json",
        ],
        None,
    ));
    let second: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(second["release"], 2);
    // Redeploy v2: v3 reuses v2's artifact, no build.
    let out = ok(server.cli(&["redeploy", second["id"].as_str().unwrap()], None));
    assert!(out.contains("Deployed v3"), "{out}");
    for round in 4..=5 {
        let out = ok(server.cli(
            &["deploy", "--git", &url, "--ref", "main", "-p", "gitapp"],
            None,
        ));
        assert!(out.contains(&format!("Deployed v{round}")), "{out}");
    }
    // Pruning follows the rollout in the deployment's task: allow it to finish.
    let mut history = String::new();
    let mut pruned: Vec<u64> = Vec::new();
    for _ in 0..100 {
        history = ok(server.cli(&["releases", "-p", "gitapp", "--json"], None));
        let releases: Vec<serde_json::Value> = serde_json::from_str(&history).unwrap();
        pruned = releases
            .iter()
            .filter(|r| r["pruned"] == true)
            .map(|r| r["number"].as_u64().unwrap())
            .collect();
        if pruned == [2, 1] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        pruned,
        vec![2, 1],
        "the last three keep their artifact: {history}"
    );
    let releases_dir = releases_dir(&server, "gitapp", "production").await;
    assert!(
        !releases_dir.join("v1").exists(),
        "v1's artifact is deleted once no release uses it"
    );
    assert!(
        releases_dir.join("v2").exists(),
        "v2's artifact stays while v3 (its redeploy) uses it"
    );
    let refused = server.cli(&["rollback", "v1", "-p", "gitapp"], None);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("pruned"), "{}", stderr(&refused));
    let back = ok(server.cli(&["rollback", "v4", "-p", "gitapp"], None));
    assert!(back.contains("Deployed v6"), "{back}");
    assert_eq!(
        probe(&server, "gitapp.localhost", "X").await["release"],
        "v6"
    );
}

async fn access(server: &ServerProcess, host: &str, path: &Path) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/access", server.proxy_url))
        .query(&[("path", path.to_str().unwrap())])
        .header("host", host)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// As root, each app runs as its own Unix user: it reads its own release but cannot change
/// it, and cannot read another app's release, the database, the keys or the runtime state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_are_isolated_from_each_other_and_from_gilgal() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: per-app users need root (CI runs as root)");
        return;
    }
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "alpha");
    ok(server.cli(&["projects", "create", "beta"], None));
    let app = fixture("config-echo");
    deploy(&server, &app, "alpha", "production");
    deploy(&server, &app, "beta", "production");
    let data = server.dir.path().join("data");
    let own = releases_dir(&server, "alpha", "production")
        .await
        .join("v1");
    let own_file = std::fs::read_dir(&own)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .map(|dir| dir.join("app.py"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| own.join("app/app.py"));
    let seen = access(&server, "alpha.localhost", &own_file).await;
    assert_ne!(seen["uid"], 0, "the app does not run as root: {seen}");
    assert_eq!(seen["read"], true, "it reads its own code: {seen}");
    assert_eq!(
        seen["write_beside"], false,
        "its release is read-only to it: {seen}"
    );
    let beta_uid = access(&server, "beta.localhost", &own_file).await;
    assert_ne!(beta_uid["uid"], seen["uid"], "each app has its own user");
    assert_eq!(
        beta_uid["read"], false,
        "beta cannot read alpha's code: {beta_uid}"
    );
    for private in [
        data.join("gilgal.db"),
        data.join("keys/master.key"),
        data.join("keys/signing.key"),
    ] {
        let seen = access(&server, "alpha.localhost", &private).await;
        assert_eq!(seen["read"], false, "{}: {seen}", private.display());
        assert_eq!(seen["write_beside"], false, "{}: {seen}", private.display());
    }
    let seen = access(&server, "alpha.localhost", &data.join("gilgal.db")).await;
    assert_eq!(
        seen["list_parent"], false,
        "the data dir cannot be listed: {seen}"
    );
    // The runtime's records (which hold config vars) exist, but not for the app.
    let record = first_file(&data.join("runtime")).expect("the runtime keeps records");
    let seen = access(&server, "alpha.localhost", &record).await;
    assert_eq!(seen["read"], false, "{}: {seen}", record.display());
}

fn first_file(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_file() {
            return Some(path);
        }
        if path.is_dir() {
            if let Some(found) = first_file(&path) {
                return Some(found);
            }
        }
    }
    None
}

/// Names, refs, config values and commands full of shell syntax are refused or passed on as
/// one literal argument; the canary file they try to create never appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_attempts_stay_inert() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "inert");
    deploy(&server, &fixture("config-echo"), "inert", "production");
    let canary = server.dir.path().join("canary");
    let c = canary.display().to_string();
    let payloads = [
        format!("; touch {c}"),
        format!("$(touch {c})"),
        format!("`touch {c}`"),
        format!("x\ntouch {c}"),
        format!("-rf {c}"),
    ];
    for name in [
        format!("a; touch {c}"),
        format!("$(touch {c})"),
        "-leading".to_owned(),
    ] {
        let out = server.cli(&["projects", "create", &name], None);
        assert!(
            !out.status.success(),
            "{name:?} was accepted as a project name"
        );
    }
    for reference in [
        format!("--upload-pack=touch {c}"),
        format!("main; touch {c}"),
    ] {
        let out = server.cli(
            &[
                "deploy",
                "--git",
                "https://example.com/x.git",
                &format!("--ref={reference}"),
                "-p",
                "inert",
            ],
            None,
        );
        assert!(!out.status.success());
        assert!(stderr(&out).contains("invalid git ref"), "{}", stderr(&out));
    }
    // Config values reach the app verbatim.
    for (i, payload) in payloads.iter().enumerate() {
        ok(server.cli(
            &["env", "set", &format!("P{i}={payload}"), "-p", "inert"],
            None,
        ));
        assert_eq!(
            probe(&server, "inert.localhost", &format!("P{i}")).await["value"],
            payload.as_str()
        );
    }
    // A NUL byte cannot even be passed as an argument; the API refuses it in values.
    let pid = project_id(&server, "inert").await;
    let envs: Vec<serde_json::Value> =
        serde_json::from_str(&api_get(&server, &format!("/api/projects/{pid}/environments")).await)
            .unwrap();
    let nul = reqwest::Client::new()
        .patch(format!(
            "{}/api/environments/{}/config",
            server.url,
            envs[0]["id"].as_str().unwrap()
        ))
        .bearer_auth(token(&server))
        .json(&serde_json::json!({"set": {"BAD": "a\u{0}b"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(nul.status(), 422);
    // One-off command arguments arrive one each, unexpanded.
    let mut args = vec![
        "run",
        "-p",
        "inert",
        "--",
        "python3",
        "-c",
        "import json, sys; print(json.dumps(sys.argv[1:]))",
    ];
    args.extend(payloads.iter().map(String::as_str));
    let out = ok(server.cli(&args, None));
    let echoed: Vec<String> = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(echoed, payloads.to_vec(), "{out}");
    // Cron commands are stored and run as argument vectors too.
    let mut cron = vec!["cron", "add", "* * * * *", "-p", "inert", "--", "echo"];
    cron.extend(payloads.iter().map(String::as_str));
    ok(server.cli(&cron, None));
    // Minute resolution: wait for its first tick to have run.
    let env = envs[0]["id"].as_str().unwrap();
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(&api_get(&server, &format!("/api/environments/{env}/cron")).await)
            .unwrap();
    let runs = cron_runs_once(&server, env, &jobs[0]["id"], 1, Duration::from_secs(75)).await;
    let echoed = runs
        .iter()
        .find(|r| r["cron_job_id"] == jobs[0]["id"])
        .unwrap();
    assert_eq!(echoed["state"], "succeeded", "{runs:?}");
    assert!(
        !canary.exists(),
        "the canary was created: something reached a shell"
    );
}

/// The answers of `count` requests to `host` through the edge, all expected to be 200.
async fn send_requests(server: &ServerProcess, host: &str, count: u64) {
    let client = reqwest::Client::new();
    for _ in 0..count {
        let response = client
            .get(format!("{}/config?name=X", server.proxy_url))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// Requests a deployment's release answered, as `GET /api/deployments/{id}/metrics` says.
async fn release_requests(server: &ServerProcess, deployment: &str) -> u64 {
    let figures: serde_json::Value = serde_json::from_str(
        &api_get(server, &format!("/api/deployments/{deployment}/metrics")).await,
    )
    .unwrap();
    figures["requests"].as_u64().unwrap()
}

/// The edge counts each release's answers apart: a deployment's figures are its release's
/// alone, the CLI reads them with `--release`, and Prometheus has them labelled by release.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_release_has_its_own_figures() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "split");
    deploy(&server, &fixture("config-echo"), "split", "production");
    let releases = |server: &ServerProcess| -> Vec<serde_json::Value> {
        serde_json::from_str(&ok(server.cli(&["releases", "-p", "split", "--json"], None))).unwrap()
    };
    let v1 = releases(&server)[0]["deployment_id"]
        .as_str()
        .expect("a release names its deployment")
        .to_owned();
    let before = release_requests(&server, &v1).await;
    send_requests(&server, "split.localhost", 20).await;
    assert_eq!(release_requests(&server, &v1).await, before + 20);

    ok(server.cli(&["env", "set", "GREETING=two", "-p", "split"], None));
    let list = releases(&server);
    assert_eq!(list[0]["number"], 2);
    let v2 = list[0]["deployment_id"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    let text = ok(server.cli(&["releases", "-p", "split"], None));
    assert!(
        text.lines()
            .any(|l| l.starts_with("v2 ") && l.contains(&v2))
            && text
                .lines()
                .any(|l| l.starts_with("v1 ") && l.contains(&v1)),
        "the history names each release's deployment: {text}"
    );
    let v1_total = release_requests(&server, &v1).await;
    let v2_before = release_requests(&server, &v2).await;
    send_requests(&server, "split.localhost", 30).await;
    assert_eq!(release_requests(&server, &v2).await, v2_before + 30);
    assert_eq!(
        release_requests(&server, &v1).await,
        v1_total,
        "v1 no longer serves"
    );
    let figures: serde_json::Value =
        serde_json::from_str(&api_get(&server, &format!("/api/deployments/{v2}/metrics")).await)
            .unwrap();
    assert_eq!(figures["release"], 2);
    assert_eq!(figures["status_classes"]["5xx"], 0);

    // The CLI reads one release's figures; a release that does not exist is named.
    let out = ok(server.cli(
        &[
            "metrics",
            "--release",
            "v1",
            "--window",
            "0",
            "-p",
            "split",
            "--json",
        ],
        None,
    ));
    let cli: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli["requests"].as_u64(), Some(v1_total), "{out}");
    let missing = server.cli(&["metrics", "--release", "v9", "-p", "split"], None);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no release v9"),
        "{}",
        stderr(&missing)
    );

    let text = api_get(&server, "/metrics").await;
    let pid = project_id(&server, "split").await;
    let v2_line = text
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "gilgal_proxy_release_requests_total{{route=\"{pid}/"
            )) && l.contains("release=\"v2\",class=\"2xx\"")
        })
        .unwrap_or_else(|| panic!("no v2 series in {text}"));
    let counted: u64 = v2_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(counted, v2_before + 30, "{v2_line}");
    assert!(
        text.contains("gilgal_proxy_release_request_duration_seconds_bucket{route=\""),
        "{text}"
    );
}
