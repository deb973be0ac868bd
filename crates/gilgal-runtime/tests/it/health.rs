//! Health checks: TCP and HTTP probes, crash on boot, never binding, the boot deadline, and
//! the continuous monitor.

use std::time::{Duration, Instant};

use gilgal_runtime::health::{probe, ProbeError};
use gilgal_runtime::{
    wait_healthy, HealthCheck, HealthError, HealthMonitor, HealthState, Probe, RestartPolicy,
    Runtime,
};

use crate::common::*;

fn fast_check(probe: Probe, boot_deadline: Duration) -> HealthCheck {
    HealthCheck {
        probe,
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        success_threshold: 2,
        failure_threshold: 2,
        boot_deadline,
    }
}

#[tokio::test]
async fn crash_on_boot_fails_fast_with_exit_status_and_log_tail() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let port = free_port();
    let mut spec = sandbox.spec("crash_on_boot.py", &[]);
    spec.port = Some(port);
    spec.restart = RestartPolicy::Always;
    let id = runtime.start(spec).await.unwrap().id;
    let started = Instant::now();
    let result = wait_healthy(
        &runtime,
        &id,
        local(port),
        &fast_check(Probe::Tcp, Duration::from_secs(30)),
    )
    .await;
    match result {
        Err(HealthError::Exited { exit: Some(exit) }) => assert_eq!(exit.code, Some(3)),
        other => panic!("expected an early exit error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "crash noticed late"
    );
    let tail = runtime.log_tail(&id, 10).await.unwrap();
    assert!(
        tail.iter().any(|l| l.line == "booting and about to crash"),
        "{tail:?}"
    );
    runtime.stop(&id, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn never_binding_hits_the_boot_deadline() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let port = free_port();
    let mut spec = sandbox.spec("never_binds.py", &[]);
    spec.port = Some(port);
    let id = runtime.start(spec).await.unwrap().id;
    let started = Instant::now();
    let deadline = Duration::from_millis(1500);
    match wait_healthy(
        &runtime,
        &id,
        local(port),
        &fast_check(Probe::Tcp, deadline),
    )
    .await
    {
        Err(HealthError::DeadlineExceeded {
            deadline: d,
            last_error,
        }) => {
            assert_eq!(d, deadline);
            assert!(last_error.contains("connect"), "{last_error}");
        }
        other => panic!("expected a deadline error, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(6),
        "{took:?}"
    );
    runtime.stop(&id, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn http_probe_variants_and_continuous_monitor() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let port = free_port();
    let mut spec = sandbox.spec("http_app.py", &[]);
    spec.port = Some(port);
    let id = runtime.start(spec).await.unwrap().id;
    let healthy = Probe::Http {
        path: "/health".into(),
        host: Some("testapp.localhost".into()),
    };
    wait_healthy(
        &runtime,
        &id,
        local(port),
        &fast_check(healthy.clone(), Duration::from_secs(10)),
    )
    .await
    .unwrap();
    probe(local(port), &Probe::Tcp, Duration::from_secs(1))
        .await
        .unwrap();
    let missing = Probe::Http {
        path: "/missing".into(),
        host: None,
    };
    assert!(matches!(
        probe(local(port), &missing, Duration::from_secs(1)).await,
        Err(ProbeError::Status(404))
    ));
    match wait_healthy(
        &runtime,
        &id,
        local(port),
        &fast_check(missing, Duration::from_millis(400)),
    )
    .await
    {
        Err(HealthError::DeadlineExceeded { last_error, .. }) => {
            assert!(last_error.contains("404"), "{last_error}")
        }
        other => panic!("expected a deadline error, got {other:?}"),
    }

    let monitor = HealthMonitor::spawn(local(port), fast_check(healthy, Duration::from_secs(10)));
    let mut states = monitor.subscribe();
    tokio::time::timeout(
        Duration::from_secs(5),
        states.wait_for(|s| *s == HealthState::Healthy),
    )
    .await
    .unwrap()
    .unwrap();
    runtime.stop(&id, Duration::from_secs(5)).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        states.wait_for(|s| matches!(s, HealthState::Unhealthy { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    match monitor.state() {
        HealthState::Unhealthy {
            consecutive_failures,
            last_error,
        } => {
            assert!(consecutive_failures >= 2);
            assert!(last_error.contains("connect"), "{last_error}");
        }
        other => panic!("expected unhealthy, got {other:?}"),
    }
}

/// A port of 0 asks the runtime to choose: `start` returns where the app listens, `status`
/// and `list` report the same address, and the app answers there.
#[tokio::test]
async fn the_runtime_chooses_the_port_and_says_where_the_instance_listens() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let mut spec = sandbox.spec("http_app.py", &[]);
    spec.port = Some(0);
    let started = runtime.start(spec).await.unwrap();
    let addr = started.addr.expect("a listening instance has an address");
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 0);
    let status = runtime.status(&started.id).await.unwrap();
    assert_eq!(status.addr, Some(addr));
    assert_eq!(status.port, Some(addr.port()));
    let listed = runtime.list().await.unwrap();
    assert!(listed
        .iter()
        .any(|s| s.id == started.id && s.addr == Some(addr)));
    let health = Probe::Http {
        path: "/health".into(),
        host: None,
    };
    wait_healthy(
        &runtime,
        &started.id,
        addr,
        &fast_check(health, Duration::from_secs(10)),
    )
    .await
    .unwrap();
    // Workers (no port) have no address.
    let worker = runtime
        .start(sandbox.spec("counter.py", &[]))
        .await
        .unwrap();
    assert_eq!(worker.addr, None);
    runtime
        .stop(&started.id, Duration::from_secs(1))
        .await
        .unwrap();
    runtime
        .stop(&worker.id, Duration::from_secs(1))
        .await
        .unwrap();
}
