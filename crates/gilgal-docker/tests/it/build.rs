//! Image builds against a real dockerd: a Dockerfile from the source (streamed log, layer
//! cache on rebuild, `.dockerignore`), and a generated Dockerfile for a small Python app whose
//! dependency comes from PyPI, then run by the Docker runtime.

use std::collections::HashMap;
use std::time::Duration;

use gilgal_build::{LogLine as BuildLogLine, LogSink};
use gilgal_docker::{
    build_image, generate_dockerfile, BaseImages, DockerRuntime, DockerfileSource, ImageBuild,
    WorkingDirMode,
};
use gilgal_runtime::{wait_healthy, HealthCheck, Runtime};
use tokio::sync::mpsc;

use crate::common::*;

/// A log sink and a task collecting its lines.
fn collecting_sink() -> (LogSink, tokio::task::JoinHandle<Vec<BuildLogLine>>) {
    let (sender, mut receiver) = mpsc::channel(1024);
    let collector = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Some(line) = receiver.recv().await {
            lines.push(line);
        }
        lines
    });
    (LogSink::new(sender), collector)
}

fn texts(lines: &[BuildLogLine]) -> String {
    lines
        .iter()
        .map(|line| line.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

struct ImageGuard {
    docker: gilgal_docker::Docker,
    tag: String,
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let tag = self.tag.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async move {
                    let options = gilgal_docker::bollard::query_parameters::RemoveImageOptions {
                        force: true,
                        ..Default::default()
                    };
                    let _ = docker.remove_image(&tag, Some(options), None).await;
                });
            }
        })
        .join();
    }
}

#[tokio::test]
async fn docker_builds_a_dockerfile_with_streamed_log_and_layer_cache() {
    let Some(docker) =
        docker_or_skip("docker_builds_a_dockerfile_with_streamed_log_and_layer_cache").await
    else {
        return;
    };
    let sandbox = Sandbox::new(docker.clone());
    let source = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        source.path().join("Dockerfile"),
        format!(
            "FROM {BASE_IMAGE}\nARG GREETING=hi\nRUN echo \"building with $GREETING\" && mkdir /srv/app\n\
             COPY . /srv/app/\nCMD [\"cat\", \"/srv/app/hello.txt\"]\n"
        ),
    )
    .expect("write");
    std::fs::write(source.path().join("hello.txt"), "hello from the image\n").expect("write");
    std::fs::write(source.path().join("secret.env"), "PASSWORD=x\n").expect("write");
    std::fs::write(source.path().join(".dockerignore"), "secret.env\n").expect("write");
    let tag = format!("gilgal-test/{}:v1", sandbox.namespace);
    let _guard = ImageGuard {
        docker: docker.clone(),
        tag: tag.clone(),
    };
    let mut build = ImageBuild::new(source.path(), &tag);
    build.build_args = HashMap::from([("GREETING".to_owned(), "gilgal".to_owned())]);

    let (sink, collector) = collecting_sink();
    let image = build_image(&docker, &build, &sink).await.expect("builds");
    drop(sink);
    let log = texts(&collector.await.expect("log"));
    assert!(image.id.starts_with("sha256:"), "{image:?}");
    assert!(
        log.contains("building with gilgal"),
        "RUN output streamed:\n{log}"
    );
    assert!(log.contains("Step 1/"), "{log}");

    // Unchanged rebuild: every layer from cache, same image.
    let (sink, collector) = collecting_sink();
    let again = build_image(&docker, &build, &sink).await.expect("rebuilds");
    drop(sink);
    let log = texts(&collector.await.expect("log"));
    assert_eq!(again.id, image.id);
    assert!(log.contains("Using cache"), "{log}");

    // The image runs on the Docker runtime; .dockerignore kept secret.env out.
    let mut config = sandbox.config();
    config.image_template = tag.clone();
    config.working_dir = WorkingDirMode::Image;
    let runtime = DockerRuntime::new(docker.clone(), sandbox.state_dir(), config)
        .await
        .expect("runtime");
    let (lines, exit) = runtime
        .run_oneoff(spec(
            "run",
            &["sh", "-c", "cat /srv/app/hello.txt; ls /srv/app"],
        ))
        .await
        .expect("runs")
        .collect(Some(Duration::from_secs(30)))
        .await
        .expect("finishes");
    assert!(exit.success(), "{exit:?}");
    let out: Vec<&str> = lines.iter().map(|line| line.line.as_str()).collect();
    assert!(out.contains(&"hello from the image"), "{out:?}");
    assert!(!out.contains(&"secret.env"), "{out:?}");

    // A failing step fails the build with its message.
    std::fs::write(
        source.path().join("Dockerfile"),
        format!("FROM {BASE_IMAGE}\nRUN echo about to fail && exit 42\n"),
    )
    .expect("write");
    let err = build_image(&docker, &build, &LogSink::discard())
        .await
        .expect_err("fails");
    assert!(err.to_string().contains("42"), "{err}");
}

