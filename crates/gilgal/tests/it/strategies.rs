//! Release strategies and edge policies end to end with real app processes: canaries judged
//! against the live release, rolled back on their own when they fail, walked to live when they
//! pass; HTTPS redirect and per-client rate limits.

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gilgal_testkit::Backend;

use super::{cli_with, fixture_dir, ok, stderr, stdout, ServerProcess, PASSWORD};

/// One answer a client saw: which release gave it, its status, and when.
#[derive(Debug, Clone)]
struct Seen {
    release: String,
    status: u16,
    at: Instant,
}

/// Continuous clients through the edge until stopped; every answer recorded.
struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(server: &ServerProcess, host: &str, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, seen, failures) = (stop.clone(), seen.clone(), failures.clone());
                let url = format!("{}/config?name=X", server.proxy_url);
                let host = host.to_owned();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).header("host", &host).send().await {
                            Ok(r) => {
                                let release = r
                                    .headers()
                                    .get("x-release")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("edge")
                                    .to_owned();
                                let status = r.status().as_u16();
                                seen.lock().unwrap().push(Seen {
                                    release,
                                    status,
                                    at: Instant::now(),
                                });
                            }
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            seen,
            failures,
            tasks,
        }
    }

    async fn stop(self) -> (Vec<Seen>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let seen = self.seen.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (seen, failures)
    }
}

fn setup(server: &ServerProcess, project: &str) {
    ok(server.cli(
        &["register", "--email", "ops@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", project], None));
    ok(server.cli(
        &[
            "deploy",
            fixture_dir("config-echo").to_str().unwrap(),
            "-p",
            project,
        ],
        None,
    ));
}

/// A copy of the config-echo fixture answering `fail_percent` % of requests with 500.
fn next_release(fail_percent: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = fixture_dir("config-echo");
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(dir.path().join("fail_percent"), fail_percent.to_string()).unwrap();
    dir
}

/// Runs the CLI in the background (a canary deploy blocks until it settles).
fn cli_in_background(
    server: &ServerProcess,
    args: Vec<String>,
) -> tokio::task::JoinHandle<(Output, Instant)> {
    let (config, url) = (server.config_dir(), server.url.clone());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli_with(&config, Some(&url), &args, None, &[]);
        (out, Instant::now())
    })
}

