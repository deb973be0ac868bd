//! File-system helpers of the builder: tree copies (with optional path rewriting, used to
//! relocate cached Python venvs) and atomic file writes.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Rewrites one absolute prefix to another inside text files that a predicate selects.
#[derive(Clone, Copy)]
pub(crate) struct Rewrite<'a> {
    pub from: &'a [u8],
    pub to: &'a [u8],
    pub applies: fn(&Path) -> bool,
}

/// Copies the tree at `from` to `to` (which must not exist): directories, regular files with
/// their permissions, symlinks as symlinks. Files selected by `rewrite` that contain no NUL
/// byte get the prefix replaced.
pub(crate) fn copy_tree(from: &Path, to: &Path, rewrite: Option<&Rewrite<'_>>) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    fs::create_dir(to)?;
    fs::set_permissions(
        to,
        fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
    )?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            copy_tree(&source, &target, rewrite)?;
        } else if file_type.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&source)?, &target)?;
        } else if file_type.is_file() {
            match rewrite.filter(|r| (r.applies)(&source)) {
                Some(rewrite) => copy_rewritten(&source, &target, rewrite)?,
                None => {
                    fs::copy(&source, &target)?;
                }
            }
            // Keep modification times: Python's bytecode caches are validated against them.
            if let Ok(meta) = entry.metadata() {
                use std::os::unix::fs::MetadataExt;
                let modified = nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec());
                let _ = nix::sys::stat::utimensat(
                    None,
                    &target,
                    &nix::sys::time::TimeSpec::UTIME_OMIT,
                    &modified,
                    nix::sys::stat::UtimensatFlags::NoFollowSymlink,
                );
            }
        }
        // Sockets, FIFOs and devices are not part of a build and are skipped.
    }
    Ok(())
}

fn copy_rewritten(source: &Path, target: &Path, rewrite: &Rewrite<'_>) -> io::Result<()> {
    let content = fs::read(source)?;
    if content.contains(&0) || !contains(&content, rewrite.from) {
        fs::copy(source, target)?;
        return Ok(());
    }
    let replaced = replace_all(&content, rewrite.from, rewrite.to);
    fs::write(target, replaced)?;
    let mode = fs::metadata(source)?.permissions().mode();
    fs::set_permissions(target, fs::Permissions::from_mode(mode & 0o7777))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut index = 0;
    while index < haystack.len() {
        if haystack[index..].starts_with(from) {
            out.extend_from_slice(to);
            index += from.len();
        } else {
            out.push(haystack[index]);
            index += 1;
        }
    }
    out
}

/// Writes `content` to `path` via a temporary file, fsync and rename, so readers see either
/// the old file or the complete new one, even after a crash.
pub(crate) fn write_atomically(path: &Path, content: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    let mut temp = tempfile_in(dir)?;
    temp.1.write_all(content)?;
    temp.1.sync_all()?;
    drop(temp.1);
    fs::rename(&temp.0, path)?;
    fs::File::open(dir)?.sync_all()
}

fn tempfile_in(dir: &Path) -> io::Result<(std::path::PathBuf, fs::File)> {
    for attempt in 0..100u32 {
        let name = format!(".tmp-{}-{attempt}", std::process::id());
        let path = dir.join(name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::other("cannot create a temporary file"))
}

/// Moves `from` to `to` (rename when on the same file system, else copy), for handing the
/// unpacked source over to the release directory.
pub(crate) fn move_tree(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(_) => copy_tree(from, to, None),
    }
}

/// Changes the owner of everything under `root` (symlinks themselves, never their targets).
///
/// Children first: while a directory's entries are handed over it still belongs to its old
/// owner, so the new owner (whose other processes may be running) cannot swap an entry for a
/// symlink under our feet and have us follow it.
pub(crate) fn chown_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    if fs::symlink_metadata(root)?.is_dir() {
        for entry in fs::read_dir(root)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))
}

/// Like [`chown_tree`], but skips the walk when `root` is already owned by `uid` (the cache
/// can be large, and everything in it was written by that user).
pub(crate) fn chown_tree_once(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(root)?;
    if meta.uid() == uid && meta.gid() == gid {
        let home = root.join("home");
        if fs::symlink_metadata(&home).is_ok_and(|m| m.uid() == uid) {
            return Ok(());
        }
    }
    chown_tree(root, uid, gid)
}
