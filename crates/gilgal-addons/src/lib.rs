//! Managed backing services ("add-ons") without a store or an HTTP API.
//!
//! Every backend Gilgal hosts needs a database and most need Redis. This crate runs them the
//! way an operator would, with Debian's own server packages, and nothing hand-made:
//!
//! * [`postgres::PostgresServer`]: one PostgreSQL cluster under the data dir, initialised,
//!   started and restarted by Gilgal (`pg_ctl`, as the `postgres` system user when Gilgal is
//!   root); each add-on is a database with its own login role and random password, and
//!   `CONNECT` revoked from everyone else, so one environment's credentials open nothing of
//!   another's. Logical backups with `pg_dump` (custom format), restores with `pg_restore`.
//! * [`redis::RedisServer`]: one `redis-server` per add-on with a password and AOF + RDB
//!   persistence; backups are RDB snapshots taken with `redis-cli --rdb`.
//!
//! Every command is an argument vector; passwords travel in the environment of the child
//! (`PGPASSWORD`, `REDISCLI_AUTH`), never in an argument list another user could read in
//! `ps`, and never in a shell string. A missing server binary is an
//! [`AddonError::MissingBinary`] naming the Debian package to install.

mod command;
pub mod postgres;
pub mod redis;
pub mod s3;

use std::path::PathBuf;

pub use command::RunAs;

/// Why an add-on operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    /// A server or client program is not installed.
    #[error("{binary} is not installed: install Debian's `{package}` package (apt-get install {package})")]
    MissingBinary {
        /// The program looked for.
        binary: &'static str,
        /// The package that provides it.
        package: &'static str,
    },
    /// A program ran and failed.
    #[error("{program} failed: {detail}")]
    Command {
        /// What was run (the program name, never its arguments).
        program: String,
        /// Exit status and the tail of its error output.
        detail: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The managed PostgreSQL server refused an administrative statement.
    #[error("PostgreSQL: {0}")]
    Sql(#[from] sqlx::Error),
    /// The server did not come up in time; the end of its log says why.
    #[error("{server} did not start in time; its log ({}) ends with:\n{tail}", .log.display())]
    NotStarted {
        /// Which server.
        server: &'static str,
        /// Its log file.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// A name that cannot be a database, role or file name.
    #[error("invalid add-on name {0:?}")]
    InvalidName(String),
}

impl AddonError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// A finished backup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its content, hex.
    pub sha256: String,
}

/// A random password of 32 hex characters (128 bits), safe in URLs and config files.
pub fn random_password() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Checks a generated identifier (database, role, directory): lowercase letters, digits and
/// `_`, starting with a letter, at most 63 bytes (PostgreSQL's limit). Add-on identifiers are
/// made by Gilgal, never typed by users; this guards the invariant anyway.
pub fn check_identifier(name: &str) -> Result<(), AddonError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AddonError::InvalidName(name.to_owned()))
    }
}

/// Streams `path` through SHA-256 and returns its size and digest.
pub async fn checksum(path: &std::path::Path) -> Result<BackupFile, AddonError> {
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| AddonError::io(format!("opening {}", path.display()), e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| AddonError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok(BackupFile {
        path: path.to_owned(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Stops every managed server under `addons_dir` (PostgreSQL with a fast shutdown, Redis
/// and SeaweedFS with SIGTERM, SeaweedFS with SIGKILL after `grace`) and waits up to `grace` for them to exit. For `--stop-apps-on-exit` and
/// test harnesses; a normal Gilgal restart leaves them running.
pub fn stop_all(addons_dir: &std::path::Path, grace: std::time::Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let read_pid = |path: PathBuf| -> Option<Pid> {
        let text = std::fs::read_to_string(path).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        (pid > 1).then(|| Pid::from_raw(pid))
    };
    let mut pids = Vec::new();
    if let Some(pid) = read_pid(addons_dir.join("postgres/data/postmaster.pid")) {
        if kill(pid, Signal::SIGINT).is_ok() {
            pids.push(pid);
        }
    }
    // SeaweedFS's own shutdown can hang: SIGTERM now, SIGKILL at the deadline below.
    let weed =
        read_pid(addons_dir.join("s3/weed.pid")).filter(|pid| kill(*pid, Signal::SIGTERM).is_ok());
    pids.extend(weed);
    for entry in std::fs::read_dir(addons_dir.join("redis"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(pid) = read_pid(entry.path().join("redis.pid")) {
            if kill(pid, Signal::SIGTERM).is_ok() {
                pids.push(pid);
            }
        }
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && pids.iter().any(|pid| kill(*pid, None).is_ok()) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if let Some(pid) = weed {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// How many log lines a start failure quotes.
const START_FAILURE_TAIL_LINES: usize = 30;

impl AddonError {
    /// A start failure quoting the end of the server's log, so the reason is in the error
    /// (and in CI output) rather than in a file that is gone with its temporary directory.
    pub(crate) fn not_started(server: &'static str, log: PathBuf) -> Self {
        let text = std::fs::read(&log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(START_FAILURE_TAIL_LINES)..].join("\n");
        Self::NotStarted { server, log, tail }
    }
}
