//! Secrets at rest: AES-256-GCM (aws-lc-rs) with a random 96-bit nonce per seal, the nonce
//! stored before the ciphertext, and the owner's id as associated data so a sealed secret
//! cannot be moved to another row.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;

use super::StateError;

/// Bytes of a sealing key.
pub const KEY_BYTES: usize = 32;

/// Seals and opens secrets with one key.
pub struct Sealer {
    key: LessSafeKey,
}

impl Sealer {
    /// The key from its base64 text (`openssl rand -base64 32`).
    ///
    /// # Errors
    /// [`StateError::KeyWrong`] when it is not base64 of 32 bytes (the key is not echoed).
    pub fn from_base64(text: &str) -> Result<Sealer, StateError> {
        let wrong = || {
            StateError::KeyWrong(format!(
                "the sealing key must be {KEY_BYTES} bytes in base64 (openssl rand -base64 {KEY_BYTES})"
            ))
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| wrong())?;
        if bytes.len() != KEY_BYTES {
            return Err(wrong());
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| wrong())?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
        })
    }

    /// `nonce ‖ ciphertext ‖ tag` of `plain`, bound to `owner`.
    ///
    /// # Errors
    /// When no random nonce can be had (the system's generator failed).
    pub fn seal(&self, plain: &[u8], owner: &[u8]) -> Result<Vec<u8>, StateError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| StateError::Unavailable("no random numbers for a nonce".to_owned()))?;
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(owner),
                &mut sealed,
            )
            .map_err(|_| StateError::Unavailable("sealing a secret failed".to_owned()))?;
        let mut out = nonce.to_vec();
        out.append(&mut sealed);
        Ok(out)
    }

    /// The plain text of `sealed`, if it was sealed with this key for `owner` (not with
    /// another key, for another owner, or altered since).
    #[must_use]
    pub fn open(&self, sealed: &[u8], owner: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(owner), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; KEY_BYTES])
    }

    #[test]
    fn a_boxed_secret_opens_only_with_its_key_and_owner() {
        let ours = Sealer::from_base64(&key(7)).unwrap();
        let boxed = ours.seal(b"hunter2", b"ds-1").unwrap();
        assert!(
            !boxed.windows(7).any(|w| w == b"hunter2"),
            "stored in the clear"
        );
        assert_eq!(ours.open(&boxed, b"ds-1").unwrap(), b"hunter2");
        assert!(ours.open(&boxed, b"ds-2").is_none(), "moved to another row");
        let other = Sealer::from_base64(&key(8)).unwrap();
        assert!(other.open(&boxed, b"ds-1").is_none(), "another key");
        let mut altered = boxed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(ours.open(&altered, b"ds-1").is_none(), "altered");
        // A fresh nonce each time: the same secret never seals to the same bytes.
        assert_ne!(ours.seal(b"hunter2", b"ds-1").unwrap(), boxed);
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_them() {
        for bad in ["not base64!", "c2hvcnQ=", ""] {
            let err = Sealer::from_base64(bad).err().unwrap();
            assert_eq!(err.code(), "STATE_KEY_WRONG");
            assert!(bad.is_empty() || !err.to_string().contains(bad), "{err}");
        }
    }
}
