//! Traceback detection for error grouping: Python tracebacks, Node.js stack traces and Rust
//! panics are recognised in an instance's output, line by line, and reduced to a
//! **signature** that stays the same across occurrences (and across releases that only move
//! code around): the error type and the innermost frame's file and function, without line
//! numbers or the message's variable parts.

/// One recognised traceback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traceback {
    /// Stable grouping key, e.g. `python:KeyError@app.py:do_GET`.
    pub signature: String,
    /// One line for people, e.g. `KeyError: 'missing'`.
    pub title: String,
    /// The whole traceback as printed (capped).
    pub text: String,
}

/// Most lines kept of one traceback.
const MAX_LINES: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    /// Inside `Traceback (most recent call last):`.
    Python,
    /// After a `SomethingError: …` line; `at` frames follow.
    Node {
        frames: usize,
    },
    /// After `thread '…' panicked at file:line:col:`; the message line follows.
    RustMessage {
        location: String,
    },
}

/// Feeds one stream's lines (one detector per instance and stream) and returns tracebacks as
/// they complete.
#[derive(Debug, Clone)]
pub struct TracebackDetector {
    state: State,
    lines: Vec<String>,
}

impl Default for TracebackDetector {
    fn default() -> Self {
        TracebackDetector {
            state: State::Idle,
            lines: Vec::new(),
        }
    }
}

/// `file` without directories, `line` without its number: `/srv/app/app.py` → `app.py`.
fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The Node error type of a line like `TypeError: x is not a function` or `Error: boom`.
fn node_error_type(line: &str) -> Option<&str> {
    let line = line.strip_prefix("Uncaught ").unwrap_or(line);
    let head = line.split(':').next()?;
    (head.ends_with("Error") || head.ends_with("Exception"))
        .then_some(head)
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        })
}

