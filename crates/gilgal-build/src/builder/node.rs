//! The Node builder: `npm ci` (or `npm install` without a lock file) with a per-app npm cache,
//! then `npm run build` when package.json defines it. Without any process definition the app
//! runs `npm start`.
//!
//! With a lock file, the installed `node_modules` is kept in the app's cache under a hash of
//! (node version, package.json, lock file, npm configuration variables) and copied instead of
//! running `npm ci` when that key comes back (`node_modules` holds no absolute paths; `.bin`
//! links are relative). Not when the app's own package.json has install lifecycle scripts
//! (`preinstall`, `install`, `postinstall`, `prepare`): they may change files outside
//! `node_modules`, so `npm ci` must run them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::dep_cache::{remove_tree, DependencyStore};
use super::runner::StepRunner;
use super::{io_error, BuildError, DependencyCache, StackOutput};
use crate::command::CommandLine;

pub(crate) async fn build(
    runner: &StepRunner,
    app_dir: &Path,
    cache_dir: &Path,
) -> Result<StackOutput, BuildError> {
    let manifest_path = app_dir.join("package.json");
    let manifest_text =
        fs::read_to_string(&manifest_path).map_err(io_error("cannot read", &manifest_path))?;
    let manifest: serde_json::Value = serde_json::from_str(&manifest_text)
        .map_err(|err| BuildError::InvalidManifest(format!("package.json: {err}")))?;
    let has_script = |name: &str| {
        manifest
            .get("scripts")
            .and_then(|scripts| scripts.get(name))
            .is_some_and(serde_json::Value::is_string)
    };

    let lock_path = ["package-lock.json", "npm-shrinkwrap.json"]
        .iter()
        .map(|name| app_dir.join(name))
        .find(|path| path.is_file());
    let env = [
        (
            OsString::from("npm_config_update_notifier"),
            OsString::from("false"),
        ),
        (OsString::from("NO_UPDATE_NOTIFIER"), OsString::from("1")),
    ];
    let install_scripts = ["preinstall", "install", "postinstall", "prepare"]
        .iter()
        .any(|name| has_script(name));
    let reuse_key = match &lock_path {
        Some(lock_path) if !install_scripts => {
            let lock = fs::read(lock_path).map_err(io_error("cannot read", lock_path))?;
            let node_argv: Vec<OsString> = vec!["node".into(), "--version".into()];
            let node_version = runner.capture(&node_argv, app_dir, &[]).await?;
            let mut hasher = Sha256::new();
            hasher.update(b"gilgal-node-modules-v1\0");
            hasher.update(node_version.trim().as_bytes());
            hasher.update(b"\0");
            hasher.update(manifest_text.as_bytes());
            hasher.update(b"\0");
            hasher.update(&lock);
            for (key, value) in runner
                .env_with_prefix("npm_config_")
                .into_iter()
                .chain(runner.env_with_prefix("NPM_CONFIG_"))
            {
                hasher.update(format!("\0{key}={value}").as_bytes());
            }
            Some(hex::encode(hasher.finalize()))
        }
        _ => None,
    };
    let store = DependencyStore::new(cache_dir.join("node").join("modules"), "node_modules");
    let node_modules = app_dir.join("node_modules");
    let cached = reuse_key.as_deref().and_then(|key| store.lookup(key));
    let dependency_cache = if let Some(cached) = cached {
        runner
            .log
            .system(
                "package.json and lock file unchanged: reusing the cached node_modules, no npm ci",
            )
            .await;
        remove_tree(&node_modules)?;
        store.restore(&cached, &node_modules, None).await?;
        DependencyCache::Reused
    } else {
        let subcommand = if lock_path.is_some() { "ci" } else { "install" };
        let mut argv: Vec<OsString> = vec!["npm".into(), subcommand.into()];
        argv.push("--cache".into());
        argv.push(cache_dir.join("npm").into_os_string());
        argv.extend(["--prefer-offline", "--no-audit", "--no-fund"].map(OsString::from));
        runner.run(&argv, app_dir, &env).await?;
        match &reuse_key {
            Some(key) if node_modules.is_dir() => {
                store.store(runner, &node_modules, key, None).await;
                DependencyCache::Populated
            }
            _ => DependencyCache::NotApplicable,
        }
    };

    if has_script("build") {
        let argv: Vec<OsString> = ["npm", "run", "build"].map(OsString::from).to_vec();
        runner.run(&argv, app_dir, &env).await?;
    }

    let default_web = if has_script("start") || app_dir.join("server.js").is_file() {
        CommandLine::parse("npm start").ok()
    } else {
        None
    };
    let mut runtime_env = BTreeMap::new();
    runtime_env.insert("NODE_ENV".to_owned(), "production".to_owned());
    Ok(StackOutput {
        path_prepend: vec![app_dir.join("node_modules").join(".bin")],
        env: runtime_env,
        default_web,
        dependency_cache,
    })
}
