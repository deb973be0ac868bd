//! Add-ons end to end with the real server: the FastAPI + SQLAlchemy + Alembic example on a
//! managed PostgreSQL add-on (migrations in the release phase, reads and writes), no
//! acknowledged write lost when PostgreSQL is SIGKILLed mid-traffic and Gilgal's supervisor
//! restarts it, and backup → drop table (through `gilgal addons psql`) → restore.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gilgal_testkit::Backend;

use super::{example_dir, ok, stderr, stdout, ServerProcess, PASSWORD};

async fn post_note(proxy: &str, body: &str) -> Result<i64, String> {
    let response = reqwest::Client::new()
        .post(format!("{proxy}/notes"))
        .header("host", "notes.localhost")
        .json(&serde_json::json!({"body": body}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 201 {
        return Err(format!("status {}", response.status()));
    }
    let note: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    note["id"]
        .as_i64()
        .ok_or_else(|| format!("no id in {note}"))
}

async fn note_ids(proxy: &str) -> BTreeSet<i64> {
    let notes: serde_json::Value = reqwest::Client::new()
        .get(format!("{proxy}/notes"))
        .header("host", "notes.localhost")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    notes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_i64().unwrap())
        .collect()
}

fn postmaster_pid(server: &ServerProcess) -> Option<i32> {
    let text = std::fs::read_to_string(
        server
            .dir
            .path()
            .join("data/addons/postgres/data/postmaster.pid"),
    )
    .ok()?;
    text.lines().next()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fastapi_example_on_a_postgres_addon_survives_sigkill_and_restores() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &["register", "--email", "ops@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "notes"], None));
    let created = ok(server.cli(&["addons", "create", "postgres", "-p", "notes"], None));
    assert!(created.contains("sets DATABASE_URL"), "{created}");
    let deployed = server.cli(
        &[
            "deploy",
            example_dir("fastapi-notes").to_str().unwrap(),
            "-p",
            "notes",
        ],
        None,
    );
    let log = format!("{}{}", stdout(&deployed), stderr(&deployed));
    assert!(deployed.status.success(), "{log}");
    assert!(
        log.contains("Running upgrade  -> 0001"),
        "alembic ran in the release phase: {log}"
    );
    let proxy = server.proxy_url.clone();

    // Reads and writes.
    let first = post_note(&proxy, "hello").await.unwrap();
    assert_eq!(note_ids(&proxy).await, BTreeSet::from([first]));

    // Continuous writes; SIGKILL the postmaster in the middle; every acknowledged write
    // survives Gilgal's restart of the server. The writer runs until told to stop, after the
    // restart and some writes that succeeded after it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer_stop = stop.clone();
    let writer_proxy = proxy.clone();
    let writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut failures = 0;
        while !writer_stop.load(std::sync::atomic::Ordering::Relaxed) {
            match post_note(&writer_proxy, "load").await {
                Ok(id) => acknowledged.push(id),
                Err(_) => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        (acknowledged, failures)
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let pid = postmaster_pid(&server).expect("managed PostgreSQL runs");
    // SAFETY: kill(2) on the postmaster this test's server started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let restarted = postmaster_pid(&server).is_some_and(|p| p != pid);
        if restarted && post_note(&proxy, "after the restart").await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "PostgreSQL never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acknowledged, failures) = writer.await.unwrap();
    assert!(
        acknowledged.len() > 20,
        "writes went on: {}",
        acknowledged.len()
    );
    assert!(failures > 0, "the kill interrupted writes");
    let present = note_ids(&proxy).await;
    let lost: Vec<&i64> = acknowledged
        .iter()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // Backup → drop the table by hand → restore: the same notes.
    let backup = ok(server.cli(
        &["addons", "backup", "postgres", "-p", "notes", "--json"],
        None,
    ));
    let backup: serde_json::Value = serde_json::from_str(backup.trim()).unwrap();
    assert_eq!(backup["state"], "succeeded");
    let dropped = server.cli(
        &[
            "addons",
            "psql",
            "-p",
            "notes",
            "--",
            "-c",
            "DROP TABLE notes",
        ],
        None,
    );
    assert!(dropped.status.success(), "{}", stderr(&dropped));
    let gone = reqwest::Client::new()
        .get(format!("{proxy}/notes"))
        .header("host", "notes.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 500, "the table is gone");
    ok(server.cli(
        &[
            "addons",
            "restore",
            "postgres",
            backup["id"].as_str().unwrap(),
            "-p",
            "notes",
        ],
        None,
    ));
    assert_eq!(note_ids(&proxy).await, present);
    let listed = ok(server.cli(&["addons", "backups", "postgres", "-p", "notes"], None));
    assert!(listed.contains("succeeded"), "{listed}");
}

/// Scheduled backups run from the server's supervisor: a schedule with seconds is refused;
/// with one every minute and a retention of 1, backups appear on their own, each tick once,
/// and only the newest successful one (file and record) is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_run_and_are_pruned_to_the_retention() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &["register", "--email", "ops@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "cachey"], None));
    ok(server.cli(&["addons", "create", "redis", "-p", "cachey"], None));
    let policy = |schedule: &str| {
        server.cli(
            &[
                "addons",
                "backup-policy",
                "redis",
                "--schedule",
                schedule,
                "--retention",
                "1",
                "-p",
                "cachey",
            ],
            None,
        )
    };
    // Minute resolution: a seconds field would dump the database every supervisor tick.
    super::fails_with(policy("*/2 * * * * *"), "exactly 5 fields");
    ok(policy("* * * * *"));
    let backups_dir = server.dir.path().join("data/backups");
    // Two minute ticks: the first backup, then the second, which prunes the first.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut seen = BTreeSet::new();
    loop {
        let listed = ok(server.cli(
            &["addons", "backups", "redis", "-p", "cachey", "--json"],
            None,
        ));
        let backups: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
        let backups = backups.as_array().unwrap().clone();
        for b in &backups {
            assert_eq!(b["cause"], "scheduled", "{b}");
            assert_ne!(b["state"], "failed", "{b}");
            seen.insert(b["id"].as_str().unwrap().to_owned());
        }
        let succeeded = backups.iter().filter(|b| b["state"] == "succeeded").count();
        assert!(succeeded <= 1, "retention keeps one: {backups:?}");
        if seen.len() >= 2 && succeeded == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "scheduled backups did not run: {backups:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let files: Vec<_> = walk_files(&backups_dir);
    assert!(files.len() <= 2, "pruned files are deleted: {files:?}");
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else if path.extension().is_some_and(|e| e == "rdb") {
            out.push(path);
        }
    }
    out
}

/// Redis and S3 add-ons used by an app through redis-py and boto3, with nothing but the
/// config vars Gilgal set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_uses_its_redis_and_s3_addons() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &["register", "--email", "ops@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "probe"], None));
    let redis = ok(server.cli(&["addons", "create", "redis", "-p", "probe"], None));
    assert!(redis.contains("sets REDIS_URL"), "{redis}");
    let s3 = ok(server.cli(&["addons", "create", "s3", "-p", "probe"], None));
    assert!(
        s3.contains("S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_BUCKET"),
        "{s3}"
    );
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/addons-probe");
    let deployed = server.cli(&["deploy", fixture.to_str().unwrap(), "-p", "probe"], None);
    assert!(
        deployed.status.success(),
        "{}{}",
        stdout(&deployed),
        stderr(&deployed)
    );
    let get = |path: &'static str| {
        let proxy = server.proxy_url.clone();
        async move {
            let response = reqwest::Client::new()
                .get(format!("{proxy}{path}"))
                .header("host", "probe.localhost")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| {
                panic!("{path}: {status} with a body that is not JSON: {text}")
            });
            (status, value)
        }
    };
    assert_eq!(get("/redis").await, (200, serde_json::json!({"visits": 1})));
    assert_eq!(get("/redis").await, (200, serde_json::json!({"visits": 2})));
    let (status, body) = get("/s3").await;
    if status != 200 {
        let log =
            std::fs::read(server.dir.path().join("data/addons/s3/weed.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "/s3 answered {status}: {body}\nSeaweedFS log, last lines (newest first):\n{}",
            tail.join("\n")
        );
    }
    assert_eq!(body["body"], "stored in an add-on");
    assert_eq!(body["keys"].as_array().unwrap().len(), 1, "{body}");
    let config = ok(server.cli(&["env", "list", "-p", "probe"], None));
    assert!(
        config.contains("S3_BUCKET") && config.contains("AWS_SECRET_ACCESS_KEY"),
        "{config}"
    );
}
