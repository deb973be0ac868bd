//! Log capture. An instance's stdout and stderr are append-only files in its state directory
//! (not pipes: a pipe to the server would SIGPIPE the app when the server dies). The runtime
//! tails them, splits lines, and remembers the byte offset it has delivered up to in
//! `offsets.json`, so a restarted server resumes where the old one stopped (at-least-once:
//! up to one save interval of lines may be delivered twice).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::record::InstancePaths;
use crate::host::write_atomic;
use crate::spec::LogStream;

/// Longest line kept whole; longer output is cut into pieces of this size.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Most bytes read from one stream per poll, so a chatty app cannot starve the runtime.
const MAX_READ_PER_POLL: usize = 1024 * 1024;
/// How often delivered offsets are persisted.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Serialize, Deserialize)]
struct Offsets {
    stdout: u64,
    stderr: u64,
}

#[derive(Debug)]
struct Source {
    stream: LogStream,
    path: PathBuf,
    file: Option<File>,
    /// Bytes of the file read so far.
    offset: u64,
    /// Bytes read after the last newline.
    partial: Vec<u8>,
}

impl Source {
    fn committed_offset(&self) -> u64 {
        self.offset.saturating_sub(self.partial.len() as u64)
    }

    fn poll(
        &mut self,
        flush_partial: bool,
        max_file_bytes: u64,
        out: &mut Vec<(LogStream, String)>,
    ) {
        if self.file.is_none() {
            self.file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .ok();
        }
        let Some(file) = &self.file else { return };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Truncated behind our back: start over.
            self.offset = 0;
            self.partial.clear();
        }
        let mut budget = MAX_READ_PER_POLL;
        let mut buf = vec![0u8; 64 * 1024];
        while self.offset < len && budget > 0 {
            let want = buf.len().min(budget);
            let Some(chunk) = buf.get_mut(..want) else {
                break;
            };
            let n = match file.read_at(chunk, self.offset) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.offset += n as u64;
            budget = budget.saturating_sub(n);
            for &byte in &chunk[..n] {
                if byte == b'\n' {
                    out.push((self.stream, take_line(&mut self.partial)));
                } else {
                    self.partial.push(byte);
                    if self.partial.len() >= MAX_LINE_BYTES {
                        out.push((self.stream, take_line(&mut self.partial)));
                    }
                }
            }
        }
        if flush_partial && !self.partial.is_empty() {
            out.push((self.stream, take_line(&mut self.partial)));
        }
        if self.partial.is_empty() && self.offset >= len && self.offset > max_file_bytes {
            // Everything delivered: start the file over so it cannot fill the disk. The child
            // writes with O_APPEND, so its next write lands at the new end. Lines written
            // between our read and the truncate are lost; that window is one syscall wide.
            if file.set_len(0).is_ok() {
                self.offset = 0;
            }
        }
    }
}

fn take_line(partial: &mut Vec<u8>) -> String {
    let mut line = String::from_utf8_lossy(partial).into_owned();
    partial.clear();
    if line.ends_with('\r') {
        line.pop();
    }
    line
}

/// Tails one instance's two log files.
#[derive(Debug)]
pub(crate) struct LogTailer {
    sources: [Source; 2],
    offsets_path: PathBuf,
    last_saved: Instant,
    saved: (u64, u64),
    max_file_bytes: u64,
}

impl LogTailer {
    /// A tailer for `paths`; with `resume` it continues from the persisted offsets.
    pub fn new(paths: &InstancePaths, resume: bool, max_file_bytes: u64) -> Self {
        let offsets: Offsets = if resume {
            std::fs::read(paths.offsets())
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or_default()
        } else {
            Offsets::default()
        };
        let source = |stream, path, offset| Source {
            stream,
            path,
            file: None,
            offset,
            partial: Vec::new(),
        };
        LogTailer {
            sources: [
                source(LogStream::Stdout, paths.stdout(), offsets.stdout),
                source(LogStream::Stderr, paths.stderr(), offsets.stderr),
            ],
            offsets_path: paths.offsets(),
            last_saved: Instant::now(),
            saved: (offsets.stdout, offsets.stderr),
            max_file_bytes,
        }
    }

