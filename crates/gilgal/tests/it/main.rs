//! End-to-end tests of the `gilgal` binary: a real `gilgal server` process and the CLI
//! talking to it over HTTP, on SQLite and on PostgreSQL.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use gilgal_testkit::{backend_tests, Backend};

mod addons;
mod alerts;
mod build_isolation;
mod crash;
mod day2;
mod docker;
mod engine;
mod identity;
mod logs;
mod rollout;
mod schemathesis;
mod strategies;
mod webhooks;
use day2::config_secrets_rollback_and_promotion;

const BIN: &str = env!("CARGO_BIN_EXE_gilgal");

/// A `gilgal server` child process on a free port; killed on drop.
struct ServerProcess {
    child: Child,
    url: String,
    proxy_url: String,
    proxy_tls_url: String,
    dir: tempfile::TempDir,
    database_url: Option<String>,
    /// Extra `gilgal server` arguments (e.g. `--runtime docker`), kept for restarts.
    extra_args: Vec<String>,
    /// The proxy's listening socket when the test holds it (as systemd would) and passes
    /// it to every server it starts; `None` when the server binds its own.
    proxy_socket: Option<std::net::TcpListener>,
    /// Where the server's stderr lines also go, while a test listens.
    tap: LineTap,
}

/// A test's ear on the server's stderr: every line is sent while it holds a sender.
type LineTap = std::sync::Arc<std::sync::Mutex<Option<std::sync::mpsc::Sender<String>>>>;

/// Starts `gilgal server` on free ports over `dir`, returning it and its "ready" log line.
fn spawn_server(
    dir: &Path,
    database_url: Option<&str>,
    extra_args: &[String],
    proxy_socket: Option<&std::net::TcpListener>,
    tap: &LineTap,
) -> (Child, serde_json::Value) {
    let mut command = match proxy_socket {
        None => Command::new(BIN),
        Some(socket) => {
            // As systemd's socket activation does: the socket as descriptor 3, named, and
            // LISTEN_PID naming the server (the shell's pid, which `exec` keeps).
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let fd = socket.as_raw_fd();
            let mut command = Command::new("/bin/sh");
            command
                .args([
                    "-c",
                    "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=proxy exec \"$0\" \"$@\"",
                    BIN,
                ])
                .env_remove("LISTEN_PID");
            // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    if fd == 3 {
                        if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(fd, 3) != 3 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            command
        }
    };
    command.args(["server", "--listen", "127.0.0.1:0"]);
    if proxy_socket.is_none() {
        command.args(["--proxy-listen", "127.0.0.1:0"]);
    }
    command
        .args([
            "--proxy-tls-listen",
            "127.0.0.1:0",
            "--stop-apps-on-exit",
            "--allow-local-git",
            "--keep-releases",
            "3",
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .args(extra_args)
        .env_remove("GILGAL_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(url) = database_url {
        command.env("GILGAL_DATABASE_URL", url);
    }
    let mut child = command.spawn().expect("spawn gilgal server");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tap = tap.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Captured by the test harness: shown with a failing test's output.
            eprintln!("server: {line}");
            if let Some(ear) = tap.lock().unwrap().as_ref() {
                let _ = ear.send(line.clone());
            }
            if line.contains("gilgal server ready") {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(value);
            }
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server announced its address");
    (child, ready)
}

impl ServerProcess {
    async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    /// Starts a server with extra `gilgal server` arguments (also used on restarts).
    async fn start_with(backend: Backend, extra_args: &[&str]) -> Self {
        Self::launch(backend, extra_args, None).await
    }

    /// Starts a server that is handed its proxy socket, bound by the test (kept open across
    /// crashes, as systemd keeps a `.socket` unit's), like socket activation.
    async fn start_with_proxy_socket(backend: Backend) -> Self {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Self::launch(backend, &[], Some(socket)).await
    }

    async fn launch(
        backend: Backend,
        extra_args: &[&str],
        proxy_socket: Option<std::net::TcpListener>,
    ) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        let dir = tempfile::tempdir().unwrap();
        // As root, apps run as their own users: they must be able to pass through to their
        // releases in the data dir below (never to list or read anything else).
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let admin = std::env::var(gilgal_testkit::POSTGRES_URL_VAR)
                    .expect("GILGAL_TEST_POSTGRES_URL (run scripts/test)");
                let name = format!("gilgal_e2e_{}", uuid::Uuid::new_v4().simple());
                Some(
                    gilgal_store::create_postgres_database(&admin, &name)
                        .await
                        .unwrap(),
                )
            }
        };
        let tap = LineTap::default();
        let (child, ready) = spawn_server(
            dir.path(),
            database_url.as_deref(),
            &extra_args,
            proxy_socket.as_ref(),
            &tap,
        );
        let field = |name: &str| ready[name].as_str().unwrap().to_owned();
        Self {
            child,
            url: field("api"),
            proxy_url: field("proxy"),
            proxy_tls_url: field("proxy_tls"),
            dir,
            database_url,
            extra_args,
            proxy_socket,
            tap,
        }
    }

    /// Kills the server with SIGKILL (apps keep running) and starts a new one on the same
    /// data dir and database.
    fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, ready) = spawn_server(
            self.dir.path(),
            self.database_url.as_deref(),
            &self.extra_args,
            self.proxy_socket.as_ref(),
            &self.tap,
        );
        self.child = child;
        self.url = ready["api"].as_str().unwrap().to_owned();
        self.proxy_url = ready["proxy"].as_str().unwrap().to_owned();
        self.proxy_tls_url = ready["proxy_tls"].as_str().unwrap().to_owned();
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Runs the CLI against this server with its own config dir.
    fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        cli_with(&self.config_dir(), Some(&self.url), args, stdin, &[])
    }
}

