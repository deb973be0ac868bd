//! Credential primitives, with no HTTP and no SQL.
//!
//! * [`password`]: argon2id hashing at OWASP's minimum or above (m = 19 MiB, t = 2, p = 1).
//! * [`keys`]: the instance's signing key, generated on first start and kept in a 0600 file,
//!   so no default or hard-coded secret exists anywhere.
//! * [`access`]: short-lived signed access tokens (JWT, HS256) naming a user and a session.
//! * [`opaque`]: high-entropy opaque tokens (refresh tokens, personal API tokens) that are shown
//!   once and stored only as SHA-256 digests.

pub mod access;
pub mod keys;
pub mod opaque;
pub mod password;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The password hasher rejected its inputs or parameters.
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// A stored hash is not a valid PHC string.
    #[error("stored password hash is malformed")]
    MalformedHash,
    /// An access token is forged or malformed.
    #[error("access token is invalid")]
    InvalidAccessToken,
    /// An access token was genuine but its lifetime is over.
    #[error("access token has expired")]
    ExpiredAccessToken,
    /// Signing an access token failed.
    #[error("could not sign access token: {0}")]
    Signing(String),
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The file involved.
        path: std::path::PathBuf,
        /// The IO failure.
        source: std::io::Error,
    },
    /// The key file exists but holds something that is not a key.
    #[error("key file {path} is corrupt (expected {expected} bytes); move it aside to generate a new key, which signs out every session")]
    CorruptKey {
        /// The file involved.
        path: std::path::PathBuf,
        /// The expected key length.
        expected: usize,
    },
}
