//! Server death and restart: dropping a runtime detaches (instances keep running), a new
//! runtime on the same state dir re-adopts live instances, restarts or marks dead ones, and
//! sweeps processes spawned just before a crash.

use std::time::Duration;

use gilgal_runtime::{InstanceState, RestartPolicy, Runtime, RuntimeEventKind};

use crate::common::*;

fn tick_number(line: &str) -> Option<u64> {
    line.strip_prefix("tick ")?.parse().ok()
}

#[tokio::test]
async fn dropped_runtime_leaves_instance_running_and_new_runtime_adopts_it() {
    let sandbox = Sandbox::new();
    let first = sandbox.runtime().await;
    let mut logs = first.subscribe_logs();
    let mut spec = sandbox.spec("counter.py", &[]);
    spec.restart = RestartPolicy::Always;
    let id = first.start(spec).await.unwrap();
    let seen = wait_line(&mut logs, Duration::from_secs(5), |l| {
        tick_number(&l.line).is_some_and(|n| n >= 3)
    })
    .await;
    let pid = first.status(&id).await.unwrap().pid.unwrap();
    // Everything the first runtime delivered before it "died".
    let mut last_delivered = tick_number(&seen.line).unwrap();
    while let Ok(line) = logs.try_recv() {
        last_delivered = last_delivered.max(tick_number(&line.line).unwrap_or(0));
    }

    drop(logs);
    drop(first); // the "server" dies without stopping anything
                 // The app keeps running and keeps printing while no server watches it.
    let stdout = sandbox
        .state_dir()
        .join("instances")
        .join(id.as_str())
        .join("stdout.log");
    let size_at_death = std::fs::metadata(&stdout).unwrap().len();
    eventually(Duration::from_secs(5), "output while unwatched", || async {
        (std::fs::metadata(&stdout).unwrap().len() > size_at_death + 20).then_some(())
    })
    .await;
    assert!(alive(pid));

    let second = sandbox.runtime().await;
    let mut logs = second.subscribe_logs();
    let status = second.status(&id).await.unwrap();
    assert_eq!(status.state, InstanceState::Running);
    assert_eq!(status.pid, Some(pid));
    assert!(status.adopted);
    assert_eq!(second.list().await.unwrap().len(), 1);

    // Tailing resumes from the saved offset: the next line delivered is no later than what
    // was printed while the server was away (nothing skipped), and numbers keep increasing.
    let resumed = wait_line(&mut logs, Duration::from_secs(5), |l| {
        tick_number(&l.line).is_some()
    })
    .await;
    let resumed_at = tick_number(&resumed.line).unwrap();
    assert!(
        resumed_at <= last_delivered + 1,
        "skipped lines: resumed at {resumed_at}, last delivered {last_delivered}"
    );
    let later = wait_line(&mut logs, Duration::from_secs(5), |l| {
        tick_number(&l.line).is_some_and(|n| n > resumed_at + 3)
    })
    .await;
    assert_eq!(later.instance, id);

    let exit = second.stop(&id, Duration::from_secs(2)).await.unwrap();
    assert!(!alive(pid));
    assert!(exit.note.unwrap_or_default().contains("adopted"));
    assert_eq!(
        second.status(&id).await.unwrap().state,
        InstanceState::Stopped
    );
}

#[tokio::test]
async fn instance_that_died_while_server_was_down_is_marked_or_restarted() {
    let sandbox = Sandbox::new();
    let first = sandbox.runtime().await;
    let mut once = sandbox.spec("never_binds.py", &[]);
    once.restart = RestartPolicy::Never;
    let once = first.start(once).await.unwrap();
    let mut always = sandbox.spec("never_binds.py", &[]);
    always.restart = RestartPolicy::Always;
    always.labels.index = 1;
    let always = first.start(always).await.unwrap();
    let once_pid = first.status(&once).await.unwrap().pid.unwrap();
    let always_pid = first.status(&always).await.unwrap().pid.unwrap();
    drop(first);

    for pid in [once_pid, always_pid] {
        // SAFETY: signalling a process this test started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    eventually(Duration::from_secs(5), "fixtures to die", || async {
        (!alive(once_pid) && !alive(always_pid)).then_some(())
    })
    .await;

    let second = sandbox.runtime().await;
    let recovered = second.take_recovery_events();
    assert_eq!(recovered.len(), 2, "{recovered:?}");
    assert!(recovered
        .iter()
        .all(|e| matches!(e.kind, RuntimeEventKind::Lost { .. })));
    assert!(second.take_recovery_events().is_empty());
    let status = eventually(
        Duration::from_secs(5),
        "stale record marked exited",
        || async {
            let status = second.status(&once).await.unwrap();
            (status.state == InstanceState::Exited).then_some(status)
        },
    )
    .await;
    let exit = status.last_exit.unwrap();
    assert!(exit.note.unwrap().contains("gone"));

    let restarted = eventually(
        Duration::from_secs(5),
        "lost instance restarted",
        || async {
            let status = second.status(&always).await.unwrap();
            (status.state == InstanceState::Running && status.pid != Some(always_pid))
                .then_some(status)
        },
    )
    .await;
    assert!(!restarted.adopted);
    assert!(alive(restarted.pid.unwrap()));
    second.shutdown(Duration::from_secs(2)).await;
    assert!(!alive(restarted.pid.unwrap()));
}

