//! Key files: read with permission and length checks, created whole-or-not-at-all without ever
//! replacing an existing key, replaced atomically when a rotation commits.
//!
//! This is deliberately not `gilgal_auth::write_secret_file`: that helper renames over an
//! existing file, and for a master key the loser of a creation race (two processes starting at
//! once) would silently replace a key that may already protect data. Creation here links the
//! finished temp file into place, which fails if the name exists. It also keeps this crate free
//! of gilgal-auth's argon2/JWT dependencies.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use zeroize::Zeroizing;

use crate::aead::{random, KEY_LEN};
use crate::SecretsError;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SecretsError + '_ {
    move |source| SecretsError::KeyFile {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a key file; `Ok(None)` when it does not exist. Refuses files that group or others
/// can access, and files that are not exactly one key long.
pub(crate) fn read_key(path: &Path) -> Result<Option<Zeroizing<[u8; KEY_LEN]>>, SecretsError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    // Checked on the open file, so what is checked is what is read.
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(io_err(path)(io::Error::other("not a regular file")));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretsError::KeyFileExposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(SecretsError::KeyFileLength {
            path: path.to_path_buf(),
            len: meta.len(),
            expected: KEY_LEN,
        });
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    file.read_exact(&mut key[..]).map_err(io_err(path))?;
    Ok(Some(key))
}

/// Writes `key` to `path` with mode 0600 unless `path` already exists: temp file, fsync, hard
/// link into place (fails if the name is taken), fsync of the directory. Returns `false`, and
/// writes nothing, when another key file got there first.
pub(crate) fn create_key(path: &Path, key: &[u8; KEY_LEN]) -> Result<bool, SecretsError> {
    let dir = parent_dir(path);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(path))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("master.key");
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        hex::encode(random::<4>())
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(key)?;
        file.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    // The temp name never outlives this call (a crash here leaves at most a 0600 file that
    // shares the data dir's protection).
    let _ = fs::remove_file(&tmp);
    match result {
        Ok(()) => {
            sync_dir(dir).map_err(io_err(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Renames `from` over `to` (atomic on one filesystem) and fsyncs the directory, so after a
/// crash either the old or the new file is at `to`, whole.
pub(crate) fn replace(from: &Path, to: &Path) -> Result<(), SecretsError> {
    fs::rename(from, to).map_err(io_err(to))?;
    sync_dir(parent_dir(to)).map_err(io_err(to))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_never_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        assert!(create_key(&path, &[1; KEY_LEN]).unwrap());
        assert!(!create_key(&path, &[2; KEY_LEN]).unwrap());
        assert_eq!(*read_key(&path).unwrap().unwrap(), [1; KEY_LEN]);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["master.key"]);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_key(&dir.path().join("nope")).unwrap().is_none());
    }

    #[test]
    fn group_or_other_access_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        create_key(&path, &[3; KEY_LEN]).unwrap();
        for mode in [0o620, 0o602, 0o640] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert!(matches!(
                read_key(&path),
                Err(SecretsError::KeyFileExposed { mode: m, .. }) if m == mode
            ));
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_key(&path).unwrap().is_some());
    }

    #[test]
    fn a_directory_is_not_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        DirBuilder::new().mode(0o700).create(&path).unwrap();
        assert!(matches!(read_key(&path), Err(SecretsError::KeyFile { .. })));
    }
}