impl Drop for ServerProcess {
    /// SIGTERM, so the server stops the apps it runs (`--stop-apps-on-exit`); SIGKILL after 15 s.
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut exited = false;
        for _ in 0..150 {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The edge process outlives a killed server by design; a test's must not outlive it.
        stop_edge(&self.dir.path().join("data/edge/edge.pid"));
        // Add-on servers outlive a killed server by design; a test's must not outlive it.
        gilgal_addons::stop_all(
            &self.dir.path().join("data/addons"),
            Duration::from_secs(10),
        );
    }
}

/// Stops the edge process named by its pid file (SIGTERM; SIGKILL after 15 s), if it runs.
fn stop_edge(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: kill(2) on the pid the test's own edge wrote; no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..150 {
        // SAFETY: as above; signal 0 only checks the process exists.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn cli_with(
    config: &Path,
    server: Option<&str>,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> Output {
    let mut command = Command::new(BIN);
    if let Some(server) = server {
        command.args(["--server", server]);
    }
    command
        .args(args)
        .env("GILGAL_CONFIG_DIR", config)
        .env_remove("GILGAL_TOKEN")
        .env_remove("GILGAL_SERVER")
        .env_remove("GILGAL_PROJECT")
        .env_remove("GILGAL_ENV")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed:\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Asserts a failure printed exactly one line, containing `needle`, and no panic or backtrace.
#[track_caller]
fn fails_with(out: Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected failure, got: {}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

const PASSWORD: &str = "a long enough password\n";

backend_tests!(
    config_secrets_rollback_and_promotion,
    cli_full_flow,
    proxy_serves_tls_with_certificates_from_the_api,
    deploy_example_through_the_proxy,
);

async fn cli_full_flow(backend: Backend) {
    let server = ServerProcess::start(backend).await;

    let registered = ok(server.cli(
        &[
            "register",
            "--email",
            "admin@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    assert!(registered.contains("Logged in to"), "{registered}");
    let creds = server.config_dir().join("credentials.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&creds).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // The stored login remembers the server, so later commands need no --server.
    assert_eq!(
        ok(cli_with(&server.config_dir(), None, &["whoami"], None, &[])).trim(),
        "admin@example.com (admin)"
    );

    ok(server.cli(
        &["projects", "create", "shop-api", "--description", "orders"],
        None,
    ));
    ok(server.cli(&["projects", "create", "blog"], None));
    let list = ok(server.cli(&["projects", "list"], None));
    assert!(list.starts_with("NAME"), "{list}");
    assert!(
        list.find("blog").unwrap() < list.find("shop-api").unwrap(),
        "sorted by name: {list}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(server.cli(&["projects", "list", "--json"], None))).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let shown: serde_json::Value = serde_json::from_str(&ok(
        server.cli(&["projects", "show", "shop-api", "--json"], None)
    ))
    .unwrap();
    assert_eq!(shown["description"], "orders");
    fails_with(
        server.cli(&["projects", "create", "shop-api"], None),
        "already exists",
    );
    fails_with(
        server.cli(&["projects", "create", "Shop API"], None),
        "lowercase",
    );
    fails_with(server.cli(&["projects", "delete", "blog"], None), "--yes");
    ok(server.cli(&["projects", "delete", "blog", "--yes"], None));
    fails_with(server.cli(&["projects", "show", "blog"], None), "not found");

    // A CI token from `tokens create` works through GILGAL_TOKEN for any command.
    let ci_token = ok(server.cli(&["tokens", "create", "ci"], None))
        .trim()
        .to_owned();
    assert!(ci_token.starts_with("gilgal_pat_"));
    let other_config = server.dir.path().join("ci-config");
    let as_ci = cli_with(
        &other_config,
        Some(&server.url),
        &["whoami"],
        None,
        &[("GILGAL_TOKEN", &ci_token)],
    );
    assert_eq!(ok(as_ci).trim(), "admin@example.com (admin)");
    let tokens: serde_json::Value =
        serde_json::from_str(&ok(server.cli(&["tokens", "list", "--json"], None))).unwrap();
    assert!(
        !tokens.to_string().contains(&ci_token),
        "secrets never listed"
    );
    let ci_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(server.cli(&["tokens", "revoke", &ci_id], None));
    fails_with(
        cli_with(
            &other_config,
            Some(&server.url),
            &["whoami"],
            None,
            &[("GILGAL_TOKEN", &ci_token)],
        ),
        "gilgal login",
    );

    // Wrong credentials, an unreachable server and a missing login each get one clear line.
    fails_with(
        server.cli(
            &["login", "--email", "admin@example.com", "--password-stdin"],
            Some("wrong password!\n"),
        ),
        "wrong email or password",
    );
    let dead = "http://127.0.0.1:9";
    fails_with(
        cli_with(
            &other_config,
            Some(dead),
            &["whoami"],
            None,
            &[("GILGAL_TOKEN", "x")],
        ),
        "cannot reach the Gilgal server",
    );
    fails_with(
        cli_with(
            &other_config,
            Some(&server.url),
            &["projects", "list"],
            None,
            &[],
        ),
        "not logged in",
    );
    fails_with(
        server.cli(&["login", "--email", "admin@example.com"], None),
        "--password-stdin",
    );

    // Logout revokes the stored token on the server, not just locally.
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    let old_token = stored["token"].as_str().unwrap().to_owned();
    ok(server.cli(&["logout"], None));
    assert!(!creds.exists());
    fails_with(
        cli_with(
            &other_config,
            Some(&server.url),
            &["whoami"],
            None,
            &[("GILGAL_TOKEN", &old_token)],
        ),
        "gilgal login",
    );
    ok(server.cli(
        &["login", "--email", "admin@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    assert!(ok(server.cli(&["projects", "list"], None)).contains("shop-api"));
}

#[test]
fn server_reports_a_bad_database_url_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("GILGAL_DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("error: cannot open the postgres store"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// The server runs the edge proxy: plain HTTP answers unknown hosts with the proxy's 404 page,
/// and HTTPS terminates with a certificate uploaded through the API (picked by SNI), which also
/// survives a server restart because the store is the source of truth.
async fn proxy_serves_tls_with_certificates_from_the_api(backend: Backend) {
    let server = ServerProcess::start(backend).await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "admin@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    let token = ok(server.cli(&["tokens", "create", "tls-test"], None))
        .trim()
        .to_owned();

    let plain = reqwest::Client::new()
        .get(format!("{}/", server.proxy_url))
        .header("host", "nothing.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 404);
    assert!(plain.headers().contains_key("x-request-id"));

    let generated =
        rcgen::generate_simple_self_signed(vec!["shop.example.test".to_owned()]).unwrap();
    let upload = reqwest::Client::new()
        .put(format!(
            "{}/api/admin/certificates/shop.example.test",
            server.url
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "cert_chain_pem": generated.cert.pem(),
            "key_pem": generated.key_pair.serialize_pem(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200, "{}", upload.text().await.unwrap());

    let tls_addr: std::net::SocketAddr = server
        .proxy_tls_url
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("shop.example.test", tls_addr)
        .build()
        .unwrap();
    let over_tls = trusting
        .get(format!("https://shop.example.test:{}/", tls_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        over_tls.status(),
        404,
        "TLS terminated with the uploaded certificate; no app routed yet"
    );

    // A hostname without a certificate gets no handshake.
    let unknown = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("other.example.test", tls_addr)
        .build()
        .unwrap()
        .get(format!("https://other.example.test:{}/", tls_addr.port()))
        .send()
        .await;
    assert!(unknown.is_err(), "no certificate, no TLS: {unknown:?}");
}

fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

async fn get_via_proxy(server: &ServerProcess, host: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("{}/", server.proxy_url))
        .header("host", host)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// `gilgal deploy` of the bundled Python example: build, release phase, health-gated start,
/// live through the proxy at `hello.localhost`; a redeploy replaces it; a release that crashes
/// on boot fails with its log tail while the previous release keeps serving.
async fn deploy_example_through_the_proxy(backend: Backend) {
    let server = ServerProcess::start(backend).await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "admin@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "hello"], None));
    let app = example_dir("python-hello");
    let deployed = server.cli(
        &["deploy", app.to_str().unwrap(), "--project", "hello"],
        None,
    );
    let printed = ok(deployed);
    assert!(
        printed.contains("Deployed v1 to production: http://hello.localhost:"),
        "{printed}"
    );
    let (status, body) = get_via_proxy(&server, "hello.localhost").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"release\": \"v1\""), "{body}");

    let again = ok(server.cli(
        &["deploy", app.to_str().unwrap(), "--project", "hello"],
        None,
    ));
    assert!(again.contains("Deployed v2"), "{again}");
    let (status, body) = get_via_proxy(&server, "hello.localhost").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"release\": \"v2\""), "{body}");

    // A release that crashes on boot never gets traffic.
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("requirements.txt"), "").unwrap();
    std::fs::write(
        broken.path().join("Procfile"),
        "web: python3 -c \"import sys; print('boom on boot'); sys.exit(3)\"\n",
    )
    .unwrap();
    let failed = server.cli(
        &[
            "deploy",
            broken.path().to_str().unwrap(),
            "--project",
            "hello",
        ],
        None,
    );
    assert!(!failed.status.success());
    let err = stderr(&failed);
    assert!(err.contains("never became healthy"), "{err}");
    assert!(
        err.contains("boom on boot"),
        "failure quotes the log tail: {err}"
    );
    let (status, body) = get_via_proxy(&server, "hello.localhost").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"release\": \"v2\""),
        "previous release still serves: {body}"
    );
}

/// Zero downtime: ten redeploys while two clients (keep-alive and a new connection per
/// request) hit the app through the proxy continuously; not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_redeploys_under_load_drop_no_request() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "admin@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "steady"], None));
    let app = example_dir("python-hello");
    ok(server.cli(
        &["deploy", app.to_str().unwrap(), "--project", "steady"],
        None,
    ));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for keep_alive in [true, false] {
        let stop = stop.clone();
        let url = format!("{}/", server.proxy_url);
        clients.push(tokio::spawn(async move {
            let mut builder = reqwest::Client::builder();
            if !keep_alive {
                builder = builder.pool_max_idle_per_host(0);
            }
            let client = builder.build().unwrap();
            let (mut ok_count, mut failures) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client
                    .get(&url)
                    .header("host", "steady.localhost")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok_count += 1,
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (ok_count, failures)
        }));
    }
    for round in 2..=11 {
        let out = ok(server.cli(
            &["deploy", app.to_str().unwrap(), "--project", "steady"],
            None,
        ));
        assert!(out.contains(&format!("Deployed v{round}")), "{out}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        let (ok_count, failures) = client.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} failed requests, e.g. {:?}",
            failures.len(),
            failures.first()
        );
        assert!(ok_count > 50, "the client kept sending ({ok_count} ok)");
    }
    let (_, body) = get_via_proxy(&server, "steady.localhost").await;
    assert!(body.contains("\"release\": \"v11\""), "{body}");
}

/// The Node and static examples deploy and serve through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_static_examples_deploy() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "admin@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    for (project, example, expect) in [
        ("node", "node-hello", "Hello from Node on Gilgal"),
        ("site", "static-site", "Hello from a static site on Gilgal"),
    ] {
        ok(server.cli(&["projects", "create", project], None));
        let dir = example_dir(example);
        let out = ok(server.cli(
            &["deploy", dir.to_str().unwrap(), "--project", project],
            None,
        ));
        assert!(out.contains("Deployed v1"), "{out}");
        let (status, body) = get_via_proxy(&server, &format!("{project}.localhost")).await;
        assert_eq!(status, 200, "{project}: {body}");
        assert!(body.contains(expect), "{project}: {body}");
    }
}

/// `kill -9` of the server in the middle of a rollout: after a restart the environment
/// converges with no new deploy (exactly one release serving, the interrupted deployment
/// failed rather than stuck "in progress"), and no instance of the app is left orphaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_rollout_converges_after_restart() {
    let mut server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "admin@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "phoenix"], None));
    let app = example_dir("python-hello");
    ok(server.cli(
        &["deploy", app.to_str().unwrap(), "--project", "phoenix"],
        None,
    ));

    // The CLI's stored login names the server's URL, which changes on restart: keep a token.
    let token = ok(server.cli(&["tokens", "create", "check"], None))
        .trim()
        .to_owned();

    // Start v2 and kill the server while it builds/starts.
    let accepted = ok(server.cli(
        &[
            "deploy",
            app.to_str().unwrap(),
            "--project",
            "phoenix",
            "--no-follow",
            "--json",
        ],
        None,
    ));
    let deployment: serde_json::Value = serde_json::from_str(&accepted).unwrap();
    let id = deployment["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.crash_and_restart();

    // Converges: the app answers through the new proxy, from exactly one release.
    let mut body = String::new();
    for _ in 0..100 {
        let (status, text) = get_via_proxy(&server, "phoenix.localhost").await;
        if status == 200 {
            body = text;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        body.contains("\"release\": \"v"),
        "app serves after restart: {body}"
    );
    let record: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/deployments/{id}", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let state = record["state"].as_str().unwrap();
    assert!(
        ["live", "failed"].contains(&state),
        "interrupted deployment settled, not stuck: {record}"
    );

    // Exactly one web instance of phoenix runs (no orphan from the killed server's rollout).
    // (The reconciler stops the interrupted rollout's instance; give it time under load.)
    let mut instances = count_processes_with_env("GILGAL_APP=phoenix");
    for _ in 0..100 {
        if instances == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        instances = count_processes_with_env("GILGAL_APP=phoenix");
    }
    assert_eq!(instances, 1, "one instance of the app, no orphans");
}

/// Counts live processes whose environment contains `needle` (a `KEY=value` pair).
fn count_processes_with_env(needle: &str) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        if let Ok(environ) = std::fs::read(entry.path().join("environ")) {
            if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
                count += 1;
            }
        }
    }
    count
}

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A release that never binds its port hits its boot deadline and gets no traffic; an old
/// release that ignores SIGTERM is SIGKILLed after its grace period; a slow request in flight
/// during a rollout completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_releases_and_in_flight_requests() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "admin@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "stubborn"], None));
    let stubborn = fixture_dir("ignores-sigterm");
    ok(server.cli(
        &[
            "deploy",
            stubborn.to_str().unwrap(),
            "--project",
            "stubborn",
        ],
        None,
    ));
    assert_eq!(count_processes_with_env("GILGAL_APP=stubborn"), 1);

    // Never binds: fails at the boot deadline, v1 keeps serving.
    let never = fixture_dir("never-binds");
    let failed = server.cli(
        &["deploy", never.to_str().unwrap(), "--project", "stubborn"],
        None,
    );
    assert!(!failed.status.success());
    let err = stderr(&failed);
    assert!(err.contains("never became healthy"), "{err}");
    assert!(
        err.contains("up, but not listening"),
        "log tail quoted: {err}"
    );
    let (status, body) = get_via_proxy(&server, "stubborn.localhost").await;
    assert_eq!((status, body.as_str()), (200, "v1"));
    // Its process may still be exiting when the failure is reported; it must be gone soon.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count_processes_with_env("GILGAL_APP=stubborn") > 1
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count_processes_with_env("GILGAL_APP=stubborn"),
        1,
        "the failed release's instance is gone"
    );

    // Replacing the SIGTERM-ignoring release: SIGKILL after its 2 s grace period.
    let started = std::time::Instant::now();
    let example = example_dir("python-hello");
    ok(server.cli(
        &["deploy", example.to_str().unwrap(), "--project", "stubborn"],
        None,
    ));
    // `deploy` returns once v3 is live; the old instance drains and is killed in the background.
    while count_processes_with_env("GILGAL_APP=stubborn") > 1
        && started.elapsed() < Duration::from_secs(25)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count_processes_with_env("GILGAL_APP=stubborn"),
        1,
        "old instance killed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the old release's 2 s grace period was honoured, not the default 30 s"
    );

    // A slow request in flight during the next rollout completes.
    let proxy = server.proxy_url.clone();
    let slow = tokio::spawn(async move {
        reqwest::Client::new()
            .get(format!("{proxy}/sleep/3"))
            .header("host", "stubborn.localhost")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    ok(server.cli(
        &["deploy", example.to_str().unwrap(), "--project", "stubborn"],
        None,
    ));
    assert_eq!(
        slow.await.unwrap().unwrap(),
        200,
        "in-flight request finished on the old release"
    );
}

/// Unmodified third-party apps: httpbin under gunicorn from PyPI, http-server from npm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_apps_from_pypi_and_npm() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "admin@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    for (project, fixture) in [("httpbin", "httpbin"), ("files", "npm-http-server")] {
        ok(server.cli(&["projects", "create", project], None));
        let dir = fixture_dir(fixture);
        let out = ok(server.cli(
            &["deploy", dir.to_str().unwrap(), "--project", project],
            None,
        ));
        assert!(out.contains("Deployed v1"), "{out}");
    }
    let response = reqwest::Client::new()
        .get(format!("{}/get?probe=1&show_env=1", server.proxy_url))
        .header("host", "httpbin.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echoed["args"]["probe"], "1");
    assert_eq!(echoed["headers"]["Host"], "httpbin.localhost", "{echoed}");
    assert!(
        echoed["headers"]["X-Request-Id"].is_string(),
        "the proxy adds a request id: {echoed}"
    );
    let (status, body) = get_via_proxy(&server, "files.localhost").await;
    assert_eq!(status, 200);
    assert!(body.contains("served by http-server from npm"), "{body}");
}

