//! `unpack_tar_gz` against real, hand-crafted hostile tarballs.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use gilgal_build::archive::{unpack_tar_gz, ArchiveError, UnpackLimits};
use tar::{EntryType, Header};

use crate::support::{names_in, tree};

/// Builds a tar.gz from raw entries, bypassing the `tar` crate's own path checks so that
/// hostile names can be written.
struct Crafter {
    builder: tar::Builder<GzEncoder<Vec<u8>>>,
}

impl Crafter {
    fn new() -> Self {
        Self {
            builder: tar::Builder::new(GzEncoder::new(Vec::new(), Compression::best())),
        }
    }

    fn header(kind: EntryType, name: &str, link: Option<&str>, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        header.set_mtime(1_700_000_000);
        {
            let old = header.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                old.linkname = [0; 100];
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        header.set_cksum();
        header
    }

    fn file(mut self, name: &str, content: &[u8]) -> Self {
        let header = Self::header(EntryType::Regular, name, None, content.len() as u64);
        self.builder.append(&header, content).unwrap();
        self
    }

    fn executable(mut self, name: &str, content: &[u8]) -> Self {
        let mut header = Self::header(EntryType::Regular, name, None, content.len() as u64);
        header.set_mode(0o4775);
        header.set_cksum();
        self.builder.append(&header, content).unwrap();
        self
    }

    fn dir(mut self, name: &str) -> Self {
        let header = Self::header(EntryType::Directory, name, None, 0);
        self.builder.append(&header, std::io::empty()).unwrap();
        self
    }

    fn symlink(mut self, name: &str, target: &str) -> Self {
        let header = Self::header(EntryType::Symlink, name, Some(target), 0);
        self.builder.append(&header, std::io::empty()).unwrap();
        self
    }

    fn hardlink(mut self, name: &str, target: &str) -> Self {
        let header = Self::header(EntryType::Link, name, Some(target), 0);
        self.builder.append(&header, std::io::empty()).unwrap();
        self
    }

    fn special(mut self, kind: EntryType, name: &str) -> Self {
        let header = Self::header(kind, name, None, 0);
        self.builder.append(&header, std::io::empty()).unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap().finish().unwrap()
    }
}

/// A scratch area: `root/dest` is the unpack target, `root/outside` a sibling that must stay
/// untouched.
struct Scratch {
    root: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("outside")).unwrap();
        fs::write(root.path().join("outside").join("keep.txt"), b"original").unwrap();
        Self { root }
    }

    fn dest(&self) -> std::path::PathBuf {
        self.root.path().join("dest")
    }

    fn unpack(
        &self,
        archive: &[u8],
        limits: &UnpackLimits,
    ) -> Result<gilgal_build::UnpackSummary, ArchiveError> {
        unpack_tar_gz(archive, &self.dest(), limits)
    }

    /// Asserts nothing was created or changed outside `dest`.
    fn assert_outside_untouched(&self) {
        let names = names_in(self.root.path());
        assert!(
            names.iter().all(|name| name == "dest" || name == "outside"),
            "unexpected entries beside dest: {names:?}"
        );
        assert_eq!(tree(&self.root.path().join("outside")), ["keep.txt"]);
        assert_eq!(
            fs::read(self.root.path().join("outside").join("keep.txt")).unwrap(),
            b"original"
        );
        assert!(!Path::new("/tmp/gilgal-escape-probe").exists());
    }
}

#[test]
fn unpacks_a_normal_archive_with_safe_links() {
    let scratch = Scratch::new();
    let archive = Crafter::new()
        .dir("app/")
        .file("app/main.py", b"print('hi')\n")
        .executable("app/run.sh", b"#!/bin/sh\necho run\n")
        .dir("app/static/")
        .symlink("app/static/main-link.py", "../main.py")
        .hardlink("app/main-copy.py", "app/main.py")
        .file("./top.txt", b"top")
        .finish();
    let summary = scratch.unpack(&archive, &UnpackLimits::default()).unwrap();
    assert_eq!(summary.files, 3);
    assert_eq!(summary.directories, 2);
    assert_eq!(summary.symlinks, 1);
    assert_eq!(summary.hardlinks, 1);
    assert_eq!(summary.total_bytes, 12 + 19 + 3);
    let dest = scratch.dest();
    assert_eq!(
        fs::read_to_string(dest.join("app/static/main-link.py")).unwrap(),
        "print('hi')\n"
    );
    assert_eq!(
        fs::read_to_string(dest.join("app/main-copy.py")).unwrap(),
        "print('hi')\n"
    );
    let mode = fs::metadata(dest.join("app/run.sh"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755, "exec bit kept, setuid and group write dropped");
    scratch.assert_outside_untouched();
}

#[test]
fn rejects_absolute_paths() {
    let scratch = Scratch::new();
    let archive = Crafter::new()
        .file("/tmp/gilgal-escape-probe", b"pwned")
        .finish();
    let err = scratch
        .unpack(&archive, &UnpackLimits::default())
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::AbsolutePath { ref entry } if entry == "/tmp/gilgal-escape-probe"),
        "{err}"
    );
    assert!(err.to_string().contains("absolute path"), "{err}");
    scratch.assert_outside_untouched();
}

