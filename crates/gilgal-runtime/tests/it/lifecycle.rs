//! Start, logs, env, stop (graceful and forced), group kill, restarts with backoff, one-offs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gilgal_runtime::{
    HealthCheck, InstanceState, LogStream, Probe, RestartPolicy, Runtime, RuntimeError,
    RuntimeEventKind, INSTANCE_ID_ENV,
};
use time::OffsetDateTime;

use crate::common::*;

#[tokio::test]
async fn http_app_serves_logs_with_timestamps_and_stops_gracefully() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let mut logs = runtime.subscribe_logs();
    let before = OffsetDateTime::now_utc();
    let port = free_port();
    let mut spec = sandbox.spec("http_app.py", &[]);
    spec.port = Some(port);
    let id = runtime.start(spec).await.unwrap().id;

    let check = HealthCheck {
        probe: Probe::Http {
            path: "/health".into(),
            host: None,
        },
        interval: Duration::from_millis(50),
        boot_deadline: Duration::from_secs(10),
        ..HealthCheck::default()
    };
    gilgal_runtime::wait_healthy(&runtime, &id, local(port), &check)
        .await
        .unwrap();
    let (status, body) = http_get(port, "/health").await;
    assert_eq!((status, body.as_str()), (200, "ok"));

    let out = wait_line(&mut logs, Duration::from_secs(5), |l| {
        l.line == format!("listening on {port}")
    })
    .await;
    assert_eq!(out.instance, id);
    assert_eq!(out.stream, LogStream::Stdout);
    assert_eq!(out.labels.app, "testapp");
    assert!(out.at >= before && out.at <= OffsetDateTime::now_utc());
    let err = wait_line(&mut logs, Duration::from_secs(5), |l| {
        l.line == "hello from stderr"
    })
    .await;
    assert_eq!(err.stream, LogStream::Stderr);

    let status = runtime.status(&id).await.unwrap();
    assert_eq!(status.state, InstanceState::Running);
    assert_eq!(status.port, Some(port));
    let pid = status.pid.unwrap();
    assert!(alive(pid));
    let stats = runtime.stats(&id).await.unwrap();
    assert!(
        stats.processes >= 1 && stats.rss_bytes > 1024 * 1024,
        "{stats:?}"
    );

    let exit = runtime.stop(&id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(exit.code, Some(0), "graceful SIGTERM exit: {exit:?}");
    assert!(!alive(pid));
    let tail = runtime.log_tail(&id, 50).await.unwrap();
    assert!(
        tail.iter().any(|l| l.line == "got SIGTERM, exiting"),
        "{tail:?}"
    );
    let listed = runtime.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, InstanceState::Stopped);

    runtime.remove(&id).await.unwrap();
    assert!(runtime.list().await.unwrap().is_empty());
    assert!(!sandbox
        .state_dir()
        .join("instances")
        .join(id.as_str())
        .exists());
}