/// `gilgal deploy` of a directory with no `.gitignore` keeps local secrets and installed
/// dependencies on the developer's machine, says so, and the app still builds and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_leaves_local_secrets_and_virtualenvs_behind() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &["register", "--email", "dev@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "dotenv"], None));
    let src = tempfile::tempdir().unwrap();
    for file in ["Procfile", "app.py", "gilgal.toml", "requirements.txt"] {
        std::fs::copy(
            example_dir("python-hello").join(file),
            src.path().join(file),
        )
        .unwrap();
    }
    std::fs::write(src.path().join(".env"), "SECRET_TOKEN=do-not-upload\n").unwrap();
    std::fs::create_dir_all(src.path().join(".venv/bin")).unwrap();
    std::fs::write(src.path().join(".venv/bin/python"), "not a python").unwrap();
    let out = server.cli(
        &["deploy", src.path().to_str().unwrap(), "-p", "dotenv"],
        None,
    );
    let said = stderr(&out);
    ok(out);
    assert!(said.contains("Left out .env, .venv"), "{said}");
    let releases = server.dir.path().join("data/releases");
    assert!(
        build_isolation::find_named(&releases, "app.py").len() == 1,
        "the app was built"
    );
    assert!(build_isolation::find_named(&releases, ".env").is_empty());
    let (status, _) = get_via_proxy(&server, "dotenv.localhost").await;
    assert_eq!(status, 200);
}

