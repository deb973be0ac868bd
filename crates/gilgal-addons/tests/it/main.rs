//! The managed servers for real: Debian's PostgreSQL and Redis started under a temporary
//! directory, databases isolated per role, backups restored byte for byte, and no
//! acknowledged write lost to a SIGKILL of the postmaster.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gilgal_addons::postgres::PostgresServer;
use gilgal_addons::redis::RedisServer;
use gilgal_addons::{random_password, RunAs};
use sqlx::{Connection, Row};

mod s3;

/// A temporary directory the `postgres`/`redis` system users can pass through (as root).
fn addons_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

async fn connect(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    sqlx::PgConnection::connect(url).await
}

async fn table_hash(conn: &mut sqlx::PgConnection) -> String {
    sqlx::query("SELECT md5(string_agg(id::text || ':' || body, ',' ORDER BY id)) AS h FROM notes")
        .fetch_one(conn)
        .await
        .unwrap()
        .try_get::<String, _>("h")
        .unwrap()
}

#[tokio::test]
async fn postgres_isolation_backup_restore_and_kill_9() {
    let dir = addons_dir();
    let server =
        PostgresServer::managed(dir.path(), RunAs::system_user("postgres"), Vec::new()).unwrap();
    server.ensure_running().await.unwrap();
    server.ensure_running().await.unwrap(); // idempotent

    let (a_pw, b_pw) = (random_password(), random_password());
    server.create_database("addon_a", &a_pw).await.unwrap();
    server.create_database("addon_b", &b_pw).await.unwrap();
    server.create_database("addon_a", &a_pw).await.unwrap(); // converges, no error

    // One environment's credentials open nothing of another's.
    let a_url = server.url("addon_a", &a_pw);
    let cross = format!(
        "postgresql://addon_a:{a_pw}@127.0.0.1:{}/addon_b",
        server.port()
    );
    let refused = connect(&cross)
        .await
        .expect_err("a's role must not reach b's database");
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
    let wrong_password = server.url("addon_b", &a_pw);
    assert!(connect(&wrong_password).await.is_err());

    // Backup → drop table → restore: identical rows.
    let mut a = connect(&a_url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL); \
         INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 500) g",
    )
    .execute(&mut a)
    .await
    .unwrap();
    let before = table_hash(&mut a).await;
    let backup = server
        .dump("addon_a", &a_pw, &dir.path().join("a.dump"))
        .await
        .unwrap();
    assert!(backup.size > 0 && backup.sha256.len() == 64, "{backup:?}");
    sqlx::raw_sql("DROP TABLE notes")
        .execute(&mut a)
        .await
        .unwrap();
    server
        .restore("addon_a", &a_pw, &backup.path)
        .await
        .unwrap();
    assert_eq!(table_hash(&mut a).await, before);
    // …and into a new database.
    let c_pw = random_password();
    server.create_database("addon_c", &c_pw).await.unwrap();
    server
        .restore("addon_c", &c_pw, &backup.path)
        .await
        .unwrap();
    let mut c = connect(&server.url("addon_c", &c_pw)).await.unwrap();
    assert_eq!(table_hash(&mut c).await, before);
    drop(c);
    // A corrupt backup fails and changes nothing.
    let corrupt = dir.path().join("corrupt.dump");
    std::fs::write(&corrupt, b"PGDMP not really").unwrap();
    assert!(server.restore("addon_a", &a_pw, &corrupt).await.is_err());
    assert_eq!(table_hash(&mut a).await, before);

    // SIGKILL the postmaster during writes; after the supervisor's restart every
    // acknowledged insert is there.
    sqlx::raw_sql("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .execute(&mut a)
        .await
        .unwrap();
    drop(a);
    let writer_url = a_url.clone();
    let writer = tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let Ok(mut conn) = connect(&writer_url).await else {
            return acknowledged;
        };
        for id in 0..100_000i64 {
            match sqlx::query("INSERT INTO acked (id) VALUES ($1)")
                .bind(id)
                .execute(&mut conn)
                .await
            {
                Ok(_) => acknowledged.push(id),
                Err(_) => break,
            }
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = server.postmaster_pid().expect("postmaster runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() > 10,
        "the writer made progress: {}",
        acknowledged.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.ensure_running().await.is_err() {
        assert!(Instant::now() < deadline, "PostgreSQL never came back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_ne!(server.postmaster_pid(), Some(pid), "a new postmaster");
    let mut a = connect(&a_url).await.unwrap();
    let present: BTreeSet<i64> = sqlx::query("SELECT id FROM acked")
        .fetch_all(&mut a)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get::<i64, _>("id").unwrap())
        .collect();
    let lost: Vec<&i64> = acknowledged
        .iter()
        .filter(|id| !present.contains(id))
        .collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost", lost.len());
    drop(a);

    server.drop_database("addon_b").await.unwrap();
    assert!(!server.database_exists("addon_b").await.unwrap());
    stop_postgres(&server);
}

fn stop_postgres(server: &PostgresServer) {
    if let Some(pid) = server.postmaster_pid() {
        // Fast shutdown of the server this test started.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGINT,
        );
    }
}

#[tokio::test]
async fn redis_runs_with_a_password_and_snapshots() {
    let dir = addons_dir();
    let port = gilgal_addons::redis::free_port().unwrap();
    let password = random_password();
    let server = RedisServer::new(
        dir.path(),
        "addon_r",
        port,
        &password,
        RunAs::system_user("redis"),
        None,
    )
    .unwrap();
    server.ensure_running().await.unwrap();
    server.ensure_running().await.unwrap();
    let cli = |args: &[&str], auth: Option<&str>| {
        let mut command = std::process::Command::new("redis-cli");
        command
            .args(["-p", &port.to_string(), "--no-auth-warning"])
            .args(args);
        if let Some(auth) = auth {
            command.env("REDISCLI_AUTH", auth);
        }
        String::from_utf8_lossy(&command.output().unwrap().stdout)
            .trim()
            .to_owned()
    };
    assert!(
        cli(&["SET", "k", "v"], None).contains("NOAUTH"),
        "a password is required"
    );
    assert_eq!(cli(&["SET", "k", "v"], Some(&password)), "OK");
    let snapshot = server.snapshot(&dir.path().join("r.rdb")).await.unwrap();
    assert!(snapshot.size > 0);
    let bytes = std::fs::read(&snapshot.path).unwrap();
    assert!(bytes.starts_with(b"REDIS"), "an RDB file");
    assert!(server.url().starts_with("redis://:"));

    // Killed, it comes back with its data (AOF).
    let pid = server.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.ensure_running().await.unwrap();
    assert_eq!(cli(&["GET", "k"], Some(&password)), "v");
    server.destroy().await.unwrap();
    assert!(server.pid().is_none());
}

/// An external server named by an admin URL (the suite's PostgreSQL): databases and roles
/// are created and dropped there, and backups use the client programs.
#[tokio::test]
async fn external_postgres_server_hosts_addon_databases() {
    let admin = std::env::var("GILGAL_TEST_POSTGRES_URL")
        .expect("GILGAL_TEST_POSTGRES_URL (scripts/test starts a server and sets it)");
    let server = PostgresServer::external(&admin).unwrap();
    server.ensure_running().await.unwrap();
    let name = format!("addon_ext_{}", std::process::id());
    let password = random_password();
    server.create_database(&name, &password).await.unwrap();
    let url = server.url(&name, &password);
    let mut conn = connect(&url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL); \
         INSERT INTO notes (body) VALUES ('one'), ('two')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let before = table_hash(&mut conn).await;
    drop(conn);
    let dir = addons_dir();
    let backup = server
        .dump(&name, &password, &dir.path().join("ext.dump"))
        .await
        .unwrap();
    server
        .restore(&name, &password, &backup.path)
        .await
        .unwrap();
    let mut conn = connect(&url).await.unwrap();
    assert_eq!(table_hash(&mut conn).await, before);
    drop(conn);
    server.drop_database(&name).await.unwrap();
    assert!(!server.database_exists(&name).await.unwrap());
}
