//! Stack detection order and gilgal.toml overrides.

use std::fs;

use gilgal_build::config::AppConfig;
use gilgal_build::detect::{detect_stack, resolve_stack, Stack, DETECTION_RULES};

fn dir_with(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        fs::write(dir.path().join(file), "{}").unwrap();
    }
    dir
}

#[test]
fn first_matching_file_wins() {
    let cases: &[(&[&str], Stack)] = &[
        (
            &["requirements.txt", "package.json", "index.html"],
            Stack::Python,
        ),
        (&["pyproject.toml", "Cargo.toml"], Stack::Python),
        (&["package.json", "Cargo.toml", "index.html"], Stack::Node),
        (&["Cargo.toml", "index.html"], Stack::Rust),
        (&["index.html"], Stack::Static),
    ];
    for (files, expected) in cases {
        let dir = dir_with(files);
        assert_eq!(detect_stack(dir.path()).unwrap(), *expected, "{files:?}");
    }
    assert_eq!(DETECTION_RULES[0].0, "requirements.txt");
}

#[test]
fn unknown_source_lists_what_was_looked_for() {
    let dir = dir_with(&["README.md"]);
    let err = detect_stack(dir.path()).unwrap_err();
    let message = err.to_string();
    for (file, _) in DETECTION_RULES {
        assert!(message.contains(file), "{message}");
    }
    assert!(message.contains("[build] builder"), "{message}");
}

#[test]
fn gilgal_toml_overrides_detection() {
    let dir = dir_with(&["requirements.txt", "index.html"]);
    let config = AppConfig::parse("[build]\nbuilder = \"static\"\n")
        .unwrap()
        .for_environment("production");
    assert_eq!(resolve_stack(dir.path(), &config).unwrap(), Stack::Static);

    let empty = dir_with(&["Makefile"]);
    let config = AppConfig::parse("[build]\ncommand = \"make\"\n")
        .unwrap()
        .for_environment("production");
    assert_eq!(
        resolve_stack(empty.path(), &config).unwrap(),
        Stack::Command
    );

    let public = dir_with(&[]);
    fs::create_dir(public.path().join("public")).unwrap();
    fs::write(public.path().join("public/index.html"), "<h1>x</h1>").unwrap();
    let config = AppConfig::parse("[static]\ndir = \"public\"\n")
        .unwrap()
        .for_environment("production");
    assert_eq!(
        resolve_stack(public.path(), &config).unwrap(),
        Stack::Static
    );
}
