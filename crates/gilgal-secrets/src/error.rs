//! The one error type of this crate. Messages never contain key bytes or secret values.

use std::path::PathBuf;

use crate::KeyId;

/// Everything that can go wrong in this crate, each with what to do next.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A master key file could not be read or written.
    #[error("master key file {path}: {source}")]
    KeyFile {
        /// The file involved.
        path: PathBuf,
        /// The IO failure.
        source: std::io::Error,
    },
    /// A master key file can be read by other users, so the key must be treated as exposed;
    /// it is refused rather than silently tightened so that someone looks at how it happened.
    #[error(
        "master key file {path} is readable or writable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}` and treat the key as leaked if another user could read it"
    )]
    KeyFileExposed {
        /// The file involved.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A master key file exists but does not hold a key (truncated, or some other file).
    #[error(
        "master key file {path} holds {len} bytes instead of a {expected}-byte key; restore it \
         from a backup (secrets it protects cannot be decrypted without it)"
    )]
    KeyFileLength {
        /// The file involved.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The length of a key.
        expected: usize,
    },
    /// `master.key.next` exists without `master.key`, which the rotation protocol never
    /// produces; guessing which key is current could lose data, so a person has to decide.
    #[error(
        "{next} exists but {path} does not; restore {path} from a backup, or if the rotation \
         had been committed, rename {next} to {path}"
    )]
    CurrentKeyMissing {
        /// The missing current key file.
        path: PathBuf,
        /// The pending key file that exists.
        next: PathBuf,
    },
    /// A wrapped data key was made by a master key that is not loaded.
    #[error(
        "wrapped data key was made by master key {found}, but the loaded master key is {}; \
         start with the key file whose id is {found} (was the key file replaced, or a \
         rotation undone?)",
        join_ids(loaded)
    )]
    WrongMasterKey {
        /// The key id recorded in the wrapped key.
        found: KeyId,
        /// The ids of the master keys that were tried.
        loaded: Vec<KeyId>,
    },
    /// A stored string is not in the format this crate writes.
    #[error(
        "{what} is malformed ({reason}); it was not written by gilgal-secrets or was cut short"
    )]
    Malformed {
        /// What was being parsed: "wrapped data key" or "sealed value".
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Authentication failed: the ciphertext was modified, or opened with another key or
    /// other associated data (another environment or variable).
    #[error(
        "{what} could not be decrypted: it was modified, or it belongs to another environment \
         or variable"
    )]
    Decrypt {
        /// What was being opened: "wrapped data key" or "sealed value".
        what: &'static str,
    },
    /// The cipher refused the input (over 256 GiB); never happens with config values.
    #[error("the value is too large to encrypt")]
    TooLarge,
    /// [`crate::Rotation::commit`] was called while some stored data keys are still wrapped by
    /// the old master key; committing would make them unreadable.
    #[error(
        "key rotation is not finished: {remaining} stored data key(s) are still wrapped by \
         master key {old}; rewrap them with Rotation::rewrap, store them, then commit again"
    )]
    RotationIncomplete {
        /// How many stored keys still use the old master key.
        remaining: usize,
        /// The old master key's id.
        old: KeyId,
    },
    /// The redactor's automaton could not be built (only with absurdly many or long secrets).
    #[error("could not build the secret redactor: {0}")]
    Redactor(String),
}

fn join_ids(ids: &[KeyId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}
