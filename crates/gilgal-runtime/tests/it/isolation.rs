//! Isolation and limits: cgroup memory limit with OOM reporting, and per-app Unix users that
//! cannot read a root-only directory. Each test checks the degraded behaviour when the
//! machine does not allow the real thing (not root, no writable cgroups).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use gilgal_runtime::{
    app_user_name, InstanceState, RestartPolicy, RunAs, Runtime, RuntimeError, RuntimeEventKind,
};

use crate::common::*;

#[tokio::test]
async fn memory_limit_gets_the_instance_oom_killed_and_reported() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let mut events = runtime.subscribe_events();
    let mut spec = sandbox.spec("allocate.py", &[]);
    spec.limits.memory_mb = Some(64);
    spec.limits.cpu_shares = Some(256);
    spec.limits.max_pids = Some(64);
    spec.restart = RestartPolicy::Never;
    let id = runtime.start(spec).await.unwrap().id;

    if !memory_cgroups_writable() {
        // Degraded mode: no limit is enforced and stats say so.
        let stats = runtime.stats(&id).await.unwrap();
        assert_eq!(stats.memory_limit_bytes, None);
        runtime.stop(&id, Duration::from_secs(1)).await.unwrap();
        return;
    }
    let exit = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = events.recv().await.unwrap();
            if let RuntimeEventKind::Exited(exit) = event.kind {
                assert_eq!(event.instance, id);
                return exit;
            }
        }
    })
    .await
    .expect("allocating fixture was not stopped by the memory limit");
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(exit.describe().contains("out of memory"));
    let status = runtime.status(&id).await.unwrap();
    assert_eq!(status.state, InstanceState::Exited);
    // It got somewhere below the limit before dying, but not far past it.
    let tail = runtime.log_tail(&id, 100).await.unwrap();
    let reached = tail
        .iter()
        .filter_map(|l| {
            l.line
                .strip_prefix("allocated ")?
                .strip_suffix(" MiB")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(
        reached <= 64,
        "allocated {reached} MiB under a 64 MiB limit"
    );
}

#[tokio::test]
async fn app_runs_as_its_own_user_and_cannot_read_root_only_dirs() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let secret_dir = sandbox.root().join("gilgal-data");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = secret_dir.join("gilgal.db");
    std::fs::write(&secret, "secret").unwrap();
    let secret_arg = secret.to_str().unwrap().to_owned();

    let mut spec = sandbox.spec("whoami.py", &[&secret_arg]);
    spec.labels.app = "rttest".into();
    spec.run_as = RunAs::AppUser;
    if !is_root() {
        assert!(matches!(
            runtime.run_oneoff(spec).await,
            Err(RuntimeError::UserIsolation(_))
        ));
        return;
    }
    let (lines, exit) = runtime
        .run_oneoff(spec)
        .await
        .unwrap()
        .collect(Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?} {lines:?}");
    let text: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    let user = app_user_name("rttest");
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let uid: u32 = passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields[0] == user).then(|| fields[2].parse().unwrap())
        })
        .expect("app user was not created");
    assert_ne!(uid, 0);
    assert!(
        text[0].starts_with(&format!("uid={uid} ")) && text[0].ends_with("groups=[]"),
        "{text:?}"
    );
    assert_eq!(text[1], "read-denied PermissionError", "{text:?}");

    // The same fixture as the server user can read it: the denial is the isolation.
    let (lines, _) = runtime
        .run_oneoff(sandbox.spec("whoami.py", &[&secret_arg]))
        .await
        .unwrap()
        .collect(Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(lines[1].line, "read-ok");
}

