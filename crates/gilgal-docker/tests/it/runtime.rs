//! The Docker runtime against a real dockerd: the same behaviours the process runtime is held
//! to (health-gated start, logs, stop with grace, SIGKILL after it, one-off runs, crash
//! restarts with backoff, re-adoption after a server restart, stats and limits).

use std::time::{Duration, Instant};

use gilgal_runtime::{
    wait_healthy, HealthCheck, InstanceState, LogStream, RestartPolicy, Runtime, RuntimeEventKind,
};

use crate::common::*;

#[tokio::test]
async fn docker_web_instance_is_healthy_logs_and_stops_with_grace() {
    let Some(docker) =
        docker_or_skip("docker_web_instance_is_healthy_logs_and_stops_with_grace").await
    else {
        return;
    };
    let sandbox = Sandbox::new(docker);
    let runtime = sandbox.runtime().await;
    let mut logs = runtime.subscribe_logs();
    let port = free_port();
    let port_text = port.to_string();
    let mut spec = spec(
        "web",
        &[
            "python3",
            "-m",
            "http.server",
            &port_text,
            "--bind",
            "0.0.0.0",
        ],
    );
    spec.port = Some(port);
    spec.limits.memory_mb = Some(256);
    spec.limits.cpu_millicores = Some(500);
    let id = runtime.start(spec).await.expect("starts").id;
    assert_eq!(
        sandbox.container_ids().await,
        vec![id.to_string()],
        "instance id is the container id"
    );

    wait_healthy(&runtime, &id, local(port), &HealthCheck::default())
        .await
        .expect("healthy over TCP on the published port");
    let response = http_get(local(port)).await.expect("GET /");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    // http.server logs requests on stderr, with Docker's timestamp.
    let line = wait_line(&mut logs, Duration::from_secs(10), |line| {
        line.instance == id && line.line.contains("\"GET / HTTP/1.0\" 200")
    })
    .await;
    assert_eq!(line.stream, LogStream::Stderr);
    assert_eq!(line.labels.process_type, "web");
    let age = time::OffsetDateTime::now_utc() - line.at;
    assert!(
        age < time::Duration::seconds(30),
        "timestamp {} is Docker's, recent",
        line.at
    );
    let tail = runtime.log_tail(&id, 50).await.expect("tail");
    assert!(
        tail.iter().any(|line| line.line.contains("Serving HTTP")),
        "{tail:?}"
    );

    let stats = runtime.stats(&id).await.expect("stats");
    assert!(stats.memory_cgroup_bytes.unwrap_or(0) > 0, "{stats:?}");
    assert_eq!(
        stats.memory_limit_bytes,
        Some(256 * 1024 * 1024),
        "{stats:?}"
    );
    assert!(stats.processes >= 1, "{stats:?}");

    let status = runtime.status(&id).await.expect("status");
    assert_eq!(status.state, InstanceState::Running);
    assert!(status.pid.is_some());
    assert_eq!(status.port, Some(port));

    let began = Instant::now();
    let exit = runtime
        .stop(&id, Duration::from_secs(10))
        .await
        .expect("stops");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "SIGTERM ended it well within the grace: {:?}",
        began.elapsed()
    );
    assert_eq!(exit.signal, Some(libc::SIGTERM), "{exit:?}");
    assert!(!exit.oom_killed);
    let status = runtime.status(&id).await.expect("status");
    assert_eq!(status.state, InstanceState::Stopped);
    assert_eq!(status.last_exit.as_ref(), Some(&exit));
    assert!(
        http_get(local(port)).await.is_err(),
        "nothing answers after stop"
    );

    runtime.remove(&id).await.expect("removes");
    assert!(runtime.list().await.expect("list").is_empty());
    assert!(
        sandbox.container_ids().await.is_empty(),
        "container removed"
    );
}

#[tokio::test]
async fn docker_container_ignoring_sigterm_is_killed_after_grace() {
    let Some(docker) =
        docker_or_skip("docker_container_ignoring_sigterm_is_killed_after_grace").await
    else {
        return;
    };
    let sandbox = Sandbox::new(docker);
    let runtime = sandbox.runtime().await;
    let mut logs = runtime.subscribe_logs();
    let id = runtime
        .start(spec("worker", &["python3", "ignores_sigterm.py"]))
        .await
        .expect("starts")
        .id;
    wait_line(&mut logs, Duration::from_secs(20), |line| {
        line.instance == id && line.line.contains("ignoring SIGTERM")
    })
    .await;
    let began = Instant::now();
    let exit = runtime
        .stop(&id, Duration::from_secs(2))
        .await
        .expect("stops");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "waited the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "then killed: {took:?}");
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    assert!(
        exit.note.as_deref().unwrap_or("").contains("grace"),
        "{exit:?}"
    );
    assert_eq!(
        runtime.status(&id).await.expect("status").state,
        InstanceState::Stopped
    );
}

