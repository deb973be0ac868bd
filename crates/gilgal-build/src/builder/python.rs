//! The Python builder: a venv at `<app>/.venv` with the app's dependencies.
//!
//! Design (correctness first, then speed): venvs are not relocatable, so the venv is always
//! created at its final path inside the immutable release directory. A cold build runs
//! `python3 -m venv --without-pip` (0.1 s instead of ~4 s for ensurepip) and installs with the
//! base interpreter's pip pointed at the venv (`pip --python`), using a per-app pip cache.
//! After a successful `requirements.txt` install, a copy of the venv is kept in the app's
//! cache under a key of (interpreter path, interpreter version, requirements.txt bytes).
//! A later build with the same key copies that venv to the new release and rewrites the one
//! thing that ties a venv to its location — the absolute venv path in `bin/` scripts
//! (shebangs, activate), `pyvenv.cfg` and `*.pth` files — and skips pip entirely. Packages
//! installed from wheels record only relative paths, so the copy is equivalent to a fresh
//! install; a changed requirements file or interpreter is a new key, so the cache can never
//! serve stale dependencies. `pyproject.toml`-only apps (`pip install .`) install the app
//! itself, so they are always installed afresh (with the warm pip cache).

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::fsops::{copy_tree, Rewrite};
use super::runner::StepRunner;
use super::{io_error, BuildError, DependencyCache, StackOutput};

/// Cached venvs kept per app; older ones are pruned.
const CACHED_VENVS_KEPT: usize = 3;
/// Marks a cached venv as completely written.
const COMPLETE_MARKER: &str = ".gilgal-complete";

struct Interpreter {
    executable: PathBuf,
    version: String,
    has_pip: bool,
}

async fn probe(runner: &StepRunner, app_dir: &Path) -> Result<Interpreter, BuildError> {
    let script = "import sys, importlib.util\n\
                  print(sys.executable)\n\
                  print(sys.version.split()[0])\n\
                  print(int(importlib.util.find_spec('pip') is not None))";
    let argv: Vec<OsString> = vec!["python3".into(), "-c".into(), script.into()];
    let output = runner.capture(&argv, app_dir, &[]).await?;
    let mut lines = output.lines();
    let executable = lines.next().unwrap_or_default().trim().to_owned();
    let version = lines.next().unwrap_or_default().trim().to_owned();
    let has_pip = lines.next().is_some_and(|line| line.trim() == "1");
    if executable.is_empty() {
        return Err(BuildError::Toolchain(
            "python3 did not report its executable path".to_owned(),
        ));
    }
    Ok(Interpreter {
        executable: PathBuf::from(executable),
        version,
        has_pip,
    })
}

pub(crate) async fn build(
    runner: &StepRunner,
    app_dir: &Path,
    cache_dir: &Path,
) -> Result<StackOutput, BuildError> {
    let venv = app_dir.join(".venv");
    if fs::symlink_metadata(&venv).is_ok() {
        runner
            .log
            .system("removing the uploaded .venv; Gilgal builds its own")
            .await;
        remove_path(&venv)?;
    }
    let interpreter = probe(runner, app_dir).await?;
    runner
        .log
        .system(format!(
            "python {} at {}",
            interpreter.version,
            interpreter.executable.display()
        ))
        .await;

    let requirements = app_dir.join("requirements.txt");
    let mut cache = DependencyCache::NotApplicable;
    if requirements.is_file() {
        let bytes = fs::read(&requirements).map_err(io_error("cannot read", &requirements))?;
        let key = cache_key(&interpreter, &bytes);
        let venvs = cache_dir.join("python").join("venvs");
        let cached = venvs.join(&key);
        if cached.join(COMPLETE_MARKER).is_file() {
            runner
                .log
                .system("requirements.txt unchanged: reusing the cached venv, no pip install")
                .await;
            relocate(&cached, &venv, &venv).await?;
            let _ = fs::remove_file(venv.join(COMPLETE_MARKER));
            touch(&cached);
            cache = DependencyCache::Reused;
        } else {
            create_venv(runner, &interpreter, app_dir, &venv).await?;
            let mut args = vec!["-r".into(), requirements.into_os_string()];
            pip_install(runner, &interpreter, app_dir, cache_dir, &venv, &mut args).await?;
            store_in_cache(runner, &venv, &venvs, &key).await;
            cache = DependencyCache::Populated;
        }
    } else {
        create_venv(runner, &interpreter, app_dir, &venv).await?;
        if app_dir.join("pyproject.toml").is_file() {
            let mut args = vec![app_dir.as_os_str().to_owned()];
            pip_install(runner, &interpreter, app_dir, cache_dir, &venv, &mut args).await?;
        }
    }

    let mut env = std::collections::BTreeMap::new();
    env.insert("VIRTUAL_ENV".to_owned(), venv.display().to_string());
    env.insert("PYTHONUNBUFFERED".to_owned(), "1".to_owned());
    Ok(StackOutput {
        path_prepend: vec![venv.join("bin")],
        env,
        default_web: None,
        dependency_cache: cache,
    })
}

