//! Spawning one instance process with its isolation applied between fork and exec
//! ([`ChildSetup`], shared with build steps): new session (so the pid is also the
//! process-group id and the group can be signalled as a whole), join the instance's cgroups,
//! enter a mount namespace ([`MountPlan`]), drop to the app's user, enter the working
//! directory, set no-new-privileges. The environment is built from scratch, never inherited.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
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

/// Mount-namespace isolation applied to every instance (and build step) when the server
/// runs as root.
///
/// Each process gets its own mount namespace (mounts made in it never reach the host), in
/// which `hidden_paths` are covered by an empty read-only tmpfs (e.g. Gilgal's data dir: the
/// app cannot even see it, whatever the permissions), `own_only_paths` likewise except that
/// the process's own directories reappear inside (see below), and, with `private_tmp`, `/tmp`
/// is a fresh tmpfs so apps cannot see or plant each other's temp files.
///
/// A process's own directories (an instance's working dir and HOME, a build's release and
/// cache dirs) stay visible at their paths even when one of these mounts covers them: they
/// are bind-mounted back on top, alone. So a release under `/tmp` still runs with a private
/// `/tmp` (which then holds only the path down to it), and with the releases dir in
/// `own_only_paths` an app sees its own release there and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountIsolation {
    /// Give each process its own empty `/tmp`.
    pub private_tmp: bool,
    /// Directories to cover with an empty read-only tmpfs inside the namespace; an
    /// instance's working dir may not be inside one.
    pub hidden_paths: Vec<PathBuf>,
    /// Directories covered like `hidden_paths`, in which the process's own directories
    /// reappear (e.g. the releases dir: each app sees only its own release).
    pub own_only_paths: Vec<PathBuf>,
}

impl MountIsolation {
    /// Whether anything is to be done.
    pub fn is_enabled(&self) -> bool {
        self.private_tmp || !self.hidden_paths.is_empty() || !self.own_only_paths.is_empty()
    }

    /// Why `working_dir` may not be an instance's working dir, if it may not: it is inside a
    /// hidden path (making it visible would uncover what is hidden).
    pub fn hides(&self, working_dir: &Path) -> Option<String> {
        self.hidden_paths
            .iter()
            .find(|hidden| working_dir.starts_with(hidden))
            .map(|hidden| format!("is under the hidden path {}", hidden.display()))
    }
}

/// Most directories one process keeps visible through its namespace's covering mounts.
pub(crate) const MAX_VISIBLE_PATHS: usize = 4;

/// A directory covered by a tmpfs inside the namespace.
#[derive(Debug)]
struct Cover {
    path: CString,
    /// A visible path lies inside: mounted writable (to create the way down to it), made
    /// read-only once the visible paths are bound.
    reopen: bool,
}

/// A directory bound back on top of a covering mount.
#[derive(Debug)]
struct Visible {
    path: CString,
    /// Every prefix of `path` (shortest first), created (0711) if missing inside the covers.
    prefixes: Vec<CString>,
}

/// [`MountIsolation`] turned into C strings before the fork (nothing may allocate after it).
#[derive(Debug)]
pub(crate) struct MountPlan {
    private_tmp: bool,
    covers: Vec<Cover>,
    visible: Vec<Visible>,
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::InvalidSpec(format!("path {} has a NUL", path.display())))
}

