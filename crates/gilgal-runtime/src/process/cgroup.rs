//! cgroup v1 support: one cgroup per instance under `<root>/<controller>/<parent>/<instance-id>`
//! in the memory, cpu and pids hierarchies, with `memory.limit_in_bytes`, `cpu.shares`,
//! `cpu.cfs_quota_us` and `pids.max`. The child joins its cgroups itself before exec (see
//! `spawn`), so every process of an instance is inside from its first instruction; that makes
//! the cgroup a complete list of the instance's processes (for kill and sweep) and its
//! `oom_kill` counter an OOM signal.
//!
//! When a hierarchy is missing or not writable the controller is skipped with a warning, and
//! limits are not enforced.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::spec::{InstanceId, ResourceLimits};

/// Where cgroups live and whether to use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupConfig {
    /// Use the v1 controllers found under `root` (normally `/sys/fs/cgroup`), creating
    /// instance cgroups below `<controller>/<parent>`.
    V1 {
        /// Mount root of the v1 hierarchies.
        root: PathBuf,
        /// Directory name grouping Gilgal's instance cgroups.
        parent: String,
    },
    /// Never touch cgroups (no limits, no cgroup-based process tracking).
    Disabled,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig::V1 {
            root: PathBuf::from("/sys/fs/cgroup"),
            parent: "gilgal".to_owned(),
        }
    }
}

/// A v1 controller the runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    Memory,
    Cpu,
    Pids,
}

impl Controller {
    const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    fn dir_name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

/// The controllers found usable at startup.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cgroups {
    /// `(controller, <root>/<controller>/<parent>)` for each usable controller.
    parents: Vec<(Controller, PathBuf)>,
}

impl Cgroups {
    /// Probes the configured hierarchies; unusable ones are skipped with a warning.
    pub fn detect(config: &CgroupConfig) -> Cgroups {
        let CgroupConfig::V1 { root, parent } = config else {
            return Cgroups::default();
        };
        let mut parents = Vec::new();
        for controller in Controller::ALL {
            let hierarchy = root.join(controller.dir_name());
            if !hierarchy.join("cgroup.procs").exists() {
                tracing::warn!(
                    controller = controller.dir_name(),
                    path = %hierarchy.display(),
                    "cgroup v1 controller not mounted; its limits will not be enforced"
                );
                continue;
            }
            let dir = hierarchy.join(parent);
            match fs::create_dir_all(&dir) {
                Ok(()) => parents.push((controller, dir)),
                Err(err) => tracing::warn!(
                    controller = controller.dir_name(),
                    path = %dir.display(),
                    error = %err,
                    "cgroup v1 controller not writable; its limits will not be enforced"
                ),
            }
        }
        Cgroups { parents }
    }

    /// Whether a memory cgroup is available (limits and OOM detection).
    pub fn has_memory(&self) -> bool {
        self.parents.iter().any(|(c, _)| *c == Controller::Memory)
    }

    /// The (possibly not yet created) cgroup set of an instance.
    pub fn instance(&self, id: &InstanceId) -> InstanceCgroup {
        InstanceCgroup {
            dirs: self
                .parents
                .iter()
                .map(|(controller, parent)| (*controller, parent.join(id.as_str())))
                .collect(),
        }
    }
}

/// The cgroups of one instance, one per usable controller.
#[derive(Debug, Clone, Default)]
pub(crate) struct InstanceCgroup {
    dirs: Vec<(Controller, PathBuf)>,
}

