//! The master key, per-environment data keys, and the text forms stored in the database.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::aead::{self, random, KEY_LEN, OVERHEAD};
use crate::{file, SecretsError};

/// Version tag that starts every stored string, so the format can change later.
const VERSION: &str = "v1";
/// Associated-data prefix of wrapped data keys (domain separation from sealed values).
const WRAP_AAD: &[u8] = b"gilgal-secrets/v1/data-key\0";
/// Associated-data prefix of sealed values.
const VALUE_AAD: &[u8] = b"gilgal-secrets/v1/value\0";
/// Decoded length of a wrapped data key.
const WRAPPED_LEN: usize = KEY_LEN + OVERHEAD;
const WRAPPED: &str = "wrapped data key";
const SEALED: &str = "sealed value";

/// Short public fingerprint of a master key (first 4 bytes of a domain-separated SHA-256,
/// shown as 8 hex digits), stored in every wrapped key so the right master key is picked
/// during a rotation and a wrong one is named in the error instead of failing obscurely.
/// Reveals nothing useful about the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 4]);

impl KeyId {
    fn of(key: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"gilgal-secrets master key id\0")
            .chain_update(key)
            .finalize();
        Self([digest[0], digest[1], digest[2], digest[3]])
    }

    fn parse(s: &str) -> Option<Self> {
        if s.len() != 8 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut id = [0u8; 4];
        hex::decode_to_slice(s, &mut id).ok()?;
        Some(Self(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The instance's key-encryption key: it only wraps [`DataKey`]s. It lives in a 0600 file
/// outside the database so that a database dump or backup alone reveals no secret.
pub struct MasterKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    id: KeyId,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A fresh random key from the OS RNG, for first start and rotation (panics only if the OS
    /// has no working RNG).
    pub fn generate() -> Self {
        Self::from_secret(Zeroizing::new(random()))
    }

    pub(crate) fn from_secret(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let id = KeyId::of(&bytes);
        Self { bytes, id }
    }

    /// Loads the key file at `path`, which must exist, be exactly 32 bytes, and not be
    /// accessible by group or others; used where creating a key would be wrong (rotation).
    pub fn load(path: &Path) -> Result<Self, SecretsError> {
        match file::read_key(path)? {
            Some(bytes) => Ok(Self::from_secret(bytes)),
            None => Err(SecretsError::KeyFile {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "it does not exist"),
            }),
        }
    }

    /// Loads the key file at `path`, or on first start generates a key and writes it with mode
    /// 0600 (temp file + fsync + link + directory fsync, never replacing a file that appeared
    /// meanwhile). Refuses a file that group or others can access, or of the wrong length.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretsError> {
        Self::load_or_create_unlike(path, None)
    }

    /// [`MasterKey::load_or_create`], where a created key must not share `unlike`'s key id.
    pub(crate) fn load_or_create_unlike(
        path: &Path,
        unlike: Option<KeyId>,
    ) -> Result<Self, SecretsError> {
        loop {
            if let Some(bytes) = file::read_key(path)? {
                return Ok(Self::from_secret(bytes));
            }
            let key = loop {
                let key = Self::generate();
                if Some(key.id) != unlike {
                    break key;
                }
            };
            if file::create_key(path, &key.bytes)? {
                return Ok(key);
            }
            // Another process created the file first: use its key.
        }
    }

    /// This key's id, as recorded in every key it wraps.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Encrypts a data key for storage in the database; the result names this key's id.
    pub fn wrap(&self, data_key: &DataKey) -> WrappedKey {
        let aad = wrap_aad(self.id);
        let sealed = aead::seal(&self.bytes, &aad, &data_key.bytes[..])
            .expect("a 32-byte key is far below the cipher's length limit");
        WrappedKey {
            text: format!("{VERSION}:{}:{}", self.id, URL_SAFE_NO_PAD.encode(sealed)),
            key_id: self.id,
        }
    }

    /// Decrypts a wrapped data key. A key wrapped by another master key is reported as
    /// [`SecretsError::WrongMasterKey`]; a modified one as [`SecretsError::Decrypt`].
    pub fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, SecretsError> {
        if wrapped.key_id != self.id {
            return Err(SecretsError::WrongMasterKey {
                found: wrapped.key_id,
                loaded: vec![self.id],
            });
        }
        let sealed = wrapped.payload()?;
        let opened = aead::open(&self.bytes, &wrap_aad(self.id), &sealed)
            .ok_or(SecretsError::Decrypt { what: WRAPPED })?;
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&opened);
        Ok(DataKey { bytes })
    }
}

