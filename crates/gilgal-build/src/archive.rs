//! Safe intake of uploaded sources (`unpack_tar_gz`) and packing a directory for upload
//! (`pack_dir`).
//!
//! Unpacking never trusts the archive: paths must be relative without `..`; symlinks and
//! hardlinks must resolve inside the destination (checked again after the last entry, so a
//! chain of individually harmless links cannot escape); nothing is ever written *through* a
//! symlink; device, FIFO and sparse entries are refused; entry count, total bytes and bytes per
//! file are limited while streaming, so a decompression bomb is stopped early. On error the
//! destination may hold a partial tree and must be discarded by the caller — but nothing was
//! written outside it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use tar::EntryType;

/// Ignore file read next to `.gitignore` when packing, for files only Gilgal should skip.
pub const GILGAL_IGNORE_FILE: &str = ".gilgalignore";

/// Most symlinks followed while resolving one path, as in the kernel's ELOOP limit.
const MAX_SYMLINK_HOPS: usize = 40;

/// Bounds on what one upload may unpack to; exists so a hostile tarball cannot fill the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Most entries (files, directories, links, metadata headers) in the archive.
    pub max_entries: u64,
    /// Most bytes of file content in total, after decompression.
    pub max_total_bytes: u64,
    /// Most bytes in any single file.
    pub max_file_bytes: u64,
}

impl Default for UnpackLimits {
    /// 100 000 entries, 2 GiB in total, 512 MiB per file.
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_total_bytes: 2 << 30,
            max_file_bytes: 512 << 20,
        }
    }
}

/// What an unpack produced; for logs and the upload's response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackSummary {
    /// All entries read, metadata headers included.
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub directories: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hardlinks created.
    pub hardlinks: u64,
    /// Bytes of file content written.
    pub total_bytes: u64,
}

/// What a pack produced; for the CLI's progress output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackSummary {
    /// Regular files packed.
    pub files: u64,
    /// Directories packed.
    pub directories: u64,
    /// Symlinks packed (as links, never followed).
    pub symlinks: u64,
    /// Bytes of file content before compression.
    pub bytes: u64,
    /// Sockets, FIFOs and devices skipped.
    pub skipped: u64,
    /// Paths [`LEFT_OUT_BY_DEFAULT`] kept out (relative, sorted), so the CLI can say so.
    pub left_out: Vec<String>,
}

/// What `gilgal deploy` never uploads unless the top-level `.gilgalignore` re-includes it
/// (`!.env`): local secrets (`.env`, `.env.*` but not their `.example`/`.sample`/`.template`),
/// and what the build recreates (virtualenvs, bytecode, installed Node modules). A `.env`
/// must not reach the server just because the project has no `.gitignore`.
pub const LEFT_OUT_BY_DEFAULT: &[&str] = &[
    ".env",
    ".env.*",
    "!.env.example",
    "!.env.sample",
    "!.env.template",
    ".venv/",
    "__pycache__/",
    "node_modules/",
];

