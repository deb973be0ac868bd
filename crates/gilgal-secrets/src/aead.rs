//! XChaCha20-Poly1305 with a fresh random nonce per message, laid out as
//! `nonce (24) || ciphertext || tag (16)`. Plaintext only ever sits in buffers that are zeroed.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::XChaCha20Poly1305;
use rand::RngCore;
use zeroize::Zeroizing;

/// Length of a key for this cipher.
pub(crate) const KEY_LEN: usize = 32;
/// Length of the random nonce that starts every sealed message.
pub(crate) const NONCE_LEN: usize = 24;
/// Length of the authentication tag that ends every sealed message.
pub(crate) const TAG_LEN: usize = 16;
/// What sealing adds to the plaintext's length.
pub(crate) const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Fills a fresh buffer from the OS RNG. Panics only if the OS has no working RNG, in which
/// case no key could be made safely anyway.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// Seals `plaintext` under `key`, authenticating `aad` too. Errs only past the cipher's
/// length limit (256 GiB).
pub(crate) fn seal(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, chacha20poly1305::aead::Error> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let nonce: [u8; NONCE_LEN] = random();
    // Exact capacity: the buffer never reallocates, so no plaintext copy is left behind in a
    // freed allocation; it is zeroed if encryption fails before overwriting it.
    let mut out = Zeroizing::new(Vec::with_capacity(plaintext.len() + OVERHEAD));
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag =
        cipher.encrypt_inout_detached((&nonce).into(), aad, (&mut out[NONCE_LEN..]).into())?;
    out.extend_from_slice(&tag);
    Ok(std::mem::take(&mut *out))
}

/// Opens a message made by [`seal`]; `None` when it is too short, was modified, or was made
/// with another key or other `aad` (deliberately indistinguishable).
pub(crate) fn open(key: &[u8; KEY_LEN], aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < OVERHEAD {
        return None;
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_inout_detached(
            nonce.try_into().ok()?,
            aad,
            buf.as_mut_slice().into(),
            tag.try_into().ok()?,
        )
        .ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let key = random::<KEY_LEN>();
        let sealed = seal(&key, b"aad", b"hello").unwrap();
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(open(&key, b"aad", &sealed).unwrap().as_slice(), b"hello");
    }

    #[test]
    fn nonces_are_fresh() {
        let key = random::<KEY_LEN>();
        let a = seal(&key, b"", b"same").unwrap();
        let b = seal(&key, b"", b"same").unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn every_flipped_byte_and_truncation_is_rejected() {
        let key = random::<KEY_LEN>();
        let sealed = seal(&key, b"aad", b"value").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(open(&key, b"aad", &bad).is_none(), "flip at {i} accepted");
        }
        for len in 0..sealed.len() {
            assert!(open(&key, b"aad", &sealed[..len]).is_none());
        }
        assert!(open(&key, b"aaD", &sealed).is_none());
        assert!(open(&random::<KEY_LEN>(), b"aad", &sealed).is_none());
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let key = random::<KEY_LEN>();
        let sealed = seal(&key, b"", b"").unwrap();
        assert_eq!(open(&key, b"", &sealed).unwrap().len(), 0);
    }
}
