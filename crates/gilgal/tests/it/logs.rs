//! Persistent logs end to end: a real app's output, build, release-phase and proxy access
//! lines are kept
//! per environment with release, process type and JSON fields; `gilgal logs` searches and
//! follows them; they survive a redeploy and a server crash; and a chatty app printing
//! 100,000 lines/s neither stalls the API nor loses lines uncounted. Metrics over a window;
//! health checks after the deploy, the events timeline and uptime; error grouping.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gilgal_testkit::Backend;
use serde_json::Value;

use super::{fails_with, ok, ServerProcess, BIN, PASSWORD};

const HOST: &str = "chatty.localhost";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn token(server: &ServerProcess) -> String {
    let text = std::fs::read_to_string(server.config_dir().join("credentials.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    value["token"].as_str().unwrap().to_owned()
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

/// `gilgal logs --json -p chatty ARGS`, parsed, without Gilgal's notes about dropped lines
/// (they pass every filter, and the chatty part of the test may cause some).
fn logs(server: &ServerProcess, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["logs", "--json", "-p", "chatty"];
    all.extend_from_slice(args);
    ok(server.cli(&all, None))
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("one JSON line each"))
        .filter(|line| line["dropped"].is_null())
        .collect()
}

/// Retries `logs(args)` until `done` holds (lines reach the store within a poll or two).
async fn wait_logs(
    server: &ServerProcess,
    args: &[&str],
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = logs(server, args);
        if done(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "logs {args:?} never became as expected: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn app_get(server: &ServerProcess, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.proxy_url))
        .header("host", HOST)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn texts(lines: &[Value]) -> Vec<&str> {
    lines.iter().filter_map(|l| l["line"].as_str()).collect()
}

gilgal_testkit::backend_tests!(
    logs_persist_search_follow_and_count_drops,
    unhealthy_instances_are_replaced_and_events_and_uptime_are_kept,
    metrics_over_a_window_show_errors_and_slow_requests,
);

async fn logs_persist_search_follow_and_count_drops(backend: Backend) {
    let mut server = ServerProcess::start(backend).await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "logs@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "chatty"], None));
    ok(server.cli(
        &[
            "deploy",
            fixture("chatty").to_str().unwrap(),
            "--project",
            "chatty",
        ],
        None,
    ));

    // Build output, the release phase and the app's own lines, each with its process type;
    // the app's JSON line is kept with its fields.
    let all = wait_logs(&server, &["-n", "1000"], |lines| {
        texts(lines).iter().any(|t| t.contains("booted"))
    })
    .await;
    assert!(
        all.iter().any(|l| l["process_type"] == "build"),
        "build lines: {all:?}"
    );
    let release_phase: Vec<&Value> = all
        .iter()
        .filter(|l| l["process_type"] == "release")
        .collect();
    assert_eq!(
        texts(&release_phase.into_iter().cloned().collect::<Vec<_>>()),
        ["release phase ran"]
    );
    let booted = all
        .iter()
        .find(|l| l["line"].as_str().is_some_and(|t| t.contains("booted")))
        .unwrap();
    assert_eq!(booted["process_type"], "web");
    assert_eq!(booted["release"], 1);
    assert_eq!(booted["stream"], "stdout");
    assert_eq!(booted["fields"]["level"], "info");
    assert_eq!(booted["fields"]["release"], "v1");
    assert!(booted["instance"].as_str().is_some_and(|i| !i.is_empty()));

    // Search: by text, by process type, by time; bad filters are one-line errors.
    assert_eq!(app_get(&server, "/log?text=needle-one").await.0, 200);
    assert_eq!(app_get(&server, "/log?text=hay").await.0, 200);
    let found = wait_logs(&server, &["--type", "web", "--grep", "needle"], |lines| {
        !lines.is_empty()
    })
    .await;
    assert_eq!(texts(&found), ["needle-one"]);
    // The proxy's access log line for that request, with its facts as fields.
    let routed = wait_logs(
        &server,
        &["--type", "router", "--grep", "needle-one"],
        |l| !l.is_empty(),
    )
    .await;
    assert_eq!(routed.len(), 1, "{routed:?}");
    assert!(
        routed[0]["line"]
            .as_str()
            .unwrap()
            .starts_with("GET /log?text=needle-one 200 "),
        "{routed:?}"
    );
    assert_eq!(routed[0]["fields"]["status"], 200);
    assert_eq!(routed[0]["fields"]["host"], HOST);
    let web = wait_logs(&server, &["--type", "web", "-n", "1000"], |l| {
        texts(l).contains(&"hay")
    })
    .await;
    assert!(web.iter().all(|l| l["process_type"] == "web"), "{web:?}");
    assert_eq!(
        texts(&logs(&server, &["--type", "build", "--grep", "hay"])),
        Vec::<&str>::new()
    );
    assert!(!logs(&server, &["--since", "1h"]).is_empty());
    assert!(logs(&server, &["--since", "2099-01-01T00:00:00Z"]).is_empty());
    fails_with(
        server.cli(&["logs", "-p", "chatty", "--since", "yesterday"], None),
        "since must be",
    );
    let human = ok(server.cli(
        &["logs", "-p", "chatty", "--type", "web", "--grep", "needle"],
        None,
    ));
    assert!(human.trim_end().ends_with("web v1: needle-one"), "{human}");

    // One-off runs (and cron, which runs the same way) land in the log as process type `run`.
    ok(server.cli(
        &[
            "run",
            "-p",
            "chatty",
            "--",
            "python3",
            "-c",
            "print('one-off says hi')",
        ],
        None,
    ));
    let run = wait_logs(&server, &["--type", "run"], |l| !l.is_empty()).await;
    assert_eq!(texts(&run), ["one-off says hi"]);
    assert_eq!(run[0]["release"], 1);

    // Follow: a line printed after `gilgal logs -f` started arrives on its output.
    let mut follower = Command::new(BIN)
        .args([
            "--server",
            &server.url,
            "logs",
            "-f",
            "--json",
            "-p",
            "chatty",
        ])
        .args(["--type", "web", "--grep", "live-"])
        .env("GILGAL_CONFIG_DIR", server.config_dir())
        .env_remove("GILGAL_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app_get(&server, "/log?text=live-42").await.0, 200);
    let streamed = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the followed line arrives");
    let streamed: Value = serde_json::from_str(&streamed).unwrap();
    assert_eq!(streamed["line"], "live-42");
    let _ = follower.kill();
    let _ = follower.wait();

    // A redeploy keeps the old release's lines; each release is searchable by number.
    ok(server.cli(
        &[
            "deploy",
            fixture("chatty").to_str().unwrap(),
            "--project",
            "chatty",
        ],
        None,
    ));
    let v2 = wait_logs(&server, &["--release", "v2", "--grep", "booted"], |l| {
        !l.is_empty()
    })
    .await;
    assert_eq!(v2[0]["fields"]["release"], "v2");
    let v1 = logs(&server, &["--release", "1", "--grep", "booted"]);
    assert_eq!(v1.len(), 1, "{v1:?}");
    assert_eq!(v1[0]["fields"]["release"], "v1");

    // The chatty app: 100,000 lines/s for 3 s. The API keeps answering meanwhile, and every
    // line is either stored or counted as dropped.
    let projects = api_json(&server, "/api/projects").await;
    let project = projects[0]["id"].as_str().unwrap().to_owned();
    let environments = api_json(&server, &format!("/api/projects/{project}/environments")).await;
    let env = environments
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "production")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = logs(&server, &["-n", "1"]);
    let start_cursor = before
        .last()
        .map(|l| l["id"].as_u64().unwrap())
        .unwrap_or(0);
    let burst = app_get(&server, "/burst?rate=100000&seconds=3");
    let pings = async {
        let client = reqwest::Client::new();
        let mut slowest = Duration::ZERO;
        let mut answered = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let asked = Instant::now();
            let response = client
                .get(format!("{}/api/projects", server.url))
                .bearer_auth(token(&server))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .expect("the API answers while an app floods its log");
            assert_eq!(response.status(), 200);
            slowest = slowest.max(asked.elapsed());
            answered += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (answered, slowest)
    };
    let ((status, body), (answered, slowest)) = tokio::join!(burst, pings);
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    let written = report["written"].as_u64().unwrap();
    let prefix = report["prefix"].as_str().unwrap().to_owned();
    assert_eq!(written, 300_000);
    assert!(
        answered >= 5,
        "only {answered} API answers during the burst"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "the API took {slowest:?} to answer during the burst"
    );
    let done_line = format!("burst done {prefix}{written}");
    wait_logs(&server, &["--grep", &done_line], |l| {
        texts(l).contains(&done_line.as_str())
    })
    .await;
    let client = reqwest::Client::new();
    let mut cursor = start_cursor;
    let mut stored = std::collections::HashSet::new();
    let mut duplicates = 0u64;
    let mut dropped = 0u64;
    loop {
        let response = client
            .get(format!("{}/api/environments/{env}/logs", server.url))
            .query(&[
                ("type", "web"),
                ("grep", prefix.as_str()),
                ("after", &cursor.to_string()),
                ("limit", "10000"),
            ])
            .bearer_auth(token(&server))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let page: Vec<Value> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let Some(last) = page.last() else { break };
        cursor = last["id"].as_u64().unwrap();
        for line in &page {
            if let Some(n) = line["dropped"].as_u64() {
                dropped += n;
                continue;
            }
            let text = line["line"].as_str().unwrap();
            if text.starts_with("burst done") {
                continue;
            }
            assert_eq!(line["release"], 2);
            if !stored.insert(text.to_owned()) {
                duplicates += 1;
            }
        }
    }
    eprintln!(
        "chatty app: written {written}, stored {}, counted dropped {dropped}, API answers {answered}, slowest {slowest:?}",
        stored.len()
    );
    assert_eq!(duplicates, 0);
    assert!(!stored.is_empty());
    assert_eq!(
        stored.len() as u64 + dropped,
        written,
        "stored + counted drops = written"
    );

    // A server crash loses nothing stored: the first release's lines are still there.
    server.crash_and_restart();
    ok(server.cli(
        &["login", "--email", "logs@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    let kept = logs(&server, &["--release", "v1", "--grep", "booted"]);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        texts(&logs(&server, &["--type", "web", "--grep", "needle"])),
        ["needle-one"]
    );
    // The re-adopted instance's new output is collected by the new server.
    assert_eq!(app_get(&server, "/log?text=after-restart").await.0, 200);
    let after = wait_logs(
        &server,
        &["--type", "web", "--grep", "after-restart"],
        |l| !l.is_empty(),
    )
    .await;
    assert_eq!(after[0]["release"], 2);
}

/// `gilgal metrics` over a window: a real app driven into errors and slow responses; its
/// tracebacks grouped by signature (`gilgal errors`).
async fn metrics_over_a_window_show_errors_and_slow_requests(backend: Backend) {
    let server = ServerProcess::start(backend).await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "metrics@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "chatty"], None));
    ok(server.cli(
        &[
            "deploy",
            fixture("chatty").to_str().unwrap(),
            "--project",
            "chatty",
        ],
        None,
    ));
    // Traffic before the window does not count in it.
    assert_eq!(app_get(&server, "/fail").await.0, 500);
    let config = server.config_dir();
    let url = server.url.clone();
    let sampler = std::thread::spawn(move || {
        super::cli_with(
            &config,
            Some(&url),
            &["--json", "metrics", "-p", "chatty", "--window", "4s"],
            None,
            &[],
        )
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    // In the window: 6 fast answers, 2 errors, 2 slow (600 ms) answers.
    for _ in 0..6 {
        assert_eq!(app_get(&server, "/health").await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(app_get(&server, "/fail").await.0, 500);
    }
    for _ in 0..2 {
        assert_eq!(app_get(&server, "/slow?ms=600").await.0, 200);
    }
    let out = ok(sampler.join().unwrap());
    let figures: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(figures["requests"], 10, "{figures}");
    assert_eq!(figures["error_rate"], 0.2, "{figures}");
    let p50 = figures["p50_seconds"].as_f64().unwrap();
    let p95 = figures["p95_seconds"].as_f64().unwrap();
    let p99 = figures["p99_seconds"].as_f64().unwrap();
    assert!(p50 < 0.25, "fast requests dominate the median: {figures}");
    assert!(
        p95 >= 0.6 && p99 >= 0.6,
        "the slow requests show: {figures}"
    );
    assert!(figures["rps"].as_f64().unwrap() > 1.0, "{figures}");
    assert_eq!(figures["instances"], 1);
    assert!(
        figures["memory_bytes"].as_u64().unwrap() > 1_000_000,
        "{figures}"
    );
    assert!(figures["cpu_cores"].as_f64().is_some(), "{figures}");
    let human = ok(server.cli(&["metrics", "-p", "chatty", "--window", "0"], None));
    assert!(human.contains("since the server started"), "{human}");
    assert!(human.contains("requests  11"), "{human}");

    // The app's own /metrics, scraped with the environment's labels added.
    let envs = api_json(&server, "/api/projects").await;
    let project = envs.as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let environments = api_json(&server, &format!("/api/projects/{project}/environments")).await;
    let env_id = environments[0]["id"].as_str().unwrap().to_owned();
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/environments/{env_id}/metrics/app",
            server.url
        ))
        .bearer_auth(token(&server))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let scraped = response.text().await.unwrap();
    assert!(
        scraped.contains(
            "chatty_requests_total{app=\"chatty\",env=\"production\",release=\"1\",instance=\"web.0\",path=\"/fail\"} 3\n"
        ),
        "{scraped}"
    );
    assert!(
        scraped.contains("# TYPE chatty_requests_total counter\n"),
        "{scraped}"
    );
    assert!(
        scraped.contains("gilgal_app_scrape_up{app=\"chatty\",env=\"production\",release=\"1\",instance=\"web.0\"} 1\n"),
        "{scraped}"
    );

    // Error grouping: the three KeyError tracebacks of /fail are one group, a ZeroDivisionError
    // another.
    assert_eq!(app_get(&server, "/divide").await.0, 500);
    let deadline = Instant::now() + Duration::from_secs(30);
    let groups = loop {
        let out = ok(server.cli(&["--json", "errors", "-p", "chatty"], None));
        let groups: Vec<Value> = serde_json::from_str(&out).unwrap();
        let counted: u64 = groups.iter().map(|g| g["count"].as_u64().unwrap()).sum();
        if counted == 4 {
            break groups;
        }
        assert!(Instant::now() < deadline, "{groups:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(groups.len(), 2, "{groups:?}");
    let key_error = groups
        .iter()
        .find(|g| g["signature"] == "python:KeyError@app.py:do_GET")
        .expect("the KeyError group");
    assert_eq!(key_error["count"], 3);
    assert_eq!(key_error["title"], "KeyError: 'missing'");
    assert_eq!(key_error["first_release"], 1);
    assert_eq!(key_error["last_release"], 1);
    assert!(key_error["sample"]
        .as_str()
        .unwrap()
        .starts_with("Traceback (most recent call last):"));
    let division = groups
        .iter()
        .find(|g| g["signature"] == "python:ZeroDivisionError@app.py:do_GET")
        .expect("the ZeroDivisionError group");
    assert_eq!(division["count"], 1);
    assert_eq!(division["title"], "ZeroDivisionError: division by zero");
    let table = ok(server.cli(&["errors", "-p", "chatty"], None));
    assert!(table.starts_with("COUNT"), "{table}");
    assert!(table.contains("KeyError: 'missing'"), "{table}");
}

/// `gilgal events -p NAME` as JSON.
fn events(server: &ServerProcess) -> Value {
    serde_json::from_str(&ok(
        server.cli(&["--json", "events", "-p", "chatty", "-n", "200"], None)
    ))
    .unwrap()
}

async fn wait_event(server: &ServerProcess, kind: &str, needle: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = events(server);
        if let Some(event) = all["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind && e["message"].as_str().unwrap().contains(needle))
        {
            return event.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event with {needle:?}: {all}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// After the deploy, instances keep being checked: one that turns unhealthy is replaced
/// while the other serves; a crash is recorded with its exit code and restarted; deploys and
/// scale changes are on the timeline; uptime is computed from the checks.
async fn unhealthy_instances_are_replaced_and_events_and_uptime_are_kept(backend: Backend) {
    let server = ServerProcess::start_with(
        backend,
        &["--health-interval-ms", "300", "--alert-interval-ms", "200"],
    )
    .await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "health@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "chatty"], None));
    ok(server.cli(
        &[
            "deploy",
            fixture("chatty").to_str().unwrap(),
            "--project",
            "chatty",
        ],
        None,
    ));
    wait_event(&server, "deploy", "v1 is live").await;
    ok(server.cli(&["scale", "web=2", "-p", "chatty"], None));
    wait_event(&server, "scale", "web=2").await;
    wait_logs(&server, &["--type", "web", "--grep", "booted"], |l| {
        l.len() == 2
    })
    .await;

    // One instance turns sick: it is replaced; the other keeps serving meanwhile.
    assert_eq!(app_get(&server, "/sick").await.0, 200);
    let replaced = wait_event(&server, "health", "3 times in a row").await;
    assert!(
        replaced["message"]
            .as_str()
            .unwrap()
            .contains("replacing it"),
        "{replaced}"
    );
    let boots = wait_logs(&server, &["--type", "web", "--grep", "booted"], |l| {
        l.len() == 3
    })
    .await;
    let instances: std::collections::BTreeSet<&str> = boots
        .iter()
        .map(|l| l["instance"].as_str().unwrap())
        .collect();
    assert_eq!(instances.len(), 3, "a new instance replaced the sick one");
    // Once the replacement is routed, only healthy instances serve.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut statuses = Vec::new();
        for _ in 0..10 {
            statuses.push(app_get(&server, "/health").await.0);
        }
        if statuses.iter().all(|s| *s == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still unhealthy answers: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The health-check alert fired when the instance failed 3 times in a row and resolved
    // once every instance answered again.
    wait_event(
        &server,
        "alert",
        "firing: health check failing 3 times in a row",
    )
    .await;
    wait_event(
        &server,
        "alert",
        "resolved: health check failing 3 times in a row",
    )
    .await;

    // A crash is on the timeline with its exit code, and the runtime restarts the instance.
    let (status, _) = {
        let response = reqwest::Client::new()
            .get(format!("{}/crash?code=3", server.proxy_url))
            .header("host", HOST)
            .send()
            .await;
        (response.map(|r| r.status().as_u16()).unwrap_or(502), ())
    };
    assert_ne!(status, 200);
    wait_event(&server, "crash", "exited with code 3").await;
    wait_event(&server, "restart", "restarted (restart 1)").await;

    let all = events(&server);
    let uptime = &all["uptime"];
    assert!(uptime["checks_24h"].as_u64().unwrap() > 5, "{uptime}");
    let percent = uptime["last_24h"].as_f64().unwrap();
    // Some checks may find no running instance (the crashed one restarting, the replacement
    // booting): uptime is a share of the checks, never more than all of them.
    assert!(percent > 0.0 && percent <= 100.0, "{all}");
    let human = ok(server.cli(&["events", "-p", "chatty"], None));
    assert!(human.starts_with("uptime  24 h "), "{human}");
    assert!(human.contains("crash"), "{human}");
}
