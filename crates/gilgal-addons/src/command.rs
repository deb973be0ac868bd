//! Running the servers' own programs: argument vectors, a chosen environment, an optional
//! system user, a time limit, and the tail of stderr in the error.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::AddonError;

/// The system user a server runs as (PostgreSQL refuses to run as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl RunAs {
    /// The named system user, when Gilgal runs as root; `None` otherwise (the server then
    /// runs as Gilgal's own user) or when the user does not exist.
    pub fn system_user(name: &str) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let user = nix::unistd::User::from_name(name).ok().flatten()?;
        Some(Self {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }

    /// Makes `path` (a directory or file) belong to this user.
    pub fn own(&self, path: &Path) -> Result<(), AddonError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| AddonError::io(format!("chown {}", path.display()), e))
    }
}

/// Runs `program args…` with exactly `env` (plus PATH), as `run_as`, within `limit`; returns
/// stdout. Fails with the exit status and the last lines of stderr.
pub(crate) async fn run(
    program: &Path,
    args: &[&OsStr],
    env: &BTreeMap<&str, String>,
    run_as: Option<RunAs>,
    limit: Duration,
) -> Result<String, AddonError> {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/")
        .kill_on_drop(true);
    if let Some(user) = run_as {
        // std drops root's supplementary groups (setgroups(0)) before switching the uid.
        command.uid(user.uid).gid(user.gid);
    }
    let child = command
        .spawn()
        .map_err(|e| AddonError::io(format!("starting {name}"), e))?;
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(output) => output.map_err(|e| AddonError::io(format!("running {name}"), e))?,
        Err(_) => {
            return Err(AddonError::Command {
                program: name,
                detail: format!("did not finish within {} s", limit.as_secs()),
            })
        }
    };
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    Err(AddonError::Command {
        program: name,
        detail: format!(
            "{}: {}",
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ),
    })
}