impl TracebackDetector {
    /// Feeds the next line; returns a traceback when this line completed one.
    pub fn feed(&mut self, line: &str) -> Option<Traceback> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => {
                self.start(line);
                None
            }
            State::Python => {
                if line.starts_with(' ') || line.starts_with('\t') || line.is_empty() {
                    self.push(line);
                    self.state = State::Python;
                    return None;
                }
                if line.starts_with("During handling of the above exception")
                    || line.starts_with("The above exception was the direct cause")
                    || line.starts_with("Traceback (most recent call last):")
                {
                    // Chained exceptions: keep collecting; the last one names the group.
                    self.push(line);
                    self.state = State::Python;
                    return None;
                }
                self.push(line);
                Some(self.finish_python(line))
            }
            State::Node { frames } => {
                if line.trim_start().starts_with("at ") && line.starts_with(' ') {
                    self.push(line);
                    self.state = State::Node { frames: frames + 1 };
                    return None;
                }
                let done = (frames > 0).then(|| self.finish_node());
                self.lines.clear();
                self.start(line);
                done
            }
            State::RustMessage { location } => {
                self.push(line);
                let done = self.finish_rust(&location, line);
                Some(done)
            }
        }
    }

    fn push(&mut self, line: &str) {
        if self.lines.len() < MAX_LINES {
            self.lines.push(line.to_owned());
        }
    }

    fn start(&mut self, line: &str) {
        self.lines.clear();
        if line.starts_with("Traceback (most recent call last):") {
            self.push(line);
            self.state = State::Python;
        } else if let Some(rest) = line
            .strip_prefix("thread '")
            .and_then(|r| r.split_once("' panicked at "))
            .map(|(_, rest)| rest)
        {
            self.push(line);
            // Since Rust 1.73: `panicked at src/main.rs:3:5:` then the message line.
            if let Some(location) = rest.strip_suffix(':') {
                self.state = State::RustMessage {
                    location: location.to_owned(),
                };
            }
        } else if node_error_type(line).is_some() {
            self.push(line);
            self.state = State::Node { frames: 0 };
        }
    }

    fn finish_python(&mut self, last: &str) -> Traceback {
        let error_type = last.split(':').next().unwrap_or(last).trim().to_owned();
        // The innermost frame: the last `File "…", line N, in func`.
        let frame = self
            .lines
            .iter()
            .rev()
            .find_map(|l| {
                let l = l.trim_start().strip_prefix("File \"")?;
                let (file, rest) = l.split_once('"')?;
                let func = rest.rsplit(" in ").next().unwrap_or("").trim();
                Some(format!("{}:{func}", base(file)))
            })
            .unwrap_or_default();
        let text = self.lines.join("\n");
        self.lines.clear();
        Traceback {
            signature: format!("python:{error_type}@{frame}"),
            title: last.trim().to_owned(),
            text,
        }
    }

    fn finish_node(&mut self) -> Traceback {
        let first = self.lines.first().cloned().unwrap_or_default();
        let error_type = node_error_type(&first).unwrap_or("Error").to_owned();
        // `    at handler (/srv/app/index.js:12:7)` or `    at /srv/app/index.js:12:7`.
        let frame = self
            .lines
            .get(1)
            .map(|l| {
                let l = l.trim_start().trim_start_matches("at ");
                let (func, location) = match l.split_once(" (") {
                    Some((func, location)) => (func, location.trim_end_matches(')')),
                    None => ("", l),
                };
                let file = location.split(':').next().unwrap_or(location);
                format!("{}:{func}", base(file))
            })
            .unwrap_or_default();
        let text = self.lines.join("\n");
        self.lines.clear();
        Traceback {
            signature: format!("node:{error_type}@{frame}"),
            title: first.trim().to_owned(),
            text,
        }
    }

    fn finish_rust(&mut self, location: &str, message: &str) -> Traceback {
        let file = location.split(':').next().unwrap_or(location);
        let text = self.lines.join("\n");
        self.lines.clear();
        Traceback {
            signature: format!("rust:panic@{file}"),
            title: format!("panic at {location}: {}", message.trim()),
            text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &str) -> Vec<Traceback> {
        let mut detector = TracebackDetector::default();
        lines.lines().filter_map(|l| detector.feed(l)).collect()
    }

    #[test]
    fn python_tracebacks_group_by_type_and_innermost_frame() {
        let first = run(r#"GET / 200
Traceback (most recent call last):
  File "/srv/app/app.py", line 80, in do_GET
    {}["missing"]
KeyError: 'missing'
next line"#);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].signature, "python:KeyError@app.py:do_GET");
        assert_eq!(first[0].title, "KeyError: 'missing'");
        assert!(first[0].text.contains("line 80"));
        // Same place, another line number and message: same group.
        let moved = run(r#"Traceback (most recent call last):
  File "/srv/app/app.py", line 93, in do_GET
    {}[key]
KeyError: 'other'"#);
        assert_eq!(moved[0].signature, first[0].signature);
        let other = run(r#"Traceback (most recent call last):
  File "/srv/app/app.py", line 99, in do_GET
    1 / 0
ZeroDivisionError: division by zero"#);
        assert_ne!(other[0].signature, first[0].signature);
    }

    #[test]
    fn node_stacks_and_rust_panics() {
        let node = run("TypeError: x is not a function\n    at handler (/srv/app/index.js:12:7)\n    at Server.emit (node:events:517:28)\nlistening");
        assert_eq!(node.len(), 1);
        assert_eq!(node[0].signature, "node:TypeError@index.js:handler");
        assert_eq!(node[0].title, "TypeError: x is not a function");
        assert!(run("Error: not a stack, no frames follow\nplain").is_empty());

        let rust = run("thread 'main' panicked at src/main.rs:3:5:\nindex out of bounds: the len is 3 but the index is 7\nnote: run with `RUST_BACKTRACE=1`");
        assert_eq!(rust.len(), 1);
        assert_eq!(rust[0].signature, "rust:panic@src/main.rs");
        assert_eq!(
            rust[0].title,
            "panic at src/main.rs:3:5: index out of bounds: the len is 3 but the index is 7"
        );
        assert!(run("all good\nnothing to see").is_empty());
    }
}