fn cache_key(interpreter: &Interpreter, requirements: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"gilgal-python-venv-v1\0");
    hasher.update(interpreter.executable.as_os_str().as_encoded_bytes());
    hasher.update(b"\0");
    hasher.update(interpreter.version.as_bytes());
    hasher.update(b"\0");
    hasher.update(requirements);
    hex::encode(hasher.finalize())
}

async fn create_venv(
    runner: &StepRunner,
    interpreter: &Interpreter,
    app_dir: &Path,
    venv: &Path,
) -> Result<(), BuildError> {
    let mut argv: Vec<OsString> = vec![
        interpreter.executable.clone().into_os_string(),
        "-m".into(),
        "venv".into(),
    ];
    if interpreter.has_pip {
        argv.push("--without-pip".into());
    }
    argv.push(venv.as_os_str().to_owned());
    runner.run(&argv, app_dir, &[]).await
}

async fn pip_install(
    runner: &StepRunner,
    interpreter: &Interpreter,
    app_dir: &Path,
    cache_dir: &Path,
    venv: &Path,
    what: &mut Vec<OsString>,
) -> Result<(), BuildError> {
    let venv_python = venv.join("bin").join("python");
    // With pip in the base interpreter, drive it against the venv; otherwise the venv has its
    // own pip (created by ensurepip).
    let mut argv: Vec<OsString> = if interpreter.has_pip {
        vec![
            interpreter.executable.clone().into_os_string(),
            "-m".into(),
            "pip".into(),
            "--python".into(),
            venv_python.into_os_string(),
        ]
    } else {
        vec![venv_python.into_os_string(), "-m".into(), "pip".into()]
    };
    argv.extend(["install", "--cache-dir"].map(OsString::from));
    argv.push(cache_dir.join("pip").into_os_string());
    argv.extend(
        [
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
        ]
        .map(OsString::from),
    );
    argv.append(what);
    let env = [
        (OsString::from("VIRTUAL_ENV"), venv.as_os_str().to_owned()),
        (
            OsString::from("PIP_NO_WARN_SCRIPT_LOCATION"),
            OsString::from("1"),
        ),
    ];
    runner.run(&argv, app_dir, &env).await
}

fn is_location_bound(path: &Path) -> bool {
    let in_bin = path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|name| name == "bin");
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("");
    in_bin || name == "pyvenv.cfg" || name.ends_with(".pth")
}

/// Copies a venv from `from` to `to`, rewriting its absolute location to `location` (its
/// final path, which differs from `to` when staging a copy before renaming it into place).
async fn relocate(from: &Path, to: &Path, location: &Path) -> Result<(), BuildError> {
    let (from, to, location) = (from.to_owned(), to.to_owned(), location.to_owned());
    let target = to.clone();
    tokio::task::spawn_blocking(move || {
        let from_bytes = from.as_os_str().as_encoded_bytes().to_vec();
        let to_bytes = location.as_os_str().as_encoded_bytes().to_vec();
        let rewrite = Rewrite {
            from: &from_bytes,
            to: &to_bytes,
            applies: &is_location_bound,
        };
        copy_tree(&from, &to, Some(&rewrite))
    })
    .await
    .map_err(|err| BuildError::Internal(err.to_string()))?
    .map_err(io_error("cannot copy the cached venv to", &target))
}

/// Keeps a relocated copy of a fresh venv for later builds; failures only cost speed.
async fn store_in_cache(runner: &StepRunner, venv: &Path, venvs: &Path, key: &str) {
    let staging = venvs.join(format!(".staging-{key}-{}", std::process::id()));
    let final_path = venvs.join(key);
    if fs::create_dir_all(venvs).is_err() {
        return;
    }
    let _ = remove_path(&staging);
    if relocate(venv, &staging, &final_path).await.is_err()
        || fs::write(staging.join(COMPLETE_MARKER), b"").is_err()
    {
        let _ = remove_path(&staging);
        return;
    }
    // If a concurrent build stored the same key first, keep theirs.
    if fs::rename(&staging, &final_path).is_err() {
        let _ = remove_path(&staging);
    }
    prune(venvs);
    runner
        .log
        .system("stored the venv in the app's build cache for the next deploy")
        .await;
}

fn touch(path: &Path) {
    let _ = fs::File::open(path.join(COMPLETE_MARKER))
        .and_then(|file| file.set_modified(std::time::SystemTime::now()));
}

/// Removes all but the most recently used cached venvs.
fn prune(venvs: &Path) {
    let Ok(entries) = fs::read_dir(venvs) else {
        return;
    };
    let mut cached: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|entry| {
            let used = fs::metadata(entry.path().join(COMPLETE_MARKER))
                .and_then(|meta| meta.modified())
                .ok()?;
            Some((used, entry.path()))
        })
        .collect();
    cached.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    for (_, path) in cached.into_iter().skip(CACHED_VENVS_KEPT) {
        let _ = fs::remove_dir_all(path);
    }
}

fn remove_path(path: &Path) -> Result<(), BuildError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    result.map_err(io_error("cannot remove", path))
}