fn wrap_aad(id: KeyId) -> Vec<u8> {
    let mut aad = WRAP_AAD.to_vec();
    aad.extend_from_slice(id.to_string().as_bytes());
    aad
}

/// One environment's value-encryption key. Each environment has its own so that a leaked or
/// misused key exposes one environment, and so rotation only re-wraps one key per
/// environment. Zeroed on drop.
#[derive(Clone)]
pub struct DataKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// A fresh random key from the OS RNG, for a new environment (panics only if the OS has no
    /// working RNG).
    pub fn generate() -> Self {
        Self {
            bytes: Zeroizing::new(random()),
        }
    }

    /// Encrypts a secret value. `associated_data` is authenticated but not stored: pass
    /// [`associated_data`]`(environment_id, var_name)` so that the ciphertext only opens for
    /// that variable of that environment. Every call uses a fresh random nonce, so sealing the
    /// same value twice gives different strings.
    pub fn seal(&self, value: &str, associated_data: &[u8]) -> Result<SealedValue, SecretsError> {
        let sealed = aead::seal(&self.bytes, &value_aad(associated_data), value.as_bytes())
            .map_err(|_| SecretsError::TooLarge)?;
        Ok(SealedValue(format!(
            "{VERSION}:{}",
            URL_SAFE_NO_PAD.encode(sealed)
        )))
    }

    /// Decrypts a sealed value, given the same associated data it was sealed with. A modified
    /// value, another environment's key, or another variable's associated data all give
    /// [`SecretsError::Decrypt`]. The plaintext is zeroed when the result is dropped.
    pub fn open(
        &self,
        sealed: &SealedValue,
        associated_data: &[u8],
    ) -> Result<Zeroizing<String>, SecretsError> {
        let bytes = sealed.payload()?;
        let mut opened = aead::open(&self.bytes, &value_aad(associated_data), &bytes)
            .ok_or(SecretsError::Decrypt { what: SEALED })?;
        match String::from_utf8(std::mem::take(&mut *opened)) {
            Ok(value) => Ok(Zeroizing::new(value)),
            Err(e) => {
                // Authentic but not UTF-8: only possible if something else sealed it.
                drop(Zeroizing::new(e.into_bytes()));
                Err(SecretsError::Malformed {
                    what: SEALED,
                    reason: "plaintext is not UTF-8",
                })
            }
        }
    }
}

fn value_aad(associated_data: &[u8]) -> Vec<u8> {
    let mut aad = VALUE_AAD.to_vec();
    aad.extend_from_slice(associated_data);
    aad
}

/// The associated data that binds a sealed value to one variable of one environment, for
/// [`DataKey::seal`] and [`DataKey::open`]. The environment id is length-prefixed, so no two
/// different (environment, name) pairs give the same bytes.
pub fn associated_data(environment_id: &str, var_name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + environment_id.len() + var_name.len());
    aad.extend_from_slice(&(environment_id.len() as u64).to_be_bytes());
    aad.extend_from_slice(environment_id.as_bytes());
    aad.extend_from_slice(var_name.as_bytes());
    aad
}

/// A [`DataKey`] encrypted by a [`MasterKey`], as stored in the database:
/// `v1:<master key id>:<base64url of nonce, ciphertext and tag>`. Parsing checks the shape, so
/// a value of this type always names a key id.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    text: String,
    key_id: KeyId,
}

impl WrappedKey {
    /// Parses a wrapped key read back from storage.
    pub fn parse(text: &str) -> Result<Self, SecretsError> {
        let malformed = |reason| SecretsError::Malformed {
            what: WRAPPED,
            reason,
        };
        let mut parts = text.splitn(3, ':');
        let (Some(version), Some(id), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected v1:<key id>:<data>"));
        };
        if version != VERSION {
            return Err(malformed("unknown version, expected v1"));
        }
        let key_id = KeyId::parse(id).ok_or(malformed("key id is not 8 lowercase hex digits"))?;
        let decoded = decode(payload).ok_or(malformed("data is not base64url"))?;
        if decoded.len() != WRAPPED_LEN {
            return Err(malformed("data has the wrong length"));
        }
        Ok(Self {
            text: text.to_owned(),
            key_id,
        })
    }

    /// The id of the master key that wrapped this key.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The text to store.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn payload(&self) -> Result<Vec<u8>, SecretsError> {
        self.text
            .rsplit(':')
            .next()
            .and_then(decode)
            .ok_or(SecretsError::Malformed {
                what: WRAPPED,
                reason: "data is not base64url",
            })
    }
}