    /// Reads new complete lines; `flush_partial` also returns an unterminated last line
    /// (used once the process has exited).
    pub fn poll(&mut self, flush_partial: bool) -> Vec<(LogStream, String)> {
        let mut out = Vec::new();
        for source in &mut self.sources {
            source.poll(flush_partial, self.max_file_bytes, &mut out);
        }
        self.save_offsets(flush_partial);
        out
    }

    fn save_offsets(&mut self, force: bool) {
        let current = (
            self.sources[0].committed_offset(),
            self.sources[1].committed_offset(),
        );
        if current == self.saved || (!force && self.last_saved.elapsed() < SAVE_INTERVAL) {
            return;
        }
        let offsets = Offsets {
            stdout: current.0,
            stderr: current.1,
        };
        let Ok(bytes) = serde_json::to_vec(&offsets) else {
            return;
        };
        match write_atomic(&self.offsets_path, &bytes) {
            Ok(()) => {
                self.saved = current;
                self.last_saved = Instant::now();
            }
            Err(err) => tracing::warn!(error = %err, "cannot save log offsets"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::spec::InstanceId;

    fn setup() -> (tempfile::TempDir, InstancePaths) {
        let dir = tempfile::tempdir().unwrap();
        let id = InstanceId::parse("i-test").unwrap();
        let paths = InstancePaths::new(dir.path(), &id);
        std::fs::create_dir_all(&paths.dir).unwrap();
        (dir, paths)
    }

    fn append(path: &std::path::Path, bytes: &[u8]) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(bytes).unwrap();
    }

    fn texts(lines: Vec<(LogStream, String)>) -> Vec<String> {
        lines.into_iter().map(|(_, line)| line).collect()
    }

    #[test]
    fn splits_lines_keeps_partials_and_flushes_at_exit() {
        let (_dir, paths) = setup();
        let mut tailer = LogTailer::new(&paths, false, u64::MAX);
        assert!(tailer.poll(false).is_empty(), "no files yet");
        append(&paths.stdout(), b"one\r\ntwo\nthr");
        append(&paths.stderr(), b"caf\xc3\xa9 \xff\n");
        let lines = tailer.poll(false);
        assert_eq!(
            lines,
            [
                (LogStream::Stdout, "one".to_owned()),
                (LogStream::Stdout, "two".to_owned()),
                (LogStream::Stderr, "caf\u{e9} \u{fffd}".to_owned()),
            ]
        );
        append(&paths.stdout(), b"ee");
        assert!(tailer.poll(false).is_empty(), "partial line held back");
        assert_eq!(texts(tailer.poll(true)), ["three"]);
    }

    #[test]
    fn cuts_very_long_lines() {
        let (_dir, paths) = setup();
        let mut tailer = LogTailer::new(&paths, false, u64::MAX);
        let long = vec![b'a'; MAX_LINE_BYTES * 2 + 10];
        append(&paths.stdout(), &long);
        append(&paths.stdout(), b"\n");
        let lens: Vec<usize> = tailer.poll(false).iter().map(|(_, l)| l.len()).collect();
        assert_eq!(lens, [MAX_LINE_BYTES, MAX_LINE_BYTES, 10]);
    }

    #[test]
    fn resumes_from_saved_offsets_after_a_restart() {
        let (_dir, paths) = setup();
        let mut first = LogTailer::new(&paths, false, u64::MAX);
        append(&paths.stdout(), b"a\nb\npart");
        assert_eq!(texts(first.poll(false)), ["a", "b"]);
        first.save_offsets(true);
        drop(first);
        append(&paths.stdout(), b"ial\nc\n");
        let mut second = LogTailer::new(&paths, true, u64::MAX);
        assert_eq!(texts(second.poll(false)), ["partial", "c"]);
        // Without resume, everything is read from the start.
        let mut fresh = LogTailer::new(&paths, false, u64::MAX);
        assert_eq!(texts(fresh.poll(false)), ["a", "b", "partial", "c"]);
    }

    #[test]
    fn truncates_a_fully_read_file_past_the_size_cap() {
        let (_dir, paths) = setup();
        let mut tailer = LogTailer::new(&paths, false, 16);
        append(&paths.stdout(), b"0123456789\n0123456789\n");
        assert_eq!(tailer.poll(false).len(), 2);
        assert_eq!(std::fs::metadata(paths.stdout()).unwrap().len(), 0);
        append(&paths.stdout(), b"after\n");
        assert_eq!(texts(tailer.poll(false)), ["after"]);
    }
}
