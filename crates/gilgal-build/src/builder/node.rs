//! The Node builder: `npm ci` (or `npm install` without a lock file) with a per-app npm cache,
//! then `npm run build` when package.json defines it. Without any process definition the app
//! runs `npm start`.

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

    let locked = app_dir.join("package-lock.json").is_file()
        || app_dir.join("npm-shrinkwrap.json").is_file();
    let mut argv: Vec<OsString> = vec!["npm".into(), if locked { "ci" } else { "install" }.into()];
    argv.push("--cache".into());
    argv.push(cache_dir.join("npm").into_os_string());
    argv.extend(["--prefer-offline", "--no-audit", "--no-fund"].map(OsString::from));
    let env = [
        (
            OsString::from("npm_config_update_notifier"),
            OsString::from("false"),
        ),
        (OsString::from("NO_UPDATE_NOTIFIER"), OsString::from("1")),
    ];
    runner.run(&argv, app_dir, &env).await?;

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
        dependency_cache: DependencyCache::NotApplicable,
    })
}
