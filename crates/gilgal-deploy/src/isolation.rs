//! File permissions that let an app read its own releases and nothing else of Gilgal's.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Makes `project_dir` `root:<gid>` 0750 (only the app's group may enter) and every file and
/// directory of `artifact_dir` `root:<gid>`, group-readable (directories group-searchable),
/// never group- or world-writable: the app built it as its own user `uid`, and from now on
/// may read it but not change it. Symlinks are re-owned but never followed.
///
/// Parents are sealed before their entries are looked at, so a process of the app still
/// running cannot swap an entry for a symlink under our feet. An entry neither the app nor
/// root owns that has other hard links fails the whole step: re-owning it would change a
/// file outside the tree (a hard link the build should not have been able to make).
pub(crate) fn share_tree(
    project_dir: &Path,
    artifact_dir: &Path,
    uid: u32,
    gid: u32,
) -> io::Result<()> {
    std::os::unix::fs::chown(project_dir, Some(0), Some(gid))?;
    std::fs::set_permissions(project_dir, std::fs::Permissions::from_mode(0o750))?;
    // The environment directory between them.
    if let Some(env_dir) = artifact_dir.parent() {
        if env_dir != project_dir && env_dir.starts_with(project_dir) {
            std::os::unix::fs::chown(env_dir, Some(0), Some(gid))?;
            std::fs::set_permissions(env_dir, std::fs::Permissions::from_mode(0o750))?;
        }
    }
    share_recursively(artifact_dir, uid, gid)
}

fn share_recursively(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() && meta.nlink() > 1 && meta.uid() != uid && meta.uid() != 0 {
        return Err(io::Error::other(format!(
            "{} is a hard link to a file the app does not own",
            path.display()
        )));
    }
    // Does not follow a symlink, whatever `path` is by now.
    std::os::unix::fs::lchown(path, Some(0), Some(gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    // Our parent is already root's and not writable by the app: `path` stays what it is.
    let mode = meta.permissions().mode() & 0o7777;
    let group_read = if meta.is_dir() || mode & 0o100 != 0 {
        0o050
    } else {
        0o040
    };
    // Group may read (and search/execute); group and world write and setuid/setgid bits are
    // dropped.
    let wanted = (mode | group_read) & !0o022 & !0o6000;
    if wanted != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            share_recursively(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}
