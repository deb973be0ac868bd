//! Opaque bearer secrets (refresh tokens and personal API tokens), stored only as digests.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Prefix of personal API tokens, so they are recognisable in leaks and by secret scanners.
pub const API_TOKEN_PREFIX: &str = "gilgal_pat_";
/// Prefix of refresh tokens.
pub const REFRESH_TOKEN_PREFIX: &str = "gilgal_rt_";
/// Prefix of team invitation secrets.
pub const INVITATION_PREFIX: &str = "gilgal_inv_";
/// How many characters of a token are kept in clear to tell tokens apart.
pub const DISPLAY_PREFIX_LEN: usize = 16;

/// 256 random bits, URL-safe base64.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A freshly minted opaque token: the secret to show once, and what to store.
#[derive(Debug, Clone)]
pub struct MintedToken {
    /// The full secret, shown to the user once.
    pub secret: String,
    /// Hex SHA-256 of the secret, the only thing stored. The secret has 256 bits of entropy,
    /// so a fast hash is enough (no password stretching needed).
    pub digest: String,
    /// The first characters, for listing.
    pub display_prefix: String,
}

/// Mints a token with the given recognisable prefix.
pub fn mint(prefix: &str) -> MintedToken {
    let secret = format!("{prefix}{}", random_secret());
    MintedToken {
        digest: digest(&secret),
        display_prefix: secret.chars().take(DISPLAY_PREFIX_LEN).collect(),
        secret,
    }
}

/// The stored form of a presented token.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_are_unique_prefixed_and_digest_stable() {
        let a = mint(API_TOKEN_PREFIX);
        let b = mint(API_TOKEN_PREFIX);
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(API_TOKEN_PREFIX));
        assert_eq!(digest(&a.secret), a.digest);
        assert_eq!(a.digest.len(), 64);
        assert!(!a.digest.contains(&a.secret));
        assert_eq!(a.display_prefix.len(), DISPLAY_PREFIX_LEN);
    }
}