#[tokio::test]
async fn process_spawned_just_before_a_crash_is_swept() {
    let sandbox = Sandbox::new();
    let first = sandbox.runtime().await;
    let mut spec = sandbox.spec("forks_grandchild.py", &[]);
    spec.restart = RestartPolicy::Always;
    let mut logs = first.subscribe_logs();
    let id = first.start(spec).await.unwrap();
    let escaped = wait_line(&mut logs, Duration::from_secs(5), |l| {
        l.line.starts_with("escaped ")
    })
    .await;
    let escaped: u32 = escaped.line["escaped ".len()..].parse().unwrap();
    let old_pid = first.status(&id).await.unwrap().pid.unwrap();
    drop(first);

    // Rewind the record to "starting, no pid": what a crash between spawn and the record
    // update leaves behind.
    let record_path = sandbox
        .state_dir()
        .join("instances")
        .join(id.as_str())
        .join("record.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    record["state"] = "Starting".into();
    record["pid"] = serde_json::Value::Null;
    record["start_time_ticks"] = serde_json::Value::Null;
    std::fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();

    let second = sandbox.runtime().await;
    // Untracked processes of the instance are found by marker/cgroup and killed...
    eventually(
        Duration::from_secs(5),
        "unrecorded processes swept",
        || async { (!alive(old_pid) && !alive(escaped)).then_some(()) },
    )
    .await;
    // ...and the instance is brought back (its record says it should run).
    let status = eventually(Duration::from_secs(5), "instance restarted", || async {
        let status = second.status(&id).await.unwrap();
        (status.state == InstanceState::Running && status.pid.is_some()).then_some(status)
    })
    .await;
    assert_ne!(status.pid, Some(old_pid));
    second.shutdown(Duration::from_secs(1)).await;
    assert!(!alive(status.pid.unwrap()));
}

#[tokio::test]
async fn adopted_instance_that_crashes_later_is_noticed_and_restarted() {
    let sandbox = Sandbox::new();
    let first = sandbox.runtime().await;
    let mut spec = sandbox.spec("never_binds.py", &[]);
    spec.restart = RestartPolicy::Always;
    let id = first.start(spec).await.unwrap();
    let pid = first.status(&id).await.unwrap().pid.unwrap();
    drop(first);

    let second = sandbox.runtime().await;
    assert!(second.status(&id).await.unwrap().adopted);
    let recovered = second.take_recovery_events();
    assert!(
        matches!(recovered.as_slice(), [e] if e.instance == id && e.kind == RuntimeEventKind::Adopted { pid }),
        "{recovered:?}"
    );
    let mut events = second.subscribe_events();
    // SAFETY: signalling a fixture process this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let exit = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let RuntimeEventKind::Exited(exit) = events.recv().await.unwrap().kind {
                return exit;
            }
        }
    })
    .await
    .expect("exit of an adopted process was not noticed");
    assert!(exit.note.unwrap().contains("adopted"));
    let restarted = eventually(Duration::from_secs(5), "restart", || async {
        let status = second.status(&id).await.unwrap();
        (status.state == InstanceState::Running && status.pid != Some(pid)).then_some(status)
    })
    .await;
    assert_eq!(restarted.restarts, 1);
    assert!(!restarted.adopted);
    second.shutdown(Duration::from_secs(1)).await;
    assert!(!alive(restarted.pid.unwrap()));
}

#[tokio::test]
async fn two_runtimes_cannot_share_a_state_dir() {
    let sandbox = Sandbox::new();
    let first = sandbox.runtime().await;
    match gilgal_runtime::ProcessRuntime::new(sandbox.state_dir(), test_config()).await {
        Err(gilgal_runtime::RuntimeError::StateDirInUse(path)) => {
            assert_eq!(path, sandbox.state_dir())
        }
        other => panic!("expected StateDirInUse, got {other:?}"),
    }
    drop(first);
    sandbox.runtime().await;
}
