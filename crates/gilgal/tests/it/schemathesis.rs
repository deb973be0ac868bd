//! Property-based API fuzzing with schemathesis (from PyPI) against the live OpenAPI document,
//! with every check: thousands of generated requests as the administrator, an ordinary user and
//! nobody, including the stateful phase that chains create → read → update → delete. The
//! document must say what the server does: every status, every rule a value must follow.

use std::path::PathBuf;
use std::process::Command;

use gilgal_testkit::Backend;

use super::{ok, ServerProcess, PASSWORD};

/// Pinned so a new release of the fuzzer cannot change what the suite asserts.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// A venv with schemathesis, kept under the target dir so it is installed once per checkout.
fn schemathesis() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/schemathesis-venv");
    let bin = venv.join("bin/schemathesis");
    if !bin.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "cannot create the schemathesis venv");
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", SCHEMATHESIS])
            .status()
            .expect("pip install schemathesis");
        assert!(
            installed.success(),
            "cannot install {SCHEMATHESIS} from PyPI"
        );
    }
    bin
}

/// Who the run calls the API as.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// The instance administrator (the first account), with a full API token.
    Admin,
    /// A second, ordinary account with its own project.
    Plain,
    /// No credential at all.
    Anonymous,
}

/// Runs schemathesis with every check (see `fixtures/schemathesis.toml` for the three
/// documented exceptions) and returns whether it passed, with its report.
fn run_schemathesis(
    bin: &std::path::Path,
    url: &str,
    token: Option<&str>,
    caller: Caller,
) -> (bool, String) {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schemathesis.toml");
    let mut command = Command::new(bin);
    command
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{url}/api/openapi.json")])
        .args(["--max-examples", "15", "--seed", "20261207"])
        // These end the credential the run uses, or replace the master key.
        .args(["--exclude-path", "/api/auth/logout"])
        .args(["--exclude-path", "/api/admin/rotate-key"])
        .args(["--exclude-path-regex", "^/api/tokens/"])
        .env("NO_COLOR", "1");
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = command.output().expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("Tested:"))
        .collect();
    eprintln!("schemathesis as {caller:?}: {}", summary.join(" | "));
    (
        out.status.success() && report.contains("passed"),
        format!("{report}\n{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// Schema-driven fuzzing with every schemathesis check (server errors, status codes, content
/// types, headers and bodies as documented, schema-valid data accepted, schema-violating data
/// refused, authentication not ignored, stateful create/read/update/delete chains) as the
/// administrator, as an ordinary user and without a token: zero failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_with_every_check() {
    let bin = tokio::task::spawn_blocking(schemathesis).await.unwrap();
    let server = ServerProcess::start(Backend::Sqlite).await;
    ok(server.cli(
        &[
            "register",
            "--email",
            "fuzz@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    let admin_token = ok(server.cli(&["tokens", "create", "fuzz"], None))
        .trim()
        .to_owned();
    ok(server.cli(&["projects", "create", "fuzzed"], None));
    ok(server.cli(
        &[
            "register",
            "--email",
            "plain@example.com",
            "--password-stdin",
        ],
        Some(PASSWORD),
    ));
    let plain_token = ok(server.cli(&["tokens", "create", "plain"], None))
        .trim()
        .to_owned();
    ok(server.cli(&["projects", "create", "plain-app"], None));
    for (caller, token) in [
        (Caller::Admin, Some(admin_token)),
        (Caller::Plain, Some(plain_token)),
        (Caller::Anonymous, None),
    ] {
        let (passed, report) = tokio::task::spawn_blocking({
            let bin = bin.clone();
            let url = server.url.clone();
            move || run_schemathesis(&bin, &url, token.as_deref(), caller)
        })
        .await
        .unwrap();
        assert!(
            passed,
            "schemathesis as {caller:?} found failures:\n{report}"
        );
    }
}