impl InstanceCgroup {
    fn dir(&self, controller: Controller) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, dir)| dir.as_path())
    }

    /// Creates the cgroups and writes the limits. A controller that fails is dropped from
    /// this instance with a warning rather than failing the start.
    pub fn create(&mut self, limits: &ResourceLimits) {
        self.dirs.retain(|(controller, dir)| {
            let result = fs::create_dir_all(dir).and_then(|()| apply_limit(*controller, dir, limits));
            if let Err(err) = &result {
                tracing::warn!(path = %dir.display(), error = %err, "cannot set up instance cgroup; limit not enforced");
            }
            result.is_ok()
        });
    }

    /// Opens each `cgroup.procs` for writing; the child writes `0` to each before exec.
    pub fn open_procs_files(&self) -> Vec<File> {
        self.dirs
            .iter()
            .filter_map(|(_, dir)| {
                OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
                    .map_err(|err| {
                        tracing::warn!(path = %dir.display(), error = %err, "cannot open cgroup.procs");
                    })
                    .ok()
            })
            .collect()
    }

    /// Every pid in any of the instance's cgroups.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|(_, dir)| fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|line| line.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The memory cgroup's cumulative `oom_kill` count, when readable.
    pub fn oom_kills(&self) -> Option<u64> {
        let dir = self.dir(Controller::Memory)?;
        let text = fs::read_to_string(dir.join("memory.oom_control")).ok()?;
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == "oom_kill").then(|| value.trim().parse().ok())?
        })
    }

    /// Memory currently charged to the instance.
    pub fn memory_usage(&self) -> Option<u64> {
        read_number(&self.dir(Controller::Memory)?.join("memory.usage_in_bytes"))
    }

    /// The memory limit in force (None when unlimited or unknown).
    pub fn memory_limit(&self) -> Option<u64> {
        read_number(&self.dir(Controller::Memory)?.join("memory.limit_in_bytes"))
            .filter(|limit| *limit < (1 << 62))
    }

    /// Removes the (empty) cgroups; failures are logged, never fatal.
    ///
    /// A cgroup stays busy until its last zombie is reaped (by us, or by init for orphaned
    /// grandchildren), so busy ones are retried in the background for a while.
    pub fn remove(&self) {
        let busy: Vec<PathBuf> = self
            .dirs
            .iter()
            .filter_map(|(_, dir)| match fs::remove_dir(dir) {
                Ok(()) => None,
                Err(err) if err.kind() == io::ErrorKind::NotFound => None,
                Err(err) if err.raw_os_error() == Some(libc::EBUSY) => Some(dir.clone()),
                Err(err) => {
                    tracing::warn!(path = %dir.display(), error = %err, "cannot remove instance cgroup");
                    None
                }
            })
            .collect();
        if busy.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut left = busy;
            for _ in 0..100 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                left.retain(|dir| {
                    matches!(fs::remove_dir(dir), Err(err) if err.kind() != io::ErrorKind::NotFound)
                });
                if left.is_empty() {
                    return;
                }
            }
            for dir in left {
                tracing::warn!(path = %dir.display(), "instance cgroup still busy; left in place");
            }
        });
    }
}

fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn apply_limit(controller: Controller, dir: &Path, limits: &ResourceLimits) -> io::Result<()> {
    match controller {
        Controller::Memory => {
            if let Some(mb) = limits.memory_mb {
                let bytes = mb.saturating_mul(1024 * 1024).to_string();
                fs::write(dir.join("memory.limit_in_bytes"), &bytes)?;
                // Also cap memory+swap so the limit cannot be dodged by swapping; absent
                // when the kernel has swap accounting off, which is fine.
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    if let Err(err) = fs::write(&memsw, &bytes) {
                        tracing::debug!(error = %err, "memory.memsw.limit_in_bytes not set");
                    }
                }
            }
        }
        Controller::Cpu => {
            if let Some(shares) = limits.cpu_shares {
                fs::write(dir.join("cpu.shares"), shares.max(2).to_string())?;
            }
            if let Some(millicores) = limits.cpu_millicores {
                // quota/period = cores; a 100 ms period, at least 1 ms of quota.
                fs::write(dir.join("cpu.cfs_period_us"), "100000")?;
                let quota = millicores.saturating_mul(100).max(1000);
                fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
        }
        Controller::Pids => {
            if let Some(max) = limits.max_pids {
                fs::write(dir.join("pids.max"), max.max(1).to_string())?;
            }
        }
    }
    Ok(())
}
