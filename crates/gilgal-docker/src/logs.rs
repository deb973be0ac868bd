//! Log capture through dockerd's logs API (`follow=true`, `timestamps=true`): each line comes
//! with the time Docker's log driver received it, which is also the resume cursor after a
//! server restart (lines already delivered are skipped by timestamp, so a restart neither loses
//! nor repeats lines, except several lines sharing one nanosecond timestamp).

use bollard::container::LogOutput;
use gilgal_runtime::LogStream;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Longest line kept whole; longer output is cut into pieces of this size.
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;

/// Splits Docker log frames into timestamped lines. Docker sends one frame per log message
/// (a line, or a piece of a line longer than 16 KiB), each prefixed with
/// `2024-05-01T10:00:00.123456789Z `; frames are kept per stream until a newline ends them.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawLine {
    pub stream: LogStream,
    pub at: OffsetDateTime,
    pub text: String,
}

impl LineSplitter {
    /// Feeds one frame; returns the complete lines it finished.
    pub fn push(&mut self, frame: LogOutput) -> Vec<RawLine> {
        let (stream, bytes) = match frame {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                (LogStream::Stdout, message)
            }
            LogOutput::StdErr { message } => (LogStream::Stderr, message),
            LogOutput::StdIn { .. } => return Vec::new(),
        };
        let buffer = match stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        };
        buffer.extend_from_slice(&bytes);
        let mut out = Vec::new();
        while let Some(newline) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=newline).collect();
            let line = line.get(..line.len().saturating_sub(1)).unwrap_or_default();
            out.extend(parse_line(stream, line));
        }
        // A frame without a newline is a partial line; Docker prefixes each frame with its own
        // timestamp, so flush it as soon as it is long enough to be a split line.
        if buffer.len() >= MAX_LINE_BYTES {
            let line = std::mem::take(buffer);
            out.extend(parse_line(stream, &line));
        }
        out
    }

    /// Whatever is left without a newline (when the stream ended).
    pub fn flush(&mut self) -> Vec<RawLine> {
        let mut out = Vec::new();
        for (stream, buffer) in [
            (LogStream::Stdout, &mut self.stdout),
            (LogStream::Stderr, &mut self.stderr),
        ] {
            if !buffer.is_empty() {
                let line = std::mem::take(buffer);
                out.extend(parse_line(stream, &line));
            }
        }
        out
    }
}

/// Parses `<RFC 3339 timestamp> <text>`; a line without a valid timestamp gets "now".
fn parse_line(stream: LogStream, line: &[u8]) -> Option<RawLine> {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let (at, rest) = match text.split_once(' ') {
        Some((stamp, rest)) => match OffsetDateTime::parse(stamp, &Rfc3339) {
            Ok(at) => (at, rest),
            Err(_) => (OffsetDateTime::now_utc(), text),
        },
        None => match OffsetDateTime::parse(text, &Rfc3339) {
            // A timestamp alone is an empty line.
            Ok(at) => (at, ""),
            Err(_) => (OffsetDateTime::now_utc(), text),
        },
    };
    let mut rest = rest.to_owned();
    if rest.len() > MAX_LINE_BYTES {
        let mut cut = MAX_LINE_BYTES;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        rest.truncate(cut);
    }
    Some(RawLine {
        stream,
        at,
        text: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn out(text: &str) -> LogOutput {
        LogOutput::StdOut {
            message: Bytes::copy_from_slice(text.as_bytes()),
        }
    }

    #[test]
    fn splits_frames_into_timestamped_lines() {
        let mut splitter = LineSplitter::default();
        let lines = splitter.push(out("2024-05-01T10:00:00.123456789Z hello world\n"));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].text, "hello world");
        assert_eq!(lines[0].at.nanosecond(), 123_456_789);
        assert!(splitter
            .push(out("2024-05-01T10:00:01Z partial"))
            .is_empty());
        let rest = splitter.flush();
        assert_eq!(rest[0].text, "partial");
        let lines = splitter.push(LogOutput::StdErr {
            message: Bytes::from_static(b"2024-05-01T10:00:02Z \n"),
        });
        assert_eq!(lines[0].text, "");
        assert_eq!(lines[0].stream, LogStream::Stderr);
    }

    #[test]
    fn line_without_timestamp_is_kept() {
        let mut splitter = LineSplitter::default();
        let lines = splitter.push(out("no stamp here\n"));
        assert_eq!(lines[0].text, "no stamp here");
    }
}
