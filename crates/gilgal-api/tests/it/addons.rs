//! Add-ons through the API against the real servers: a managed PostgreSQL database per
//! add-on (isolated between environments), named add-ons with prefixed vars, backup → drop →
//! restore with identical rows, restore into another database, a damaged backup refused,
//! destroy with a final backup, and Redis with a password.

use gilgal_testkit::{backend_tests, Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::{Connection, Row};

use crate::{assert_error, raw};

backend_tests!(postgres_and_redis_addons_end_to_end);

async fn table_hash(url: &str) -> String {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let row = sqlx::query(
        "SELECT md5(string_agg(id::text || ':' || body, ',' ORDER BY id)) AS h FROM notes",
    )
    .fetch_one(&mut conn)
    .await
    .expect("hash");
    row.try_get::<String, _>("h").expect("hash column")
}

async fn credentials(server: &TestServer, token: &str, addon: &Value) -> String {
    let (status, _, body) = raw(
        server,
        Method::POST,
        &format!("/api/addons/{}/credentials", addon["id"].as_str().unwrap()),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["url"].as_str().unwrap().to_owned()
}

async fn postgres_and_redis_addons_end_to_end(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, pair) = server.user("ada@example.com").await;
    let token = pair.access_token.as_str();
    let (_, _, project) = raw(
        &server,
        Method::POST,
        "/api/projects",
        Some(token),
        Some(json!({"name": "books"})),
    )
    .await;
    let project_id = project["id"].as_str().unwrap();
    let (_, _, staging) = raw(
        &server,
        Method::POST,
        &format!("/api/projects/{project_id}/environments"),
        Some(token),
        Some(json!({"name": "staging"})),
    )
    .await;
    let (_, _, envs) = raw(
        &server,
        Method::GET,
        &format!("/api/projects/{project_id}/environments"),
        Some(token),
        None,
    )
    .await;
    let production = envs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "production")
        .unwrap()
        .clone();
    let create = |env: &Value, body: Value| {
        let path = format!("/api/environments/{}/addons", env["id"].as_str().unwrap());
        let server = &server;
        async move { raw(server, Method::POST, &path, Some(token), Some(body)).await }
    };

    // A database per environment; the URL is a secret config var, never shown.
    let (status, _, prod_db) = create(&production, json!({"kind": "postgres"})).await;
    assert_eq!(status, StatusCode::CREATED, "{prod_db}");
    assert_eq!(prod_db["addon"]["state"], "ready");
    assert_eq!(prod_db["addon"]["config_vars"], json!(["DATABASE_URL"]));
    let prod_db = prod_db["addon"].clone();
    let (_, _, config) = raw(
        &server,
        Method::GET,
        &format!(
            "/api/environments/{}/config",
            production["id"].as_str().unwrap()
        ),
        Some(token),
        None,
    )
    .await;
    assert!(
        config.to_string().contains("DATABASE_URL")
            && !config.to_string().contains("postgresql://"),
        "the URL is a secret: {config}"
    );
    let (status, _, staging_db) = create(&staging, json!({"kind": "postgres"})).await;
    assert_eq!(status, StatusCode::CREATED, "{staging_db}");
    let staging_db = staging_db["addon"].clone();

    // A second one needs a name, and then gets prefixed vars.
    let answer = create(&production, json!({"kind": "postgres"})).await;
    assert_error(&answer, StatusCode::CONFLICT, "not_possible");
    for bad in [
        json!({"kind": "mysql"}),
        json!({"kind": "postgres", "name": "Bad Name;"}),
    ] {
        let answer = create(&production, bad).await;
        assert_error(&answer, StatusCode::CONFLICT, "not_possible");
    }
    let (status, _, limits) = create(
        &production,
        json!({"kind": "postgres", "name": "rate-limit"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{limits}");
    assert_eq!(
        limits["addon"]["config_vars"],
        json!(["RATE_LIMIT_DATABASE_URL"])
    );
    let limits = limits["addon"].clone();

    // Isolation: production's credentials open nothing of staging's database.
    let prod_url = credentials(&server, token, &prod_db).await;
    let staging_url = credentials(&server, token, &staging_db).await;
    let staging_db_name = staging_url.rsplit('/').next().unwrap().to_owned();
    let cross = format!("{}/{staging_db_name}", prod_url.rsplit_once('/').unwrap().0);
    let refused = sqlx::PgConnection::connect(&cross)
        .await
        .expect_err("production's role must not open staging's database");
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );

    // Backup → drop table → restore: identical rows.
    let mut conn = sqlx::PgConnection::connect(&prod_url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL); \
         INSERT INTO notes (body) SELECT 'book ' || g FROM generate_series(1, 300) g",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    let before = table_hash(&prod_url).await;
    let prod_id = prod_db["id"].as_str().unwrap();
    let (status, _, backup) = raw(
        &server,
        Method::POST,
        &format!("/api/addons/{prod_id}/backups"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{backup}");
    assert_eq!(backup["state"], "succeeded");
    assert!(backup["size"].as_u64().unwrap() > 0);
    assert_eq!(backup["sha256"].as_str().unwrap().len(), 64);
    let mut conn = sqlx::PgConnection::connect(&prod_url).await.unwrap();
    sqlx::raw_sql("DROP TABLE notes")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let (status, _, body) = raw(
        &server,
        Method::POST,
        &format!("/api/addons/{prod_id}/restore"),
        Some(token),
        Some(json!({"backup_id": backup["id"]})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(table_hash(&prod_url).await, before);

    // …and into another database of the environment.
    let (status, _, body) = raw(
        &server,
        Method::POST,
        &format!("/api/addons/{}/restore", limits["id"].as_str().unwrap()),
        Some(token),
        Some(json!({"backup_id": backup["id"]})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let limits_url = credentials(&server, token, &limits).await;
    assert_eq!(table_hash(&limits_url).await, before);

    // Another environment's backup is invisible; a damaged file is refused, data intact.
    let answer = raw(
        &server,
        Method::POST,
        &format!("/api/addons/{}/restore", staging_db["id"].as_str().unwrap()),
        Some(token),
        Some(json!({"backup_id": backup["id"]})),
    )
    .await;
    assert_error(&answer, StatusCode::NOT_FOUND, "not_found");
    let stored = server
        .state
        .store()
        .backup(backup["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    let path = stored.path.unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let answer = raw(
        &server,
        Method::POST,
        &format!("/api/addons/{prod_id}/restore"),
        Some(token),
        Some(json!({"backup_id": backup["id"]})),
    )
    .await;
    assert_error(&answer, StatusCode::CONFLICT, "not_possible");
    assert!(answer.2["error"]["message"]
        .as_str()
        .unwrap()
        .contains("checksum"));
    assert_eq!(table_hash(&prod_url).await, before);

    // Backup policy validation.
    let policy = |body: Value| {
        let path = format!("/api/addons/{prod_id}/backup-policy");
        let server = &server;
        async move { raw(server, Method::PUT, &path, Some(token), Some(body)).await }
    };
    let answer = policy(json!({"schedule": "every day", "retention": 7})).await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let answer = policy(json!({"schedule": "* * * * * *", "retention": 7})).await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    assert!(answer.2["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exactly 5 fields"));
    let answer = policy(json!({"schedule": "0 3 * * *", "retention": 0})).await;
    assert_error(&answer, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let (status, _, changed) = policy(json!({"schedule": "30 2 * * *", "retention": 3})).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["backup_retention"], 3);

    // Destroy keeps a final backup; the database is gone, the backups stay listed.
    let (status, _, destroyed) = raw(
        &server,
        Method::DELETE,
        &format!("/api/addons/{}", limits["id"].as_str().unwrap()),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{destroyed}");
    assert!(sqlx::PgConnection::connect(&limits_url).await.is_err());
    let final_backups = server
        .state
        .store()
        .backups(limits["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(final_backups.len(), 1);
    assert_eq!(final_backups[0].cause, "final");
    assert_eq!(final_backups[0].state, "succeeded");
    assert!(std::path::Path::new(final_backups[0].path.as_ref().unwrap()).is_file());

    // Redis: a password-protected server, an RDB backup.
    let (status, _, cache) = create(&production, json!({"kind": "redis"})).await;
    assert_eq!(status, StatusCode::CREATED, "{cache}");
    assert_eq!(cache["addon"]["config_vars"], json!(["REDIS_URL"]));
    let cache = cache["addon"].clone();
    let redis_url = credentials(&server, token, &cache).await;
    let (password, port) = redis_url
        .trim_start_matches("redis://:")
        .trim_end_matches("/0")
        .split_once("@127.0.0.1:")
        .unwrap();
    let ping = std::process::Command::new("redis-cli")
        .args(["-p", port, "--no-auth-warning", "SET", "greeting", "hi"])
        .env("REDISCLI_AUTH", password)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ping.stdout).trim(), "OK");
    let unauthenticated = std::process::Command::new("redis-cli")
        .args(["-p", port, "GET", "greeting"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&unauthenticated.stdout).contains("NOAUTH"));
    let (status, _, snapshot) = raw(
        &server,
        Method::POST,
        &format!("/api/addons/{}/backups", cache["id"].as_str().unwrap()),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{snapshot}");
    let (_, _, listed) = raw(
        &server,
        Method::GET,
        &format!(
            "/api/environments/{}/addons",
            production["id"].as_str().unwrap()
        ),
        Some(token),
        None,
    )
    .await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["postgres", "redis"]);
    assert!(
        !listed.to_string().contains(password),
        "credentials never listed"
    );

    // A failed backup is recorded as failed, with its error, and leaves the earlier one.
    let cache_id = cache["id"].as_str().unwrap();
    let redis_dir = server
        .data_dir
        .path()
        .join("addons/redis")
        .join(format!("addon_{}", cache_id.replace('-', "")));
    let pid: i32 = std::fs::read_to_string(redis_dir.join("redis.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the redis-server this test's server started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let answer = raw(
        &server,
        Method::POST,
        &format!("/api/addons/{cache_id}/backups"),
        Some(token),
        None,
    )
    .await;
    assert_error(&answer, StatusCode::CONFLICT, "backup_failed");
    let (_, _, backups) = raw(
        &server,
        Method::GET,
        &format!("/api/addons/{cache_id}/backups"),
        Some(token),
        None,
    )
    .await;
    assert_eq!(backups[0]["state"], "failed", "{backups}");
    assert!(
        backups[0]["error"].as_str().unwrap().contains("redis-cli"),
        "{backups}"
    );
    assert_eq!(backups[1]["state"], "succeeded", "{backups}");
    assert_eq!(backups[1]["id"], snapshot["id"]);
    // …and both are on the environment's events timeline.
    let (status, _, events) = raw(
        &server,
        Method::GET,
        &format!(
            "/api/environments/{}/events",
            production["id"].as_str().unwrap()
        ),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"backup") && kinds.contains(&"backup_failed"),
        "{events}"
    );
}
