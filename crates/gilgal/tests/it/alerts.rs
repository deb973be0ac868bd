//! Alerts end to end: a real app driven into errors and slow responses fires the error-rate
//! and p95-latency rules; back to normal, both resolve; each change reaches a generic
//! webhook (its HMAC-SHA256 signature checked by Python's `hmac`), a Slack-compatible
//! webhook and an SMTP server (aiosmtpd from PyPI), once each, across a `kill -9` of the
//! server while they fire.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gilgal_testkit::Backend;
use serde_json::Value;

use super::{fails_with, ok, ServerProcess, PASSWORD};

/// Pinned so a new release cannot change what the test relies on.
const AIOSMTPD: &str = "aiosmtpd==1.4.6";

/// A venv with aiosmtpd, kept under the target dir so it is installed once per checkout.
fn sink_python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/alert-sink-venv");
    let python = venv.join("bin/python3");
    if !venv.join("bin/aiosmtpd").exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "cannot create the alert sink venv");
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", AIOSMTPD])
            .status()
            .expect("pip install aiosmtpd");
        assert!(installed.success(), "cannot install {AIOSMTPD} from PyPI");
    }
    python
}

/// The webhook receiver and SMTP server, and what they received so far.
struct Sink {
    child: Child,
    http_port: u16,
    smtp_port: u16,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Sink {
    fn start() -> Self {
        let python = sink_python();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alert-sink/sink.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the alert sink");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        Self {
            child,
            http_port: first["http_port"].as_u64().unwrap() as u16,
            smtp_port: first["smtp_port"].as_u64().unwrap() as u16,
            received,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds over what was received.
    async fn wait(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "never received {what}: {got:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Generic webhook deliveries as (event, rule, signature valid).
fn hooks(received: &[Value]) -> Vec<(String, String, bool)> {
    received
        .iter()
        .filter(|r| r["kind"] == "http" && r["path"] == "/hook")
        .map(|r| {
            let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            (
                body["event"].as_str().unwrap().to_owned(),
                body["rule"].as_str().unwrap().to_owned(),
                r["signature_valid"] == true,
            )
        })
        .collect()
}

fn count(received: &[Value], kind: &str, path: Option<&str>, needle: &str) -> usize {
    received
        .iter()
        .filter(|r| r["kind"] == kind && path.is_none_or(|p| r["path"] == p))
        .filter(|r| {
            let text = format!("{} {}", r["subject"], r["body"]);
            text.contains(needle)
        })
        .count()
}

/// Whether `event` of both traffic rules reached the webhook, Slack and email.
fn on_every_channel(received: &[Value], event: &str) -> bool {
    let tag = event.to_uppercase();
    let h = hooks(received);
    ["error_rate", "latency_p95"]
        .iter()
        .all(|rule| h.iter().any(|(e, k, _)| e == event && k == rule))
        && count(received, "http", Some("/slack"), &format!("[{tag}]")) == 2
        && count(received, "smtp", None, &tag) == 2
}

async fn get(server: &ServerProcess, path: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}{path}", server.proxy_url))
        .header("host", "chatty.localhost")
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_and_resolve_once_each_on_webhook_slack_and_email() {
    let sink = tokio::task::spawn_blocking(Sink::start).await.unwrap();
    let smtp = format!("smtp://127.0.0.1:{}", sink.smtp_port);
    let mut server = ServerProcess::start_with(
        Backend::Sqlite,
        &[
            "--alert-interval-ms",
            "250",
            "--smtp-url",
            &smtp,
            "--smtp-from",
            "Gilgal <alerts@gilgal.test>",
            "--allow-private-urls",
        ],
    )
    .await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "oncall@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "chatty"], None));
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chatty");
    ok(server.cli(&["deploy", fixture.to_str().unwrap(), "-p", "chatty"], None));

    // Every environment starts with the documented defaults.
    let rules: Vec<Value> = serde_json::from_str(&ok(
        server.cli(&["--json", "alerts", "rules", "-p", "chatty"], None)
    ))
    .unwrap();
    let conditions: Vec<&str> = rules
        .iter()
        .map(|r| r["condition"].as_str().unwrap())
        .collect();
    assert_eq!(
        conditions,
        [
            "error rate > 1 % for 5 min",
            "p95 latency > 500 ms for 10 min",
            "health check failing 3 times in a row",
            "3 crashes within 5 min",
            "an add-on's latest backup failed",
        ]
    );
    // Shorter periods so the test does not wait minutes; bad values are refused.
    ok(server.cli(
        &[
            "alerts",
            "set",
            "error_rate",
            "--threshold",
            "0.1",
            "--for",
            "1s",
            "-p",
            "chatty",
        ],
        None,
    ));
    ok(server.cli(
        &[
            "alerts",
            "set",
            "latency_p95",
            "--threshold",
            "0.3",
            "--for",
            "1s",
            "-p",
            "chatty",
        ],
        None,
    ));
    fails_with(
        server.cli(
            &[
                "alerts",
                "set",
                "error_rate",
                "--threshold",
                "5",
                "-p",
                "chatty",
            ],
            None,
        ),
        "fraction",
    );

    let created: Value = serde_json::from_str(&ok(server.cli(
        &[
            "--json",
            "alerts",
            "notify",
            "webhook",
            &sink.url("/hook"),
            "-p",
            "chatty",
        ],
        None,
    )))
    .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("gilgal_alsec_"), "{created}");
    reqwest::Client::new()
        .post(sink.url("/secret"))
        .body(secret.clone())
        .send()
        .await
        .unwrap();
    ok(server.cli(
        &[
            "alerts",
            "notify",
            "slack",
            &sink.url("/slack"),
            "-p",
            "chatty",
        ],
        None,
    ));
    ok(server.cli(
        &[
            "alerts",
            "notify",
            "email",
            "oncall@example.com",
            "-p",
            "chatty",
        ],
        None,
    ));
    fails_with(
        server.cli(
            &[
                "alerts",
                "notify",
                "email",
                "not-an-address",
                "-p",
                "chatty",
            ],
            None,
        ),
        "not an email address",
    );
    let channels = ok(server.cli(&["alerts", "channels", "-p", "chatty"], None));
    assert_eq!(channels.lines().count(), 3, "{channels}");
    assert!(!channels.contains(&secret), "the secret is shown once");

    // Errors and slow answers, for a few seconds: both rules fire.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(get(&server, "/fail").await, 500);
        assert_eq!(get(&server, "/slow?ms=500").await, 200);
        assert_eq!(get(&server, "/health").await, 200);
    }
    let fired = sink
        .wait("firing notifications of both rules on every channel", |r| {
            on_every_channel(r, "firing")
        })
        .await;
    for (_, _, valid) in hooks(&fired) {
        assert!(
            valid,
            "every webhook delivery is signed with the channel's secret"
        );
    }
    let mail = fired.iter().find(|r| r["kind"] == "smtp").unwrap();
    assert_eq!(mail["to"], serde_json::json!(["oncall@example.com"]));
    assert_eq!(mail["from"], "alerts@gilgal.test");
    assert!(
        mail["subject"]
            .as_str()
            .unwrap()
            .contains("chatty/production"),
        "{mail}"
    );
    let firing: Vec<Value> = serde_json::from_str(&ok(
        server.cli(&["--json", "alerts", "list", "-p", "chatty"], None)
    ))
    .unwrap();
    let error_alert = firing.iter().find(|a| a["kind"] == "error_rate").unwrap();
    assert_eq!(error_alert["state"], "firing", "{firing:#?}");
    let rate = error_alert["value"].as_f64().unwrap();
    assert!(
        rate > 0.1 && rate < 0.5,
        "a third of the answers are 500s: {rate}"
    );
    let p95_alert = firing.iter().find(|a| a["kind"] == "latency_p95").unwrap();
    assert!(p95_alert["value"].as_f64().unwrap() > 0.3, "{p95_alert}");

    // kill -9 while both fire: after the restart they are the same open alerts, the errors
    // go on, and nothing is sent again.
    let ids: Vec<Value> = firing.iter().map(|a| a["id"].clone()).collect();
    // The stored login names the old address; the same token works on the restarted server.
    let credentials: Value = serde_json::from_str(
        &std::fs::read_to_string(server.config_dir().join("credentials.json")).unwrap(),
    )
    .unwrap();
    let token = credentials["token"].as_str().unwrap().to_owned();
    server.crash_and_restart();
    let cli = |args: &[&str]| {
        super::cli_with(
            &server.config_dir(),
            Some(&server.url),
            args,
            None,
            &[("GILGAL_TOKEN", &token)],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&server, "/health").await != 200 {
        assert!(
            Instant::now() < deadline,
            "the app is routed again after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(get(&server, "/fail").await, 500);
        assert_eq!(get(&server, "/slow?ms=500").await, 200);
        assert_eq!(get(&server, "/health").await, 200);
    }
    let after: Vec<Value> =
        serde_json::from_str(&ok(cli(&["--json", "alerts", "list", "-p", "chatty"]))).unwrap();
    assert_eq!(after.len(), 2, "no new alert after the restart: {after:#?}");
    for alert in &after {
        assert_eq!(alert["state"], "firing", "{alert}");
        assert!(ids.contains(&alert["id"]), "{alert}");
    }
    let firings = hooks(&sink.received())
        .iter()
        .filter(|(e, _, _)| e == "firing")
        .count();
    assert_eq!(firings, 2, "the restart sent nothing again");

    // Back to normal: fast, good answers only. Both resolve.
    let started = Instant::now();
    let resolved = loop {
        assert_eq!(get(&server, "/health").await, 200);
        let got = sink.received();
        if on_every_channel(&got, "resolved") {
            break got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never resolved: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(hooks(&resolved).iter().all(|(_, _, valid)| *valid));

    // Many evaluations later: still exactly one firing and one resolved per rule and channel.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = sink.received();
    let mut deliveries = hooks(&all);
    deliveries.sort();
    assert_eq!(
        deliveries,
        [
            ("firing".to_owned(), "error_rate".to_owned(), true),
            ("firing".to_owned(), "latency_p95".to_owned(), true),
            ("resolved".to_owned(), "error_rate".to_owned(), true),
            ("resolved".to_owned(), "latency_p95".to_owned(), true),
        ]
    );
    assert_eq!(count(&all, "http", Some("/slack"), ""), 4, "{all:#?}");
    assert_eq!(count(&all, "smtp", None, ""), 4, "{all:#?}");
    let ids: std::collections::BTreeSet<&str> = all
        .iter()
        .filter_map(|r| r["headers"]["x-gilgal-delivery"].as_str())
        .collect();
    assert_eq!(ids.len(), 4, "one delivery id per alert and event: {ids:?}");

    let listed: Vec<Value> =
        serde_json::from_str(&ok(cli(&["--json", "alerts", "list", "-p", "chatty"]))).unwrap();
    assert_eq!(listed.len(), 2, "{listed:#?}");
    for alert in &listed {
        assert_eq!(alert["state"], "resolved", "{alert}");
        assert!(
            alert["resolved_message"]
                .as_str()
                .unwrap()
                .starts_with("back to normal"),
            "{alert}"
        );
        let deliveries = alert["deliveries"].as_array().unwrap();
        assert_eq!(deliveries.len(), 6, "3 channels × firing and resolved");
        assert!(deliveries.iter().all(|d| d["delivered_at"].is_string()));
    }
    let events = ok(cli(&["events", "-p", "chatty"]));
    assert!(
        events.contains("alert    firing: error rate > 10 % for 1 s"),
        "{events}"
    );
    assert!(
        events.contains("alert    resolved: p95 latency > 300 ms"),
        "{events}"
    );
    let human = ok(cli(&["alerts", "list", "-p", "chatty"]));
    assert!(human.contains("notifications: 6 of 6 delivered"), "{human}");

    // A test notification, on request, to the webhook (signed) and by email.
    let channels: Vec<Value> =
        serde_json::from_str(&ok(cli(&["--json", "alerts", "channels", "-p", "chatty"]))).unwrap();
    for kind in ["webhook", "email"] {
        let id = channels.iter().find(|c| c["kind"] == kind).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let out = ok(cli(&["alerts", "test", &id, "-p", "chatty"]));
        assert!(out.contains("delivered"), "{out}");
    }
    let tested = sink
        .wait("the test notifications", |r| {
            count(r, "smtp", None, "[TEST]") == 1
                && hooks(r).iter().any(|(e, k, _)| e == "test" && k == "test")
        })
        .await;
    assert!(hooks(&tested).iter().all(|(_, _, valid)| *valid));
}