#[test]
fn rejects_parent_components() {
    let scratch = Scratch::new();
    let archive = Crafter::new()
        .file("ok.txt", b"fine")
        .file("a/../../outside/keep.txt", b"pwned")
        .finish();
    let err = scratch
        .unpack(&archive, &UnpackLimits::default())
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::ParentTraversal { ref entry } if entry == "a/../../outside/keep.txt"),
        "{err}"
    );
    scratch.assert_outside_untouched();
}

#[test]
fn rejects_symlinks_pointing_outside() {
    for target in ["../outside", "/etc", "a/../../outside", "."] {
        let scratch = Scratch::new();
        let name = if target == "." { "ok-link" } else { "evil" };
        let archive = Crafter::new().dir("a/").symlink(name, target).finish();
        let result = scratch.unpack(&archive, &UnpackLimits::default());
        if target == "." {
            // Pointing at the root itself is inside and allowed.
            result.unwrap();
            continue;
        }
        let err = result.unwrap_err();
        assert!(
            matches!(err, ArchiveError::LinkEscapes { kind: "symlink", ref entry, .. } if entry == "evil"),
            "{target}: {err}"
        );
        assert!(err.to_string().contains("outside the upload"), "{err}");
        assert!(!scratch.dest().join("evil").exists());
        scratch.assert_outside_untouched();
    }
}

#[test]
fn rejects_a_chain_of_symlinks_that_escapes_only_together() {
    // `here -> .` is harmless, `up -> here/..` looks harmless lexically, but the kernel resolves
    // it to the parent of the destination.
    let scratch = Scratch::new();
    let archive = Crafter::new()
        .symlink("here", ".")
        .symlink("up", "here/..")
        .finish();
    let err = scratch
        .unpack(&archive, &UnpackLimits::default())
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::LinkEscapes { ref entry, .. } if entry == "up"),
        "{err}"
    );
    scratch.assert_outside_untouched();
}

#[test]
fn rejects_hardlinks_pointing_outside() {
    for target in ["../outside/keep.txt", "/etc/passwd", "missing.txt"] {
        let scratch = Scratch::new();
        let archive = Crafter::new().hardlink("evil", target).finish();
        let err = scratch
            .unpack(&archive, &UnpackLimits::default())
            .unwrap_err();
        match target {
            "missing.txt" => assert!(matches!(err, ArchiveError::Conflict { .. }), "{err}"),
            _ => assert!(
                matches!(
                    err,
                    ArchiveError::LinkEscapes {
                        kind: "hardlink",
                        ..
                    }
                ),
                "{target}: {err}"
            ),
        }
        assert!(!scratch.dest().join("evil").exists());
        scratch.assert_outside_untouched();
    }
}