impl FromStr for WrappedKey {
    type Err = SecretsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A secret value encrypted by a [`DataKey`], as stored in the database:
/// `v1:<base64url of nonce, ciphertext and tag>`. Reveals only the value's length.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedValue(String);

impl SealedValue {
    /// Parses a sealed value read back from storage.
    pub fn parse(text: &str) -> Result<Self, SecretsError> {
        let malformed = |reason| SecretsError::Malformed {
            what: SEALED,
            reason,
        };
        let payload = text
            .strip_prefix(VERSION)
            .and_then(|rest| rest.strip_prefix(':'))
            .ok_or(malformed("expected v1:<data>"))?;
        let decoded = decode(payload).ok_or(malformed("data is not base64url"))?;
        if decoded.len() < OVERHEAD {
            return Err(malformed("data is too short"));
        }
        Ok(Self(text.to_owned()))
    }

    /// The text to store.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn payload(&self) -> Result<Vec<u8>, SecretsError> {
        self.0
            .strip_prefix("v1:")
            .and_then(decode)
            .ok_or(SecretsError::Malformed {
                what: SEALED,
                reason: "data is not base64url",
            })
    }
}

impl FromStr for SealedValue {
    type Err = SecretsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedValue(..)")
    }
}

fn decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_key_text_shape() {
        let master = MasterKey::generate();
        let wrapped = master.wrap(&DataKey::generate());
        let parts: Vec<_> = wrapped.as_str().split(':').collect();
        assert_eq!(parts[0], "v1");
        assert_eq!(parts[1], master.id().to_string());
        assert_eq!(parts[1].len(), 8);
        assert_eq!(parts[2].len(), 96); // 72 bytes of base64 without padding
        assert_eq!(WrappedKey::parse(wrapped.as_str()).unwrap(), wrapped);
        assert_eq!(wrapped.key_id(), master.id());
    }

    #[test]
    fn malformed_strings_are_refused_at_parse() {
        let good = MasterKey::generate().wrap(&DataKey::generate()).to_string();
        let (_, rest) = good.split_at(3);
        for bad in [
            String::new(),
            "v1".into(),
            format!("v2:{rest}"),
            good.replacen(&good[3..11], "ABCDEF01", 1),
            good.replacen(&good[3..11], "abc", 1),
            format!("{good}A"),
            good[..good.len() - 4].to_string(),
            format!("{}*", &good[..good.len() - 1]),
        ] {
            assert!(
                matches!(WrappedKey::parse(&bad), Err(SecretsError::Malformed { .. })),
                "accepted {bad:?}"
            );
        }
        for bad in [
            "",
            "v1",
            "v1:",
            "v1:AAAA",
            "v0:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(SealedValue::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn key_id_is_stable_and_differs_between_keys() {
        let a = MasterKey::generate();
        assert_eq!(KeyId::of(&a.bytes), a.id());
        assert_ne!(MasterKey::generate().id(), a.id());
        assert_eq!(KeyId::parse(&a.id().to_string()), Some(a.id()));
    }

    #[test]
    fn associated_data_is_unambiguous() {
        assert_ne!(associated_data("ab", "c"), associated_data("a", "bc"));
        assert_ne!(associated_data("", "ab"), associated_data("ab", ""));
        assert_eq!(associated_data("env", "X"), associated_data("env", "X"));
    }

    #[test]
    fn debug_never_shows_key_bytes_or_values() {
        let master = MasterKey::generate();
        let data = DataKey::generate();
        let sealed = data.seal("hunter2-password", b"").unwrap();
        let opened = data.open(&sealed, b"").unwrap();
        let shown = format!("{master:?} {data:?} {sealed:?} {:?}", master.wrap(&data));
        assert!(shown.contains(&master.id().to_string()));
        assert!(!shown.contains(&hex::encode(&master.bytes[..])));
        assert!(!shown.contains(&hex::encode(&data.bytes[..])));
        assert!(!shown.contains(sealed.as_str()));
        assert!(!shown.contains(opened.as_str()));
    }

    #[test]
    fn sealed_value_survives_storage_as_text() {
        let data = DataKey::generate();
        let sealed = data.seal("x", b"").unwrap();
        let reparsed = SealedValue::parse(sealed.as_str()).unwrap();
        assert_eq!(&*data.open(&reparsed, b"").unwrap(), "x");
    }
}
