//! Persistent logs per environment, without SQL or HTTP.
//!
//! Everything an environment prints (app instances, release phase, one-off and cron runs,
//! builds) is handed to a [`LogStore`] as [`LogRecord`]s. Records are appended by one writer
//! thread to **segment files** under the log directory, one directory per environment id:
//!
//! ```text
//! logs/<environment id>/<first record id, 20 digits>.ndjson   one JSON record per line
//! ```
//!
//! Why files and not the SQL store: a chatty app prints 100,000 lines per second, which
//! row-at-a-time inserts through sqlx cannot absorb on SQLite while the API shares that database,
//! and the queries logs need (the last N lines, a time range, a substring) are sequential
//! scans anyway. A file name is its index: record ids are microsecond timestamps made strictly
//! increasing by the writer, so the sorted directory listing tells which segments can hold a
//! time range or the records after a cursor, and retention deletes whole files.
//!
//! **Backpressure.** [`LogStore::append`] never blocks: records go through a bounded queue
//! ([`LogConfig::queue_capacity`]); when it is full the record is dropped and *counted* for its
//! environment. The writer later appends a marker record (`process = "gilgal"`, `dropped = N`)
//! to that environment's log, so what was stored plus what markers count is what was offered.
//! Producers that lose lines before reaching the store (a lagging broadcast) report them with
//! [`LogStore::count_dropped`] and get the same markers.
//!
//! **Retention.** Each environment keeps at most [`Retention::max_bytes`] of segments and none
//! older than [`Retention::max_age`]; the writer enforces both every
//! [`Retention::check_every`] and whenever a segment fills up, deleting oldest segments first.
//!
//! **Durability.** Records are written (not fsynced) after every batch, so they survive a
//! crash of the server but not of the machine; each server start opens a new segment so a
//! torn last line from a crash is never appended to (readers skip lines that do not parse).

#![warn(missing_docs)]

mod errors;
mod query;
mod record;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

pub use errors::{Traceback, TracebackDetector};
pub use query::{Query, DEFAULT_LIMIT, MAX_LIMIT};
pub use record::{LogRecord, DROPPED_PROCESS};

/// Failures of the log store. Appending never fails (it counts drops instead).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log directory or a segment could not be read or created.
    #[error("log storage at {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The writer thread is gone (the store was shut down).
    #[error("the log writer has stopped")]
    Stopped,
}

impl LogError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// How much log each environment keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Segments whose newest record is older than this are deleted (default 30 days).
    pub max_age: Duration,
    /// Most bytes of segments per environment; oldest segments go first (default 256 MiB).
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size (default 8 MiB). Retention
    /// works in whole segments, so an environment can hold up to one segment more than
    /// `max_bytes` while its newest segment fills.
    pub segment_bytes: u64,
    /// How often the writer checks age limits (size limits are also checked on rotation).
    pub check_every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: 256 * 1024 * 1024,
            segment_bytes: 8 * 1024 * 1024,
            check_every: Duration::from_secs(60),
        }
    }
}

/// Where and how the store keeps logs.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Root directory (created 0700); one subdirectory per environment.
    pub dir: PathBuf,
    /// Age and size limits.
    pub retention: Retention,
    /// Records that may wait for the writer; beyond this, appends are dropped and counted.
    /// The default (131,072) absorbs more than a second of a 100,000 lines/s app.
    pub queue_capacity: usize,
}

impl LogConfig {
    /// Defaults for logs under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            retention: Retention::default(),
            queue_capacity: 128 * 1024,
        }
    }
}

/// Counters since the store opened (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records accepted into the queue.
    pub accepted: u64,
    /// Records dropped (queue full, or reported by producers).
    pub dropped: u64,
    /// Records written to segment files (markers included).
    pub written: u64,
}

/// Messages to the writer thread.
pub(crate) enum Msg {
    Record(Uuid, LogRecord),
    /// Write everything queued before this, then answer.
    Flush(std::sync::mpsc::Sender<()>),
    /// Close and delete an environment's logs, then answer.
    Remove(Uuid, std::sync::mpsc::Sender<()>),
}

