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

/// Mount-namespace isolation applied to every instance when the server runs as root.
///
/// Each instance gets its own mount namespace (mounts made in it never reach the host), in
/// which `hidden_paths` are covered by an empty read-only tmpfs (e.g. Gilgal's data dir: the
/// app cannot even see it, whatever the permissions) and, with `private_tmp`, `/tmp` is a
/// fresh tmpfs so apps cannot see or plant each other's temp files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountIsolation {
    /// Give each instance its own empty `/tmp`.
    pub private_tmp: bool,
    /// Directories to cover with an empty read-only tmpfs inside the instance's namespace.
    pub hidden_paths: Vec<std::path::PathBuf>,
}

impl MountIsolation {
    /// Whether anything is to be done.
    pub fn is_enabled(&self) -> bool {
        self.private_tmp || !self.hidden_paths.is_empty()
    }

    /// Why `working_dir` would be invisible inside the namespace, if it would.
    pub fn hides(&self, working_dir: &std::path::Path) -> Option<String> {
        if self.private_tmp && working_dir.starts_with("/tmp") {
            return Some("is under /tmp, which each instance gets a private copy of".into());
        }
        self.hidden_paths
            .iter()
            .find(|hidden| working_dir.starts_with(hidden))
            .map(|hidden| format!("is under the hidden path {}", hidden.display()))
    }
}

/// [`MountIsolation`] turned into C strings before the fork (nothing may allocate after it).
#[derive(Debug)]
pub(crate) struct MountPlan {
    private_tmp: bool,
    hidden: Vec<CString>,
}

impl MountPlan {
    /// Prepares the plan; `None` when disabled or when not root (namespaces need root here).
    pub fn prepare(isolation: &MountIsolation) -> Result<Option<MountPlan>> {
        // SAFETY: geteuid has no preconditions.
        if !isolation.is_enabled() || unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let hidden = isolation
            .hidden_paths
            .iter()
            .map(|path| {
                CString::new(path.as_os_str().as_bytes()).map_err(|_| {
                    RuntimeError::InvalidSpec(format!("hidden path {} has a NUL", path.display()))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(MountPlan {
            private_tmp: isolation.private_tmp,
            hidden,
        }))
    }

    /// Runs in the forked child before exec: async-signal-safe system calls only.
    fn apply(&self) -> std::io::Result<()> {
        const TMPFS: &std::ffi::CStr = c"tmpfs";
        // SAFETY: all pointers are valid NUL-terminated strings or null, as mount(2) expects.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Keep our mounts from propagating back to the host.
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if self.private_tmp
                && libc::mount(
                    TMPFS.as_ptr(),
                    c"/tmp".as_ptr(),
                    TMPFS.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"mode=1777".as_ptr().cast(),
                ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for path in &self.hidden {
                if libc::mount(
                    TMPFS.as_ptr(),
                    path.as_ptr(),
                    TMPFS.as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"size=4k,mode=0555".as_ptr().cast(),
                ) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// The complete environment of an instance process.
pub(crate) fn build_env(
    id: &InstanceId,
    spec: &InstanceSpec,
    user_name: Option<&str>,
    home: Option<&std::path::Path>,
    default_path: &str,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), default_path.to_owned());
    let home = home.unwrap_or(&spec.working_dir);
    env.insert("HOME".to_owned(), home.to_string_lossy().into_owned());
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
    mounts: Option<MountPlan>,
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
            if let Some(plan) = &mounts {
                plan.apply()?;
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

/// Creates (or re-owns) `<home_root>/<user>` as the app user's private, writable HOME.
///
/// `home_root` is made root-owned 0755 so nobody else can plant entries in it; the home itself
/// is 0700 and owned by the app user, so tools that write to `~` (npm, pip) work while the
/// release dir stays read-only.
pub(crate) fn prepare_home(
    home_root: &std::path::Path,
    user_name: &str,
    identity: AppIdentity,
) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fail = |path: &std::path::Path, err| RuntimeError::state(path, err);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(home_root)
        .map_err(|err| fail(home_root, err))?;
    let home = home_root.join(user_name);
    match std::fs::symlink_metadata(&home) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(fail(
                &home,
                std::io::Error::other("exists and is not a directory"),
            ))
        }
        Err(_) => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&home)
            .map_err(|err| fail(&home, err))?,
    }
    std::os::unix::fs::lchown(&home, Some(identity.uid), Some(identity.gid))
        .map_err(|err| fail(&home, err))?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| fail(&home, err))?;
    Ok(home)
}
