//! Fetching an app's source from a git repository (URL + ref), for deploys that do not upload
//! a tarball.
//!
//! Git runs from argument vectors with `--` before user values, in a minimal environment
//! (no system or global git config, no terminal prompts), with only the `https`, `http`,
//! `ssh` and `git` transports enabled — `ext::` (which runs commands) never, `file://` only
//! when explicitly allowed (it would let API users read the server's own repositories).
//! HTTP redirects are not followed: the host checked before the fetch is the only one contacted.
//! One commit is fetched (`--depth 1`), checked out detached, and `.git` is removed; the tree
//! is then held to the same rules as an uploaded tarball (size limits, symlinks inside).
//! Submodules and Git LFS objects are not fetched.
//!
//! Credentials in an `https://user:token@host/…` URL never reach git's command line (which any
//! local user can read in `/proc`) or the log: the URL git is given has no userinfo, and the
//! credential travels as an `Authorization` header in git's environment
//! (`GIT_CONFIG_COUNT`/`http.extraHeader`). [`split_credential`] and [`redact_urls`] let
//! callers store and show such URLs without the credential.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::archive::{inspect_tree, ArchiveError, UnpackLimits, UnpackSummary};
use crate::builder::runner::StepRunner;
use crate::builder::{BuildError, LogSink};

/// Where to fetch source from.
#[derive(Clone, PartialEq, Eq)]
pub struct GitSource {
    /// Repository URL: `https://`, `http://`, `ssh://`, `git://`, scp-style `user@host:path`,
    /// or `file://` when [`GitFetchOptions::allow_local`] is set.
    pub url: String,
    /// Branch, tag or full commit id.
    pub reference: String,
}

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource")
            .field("url", &redact_urls(&self.url))
            .field("reference", &self.reference)
            .finish()
    }
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

/// A username and password (or access token) for an HTTP(S) repository, taken out of its URL
/// so that it can be stored sealed and handed to git without a command line.
#[derive(Clone, PartialEq, Eq)]
pub struct GitCredential {
    /// The username (`x-access-token`, `oauth2`, a login, or the token itself).
    pub username: String,
    /// The password or token; may be empty when the token is the username.
    pub password: String,
}

impl std::fmt::Debug for GitCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GitCredential(redacted)")
    }
}

impl GitCredential {
    /// The HTTP `Authorization` header value git sends.
    fn authorization(&self) -> String {
        use base64::Engine as _;
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    /// The credential as one string, `user:password` (percent-encoded), for sealing.
    pub fn to_userinfo(&self) -> String {
        use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
        format!(
            "{}:{}",
            utf8_percent_encode(&self.username, NON_ALPHANUMERIC),
            utf8_percent_encode(&self.password, NON_ALPHANUMERIC)
        )
    }

    /// Reads [`GitCredential::to_userinfo`] back.
    pub fn from_userinfo(userinfo: &str) -> Self {
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8_lossy()
                .into_owned()
        };
        let (username, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        Self {
            username: decode(username),
            password: decode(password),
        }
    }
}

fn is_http(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// Splits the userinfo off an `http(s)://` URL: the URL without it, and the credential it held.
/// Other URLs (ssh's `git@host` is a login name, not a secret) come back unchanged.
pub fn split_credential(url: &str) -> (String, Option<GitCredential>) {
    if !is_http(url) {
        return (url.to_owned(), None);
    }
    let Ok(mut parsed) = url::Url::parse(url) else {
        return (url.to_owned(), None);
    };
    if parsed.username().is_empty() && parsed.password().is_none() {
        return (url.to_owned(), None);
    }
    let credential = GitCredential::from_userinfo(&format!(
        "{}:{}",
        parsed.username(),
        parsed.password().unwrap_or_default()
    ));
    if parsed.set_username("").is_err() || parsed.set_password(None).is_err() {
        return (url.to_owned(), None);
    }
    (parsed.to_string(), Some(credential))
}

/// `url` with `credential` put back as its userinfo (an in-memory value handed to
/// [`fetch_git`], which takes it out again; never stored or shown).
pub fn with_credential(url: &str, credential: &GitCredential) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if is_http(url) => {
            format!("{scheme}://{}@{rest}", credential.to_userinfo())
        }
        _ => url.to_owned(),
    }
}

/// `text` with the userinfo (`user:password@`) of every URL in it removed: for anything a
/// repository URL may be written into (logs, descriptions, API answers).
pub fn redact_urls(text: &str) -> String {
    let mut redacted = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        redacted.push_str(head);
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '\\' | '?' | '#' | '"' | '\'' | '<' | '>' | '`')
                    || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        redacted.push_str(
            authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host),
        );
        rest = &tail[end..];
    }
    redacted.push_str(rest);
    redacted
}

/// Checks a repository URL without contacting it.
pub fn validate_url(url: &str, allow_local: bool) -> Result<(), GitError> {
    let refuse = |reason| {
        Err(GitError::InvalidUrl {
            url: redact_urls(url),
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
    if (lower.starts_with("ssh://") || lower.starts_with("git://"))
        && url
            .split_once("://")
            .and_then(|(_, rest)| rest.split('/').next())
            .is_some_and(|authority| {
                authority
                    .rsplit_once('@')
                    .is_some_and(|(user, _)| user.contains(':'))
            })
    {
        return refuse(
            "passwords in ssh:// and git:// URLs are not supported; use https:// with a token",
        );
    }
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
            // A redirect would reach a host the SSRF check never saw.
            ("http.followRedirects", "false"),
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
    // The credential goes into git's environment (readable only by this user), never argv.
    let (url, credential) = split_credential(&source.url);
    let credential_env: Vec<(OsString, OsString)> = credential
        .map(|credential| {
            vec![
                ("GIT_CONFIG_COUNT".into(), "1".into()),
                ("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()),
                (
                    "GIT_CONFIG_VALUE_0".into(),
                    format!("Authorization: {}", credential.authorization()).into(),
                ),
            ]
        })
        .unwrap_or_default();
    runner
        .run(
            &git(
                &["fetch", "--depth", "1", "--no-tags", "--quiet", "--"],
                &[&url, &source.reference],
            ),
            dest,
            &credential_env,
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
