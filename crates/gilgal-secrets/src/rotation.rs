//! Master key rotation that a crash cannot turn into data loss (protocol in the crate docs),
//! and the key ring a server loads so that it reads data keys from either side of a rotation.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::{file, DataKey, MasterKey, SecretsError, WrappedKey};

/// Where the next master key waits while a rotation is in progress: `<path>.next`, beside the
/// current key file so the final rename stays on one filesystem (and is atomic).
pub fn pending_key_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".next");
    PathBuf::from(name)
}

/// The master keys a server holds: the current key file and, while a rotation is pending, the
/// next one too. It opens each wrapped key with the master key its key id names, so data keys
/// stay readable at every point of a rotation, including after a crash half-way through.
#[derive(Debug)]
pub struct KeyRing {
    current: MasterKey,
    next: Option<MasterKey>,
}

impl KeyRing {
    /// Loads `path` (creating it on first start, like [`MasterKey::load_or_create`]) and its
    /// pending `.next` key if one exists. Refuses a `.next` without the current key file, which
    /// the protocol never leaves behind.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretsError> {
        let next_path = pending_key_path(path);
        match file::read_key(&next_path)? {
            None => Ok(Self {
                current: MasterKey::load_or_create(path)?,
                next: None,
            }),
            Some(next) => Ok(Self {
                current: load_current(path, &next_path)?,
                next: Some(MasterKey::from_secret(next)),
            }),
        }
    }

    /// Whether a rotation was begun and not committed; `gilgal admin rotate-key` should then be
    /// run again to finish it.
    pub fn rotation_pending(&self) -> bool {
        self.next.is_some()
    }

    /// The key new data keys are wrapped with: the next key while a rotation is pending (so
    /// the rotation never has to go back), else the current one.
    pub fn primary(&self) -> &MasterKey {
        self.next.as_ref().unwrap_or(&self.current)
    }

    /// Wraps a new data key with [`KeyRing::primary`].
    pub fn wrap(&self, data_key: &DataKey) -> WrappedKey {
        self.primary().wrap(data_key)
    }

    /// Unwraps a data key with whichever loaded master key wrapped it, or reports
    /// [`SecretsError::WrongMasterKey`] listing the loaded key ids.
    pub fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, SecretsError> {
        let keys = std::iter::once(&self.current).chain(self.next.as_ref());
        for key in keys.clone() {
            if key.id() == wrapped.key_id() {
                return key.unwrap(wrapped);
            }
        }
        Err(SecretsError::WrongMasterKey {
            found: wrapped.key_id(),
            loaded: keys.map(MasterKey::id).collect(),
        })
    }
}

/// Loads the current key file, which must exist; naming the anomaly when only `.next` does.
fn load_current(path: &Path, next_path: &Path) -> Result<MasterKey, SecretsError> {
    if let Some(bytes) = file::read_key(path)? {
        return Ok(MasterKey::from_secret(bytes));
    }
    if next_path.exists() {
        return Err(SecretsError::CurrentKeyMissing {
            path: path.to_path_buf(),
            next: next_path.to_path_buf(),
        });
    }
    Err(SecretsError::KeyFile {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "it does not exist"),
    })
}

/// Re-wraps one data key from `old` to `new` without changing the data key itself (so the
/// values it sealed stay valid). A key already wrapped by `new` is checked and returned as is,
/// which makes re-running an interrupted rotation safe.
pub fn rewrap(
    old: &MasterKey,
    new: &MasterKey,
    wrapped: &WrappedKey,
) -> Result<WrappedKey, SecretsError> {
    if wrapped.key_id() == new.id() {
        new.unwrap(wrapped)?;
        return Ok(wrapped.clone());
    }
    if wrapped.key_id() != old.id() {
        return Err(SecretsError::WrongMasterKey {
            found: wrapped.key_id(),
            loaded: vec![old.id(), new.id()],
        });
    }
    Ok(new.wrap(&old.unwrap(wrapped)?))
}

