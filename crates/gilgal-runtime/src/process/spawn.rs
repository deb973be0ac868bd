//! Spawning one instance process with its isolation applied between fork and exec:
//! new session (so the pid is also the process-group id and the group can be signalled as a
//! whole), join the instance's cgroups, drop to the app's user, enter the working directory,
//! set no-new-privileges. The environment is built from scratch, never inherited.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::cgroup::InstanceCgroup;
use super::record::InstancePaths;
use super::user::AppIdentity;
use crate::error::{Result, RuntimeError};
use crate::spec::{InstanceId, InstanceSpec};

/// Name of the variable marking every process of an instance; with the cgroup and the process
/// group it lets the runtime find all of an instance's processes, even after a server restart.
pub const INSTANCE_ID_ENV: &str = "GILGAL_INSTANCE_ID";

/// PATH given to apps that do not set their own.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The complete environment of an instance process.
pub(crate) fn build_env(
    id: &InstanceId,
    spec: &InstanceSpec,
    user_name: Option<&str>,
    default_path: &str,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), default_path.to_owned());
    env.insert(
        "HOME".to_owned(),
        spec.working_dir.to_string_lossy().into_owned(),
    );
    env.insert("LANG".to_owned(), "C.UTF-8".to_owned());
    if let Some(name) = user_name {
        env.insert("USER".to_owned(), name.to_owned());
        env.insert("LOGNAME".to_owned(), name.to_owned());
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(port) = spec.port {
        env.insert("PORT".to_owned(), port.to_string());
    }
    env.insert(INSTANCE_ID_ENV.to_owned(), id.to_string());
    env
}

fn open_log(path: &std::path::Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| RuntimeError::state(path, err))
}

/// Spawns the process. The caller has already written the instance record.
pub(crate) fn spawn(
    spec: &InstanceSpec,
    env: &BTreeMap<String, String>,
    paths: &InstancePaths,
    cgroup: &InstanceCgroup,
    identity: Option<AppIdentity>,
) -> Result<Child> {
    let program = spec
        .argv
        .first()
        .ok_or_else(|| RuntimeError::InvalidSpec("argv must not be empty".into()))?;
    let workdir = CString::new(spec.working_dir.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::InvalidSpec("working dir contains a NUL byte".into()))?;
    let stdout = open_log(&paths.stdout())?;
    let stderr = open_log(&paths.stderr())?;
    // Kept open until spawn returns; the child inherits them across fork (they are CLOEXEC,
    // so they vanish at exec).
    let procs_files = cgroup.open_procs_files();
    let procs_fds: Vec<i32> = procs_files.iter().map(AsRawFd::as_raw_fd).collect();
    let ids = identity.map(|identity| (identity.uid, identity.gid));

    let mut command = Command::new(program);
    command
        .args(spec.argv.iter().skip(1))
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(false);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls on data prepared before the fork (no allocation, no
    // locks).
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in &procs_fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some((uid, gid)) = ids {
                if libc::setgroups(0, std::ptr::null()) < 0
                    || libc::setgid(gid) < 0
                    || libc::setuid(uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After dropping privileges, so the app user needs real access to its directory.
            if libc::chdir(workdir.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| RuntimeError::Spawn {
        program: program.clone(),
        working_dir: spec.working_dir.clone(),
        source,
    })?;
    drop(procs_files);
    Ok(child)
}
