//! Shared helpers: fixture apps copied into a world-readable working dir, a runtime with fast
//! backoff, free ports, and polling waits (no fixed sleeps).

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gilgal_runtime::{
    BackoffPolicy, CgroupConfig, InstanceLabels, InstanceSpec, LogLine, ProcessRuntime,
    ProcessRuntimeConfig, RestartPolicy,
};
use tokio::sync::broadcast;

pub const PYTHON: &str = "/usr/bin/python3";

/// A temp dir holding the runtime state and a 0755 app dir with all fixtures.
pub struct Sandbox {
    root: PathBuf,
    /// Owns (and on drop deletes) the directory; `None` for a view opened by a helper process.
    temp: Option<tempfile::TempDir>,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox::new_in(&std::env::temp_dir())
    }

    /// A sandbox under `parent` (e.g. outside /tmp, for private-/tmp tests).
    pub fn new_in(parent: &Path) -> Sandbox {
        std::fs::create_dir_all(parent).unwrap();
        let temp = tempfile::tempdir_in(parent).unwrap();
        let root = temp.path().to_path_buf();
        // The app user must be able to reach the app dir (tempdirs are 0700).
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let app = root.join("app");
        std::fs::create_dir(&app).unwrap();
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for entry in std::fs::read_dir(fixtures).unwrap() {
            let entry = entry.unwrap();
            let target = app.join(entry.file_name());
            std::fs::copy(entry.path(), &target).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let state = root.join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        Sandbox {
            root,
            temp: Some(temp),
        }
    }

    /// Opens an existing sandbox made by another (parent) test process.
    pub fn open(root: PathBuf) -> Sandbox {
        Sandbox { root, temp: None }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn app_dir(&self) -> PathBuf {
        self.root.join("app")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    pub async fn runtime(&self) -> ProcessRuntime {
        ProcessRuntime::new(self.state_dir(), test_config())
            .await
            .unwrap()
    }

    /// A spec running `python3 -u <fixture> args...` from the app dir.
    pub fn spec(&self, fixture: &str, args: &[&str]) -> InstanceSpec {
        let mut argv = vec![PYTHON.to_owned(), "-u".to_owned(), fixture.to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut spec = InstanceSpec::new(labels("testapp", "web"), argv, self.app_dir());
        spec.env.insert("GILGAL_RELEASE".into(), "7".into());
        spec.restart = RestartPolicy::Never;
        spec
    }
}

impl Drop for Sandbox {
    /// A failed test must not leak fixture processes: kill whatever still runs in this
    /// sandbox's app dir (identified by cwd), then remove the temp dir.
    fn drop(&mut self) {
        if self.temp.is_none() {
            return;
        }
        let app = self.app_dir();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == app) {
                // SAFETY: signalling a fixture process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

pub fn labels(app: &str, process_type: &str) -> InstanceLabels {
    InstanceLabels {
        app: app.to_owned(),
        env: "production".to_owned(),
        release: 7,
        process_type: process_type.to_owned(),
        index: 0,
    }
}

pub fn test_config() -> ProcessRuntimeConfig {
    ProcessRuntimeConfig {
        backoff: BackoffPolicy {
            base: Duration::from_millis(200),
            cap: Duration::from_millis(800),
            reset_after: Duration::from_secs(30),
        },
        cgroups: CgroupConfig::V1 {
            root: PathBuf::from("/sys/fs/cgroup"),
            parent: "gilgal-test".to_owned(),
        },
        log_poll_interval: Duration::from_millis(20),
        ..ProcessRuntimeConfig::default()
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `check` every 20 ms until it yields `Some`, panicking after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receives log lines until one satisfies `matches`.
pub async fn wait_line(
    rx: &mut broadcast::Receiver<std::sync::Arc<LogLine>>,
    limit: Duration,
    matches: impl Fn(&LogLine) -> bool,
) -> LogLine {
    tokio::time::timeout(limit, async {
        loop {
            match rx.recv().await {
                Ok(line) if matches(&line) => return LogLine::clone(&line),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("log channel closed"),
            }
        }
    })
    .await
    .expect("expected log line did not arrive")
}

/// Whether a process is alive (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some(Some('Z' | 'X')))
        }
        Err(_) => false,
    }
}

/// Whether the machine lets this process create v1 memory cgroups.
pub fn memory_cgroups_writable() -> bool {
    let dir = Path::new("/sys/fs/cgroup/memory/gilgal-test");
    std::fs::create_dir_all(dir).is_ok() && dir.join("cgroup.procs").exists()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Minimal HTTP/1.1 GET, returning (status, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(local(port)).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
