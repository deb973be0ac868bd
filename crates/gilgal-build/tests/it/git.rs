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

/// Answers every HTTP request on `listener` with `status` and `location`, counting requests.
async fn http_stub(
    listener: tokio::net::TcpListener,
    status: &'static str,
    location: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    while let Ok((mut socket, _)) = listener.accept().await {
        hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let location = location.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        });
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed_to_another_host() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // The "internal" target: any request reaching it means git followed the redirect.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let target_hits = Arc::new(AtomicUsize::new(0));
    tokio::spawn(http_stub(
        target,
        "404 Not Found",
        String::new(),
        target_hits.clone(),
    ));
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector_addr = redirector.local_addr().unwrap();
    let redirector_hits = Arc::new(AtomicUsize::new(0));
    tokio::spawn(http_stub(
        redirector,
        "302 Found",
        format!("http://{target_addr}/internal.git/info/refs?service=git-upload-pack"),
        redirector_hits.clone(),
    ));

    let root = tempfile::tempdir().unwrap();
    let source = GitSource {
        url: format!("http://{redirector_addr}/repo.git"),
        reference: "main".to_owned(),
    };
    let options = GitFetchOptions {
        timeout: std::time::Duration::from_secs(30),
        ..GitFetchOptions::default()
    };
    let fetched = fetch_git(
        &source,
        &root.path().join("checkout"),
        &options,
        CancellationToken::new(),
        LogSink::discard(),
    )
    .await;
    assert!(fetched.is_err(), "{fetched:?}");
    assert!(
        redirector_hits.load(Ordering::SeqCst) >= 1,
        "git never asked"
    );
    assert_eq!(
        target_hits.load(Ordering::SeqCst),
        0,
        "git followed the redirect to the other host"
    );
}

/// Whether any process's command line holds `needle` (what any local user can read).
fn on_a_command_line(needle: &str) -> bool {
    let Ok(processes) = fs::read_dir("/proc") else {
        return false;
    };
    processes.flatten().any(|process| {
        fs::read(process.path().join("cmdline")).is_ok_and(|cmdline| {
            cmdline
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
        })
    })
}

#[tokio::test]
async fn url_credentials_reach_git_by_header_never_by_command_line_or_log() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let secret = format!("s3cret{}", std::process::id());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, bool)>();
    {
        let secret = secret.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                // git is waiting for this answer: its command line is there to read now.
                let exposed = on_a_command_line(&secret);
                let _ = seen_tx.send((String::from_utf8_lossy(&head).into_owned(), exposed));
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            }
        });
    }
    let root = tempfile::tempdir().unwrap();
    let source = GitSource {
        url: format!("http://x-access-token:{secret}@{addr}/repo.git"),
        reference: "main".to_owned(),
    };
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel(1024);
    let options = GitFetchOptions {
        timeout: std::time::Duration::from_secs(30),
        ..GitFetchOptions::default()
    };
    let fetched = fetch_git(
        &source,
        &root.path().join("checkout"),
        &options,
        CancellationToken::new(),
        LogSink::new(lines_tx),
    )
    .await;
    let error = fetched.unwrap_err().to_string();
    assert!(!error.contains(&secret), "{error}");
    assert!(!format!("{source:?}").contains(&secret));
    let mut log = String::new();
    while let Ok(line) = lines_rx.try_recv() {
        log.push_str(&line.text);
        log.push('\n');
    }
    assert!(log.contains("fetch"), "{log}");
    assert!(
        !log.contains(&secret),
        "the credential is in the log:\n{log}"
    );

    use base64::Engine as _;
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{secret}"));
    let mut requests = Vec::new();
    while let Ok(seen) = seen_rx.try_recv() {
        requests.push(seen);
    }
    assert!(!requests.is_empty(), "git never asked");
    for (head, exposed) in &requests {
        assert!(!exposed, "the credential is on a command line (in /proc)");
        assert!(
            head.to_ascii_lowercase().contains(&format!(
                "authorization: basic {}",
                expected.to_ascii_lowercase()
            )),
            "{head}"
        );
    }
}

#[test]
fn credentials_are_split_off_urls_and_redacted_from_text() {
    use gilgal_build::git::{redact_urls, split_credential, with_credential};
    let (url, credential) = split_credential("https://x-access-token:ghs_a%2Fb@github.com/a/b.git");
    assert_eq!(url, "https://github.com/a/b.git");
    let credential = credential.unwrap();
    assert_eq!(credential.username, "x-access-token");
    assert_eq!(credential.password, "ghs_a/b");
    assert!(!format!("{credential:?}").contains("ghs"));
    let again = with_credential(&url, &credential);
    assert_eq!(split_credential(&again), (url.clone(), Some(credential)));
    let (url, token_only) = split_credential("https://ghp_token@example.com/x");
    assert_eq!(url, "https://example.com/x");
    assert_eq!(token_only.unwrap().username, "ghp_token");
    for plain in [
        "https://github.com/a/b.git",
        "git@github.com:a/b.git",
        "ssh://git@host/x",
    ] {
        assert_eq!(split_credential(plain), (plain.to_owned(), None));
    }
    assert_eq!(
        redact_urls("$ git fetch -- https://u:p@h.example/x.git main; see http://t@h2:80/y"),
        "$ git fetch -- https://h.example/x.git main; see http://h2:80/y"
    );
    assert_eq!(
        redact_urls(r#"{"url":"https://u:p@h/x"}"#),
        r#"{"url":"https://h/x"}"#
    );
    assert!(validate_url("ssh://git:pw@host/x", false).is_err());
    assert!(validate_url("ssh://git@host/x", false).is_ok());
    let refused = validate_url("ftp://u:secret@host/x", false).unwrap_err();
    assert!(!refused.to_string().contains("secret"), "{refused}");
}