/// Why an archive was refused or could not be processed; every variant names the entry.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry has an absolute path.
    #[error("archive entry `{entry}` has an absolute path; only relative paths are accepted")]
    AbsolutePath {
        /// The entry's path as stored.
        entry: String,
    },
    /// An entry's path contains `..`.
    #[error("archive entry `{entry}` contains `..`; paths must stay inside the upload")]
    ParentTraversal {
        /// The entry's path as stored.
        entry: String,
    },
    /// A symlink or hardlink points outside the destination.
    #[error("archive entry `{entry}` is a {kind} to `{target}`, which is outside the upload")]
    LinkEscapes {
        /// The entry's path as stored.
        entry: String,
        /// "symlink" or "hardlink".
        kind: &'static str,
        /// The link target as stored.
        target: String,
    },
    /// A file would be written through a symlink, or over a directory.
    #[error("archive entry `{entry}` cannot be written: {reason}")]
    Conflict {
        /// The entry's path as stored.
        entry: String,
        /// What stands in the way.
        reason: &'static str,
    },
    /// Device, FIFO, sparse or unknown entry type.
    #[error("archive entry `{entry}` is a {kind}, which uploads may not contain")]
    UnsupportedEntry {
        /// The entry's path as stored.
        entry: String,
        /// Human name of the entry type.
        kind: String,
    },
    /// More entries than [`UnpackLimits::max_entries`].
    #[error("the archive has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// More content than [`UnpackLimits::max_total_bytes`] (for instance a decompression bomb).
    #[error("the archive unpacks to more than {limit} bytes")]
    TotalTooLarge {
        /// The limit.
        limit: u64,
    },
    /// One file larger than [`UnpackLimits::max_file_bytes`].
    #[error("archive entry `{entry}` is larger than the {limit}-byte limit per file")]
    FileTooLarge {
        /// The entry's path as stored.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// The data is not a valid gzip-compressed tar archive.
    #[error("the upload is not a valid tar.gz archive: {0}")]
    Corrupt(#[source] io::Error),
    /// A file-system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Walking the source directory failed (unreadable file, bad ignore file).
    #[error("cannot read the directory to pack: {0}")]
    Walk(#[from] ignore::Error),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
    let path = path.to_owned();
    move |source| ArchiveError::Io {
        action,
        path,
        source,
    }
}

/// Caps the decompressed stream, so even tar metadata (long names, PAX headers, which the
/// `tar` crate buffers in memory) cannot exceed the budget.
struct CappedReader<R> {
    inner: R,
    remaining: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            // Probe whether there is really more data, rather than failing exactly at the cap.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.exceeded.set(true);
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..want])?;
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// Unpacks a gzip-compressed tar stream into `dest_dir` (created if missing), enforcing
/// `limits` and refusing anything that could write or point outside `dest_dir`.
pub fn unpack_tar_gz<R: Read>(
    reader: R,
    dest_dir: &Path,
    limits: &UnpackLimits,
) -> Result<UnpackSummary, ArchiveError> {
    fs::create_dir_all(dest_dir).map_err(io_error("cannot create", dest_dir))?;
    let dest = dest_dir
        .canonicalize()
        .map_err(io_error("cannot resolve", dest_dir))?;
    let exceeded = Rc::new(Cell::new(false));
    // Headers, padding and long-name records take room beyond file content; allow for them.
    let metadata_allowance = limits
        .max_entries
        .saturating_mul(4096)
        .clamp(1 << 20, 512 << 20);
    let capped = CappedReader {
        inner: GzDecoder::new(reader),
        remaining: limits.max_total_bytes.saturating_add(metadata_allowance),
        exceeded: Rc::clone(&exceeded),
    };
    let stream_error = |err: io::Error| {
        if exceeded.get() {
            ArchiveError::TotalTooLarge {
                limit: limits.max_total_bytes,
            }
        } else {
            ArchiveError::Corrupt(err)
        }
    };

    let mut archive = tar::Archive::new(capped);
    let mut summary = UnpackSummary::default();
    let mut created_symlinks: Vec<(PathBuf, String, String)> = Vec::new();
    for entry in archive.entries().map_err(stream_error)? {
        let mut entry = entry.map_err(stream_error)?;
        summary.entries += 1;
        if summary.entries > limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let entry_path = entry.path().map_err(ArchiveError::Corrupt)?.into_owned();
        let relative = safe_relative_path(&name, &entry_path)?;
        let entry_type = entry.header().entry_type();
        let target = dest.join(&relative);

        match entry_type {
            EntryType::Regular | EntryType::Continuous => {
                require_named(&name, &relative)?;
                let declared = entry.size();
                if declared > limits.max_file_bytes {
                    return Err(ArchiveError::FileTooLarge {
                        entry: name,
                        limit: limits.max_file_bytes,
                    });
                }
                if summary.total_bytes.saturating_add(declared) > limits.max_total_bytes {
                    return Err(ArchiveError::TotalTooLarge {
                        limit: limits.max_total_bytes,
                    });
                }
                prepare_parents(&dest, &relative, &name)?;
                clear_final_component(&target, &name, false)?;
                let mode = entry.header().mode().unwrap_or(0o644);
                let written = write_file(&mut entry, &target, mode, &name, limits, &summary)
                    .map_err(|err| {
                        if exceeded.get() {
                            ArchiveError::TotalTooLarge {
                                limit: limits.max_total_bytes,
                            }
                        } else {
                            err
                        }
                    })?;
                summary.total_bytes += written;
                summary.files += 1;
            }
            EntryType::Directory => {
                if relative.as_os_str().is_empty() {
                    continue; // "./" itself
                }
                prepare_parents(&dest, &relative, &name)?;
                clear_final_component(&target, &name, true)?;
                if !target.is_dir() {
                    fs::create_dir(&target).map_err(io_error("cannot create", &target))?;
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
                    .map_err(io_error("cannot set permissions on", &target))?;
                summary.directories += 1;
            }
            EntryType::Symlink => {
                require_named(&name, &relative)?;
                let link_target = entry
                    .link_name()
                    .map_err(ArchiveError::Corrupt)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let shown = link_target.display().to_string();
                let escapes = || ArchiveError::LinkEscapes {
                    entry: name.clone(),
                    kind: "symlink",
                    target: shown.clone(),
                };
                if link_target.as_os_str().is_empty() || link_target.is_absolute() {
                    return Err(escapes());
                }
                // Lexical check first, for a clear error before anything is created.
                let parent = relative.parent().unwrap_or(Path::new(""));
                if resolve_within(&dest, &parent.join(&link_target), false).is_none() {
                    return Err(escapes());
                }
                prepare_parents(&dest, &relative, &name)?;
                clear_final_component(&target, &name, false)?;
                std::os::unix::fs::symlink(&link_target, &target)
                    .map_err(io_error("cannot create symlink", &target))?;
                if resolve_within(&dest, &relative, true).is_none() {
                    let _ = fs::remove_file(&target);
                    return Err(escapes());
                }
                created_symlinks.push((relative, name, shown));
                summary.symlinks += 1;
            }
            EntryType::Link => {
                require_named(&name, &relative)?;
                let link_target = entry
                    .link_name()
                    .map_err(ArchiveError::Corrupt)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let shown = link_target.display().to_string();
                let escapes = || ArchiveError::LinkEscapes {
                    entry: name.clone(),
                    kind: "hardlink",
                    target: shown.clone(),
                };
                let link_relative = match safe_relative_path(&shown, &link_target) {
                    Ok(path) if !path.as_os_str().is_empty() => path,
                    _ => return Err(escapes()),
                };
                let Some(source) = resolve_within(&dest, &link_relative, true) else {
                    return Err(escapes());
                };
                let source_meta = fs::symlink_metadata(&source);
                if !source_meta.is_ok_and(|meta| meta.file_type().is_file()) {
                    return Err(ArchiveError::Conflict {
                        entry: name,
                        reason:
                            "hardlink target is not a regular file unpacked earlier in the archive",
                    });
                }
                prepare_parents(&dest, &relative, &name)?;
                clear_final_component(&target, &name, false)?;
                fs::hard_link(&source, &target)
                    .map_err(io_error("cannot create hardlink", &target))?;
                summary.hardlinks += 1;
            }
            EntryType::XGlobalHeader => {}
            other => {
                return Err(ArchiveError::UnsupportedEntry {
                    entry: name,
                    kind: entry_type_name(other),
                })
            }
        }
    }

    // Links created later can change where earlier ones lead (`a -> .` then `b -> a/..`):
    // resolve every symlink once more against the finished tree.
    for (relative, name, shown) in created_symlinks {
        if resolve_within(&dest, &relative, true).is_none() {
            let _ = fs::remove_file(dest.join(&relative));
            return Err(ArchiveError::LinkEscapes {
                entry: name,
                kind: "symlink",
                target: shown,
            });
        }
    }
    Ok(summary)
}

fn entry_type_name(entry_type: EntryType) -> String {
    match entry_type {
        EntryType::Char => "character device".to_owned(),
        EntryType::Block => "block device".to_owned(),
        EntryType::Fifo => "FIFO".to_owned(),
        EntryType::GNUSparse => "sparse file".to_owned(),
        other => format!("tar entry of type {:?}", other.as_byte() as char),
    }
}

/// Turns an entry path into a clean relative path, refusing absolute paths and `..`.
fn safe_relative_path(name: &str, path: &Path) -> Result<PathBuf, ArchiveError> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ArchiveError::ParentTraversal {
                    entry: name.to_owned(),
                })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::AbsolutePath {
                    entry: name.to_owned(),
                })
            }
        }
    }
    Ok(clean)
}