#[tokio::test]
async fn docker_oneoff_run_streams_output_and_exit_code() {
    let Some(docker) = docker_or_skip("docker_oneoff_run_streams_output_and_exit_code").await
    else {
        return;
    };
    let sandbox = Sandbox::new(docker);
    let runtime = sandbox.runtime().await;
    let handle = runtime
        .run_oneoff(spec(
            "release",
            &[
                "sh",
                "-c",
                "echo migrating; echo 'a warning' >&2; echo done; exit 7",
            ],
        ))
        .await
        .expect("runs");
    let (lines, exit) = handle
        .collect(Some(Duration::from_secs(30)))
        .await
        .expect("finishes");
    assert_eq!(exit.code, Some(7), "{exit:?}");
    let texts: Vec<(LogStream, &str)> = lines
        .iter()
        .map(|line| (line.stream, line.line.as_str()))
        .collect();
    assert!(
        texts.contains(&(LogStream::Stdout, "migrating")),
        "{texts:?}"
    );
    assert!(
        texts.contains(&(LogStream::Stderr, "a warning")),
        "{texts:?}"
    );
    assert!(texts.contains(&(LogStream::Stdout, "done")), "{texts:?}");
    assert!(
        runtime.list().await.expect("list").is_empty(),
        "one-offs are not listed"
    );
    eventually(
        Duration::from_secs(10),
        "one-off container removed",
        || async { sandbox.container_ids().await.is_empty().then_some(()) },
    )
    .await;

    // A one-off that outlives its timeout is stopped and reported as such.
    let mut handle = runtime
        .run_oneoff(spec("run", &["sleep", "60"]))
        .await
        .expect("runs");
    let err = handle
        .wait(Some(Duration::from_secs(1)))
        .await
        .expect_err("times out");
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn docker_server_restart_readopts_containers_without_restarting_them() {
    let Some(docker) =
        docker_or_skip("docker_server_restart_readopts_containers_without_restarting_them").await
    else {
        return;
    };
    let sandbox = Sandbox::new(docker);
    let runtime = sandbox.runtime().await;
    let port = free_port();
    let port_text = port.to_string();
    let mut web = spec(
        "web",
        &[
            "python3",
            "-m",
            "http.server",
            &port_text,
            "--bind",
            "0.0.0.0",
        ],
    );
    web.port = Some(port);
    web.restart = RestartPolicy::Always;
    let web_id = runtime.start(web).await.expect("web starts").id;
    let mut worker = spec("worker", &["python3", "counter.py"]);
    worker.restart = RestartPolicy::Always;
    let worker_id = runtime.start(worker).await.expect("worker starts").id;
    let stopped_id = runtime
        .start(spec("clock", &["sleep", "600"]))
        .await
        .expect("third starts")
        .id;
    runtime
        .stop(&stopped_id, Duration::from_secs(5))
        .await
        .expect("stops");
    wait_healthy(&runtime, &web_id, local(port), &HealthCheck::default())
        .await
        .expect("healthy");
    let before = runtime.list().await.expect("list");
    let before_pids: Vec<_> = before
        .iter()
        .map(|status| (status.id.clone(), status.pid))
        .collect();

    // The server "crashes": supervision stops, containers keep running.
    drop(runtime);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let runtime = sandbox.runtime().await;
    let mut logs = runtime.subscribe_logs();
    let after = runtime.list().await.expect("list");
    let mut ids: Vec<_> = after.iter().map(|status| status.id.clone()).collect();
    let mut expected = vec![web_id.clone(), worker_id.clone(), stopped_id.clone()];
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected, "same container ids");
    let after_pids: Vec<_> = after
        .iter()
        .map(|status| (status.id.clone(), status.pid))
        .collect();
    for (id, pid) in &after_pids {
        if *id != stopped_id {
            assert!(
                before_pids.contains(&(id.clone(), *pid)),
                "same process for {id}"
            );
        }
    }
    for status in &after {
        assert_eq!(status.restarts, 0, "{status:?}");
        if status.id == stopped_id {
            assert_eq!(status.state, InstanceState::Stopped, "{status:?}");
        } else {
            assert_eq!(status.state, InstanceState::Running, "{status:?}");
            assert!(status.adopted, "{status:?}");
        }
    }
    let events = runtime.take_recovery_events();
    let adopted = events
        .iter()
        .filter(|event| matches!(event.kind, RuntimeEventKind::Adopted { .. }))
        .count();
    assert_eq!(adopted, 2, "{events:?}");
    assert!(
        !events
            .iter()
            .any(|event| matches!(event.kind, RuntimeEventKind::Lost { .. })),
        "{events:?}"
    );
    // Supervision resumed: logs flow, the web app still answers, stop works.
    wait_line(&mut logs, Duration::from_secs(10), |line| {
        line.instance == worker_id && line.line.starts_with("tick ")
    })
    .await;
    assert!(http_get(local(port))
        .await
        .expect("GET")
        .starts_with("HTTP/1.0 200"));
    let exit = runtime
        .stop(&web_id, Duration::from_secs(5))
        .await
        .expect("stops");
    assert_eq!(exit.signal, Some(libc::SIGTERM), "{exit:?}");
    runtime.shutdown(Duration::from_secs(5)).await;
    for status in runtime.list().await.expect("list") {
        assert_eq!(status.state, InstanceState::Stopped, "{status:?}");
    }
}

