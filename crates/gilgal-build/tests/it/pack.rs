//! `pack_dir`: what `gilgal deploy` uploads.

use std::fs;

use gilgal_build::archive::{pack_dir, unpack_tar_gz, UnpackLimits};

use crate::support::tree;

#[test]
fn packs_honouring_gitignore_and_gilgalignore_without_a_repository() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    fs::write(root.join(".gitignore"), "node_modules/\n*.log\n").unwrap();
    fs::write(root.join(".gilgalignore"), "secrets.env\n").unwrap();
    fs::write(root.join("app.py"), "print(1)\n").unwrap();
    fs::write(root.join("debug.log"), "noise").unwrap();
    fs::write(root.join("secrets.env"), "TOKEN=1").unwrap();
    fs::create_dir_all(root.join("node_modules/dep")).unwrap();
    fs::write(root.join("node_modules/dep/index.js"), "x").unwrap();
    fs::create_dir_all(root.join(".git/objects")).unwrap();
    fs::write(root.join(".git/HEAD"), "ref: refs/heads/main").unwrap();
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("sub/.gitignore"), "generated.txt\n").unwrap();
    fs::write(root.join("sub/generated.txt"), "gen").unwrap();
    fs::write(root.join("sub/kept.txt"), "kept").unwrap();
    fs::write(root.join(".env.example"), "A=1").unwrap();
    std::os::unix::fs::symlink("app.py", root.join("link.py")).unwrap();

    let mut packed = Vec::new();
    let summary = pack_dir(root, &mut packed).unwrap();
    assert_eq!(summary.symlinks, 1);
    assert_eq!(summary.files, 6, "{summary:?}");

    let dest = tempfile::tempdir().unwrap();
    unpack_tar_gz(packed.as_slice(), dest.path(), &UnpackLimits::default()).unwrap();
    assert_eq!(
        tree(dest.path()),
        [
            ".env.example",
            ".gilgalignore",
            ".gitignore",
            "app.py",
            "link.py",
            "sub",
            "sub/.gitignore",
            "sub/kept.txt",
        ]
    );
    assert!(fs::symlink_metadata(dest.path().join("link.py"))
        .unwrap()
        .file_type()
        .is_symlink());

    // The same tree packs to the same bytes (no owners or times in the archive).
    let mut again = Vec::new();
    pack_dir(root, &mut again).unwrap();
    assert_eq!(packed, again);
}

/// What holds local secrets or what the build recreates is left out even without a
/// `.gitignore` (a `.env` must not reach the server by default), at any depth, and said so;
/// the top-level `.gilgalignore` can re-include it.
#[test]
fn local_secrets_and_installed_dependencies_are_left_out_unless_reincluded() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path();
    fs::write(root.join("app.py"), "print(1)\n").unwrap();
    fs::write(root.join(".env"), "DATABASE_URL=postgres://secret").unwrap();
    fs::write(root.join(".env.production"), "TOKEN=secret").unwrap();
    fs::write(root.join(".env.example"), "TOKEN=").unwrap();
    fs::create_dir_all(root.join(".venv/bin")).unwrap();
    fs::write(root.join(".venv/bin/python"), "elf").unwrap();
    fs::create_dir_all(root.join("__pycache__")).unwrap();
    fs::write(root.join("__pycache__/app.cpython-311.pyc"), "pyc").unwrap();
    fs::create_dir_all(root.join("web/node_modules/dep")).unwrap();
    fs::write(root.join("web/node_modules/dep/index.js"), "x").unwrap();
    fs::write(root.join("web/index.js"), "y").unwrap();
    fs::write(root.join("web/.env"), "KEY=secret").unwrap();

    let mut packed = Vec::new();
    let summary = pack_dir(root, &mut packed).unwrap();
    let dest = tempfile::tempdir().unwrap();
    unpack_tar_gz(packed.as_slice(), dest.path(), &UnpackLimits::default()).unwrap();
    assert_eq!(
        tree(dest.path()),
        [".env.example", "app.py", "web", "web/index.js"]
    );
    assert_eq!(
        summary.left_out,
        [
            ".env",
            ".env.production",
            ".venv",
            "__pycache__",
            "web/.env",
            "web/node_modules"
        ]
    );

    // Re-included by the top-level .gilgalignore: uploaded.
    fs::write(root.join(".gilgalignore"), "!.env\n!node_modules/\n").unwrap();
    let mut packed = Vec::new();
    let summary = pack_dir(root, &mut packed).unwrap();
    let dest = tempfile::tempdir().unwrap();
    unpack_tar_gz(packed.as_slice(), dest.path(), &UnpackLimits::default()).unwrap();
    let files = tree(dest.path());
    for wanted in [".env", "web/.env", "web/node_modules/dep/index.js"] {
        assert!(
            files.iter().any(|f| f == wanted),
            "{wanted} missing: {files:?}"
        );
    }
    assert!(!files.iter().any(|f| f.starts_with(".venv")), "{files:?}");
    assert_eq!(
        summary.left_out,
        [".env.production", ".venv", "__pycache__"]
    );
}
