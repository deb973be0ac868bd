//! File permissions that let an app read its own releases and nothing else of Gilgal's.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Makes `project_dir` `root:<gid>` 0750 (only the app's group may enter) and every file and
/// directory of `artifact_dir` group `gid`, group-readable (directories group-searchable),
/// never group-writable. Symlinks are left alone (their targets keep their own permissions).
pub(crate) fn share_tree(project_dir: &Path, artifact_dir: &Path, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(project_dir, Some(0), Some(gid))?;
    std::fs::set_permissions(project_dir, std::fs::Permissions::from_mode(0o750))?;
    // The environment directory between them.
    if let Some(env_dir) = artifact_dir.parent() {
        if env_dir != project_dir && env_dir.starts_with(project_dir) {
            std::os::unix::fs::chown(env_dir, Some(0), Some(gid))?;
            std::fs::set_permissions(env_dir, std::fs::Permissions::from_mode(0o750))?;
        }
    }
    share_recursively(artifact_dir, gid)
}

fn share_recursively(path: &Path, gid: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, None, Some(gid))?;
    let mode = meta.permissions().mode() & 0o7777;
    let group_read = if meta.is_dir() || mode & 0o100 != 0 {
        0o050
    } else {
        0o040
    };
    // Group may read (and search/execute); group-write and setuid/setgid bits are dropped.
    let wanted = (mode | group_read) & !0o020 & !0o6000;
    if wanted != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            share_recursively(&entry?.path(), gid)?;
        }
    }
    Ok(())
}