#[tokio::test]
async fn limits_are_written_to_the_instance_cgroups_and_removed_after_stop() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let mut spec = sandbox.spec("never_binds.py", &[]);
    spec.limits.memory_mb = Some(96);
    spec.limits.cpu_shares = Some(256);
    spec.limits.cpu_millicores = Some(500);
    spec.limits.max_pids = Some(32);
    let id = runtime.start(spec).await.unwrap().id;
    let pid = runtime.status(&id).await.unwrap().pid.unwrap();
    let stats = runtime.stats(&id).await.unwrap();
    if !memory_cgroups_writable() {
        assert_eq!(stats.memory_limit_bytes, None);
        runtime.stop(&id, Duration::from_secs(1)).await.unwrap();
        return;
    }
    let cgroup = |controller: &str| {
        std::path::PathBuf::from("/sys/fs/cgroup")
            .join(controller)
            .join("gilgal-test")
            .join(id.as_str())
    };
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(cgroup(controller).join(file))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (96u64 << 20).to_string()
    );
    assert_eq!(read("cpu", "cpu.shares"), "256");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("pids", "pids.max"), "32");
    for controller in ["memory", "cpu", "pids"] {
        let procs = read(controller, "cgroup.procs");
        assert!(
            procs.lines().any(|p| p == pid.to_string()),
            "{controller}: {procs}"
        );
    }
    assert_eq!(stats.memory_limit_bytes, Some(96 << 20));
    assert!(stats.memory_cgroup_bytes.unwrap() > 0);

    runtime.stop(&id, Duration::from_secs(1)).await.unwrap();
    for controller in ["memory", "cpu", "pids"] {
        assert!(
            !cgroup(controller).exists(),
            "{controller} cgroup left behind"
        );
    }
}

