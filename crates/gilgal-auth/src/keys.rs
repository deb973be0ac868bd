//! The instance signing key: generated on first start, kept in a 0600 file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::AuthError;

/// Length of the HMAC key for access tokens (256 bits doubled for HS256 margin).
pub const SIGNING_KEY_LEN: usize = 64;

/// Secret key material for signing access tokens; never logged (no `Debug` of the bytes).
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Fresh random key, for tests and first start.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; SIGNING_KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Raw bytes, for the token codec.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Loads the key at `path`, or generates and writes one (0600, temp file + fsync + rename,
    /// so a crash never leaves a torn key) when the file does not exist.
    pub fn load_or_generate(path: &Path) -> Result<Self, AuthError> {
        let io_err = |source| AuthError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        match fs::read(path) {
            Ok(bytes) if bytes.len() == SIGNING_KEY_LEN => {
                // Tighten permissions if someone loosened them.
                fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
                Ok(Self(bytes))
            }
            Ok(_) => Err(AuthError::CorruptKey {
                path: path.to_path_buf(),
                expected: SIGNING_KEY_LEN,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                write_secret_file(path, key.as_bytes()).map_err(io_err)?;
                Ok(key)
            }
            Err(e) => Err(io_err(e)),
        }
    }
}

/// Writes `bytes` to `path` atomically with mode 0600: temp file, fsync, rename, fsync dir.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret"),
        std::process::id()
    ));
    {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_0600_and_reloads_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.key");
        let first = SigningKey::load_or_generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = SigningKey::load_or_generate(&path).unwrap();
        assert_eq!(first.as_bytes(), second.as_bytes());
        assert_eq!(first.as_bytes().len(), SIGNING_KEY_LEN);
    }

    #[test]
    fn corrupt_key_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            SigningKey::load_or_generate(&path),
            Err(AuthError::CorruptKey { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), b"short");
    }
}