fn deploy_args(dir: &Path, project: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "deploy".to_owned(),
        dir.to_str().unwrap().to_owned(),
        "-p".to_owned(),
        project.to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// `gilgal canary status --json` once a canary runs and `ready` holds for it.
async fn canary_status_when(
    server: &ServerProcess,
    project: &str,
    within: Duration,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let out = server.cli(&["canary", "status", "-p", project, "--json"], None);
        if out.status.success() {
            let status: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
            if ready(&status) {
                return status;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no canary as expected in {within:?}: {} {}",
            stdout(&out),
            stderr(&out)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn live_release(server: &ServerProcess, project: &str) -> u64 {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&ok(server.cli(&["releases", "-p", project, "--json"], None)))
            .unwrap();
    list.iter().find(|r| r["live"] == true).unwrap()["number"]
        .as_u64()
        .unwrap()
}

/// A canary answering 5 % of its requests with 500 at the 10 % step is rolled back on its
/// own within 30 s of its first 200 requests; requests the live release served never fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_rolled_back_and_the_live_release_never_fails() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "sour");
    let traffic = Traffic::start(&server, "sour.localhost", 4);
    let bad = next_release(5);
    let deploy = cli_in_background(
        &server,
        deploy_args(
            bad.path(),
            "sour",
            &["--canary", "10,50,100", "--interval", "10m"],
        ),
    );
    let (out, ended) = deploy.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (seen, failures) = traffic.stop().await;
    assert!(!out.status.success(), "a failing canary fails the deploy");
    let said = stderr(&out) + &stdout(&out);
    assert!(
        said.contains("canary v2 failed at 10 %") && said.contains("5xx"),
        "{said}"
    );
    assert!(failures.is_empty(), "{failures:?}");
    let stable: Vec<&Seen> = seen.iter().filter(|s| s.release != "v2").collect();
    let canary: Vec<&Seen> = seen.iter().filter(|s| s.release == "v2").collect();
    assert!(
        stable.iter().all(|s| s.status == 200 && s.release == "v1"),
        "the live release answered every one of its requests: {:?}",
        stable.iter().find(|s| s.status != 200 || s.release != "v1")
    );
    assert!(canary.iter().any(|s| s.status == 500), "the canary erred");
    let share = canary.len() as f64 / seen.len() as f64;
    println!(
        "{} requests, {} to the canary ({share:.3}), {} 5xx",
        seen.len(),
        canary.len(),
        canary.iter().filter(|s| s.status == 500).count()
    );
    // Rolled back within 30 s of its first 200 requests (or before it had that many).
    let last_canary = canary.last().unwrap().at;
    if let Some(two_hundredth) = canary.get(199) {
        let after = last_canary.saturating_duration_since(two_hundredth.at);
        assert!(after <= Duration::from_secs(30), "took {after:?}");
    }
    assert!(ended >= last_canary);
    assert_eq!(live_release(&server, "sour"), 1);
    let none = server.cli(&["canary", "status", "-p", "sour"], None);
    assert!(!none.status.success());
    assert!(stderr(&none).contains("no canary"), "{}", stderr(&none));
    let events = ok(server.cli(&["events", "-p", "sour"], None));
    assert!(events.contains("canary v2 failed"), "{events}");
}

/// A healthy canary walks its steps; at each one the measured split over 10,000 requests is
/// within ±3 % of its weight; `promote` moves it past a pause; it ends live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_walks_its_steps_to_live_with_the_weights_it_was_given() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "sweet");
    // A light background load so each step has requests to be judged on.
    let background = Traffic::start(&server, "sweet.localhost", 1);
    let good = next_release(0);
    let deploy = cli_in_background(
        &server,
        deploy_args(
            good.path(),
            "sweet",
            &[
                "--canary",
                "10,pause,25,pause,50,pause,100",
                "--interval",
                "2s",
                "--min-requests",
                "20",
            ],
        ),
    );
    let client = reqwest::Client::new();
    for (weight, step) in [(10u64, 1u64), (25, 3), (50, 5)] {
        canary_status_when(&server, "sweet", Duration::from_secs(120), |s| {
            s["phase"] == "paused" && s["step"] == step
        })
        .await;
        let total = 10_000;
        let mut to_canary = 0u64;
        let mut batch = Vec::new();
        for i in 0..total {
            let client = client.clone();
            let url = format!("{}/config?name=X", server.proxy_url);
            batch.push(tokio::spawn(async move {
                let r = client
                    .get(url)
                    .header("host", "sweet.localhost")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.headers()["x-release"].to_str().unwrap() == "v2"
            }));
            if batch.len() == 16 || i == total - 1 {
                for t in batch.drain(..) {
                    to_canary += u64::from(t.await.unwrap());
                }
            }
        }
        let share = to_canary as f64 / total as f64;
        println!("at {weight} %: {to_canary} of {total} to the canary ({share:.4})");
        assert!(
            (share - weight as f64 / 100.0).abs() <= 0.03,
            "{weight} %: measured {share}"
        );
        let promoted = ok(server.cli(&["canary", "promote", "-p", "sweet"], None));
        assert!(promoted.contains("past its current step"), "{promoted}");
    }
    let (out, _) = deploy.await.unwrap();
    let (seen, failures) = background.stop().await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let said = stderr(&out) + &stdout(&out);
    assert!(said.contains("canary: 100 % passed"), "{said}");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(seen.iter().all(|s| s.status == 200), "no request failed");
    assert_eq!(live_release(&server, "sweet"), 2);
    // Live: every request goes to v2 now.
    for _ in 0..50 {
        let r = client
            .get(format!("{}/config?name=X", server.proxy_url))
            .header("host", "sweet.localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-release"], "v2");
    }
}

