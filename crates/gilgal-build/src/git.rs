//! Fetching an app's source from a git repository (URL + ref), for deploys that do not upload
//! a tarball.
//!
//! Git runs from argument vectors with `--` before user values, in a minimal environment
//! (no system or global git config, no terminal prompts), with only the `https`, `http`,
//! `ssh` and `git` transports enabled — `ext::` (which runs commands) never, `file://` only
//! when explicitly allowed (it would let API users read the server's own repositories).
//! One commit is fetched (`--depth 1`), checked out detached, and `.git` is removed; the tree
//! is then held to the same rules as an uploaded tarball (size limits, symlinks inside).
//! Submodules and Git LFS objects are not fetched.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::archive::{inspect_tree, ArchiveError, UnpackLimits, UnpackSummary};
use crate::builder::runner::StepRunner;
use crate::builder::{BuildError, LogSink};

/// Where to fetch source from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// Repository URL: `https://`, `http://`, `ssh://`, `git://`, scp-style `user@host:path`,
    /// or `file://` when [`GitFetchOptions::allow_local`] is set.
    pub url: String,
    /// Branch, tag or full commit id.
    pub reference: String,
}

/// Settings of a fetch.
#[derive(Debug, Clone)]
pub struct GitFetchOptions {
    /// Allow `file://` URLs (tests, single-user installs); off for the API by default.
    pub allow_local: bool,
    /// Time limit of each git command.
    pub timeout: Duration,
    /// Limits on the checked-out tree, as for uploads.
    pub limits: UnpackLimits,
}

impl Default for GitFetchOptions {
    fn default() -> Self {
        Self {
            allow_local: false,
            timeout: Duration::from_secs(10 * 60),
            limits: UnpackLimits::default(),
        }
    }
}

/// A finished checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCheckout {
    /// The commit id that was checked out.
    pub commit: String,
    /// What the tree contains.
    pub summary: UnpackSummary,
}

/// Why a git source could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The URL is not an accepted repository address.
    #[error("unsupported git URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The ref is not a plausible branch, tag or commit.
    #[error("invalid git ref `{0}`: use a branch, tag or commit id (letters, digits, `.`, `_`, `-`, `/`)")]
    InvalidRef(String),
    /// A git command failed (its error carries the command and output tail).
    #[error(transparent)]
    Git(#[from] BuildError),
    /// The checked-out tree breaks the intake rules.
    #[error("the repository's content was refused: {0}")]
    Content(#[from] ArchiveError),
    /// The destination could not be prepared.
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        /// The path involved.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Checks a repository URL without contacting it.
pub fn validate_url(url: &str, allow_local: bool) -> Result<(), GitError> {
    let refuse = |reason| {
        Err(GitError::InvalidUrl {
            url: url.to_owned(),
            reason,
        })
    };
    if url.is_empty() || url.len() > 2048 {
        return refuse("it must be 1 to 2048 characters");
    }
    if url.starts_with('-') {
        return refuse("it must not start with `-`");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("it must not contain spaces or control characters");
    }
    let lower = url.to_ascii_lowercase();
    let remote = ["https://", "http://", "ssh://", "git://"];
    if remote.iter().any(|scheme| lower.starts_with(scheme)) {
        return Ok(());
    }
    if lower.starts_with("file://") {
        return if allow_local {
            Ok(())
        } else {
            refuse("local repositories are not allowed")
        };
    }
    if lower.contains("::") || lower.contains("://") {
        return refuse("only https, http, ssh and git transports are allowed");
    }
    // scp-style `user@host:path`.
    if let Some((host, path)) = url.split_once(':') {
        if !host.is_empty() && !host.contains('/') && !path.is_empty() {
            return Ok(());
        }
    }
    refuse("expected https://, http://, ssh://, git:// or user@host:path")
}

/// Checks a branch, tag or commit name without contacting any repository.
pub fn validate_ref(reference: &str) -> Result<(), GitError> {
    let valid = !reference.is_empty()
        && reference.len() <= 255
        && !reference.starts_with(['-', '/', '.'])
        && !reference.ends_with(['/', '.'])
        && !reference.contains("..")
        && !reference.contains("//")
        && !reference.ends_with(".lock")
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    if valid {
        Ok(())
    } else {
        Err(GitError::InvalidRef(reference.to_owned()))
    }
}

/// Fetches one commit of `source` into `dest` (created; must not exist or be empty), removes
/// `.git`, and checks the tree like an upload. Build logs receive git's output.
pub async fn fetch_git(
    source: &GitSource,
    dest: &Path,
    options: &GitFetchOptions,
    cancel: CancellationToken,
    log: LogSink,
) -> Result<GitCheckout, GitError> {
    validate_url(&source.url, options.allow_local)?;
    validate_ref(&source.reference)?;
    let io = |source| GitError::Io {
        path: dest.to_owned(),
        source,
    };
    if fs::read_dir(dest).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(io(std::io::Error::other("the directory is not empty")));
    }
    fs::create_dir_all(dest).map_err(io)?;

    let mut env = std::collections::BTreeMap::new();
    env.insert("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned());
    env.insert("GIT_CONFIG_NOSYSTEM".to_owned(), "1".to_owned());
    env.insert("GIT_CONFIG_GLOBAL".to_owned(), "/dev/null".to_owned());
    env.insert("GIT_ASKPASS".to_owned(), "true".to_owned());
    env.insert("SSH_ASKPASS".to_owned(), "true".to_owned());
    let runner = StepRunner::new(log.clone(), cancel, options.timeout, &env, None);

    let git = |args: &[&str], extra: &[&str]| -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec!["git".into()];
        for (key, value) in [
            ("protocol.allow", "never"),
            ("protocol.https.allow", "always"),
            ("protocol.http.allow", "always"),
            ("protocol.ssh.allow", "always"),
            ("protocol.git.allow", "always"),
        ] {
            argv.push("-c".into());
            argv.push(format!("{key}={value}").into());
        }
        if options.allow_local {
            argv.push("-c".into());
            argv.push("protocol.file.allow=always".into());
        }
        argv.push("-C".into());
        argv.push(dest.as_os_str().to_owned());
        argv.extend(args.iter().map(OsString::from));
        argv.extend(extra.iter().map(OsString::from));
        argv
    };
    runner
        .run(&git(&["init", "--quiet"], &[]), dest, &[])
        .await?;
    runner
        .run(
            &git(
                &["fetch", "--depth", "1", "--no-tags", "--quiet", "--"],
                &[&source.url, &source.reference],
            ),
            dest,
            &[],
        )
        .await?;
    runner
        .run(
            &git(&["checkout", "--quiet", "--detach", "FETCH_HEAD"], &[]),
            dest,
            &[],
        )
        .await?;
    let commit = runner
        .capture(&git(&["rev-parse", "HEAD"], &[]), dest, &[])
        .await?
        .trim()
        .to_owned();
    let git_dir = dest.join(".git");
    fs::remove_dir_all(&git_dir).map_err(|source| GitError::Io {
        path: git_dir.clone(),
        source,
    })?;
    let summary = inspect_tree(dest, &options.limits)?;
    log.system(format!("checked out {} at {commit}", source.reference))
        .await;
    Ok(GitCheckout { commit, summary })
}
