//! Procfile parsing: the list of process types an app runs and their commands.
//!
//! Format (Heroku-compatible subset): one `name: command` per line, blank lines and lines
//! starting with `#` ignored. Names match `[a-z][a-z0-9_-]{0,29}`. `web` is the process that
//! receives `$PORT` and HTTP traffic; `release` is special: it runs once, from the new build,
//! before any instance of the new release starts. An app without `web` (worker-only) is valid.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{CommandError, CommandLine};

/// The longest process-type name accepted; keeps names usable in unit names and log prefixes.
pub const MAX_PROCESS_TYPE_LEN: usize = 30;

/// A validated process-type name such as `web` or `worker`; exists so an invalid name can never
/// reach the runtime, the store or a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProcessType(String);

/// Why a process-type name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid process type `{0}`: use 1 to 30 characters of a-z, 0-9, `_` and `-`, starting with a letter")]
pub struct ProcessTypeError(pub String);

impl ProcessType {
    /// Validates `name` against `[a-z][a-z0-9_-]{0,29}`.
    pub fn new(name: &str) -> Result<Self, ProcessTypeError> {
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            && name.len() <= MAX_PROCESS_TYPE_LEN;
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(ProcessTypeError(name.to_owned()))
        }
    }

    /// The `web` process type, which gets `$PORT` and traffic through the proxy.
    pub fn web() -> Self {
        Self("web".to_owned())
    }

    /// The `release` process type, run once before a rollout instead of being kept running.
    pub fn release() -> Self {
        Self("release".to_owned())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `web`: the one type that binds `$PORT` and is health-checked over the network.
    pub fn is_web(&self) -> bool {
        self.0 == "web"
    }

    /// True for `release`: run once per deploy, never supervised as a long-running instance.
    pub fn is_release(&self) -> bool {
        self.0 == "release"
    }
}

impl fmt::Display for ProcessType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ProcessType {
    type Error = ProcessTypeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<ProcessType> for String {
    fn from(value: ProcessType) -> Self {
        value.0
    }
}

/// One line of a Procfile; keeps the line number so later checks can still point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcfileEntry {
    /// The process type named on the line.
    pub process_type: ProcessType,
    /// The parsed command.
    pub command: CommandLine,
    /// 1-based line number in the Procfile.
    pub line: usize,
}

/// A parsed Procfile, in file order; exists so processes are validated at build time, not at boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Procfile {
    /// Entries in the order they appear.
    pub entries: Vec<ProcfileEntry>,
}

/// A Procfile problem; every variant names the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcfileError {
    /// The line is not `name: command`.
    #[error("Procfile line {line}: expected `name: command`")]
    MissingColon {
        /// 1-based line number.
        line: usize,
    },
    /// The process-type name is invalid.
    #[error("Procfile line {line}: {source}")]
    InvalidName {
        /// 1-based line number.
        line: usize,
        /// What is wrong with the name.
        source: ProcessTypeError,
    },
    /// The same process type appears twice.
    #[error("Procfile line {line}: process type `{name}` is already defined on line {first_line}")]
    Duplicate {
        /// 1-based line number of the repeat.
        line: usize,
        /// The repeated name.
        name: String,
        /// 1-based line number of the first definition.
        first_line: usize,
    },
    /// The command cannot be run without a shell, or is empty.
    #[error("Procfile line {line} (`{name}`): {source}")]
    InvalidCommand {
        /// 1-based line number.
        line: usize,
        /// The process type whose command is bad.
        name: String,
        /// The command problem.
        source: CommandError,
    },
}

impl Procfile {
    /// Parses Procfile text.
    pub fn parse(text: &str) -> Result<Self, ProcfileError> {
        let mut entries: Vec<ProcfileEntry> = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw_line) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw_line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((name, command)) = trimmed.split_once(':') else {
                return Err(ProcfileError::MissingColon { line });
            };
            let name = name.trim();
            let process_type = ProcessType::new(name)
                .map_err(|source| ProcfileError::InvalidName { line, source })?;
            if let Some(first) = entries.iter().find(|e| e.process_type == process_type) {
                return Err(ProcfileError::Duplicate {
                    line,
                    name: name.to_owned(),
                    first_line: first.line,
                });
            }
            let command =
                CommandLine::parse(command).map_err(|source| ProcfileError::InvalidCommand {
                    line,
                    name: name.to_owned(),
                    source,
                })?;
            entries.push(ProcfileEntry {
                process_type,
                command,
                line,
            });
        }
        Ok(Self { entries })
    }

    /// The command for `process_type`, if the Procfile defines it.
    pub fn get(&self, process_type: &ProcessType) -> Option<&CommandLine> {
        self.entries
            .iter()
            .find(|entry| &entry.process_type == process_type)
            .map(|entry| &entry.command)
    }
}