/// No traffic: at the deadline the stated policy applies (rollback by default, or proceed),
/// never a canary halted forever. `abort` rolls a paused canary back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_without_traffic_meets_its_policy_and_abort_rolls_back() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "quiet");
    let started = Instant::now();
    let out = server.cli(
        &deploy_args(
            next_release(0).path(),
            "quiet",
            &[
                "--canary",
                "10,100",
                "--interval",
                "1s",
                "--traffic-deadline",
                "2s",
            ],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        None,
    );
    assert!(!out.status.success());
    let said = stderr(&out) + &stdout(&out);
    assert!(
        said.contains("too little traffic") && said.contains("no-traffic policy: rollback"),
        "{said}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(live_release(&server, "quiet"), 1);

    // The same from gilgal.toml, with the other policy.
    let configured = next_release(0);
    let toml = configured.path().join("gilgal.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str(
        "\n[deploy]\nstrategy = \"canary\"\ncanary = \"10,100\"\ninterval_secs = 1\n\
         traffic_deadline_secs = 1\nno_traffic = \"proceed\"\n",
    );
    std::fs::write(&toml, text).unwrap();
    let out = server.cli(
        &deploy_args(configured.path(), "quiet", &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        None,
    );
    let said = stderr(&out) + &stdout(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Deployed v3"), "{said}");
    assert!(
        said.contains("gilgal.toml asks for a canary")
            && said.contains("going on (no-traffic policy: proceed)"),
        "{said}"
    );
    assert_eq!(live_release(&server, "quiet"), 3);

    let paused = next_release(0);
    let deploy = cli_in_background(
        &server,
        deploy_args(
            paused.path(),
            "quiet",
            &[
                "--canary",
                "10,pause,100",
                "--interval",
                "1s",
                "--no-traffic",
                "proceed",
                "--traffic-deadline",
                "0s",
            ],
        ),
    );
    let status = canary_status_when(&server, "quiet", Duration::from_secs(120), |s| {
        s["phase"] == "paused"
    })
    .await;
    assert_eq!(status["release"], 4);
    assert_eq!(status["stable_release"], 3);
    // Scaling during a canary is refused with what to do, never left hanging.
    let refused = server.cli(&["scale", "web=2", "-p", "quiet"], None);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("a canary is in progress"),
        "{}",
        stderr(&refused)
    );
    ok(server.cli(&["canary", "abort", "-p", "quiet"], None));
    let (out, _) = deploy.await.unwrap();
    assert!(!out.status.success());
    assert_eq!(live_release(&server, "quiet"), 3);
    // The aborted canary's instances are gone: only v3 answers.
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let r = client
            .get(format!("{}/config?name=X", server.proxy_url))
            .header("host", "quiet.localhost")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-release"], "v3");
    }
}

/// Share of `count` requests through the edge that release `release` answered (all 200).
async fn share_of(server: &ServerProcess, host: &str, release: &str, count: u32) -> f64 {
    let client = reqwest::Client::new();
    let mut hits = 0;
    for _ in 0..count {
        let r = client
            .get(format!("{}/config?name=X", server.proxy_url))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if r.headers()["x-release"] == release {
            hits += 1;
        }
    }
    f64::from(hits) / f64::from(count)
}

/// A canary survives a `kill -9` of the server: the restarted server resumes it at its
/// recorded step (the split holds, `promote` still works) and it goes live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_resumes_at_its_step_after_the_server_is_killed() {
    let mut server = ServerProcess::start_with_proxy_socket(Backend::Sqlite).await;
    setup(&server, "phoenix");
    let next = next_release(0);
    // Followed by a CLI whose server dies under it: its own outcome does not matter.
    let _follower = cli_in_background(
        &server,
        deploy_args(
            next.path(),
            "phoenix",
            &[
                "--canary",
                "30,pause,100",
                "--interval",
                "1s",
                "--no-traffic",
                "proceed",
                "--traffic-deadline",
                "0s",
            ],
        ),
    );
    let before = canary_status_when(&server, "phoenix", Duration::from_secs(120), |s| {
        s["phase"] == "paused"
    })
    .await;
    assert_eq!(
        (before["step"].as_u64(), before["weight"].as_u64()),
        (Some(1), Some(30))
    );
    server.crash_and_restart();
    // The restarted server listens on a new API port: the CLI logs in to it.
    ok(server.cli(
        &["login", "--email", "ops@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    let after = canary_status_when(&server, "phoenix", Duration::from_secs(60), |s| {
        s["phase"] == "paused"
    })
    .await;
    assert_eq!(after["deployment_id"], before["deployment_id"]);
    assert_eq!(
        (
            after["step"].as_u64(),
            after["weight"].as_u64(),
            after["release"].as_u64()
        ),
        (Some(1), Some(30), Some(2)),
        "{after}"
    );
    let share = share_of(&server, "phoenix.localhost", "v2", 1000).await;
    println!("after the restart {share:.3} of 1000 requests went to the canary");
    assert!((share - 0.30).abs() <= 0.06, "the split holds: {share}");
    ok(server.cli(&["canary", "promote", "-p", "phoenix"], None));
    let deadline = Instant::now() + Duration::from_secs(120);
    while live_release(&server, "phoenix") != 2 {
        assert!(
            Instant::now() < deadline,
            "the resumed canary never went live"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(share_of(&server, "phoenix.localhost", "v2", 100).await, 1.0);
    // The deployment ends (and says so on the timeline) once the old release has drained.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = ok(server.cli(&["events", "-p", "phoenix"], None));
        if events.contains("v2 is live") {
            break;
        }
        assert!(Instant::now() < deadline, "{events}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn token(server: &ServerProcess) -> String {
    let text = std::fs::read_to_string(server.config_dir().join("credentials.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["token"].as_str().unwrap().to_owned()
}

/// HTTPS redirect, HSTS and per-client rate limits are set per environment with the CLI,
/// applied at once, counted exactly, and kept across a new release.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_redirect_and_rate_limits_are_enforced_at_the_edge() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "guarded");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str| {
        client
            .get(format!("{}{path}", server.proxy_url))
            .header("host", "guarded.localhost")
            .send()
    };
    let out = ok(server.cli(&["https", "on", "--hsts", "300", "-p", "guarded"], None));
    assert!(
        out.contains("HTTPS only") && out.contains("max-age=300"),
        "{out}"
    );
    let redirected = get("/config?name=X").await.unwrap();
    assert_eq!(redirected.status(), 308);
    let location = redirected.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        location.starts_with("https://guarded.localhost") && location.ends_with("/config?name=X"),
        "{location}"
    );
    assert!(
        redirected
            .headers()
            .get("strict-transport-security")
            .is_none(),
        "HSTS only over HTTPS"
    );
    ok(server.cli(&["https", "off", "-p", "guarded"], None));
    assert_eq!(get("/").await.unwrap().status(), 200);

    let out = ok(server.cli(
        &["ratelimit", "set", "1/m", "--burst", "10", "-p", "guarded"],
        None,
    ));
    assert!(out.contains("1/min, burst 10"), "{out}");
    let (mut passed, mut refused) = (0, 0);
    for _ in 0..50 {
        let answer = get("/config?name=X").await.unwrap();
        match answer.status().as_u16() {
            200 => passed += 1,
            429 => {
                refused += 1;
                assert!(answer.headers().contains_key("retry-after"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((passed, refused), (10, 40), "exactly the burst passes");
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", server.url))
        .bearer_auth(token(&server))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("gilgal_proxy_rate_limited_total{route=") && !l.contains("_unrouted")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(line.ends_with(" 40"), "{line}");
    // A new release keeps the limit and the buckets.
    ok(server.cli(&["env", "set", "A=1", "-p", "guarded"], None));
    assert_eq!(get("/").await.unwrap().status(), 429);
    // Invalid settings are refused with the reason, and nothing changes.
    let bad = server.cli(&["ratelimit", "set", "10/w", "-p", "guarded"], None);
    assert!(!bad.status.success());
    let bad = server.cli(
        &[
            "ratelimit",
            "set",
            "5000/s",
            "--path",
            "/a b",
            "-p",
            "guarded",
        ],
        None,
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("path_prefix"), "{}", stderr(&bad));
    let out = ok(server.cli(&["ratelimit", "remove", "-p", "guarded"], None));
    assert!(out.contains("no rate limits"), "{out}");
    assert_eq!(get("/").await.unwrap().status(), 200);
}

/// Blue-green: the new release answers on a private hostname first; a failing smoke check
/// leaves the live release serving (no public request ever reaches the new one), a passing
/// one moves all traffic with no failed request; gilgal.toml can ask for it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_checks_the_new_release_privately_before_it_gets_traffic() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "teal");
    let traffic = Traffic::start(&server, "teal.localhost", 2);
    let bad = next_release(100);
    let out = server.cli(
        &deploy_args(
            bad.path(),
            "teal",
            &[
                "--blue-green",
                "--smoke",
                "GET /health 200",
                "--smoke",
                "GET /config 200",
            ],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        None,
    );
    let said = stderr(&out) + &stdout(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("v2 answers at http://v2.teal.localhost"),
        "{said}"
    );
    assert!(
        said.contains("smoke check GET /health 200: passed"),
        "{said}"
    );
    assert!(
        said.contains("smoke check GET /config 200 failed on web.0: it answered 500"),
        "{said}"
    );
    assert_eq!(live_release(&server, "teal"), 1);
    let private = reqwest::Client::new()
        .get(format!("{}/", server.proxy_url))
        .header("host", "v2.teal.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(private.status(), 404, "the private hostname went with it");

    let good = next_release(0);
    let out = ok(server.cli(
        &deploy_args(
            good.path(),
            "teal",
            &["--blue-green", "--smoke", "GET /config?name=X 200"],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        None,
    ));
    assert!(out.contains("Deployed v3"), "{out}");
    assert_eq!(live_release(&server, "teal"), 3);

    // The same from gilgal.toml.
    let configured = next_release(0);
    let toml = configured.path().join("gilgal.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str("\n[deploy]\nstrategy = \"blue-green\"\nsmoke = [\"GET /health 200\"]\n");
    std::fs::write(&toml, text).unwrap();
    let out = server.cli(
        &deploy_args(configured.path(), "teal", &[])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        None,
    );
    let said = stderr(&out) + &stdout(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("gilgal.toml asks for a blue-green deploy")
            && said.contains("v4 answers at http://v4.teal.localhost"),
        "{said}"
    );

    let (seen, failures) = traffic.stop().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(seen.iter().all(|s| s.status == 200), "no request failed");
    assert!(
        seen.iter().all(|s| s.release != "v2"),
        "the release that failed its smoke check never got a public request"
    );
    assert!(seen.iter().any(|s| s.release == "v3"));
}