impl MountPlan {
    /// Prepares the plan for a process whose own directories are `visible`; `None` when
    /// disabled or when not root (namespaces need root here).
    pub fn prepare(isolation: &MountIsolation, visible: &[&Path]) -> Result<Option<MountPlan>> {
        // SAFETY: geteuid has no preconditions.
        if !isolation.is_enabled() || unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let tmp = Path::new("/tmp");
        // Inside a private /tmp a path under the host's /tmp does not exist: nothing to cover.
        let vanishes = |path: &Path| isolation.private_tmp && path.starts_with(tmp);
        let cover_paths: Vec<&PathBuf> = isolation
            .hidden_paths
            .iter()
            .chain(&isolation.own_only_paths)
            .filter(|path| !vanishes(path))
            .collect();
        let covered =
            |path: &Path| vanishes(path) || cover_paths.iter().any(|cover| path.starts_with(cover));
        let mut kept: Vec<&Path> = visible
            .iter()
            .copied()
            .filter(|path| path.is_absolute() && covered(path))
            .collect();
        kept.sort_by_key(|path| path.as_os_str().len());
        kept.dedup();
        if kept.len() > MAX_VISIBLE_PATHS {
            return Err(RuntimeError::InvalidSpec(format!(
                "at most {MAX_VISIBLE_PATHS} directories can be kept visible"
            )));
        }
        let covers = cover_paths
            .iter()
            .map(|path| {
                Ok(Cover {
                    path: c_path(path)?,
                    reopen: kept.iter().any(|kept| kept.starts_with(path)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let visible = kept
            .iter()
            .map(|path| {
                // Only inside the covers: the host's own directories are never touched.
                let mut prefixes = path
                    .ancestors()
                    .filter(|prefix| covered(prefix))
                    .map(c_path)
                    .collect::<Result<Vec<_>>>()?;
                prefixes.reverse();
                Ok(Visible {
                    path: c_path(path)?,
                    prefixes,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(MountPlan {
            private_tmp: isolation.private_tmp,
            covers,
            visible,
        }))
    }

    /// Runs in the forked child before exec: async-signal-safe system calls only, no
    /// allocation.
    fn apply(&self) -> std::io::Result<()> {
        const TMPFS: &std::ffi::CStr = c"tmpfs";
        let fail = || Err(std::io::Error::last_os_error());
        // SAFETY: all pointers are valid NUL-terminated strings or null, as mount(2),
        // open(2) and mkdir(2) expect; the fds are our own.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) < 0 {
                return fail();
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
                return fail();
            }
            // Handles on the visible dirs, taken in the new namespace before anything covers
            // them (a bind mount's source must be a mount of the caller's namespace).
            let mut fds = [-1; MAX_VISIBLE_PATHS];
            for (fd, visible) in fds.iter_mut().zip(&self.visible) {
                *fd = libc::open(
                    visible.path.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                );
                if *fd < 0 {
                    return fail();
                }
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
                return fail();
            }
            let hidden_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            for cover in &self.covers {
                let flags = if cover.reopen {
                    hidden_flags
                } else {
                    hidden_flags | libc::MS_RDONLY
                };
                if libc::mount(
                    TMPFS.as_ptr(),
                    cover.path.as_ptr(),
                    TMPFS.as_ptr(),
                    flags,
                    c"size=4k,mode=0555".as_ptr().cast(),
                ) < 0
                {
                    return fail();
                }
            }
            for (fd, visible) in fds.iter().zip(&self.visible) {
                for prefix in &visible.prefixes {
                    // Passable, not listable, like the data dir it may stand for.
                    if libc::mkdir(prefix.as_ptr(), 0o711) < 0
                        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                    {
                        return fail();
                    }
                }
                let mut source = [0u8; 32];
                if libc::mount(
                    fd_path(*fd, &mut source),
                    visible.path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) < 0
                {
                    return fail();
                }
                libc::close(*fd);
            }
            for cover in self.covers.iter().filter(|cover| cover.reopen) {
                if libc::mount(
                    std::ptr::null(),
                    cover.path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | hidden_flags,
                    std::ptr::null(),
                ) < 0
                {
                    return fail();
                }
            }
        }
        Ok(())
    }
}

/// Writes `/proc/self/fd/<fd>` NUL-terminated into `buffer` without allocating (for use
/// between fork and exec) and returns it.
fn fd_path(fd: i32, buffer: &mut [u8; 32]) -> *const libc::c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buffer[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut count = 0;
    let mut rest = fd.unsigned_abs();
    loop {
        digits[count] = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for index in 0..count {
        buffer[PREFIX.len() + index] = digits[count - 1 - index];
    }
    buffer[PREFIX.len() + count] = 0;
    buffer.as_ptr().cast()
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
    let setup = ChildSetup {
        procs_files: cgroup.open_procs_files(),
        mounts,
        ids: identity.map(|identity| (identity.uid, identity.gid)),
        workdir,
    };

    let mut command = Command::new(program);
    command
        .args(spec.argv.iter().skip(1))
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(false);
    setup.install(&mut command);
    let child = command.spawn().map_err(|source| RuntimeError::Spawn {
        program: program.clone(),
        working_dir: spec.working_dir.clone(),
        source,
    })?;
    Ok(child)
}

/// What a child does between fork and exec to enter its isolation: new session (so its pid
/// is also its process-group id and the group can be signalled as a whole), join the cgroups,
/// enter the mount namespace, drop to the app's user, enter the working directory, set
/// no-new-privileges. Shared by instances and build steps ([`super::Confinement`]).
#[derive(Debug)]
pub(crate) struct ChildSetup {
    /// `cgroup.procs` of each cgroup to join; kept open until the command is dropped (they
    /// are CLOEXEC, so they vanish at exec).
    pub procs_files: Vec<File>,
    pub mounts: Option<MountPlan>,
    /// uid and gid to switch to (supplementary groups are dropped).
    pub ids: Option<(libc::uid_t, libc::gid_t)>,
    /// Entered after the switch, so the user needs real access to it.
    pub workdir: CString,
}

impl ChildSetup {
    /// Makes `command`'s child run [`ChildSetup`] before exec. Do not also set the
    /// command's uid, gid, process group or working directory: those would happen before
    /// the namespace is set up, as the wrong user or in the wrong place.
    pub fn install(self, command: &mut Command) {
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls on data prepared before the fork (no allocation,
        // no locks).
        unsafe {
            command.pre_exec(move || self.enter());
        }
    }

    /// The child's side; async-signal-safe system calls only.
    fn enter(&self) -> std::io::Result<()> {
        // SAFETY: plain system calls on valid fds and NUL-terminated strings.
        unsafe {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for file in &self.procs_files {
                if libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(plan) = &self.mounts {
                plan.apply()?;
            }
            if let Some((uid, gid)) = self.ids {
                if libc::setgroups(0, std::ptr::null()) < 0
                    || libc::setgid(gid) < 0
                    || libc::setuid(uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After dropping privileges, so the user needs real access to its directory.
            if libc::chdir(self.workdir.as_ptr()) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
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
