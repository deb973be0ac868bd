//! The writer thread: drains the queue in batches, appends to each environment's active
//! segment, writes drop markers, rotates segments and enforces retention.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::query::{segment_name, segments};
use crate::record::LogRecord;
use crate::{create_private_dir, Msg, Retention, Shared};

/// Most records handled between two flushes of the files.
const BATCH: usize = 8192;

struct Active {
    path: PathBuf,
    file: BufWriter<File>,
    bytes: u64,
    dirty: bool,
}

pub(crate) struct Writer {
    root: PathBuf,
    retention: Retention,
    shared: Arc<Shared>,
    active: HashMap<Uuid, Active>,
    last_id: u64,
    last_retention: Instant,
    line: Vec<u8>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn now_millis() -> i64 {
    i64::try_from(now_micros() / 1000).unwrap_or(i64::MAX)
}

impl Writer {
    pub fn new(root: PathBuf, retention: Retention, shared: Arc<Shared>) -> Self {
        Writer {
            root,
            retention,
            shared,
            active: HashMap::new(),
            last_id: 0,
            last_retention: Instant::now(),
            line: Vec::with_capacity(512),
        }
    }

    pub fn run(mut self, receiver: Receiver<Msg>) {
        self.enforce_retention();
        loop {
            let first = match receiver.recv_timeout(Duration::from_millis(200)) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(msg) = first {
                self.handle(msg);
                for _ in 1..BATCH {
                    match receiver.try_recv() {
                        Ok(msg) => self.handle(msg),
                        Err(_) => break,
                    }
                }
            }
            self.write_drop_markers();
            self.flush_all();
            if self.last_retention.elapsed() >= self.retention.check_every {
                self.enforce_retention();
            }
        }
        self.write_drop_markers();
        self.flush_all();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Record(environment, record) => {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                self.write(environment, record)
            }
            Msg::Flush(reply) => {
                self.write_drop_markers();
                self.flush_all();
                let _ = reply.send(());
            }
            Msg::Remove(environment, reply) => {
                self.active.remove(&environment);
                if let Ok(mut pending) = self.shared.pending_drops.lock() {
                    pending.remove(&environment);
                }
                let dir = self.root.join(environment.to_string());
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %dir.display(), error = %e, "cannot delete logs");
                    }
                }
                let _ = reply.send(());
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        self.last_id = now_micros().max(self.last_id + 1);
        self.last_id
    }

    fn write(&mut self, environment: Uuid, mut record: LogRecord) {
        record.id = self.next_id();
        self.line.clear();
        if serde_json::to_writer(&mut self.line, &record).is_err() {
            return;
        }
        self.line.push(b'\n');
        if !self.active.contains_key(&environment) {
            match self.open_segment(environment, record.id) {
                Some(active) => {
                    self.active.insert(environment, active);
                }
                None => {
                    self.shared.add_drops_silently(1);
                    return;
                }
            }
        }
        let Some(active) = self.active.get_mut(&environment) else {
            return;
        };
        if let Err(e) = active.file.write_all(&self.line) {
            tracing::warn!(path = %active.path.display(), error = %e, "cannot write logs");
            self.shared.add_drops_silently(1);
            self.active.remove(&environment);
            return;
        }
        active.bytes += self.line.len() as u64;
        active.dirty = true;
        self.shared.written.fetch_add(1, Ordering::Relaxed);
        if active.bytes >= self.retention.segment_bytes {
            // Full: close it; the next record opens a new one. Then trim to the size cap.
            if let Some(mut full) = self.active.remove(&environment) {
                let _ = full.file.flush();
            }
            self.enforce_environment(environment, false);
        }
    }

    fn open_segment(&self, environment: Uuid, first_id: u64) -> Option<Active> {
        let dir = self.root.join(environment.to_string());
        if let Err(e) = create_private_dir(&dir) {
            tracing::warn!(error = %e, "cannot create a log directory");
            return None;
        }
        let path = dir.join(segment_name(first_id));
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => Some(Active {
                path,
                file: BufWriter::with_capacity(256 * 1024, file),
                bytes: 0,
                dirty: false,
            }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open a log segment");
                None
            }
        }
    }

    fn write_drop_markers(&mut self) {
        if !self.shared.has_drops.swap(false, Ordering::AcqRel) {
            return;
        }
        let pending: Vec<(Uuid, u64)> = match self.shared.pending_drops.lock() {
            Ok(mut pending) => pending.drain().collect(),
            Err(poisoned) => poisoned.into_inner().drain().collect(),
        };
        for (environment, n) in pending {
            self.write(environment, LogRecord::dropped_marker(now_millis(), n));
        }
    }

    fn flush_all(&mut self) {
        for active in self.active.values_mut() {
            if active.dirty {
                if let Err(e) = active.file.flush() {
                    tracing::warn!(path = %active.path.display(), error = %e, "cannot write logs");
                }
                active.dirty = false;
            }
        }
    }

    fn enforce_retention(&mut self) {
        self.last_retention = Instant::now();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let environments: Vec<Uuid> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| Uuid::parse_str(n).ok()))
            .collect();
        for environment in environments {
            self.enforce_environment(environment, true);
        }
    }

    /// Deletes an environment's oldest segments beyond the size cap and, when `ages`,
    /// segments whose last write is older than the age limit.
    fn enforce_environment(&mut self, environment: Uuid, ages: bool) {
        let dir = self.root.join(environment.to_string());
        let Ok(mut list) = segments(&dir) else {
            return;
        };
        let active_path = self.active.get(&environment).map(|a| a.path.clone());
        let cutoff = SystemTime::now().checked_sub(self.retention.max_age);
        let mut total: u64 = list.iter().map(|s| s.bytes).sum();
        // Oldest first.
        list.sort_by_key(|s| s.first_id);
        for segment in list {
            let is_active = active_path.as_ref() == Some(&segment.path);
            let too_old =
                ages && cutoff.is_some_and(|cutoff| segment.modified.is_some_and(|m| m < cutoff));
            let too_big = total > self.retention.max_bytes && !is_active;
            if !(too_old || too_big) {
                continue;
            }
            if is_active {
                self.active.remove(&environment);
            }
            match std::fs::remove_file(&segment.path) {
                Ok(()) => total = total.saturating_sub(segment.bytes),
                Err(e) => {
                    tracing::warn!(path = %segment.path.display(), error = %e, "cannot delete an old log segment");
                }
            }
        }
    }
}

impl Shared {
    /// Counts records lost by the writer itself (IO failures) in the global counter only:
    /// they cannot be written as a marker to a log that cannot be written.
    fn add_drops_silently(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}
