//! Reading an environment's segments: the last N matching records, or those after a cursor.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::record::LogRecord;
use crate::LogError;

/// Records returned when a query names no limit.
pub const DEFAULT_LIMIT: usize = 1000;
/// Most records one query returns.
pub const MAX_LIMIT: usize = 10_000;

/// Lines may be read a little before they are written (`at` is when the runtime read the
/// line, the id when the writer stored it): segments are skipped by time only with this slack.
const SLACK_MICROS: u64 = 10 * 60 * 1_000_000;

/// What to return from an environment's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only records printed at or after this time (Unix ms).
    pub since: Option<i64>,
    /// Only records after this id (following); then the *first* `limit` matches are returned.
    pub after: Option<u64>,
    /// Only this process type (`web`, `worker`, `release`, `run`, `build`).
    pub process: Option<String>,
    /// Only lines of this release.
    pub release: Option<u64>,
    /// Only lines containing this text (case-sensitive). Drop markers match every
    /// `process`, `release` and `grep` filter.
    pub grep: Option<String>,
    /// Most records to return (capped at [`MAX_LIMIT`]; 0 means [`DEFAULT_LIMIT`]).
    pub limit: usize,
}

impl Query {
    fn matches(&self, record: &LogRecord) -> bool {
        if self.after.is_some_and(|after| record.id <= after) {
            return false;
        }
        if self.since.is_some_and(|since| record.at < since) {
            return false;
        }
        // Drop markers pass every content filter: whatever the view, it may have a gap they
        // explain.
        if record.dropped.is_some() {
            return true;
        }
        if let Some(process) = &self.process {
            if record.process != *process {
                return false;
            }
        }
        if let Some(release) = self.release {
            if record.release != Some(release) {
                return false;
            }
        }
        if let Some(grep) = &self.grep {
            if !record.line.contains(grep.as_str()) {
                return false;
            }
        }
        true
    }

    fn limit(&self) -> usize {
        match self.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        }
    }
}

/// One segment file.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub path: PathBuf,
    pub first_id: u64,
    pub bytes: u64,
    pub modified: Option<SystemTime>,
}

/// File name of the segment whose first record has `first_id`.
pub(crate) fn segment_name(first_id: u64) -> String {
    format!("{first_id:020}.ndjson")
}

/// An environment's segments, oldest first (none when it has no directory).
pub(crate) fn segments(dir: &Path) -> Result<Vec<Segment>, LogError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io(dir, e)),
    };
    let mut list = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(first_id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".ndjson"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let meta = entry.metadata().ok();
        list.push(Segment {
            path: entry.path(),
            first_id,
            bytes: meta.as_ref().map(|m| m.len()).unwrap_or(0),
            modified: meta.and_then(|m| m.modified().ok()),
        });
    }
    list.sort_by_key(|s| s.first_id);
    Ok(list)
}

/// Reads the matching records of one segment, in order. A segment deleted meanwhile by
/// retention reads as empty; a torn last line (crash, or a write in progress) is skipped.
fn read_segment(
    segment: &Segment,
    query: &Query,
    out: &mut Vec<LogRecord>,
) -> Result<(), LogError> {
    let file = match File::open(&segment.path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LogError::io(&segment.path, e)),
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut line = Vec::with_capacity(512);
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(LogError::io(&segment.path, e)),
        }
        if line.last() != Some(&b'\n') {
            break; // being written: the next read gets it whole
        }
        if let Ok(record) = serde_json::from_slice::<LogRecord>(&line) {
            if query.matches(&record) {
                out.push(record);
            }
        }
    }
    Ok(())
}

pub(crate) fn run(dir: &Path, query: &Query) -> Result<Vec<LogRecord>, LogError> {
    let list = segments(dir)?;
    let limit = query.limit();
    // Segment i holds ids in [first_i, first_{i+1}).
    let next_first: Vec<Option<u64>> = (0..list.len())
        .map(|i| list.get(i + 1).map(|s| s.first_id))
        .collect();
    let useful = |i: usize| -> bool {
        let Some(next) = next_first.get(i).copied().flatten() else {
            return true; // the newest segment can hold anything
        };
        if query
            .after
            .is_some_and(|after| next <= after.saturating_add(1))
        {
            return false;
        }
        if let Some(since) = query.since {
            let since_micros = u64::try_from(since).unwrap_or(0).saturating_mul(1000);
            if next.saturating_add(SLACK_MICROS) < since_micros {
                return false;
            }
        }
        true
    };
    if query.after.is_some() {
        // Forward from the cursor: the first `limit` matches.
        let mut out = Vec::new();
        for (i, segment) in list.iter().enumerate() {
            if !useful(i) {
                continue;
            }
            read_segment(segment, query, &mut out)?;
            if content_count(&out) >= limit {
                break;
            }
        }
        keep_first(&mut out, limit);
        return Ok(out);
    }
    // Tail: newest segments first until `limit` matches are found.
    let mut chunks: VecDeque<Vec<LogRecord>> = VecDeque::new();
    let mut found = 0;
    for (i, segment) in list.iter().enumerate().rev() {
        if !useful(i) {
            break;
        }
        let mut chunk = Vec::new();
        read_segment(segment, query, &mut chunk)?;
        found += content_count(&chunk);
        chunks.push_front(chunk);
        if found >= limit {
            break;
        }
    }
    let mut out: Vec<LogRecord> = chunks.into_iter().flatten().collect();
    keep_last(&mut out, limit);
    Ok(out)
}

/// Records that are lines, not drop markers: only they count toward a query's limit, so a
/// storm of drops cannot push every real match out of a view.
fn content_count(records: &[LogRecord]) -> usize {
    records.iter().filter(|r| r.dropped.is_none()).count()
}

/// Keeps the first `limit` lines and the drop markers among them and right after them.
fn keep_first(records: &mut Vec<LogRecord>, limit: usize) {
    let mut lines = 0;
    let end = records
        .iter()
        .position(|r| {
            if r.dropped.is_none() {
                lines += 1;
            }
            lines > limit
        })
        .unwrap_or(records.len());
    records.truncate(end);
    coalesce_markers(records);
}

/// Keeps the last `limit` lines and the drop markers among and after them; markers before
/// the first kept line explain a gap outside the view and go too.
fn keep_last(records: &mut Vec<LogRecord>, limit: usize) {
    let total = content_count(records);
    if total > limit {
        let mut skipped = 0;
        let start = records
            .iter()
            .position(|r| {
                if r.dropped.is_none() {
                    skipped += 1;
                }
                skipped > total - limit
            })
            .unwrap_or(records.len());
        records.drain(..start);
    }
    coalesce_markers(records);
}

/// Merges drop markers with no line between them into the last of them (its id and time,
/// their summed count), so a view holds one note per gap however the drops were recorded.
fn coalesce_markers(records: &mut Vec<LogRecord>) {
    let mut merged: Vec<LogRecord> = Vec::with_capacity(records.len());
    for record in records.drain(..) {
        let previous_count = merged.last().and_then(|previous| previous.dropped);
        match (previous_count, record.dropped) {
            (Some(before), Some(now)) => {
                let total = before.saturating_add(now);
                let mut note = LogRecord::dropped_marker(record.at, total);
                note.id = record.id;
                merged.pop();
                merged.push(note);
            }
            _ => merged.push(record),
        }
    }
    *records = merged;
}
