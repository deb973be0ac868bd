//! Stack detection: which builder turns a source tree into a release.
//!
//! An ordered list of file checks decides, first match wins ([`DETECTION_RULES`]);
//! `[build] builder` in `gilgal.toml` overrides it, and a `[build] command` alone (no file
//! matched) selects the [`Stack::Command`] builder.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::EffectiveConfig;

/// The kind of app, which selects the builder; exists so the pipeline can say what it built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stack {
    /// A venv with pip-installed dependencies.
    Python,
    /// `npm ci` / `npm install`, then `npm run build` when defined.
    Node,
    /// `cargo build --release`.
    Rust,
    /// Files served by the proxy itself; no process.
    Static,
    /// Only the `[build] command` from gilgal.toml.
    Command,
}

impl Stack {
    /// The name used in gilgal.toml and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Stack::Python => "python",
            Stack::Node => "node",
            Stack::Rust => "rust",
            Stack::Static => "static",
            Stack::Command => "command",
        }
    }
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ordered file checks: the first file that exists at the source root decides the stack.
pub const DETECTION_RULES: &[(&str, Stack)] = &[
    ("requirements.txt", Stack::Python),
    ("pyproject.toml", Stack::Python),
    ("package.json", Stack::Node),
    ("Cargo.toml", Stack::Rust),
    ("index.html", Stack::Static),
];

/// Nothing told Gilgal how to build the app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot tell how to build the app in {}: looked for {} (in this order) and found none; \
     add one of them, or set `[build] builder` or `[build] command` in gilgal.toml",
    dir.display(),
    looked_for.join(", ")
)]
pub struct DetectError {
    /// The directory that was inspected.
    pub dir: PathBuf,
    /// The files that were looked for, in order.
    pub looked_for: Vec<String>,
}

/// Detects the stack from files alone.
pub fn detect_stack(source_dir: &Path) -> Result<Stack, DetectError> {
    DETECTION_RULES
        .iter()
        .find(|(file, _)| source_dir.join(file).is_file())
        .map(|(_, stack)| *stack)
        .ok_or_else(|| DetectError {
            dir: source_dir.to_owned(),
            looked_for: DETECTION_RULES
                .iter()
                .map(|(file, _)| (*file).to_owned())
                .collect(),
        })
}

/// Decides the stack for a deploy: `[build] builder` wins, then file detection, then a
/// `[build] command` alone selects [`Stack::Command`]; a `[static] dir` containing
/// `index.html` is also recognised as a static site.
pub fn resolve_stack(source_dir: &Path, config: &EffectiveConfig) -> Result<Stack, DetectError> {
    if let Some(stack) = config.builder {
        return Ok(stack);
    }
    match detect_stack(source_dir) {
        Ok(stack) => Ok(stack),
        Err(err) => {
            if config.build_command.is_some() {
                return Ok(Stack::Command);
            }
            if let Some(dir) = &config.static_dir {
                if source_dir.join(dir).join("index.html").is_file() {
                    return Ok(Stack::Static);
                }
            }
            Err(err)
        }
    }
}