/// `gilgal link` ties a directory (and those below it) to a project and environment: commands
/// run there need no `-p`/`-e`, a `-p` wins over the link (without dragging the linked
/// environment along), an unknown project is refused, and `unlink` undoes it. `logout` keeps
/// the server for the next `login`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_directory_needs_no_project_or_environment_flags() {
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &["register", "--email", "dev@example.com", "--password-stdin"],
        Some(PASSWORD),
    ));
    ok(server.cli(&["projects", "create", "linked"], None));
    ok(server.cli(&["projects", "create", "other"], None));
    ok(server.cli(&["environments", "create", "staging", "-p", "linked"], None));
    let tree = tempfile::tempdir().unwrap();
    let sub = tree.path().join("web/src");
    std::fs::create_dir_all(&sub).unwrap();
    let run_in = |cwd: &Path, args: &[&str]| -> Output {
        Command::new(BIN)
            .args(["--server", server.url.as_str()])
            .args(args)
            .current_dir(cwd)
            .env("GILGAL_CONFIG_DIR", server.config_dir())
            .env_remove("GILGAL_TOKEN")
            .env_remove("GILGAL_SERVER")
            .env_remove("GILGAL_PROJECT")
            .env_remove("GILGAL_ENV")
            .output()
            .unwrap()
    };

    let unlinked = run_in(tree.path(), &["env", "list"]);
    assert!(!unlinked.status.success());
    assert!(
        stderr(&unlinked).contains("--project"),
        "{}",
        stderr(&unlinked)
    );
    let unknown = run_in(tree.path(), &["link", "-p", "nope"]);
    assert!(
        !unknown.status.success(),
        "an unknown project is not linked"
    );
    assert!(
        !run_in(tree.path(), &["link"]).status.success(),
        "nothing linked"
    );

    ok(run_in(
        tree.path(),
        &["link", "-p", "linked", "-e", "staging"],
    ));
    let shown = ok(run_in(&sub, &["link"]));
    assert!(shown.contains("linked (staging)"), "{shown}");
    ok(run_in(&sub, &["env", "set", "WHERE=by-link"]));
    let staging = ok(server.cli(&["env", "list", "-p", "linked", "-e", "staging"], None));
    assert!(staging.contains("WHERE"), "{staging}");
    let production = ok(server.cli(&["env", "list", "-p", "linked"], None));
    assert!(!production.contains("WHERE"), "{production}");

    // -p wins over the link, and the linked environment does not follow it.
    ok(run_in(&sub, &["env", "set", "-p", "other", "WHERE=named"]));
    let other = ok(server.cli(&["env", "list", "-p", "other"], None));
    assert!(other.contains("WHERE"), "{other}");

    ok(run_in(&sub, &["unlink"]));
    assert!(!run_in(tree.path(), &["env", "list"]).status.success());

    // Logged out, the next login goes to the same server without --server.
    ok(server.cli(&["logout"], None));
    ok(cli_with(
        &server.config_dir(),
        None,
        &["login", "--email", "dev@example.com", "--password-stdin"],
        Some(PASSWORD),
        &[],
    ));
    let me = ok(cli_with(&server.config_dir(), None, &["whoami"], None, &[]));
    assert!(me.contains("dev@example.com"), "{me}");
}