#[tokio::test]
async fn environment_is_exactly_the_spec_and_inherited_env_is_cleared() {
    // Something the server has that the app must not see.
    std::env::set_var("GILGAL_SERVER_SECRET", "do-not-leak");
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let mut spec = sandbox.spec("env_dump.py", &[]);
    spec.port = Some(4321);
    spec.env
        .insert("DATABASE_URL".into(), "postgres://x".into());
    // A bare program name is looked up in the app's PATH, not the server's.
    spec.argv[0] = "python3".into();
    let handle = runtime.run_oneoff(spec).await.unwrap();
    let id = handle.id().clone();
    let (lines, exit) = handle.collect(Some(Duration::from_secs(10))).await.unwrap();
    assert!(exit.success(), "{exit:?}");
    let seen: Vec<String> = lines.iter().map(|l| l.line.clone()).collect();
    let keys: BTreeSet<&str> = seen
        .iter()
        .filter_map(|line| line.split_once('=').map(|(k, _)| k))
        .filter(|k| *k != "cwd")
        .collect();
    let expected: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "LANG",
        "PORT",
        "GILGAL_RELEASE",
        "DATABASE_URL",
        INSTANCE_ID_ENV,
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, expected, "{seen:?}");
    let app_dir = sandbox.app_dir();
    assert!(seen.contains(&"PORT=4321".to_owned()));
    assert!(seen.contains(&"GILGAL_RELEASE=7".to_owned()));
    assert!(seen.contains(&format!("{INSTANCE_ID_ENV}={id}")));
    assert!(seen.contains(&format!("cwd={}", app_dir.display())));
    assert!(seen.contains(&format!("HOME={}", app_dir.display())));
    // One-off runs are not instances and leave nothing behind.
    assert!(runtime.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn ignoring_sigterm_gets_sigkill_after_grace() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let mut logs = runtime.subscribe_logs();
    let id = runtime
        .start(sandbox.spec("ignores_sigterm.py", &[]))
        .await
        .unwrap()
        .id;
    wait_line(&mut logs, Duration::from_secs(5), |l| {
        l.line.starts_with("ready")
    })
    .await;
    let pid = runtime.status(&id).await.unwrap().pid.unwrap();
    let started = Instant::now();
    let exit = runtime.stop(&id, Duration::from_secs(1)).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "stopped before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(exit.signal, Some(libc::SIGKILL), "{exit:?}");
    assert!(!exit.oom_killed);
    assert!(!alive(pid));
}

#[tokio::test]
async fn stop_kills_the_whole_group_and_escaped_children() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let mut logs = runtime.subscribe_logs();
    let id = runtime
        .start(sandbox.spec("forks_grandchild.py", &[]))
        .await
        .unwrap()
        .id;
    let child = wait_line(&mut logs, Duration::from_secs(5), |l| {
        l.line.starts_with("child ")
    })
    .await;
    let escaped = wait_line(&mut logs, Duration::from_secs(5), |l| {
        l.line.starts_with("escaped ")
    })
    .await;
    let child: u32 = child.line["child ".len()..].parse().unwrap();
    let escaped: u32 = escaped.line["escaped ".len()..].parse().unwrap();
    let leader = runtime.status(&id).await.unwrap().pid.unwrap();
    assert!(alive(child) && alive(escaped) && alive(leader));
    assert!(runtime.stats(&id).await.unwrap().processes >= 3);

    let started = Instant::now();
    let exit = runtime.stop(&id, Duration::from_secs(1)).await.unwrap();
    // The children ignore SIGTERM, so only the SIGKILL after the grace period ends them.
    assert!(started.elapsed() >= Duration::from_secs(1), "{exit:?}");
    for pid in [leader, child, escaped] {
        assert!(!alive(pid), "process {pid} survived the stop");
    }
}

