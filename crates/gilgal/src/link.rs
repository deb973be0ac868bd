//! Project linking: `gilgal link -p NAME [-e ENV]` ties a directory (and every directory
//! below it) to a project and environment, so commands run there need no `-p`/`-e`. Links
//! live in the CLI's config dir (`links.json`, keyed by absolute directory), never in the
//! project's tree, so nothing to commit or leak.
//!
//! Before arguments are parsed, the nearest linked directory's project and environment become
//! `GILGAL_PROJECT` and `GILGAL_ENV` (unless already set), which `-p`/`-e` read as defaults:
//! a flag wins over the environment, the environment over the link.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Default of every `--project`: set by the user, or from the directory's link.
pub const PROJECT_VAR: &str = "GILGAL_PROJECT";
/// Default of every `--env` that names the environment to act on.
pub const ENV_VAR: &str = "GILGAL_ENV";

/// What a directory is linked to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Project name.
    pub project: String,
    /// Environment name (`production` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

fn path() -> anyhow::Result<PathBuf> {
    Ok(crate::credentials::config_dir()?.join("links.json"))
}

/// Every link, by absolute directory.
pub fn load_all() -> anyhow::Result<BTreeMap<PathBuf, Link>> {
    let path = path()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is corrupt; delete it and link again", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Replaces every link (written atomically, 0600).
pub fn save_all(links: &BTreeMap<PathBuf, Link>) -> anyhow::Result<PathBuf> {
    let path = path()?;
    let bytes = serde_json::to_vec_pretty(links)?;
    gilgal_auth::keys::write_secret_file(&path, &bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// The link of `dir` or of its nearest linked ancestor.
pub fn find(links: &BTreeMap<PathBuf, Link>, dir: &Path) -> Option<(PathBuf, Link)> {
    dir.ancestors()
        .find_map(|ancestor| Some((ancestor.to_owned(), links.get(ancestor)?.clone())))
}

/// The working directory, absolute and with symlinks resolved (how links are keyed).
pub fn current_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::current_dir().context("cannot read the working directory")?;
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// Makes the working directory's link the default of `-p`/`-e` (see the module docs).
/// A missing or unreadable link file links nothing; commands then ask for `-p`.
///
/// Must run before any thread starts (it edits the environment).
pub fn export_defaults() {
    let (Ok(links), Ok(dir)) = (load_all(), current_dir()) else {
        return;
    };
    let Some((_, link)) = find(&links, &dir) else {
        return;
    };
    // A project named on the command line or in the environment is not the linked one: the
    // linked environment must not follow it there.
    if std::env::var_os(PROJECT_VAR).is_some() || names_a_project(std::env::args().skip(1)) {
        return;
    }
    std::env::set_var(PROJECT_VAR, &link.project);
    if let (Some(env), None) = (&link.env, std::env::var_os(ENV_VAR)) {
        std::env::set_var(ENV_VAR, env);
    }
}

/// Whether the arguments (up to a `--`, after which they belong to a one-off command) pass
/// `-p`/`--project`.
fn names_a_project(args: impl Iterator<Item = String>) -> bool {
    args.take_while(|arg| arg != "--").any(|arg| {
        arg == "--project"
            || arg.starts_with("--project=")
            || (arg.starts_with("-p") && !arg.starts_with("--"))
    })
}

/// Removes the defaults again: `gilgal server` and `gilgal edge` pass no link on to what
/// they start.
pub fn forget_defaults() {
    std::env::remove_var(PROJECT_VAR);
    std::env::remove_var(ENV_VAR);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|a| (*a).to_owned())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn a_project_on_the_command_line_is_seen_before_a_double_dash_only() {
        assert!(names_a_project(args(&["env", "list", "-p", "x"])));
        assert!(names_a_project(args(&["env", "list", "-px"])));
        assert!(names_a_project(args(&["env", "list", "--project=x"])));
        assert!(names_a_project(args(&["env", "list", "--project", "x"])));
        assert!(!names_a_project(args(&["env", "list"])));
        assert!(!names_a_project(args(&["run", "--", "tool", "-p", "1"])));
        assert!(!names_a_project(args(&["logs", "--follow"])));
    }

    #[test]
    fn the_nearest_linked_ancestor_wins() {
        let mut links = BTreeMap::new();
        let link = |project: &str| Link {
            project: project.to_owned(),
            env: None,
        };
        links.insert(PathBuf::from("/src"), link("outer"));
        links.insert(PathBuf::from("/src/app"), link("inner"));
        let found = |dir: &str| find(&links, Path::new(dir)).map(|(_, l)| l.project);
        assert_eq!(found("/src/app/web").as_deref(), Some("inner"));
        assert_eq!(found("/src/other").as_deref(), Some("outer"));
        assert_eq!(found("/elsewhere"), None);
    }
}
