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

use super::dep_cache::{remove_tree, DependencyStore};
use super::runner::StepRunner;
use super::{io_error, BuildError, DependencyCache, StackOutput};

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
        remove_tree(&venv)?;
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
        let mut fingerprint = Vec::new();
        let cacheable = requirements_fingerprint(app_dir, &requirements, 0, &mut fingerprint)?;
        let key = cache_key(&interpreter, &fingerprint, &runner.env_with_prefix("PIP_"));
        let store = DependencyStore::new(cache_dir.join("python").join("venvs"), "venv");
        let cached = if cacheable { store.lookup(&key) } else { None };
        if let Some(cached) = cached {
            runner
                .log
                .system("requirements unchanged: reusing the cached venv, no pip install")
                .await;
            store
                .restore(&cached, &venv, Some(is_location_bound))
                .await?;
            cache = DependencyCache::Reused;
        } else {
            create_venv(runner, &interpreter, app_dir, &venv).await?;
            let mut args = vec!["-r".into(), requirements.into_os_string()];
            pip_install(runner, &interpreter, app_dir, cache_dir, &venv, &mut args).await?;
            if cacheable {
                store
                    .store(runner, &venv, &key, Some(is_location_bound))
                    .await;
                cache = DependencyCache::Populated;
            } else {
                runner
                    .log
                    .system(
                        "requirements refer to local paths or editable installs: \
                         the venv is not cached (the pip cache still is)",
                    )
                    .await;
            }
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

fn cache_key(
    interpreter: &Interpreter,
    requirements: &[u8],
    pip_env: &[(String, String)],
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"gilgal-python-venv-v1\0");
    hasher.update(interpreter.executable.as_os_str().as_encoded_bytes());
    hasher.update(b"\0");
    hasher.update(interpreter.version.as_bytes());
    hasher.update(b"\0");
    for (key, value) in pip_env {
        hasher.update(format!("{key}={value}\0").as_bytes());
    }
    hasher.update(requirements);
    hex::encode(hasher.finalize())
}

/// Most levels of `-r`/`-c` includes followed.
const MAX_INCLUDE_DEPTH: usize = 10;

/// Appends to `out` everything that determines what `pip install -r <file>` installs — the
/// file and, recursively, the requirement and constraint files it includes — and returns
/// whether that is *all* it depends on. It is not when a line installs from a local path or
/// in editable mode (the installed code then depends on files outside the requirements), or
/// includes a remote file; such venvs are never reused.
pub(crate) fn requirements_fingerprint(
    app_dir: &Path,
    file: &Path,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<bool, BuildError> {
    if depth > MAX_INCLUDE_DEPTH {
        return Ok(false);
    }
    let text = fs::read_to_string(file).map_err(io_error("cannot read", file))?;
    out.extend_from_slice(
        file.strip_prefix(app_dir)
            .unwrap_or(file)
            .as_os_str()
            .as_encoded_bytes(),
    );
    out.push(0);
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    let joined = text.replace("\\\r\n", "").replace("\\\n", "");
    for raw in joined.lines() {
        let line = match raw.find(" #") {
            Some(index) => &raw[..index],
            None => raw,
        }
        .trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let include = ["--requirement", "--constraint", "-r", "-c"]
            .iter()
            .find_map(|option| line.strip_prefix(option));
        if let Some(rest) = include {
            let target = rest.trim_start().trim_start_matches('=').trim();
            if target.is_empty() || target.contains("://") {
                return Ok(false);
            }
            let base = file.parent().unwrap_or(app_dir);
            let included = base.join(target);
            let inside = included
                .canonicalize()
                .ok()
                .zip(app_dir.canonicalize().ok())
                .is_some_and(|(included, app)| included.starts_with(app));
            if !inside || !requirements_fingerprint(app_dir, &included, depth + 1, out)? {
                return Ok(false);
            }
            continue;
        }
        if line.starts_with("-e") || line.starts_with("--editable") {
            return Ok(false);
        }
        if line.starts_with('-') {
            continue; // --index-url, --hash, --pre, ...: captured by the bytes above
        }
        if line.starts_with(['.', '/', '~']) || line.contains("file:") {
            return Ok(false);
        }
    }
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::requirements_fingerprint;
    use std::fs;

    fn check(files: &[(&str, &str)]) -> (bool, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("app")).unwrap();
        let app = dir.path().join("app");
        for (name, content) in files {
            let path = if let Some(outside) = name.strip_prefix("../") {
                dir.path().join(outside)
            } else {
                app.join(name)
            };
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        let mut out = Vec::new();
        let cacheable =
            requirements_fingerprint(&app, &app.join("requirements.txt"), 0, &mut out).unwrap();
        (cacheable, out)
    }

    #[test]
    fn registry_requirements_and_includes_are_cacheable() {
        let (ok, base) = check(&[(
            "requirements.txt",
            "# deps\n--index-url https://pypi.org/simple\nflask==3.0.0 ; python_version > \"3\"\n\nsix  # inline\n-r reqs/base.txt\n--constraint=reqs/pins.txt\n",
        ), ("reqs/base.txt", "gunicorn\n"), ("reqs/pins.txt", "gunicorn==23.0.0\n")]);
        assert!(ok);
        let (_, changed) = check(&[(
            "requirements.txt",
            "# deps\n--index-url https://pypi.org/simple\nflask==3.0.0 ; python_version > \"3\"\n\nsix  # inline\n-r reqs/base.txt\n--constraint=reqs/pins.txt\n",
        ), ("reqs/base.txt", "gunicorn\n"), ("reqs/pins.txt", "gunicorn==22.0.0\n")]);
        assert_ne!(base, changed, "an included file is part of the key");
    }

    #[test]
    fn local_and_editable_installs_are_not_cacheable() {
        for requirements in [
            "-e .\n",
            "--editable ./lib\n",
            "./wheels/thing-1.0-py3-none-any.whl\n",
            "/abs/path/pkg\n",
            "pkg @ file:///srv/pkg\n",
            "-r https://example.invalid/reqs.txt\n",
            "-r ../outside.txt\n",
            "-r missing.txt\n",
            "six \\\n  ==1.16.0\n-e .\n",
        ] {
            let files = [
                ("requirements.txt", requirements),
                ("../outside.txt", "six\n"),
            ];
            let (cacheable, _) = check(&files);
            assert!(!cacheable, "{requirements:?}");
        }
    }
}
