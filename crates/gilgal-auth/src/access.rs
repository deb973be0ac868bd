//! Short-lived signed access tokens.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::keys::SigningKey;
use crate::AuthError;

/// Issuer and audience claim, so tokens of another system signed with a shared key never pass.
const ISSUER: &str = "gilgal";

/// The claims inside an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user id.
    pub sub: Uuid,
    /// The session (refresh-token family) it was issued for; logging out revokes it.
    pub sid: Uuid,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
    /// Issuer, always `gilgal`.
    pub iss: String,
}

/// Signs and verifies access tokens with the instance key.
#[derive(Clone)]
pub struct AccessTokenCodec {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for AccessTokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessTokenCodec")
    }
}

impl AccessTokenCodec {
    /// A codec over the instance signing key.
    pub fn new(key: &SigningKey) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        Self {
            encoding: EncodingKey::from_secret(key.as_bytes()),
            decoding: DecodingKey::from_secret(key.as_bytes()),
            validation,
        }
    }

    /// Issues a token for `user` in session `session`, valid `ttl_secs` from `now_secs`.
    pub fn issue(
        &self,
        user: Uuid,
        session: Uuid,
        now_secs: u64,
        ttl_secs: u64,
    ) -> Result<String, AuthError> {
        let claims = AccessClaims {
            sub: user,
            sid: session,
            iat: now_secs,
            exp: now_secs + ttl_secs,
            iss: ISSUER.to_owned(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }

    /// Verifies signature, issuer and expiry, returning the claims.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::ExpiredAccessToken,
                _ => AuthError::InvalidAccessToken,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn round_trips_and_rejects_expired_and_foreign_tokens() {
        let codec = AccessTokenCodec::new(&SigningKey::generate());
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let token = codec.issue(user, session, now(), 60).unwrap();
        let claims = codec.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (user, session));

        let expired = codec.issue(user, session, now() - 120, 60).unwrap();
        assert!(matches!(
            codec.verify(&expired),
            Err(AuthError::ExpiredAccessToken)
        ));

        let other = AccessTokenCodec::new(&SigningKey::generate());
        assert!(other.verify(&token).is_err());
        assert!(codec.verify("garbage").is_err());
    }
}