fn require_named(name: &str, relative: &Path) -> Result<(), ArchiveError> {
    if relative.as_os_str().is_empty() {
        return Err(ArchiveError::Conflict {
            entry: name.to_owned(),
            reason: "a non-directory entry needs a file name",
        });
    }
    Ok(())
}

/// Creates missing parent directories, refusing to pass through anything but real directories
/// (this is what stops "symlink entry, then a file written through it").
fn prepare_parents(dest: &Path, relative: &Path, name: &str) -> Result<(), ArchiveError> {
    let Some(parent) = relative.parent() else {
        return Ok(());
    };
    let mut current = dest.to_owned();
    for component in parent.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ArchiveError::Conflict {
                    entry: name.to_owned(),
                    reason: "a parent directory is a symlink; refusing to write through it",
                })
            }
            Ok(_) => {
                return Err(ArchiveError::Conflict {
                    entry: name.to_owned(),
                    reason: "a parent path is a file, not a directory",
                })
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(io_error("cannot create", &current))?;
            }
            Err(err) => return Err(io_error("cannot inspect", &current)(err)),
        }
    }
    Ok(())
}

/// Removes a file or link already at `target` (later entries win, as in tar) — never following
/// it — and refuses to replace a directory with a non-directory.
fn clear_final_component(target: &Path, name: &str, want_dir: bool) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.file_type().is_dir() => {
            if want_dir {
                Ok(())
            } else {
                Err(ArchiveError::Conflict {
                    entry: name.to_owned(),
                    reason: "a directory of the same name already exists",
                })
            }
        }
        Ok(_) => fs::remove_file(target).map_err(io_error("cannot replace", target)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io_error("cannot inspect", target)(err)),
    }
}