#[tokio::test]
async fn docker_builds_and_runs_a_python_app_from_a_generated_dockerfile() {
    let Some(docker) =
        docker_or_skip("docker_builds_and_runs_a_python_app_from_a_generated_dockerfile").await
    else {
        return;
    };
    let sandbox = Sandbox::new(docker.clone());
    let source = tempfile::tempdir().expect("tempdir");
    // A dependency from PyPI proves builds reach the registry (through the base image's CAs).
    std::fs::write(source.path().join("requirements.txt"), "six==1.16.0\n").expect("write");
    std::fs::write(
        source.path().join("app.py"),
        "import os, six\n\
         from http.server import BaseHTTPRequestHandler, HTTPServer\n\
         class H(BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       body = ('six %s as %s' % (six.__version__, os.getuid())).encode()\n\
         \x20       self.send_response(200); self.end_headers(); self.wfile.write(body)\n\
         print('listening on', os.environ['PORT'], flush=True)\n\
         HTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()\n",
    )
    .expect("write");
    // A stray local venv must not reach the image.
    std::fs::create_dir(source.path().join(".venv")).expect("mkdir");
    std::fs::write(source.path().join(".venv/junk"), "x").expect("write");

    let generated =
        generate_dockerfile(source.path(), None, &BaseImages::default()).expect("generates");
    let tag = format!("gilgal-test/{}:v1", sandbox.namespace);
    let _guard = ImageGuard {
        docker: docker.clone(),
        tag: tag.clone(),
    };
    let mut build = ImageBuild::new(source.path(), &tag);
    build.dockerfile = DockerfileSource::Generated(generated);
    build.build_args = gilgal_docker::registry_build_args_from_env();
    let (sink, collector) = collecting_sink();
    let built = build_image(&docker, &build, &sink).await;
    drop(sink);
    let log = texts(&collector.await.expect("log"));
    built.unwrap_or_else(|err| panic!("build failed: {err}\n{log}"));
    assert!(log.contains("generated one for the python stack"), "{log}");
    assert!(log.contains("six"), "{log}");
    assert!(
        source.path().read_dir().expect("dir").all(|entry| {
            entry.expect("entry").file_name() != gilgal_docker::GENERATED_DOCKERFILE_NAME
        }),
        "the source dir is not modified"
    );

    let mut config = sandbox.config();
    config.image_template = tag.clone();
    config.working_dir = WorkingDirMode::Image;
    let runtime = DockerRuntime::new(docker.clone(), sandbox.state_dir(), config)
        .await
        .expect("runtime");
    let port = free_port();
    let mut web = spec("web", &["python", "app.py"]);
    web.port = Some(port);
    let id = runtime.start(web).await.expect("starts").id;
    if let Err(err) = wait_healthy(&runtime, &id, local(port), &HealthCheck::default()).await {
        let tail = runtime.log_tail(&id, 20).await.unwrap_or_default();
        panic!("not healthy: {err}; {tail:?}");
    }
    let response = http_get(local(port)).await.expect("GET");
    assert!(response.contains("six 1.16.0"), "{response}");
    assert!(
        !response.contains(" as 0"),
        "the app does not run as root: {response}"
    );
    let (lines, exit) = runtime
        .run_oneoff(spec("run", &["sh", "-c", "ls -a /app; pwd"]))
        .await
        .expect("runs")
        .collect(Some(Duration::from_secs(30)))
        .await
        .expect("finishes");
    assert!(exit.success(), "{exit:?}");
    let out: Vec<&str> = lines.iter().map(|line| line.line.as_str()).collect();
    assert!(out.contains(&"app.py") && out.contains(&"/app"), "{out:?}");
    assert!(!out.contains(&".venv"), "{out:?}");
    runtime.shutdown(Duration::from_secs(5)).await;
}
