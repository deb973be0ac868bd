//! Minimal /proc readers: process identity (start time defeats PID reuse), process-group and
//! environment-marker membership (to find every process of an instance), CPU/RSS figures, and
//! `pidfd_open` to watch processes that are not our children.
//!
//! Hand-written because only four fields of `/proc/PID/stat` and one of `environ` are needed.

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// The fields of `/proc/PID/stat` the runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Single-letter state; `Z` is a zombie (dead, not yet reaped).
    pub state: u8,
    /// Process group id.
    pub pgrp: i32,
    /// User CPU ticks.
    pub utime: u64,
    /// System CPU ticks.
    pub stime: u64,
    /// Start time in clock ticks since boot (field 22): with the pid, a unique identity.
    pub start_time: u64,
    /// Resident set size in pages.
    pub rss_pages: u64,
}

impl ProcStat {
    /// True when the process is dead (zombie or dead state).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// Reads `/proc/PID/stat`; `None` when the process does not exist.
pub(crate) fn read_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may itself contain spaces and ')'.
    let after_comm = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state); field N is fields[N - 3].
    let field = |n: usize| fields.get(n - 3).copied();
    Some(ProcStat {
        state: field(3)?.bytes().next()?,
        pgrp: field(5)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        start_time: field(22)?.parse().ok()?,
        rss_pages: field(24)?.parse().ok()?,
    })
}

/// The start time of a live (non-zombie) process, or `None`.
pub(crate) fn live_start_time(pid: i32) -> Option<u64> {
    read_stat(pid)
        .filter(|stat| !stat.is_dead())
        .map(|stat| stat.start_time)
}

/// All numeric entries of /proc.
pub(crate) fn all_pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether `pid`'s environment contains exactly `entry` (`KEY=value`).
pub(crate) fn environ_contains(pid: i32, entry: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|item| item == entry))
        .unwrap_or(false)
}

/// This boot's random id; pids and start times from another boot must not be trusted.
pub(crate) fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
}

/// Clock ticks per second, for converting CPU ticks.
pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// Memory page size in bytes, for converting RSS pages.
pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
}

/// Opens a pidfd for `pid`: it becomes readable when the process exits, even when the process
/// is not our child (re-adopted after a server restart), and it pins the identity against
/// PID reuse.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the result is a new fd we own or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_name() {
        let line = "1234 (we ird) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 \
                    98765 1000000 250 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.pgrp, 1234);
        assert_eq!(stat.utime, 7);
        assert_eq!(stat.stime, 3);
        assert_eq!(stat.start_time, 98765);
        assert_eq!(stat.rss_pages, 250);
    }

    #[test]
    fn reads_own_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        let stat = read_stat(me).unwrap();
        assert!(!stat.is_dead());
        assert!(live_start_time(me).is_some());
        assert!(all_pids().contains(&me));
        pidfd_open(me).unwrap();
    }
}