fn write_file(
    entry: &mut impl Read,
    target: &Path,
    header_mode: u32,
    name: &str,
    limits: &UnpackLimits,
    summary: &UnpackSummary,
) -> Result<u64, ArchiveError> {
    // Keep the execute bits, drop setuid/setgid/sticky and group/other write.
    let mode = (header_mode & 0o755) | 0o600;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)
        .map_err(io_error("cannot create", target))?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut written: u64 = 0;
    loop {
        let read = entry
            .read(&mut buffer)
            .map_err(io_error("cannot read archive data for", target))?;
        if read == 0 {
            break;
        }
        written += read as u64;
        if written > limits.max_file_bytes {
            return Err(ArchiveError::FileTooLarge {
                entry: name.to_owned(),
                limit: limits.max_file_bytes,
            });
        }
        if summary.total_bytes + written > limits.max_total_bytes {
            return Err(ArchiveError::TotalTooLarge {
                limit: limits.max_total_bytes,
            });
        }
        file.write_all(&buffer[..read])
            .map_err(io_error("cannot write", target))?;
    }
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error("cannot set permissions on", target))?;
    Ok(written)
}

/// Resolves `relative` under `root` the way the kernel would (following symlinks that exist,
/// when `follow` is set), returning `None` if resolution would leave `root`, meet an absolute
/// symlink, or loop. Components that do not exist are taken lexically.
fn resolve_within(root: &Path, relative: &Path, follow: bool) -> Option<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_components(&mut pending, relative, false)?;
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop()?;
            continue;
        }
        resolved.push(part);
        if !follow {
            continue;
        }
        let current: PathBuf = root.join(resolved.iter().collect::<PathBuf>());
        let Ok(meta) = fs::symlink_metadata(&current) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return None;
            }
            let target = fs::read_link(&current).ok()?;
            resolved.pop();
            push_components(&mut pending, &target, true)?;
        }
    }
    Some(root.join(resolved.iter().collect::<PathBuf>()))
}

/// Queues a path's components (`..` kept as `..`); `None` for absolute paths. With `front`,
/// they go before what is already queued (a symlink's target replaces the link in place).
fn push_components(queue: &mut VecDeque<OsString>, path: &Path, front: bool) -> Option<()> {
    let mut parts: Vec<OsString> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_owned()),
            Component::ParentDir => parts.push(OsString::from("..")),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if front {
        for part in parts.into_iter().rev() {
            queue.push_front(part);
        }
    } else {
        queue.extend(parts);
    }
    Some(())
}

