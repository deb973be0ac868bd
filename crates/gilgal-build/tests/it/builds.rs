//! Real builds with python3/pip, npm, cargo and sh: success, caching, failures, cancellation.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use gilgal_build::builder::{
    build, Artifact, BuildError, BuildRequest, DependencyCache, LogLine, LogSink, LogStream,
};
use gilgal_build::detect::Stack;
use gilgal_build::procfile::ProcessType;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::support::copy_fixture;

/// A log sink plus a task collecting everything sent to it.
fn collecting_sink() -> (LogSink, JoinHandle<Vec<LogLine>>) {
    let (sender, mut receiver) = mpsc::channel(64);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = receiver.recv().await {
            lines.push(line);
        }
        lines
    });
    (LogSink::new(sender), collector)
}

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    /// A source directory made of a fixture plus extra files.
    fn source(&self, name: &str, fixture: Option<&str>, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.path(name);
        fs::create_dir_all(&dir).unwrap();
        if let Some(fixture) = fixture {
            copy_fixture(fixture, &dir);
        }
        for (file, content) in files {
            fs::write(dir.join(file), content).unwrap();
        }
        dir
    }

    fn request(&self, source: &Path, release: &str) -> BuildRequest {
        BuildRequest::new(source, self.path(release), self.cache())
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a process type of an artifact the way the runtime will (argument vector from the
/// command line, environment from the artifact) and returns the child.
fn start_process(artifact: &Artifact, process_type: &ProcessType, port: u16) -> Child {
    let spec = artifact.process(process_type).unwrap();
    let mut env: Vec<(String, String)> =
        artifact.instance_env(&std::env::var("PATH").unwrap_or_default());
    env.push(("PORT".to_owned(), port.to_string()));
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let argv = spec.command.expand(&lookup);
    Command::new(&argv[0])
        .args(&argv[1..])
        .process_group(0)
        .current_dir(&artifact.app_dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .spawn()
        .unwrap()
}

/// Kills a process started by [`start_process`] with everything it started (`npm start` runs
/// node as a grandchild), and reaps it.
fn stop_group(mut child: Child) {
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
}

/// GETs `/` on a local port, retrying until the server is up (30 s at most).
fn http_get(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream
                .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            return response;
        }
        assert!(Instant::now() < deadline, "nothing listened on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn python_in_venv(artifact: &Artifact, code: &str) -> String {
    let output = Command::new(artifact.app_dir.join(".venv/bin/python"))
        .args(["-c", code])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_app_builds_runs_and_reuses_its_venv() {
    let work = Workspace::new();
    let source = work.source("src1", Some("python-app"), &[]);
    let (sink, logs) = collecting_sink();
    let cold_started = Instant::now();
    let first = build(work.request(&source, "release-1"), sink)
        .await
        .unwrap();
    let cold = cold_started.elapsed();
    let logs = logs.await.unwrap();
    assert!(!source.exists(), "the source was moved into the release");
    assert_eq!(first.stack, Stack::Python);
    assert_eq!(first.dependency_cache, DependencyCache::Populated);
    assert!(first.has_web());
    assert_eq!(
        first.release.as_ref().unwrap().command.as_str(),
        "python -c \"print('migrating')\""
    );
    assert_eq!(first.release.as_ref().unwrap().timeout_secs, 300);
    assert!(logs.iter().any(|line| line.stream == LogStream::System
        && line.text.contains("pip")
        && line.text.starts_with("$ ")));
    assert!(
        logs.iter().any(|line| line.text.contains("six")),
        "pip output is streamed"
    );
    let venv = first.app_dir.join(".venv");
    assert_eq!(
        python_in_venv(
            &first,
            "import six, sys; print(six.__version__, sys.prefix)"
        ),
        format!("1.16.0 {}", venv.display())
    );
    assert_eq!(Artifact::load(&first.artifact_dir).unwrap(), first);

    // A code change with the same requirements.txt: the venv comes from the cache, relocated.
    let source = work.source("src2", Some("python-app"), &[("extra.py", "X = 1\n")]);
    let warm_started = Instant::now();
    let second = build(work.request(&source, "release-2"), LogSink::discard())
        .await
        .unwrap();
    let warm = warm_started.elapsed();
    eprintln!("python build: cold {cold:?}, warm {warm:?}");
    assert_eq!(second.dependency_cache, DependencyCache::Reused);
    let venv2 = second.app_dir.join(".venv");
    assert_eq!(
        python_in_venv(
            &second,
            "import six, sys; print(six.__version__, sys.prefix)"
        ),
        format!("1.16.0 {}", venv2.display())
    );
    assert!(second.app_dir.join("extra.py").is_file());
    let cache = work.cache().canonicalize().unwrap();
    for entry in fs::read_dir(venv2.join("bin")).unwrap() {
        let path = entry.unwrap().path();
        if let Ok(text) = fs::read_to_string(&path) {
            assert!(
                !text.contains(cache.to_str().unwrap()),
                "{} still points into the cache",
                path.display()
            );
        }
    }
    // Typically ~0.2 s; the bound only guards against pip having run after all.
    assert!(warm < Duration::from_secs(10), "warm build took {warm:?}");

    // The relocated venv's console scripts work: gunicorn serves the new release.
    let gunicorn = fs::read_to_string(venv2.join("bin/gunicorn")).unwrap();
    assert!(
        gunicorn.starts_with(&format!("#!{}", venv2.join("bin/python").display())),
        "{gunicorn}"
    );
    let port = free_port();
    let child = start_process(&second, &ProcessType::web(), port);
    let response = http_get(port);
    stop_group(child);
    assert!(
        response.contains("hello from python, six 1.16.0"),
        "{response}"
    );
    // The first release is untouched by the second build.
    assert_eq!(
        python_in_venv(&first, "import sys; print(sys.prefix)"),
        venv.display().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_app_installs_from_its_lock_file_and_runs_the_build_script() {
    let work = Workspace::new();
    let source = work.source("src", Some("node-app"), &[]);
    let artifact = build(work.request(&source, "release"), LogSink::discard())
        .await
        .unwrap();
    eprintln!("node build took {} ms", artifact.build_millis);
    assert_eq!(artifact.stack, Stack::Node);
    assert!(artifact
        .app_dir
        .join("node_modules/is-number/package.json")
        .is_file());
    assert_eq!(
        fs::read_to_string(artifact.app_dir.join("built.txt")).unwrap(),
        "is-number(42) = true\n",
        "npm run build ran after npm ci"
    );
    let web = artifact.process(&ProcessType::web()).unwrap();
    assert_eq!(
        web.command.as_str(),
        "npm start",
        "default without a Procfile"
    );
    assert_eq!(
        artifact.env.get("NODE_ENV").map(String::as_str),
        Some("production")
    );
    assert!(work.cache().join("npm").is_dir(), "npm cache kept per app");

    assert_eq!(artifact.dependency_cache, DependencyCache::Populated);

    // Same package.json and lock file, changed code: node_modules comes from the cache.
    let source = work.source("src2", Some("node-app"), &[]);
    let server = fs::read_to_string(source.join("server.js")).unwrap();
    fs::write(
        source.join("server.js"),
        server.replace("hello from node", "hello again from node"),
    )
    .unwrap();
    let second = build(work.request(&source, "release2"), LogSink::discard())
        .await
        .unwrap();
    eprintln!("warm node build took {} ms", second.build_millis);
    assert_eq!(second.dependency_cache, DependencyCache::Reused);
    assert_eq!(
        fs::read_to_string(second.app_dir.join("built.txt")).unwrap(),
        "is-number(42) = true\n",
        "the build script still runs, with the reused dependencies"
    );
    assert!(
        fs::symlink_metadata(second.app_dir.join("node_modules/is-number/index.js"))
            .unwrap()
            .is_file()
    );

    let port = free_port();
    let child = start_process(&second, &ProcessType::web(), port);
    let response = http_get(port);
    stop_group(child);
    assert!(response.contains("hello again from node"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_app_builds_in_release_mode_into_the_artifact() {
    let work = Workspace::new();
    let source = work.source("src", Some("rust-app"), &[]);
    let artifact = build(work.request(&source, "release"), LogSink::discard())
        .await
        .unwrap();
    eprintln!("rust build took {} ms", artifact.build_millis);
    assert_eq!(artifact.stack, Stack::Rust);
    let binary = artifact.app_dir.join("target/release/gilgal-rust-fixture");
    assert!(binary.is_file());
    assert!(work.cache().join("cargo-target/release").is_dir());
    let web = artifact.process(&ProcessType::web()).unwrap();
    assert_eq!(web.command.words(), [binary.display().to_string()]);
    let output = Command::new(&binary).env("PORT", "4242").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "port 4242\n");
}

#[tokio::test]
async fn static_site_has_no_process_and_records_its_directory() {
    let work = Workspace::new();
    let source = work.source("src", Some("static-site"), &[]);
    let artifact = build(work.request(&source, "release"), LogSink::discard())
        .await
        .unwrap();
    assert_eq!(artifact.stack, Stack::Static);
    assert!(artifact.processes.is_empty());
    let dir = artifact.static_dir.clone().unwrap();
    assert!(dir.join("index.html").is_file());

    let source = work.source(
        "src2",
        None,
        &[("gilgal.toml", "[static]\ndir = \"site\"\n")],
    );
    fs::create_dir(source.join("site")).unwrap();
    fs::write(source.join("site/index.html"), "<h1>hi</h1>").unwrap();
    let artifact = build(work.request(&source, "release2"), LogSink::discard())
        .await
        .unwrap();
    assert_eq!(artifact.static_dir.unwrap(), artifact.app_dir.join("site"));

    // A build step that points the served directory outside the app is refused.
    let source = work.source(
        "src3",
        None,
        &[(
            "gilgal.toml",
            "[build]\nbuilder = \"static\"\ncommand = \"ln -s /etc public\"\n\n[static]\ndir = \"public\"\n",
        )],
    );
    let err = build(work.request(&source, "release3"), LogSink::discard())
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::StaticDirMissing(_)), "{err}");
}

/// Regression (hardening #4): the proxy serves static sites as root, so a build that links
/// something outside the served directory into it (`ln -s /etc public/host-etc`) fails,
/// naming the link; links that stay inside are fine.
#[tokio::test]
async fn static_site_links_leading_out_of_the_served_directory_fail_the_build() {
    let work = Workspace::new();
    let static_source = |name: &str, command: &str| {
        let toml = format!(
            "[build]\nbuilder = \"static\"\ncommand = \"{command}\"\n\n[static]\ndir = \"public\"\n"
        );
        let source = work.source(name, None, &[("gilgal.toml", &toml), ("secret.txt", "no")]);
        fs::create_dir(source.join("public")).unwrap();
        fs::write(source.join("public/index.html"), "<h1>hi</h1>").unwrap();
        source
    };
    for (index, (command, link, target)) in [
        ("ln -s /etc public/host-etc", "host-etc", "/etc"),
        (
            "ln -s ../secret.txt public/up.txt",
            "up.txt",
            "../secret.txt",
        ),
        ("ln -s nowhere public/dangling", "dangling", "nowhere"),
        (
            "sh -c 'mkdir public/deep && ln -s ../../.. public/deep/root'",
            "deep/root",
            "../../..",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let source = static_source(&format!("bad{index}"), command);
        let release = format!("bad-release{index}");
        let err = build(work.request(&source, &release), LogSink::discard())
            .await
            .unwrap_err();
        let BuildError::StaticLinkOutside {
            link: found,
            target: written,
            ..
        } = &err
        else {
            panic!("{command}: expected a refused link, got {err}");
        };
        assert!(found.ends_with(format!("public/{link}")), "{err}");
        assert_eq!(written, Path::new(target), "{err}");
        assert!(err.to_string().contains(link), "names the link: {err}");
        assert!(!work.path(&release).exists(), "failed release removed");
    }

    let source = static_source("good", "ln -s index.html public/alias.html");
    let artifact = build(work.request(&source, "good-release"), LogSink::discard())
        .await
        .unwrap();
    let served = artifact.static_dir.unwrap();
    assert_eq!(served, artifact.app_dir.join("public"));
    assert_eq!(
        fs::read_to_string(served.join("alias.html")).unwrap(),
        "<h1>hi</h1>"
    );
}

#[tokio::test]
async fn command_builder_runs_without_a_shell_and_a_worker_only_app_is_valid() {
    let work = Workspace::new();
    let source = work.source(
        "src",
        None,
        &[
            (
                "gilgal.toml",
                "[build]\ncommand = \"sh -c 'echo $GREETING > greeting.txt; touch \\\"built-$0\\\"' $MARKER\"\n\n[environments.staging]\ngrace_period_secs = 3\n",
            ),
            ("Procfile", "worker: python3 worker.py\n"),
        ],
    );
    let mut request = work.request(&source, "release");
    request.environment = "staging".to_owned();
    request
        .env
        .insert("GREETING".to_owned(), "hello".to_owned());
    request.env.insert("MARKER".to_owned(), "x y".to_owned());
    let artifact = build(request, LogSink::discard()).await.unwrap();
    assert_eq!(artifact.stack, Stack::Command);
    assert!(!artifact.has_web());
    assert_eq!(artifact.processes.len(), 1);
    assert_eq!(artifact.processes[0].process_type.as_str(), "worker");
    assert_eq!(
        artifact.config.grace_period_secs, 3,
        "staging overrides applied"
    );
    assert_eq!(
        fs::read_to_string(artifact.app_dir.join("greeting.txt")).unwrap(),
        "hello\n"
    );
    // `$MARKER` was expanded by Gilgal into one argument, spaces and all.
    assert!(artifact.app_dir.join("built-x y").is_file());
}

#[tokio::test]
async fn a_failing_build_names_the_command_and_shows_the_log_tail() {
    let work = Workspace::new();
    let mut script =
        String::from("for i in $(seq 1 60); do echo line $i; done; echo broken >&2; exit 3");
    script = script.replace('\'', "");
    let source = work.source(
        "src",
        None,
        &[
            (
                "gilgal.toml",
                &format!("[build]\nbuilder = \"command\"\ncommand = \"sh -c '{script}'\"\n"),
            ),
            ("Procfile", "web: true\n"),
        ],
    );
    let release = work.path("release");
    let (sink, logs) = collecting_sink();
    let err = build(work.request(&source, "release"), sink)
        .await
        .unwrap_err();
    let logs = logs.await.unwrap();
    match &err {
        BuildError::CommandFailed {
            command,
            status,
            log_tail,
        } => {
            assert!(command.starts_with("sh -c "), "{command}");
            assert_eq!(status, "exit status 3");
            assert_eq!(log_tail.len(), 40);
            assert_eq!(log_tail.last().unwrap(), "broken");
            assert!(log_tail.contains(&"line 60".to_owned()));
            assert!(
                !log_tail.contains(&"line 1".to_owned()),
                "only the tail is kept"
            );
        }
        other => panic!("unexpected error: {other}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("build command failed (exit status 3): sh -c"),
        "{message}"
    );
    assert!(
        message.contains("last output:") && message.ends_with("broken"),
        "{message}"
    );
    assert!(logs
        .iter()
        .any(|line| line.stream == LogStream::Stderr && line.text == "broken"));
    assert!(logs
        .iter()
        .any(|line| line.stream == LogStream::Stdout && line.text == "line 1"));
    assert!(
        !release.exists(),
        "a failed build leaves no release directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pip_install_shows_pips_error() {
    let work = Workspace::new();
    let source = work.source(
        "src",
        None,
        &[
            (
                "requirements.txt",
                "gilgal-surely-nonexistent-package-4f1c==0.0.1\n",
            ),
            ("Procfile", "web: python app.py\n"),
        ],
    );
    let err = build(work.request(&source, "release"), LogSink::discard())
        .await
        .unwrap_err();
    let BuildError::CommandFailed {
        command, log_tail, ..
    } = &err
    else {
        panic!("unexpected error: {err}");
    };
    assert!(
        command.contains("pip") && command.contains("install"),
        "{command}"
    );
    assert!(
        log_tail
            .iter()
            .any(|line| line.contains("gilgal-surely-nonexistent-package-4f1c")),
        "{log_tail:?}"
    );
}

fn process_is_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for its (re)parent to reap it is no longer running.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cancellation_kills_the_whole_process_group() {
    let work = Workspace::new();
    let pid_file = work.path("grandchild.pid");
    let source = work.source(
        "src",
        None,
        &[
            (
                "gilgal.toml",
                "[build]\ncommand = \"sh -c 'sleep 600 & echo $! > \\\"$PID_FILE\\\"; wait'\"\n",
            ),
            ("Procfile", "worker: true\n"),
        ],
    );
    let mut request = work.request(&source, "release");
    request
        .env
        .insert("PID_FILE".to_owned(), pid_file.display().to_string());
    let cancel = request.cancel.clone();
    let handle = tokio::spawn(build(request, LogSink::discard()));
    let grandchild: i32 = wait_for_file(&pid_file).await.trim().parse().unwrap();
    assert!(!process_is_gone(grandchild));
    let cancelled_at = Instant::now();
    cancel.cancel();
    let err = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("build did not stop after cancellation")
        .unwrap()
        .unwrap_err();
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(&err, BuildError::Cancelled { command: Some(command) } if command.starts_with("sh -c")),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_is_gone(grandchild) {
        assert!(
            Instant::now() < deadline,
            "grandchild {grandchild} survived the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!work.path("release").exists());
}

#[tokio::test]
async fn a_step_past_its_timeout_is_killed() {
    let work = Workspace::new();
    let source = work.source(
        "src",
        None,
        &[
            (
                "gilgal.toml",
                "[build]\ncommand = \"sh -c 'echo starting; sleep 600'\"\n",
            ),
            ("Procfile", "worker: true\n"),
        ],
    );
    let mut request = work.request(&source, "release");
    request.step_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = build(request, LogSink::discard()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match err {
        BuildError::TimedOut {
            command, log_tail, ..
        } => {
            assert!(command.starts_with("sh -c"));
            assert_eq!(log_tail, ["starting"]);
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn invalid_input_fails_before_anything_is_built() {
    let work = Workspace::new();
    let source = work.source(
        "src",
        Some("static-site"),
        &[("Procfile", "web: ok\nworker: a; b\n")],
    );
    let err = build(work.request(&source, "release"), LogSink::discard())
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Procfile(_)), "{err}");
    assert!(err.to_string().starts_with("Procfile line 2"), "{err}");
    assert!(!work.path("release").exists());
    assert!(source.exists(), "the source is untouched");

    let source = work.source(
        "src2",
        None,
        &[("gilgal.toml", "[build]\ncommand = \"true\"\n")],
    );
    let err = build(work.request(&source, "release"), LogSink::discard())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BuildError::NothingToRun {
                stack: Stack::Command
            }
        ),
        "{err}"
    );

    let source = work.source("src3", None, &[("notes.txt", "no app here")]);
    let err = build(work.request(&source, "release"), LogSink::discard())
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::Detect(_)), "{err}");

    let source = work.source("src4", Some("static-site"), &[]);
    fs::create_dir_all(work.path("occupied")).unwrap();
    fs::write(work.path("occupied/file"), "x").unwrap();
    let err = build(work.request(&source, "occupied"), LogSink::discard())
        .await
        .unwrap_err();
    assert!(matches!(err, BuildError::ArtifactDirNotEmpty(_)), "{err}");
    assert!(
        work.path("occupied/file").exists(),
        "an existing directory is never removed"
    );
}

#[tokio::test]
async fn build_commands_can_run_as_an_unprivileged_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let work = Workspace::new();
    fs::set_permissions(work.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let source = work.source(
        "src",
        None,
        &[
            (
                "gilgal.toml",
                "[build]\ncommand = \"sh -c 'id -u > uid.txt; echo $HOME > home.txt; touch /etc/gilgal-build-probe 2> denied.txt; true'\"\n",
            ),
            ("Procfile", "worker: true\n"),
        ],
    );
    let mut request = work.request(&source, "release");
    request.run_as = Some(gilgal_build::builder::BuildUser {
        uid: 65534,
        gid: 65534,
    });
    let artifact = build(request, LogSink::discard()).await.unwrap();
    let app = &artifact.app_dir;
    assert_eq!(fs::read_to_string(app.join("uid.txt")).unwrap(), "65534\n");
    assert_eq!(
        fs::read_to_string(app.join("home.txt")).unwrap().trim(),
        work.cache()
            .canonicalize()
            .unwrap()
            .join("home")
            .display()
            .to_string()
    );
    assert!(fs::read_to_string(app.join("denied.txt"))
        .unwrap()
        .contains("Permission denied"));
    assert!(!Path::new("/etc/gilgal-build-probe").exists());
    assert_eq!(fs::metadata(app.join("Procfile")).unwrap().uid(), 65534);
}

#[tokio::test]
async fn a_packed_directory_unpacks_and_builds_like_a_deploy() {
    use gilgal_build::archive::{pack_dir, unpack_tar_gz, UnpackLimits};
    let work = Workspace::new();
    let project = work.source(
        "project",
        Some("static-site"),
        &[
            (".gilgalignore", "drafts/\n"),
            ("gilgal.toml", "[healthcheck]\npath = \"/\"\n"),
        ],
    );
    fs::create_dir(project.join("drafts")).unwrap();
    fs::write(project.join("drafts/secret.html"), "draft").unwrap();

    let mut upload = Vec::new();
    pack_dir(&project, &mut upload).unwrap();
    let unpacked = work.path("upload");
    let summary = unpack_tar_gz(upload.as_slice(), &unpacked, &UnpackLimits::default()).unwrap();
    assert_eq!(summary.files, 3, "index.html, .gilgalignore, gilgal.toml");

    let artifact = build(work.request(&unpacked, "release"), LogSink::discard())
        .await
        .unwrap();
    assert_eq!(artifact.stack, Stack::Static);
    assert_eq!(artifact.config.healthcheck.path.as_deref(), Some("/"));
    assert!(artifact.app_dir.join("index.html").is_file());
    assert!(!artifact.app_dir.join("drafts").exists());
    assert_eq!(Artifact::load(&artifact.artifact_dir).unwrap(), artifact);
}

#[tokio::test]
async fn dropping_the_build_future_kills_the_process_group() {
    let work = Workspace::new();
    let pid_file = work.path("grandchild.pid");
    let source = work.source(
        "src",
        None,
        &[
            (
                "gilgal.toml",
                "[build]\ncommand = \"sh -c 'sleep 600 & echo $! > \\\"$PID_FILE\\\"; wait'\"\n",
            ),
            ("Procfile", "worker: true\n"),
        ],
    );
    let mut request = work.request(&source, "release");
    request
        .env
        .insert("PID_FILE".to_owned(), pid_file.display().to_string());
    // An outer deadline that simply drops the build future, as a caller's timeout would.
    let building = build(request, LogSink::discard());
    let watcher = async {
        let grandchild: i32 = wait_for_file(&pid_file).await.trim().parse().unwrap();
        grandchild
    };
    let grandchild = tokio::select! {
        result = building => panic!("the build ended by itself: {result:?}"),
        grandchild = watcher => grandchild,
    };
    // `building` is dropped here, mid-step.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_is_gone(grandchild) {
        assert!(
            Instant::now() < deadline,
            "grandchild {grandchild} survived the dropped build"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_builds_as_an_unprivileged_user_and_reuses_the_venv() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let nobody = gilgal_build::builder::BuildUser {
        uid: 65534,
        gid: 65534,
    };
    let work = Workspace::new();
    fs::set_permissions(work.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let source = work.source("src1", Some("python-app"), &[]);
    let mut request = work.request(&source, "release-1");
    request.run_as = Some(nobody);
    let first = build(request, LogSink::discard()).await.unwrap();
    assert_eq!(first.dependency_cache, DependencyCache::Populated);
    let venv_config = fs::metadata(first.app_dir.join(".venv/pyvenv.cfg")).unwrap();
    assert_eq!(
        venv_config.uid(),
        65534,
        "the venv was built by the build user"
    );

    let source = work.source("src2", Some("python-app"), &[]);
    let mut request = work.request(&source, "release-2");
    request.run_as = Some(nobody);
    let second = build(request, LogSink::discard()).await.unwrap();
    assert_eq!(second.dependency_cache, DependencyCache::Reused);
    let output = Command::new(second.app_dir.join(".venv/bin/python"))
        .args(["-c", "import gunicorn, six, sys; print(sys.prefix)"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        second.app_dir.join(".venv").display().to_string()
    );
}

#[tokio::test]
async fn build_commands_see_a_controlled_environment() {
    // nextest runs every test in its own process, so changing this process's environment
    // cannot affect other tests.
    std::env::set_var("GILGAL_TEST_SECRET", "hunter2");
    std::env::set_var("PIP_TEST_MIRROR", "https://mirror.invalid/simple");
    let work = Workspace::new();
    let source = work.source(
        "src",
        None,
        &[
            (
                "gilgal.toml",
                "[build]\ncommand = \"sh -c 'env > build-env.txt'\"\n",
            ),
            ("Procfile", "worker: true\n"),
        ],
    );
    let mut request = work.request(&source, "release");
    request
        .env
        .insert("APP_SETTING".to_owned(), "from-config".to_owned());
    let artifact = build(request, LogSink::discard()).await.unwrap();
    let seen = fs::read_to_string(artifact.app_dir.join("build-env.txt")).unwrap();
    assert!(
        !seen.contains("hunter2"),
        "Gilgal's own variables leaked:\n{seen}"
    );
    assert!(seen.contains("APP_SETTING=from-config"), "{seen}");
    assert!(
        seen.contains("PIP_TEST_MIRROR=https://mirror.invalid/simple"),
        "{seen}"
    );
    assert!(seen.lines().any(|line| line.starts_with("PATH=")), "{seen}");
}
