//! Property-based API fuzzing with schemathesis (from PyPI) against the live OpenAPI document:
//! thousands of generated requests, including the stateful phase that chains create → read →
//! update → delete; zero server errors and zero responses that break the documented schemas.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
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
    let token = ok(server.cli(&["tokens", "create", "fuzz"], None))
        .trim()
        .to_owned();
    ok(server.cli(&["projects", "create", "fuzzed"], None));
    let out = tokio::task::spawn_blocking({
        let url = server.url.clone();
        move || {
            Command::new(bin)
                .args(["run", &format!("{url}/api/openapi.json")])
                .args(["-H", &format!("Authorization: Bearer {token}")])
                .args(["--checks", "not_a_server_error,response_schema_conformance"])
                .args(["--max-examples", "25", "--seed", "20261122"])
                // These end the credential the run uses, or replace the master key.
                .args(["--exclude-path", "/api/auth/logout"])
                .args(["--exclude-path", "/api/admin/rotate-key"])
                .args(["--exclude-path-regex", "^/api/tokens/"])
                .env("NO_COLOR", "1")
                .output()
                .expect("run schemathesis")
        }
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("Tested:"))
        .collect();
    eprintln!("schemathesis: {}", summary.join(" | "));
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}