/// Packs `src_dir` into a gzip-compressed tar written to `writer`, for `gilgal deploy`.
///
/// `.gitignore` and `.gilgalignore` files inside `src_dir` (at any depth) are honoured even
/// without a git repository; ignore files above `src_dir` and the user's global git excludes
/// are not, so the result does not depend on where the directory sits. `.git` is always left
/// out, and so is what [`LEFT_OUT_BY_DEFAULT`] names unless the top-level `.gilgalignore`
/// re-includes it. Symlinks are stored as links, never followed; sockets, FIFOs and devices
/// are skipped. Entries are sorted and carry no owner or time stamp, so the same tree packs
/// identically.
pub fn pack_dir<W: Write>(src_dir: &Path, writer: W) -> Result<PackSummary, ArchiveError> {
    let defaults = default_exclusions(src_dir)?;
    let reincluded = top_level_gilgalignore(src_dir)?;
    let left_out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let record = left_out.clone();
    let root = src_dir.to_owned();
    let walker = ignore::WalkBuilder::new(src_dir)
        .hidden(false)
        .ignore(false)
        .parents(false)
        .git_global(false)
        .git_exclude(false)
        .git_ignore(true)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(GILGAL_IGNORE_FILE)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(move |entry| {
            if entry.file_name() == ".git" {
                return false;
            }
            let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
            let path = entry.path();
            let excluded = entry.depth() > 0
                && defaults.matched(path, is_dir).is_ignore()
                && !reincluded.matched(path, is_dir).is_whitelist();
            if excluded {
                if let (Ok(relative), Ok(mut names)) = (path.strip_prefix(&root), record.lock()) {
                    names.push(relative.display().to_string());
                }
            }
            !excluded
        })
        .build();

    let mut builder = tar::Builder::new(GzEncoder::new(writer, Compression::default()));
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let mut summary = PackSummary::default();
    for entry in walker {
        let entry = entry?;
        if entry.depth() == 0 {
            continue;
        }
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(src_dir) else {
            continue;
        };
        let Some(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            builder
                .append_dir(relative, path)
                .map_err(io_error("cannot pack", path))?;
            summary.directories += 1;
        } else if file_type.is_file() || file_type.is_symlink() {
            builder
                .append_path_with_name(path, relative)
                .map_err(io_error("cannot pack", path))?;
            if file_type.is_file() {
                summary.files += 1;
                summary.bytes += entry.metadata().map(|meta| meta.len()).unwrap_or(0);
            } else {
                summary.symlinks += 1;
            }
        } else {
            summary.skipped += 1;
        }
    }
    let encoder = builder
        .into_inner()
        .map_err(io_error("cannot finish archive of", src_dir))?;
    encoder
        .finish()
        .map_err(io_error("cannot finish archive of", src_dir))?
        .flush()
        .map_err(io_error("cannot finish archive of", src_dir))?;
    summary.left_out = left_out
        .lock()
        .map(|names| names.clone())
        .unwrap_or_default();
    summary.left_out.sort();
    Ok(summary)
}

/// [`LEFT_OUT_BY_DEFAULT`] as a matcher rooted at `src_dir`.
fn default_exclusions(src_dir: &Path) -> Result<ignore::gitignore::Gitignore, ArchiveError> {
    let mut builder = ignore::gitignore::GitignoreBuilder::new(src_dir);
    for line in LEFT_OUT_BY_DEFAULT {
        builder.add_line(None, line)?;
    }
    Ok(builder.build()?)
}

/// The rules of `src_dir/.gilgalignore` (none when it is absent), to see what it re-includes.
fn top_level_gilgalignore(src_dir: &Path) -> Result<ignore::gitignore::Gitignore, ArchiveError> {
    let mut builder = ignore::gitignore::GitignoreBuilder::new(src_dir);
    let path = src_dir.join(GILGAL_IGNORE_FILE);
    if path.is_file() {
        if let Some(e) = builder.add(&path) {
            return Err(e.into());
        }
    }
    Ok(builder.build()?)
}

/// Checks a tree that did not come from [`unpack_tar_gz`] (a git checkout) against the same
/// rules: within `limits`, every symlink resolving inside `root`, no devices or FIFOs.
pub fn inspect_tree(root: &Path, limits: &UnpackLimits) -> Result<UnpackSummary, ArchiveError> {
    let root = root
        .canonicalize()
        .map_err(io_error("cannot resolve", root))?;
    let mut summary = UnpackSummary::default();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(io_error("cannot read", &dir))? {
            let entry = entry.map_err(io_error("cannot read", &dir))?;
            let path = entry.path();
            let relative = path.strip_prefix(&root).unwrap_or(&path).to_owned();
            let name = relative.display().to_string();
            summary.entries += 1;
            if summary.entries > limits.max_entries {
                return Err(ArchiveError::TooManyEntries {
                    limit: limits.max_entries,
                });
            }
            let meta = fs::symlink_metadata(&path).map_err(io_error("cannot inspect", &path))?;
            let file_type = meta.file_type();
            if file_type.is_dir() {
                summary.directories += 1;
                pending.push(path);
            } else if file_type.is_symlink() {
                if resolve_within(&root, &relative, true).is_none() {
                    let target = fs::read_link(&path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    return Err(ArchiveError::LinkEscapes {
                        entry: name,
                        kind: "symlink",
                        target,
                    });
                }
                summary.symlinks += 1;
            } else if file_type.is_file() {
                if meta.len() > limits.max_file_bytes {
                    return Err(ArchiveError::FileTooLarge {
                        entry: name,
                        limit: limits.max_file_bytes,
                    });
                }
                summary.total_bytes += meta.len();
                if summary.total_bytes > limits.max_total_bytes {
                    return Err(ArchiveError::TotalTooLarge {
                        limit: limits.max_total_bytes,
                    });
                }
                summary.files += 1;
            } else {
                return Err(ArchiveError::UnsupportedEntry {
                    entry: name,
                    kind: "special file".to_owned(),
                });
            }
        }
    }
    Ok(summary)
}
