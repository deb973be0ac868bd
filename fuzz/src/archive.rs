//! The archive unpacker's invariant: whatever the bytes, `unpack_tar_gz` writes nothing
//! outside its destination directory, and when it succeeds no symlink in the tree resolves
//! outside it (a failed unpack is discarded by its caller, see `gilgal_build::archive`).

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use flate2::write::GzEncoder;
use flate2::Compression;
use gilgal_build::archive::{unpack_tar_gz, UnpackLimits};

/// Small limits, so one input can hit every limit and the fuzzer stays fast.
pub const LIMITS: UnpackLimits = UnpackLimits {
    max_entries: 32,
    max_total_bytes: 8 * 1024,
    max_file_bytes: 4 * 1024,
};

const KEEP: &[u8] = b"must stay untouched";

/// Where each input's scratch tree is made: tmpfs when there is one (much faster than disk).
fn scratch_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        }
    })
}

/// Wraps raw tar bytes in gzip in-process, so the fuzzer's mutations land in the tar parser
/// instead of breaking the gzip checksum.
pub fn gzip(tar_bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(tar_bytes.len() / 2 + 64),
        Compression::fast(),
    );
    encoder.write_all(tar_bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// Unpacks `tar_gz` into `root/dest` beside `root/outside/keep.txt`, then checks the
/// invariant; panics (a fuzzer crash) when it is broken.
pub fn unpack_and_check(tar_gz: &[u8]) {
    let root = tempfile::Builder::new()
        .prefix("gilgal-fuzz-")
        .tempdir_in(scratch_base())
        .expect("create scratch dir");
    let root_path = root.path().canonicalize().expect("resolve scratch dir");
    let outside = root_path.join("outside");
    fs::create_dir(&outside).expect("create outside dir");
    fs::write(outside.join("keep.txt"), KEEP).expect("write keep.txt");
    let dest = root_path.join("dest");

    let result = unpack_tar_gz(tar_gz, &dest, &LIMITS);

    // 1. Nothing beside `dest` was created, removed or changed.
    let mut beside: Vec<OsString> = fs::read_dir(&root_path)
        .expect("list scratch dir")
        .map(|entry| entry.expect("list scratch dir").file_name())
        .collect();
    beside.sort();
    assert_eq!(
        beside,
        ["dest", "outside"],
        "entries beside dest after {result:?}"
    );
    let outside_names: Vec<OsString> = fs::read_dir(&outside)
        .expect("list outside dir")
        .map(|entry| entry.expect("list outside dir").file_name())
        .collect();
    assert_eq!(
        outside_names,
        ["keep.txt"],
        "outside dir changed after {result:?}"
    );
    let keep = fs::symlink_metadata(outside.join("keep.txt")).expect("stat keep.txt");
    assert!(
        keep.file_type().is_file(),
        "keep.txt replaced after {result:?}"
    );
    assert_eq!(
        keep.nlink(),
        1,
        "keep.txt was hardlinked into dest after {result:?}"
    );
    assert_eq!(
        fs::read(outside.join("keep.txt")).expect("read keep.txt"),
        KEEP
    );

    // 2. Inside `dest`: only directories, regular files and symlinks; files are not shared
    //    with anything outside (a hardlink count is explained by links inside dest).
    let dest_canonical = dest.canonicalize().expect("dest exists after unpack");
    let mut symlinks = Vec::new();
    let mut files = Vec::new();
    let mut pending = vec![dest_canonical.clone()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("list dest") {
            let path = entry.expect("list dest").path();
            let meta = fs::symlink_metadata(&path).expect("stat dest entry");
            let kind = meta.file_type();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_symlink() {
                symlinks.push(path);
            } else if kind.is_file() {
                assert_eq!(
                    meta.mode() & 0o7000,
                    0,
                    "{} kept setuid/setgid/sticky bits",
                    path.display()
                );
                files.push((meta.ino(), meta.nlink()));
            } else {
                panic!("{} is a special file ({kind:?})", path.display());
            }
        }
    }
    for (ino, nlink) in &files {
        let inside = files.iter().filter(|(other, _)| other == ino).count() as u64;
        assert_eq!(*nlink, inside, "inode {ino} has links outside dest");
    }

    // 3. After a successful unpack every symlink resolves inside `dest`, checked both with a
    //    resolver written here (dangling links included) and with the kernel's own when the
    //    link leads somewhere that exists.
    if result.is_ok() {
        for link in &symlinks {
            let relative = link.strip_prefix(&dest_canonical).expect("link under dest");
            assert!(
                resolves_inside(&dest_canonical, relative),
                "symlink {} -> {:?} resolves outside dest",
                relative.display(),
                fs::read_link(link)
            );
            if let Ok(real) = fs::canonicalize(link) {
                assert!(
                    real.starts_with(&dest_canonical),
                    "symlink {} leads to {}",
                    relative.display(),
                    real.display()
                );
            }
        }
    }
}

/// Resolves `relative` under `root` as the kernel would, taking missing components literally;
/// false when the walk leaves `root`, meets an absolute link or loops.
fn resolves_inside(root: &Path, relative: &Path) -> bool {
    let mut stack: Vec<OsString> = Vec::new();
    let mut todo: Vec<OsString> = components_reversed(relative);
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            if stack.pop().is_none() {
                return false;
            }
            continue;
        }
        if part == "/" {
            return false;
        }
        stack.push(part);
        let here: PathBuf = root.join(stack.iter().collect::<PathBuf>());
        if let Ok(target) = fs::read_link(&here) {
            hops += 1;
            if hops > 40 {
                return false;
            }
            stack.pop();
            todo.extend(components_reversed(&target));
        }
    }
    true
}

/// A path's components, last first (so `pop` yields them in order); the root as `/`.
fn components_reversed(path: &Path) -> Vec<OsString> {
    let mut parts: Vec<OsString> = path
        .components()
        .filter_map(|component| match component {
            Component::Normal(part) => Some(part.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::CurDir => None,
            Component::RootDir | Component::Prefix(_) => Some(OsString::from("/")),
        })
        .collect();
    parts.reverse();
    parts
}
