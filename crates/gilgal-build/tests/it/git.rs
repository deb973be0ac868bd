//! Fetching source from a (local, file://) git repository.

use std::fs;
use std::path::Path;
use std::process::Command;

use gilgal_build::builder::LogSink;
use gilgal_build::git::{
    fetch_git, validate_ref, validate_url, GitError, GitFetchOptions, GitSource,
};
use tokio_util::sync::CancellationToken;

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A repository with two commits on `main` and a tag on the first.
fn repository(root: &Path) -> (String, String) {
    let repo = root.join("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "--quiet"]);
    fs::write(repo.join("index.html"), "v1").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "one"]);
    git(&repo, &["tag", "v1"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    fs::write(repo.join("index.html"), "v2").unwrap();
    fs::write(repo.join("Procfile"), "web: true\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    (first, second)
}

fn local_options() -> GitFetchOptions {
    GitFetchOptions {
        allow_local: true,
        ..GitFetchOptions::default()
    }
}

#[tokio::test]
async fn fetches_a_branch_a_tag_and_a_commit() {
    let root = tempfile::tempdir().unwrap();
    let (first, second) = repository(root.path());
    let url = format!("file://{}", root.path().join("repo").display());
    for (reference, commit, content) in [
        ("main", &second, "v2"),
        ("v1", &first, "v1"),
        (first.as_str(), &first, "v1"),
    ] {
        let dest = root.path().join(format!("checkout-{reference}"));
        let source = GitSource {
            url: url.clone(),
            reference: reference.to_owned(),
        };
        let checkout = fetch_git(
            &source,
            &dest,
            &local_options(),
            CancellationToken::new(),
            LogSink::discard(),
        )
        .await
        .unwrap();
        assert_eq!(&checkout.commit, commit);
        assert_eq!(
            fs::read_to_string(dest.join("index.html")).unwrap(),
            content
        );
        assert!(!dest.join(".git").exists(), ".git is removed");
    }
}

#[tokio::test]
async fn refuses_bad_urls_and_refs_before_running_git() {
    for url in [
        "--upload-pack=touch /tmp/pwned",
        "ext::sh -c touch% /tmp/pwned",
        "file:///etc",
        "/srv/repo",
        "https://host/repo name",
        "",
    ] {
        assert!(
            matches!(validate_url(url, false), Err(GitError::InvalidUrl { .. })),
            "{url}"
        );
    }
    for url in [
        "https://github.com/a/b.git",
        "ssh://git@host/a.git",
        "git@github.com:a/b.git",
        "git://host/a",
    ] {
        validate_url(url, false).unwrap();
    }
    for reference in [
        "-b",
        "--output=x",
        "a..b",
        "main~1",
        "x y",
        "",
        "refs/heads/",
        "@{-1}",
    ] {
        assert!(
            matches!(validate_ref(reference), Err(GitError::InvalidRef(_))),
            "{reference:?}"
        );
    }
    for reference in [
        "main",
        "release/1.2",
        "v1.0.0",
        "0123456789abcdef0123456789abcdef01234567",
    ] {
        validate_ref(reference).unwrap();
    }
    let dest = tempfile::tempdir().unwrap();
    let source = GitSource {
        url: "file:///etc".to_owned(),
        reference: "main".to_owned(),
    };
    let err = fetch_git(
        &source,
        &dest.path().join("x"),
        &GitFetchOptions::default(),
        CancellationToken::new(),
        LogSink::discard(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("local repositories are not allowed"),
        "{err}"
    );
    assert!(!dest.path().join("x").exists());
}

#[tokio::test]
async fn a_missing_ref_reports_gits_error_and_escaping_symlinks_are_refused() {
    let root = tempfile::tempdir().unwrap();
    repository(root.path());
    let url = format!("file://{}", root.path().join("repo").display());
    let source = GitSource {
        url: url.clone(),
        reference: "no-such-branch".to_owned(),
    };
    let err = fetch_git(
        &source,
        &root.path().join("a"),
        &local_options(),
        CancellationToken::new(),
        LogSink::discard(),
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("git ") && message.contains("fetch"),
        "{message}"
    );
    assert!(message.contains("no-such-branch"), "{message}");

    let repo = root.path().join("repo");
    std::os::unix::fs::symlink("/etc/passwd", repo.join("passwd")).unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "--quiet", "-m", "evil"]);
    let source = GitSource {
        url,
        reference: "main".to_owned(),
    };
    let err = fetch_git(
        &source,
        &root.path().join("b"),
        &local_options(),
        CancellationToken::new(),
        LogSink::discard(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, GitError::Content(_)), "{err}");
    assert!(err.to_string().contains("passwd"), "{err}");
}