#[tokio::test]
async fn crash_loop_restarts_with_exponential_backoff() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let mut events = runtime.subscribe_events();
    let mut spec = sandbox.spec("crash_on_boot.py", &[]);
    spec.restart = RestartPolicy::Always;
    let id = runtime.start(spec).await.unwrap().id;

    let mut delays = Vec::new();
    let mut starts = Vec::new();
    let mut exits = 0;
    tokio::time::timeout(Duration::from_secs(20), async {
        while delays.len() < 5 {
            let event = events.recv().await.unwrap();
            assert_eq!(event.instance, id);
            match event.kind {
                RuntimeEventKind::Exited(exit) => {
                    assert_eq!(exit.code, Some(3));
                    exits += 1;
                }
                RuntimeEventKind::RestartScheduled { delay, .. } => delays.push(delay),
                RuntimeEventKind::Started { .. } => starts.push(Instant::now()),
                other => panic!("unexpected event {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [200, 400, 800, 800, 800]);
    assert!(exits >= 5);
    // Restarts really waited: consecutive starts are at least the scheduled delay apart.
    for (pair, delay) in starts.windows(2).zip(&delays) {
        assert!(pair[1] - pair[0] >= *delay, "restart came too early");
    }
    let status = runtime.status(&id).await.unwrap();
    assert!(status.restarts >= 4);
    assert_eq!(status.last_exit.unwrap().code, Some(3));

    let exit = runtime.stop(&id, Duration::from_secs(1)).await.unwrap();
    assert_eq!(exit.code, Some(3));
    assert_eq!(
        runtime.status(&id).await.unwrap().state,
        InstanceState::Stopped
    );
}

#[tokio::test]
async fn on_failure_policy_does_not_restart_a_clean_exit() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let mut spec = sandbox.spec("env_dump.py", &[]);
    spec.restart = RestartPolicy::OnFailure;
    let id = runtime.start(spec).await.unwrap().id;
    let status = eventually(Duration::from_secs(10), "clean exit", || async {
        let status = runtime.status(&id).await.unwrap();
        (status.state == InstanceState::Exited).then_some(status)
    })
    .await;
    assert_eq!(status.restarts, 0);
    assert!(status.last_exit.unwrap().success());
}

#[tokio::test]
async fn bad_specs_fail_with_clear_errors() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;

    let mut spec = sandbox.spec("x.py", &[]);
    spec.argv = vec!["/nonexistent/program".into()];
    match runtime.start(spec).await {
        Err(RuntimeError::Spawn { program, .. }) => assert_eq!(program, "/nonexistent/program"),
        other => panic!("expected a spawn error, got {other:?}"),
    }

    let mut spec = sandbox.spec("x.py", &[]);
    spec.working_dir = sandbox.root().join("missing");
    assert!(matches!(
        runtime.start(spec).await,
        Err(RuntimeError::WorkingDir { .. })
    ));

    let mut spec = sandbox.spec("x.py", &[]);
    spec.argv.clear();
    assert!(matches!(
        runtime.start(spec).await,
        Err(RuntimeError::InvalidSpec(_))
    ));

    let mut spec = sandbox.spec("x.py", &[]);
    spec.labels.app = "../etc".into();
    assert!(matches!(
        runtime.start(spec).await,
        Err(RuntimeError::InvalidSpec(_))
    ));
    // Failed starts leave no trace.
    assert!(runtime.list().await.unwrap().is_empty());
    let leftovers = std::fs::read_dir(sandbox.state_dir().join("instances"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn oneoff_streams_output_and_times_out() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let mut handle = runtime
        .run_oneoff(sandbox.spec("never_binds.py", &[]))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), handle.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.line, "up, but not listening");
    let started = Instant::now();
    match handle.wait(Some(Duration::from_millis(300))).await {
        Err(RuntimeError::OneoffTimedOut { after, exit }) => {
            assert_eq!(after, Duration::from_millis(300));
            assert!(exit.code.is_some() || exit.signal.is_some(), "{exit:?}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Failed release-phase command: non-zero status comes back.
    let handle = runtime
        .run_oneoff(sandbox.spec("crash_on_boot.py", &[]))
        .await
        .unwrap();
    let (lines, exit) = handle.collect(Some(Duration::from_secs(10))).await.unwrap();
    assert_eq!(exit.code, Some(3));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].stream, LogStream::Stderr);
}

#[tokio::test]
async fn node_app_serves_and_shuts_down_cleanly() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let port = free_port();
    let mut spec = sandbox.spec("node_app.js", &[]);
    spec.argv = vec!["node".into(), "node_app.js".into()];
    spec.port = Some(port);
    let id = runtime.start(spec).await.unwrap().id;
    let check = HealthCheck {
        probe: Probe::Http {
            path: "/health".into(),
            host: None,
        },
        interval: Duration::from_millis(50),
        boot_deadline: Duration::from_secs(15),
        ..HealthCheck::default()
    };
    gilgal_runtime::wait_healthy(&runtime, &id, local(port), &check)
        .await
        .unwrap();
    let (status, body) = http_get(port, "/health").await;
    assert_eq!(status, 200);
    assert!(body.contains("ok"), "{body:?}");
    let exit = runtime.stop(&id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}");
    let tail = runtime.log_tail(&id, 10).await.unwrap();
    let lines: Vec<&str> = tail.iter().map(|l| l.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            format!("node listening on {port}").as_str(),
            "node got SIGTERM"
        ]
    );
}
