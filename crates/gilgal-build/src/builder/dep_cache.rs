//! A per-app store of installed dependency trees (Python venvs, `node_modules`), keyed by a
//! hash of everything that determines their content, so an unchanged dependency set is copied
//! instead of installed again.
//!
//! Entries are written to a staging directory and renamed into place, and only count once their
//! `<key>.complete` marker exists, so a crash mid-store never yields a half-written entry. The
//! marker's modification time records the last use; the least recently used entries beyond
//! [`ENTRIES_KEPT`] are pruned.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::fsops::{copy_tree, Rewrite};
use super::runner::StepRunner;
use super::{io_error, BuildError};

/// Entries kept per store.
pub(crate) const ENTRIES_KEPT: usize = 3;

/// Selects the files whose content embeds the tree's absolute location.
pub(crate) type LocationBound = fn(&Path) -> bool;

/// One store directory, e.g. `<cache>/python/venvs`.
pub(crate) struct DependencyStore {
    dir: PathBuf,
    what: &'static str,
}

impl DependencyStore {
    /// A store in `dir`; `what` names its content in log lines ("venv", "node_modules").
    pub fn new(dir: PathBuf, what: &'static str) -> Self {
        Self { dir, what }
    }

    fn marker(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.complete"))
    }

    /// The stored tree for `key`, if complete; marks it as used.
    pub fn lookup(&self, key: &str) -> Option<PathBuf> {
        let marker = self.marker(key);
        let tree = self.dir.join(key);
        if !marker.is_file() || !tree.is_dir() {
            return None;
        }
        let _ = fs::File::open(&marker).and_then(|file| file.set_modified(SystemTime::now()));
        Some(tree)
    }

    /// Copies a stored tree to `dest`, rewriting its location in `location_bound` files.
    pub async fn restore(
        &self,
        stored: &Path,
        dest: &Path,
        location_bound: Option<LocationBound>,
    ) -> Result<(), BuildError> {
        copy_relocated(stored, dest, dest, location_bound).await
    }

    /// Keeps a copy of `tree` under `key`; failures only cost speed next time, so they are
    /// logged, not returned.
    pub async fn store(
        &self,
        runner: &StepRunner,
        tree: &Path,
        key: &str,
        location_bound: Option<LocationBound>,
    ) {
        // Unique per store call, so concurrent builds of the same app never share a staging dir.
        static NEXT_STAGING: AtomicU64 = AtomicU64::new(0);
        let serial = NEXT_STAGING.fetch_add(1, Ordering::Relaxed);
        let staging = self
            .dir
            .join(format!(".staging-{key}-{}-{serial}", std::process::id()));
        let final_path = self.dir.join(key);
        let stored = async {
            fs::create_dir_all(&self.dir).map_err(io_error("cannot create", &self.dir))?;
            remove_tree(&staging)?;
            copy_relocated(tree, &staging, &final_path, location_bound).await?;
            let marker = self.marker(key);
            if marker.is_file() {
                // A concurrent build stored the same key first; keep theirs.
                return remove_tree(&staging);
            }
            remove_tree(&final_path)?;
            fs::rename(&staging, &final_path).map_err(io_error("cannot store", &final_path))?;
            fs::write(&marker, b"").map_err(io_error("cannot write", &marker))
        }
        .await;
        match stored {
            Ok(()) => {
                self.prune();
                runner
                    .log
                    .system(format!(
                        "stored the {} in the app's build cache for the next deploy",
                        self.what
                    ))
                    .await;
            }
            Err(err) => {
                let _ = remove_tree(&staging);
                runner
                    .log
                    .system(format!("could not cache the {}: {err}", self.what))
                    .await;
            }
        }
    }

    /// Removes all but the [`ENTRIES_KEPT`] most recently used entries.
    fn prune(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut markers: Vec<(SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let path = entry.path();
                if path.extension()? != "complete" {
                    return None;
                }
                Some((entry.metadata().ok()?.modified().ok()?, path))
            })
            .collect();
        markers.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        for (_, marker) in markers.into_iter().skip(ENTRIES_KEPT) {
            // Marker first: an entry without its marker is ignored even if removal stops halfway.
            if fs::remove_file(&marker).is_ok() {
                let _ = fs::remove_dir_all(marker.with_extension(""));
            }
        }
    }
}

/// Copies `from` to `to`; files selected by `location_bound` that mention `from`'s absolute
/// path get `location` instead (the final path, which differs from `to` while staging).
async fn copy_relocated(
    from: &Path,
    to: &Path,
    location: &Path,
    location_bound: Option<LocationBound>,
) -> Result<(), BuildError> {
    let (from, to, location) = (from.to_owned(), to.to_owned(), location.to_owned());
    let target = to.clone();
    tokio::task::spawn_blocking(move || {
        let from_bytes = from.as_os_str().as_encoded_bytes().to_vec();
        let to_bytes = location.as_os_str().as_encoded_bytes().to_vec();
        let rewrite = location_bound.map(|applies| Rewrite {
            from: &from_bytes,
            to: &to_bytes,
            applies,
        });
        copy_tree(&from, &to, rewrite.as_ref())
    })
    .await
    .map_err(|err| BuildError::Internal(err.to_string()))?
    .map_err(io_error("cannot copy dependencies to", &target))
}

/// Removes a file or directory tree if it exists.
pub(crate) fn remove_tree(path: &Path) -> Result<(), BuildError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    result.map_err(io_error("cannot remove", path))
}