/// State shared by the handles and the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Drops not yet written as markers, per environment.
    pub pending_drops: Mutex<HashMap<Uuid, u64>>,
    pub has_drops: AtomicBool,
    pub accepted: AtomicU64,
    /// Records queued and not yet taken by the writer: the queue's bound is kept with this
    /// count, so the queue's memory grows with what is in it instead of being reserved whole.
    pub queued: AtomicUsize,
    pub dropped: AtomicU64,
    pub written: AtomicU64,
}

impl Shared {
    fn add_drops(&self, environment: Uuid, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
        let mut pending = self
            .pending_drops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *pending.entry(environment).or_default() += n;
        self.has_drops.store(true, Ordering::Release);
    }
}

/// The log store: cheap to clone, shared by producers (the runtime pump, the deploy pipeline)
/// and readers (the API). Dropping every clone stops the writer after it wrote what was queued.
#[derive(Debug, Clone)]
pub struct LogStore {
    sender: Sender<Msg>,
    capacity: usize,
    shared: Arc<Shared>,
    root: PathBuf,
}

impl LogStore {
    /// Opens (creating) the log directory and starts the writer thread.
    pub fn open(config: LogConfig) -> Result<Self, LogError> {
        create_private_dir(&config.dir)?;
        // Unbounded underneath (it allocates in blocks as it fills; a bounded std channel
        // reserves every slot up front, 26 MB for the default capacity), bounded by
        // `Shared::queued` in `append`.
        let (sender, receiver): (Sender<Msg>, Receiver<Msg>) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared::default());
        let writer = writer::Writer::new(config.dir.clone(), config.retention, Arc::clone(&shared));
        std::thread::Builder::new()
            .name("gilgal-logs".to_owned())
            .spawn(move || writer.run(receiver))
            .map_err(|e| LogError::io(&config.dir, e))?;
        Ok(LogStore {
            sender,
            capacity: config.queue_capacity.max(1),
            shared,
            root: config.dir,
        })
    }

    /// Queues a record for `environment` without blocking. Returns `false` when it was dropped
    /// (queue full or writer gone); the drop is counted and later recorded in the log.
    pub fn append(&self, environment: Uuid, record: LogRecord) -> bool {
        if self.shared.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.shared.add_drops(environment, 1);
            return false;
        }
        match self.sender.send(Msg::Record(environment, record)) {
            Ok(()) => {
                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                self.shared.add_drops(environment, 1);
                false
            }
        }
    }

    /// Records that `n` lines of `environment` were lost before reaching the store (e.g. a
    /// producer fell behind); they show up as a marker record like queue drops.
    pub fn count_dropped(&self, environment: Uuid, n: u64) {
        self.shared.add_drops(environment, n);
    }

    /// Waits until everything queued before the call is written (blocking; tests and
    /// shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.sender
            .send(Msg::Flush(tx))
            .map_err(|_| LogError::Stopped)?;
        rx.recv().map_err(|_| LogError::Stopped)
    }

    /// Deletes every record of an environment (it was deleted). Blocking.
    pub fn remove_environment(&self, environment: Uuid) -> Result<(), LogError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.sender
            .send(Msg::Remove(environment, tx))
            .map_err(|_| LogError::Stopped)?;
        rx.recv().map_err(|_| LogError::Stopped)
    }

    /// Records of `environment` matching `query` (blocking file reads: call it from a blocking
    /// task). Without `query.after` these are the *last* `limit` matches, oldest first; with it,
    /// the first `limit` matches after that id (for following).
    pub fn query(&self, environment: Uuid, query: &Query) -> Result<Vec<LogRecord>, LogError> {
        query::run(&self.root.join(environment.to_string()), query)
    }

    /// Bytes of segments an environment holds now.
    pub fn environment_bytes(&self, environment: Uuid) -> u64 {
        query::segments(&self.root.join(environment.to_string()))
            .map(|segments| segments.iter().map(|s| s.bytes).sum())
            .unwrap_or(0)
    }

    /// Counters since the store opened.
    pub fn stats(&self) -> LogStats {
        LogStats {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            written: self.shared.written.load(Ordering::Relaxed),
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), LogError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| LogError::io(dir, e))
}

#[cfg(test)]
mod tests;
