//! Build log lines and where they go.
//!
//! Every line a build command prints (stdout and stderr, read line by line) plus Gilgal's own
//! step announcements is sent, time-stamped, to a [`LogSink`]; the API streams them to
//! `gilgal deploy` and stores them with the deployment.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// A command's standard output.
    Stdout,
    /// A command's standard error.
    Stderr,
    /// Gilgal itself (step headers, cache decisions, timings).
    System,
}

/// One time-stamped line of build output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the line was read.
    pub at: SystemTime,
    /// Where it came from.
    pub stream: LogStream,
    /// The text, without its line ending (invalid UTF-8 replaced).
    pub text: String,
}

/// Destination of build log lines; cheap to clone. Sending waits when the receiver is slow
/// (so a build cannot outrun its log) and silently stops when the receiver is gone (a
/// disconnected viewer must not fail the build).
#[derive(Debug, Clone)]
pub struct LogSink {
    sender: Option<mpsc::Sender<LogLine>>,
}

impl LogSink {
    /// A sink feeding `sender`.
    pub fn new(sender: mpsc::Sender<LogLine>) -> Self {
        Self {
            sender: Some(sender),
        }
    }

    /// A sink that drops everything; for callers that only want the result.
    pub fn discard() -> Self {
        Self { sender: None }
    }

    /// Sends one line, stamped now.
    pub async fn send(&self, stream: LogStream, text: impl Into<String>) {
        if let Some(sender) = &self.sender {
            let line = LogLine {
                at: SystemTime::now(),
                stream,
                text: text.into(),
            };
            let _ = sender.send(line).await;
        }
    }

    /// Sends one line from Gilgal itself.
    pub async fn system(&self, text: impl Into<String>) {
        self.send(LogStream::System, text).await;
    }
}
