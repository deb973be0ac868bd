//! Finding every live process of an instance, three ways at once so none escapes:
//! its process group (unless the group id was provably reused), its cgroups, and the
//! `GILGAL_INSTANCE_ID` marker in its environment (which catches `setsid` escapees when
//! cgroups are unavailable, and processes spawned just before a server crash).

use std::collections::BTreeSet;

use super::cgroup::InstanceCgroup;
use super::procfs;
use super::spawn::INSTANCE_ID_ENV;
use crate::spec::InstanceId;

/// What identifies an instance's processes.
#[derive(Debug, Clone)]
pub(crate) struct Members<'a> {
    pub id: &'a InstanceId,
    pub cgroup: &'a InstanceCgroup,
    /// Recorded leader pid (= pgid) and its start time, when known.
    pub leader: Option<(i32, u64)>,
}

impl Members<'_> {
    /// Every live (non-zombie) process of the instance, never the server itself.
    pub fn live_pids(&self) -> BTreeSet<i32> {
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let marker = format!("{INSTANCE_ID_ENV}={}", self.id).into_bytes();
        // A pgid is only reusable once no process is left in the group; if the leader's pid
        // now belongs to a process with another start time, the group is not ours any more.
        let group = self
            .leader
            .and_then(|(pid, start)| match procfs::read_stat(pid) {
                Some(stat) if stat.start_time != start && !stat.is_dead() => None,
                _ => Some(pid),
            });
        let mut pids: BTreeSet<i32> = self
            .cgroup
            .pids()
            .into_iter()
            .filter(|pid| procfs::read_stat(*pid).is_some_and(|stat| !stat.is_dead()))
            .collect();
        for pid in procfs::all_pids() {
            if pid == me || pids.contains(&pid) {
                continue;
            }
            let Some(stat) = procfs::read_stat(pid) else {
                continue;
            };
            if stat.is_dead() {
                continue;
            }
            if Some(stat.pgrp) == group || procfs::environ_contains(pid, &marker) {
                pids.insert(pid);
            }
        }
        pids.remove(&me);
        pids
    }

    /// Sends `signal` once to every live process of the instance: to the process group as a
    /// whole, plus individually to members outside it (escaped with `setsid`). Once matters:
    /// many runtimes (Python, Node) treat a second SIGTERM as "die now". Returns how many
    /// processes were signalled.
    pub fn signal_all(&self, signal: libc::c_int) -> usize {
        let pids = self.live_pids();
        let mut group_signalled = None;
        if let Some((pgid, start)) = self.leader {
            // Also catches a child forked after the scan. Only while the leader is verified
            // ours or gone (a gone leader's group id cannot be reused while members live).
            let reused = procfs::live_start_time(pgid).is_some_and(|s| s != start);
            // SAFETY: kill with a negative pid signals a process group; no memory involved.
            if !reused && pgid > 1 && unsafe { libc::kill(-pgid, signal) } == 0 {
                group_signalled = Some(pgid);
            }
        }
        for pid in &pids {
            let in_group = group_signalled.is_some()
                && procfs::read_stat(*pid).map(|stat| stat.pgrp) == group_signalled;
            if !in_group {
                // SAFETY: plain syscall; a process that vanished meanwhile just yields ESRCH.
                unsafe { libc::kill(*pid, signal) };
            }
        }
        pids.len()
    }
}
