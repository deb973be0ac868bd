//! Confinement for processes that are not instances, chiefly build steps: the same user
//! switch, mount namespace and cgroup limits instances get ([`super::spawn::ChildSetup`]),
//! applied to a command the caller runs and reaps itself. Exists so that a build command
//! (`pip install`, an npm `postinstall`, a `build.rs`, a custom `[build] command`) has no
//! more power on the host than the app it builds.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::cgroup::{CgroupConfig, Cgroups, InstanceCgroup};
use super::members::Members;
use super::spawn::{ChildSetup, MountIsolation, MountPlan, INSTANCE_ID_ENV};
use crate::error::{Result, RuntimeError};
use crate::spec::{InstanceId, ResourceLimits};

/// How to confine a group of related commands (the steps of one build).
#[derive(Debug, Clone, Default)]
pub struct ConfinementSettings {
    /// `(uid, gid)` to run as (supplementary groups dropped); `None` keeps the server's user.
    pub user: Option<(u32, u32)>,
    /// The mount namespace each command gets (applied only as root).
    pub mounts: MountIsolation,
    /// The commands' own directories, kept visible (and at their paths) inside the covers of
    /// `mounts`: for a build, its release directory and the app's cache.
    pub visible: Vec<PathBuf>,
    /// Where cgroups live; every command joins the same cgroups, with `limits`.
    pub cgroups: CgroupConfig,
    /// Limits shared by all the commands together.
    pub limits: ResourceLimits,
}

/// One confinement: its cgroups exist while it lives, and dropping it kills whatever its
/// commands left running.
#[derive(Debug)]
pub struct Confinement {
    settings: ConfinementSettings,
    /// Marks every process (environment variable and cgroup name) so all can be found.
    marker: InstanceId,
    cgroup: InstanceCgroup,
}

impl Confinement {
    /// Creates the cgroups (a controller that cannot be used is skipped with a warning, as
    /// for instances). Switching users needs root.
    pub fn new(settings: ConfinementSettings) -> Result<Confinement> {
        // SAFETY: geteuid has no preconditions.
        if settings.user.is_some() && unsafe { libc::geteuid() } != 0 {
            return Err(RuntimeError::UserIsolation(
                "running commands as another user needs the server to run as root".into(),
            ));
        }
        let marker = InstanceId::generate();
        let mut cgroup = Cgroups::detect(&settings.cgroups).instance(&marker);
        cgroup.create(&settings.limits);
        Ok(Confinement {
            settings,
            marker,
            cgroup,
        })
    }

    /// The user commands run as, if not the server's.
    pub fn user(&self) -> Option<(u32, u32)> {
        self.settings.user
    }

    /// Makes `command` run confined, starting in `working_dir`. Call it last, after the
    /// environment is set (it adds the marker variable); do not set the command's uid, gid,
    /// process group or current directory (the child sets those up itself, in order; its pid
    /// is its process group id).
    pub fn confine(&self, command: &mut Command, working_dir: &Path) -> Result<()> {
        let workdir = CString::new(working_dir.as_os_str().as_bytes())
            .map_err(|_| RuntimeError::InvalidSpec("working dir contains a NUL byte".into()))?;
        let visible: Vec<&Path> = self.settings.visible.iter().map(PathBuf::as_path).collect();
        let mounts = MountPlan::prepare(&self.settings.mounts, &visible)?;
        command.env(INSTANCE_ID_ENV, self.marker.as_str());
        ChildSetup {
            procs_files: self.cgroup.open_procs_files(),
            mounts,
            ids: self.settings.user,
            workdir,
        }
        .install(command);
        Ok(())
    }

    /// SIGKILLs every process a command of this confinement started and left behind, also
    /// those that left its process group (found by cgroup and marker). Returns how many.
    pub fn kill_all(&self) -> usize {
        Members {
            id: &self.marker,
            cgroup: &self.cgroup,
            leader: None,
        }
        .signal_all(libc::SIGKILL)
    }
}

impl Drop for Confinement {
    fn drop(&mut self) {
        self.kill_all();
        self.cgroup.remove();
    }
}