/// A master key rotation in progress: the old key from `master.key`, the new one from
/// `master.key.next`. Begin, rewrap every stored data key, commit.
#[derive(Debug)]
pub struct Rotation {
    path: PathBuf,
    next_path: PathBuf,
    old: MasterKey,
    new: MasterKey,
}

impl Rotation {
    /// Starts a rotation of the key file at `path` (which must exist): creates `<path>.next`
    /// (0600, written whole or not at all), or resumes with the one an interrupted rotation
    /// left behind.
    pub fn begin(path: &Path) -> Result<Self, SecretsError> {
        let next_path = pending_key_path(path);
        let old = load_current(path, &next_path)?;
        let new = MasterKey::load_or_create_unlike(&next_path, Some(old.id()))?;
        Ok(Self {
            path: path.to_path_buf(),
            next_path,
            old,
            new,
        })
    }

    /// The key being retired.
    pub fn old_key(&self) -> &MasterKey {
        &self.old
    }

    /// The key that replaces it.
    pub fn new_key(&self) -> &MasterKey {
        &self.new
    }

    /// [`rewrap`] from the old key to the new one; store the result in place of `wrapped`.
    pub fn rewrap(&self, wrapped: &WrappedKey) -> Result<WrappedKey, SecretsError> {
        rewrap(&self.old, &self.new, wrapped)
    }

    /// Finishes the rotation: `stored` must be every wrapped data key as now durably stored.
    /// If any is still under the old key ([`SecretsError::RotationIncomplete`]) or cannot be
    /// opened by the new key, nothing changes. Otherwise `<path>.next` is renamed over `path`
    /// and the directory fsynced; the new key is returned. The old key is gone from disk
    /// afterwards, so a running server must be restarted to load the new one.
    pub fn commit<'a, I>(self, stored: I) -> Result<MasterKey, SecretsError>
    where
        I: IntoIterator<Item = &'a WrappedKey>,
    {
        let mut remaining = 0;
        for wrapped in stored {
            if wrapped.key_id() == self.old.id() {
                remaining += 1;
            } else {
                self.new.unwrap(wrapped)?;
            }
        }
        if remaining > 0 {
            return Err(SecretsError::RotationIncomplete {
                remaining,
                old: self.old.id(),
            });
        }
        file::replace(&self.next_path, &self.path)?;
        Ok(self.new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_path_is_a_sibling() {
        assert_eq!(
            pending_key_path(Path::new("/var/lib/gilgal/master.key")),
            Path::new("/var/lib/gilgal/master.key.next")
        );
        assert_eq!(pending_key_path(Path::new("k")), Path::new("k.next"));
    }

    #[test]
    fn rewrap_is_idempotent_and_keeps_the_data_key() {
        let (old, new) = (MasterKey::generate(), MasterKey::generate());
        let data = DataKey::generate();
        let sealed = data.seal("value", b"ad").unwrap();
        let once = rewrap(&old, &new, &old.wrap(&data)).unwrap();
        assert_eq!(once.key_id(), new.id());
        let twice = rewrap(&old, &new, &once).unwrap();
        assert_eq!(twice, once);
        assert_eq!(
            &*new.unwrap(&twice).unwrap().open(&sealed, b"ad").unwrap(),
            "value"
        );
    }

    #[test]
    fn rewrap_names_both_keys_for_a_stranger() {
        let (old, new, other) = (
            MasterKey::generate(),
            MasterKey::generate(),
            MasterKey::generate(),
        );
        let err = rewrap(&old, &new, &other.wrap(&DataKey::generate())).unwrap_err();
        match err {
            SecretsError::WrongMasterKey { found, loaded } => {
                assert_eq!(found, other.id());
                assert_eq!(loaded, [old.id(), new.id()]);
            }
            e => panic!("unexpected {e}"),
        }
    }
}
