//! argon2id password hashing.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;

use crate::AuthError;

/// Memory cost in KiB: OWASP's minimum for argon2id (19 MiB).
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Iterations: OWASP's minimum for m = 19 MiB.
pub const ITERATIONS: u32 = 2;
/// Lanes.
pub const PARALLELISM: u32 = 1;

/// Shortest password accepted at registration.
pub const MIN_PASSWORD_LEN: usize = 10;
/// Longest password accepted (hashing cost is bounded by the hasher, this bounds memory).
pub const MAX_PASSWORD_LEN: usize = 1024;

fn hasher() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
        .map_err(|e| AuthError::Hashing(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes `password` into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
///
/// CPU-heavy (tens of milliseconds): call it from a blocking thread.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hashing(e.to_string()))
}

/// Checks `password` against a stored PHC hash, with the parameters recorded in the hash.
///
/// CPU-heavy: call it from a blocking thread.
pub fn verify_password(password: &str, stored_hash: &str) -> Result<bool, AuthError> {
    let parsed = PasswordHash::new(stored_hash).map_err(|_| AuthError::MalformedHash)?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// A valid hash of a random password, verified against when an account does not exist, so
/// that a login for an unknown email costs the same time as one with a wrong password.
pub fn timing_decoy_hash() -> Result<String, AuthError> {
    hash_password(&crate::opaque::random_secret())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_with_owasp_parameters_and_verifies() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse battery", &hash).unwrap());
        assert!(!verify_password("wrong horse battery", &hash).unwrap());
    }

    #[test]
    fn same_password_gets_different_salts() {
        assert_ne!(
            hash_password("pw-1234567890").unwrap(),
            hash_password("pw-1234567890").unwrap()
        );
    }

    #[test]
    fn malformed_hash_is_an_error_not_a_match() {
        assert!(matches!(
            verify_password("x", "not-a-hash"),
            Err(AuthError::MalformedHash)
        ));
    }
}
