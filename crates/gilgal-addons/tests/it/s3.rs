//! The S3 add-on for real: SeaweedFS from PyPI started under a temporary directory, two
//! buckets with their own keys, exercised with boto3 (the AWS SDK for Python, a real S3
//! client): each key works on its own bucket only, a wrong secret is refused, and an object
//! survives a `kill -9` of the server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use gilgal_addons::s3::{self, S3Server};
use gilgal_addons::RunAs;

/// Kept between runs so a rerun does not download boto3 again.
const BOTO3_VENV: &str = "/tmp/gilgal-test-boto3";

/// The client side, as an app would write it. Reads everything from its environment and
/// prints one JSON object: what each operation returned (the object's text or the S3 error
/// code).
const CLIENT: &str = r#"
import json, os, sys
import boto3, botocore
from botocore.config import Config

def client(key, secret):
    return boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT"],
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30),
    )

def attempt(operation):
    try:
        result = operation()
        if isinstance(result, dict) and "Body" in result:
            return result["Body"].read().decode()
        return "ok"
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]

env = os.environ
a = client(env["A_KEY"], env["A_SECRET"])
b = client(env["B_KEY"], env["B_SECRET"])
wrong = client(env["A_KEY"], env["B_SECRET"])
out = {}
if sys.argv[1] == "write":
    out["put"] = attempt(lambda: a.put_object(Bucket=env["A_BUCKET"], Key="notes/hello.txt", Body=b"hello from a"))
    out["b_put_own"] = attempt(lambda: b.put_object(Bucket=env["B_BUCKET"], Key="b.txt", Body=b"b's"))
    out["a_get_b"] = attempt(lambda: a.get_object(Bucket=env["B_BUCKET"], Key="b.txt"))
    out["a_put_b"] = attempt(lambda: a.put_object(Bucket=env["B_BUCKET"], Key="evil.txt", Body=b"x"))
    out["a_list_b"] = attempt(lambda: a.list_objects_v2(Bucket=env["B_BUCKET"]))
    out["b_get_a"] = attempt(lambda: b.get_object(Bucket=env["A_BUCKET"], Key="notes/hello.txt"))
    out["wrong_secret"] = attempt(lambda: wrong.get_object(Bucket=env["A_BUCKET"], Key="notes/hello.txt"))
    out["anonymous"] = attempt(lambda: boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name="us-east-1", config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1})).get_object(Bucket=env["A_BUCKET"], Key="notes/hello.txt"))
out["get"] = attempt(lambda: a.get_object(Bucket=env["A_BUCKET"], Key="notes/hello.txt"))
out["b_list_own"] = attempt(lambda: b.list_objects_v2(Bucket=env["B_BUCKET"]))
print(json.dumps(out))
"#;

/// A temporary directory the server's system user can pass through (as root).
fn addons_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// A venv with boto3, made once (python3 -m venv + pip install boto3).
fn boto3_python() -> PathBuf {
    let venv = Path::new(BOTO3_VENV);
    let python = venv.join("bin").join("python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import boto3"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .unwrap();
        assert!(made.success(), "python3 -m venv {BOTO3_VENV}");
        let installed = Command::new(venv.join("bin").join("pip"))
            .args(["install", "--disable-pip-version-check", "-q", "boto3"])
            .status()
            .unwrap();
        assert!(installed.success(), "pip install boto3");
        assert!(ready(&python));
    }
    python
}

/// The last 40 lines of a log, for failure messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

struct Pair {
    bucket: String,
    key: String,
    secret: String,
}

