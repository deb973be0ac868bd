//! One stored log line ([`LogRecord`]) and how JSON lines become fields.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `process` of the marker records that count dropped lines.
pub const DROPPED_PROCESS: &str = "gilgal";

/// Longest line kept whole in a record; longer text is cut (runtimes already split lines at
/// 16 KiB, builds may not).
const MAX_LINE_BYTES: usize = 16 * 1024;

/// One line of an environment's log, as stored and as returned by queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Position in the environment's log, assigned by the writer: strictly increasing, a
    /// microsecond timestamp of the write (0 before it is written). Cursor for following.
    #[serde(default)]
    pub id: u64,
    /// When the line was printed (read by the runtime), Unix milliseconds.
    pub at: i64,
    /// Procfile process type (`web`, `worker`), `release`, `run` (one-off and cron), `build`,
    /// or [`DROPPED_PROCESS`] for Gilgal's own markers.
    pub process: String,
    /// Instance id that printed it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Release number the instance ran, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<u64>,
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    /// The text, without its newline.
    pub line: String,
    /// When the line is a JSON object: its fields (the text is kept too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Map<String, Value>>,
    /// On marker records: how many lines were dropped since the previous marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
}

impl LogRecord {
    /// A record of `line`, with its JSON fields parsed when it is a JSON object.
    pub fn new(
        at: i64,
        process: impl Into<String>,
        stream: impl Into<String>,
        line: impl Into<String>,
    ) -> Self {
        let mut line = line.into();
        if line.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        let fields = json_fields(&line);
        LogRecord {
            id: 0,
            at,
            process: process.into(),
            instance: None,
            release: None,
            stream: stream.into(),
            line,
            fields,
            dropped: None,
        }
    }

    /// The same record tagged with the instance and release that printed it.
    pub fn from_instance(mut self, instance: impl Into<String>, release: Option<u64>) -> Self {
        self.instance = Some(instance.into());
        self.release = release;
        self
    }

    /// A marker saying `n` lines were dropped.
    pub fn dropped_marker(at: i64, n: u64) -> Self {
        let mut record = LogRecord::new(
            at,
            DROPPED_PROCESS,
            "system",
            format!("gilgal: {n} log lines were dropped (the app printed faster than they could be stored)"),
        );
        record.dropped = Some(n);
        record
    }
}

/// The fields of a line that is a JSON object (leading/trailing spaces allowed), else `None`.
fn json_fields(line: &str) -> Option<Map<String, Value>> {
    let trimmed = line.trim();
    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
        return None;
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}
