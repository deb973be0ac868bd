//! Shared helpers: a dockerd client (or a printed skip with `GILGAL_SKIP_DOCKER=1`), a
//! runtime in its own namespace (so parallel tests never see each other's containers) whose
//! containers are removed when the test ends, free ports and polling waits.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gilgal_docker::{
    connect, labels::LABEL_NAMESPACE, Docker, DockerRuntime, DockerRuntimeConfig, WorkingDirMode,
};
use gilgal_runtime::{BackoffPolicy, InstanceLabels, InstanceSpec, LogLine, RestartPolicy};
use tokio::sync::broadcast;

pub const PYTHON_IMAGE: &str = "gilgal/python:bookworm";
pub const BASE_IMAGE: &str = "gilgal/base:bookworm";

/// The dockerd client, or `None` (after printing why) when `GILGAL_SKIP_DOCKER=1`. A missing
/// dockerd or base image is a failure otherwise.
pub async fn docker_or_skip(test: &str) -> Option<Docker> {
    if std::env::var("GILGAL_SKIP_DOCKER").is_ok_and(|value| value == "1") {
        eprintln!("SKIPPED {test}: GILGAL_SKIP_DOCKER=1 is set (Docker tests need dockerd)");
        return None;
    }
    let docker = connect().await.unwrap_or_else(|err| {
        panic!("{err}\n(set GILGAL_SKIP_DOCKER=1 to skip the Docker tests on a machine without Docker)")
    });
    for image in [BASE_IMAGE, PYTHON_IMAGE] {
        if docker.inspect_image(image).await.is_err() {
            panic!("base image {image} is missing: run scripts/docker-base-images");
        }
    }
    Some(docker)
}

/// A test's private runtime namespace and state dir; removes the namespace's containers on
/// drop, so a failing test leaks nothing.
pub struct Sandbox {
    pub docker: Docker,
    pub namespace: String,
    temp: tempfile::TempDir,
}

impl Sandbox {
    pub fn new(docker: Docker) -> Sandbox {
        let id = uuid_like();
        Sandbox {
            docker,
            namespace: format!("t{id}"),
            temp: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.temp.path().join("state")
    }

    /// Runtime config for tests: fast backoff, fixtures bind-mounted, one image for all.
    pub fn config(&self) -> DockerRuntimeConfig {
        DockerRuntimeConfig {
            namespace: self.namespace.clone(),
            image_template: PYTHON_IMAGE.to_owned(),
            working_dir: WorkingDirMode::BindMount,
            backoff: BackoffPolicy {
                base: Duration::from_millis(200),
                cap: Duration::from_millis(800),
                reset_after: Duration::from_secs(30),
            },
            ..DockerRuntimeConfig::default()
        }
    }

    pub async fn runtime(&self) -> DockerRuntime {
        DockerRuntime::new(self.docker.clone(), self.state_dir(), self.config())
            .await
            .expect("docker runtime opens")
    }

    /// Ids of this namespace's containers as dockerd lists them.
    pub async fn container_ids(&self) -> Vec<String> {
        use gilgal_docker::bollard::query_parameters::ListContainersOptions;
        let mut filters = std::collections::HashMap::new();
        filters.insert(
            "label".to_owned(),
            vec![format!("{LABEL_NAMESPACE}={}", self.namespace)],
        );
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let mut ids: Vec<String> = self
            .docker
            .list_containers(Some(options))
            .await
            .expect("list containers")
            .into_iter()
            .filter_map(|summary| summary.id)
            .collect();
        ids.sort();
        ids
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let namespace = self.namespace.clone();
        // Drop cannot await: remove the containers from a helper thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use gilgal_docker::bollard::query_parameters::{
                    ListContainersOptions, RemoveContainerOptions,
                };
                let mut filters = std::collections::HashMap::new();
                filters.insert(
                    "label".to_owned(),
                    vec![format!("{LABEL_NAMESPACE}={namespace}")],
                );
                let options = ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                };
                let Ok(list) = docker.list_containers(Some(options)).await else {
                    return;
                };
                for id in list.into_iter().filter_map(|summary| summary.id) {
                    let options = RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    };
                    let _ = docker.remove_container(&id, Some(options)).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:08x}{:04x}", nanos, std::process::id() & 0xffff)
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
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

/// A spec running `argv` in the fixtures dir, no restarts.
pub fn spec(process_type: &str, argv: &[&str]) -> InstanceSpec {
    let argv = argv.iter().map(|arg| (*arg).to_owned()).collect();
    let mut spec = InstanceSpec::new(labels("testapp", process_type), argv, fixtures_dir());
    spec.env.insert("GILGAL_RELEASE".into(), "7".into());
    spec.restart = RestartPolicy::Never;
    spec
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `check` every 50 ms until it yields `Some`, panicking after `limit`.
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
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// `GET /` over plain HTTP/1.0; the whole response as text.
pub async fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}