#[tokio::test]
async fn docker_crashing_instance_restarts_with_backoff() {
    let Some(docker) = docker_or_skip("docker_crashing_instance_restarts_with_backoff").await
    else {
        return;
    };
    let sandbox = Sandbox::new(docker);
    let runtime = sandbox.runtime().await;
    let mut events = runtime.subscribe_events();
    let mut spec = spec("worker", &["python3", "crash_on_boot.py"]);
    spec.restart = RestartPolicy::Always;
    let id = runtime.start(spec).await.expect("starts").id;

    let mut delays = Vec::new();
    let mut exits = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while delays.len() < 4 {
            let event = events.recv().await.expect("event");
            assert_eq!(event.instance, id);
            match event.kind {
                RuntimeEventKind::Exited(exit) => exits.push(exit),
                RuntimeEventKind::RestartScheduled { delay, .. } => delays.push(delay),
                _ => {}
            }
        }
    })
    .await
    .expect("four restarts scheduled");
    // 200 ms doubling to the 800 ms cap (the test backoff), as on the process runtime.
    assert_eq!(
        delays,
        [200, 400, 800, 800].map(Duration::from_millis).to_vec()
    );
    assert!(exits.iter().all(|exit| exit.code == Some(3)), "{exits:?}");
    let status = runtime.status(&id).await.expect("status");
    assert!(status.restarts >= 3, "{status:?}");
    assert_eq!(
        sandbox.container_ids().await,
        vec![id.to_string()],
        "restarted in place"
    );
    let tail = runtime.log_tail(&id, 100).await.expect("tail");
    let crashes = tail
        .iter()
        .filter(|line| line.line.contains("about to crash"))
        .count();
    assert!(crashes >= 3, "each run's output is captured once: {tail:?}");
    assert!(
        crashes <= exits.len() + 1,
        "no line delivered twice: {tail:?}"
    );
    let exit = runtime
        .stop(&id, Duration::from_secs(5))
        .await
        .expect("stops");
    assert_eq!(
        exit.code,
        Some(3),
        "stopped during backoff keeps the last exit"
    );
    assert_eq!(
        runtime.status(&id).await.expect("status").state,
        InstanceState::Stopped
    );
}

#[tokio::test]
async fn docker_missing_image_or_program_fails_start_cleanly() {
    let Some(docker) = docker_or_skip("docker_missing_image_or_program_fails_start_cleanly").await
    else {
        return;
    };
    let sandbox = Sandbox::new(docker.clone());
    let runtime = sandbox.runtime().await;
    // Docker's init (PID 1) execs the program, so a missing program is an immediate exit 127
    // whose reason is in the log tail (what a deploy reports), not a start error.
    let id = runtime
        .start(spec("web", &["no-such-program-anywhere"]))
        .await
        .expect("container starts")
        .id;
    let status = eventually(Duration::from_secs(20), "exit", || async {
        let status = runtime.status(&id).await.expect("status");
        (status.state == InstanceState::Exited).then_some(status)
    })
    .await;
    assert_eq!(
        status.last_exit.as_ref().and_then(|exit| exit.code),
        Some(127),
        "{status:?}"
    );
    let tail = runtime.log_tail(&id, 10).await.expect("tail");
    assert!(
        tail.iter()
            .any(|line| line.line.contains("no-such-program-anywhere")),
        "{tail:?}"
    );
    runtime.remove(&id).await.expect("removes");
    let mut config = sandbox.config();
    config.image_template = "gilgal/does-not-exist:v1".to_owned();
    drop(runtime);
    let runtime = gilgal_docker::DockerRuntime::new(docker, sandbox.state_dir(), config)
        .await
        .expect("opens");
    let err = runtime
        .start(spec("web", &["true"]))
        .await
        .expect_err("no image");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(runtime.list().await.expect("list").is_empty());
    assert!(
        sandbox.container_ids().await.is_empty(),
        "nothing left behind"
    );
}