fn client(
    python: &Path,
    mode: &str,
    server: &S3Server,
    a: &Pair,
    b: &Pair,
) -> serde_json::Map<String, serde_json::Value> {
    let endpoint = server.endpoint();
    let output = Command::new(python)
        .args(["-c", CLIENT, mode])
        .env("S3_ENDPOINT", &endpoint)
        .env("A_BUCKET", &a.bucket)
        .env("A_KEY", &a.key)
        .env("A_SECRET", &a.secret)
        .env("B_BUCKET", &b.bucket)
        .env("B_KEY", &b.key)
        .env("B_SECRET", &b.secret)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "boto3 client failed: {}\nSeaweedFS log, last lines:\n{}",
        String::from_utf8_lossy(&output.stderr),
        log_tail(&server.log_path())
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Kills the server a failing test started (only that pid), so no test leaves one behind.
struct StopOnDrop(S3Server);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[tokio::test]
async fn s3_buckets_isolated_per_key_and_surviving_kill_9() {
    let started = Instant::now();
    let dir = addons_dir();
    let weed = S3Server::install(dir.path()).await.unwrap();
    let python = boto3_python();
    eprintln!("weed + boto3 ready after {:?}", started.elapsed());

    let server = S3Server::managed(
        dir.path(),
        weed.clone(),
        RunAs::system_user(s3::SYSTEM_USER),
    )
    .unwrap();
    let _stop = StopOnDrop(server.clone());
    server.ensure_running().await.unwrap();
    let first_pid = server.pid().expect("the server runs");
    server.ensure_running().await.unwrap(); // idempotent
    assert_eq!(server.pid(), Some(first_pid), "no second server");
    eprintln!("SeaweedFS ready after {:?}", started.elapsed());
    assert_eq!(
        server.endpoint(),
        format!("http://127.0.0.1:{}", server.port())
    );
    // The same directory gives the same ports (apps keep the endpoint).
    let again = S3Server::managed(dir.path(), weed, None).unwrap();
    assert_eq!(again.endpoint(), server.endpoint());

    // The second bucket's name starts with the first's: rights are per exact bucket.
    let a = Pair {
        bucket: "addon-media".to_owned(),
        key: s3::random_access_key(),
        secret: s3::random_secret_key(),
    };
    let b = Pair {
        bucket: "addon-media-b".to_owned(),
        key: s3::random_access_key(),
        secret: s3::random_secret_key(),
    };
    assert!(
        a.key.starts_with("GILGAL") && a.key.len() == 22,
        "{}",
        a.key
    );
    server
        .create_bucket(&a.bucket, &a.key, &a.secret)
        .await
        .unwrap();
    server
        .create_bucket(&b.bucket, &b.key, &b.secret)
        .await
        .unwrap();
    server
        .create_bucket(&a.bucket, &a.key, &a.secret)
        .await
        .unwrap(); // converges, no error
    assert!(server.bucket_exists(&a.bucket).await.unwrap());
    assert!(server.bucket_exists(&b.bucket).await.unwrap());
    // An access key belongs to one bucket: it is not moved, and nothing is created.
    assert!(server
        .create_bucket("addon-other", &a.key, &b.secret)
        .await
        .is_err());
    assert!(!server.bucket_exists("addon-other").await.unwrap());
    // Names that are not bucket names never reach weed shell.
    assert!(server
        .create_bucket("Bad;s3.configure", &a.key, &a.secret)
        .await
        .is_err());
    assert!(server
        .create_bucket(&a.bucket, &a.key, "short; -delete")
        .await
        .is_err());
    eprintln!("buckets made after {:?}", started.elapsed());

    let out = client(&python, "write", &server, &a, &b);
    assert_eq!(out["put"], "ok", "{out:?}");
    assert_eq!(out["get"], "hello from a", "{out:?}");
    assert_eq!(out["b_put_own"], "ok", "{out:?}");
    assert_eq!(out["b_list_own"], "ok", "{out:?}");
    for cross in ["a_get_b", "a_put_b", "a_list_b", "b_get_a"] {
        assert_eq!(out[cross], "AccessDenied", "{cross}: {out:?}");
    }
    assert_eq!(out["wrong_secret"], "SignatureDoesNotMatch", "{out:?}");
    assert_eq!(out["anonymous"], "AccessDenied", "{out:?}");
    // The secret keys are never in an argument list (`ps` shows argv to everyone).
    let cmdline = std::fs::read(format!("/proc/{first_pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(!cmdline.contains(&a.secret) && !cmdline.contains(&b.secret));
    assert!(cmdline.contains("-ip.bind=127.0.0.1"), "{cmdline}");

    // kill -9: the supervisor's ensure_running brings it back with the object.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed = Instant::now();
    while server.pid() == Some(first_pid) {
        assert!(killed.elapsed().as_secs() < 10, "the server did not die");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.ensure_running().await.unwrap();
    let second_pid = server.pid().expect("restarted");
    assert_ne!(second_pid, first_pid, "a new server process");
    eprintln!(
        "restarted after kill -9 in {:?} (total {:?})",
        killed.elapsed(),
        started.elapsed()
    );
    let out = client(&python, "read", &server, &a, &b);
    assert_eq!(out["get"], "hello from a", "{out:?}");
    assert_eq!(out["b_list_own"], "ok", "{out:?}");

    // Deleting b's add-on removes its key and its bucket; a is untouched.
    server.delete_bucket(&b.bucket, &b.key).await.unwrap();
    server.delete_bucket(&b.bucket, &b.key).await.unwrap(); // idempotent
    assert!(!server.bucket_exists(&b.bucket).await.unwrap());
    let out = client(&python, "read", &server, &a, &b);
    assert_eq!(out["b_list_own"], "InvalidAccessKeyId", "{out:?}");
    assert_eq!(out["get"], "hello from a", "{out:?}");

    server.stop().await;
    assert!(server.pid().is_none(), "stopped");
    // Gone for good once reaped (the reaper task runs while this test sleeps).
    let stopped = Instant::now();
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(second_pid), None).is_ok() {
        assert!(
            stopped.elapsed().as_secs() < 5,
            "the server this test started is gone"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    eprintln!("done after {:?}", started.elapsed());
}
