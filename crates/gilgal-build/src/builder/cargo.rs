//! The Rust builder: `cargo build --release` with the target directory in the app's build
//! cache (so dependencies compile once), then the binaries are copied into the release at
//! `<app>/target/release/`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::Path;

use super::runner::StepRunner;
use super::{io_error, BuildError, DependencyCache, StackOutput};
use crate::command::CommandLine;

pub(crate) async fn build(
    runner: &StepRunner,
    app_dir: &Path,
    cache_dir: &Path,
) -> Result<StackOutput, BuildError> {
    let target_dir = cache_dir.join("cargo-target");
    let env = [(
        OsString::from("CARGO_TARGET_DIR"),
        target_dir.clone().into_os_string(),
    )];
    let argv: Vec<OsString> = ["cargo", "build", "--release"].map(OsString::from).to_vec();
    runner.run(&argv, app_dir, &env).await?;

    let metadata_argv: Vec<OsString> = ["cargo", "metadata", "--no-deps", "--format-version", "1"]
        .map(OsString::from)
        .to_vec();
    let metadata = runner.capture(&metadata_argv, app_dir, &env).await?;
    let binaries = binary_names(&metadata)?;

    let release_dir = app_dir.join("target").join("release");
    fs::create_dir_all(&release_dir).map_err(io_error("cannot create", &release_dir))?;
    let mut copied = Vec::new();
    for name in &binaries {
        let built = target_dir.join("release").join(name);
        if !built.is_file() {
            continue;
        }
        let destination = release_dir.join(name);
        fs::copy(&built, &destination).map_err(io_error("cannot copy binary to", &destination))?;
        copied.push(name.clone());
    }
    runner
        .log
        .system(format!("binaries: {}", copied.join(", ")))
        .await;

    let default_web = match copied.as_slice() {
        [only] => {
            let path = release_dir.join(only).display().to_string();
            CommandLine::parse(&shell_words::quote(&path)).ok()
        }
        _ => None,
    };
    Ok(StackOutput {
        path_prepend: vec![release_dir],
        env: BTreeMap::new(),
        default_web,
        dependency_cache: DependencyCache::NotApplicable,
    })
}

/// Names of the `bin` targets of the workspace's own packages, from `cargo metadata`.
fn binary_names(metadata: &str) -> Result<Vec<String>, BuildError> {
    let value: serde_json::Value = serde_json::from_str(metadata)
        .map_err(|err| BuildError::InvalidManifest(format!("cargo metadata output: {err}")))?;
    let mut names = Vec::new();
    for package in value["packages"].as_array().into_iter().flatten() {
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"));
            if let (true, Some(name)) = (is_bin, target["name"].as_str()) {
                names.push(name.to_owned());
            }
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}
