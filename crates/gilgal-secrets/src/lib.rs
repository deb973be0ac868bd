//! Secret config vars at rest, and keeping them out of logs. No database, no HTTP.
//!
//! # Envelope encryption
//!
//! * A [`MasterKey`] (32 random bytes) lives in a file outside the database, mode 0600
//!   ([`MasterKey::load_or_create`]). Stealing a database dump alone reveals no secret.
//! * Each environment has its own [`DataKey`]. The database stores it only wrapped (encrypted)
//!   by the master key, as a [`WrappedKey`] string `v1:<key id>:<base64>`.
//! * Each secret value is sealed by its environment's data key into a [`SealedValue`] string
//!   `v1:<base64>`. The associated data given to [`DataKey::seal`] (use [`associated_data`] with
//!   the environment id and the variable name) is authenticated, so a ciphertext copied to
//!   another variable or environment fails to open instead of decrypting there.
//!
//! The cipher is XChaCha20-Poly1305: its 24-byte nonces are drawn at random from the OS RNG for
//! every encryption, with no counter to persist and no practical risk of a repeat.
//!
//! Every wrapped key carries the 8-hex-digit [`KeyId`] of the master key that wrapped it, so a
//! wrong, replaced or rotated master key is reported as [`SecretsError::WrongMasterKey`]
//! naming both ids, never as a garbage decryption.
//!
//! # Key rotation (`gilgal admin rotate-key`)
//!
//! Rotation replaces the master key. Only the data keys are re-wrapped; the values stay sealed
//! under their unchanged data keys, so a rotation touches one row per environment. The
//! protocol survives a crash at any point:
//!
//! 1. [`Rotation::begin`] loads `master.key` and creates `master.key.next` (0600, temp file +
//!    fsync + link, so the file is either whole or absent). If `.next` already exists, an
//!    earlier rotation was interrupted and is resumed with that same key: some data keys may
//!    already be wrapped by it.
//! 2. The caller re-wraps every stored wrapped data key with [`Rotation::rewrap`] (idempotent:
//!    keys already under the new key are returned unchanged) and stores the results durably.
//! 3. [`Rotation::commit`] is given every wrapped key as now stored; it refuses if any cannot be
//!    opened by the new key, then renames `.next` over `master.key` and fsyncs the directory.
//!
//! On start the server loads a [`KeyRing`] ([`KeyRing::load_or_create`]): `master.key` plus
//! `master.key.next` when it exists, and opens each wrapped key with whichever master key its
//! key id names. So after a crash between steps 1 and 3 every data key is still readable, old
//! or new; running the rotation again finishes it. While a rotation is pending the key ring
//! wraps new data keys with the next key, so rotations only ever roll forward.
//!
//! Rotation must not race a server that wraps new data keys with the old key: run it while the
//! server is stopped (or have the server take the same lock), and restart the server after the
//! commit, since a running server keeps the old key in memory. Back up the new key file: a
//! master key that is lost makes every secret it protects unrecoverable.
//!
//! # Redaction
//!
//! [`Redactor`] replaces every occurrence of any secret value (and of its usual encodings) in a
//! text with [`REDACTED`]; it is meant for build logs, app logs and error messages. Values
//! shorter than [`MIN_REDACTED_LEN`] bytes are not redacted.
//!
//! # Memory
//!
//! Key bytes and opened values are zeroed when dropped ([`zeroize`]); `Debug` never prints key
//! bytes, plaintext or ciphertext.

#![warn(missing_docs)]

mod aead;
mod error;
mod file;
mod keys;
mod redact;
mod rotation;

pub use error::SecretsError;
pub use keys::{associated_data, DataKey, KeyId, MasterKey, SealedValue, WrappedKey};
pub use redact::{Redactor, MIN_REDACTED_LEN, REDACTED};
pub use rotation::{pending_key_path, rewrap, KeyRing, Rotation};
pub use zeroize::Zeroizing;