#[test]
fn never_writes_through_a_symlink() {
    // An inside symlink to a directory, then a file "inside" it: refused rather than followed.
    let scratch = Scratch::new();
    let archive = Crafter::new()
        .dir("real/")
        .symlink("alias", "real")
        .file("alias/file.txt", b"through the link")
        .finish();
    let err = scratch
        .unpack(&archive, &UnpackLimits::default())
        .unwrap_err();
    assert!(
        matches!(err, ArchiveError::Conflict { ref entry, .. } if entry == "alias/file.txt"),
        "{err}"
    );
    assert!(!scratch.dest().join("real/file.txt").exists());

    // The classic attack: a link to outside followed by a write through it; the link is
    // refused first, so the write never happens.
    let scratch = Scratch::new();
    let archive = Crafter::new()
        .symlink("escape", "../outside")
        .file("escape/keep.txt", b"pwned")
        .finish();
    let err = scratch
        .unpack(&archive, &UnpackLimits::default())
        .unwrap_err();
    assert!(matches!(err, ArchiveError::LinkEscapes { .. }), "{err}");
    scratch.assert_outside_untouched();

    // A file entry replacing an earlier symlink of the same name replaces the link itself.
    let scratch = Scratch::new();
    let archive = Crafter::new()
        .file("target.txt", b"target")
        .symlink("name.txt", "target.txt")
        .file("name.txt", b"replaced")
        .finish();
    scratch.unpack(&archive, &UnpackLimits::default()).unwrap();
    assert_eq!(
        fs::read(scratch.dest().join("target.txt")).unwrap(),
        b"target"
    );
    assert_eq!(
        fs::read(scratch.dest().join("name.txt")).unwrap(),
        b"replaced"
    );
    assert!(!fs::symlink_metadata(scratch.dest().join("name.txt"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn rejects_device_and_fifo_entries() {
    for (kind, label) in [
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "FIFO"),
    ] {
        let scratch = Scratch::new();
        let archive = Crafter::new().special(kind, "dev/thing").finish();
        let err = scratch
            .unpack(&archive, &UnpackLimits::default())
            .unwrap_err();
        assert!(
            matches!(err, ArchiveError::UnsupportedEntry { ref entry, ref kind } if entry == "dev/thing" && kind == label),
            "{err}"
        );
        assert!(!scratch.dest().join("dev/thing").exists());
        scratch.assert_outside_untouched();
    }
}

#[test]
fn rejects_too_many_entries() {
    let scratch = Scratch::new();
    let mut crafter = Crafter::new();
    for index in 0..11 {
        crafter = crafter.file(&format!("f{index}"), b"x");
    }
    let limits = UnpackLimits {
        max_entries: 10,
        ..UnpackLimits::default()
    };
    let err = scratch.unpack(&crafter.finish(), &limits).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooManyEntries { limit: 10 }),
        "{err}"
    );
    assert!(names_in(&scratch.dest()).len() <= 10);
}

#[test]
fn stops_a_decompression_bomb_early() {
    // 64 MiB of zeros compresses to well under 100 KiB.
    let zeros = vec![0u8; 64 << 20];
    let bomb = Crafter::new().file("bomb.bin", &zeros).finish();
    assert!(bomb.len() < 200 * 1024, "bomb is {} bytes", bomb.len());

    // Limited by the total budget: the header declares the size, so nothing is written.
    let scratch = Scratch::new();
    let limits = UnpackLimits {
        max_entries: 100,
        max_total_bytes: 1 << 20,
        max_file_bytes: 128 << 20,
    };
    let err = scratch.unpack(&bomb, &limits).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TotalTooLarge { limit } if limit == 1 << 20),
        "{err}"
    );
    let written = fs::metadata(scratch.dest().join("bomb.bin"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 1 << 20, "wrote {written} bytes");

    // Limited per file.
    let scratch = Scratch::new();
    let limits = UnpackLimits {
        max_file_bytes: 1 << 20,
        ..UnpackLimits::default()
    };
    let err = scratch.unpack(&bomb, &limits).unwrap_err();
    assert!(
        matches!(err, ArchiveError::FileTooLarge { ref entry, .. } if entry == "bomb.bin"),
        "{err}"
    );

    // Many files each under the per-file limit, adding up past the total.
    let mut crafter = Crafter::new();
    let chunk = vec![0u8; 512 << 10];
    for index in 0..8 {
        crafter = crafter.file(&format!("part{index}"), &chunk);
    }
    let scratch = Scratch::new();
    let limits = UnpackLimits {
        max_entries: 100,
        max_total_bytes: 2 << 20,
        max_file_bytes: 1 << 20,
    };
    let err = scratch.unpack(&crafter.finish(), &limits).unwrap_err();
    assert!(matches!(err, ArchiveError::TotalTooLarge { .. }), "{err}");
    let total: u64 = fs::read_dir(scratch.dest())
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total <= 2 << 20, "wrote {total} bytes");
}

#[test]
fn stops_a_bomb_hidden_in_a_long_name_record() {
    // A GNU long-name record claiming 64 MiB: the tar crate would buffer it in memory; the
    // stream cap stops it.
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::GNULongName);
    header.set_size(64 << 20);
    header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    header.set_cksum();
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::best()));
    builder
        .append(&header, std::io::repeat(b'a').take(64 << 20))
        .unwrap();
    let bomb = builder.into_inner().unwrap().finish().unwrap();
    let scratch = Scratch::new();
    let limits = UnpackLimits {
        max_entries: 10,
        max_total_bytes: 1 << 20,
        max_file_bytes: 1 << 20,
    };
    let err = scratch.unpack(&bomb, &limits).unwrap_err();
    assert!(matches!(err, ArchiveError::TotalTooLarge { .. }), "{err}");
}

#[test]
fn rejects_data_that_is_not_a_tarball() {
    let scratch = Scratch::new();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&[0x55; 2048]).unwrap();
    let err = scratch
        .unpack(&gz.finish().unwrap(), &UnpackLimits::default())
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{err}");
    let err = scratch
        .unpack(b"definitely not gzip", &UnpackLimits::default())
        .unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{err}");
}
