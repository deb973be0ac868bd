//! Changes to one environment in quick succession: each starts from what the previous one
//! left (a config change right after a rollback lands), and a plain rollback goes to the last
//! release that was actually live.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gilgal_testkit::Backend;
use serde_json::{json, Value};

use super::{ok, ServerProcess, PASSWORD};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The CLI's API token, to talk to the API directly (no CLI round trip per call).
fn token(server: &ServerProcess) -> String {
    let text = std::fs::read_to_string(server.config_dir().join("credentials.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    value["token"].as_str().unwrap().to_owned()
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(server: &ServerProcess) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: server.url.clone(),
            token: token(server),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Waits until the deployment is over; returns its final state.
    async fn finished(&self, deployment: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let record = self.get(&format!("/api/deployments/{deployment}")).await;
            let state = record["state"].as_str().unwrap().to_owned();
            if ["live", "failed", "cancelled", "draining", "retired"].contains(&state.as_str()) {
                return record;
            }
            assert!(Instant::now() < deadline, "deployment stuck in {state}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn setup(server: &ServerProcess, project: &str) {
    ok(server.cli(
        &["register", "--email", "ops@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", project], None));
}

fn deploy(server: &ServerProcess, dir: &Path, project: &str) -> String {
    ok(server.cli(
        &["deploy", dir.to_str().unwrap(), "--project", project],
        None,
    ))
}

async fn environment_id(api: &Api, project: &str) -> String {
    let projects = api.get("/api/projects").await;
    let project = projects
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == project)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let environments = api
        .get(&format!("/api/projects/{project}/environments"))
        .await;
    environments[0]["id"].as_str().unwrap().to_owned()
}

/// What the config-echo app that serves `host` reports for `name`.
async fn probe(server: &ServerProcess, host: &str, name: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}/config?name={name}", server.proxy_url))
        .header("host", host)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn config_value(config: &Value, name: &str) -> Option<String> {
    config
        .as_array()
        .unwrap()
        .iter()
        .find(|var| var["name"] == name)
        .map(|var| var["value"].as_str().unwrap_or_default().to_owned())
}

/// Issue 14: `rollback` then at once `env set RACE=…`, 50 times. Every time the change lands:
/// in the config (`env list`), in the config names of the release it made, and in the
/// environment of the process that serves. The config is the rolled-back one as soon as the
/// rollback is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_config_change_right_after_a_rollback_always_lands() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "race");
    deploy(&server, &fixture("config-echo"), "race");
    let api = Api::new(&server);
    let env = environment_id(&api, "race").await;
    let host = "race.localhost";
    let config_path = format!("/api/environments/{env}/config");
    let set = |value: String| {
        api.call(
            reqwest::Method::PATCH,
            &config_path,
            Some(json!({"set": {"RACE": value}})),
        )
    };
    // v2 has RACE; v1 (the one a plain rollback goes back to) has none.
    let first = set("start".to_owned()).await;
    api.finished(first["deployment"].as_str().unwrap()).await;
    let started = Instant::now();
    for round in 0..50 {
        let rollback = api
            .call(
                reqwest::Method::POST,
                &format!("/api/environments/{env}/rollback"),
                Some(json!({})),
            )
            .await;
        let config = api.get(&format!("/api/environments/{env}/config")).await;
        assert_eq!(
            config_value(&config, "RACE"),
            None,
            "round {round}: right after the rollback is acknowledged, the config is the rolled-back one"
        );
        let value = format!("round-{round}");
        let changed = set(value.clone()).await;
        let deployment = api.finished(changed["deployment"].as_str().unwrap()).await;
        assert_eq!(deployment["state"], "live", "round {round}: {deployment}");
        let rolled = api
            .get(&format!(
                "/api/deployments/{}",
                rollback["id"].as_str().unwrap()
            ))
            .await;
        assert!(
            ["draining", "retired"].contains(&rolled["state"].as_str().unwrap()),
            "round {round}: the rollback went live first: {rolled}"
        );

        let config = api.get(&format!("/api/environments/{env}/config")).await;
        assert_eq!(
            config_value(&config, "RACE").as_deref(),
            Some(value.as_str()),
            "round {round}: env list has the change: {config}"
        );
        let number = deployment["release"].as_u64().unwrap();
        let releases = api.get(&format!("/api/environments/{env}/releases")).await;
        let release = releases
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["number"] == number)
            .unwrap();
        assert_eq!(release["live"], true, "round {round}: {release}");
        assert_eq!(release["description"], "Set RACE", "round {round}");
        assert!(
            release["config_names"]
                .as_array()
                .unwrap()
                .contains(&json!("RACE")),
            "round {round}: v{number}'s config has RACE: {release}"
        );
        let seen = probe(&server, host, "RACE").await;
        assert_eq!(
            seen["value"], value,
            "round {round}: the running process has it"
        );
        assert_eq!(seen["release"], format!("v{number}"), "round {round}");
    }
    eprintln!("50 rounds in {} ms", started.elapsed().as_millis());
    let listed = ok(server.cli(&["env", "list", "-p", "race"], None));
    assert!(listed.contains("RACE=round-49"), "{listed}");
}

/// Issue 15: after v2 failed its health check and v3 went live, a plain `gilgal rollback`
/// goes to v1 (the last release that was live), not to v2; `gilgal releases` shows each
/// release's recorded outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_rollback_goes_to_the_last_release_that_was_live() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "back");
    deploy(&server, &fixture("config-echo"), "back");
    let failed = server.cli(
        &[
            "deploy",
            fixture("never-binds").to_str().unwrap(),
            "--project",
            "back",
        ],
        None,
    );
    assert!(!failed.status.success(), "v2 never becomes healthy");
    deploy(&server, &fixture("config-echo"), "back");
    assert_eq!(probe(&server, "back.localhost", "X").await["release"], "v3");

    let rolled = ok(server.cli(&["rollback", "-p", "back"], None));
    assert!(rolled.contains("Deployed v4"), "{rolled}");
    assert_eq!(probe(&server, "back.localhost", "X").await["release"], "v4");

    let listed: Value =
        serde_json::from_str(&ok(server.cli(&["releases", "-p", "back", "--json"], None))).unwrap();
    let outcomes: Vec<(u64, String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["number"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap().to_owned(),
                r["description"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let outcome = |n: u64| outcomes.iter().find(|o| o.0 == n).unwrap().1.as_str();
    assert_eq!(outcome(4), "live", "{outcomes:?}");
    assert_eq!(outcome(3), "rolled_back", "{outcomes:?}");
    assert_eq!(outcome(2), "failed", "{outcomes:?}");
    assert_eq!(outcome(1), "superseded", "{outcomes:?}");
    assert_eq!(outcomes[0].2, "Rollback to v1", "{outcomes:?}");

    let text = ok(server.cli(&["releases", "-p", "back"], None));
    for (number, shown) in [
        (4, "live"),
        (3, "rolled back"),
        (2, "failed"),
        (1, "superseded"),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("v{number} ")))
            .unwrap_or_else(|| panic!("v{number} in {text}"));
        assert!(line.contains(shown), "v{number} is {shown}: {line}");
    }
}

/// Issue 12: one-off runs are bounded per environment: past the limit the API answers 429
/// saying what to do, and a run may start again once one has finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_one_off_runs_are_bounded_per_environment() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    setup(&server, "busy");
    deploy(&server, &fixture("config-echo"), "busy");
    let api = Api::new(&server);
    let env = environment_id(&api, "busy").await;
    let start = |seconds: &'static str| {
        api.http
            .post(format!("{}/api/environments/{env}/runs", api.base))
            .bearer_auth(&api.token)
            .json(&json!({"command": ["sleep", seconds]}))
            .send()
    };
    for _ in 0..5 {
        let started = start("30").await.unwrap();
        assert_eq!(started.status(), 201);
    }
    let refused = start("30").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "run_limit", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("limit is 5") && message.contains("wait for one to finish"),
        "{message}"
    );
}