#[tokio::test]
async fn app_user_without_access_to_its_working_dir_fails_to_start_clearly() {
    let sandbox = Sandbox::new();
    let runtime = sandbox.runtime().await;
    let private = sandbox.root().join("private-release");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut spec = sandbox.spec("env_dump.py", &[]);
    spec.labels.app = "rttest".into();
    spec.run_as = RunAs::AppUser;
    spec.working_dir = private.clone();
    match runtime.start(spec).await {
        Err(RuntimeError::Spawn {
            working_dir,
            source,
            ..
        }) if is_root() => {
            assert_eq!(working_dir, private);
            assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
        }
        Err(RuntimeError::UserIsolation(_)) if !is_root() => {}
        other => panic!("expected a clear start error, got {other:?}"),
    }
    assert!(runtime.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn without_cgroups_escaped_children_are_still_found_and_killed() {
    let sandbox = Sandbox::new();
    let config = gilgal_runtime::ProcessRuntimeConfig {
        cgroups: gilgal_runtime::CgroupConfig::Disabled,
        ..test_config()
    };
    let runtime = gilgal_runtime::ProcessRuntime::new(sandbox.state_dir(), config)
        .await
        .unwrap();
    let mut logs = runtime.subscribe_logs();
    let mut spec = sandbox.spec("forks_grandchild.py", &[]);
    spec.limits.memory_mb = Some(64);
    let id = runtime.start(spec).await.unwrap().id;
    let escaped = wait_line(&mut logs, Duration::from_secs(5), |l| {
        l.line.starts_with("escaped ")
    })
    .await;
    let escaped: u32 = escaped.line["escaped ".len()..].parse().unwrap();
    let stats = runtime.stats(&id).await.unwrap();
    assert_eq!(stats.memory_limit_bytes, None, "no cgroup, no limit");
    assert!(stats.processes >= 3, "{stats:?}");
    runtime.stop(&id, Duration::from_millis(300)).await.unwrap();
    assert!(!alive(escaped), "setsid escapee survived without cgroups");
}

#[tokio::test]
async fn mount_namespace_hides_the_data_dir_and_gives_a_private_tmp() {
    // Wherever the checkout is (under /tmp or not).
    mount_namespace_hides_data_and_tmp(Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
}

/// Regression (hardening #13): an instance whose working dir is under /tmp still gets a
/// private /tmp, in which its own directory stays visible (it used to be refused).
#[tokio::test]
async fn mount_namespace_keeps_a_release_under_tmp_visible_in_its_private_tmp() {
    mount_namespace_hides_data_and_tmp(Path::new("/tmp")).await;
}

async fn mount_namespace_hides_data_and_tmp(parent: &Path) {
    let sandbox = Sandbox::new_in(parent);
    let data_dir = sandbox.root().join("gilgal-data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("gilgal.db"), "secret").unwrap();
    let config = gilgal_runtime::ProcessRuntimeConfig {
        mount_isolation: gilgal_runtime::MountIsolation {
            private_tmp: true,
            hidden_paths: vec![data_dir.clone()],
            own_only_paths: Vec::new(),
        },
        ..test_config()
    };
    let runtime = gilgal_runtime::ProcessRuntime::new(sandbox.state_dir(), config)
        .await
        .unwrap();
    let marker = format!("gilgal-runtime-test-{}", std::process::id());
    let data_arg = data_dir.to_str().unwrap().to_owned();
    let run = |spec| async {
        let (lines, exit) = runtime
            .run_oneoff(spec)
            .await
            .unwrap()
            .collect(Some(Duration::from_secs(20)))
            .await
            .unwrap();
        assert!(exit.success(), "{exit:?} {lines:?}");
        lines.into_iter().map(|l| l.line).collect::<Vec<_>>()
    };
    // Even an app running as root (the server user here) sees no data.
    let first = run(sandbox.spec("mounts.py", &[&data_arg, &marker])).await;
    if !is_root() {
        assert_eq!(first[0], "hidden=['gilgal.db']", "namespaces need root");
        let _ = std::fs::remove_file(Path::new("/tmp").join(&marker));
        return;
    }
    // Under /tmp, the data dir is simply not in the private /tmp; elsewhere it is covered.
    assert!(
        first[0] == "hidden=[]" || first[0] == "hidden=missing",
        "{first:?}"
    );
    assert_eq!(first[1], "existed=False");
    // A fresh /tmp: the marker, and (for an app under /tmp) the way down to its directory.
    let mut expected = vec![marker.clone()];
    if let Ok(below) = sandbox.app_dir().strip_prefix("/tmp") {
        let first_component = below.iter().next().unwrap();
        expected.push(first_component.to_string_lossy().into_owned());
    }
    expected.sort();
    let listed: Vec<String> = expected.iter().map(|name| format!("'{name}'")).collect();
    assert_eq!(
        first[2],
        format!("tmp=[{}]", listed.join(", ")),
        "a fresh /tmp"
    );
    // The marker went to the instance's own /tmp, not the host's or the next instance's.
    assert!(!Path::new("/tmp").join(&marker).exists());
    let second = run(sandbox.spec("mounts.py", &[&data_arg, &marker])).await;
    assert_eq!(second[1], "existed=False");
    // The host still sees its data.
    assert!(data_dir.join("gilgal.db").exists());

    // A release dir the namespace would hide is refused with a clear reason.
    let mut hidden_release = sandbox.spec("mounts.py", &[]);
    hidden_release.working_dir = data_dir.clone();
    match runtime.run_oneoff(hidden_release).await {
        Err(RuntimeError::WorkingDir { reason, .. }) => {
            assert!(reason.contains("hidden path"), "{reason}")
        }
        other => panic!("expected a working dir error, got {other:?}"),
    }
}

/// With the releases dir in `own_only_paths`, an instance sees its own release there and
/// nothing else: not another app's, not its own next release while it is being built.
#[tokio::test]
async fn own_only_paths_show_an_instance_its_own_release_and_nothing_else() {
    let sandbox = Sandbox::new();
    let releases = sandbox.root().join("releases");
    let own = releases.join("mine/production/v1");
    let next = releases.join("mine/production/v2");
    let other = releases.join("theirs/production/v1");
    for dir in [&own, &next, &other] {
        std::fs::create_dir_all(dir.join("app")).unwrap();
        std::fs::write(dir.join("app/code.py"), "print('hi')").unwrap();
    }
    for dir in [&sandbox.root().to_path_buf(), &releases] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = gilgal_runtime::ProcessRuntimeConfig {
        mount_isolation: gilgal_runtime::MountIsolation {
            private_tmp: true,
            hidden_paths: Vec::new(),
            own_only_paths: vec![releases.clone()],
        },
        ..test_config()
    };
    let runtime = gilgal_runtime::ProcessRuntime::new(sandbox.state_dir(), config)
        .await
        .unwrap();
    let mut spec = sandbox.spec("unused", &[]);
    spec.working_dir = own.join("app");
    spec.argv = vec![
        PYTHON.into(),
        "-c".into(),
        "import os, sys\n\
         for path in sys.argv[1:]:\n    \
             print(path.rsplit('/', 3)[-3:], sorted(os.listdir(path)) if os.path.isdir(path) else 'missing')\n\
         print('cwd', open('code.py').read())"
            .into(),
    ];
    for path in [
        releases.clone(),
        releases.join("mine/production"),
        other.clone(),
        next.clone(),
    ] {
        spec.argv.push(path.to_str().unwrap().to_owned());
    }
    let (lines, exit) = runtime
        .run_oneoff(spec)
        .await
        .unwrap()
        .collect(Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?} {lines:?}");
    let text: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
    if !is_root() {
        assert!(
            text[0].ends_with("['mine', 'theirs']"),
            "namespaces need root: {text:?}"
        );
        return;
    }
    assert!(text[0].ends_with("['mine']"), "{text:?}");
    assert!(text[1].ends_with("['v1']"), "{text:?}");
    assert!(text[2].ends_with("missing"), "{text:?}");
    assert!(text[3].ends_with("missing"), "{text:?}");
    assert_eq!(text[4], "cwd print('hi')", "{text:?}");
    // The host is untouched.
    assert!(next.join("app/code.py").exists() && other.join("app/code.py").exists());
}

#[tokio::test]
async fn app_user_gets_a_private_writable_home() {
    let sandbox = Sandbox::new();
    let homes = sandbox.root().join("homes");
    let config = gilgal_runtime::ProcessRuntimeConfig {
        app_home_root: Some(homes.clone()),
        ..test_config()
    };
    let runtime = gilgal_runtime::ProcessRuntime::new(sandbox.state_dir(), config)
        .await
        .unwrap();
    let mut spec = sandbox.spec("unused", &[]);
    spec.argv = vec![
        PYTHON.into(),
        "-c".into(),
        "import os; open(os.path.join(os.environ['HOME'], '.probe'), 'w').write('x'); \
         print('home=' + os.environ['HOME'])"
            .into(),
    ];
    spec.labels.app = "rttest".into();
    spec.run_as = RunAs::AppUser;
    if !is_root() {
        assert!(runtime.run_oneoff(spec).await.is_err());
        return;
    }
    let (lines, exit) = runtime
        .run_oneoff(spec)
        .await
        .unwrap()
        .collect(Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?} {lines:?}");
    let home = homes.join(app_user_name("rttest"));
    assert_eq!(lines[0].line, format!("home={}", home.display()));
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&home).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_ne!(meta.uid(), 0);
    assert_eq!(
        std::fs::metadata(home.join(".probe")).unwrap().uid(),
        meta.uid()
    );
}

#[tokio::test]
async fn all_isolation_together_still_serves_http() {
    // Wherever the checkout is (under /tmp or not).
    all_isolation_serves_http(Path::new(env!("CARGO_TARGET_TMPDIR"))).await;
}

/// Regression (hardening #13): the production shape works for an app (and HOME) under /tmp.
#[tokio::test]
async fn all_isolation_together_serves_http_from_a_release_under_tmp() {
    all_isolation_serves_http(Path::new("/tmp")).await;
}

async fn all_isolation_serves_http(parent: &Path) {
    // Production shape: app user, private /tmp, hidden data dir, own HOME, cgroup limits.
    let sandbox = Sandbox::new_in(parent);
    let data_dir = sandbox.root().join("gilgal-data");
    std::fs::create_dir(&data_dir).unwrap();
    let config = gilgal_runtime::ProcessRuntimeConfig {
        mount_isolation: gilgal_runtime::MountIsolation {
            private_tmp: true,
            hidden_paths: vec![data_dir],
            own_only_paths: Vec::new(),
        },
        app_home_root: Some(sandbox.root().join("homes")),
        ..test_config()
    };
    let runtime = gilgal_runtime::ProcessRuntime::new(sandbox.state_dir(), config)
        .await
        .unwrap();
    let port = free_port();
    let mut spec = sandbox.spec("http_app.py", &[]);
    spec.port = Some(port);
    spec.labels.app = "rttest".into();
    spec.run_as = if is_root() {
        RunAs::AppUser
    } else {
        RunAs::ServerUser
    };
    spec.limits.memory_mb = Some(128);
    spec.limits.cpu_millicores = Some(1000);
    let id = runtime.start(spec).await.unwrap().id;
    let check = gilgal_runtime::HealthCheck {
        probe: gilgal_runtime::Probe::Http {
            path: "/env".into(),
            host: None,
        },
        interval: Duration::from_millis(50),
        boot_deadline: Duration::from_secs(15),
        ..gilgal_runtime::HealthCheck::default()
    };
    gilgal_runtime::wait_healthy(&runtime, &id, local(port), &check)
        .await
        .unwrap();
    let (status, body) = http_get(port, "/env").await;
    assert_eq!(status, 200);
    let env: std::collections::BTreeMap<String, String> = serde_json::from_str(&body).unwrap();
    if is_root() {
        assert_eq!(env["USER"], app_user_name("rttest"));
        assert!(env["HOME"].ends_with(&app_user_name("rttest")), "{env:?}");
    }
    let exit = runtime.stop(&id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(exit.code, Some(0), "{exit:?}");
}
