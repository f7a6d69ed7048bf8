//! Sealing: AES-256-GCM under a subject's data key, in a versioned format.
//!
//! Format v1 (`SEAL_OVERHEAD` = 45 bytes over the plaintext):
//!
//! ```text
//! 0x01 ‖ key_id (16 bytes, the subject key's UUID) ‖ nonce (12 random bytes) ‖ ciphertext ‖ tag (16)
//! ```
//!
//! The associated data binds the format version, the workspace, the subject key id, the
//! record id and the field name (each length-prefixed), so a sealed value copied to another
//! workspace, subject, row or field fails to open. Nonces are random (96 bits, from the OS
//! generator through a per-thread pool: [`crate::nonce`]): one data key is used by one
//! subject, far below the 2^32 messages per key where random nonces get risky.

use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Result, VaultError};

/// Format version written by this build.
pub const FORMAT_V1: u8 = 1;
const KEY_ID_LEN: usize = 16;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// Bytes a sealed value adds to its plaintext.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TAG_LEN;
const AAD_DOMAIN: &[u8] = b"meridian.vault.seal";
/// Length of a data key.
pub(crate) const DEK_LEN: usize = 32;

/// A subject's data key, expanded for AES-256-GCM. The raw bytes are never kept: they live
/// in a `Zeroizing` buffer only while the key schedule is built (ring does not zeroize the
/// schedule itself; see the crate docs).
pub(crate) struct Dek {
    pub(crate) key_id: Uuid,
    key: LessSafeKey,
}

impl Dek {
    pub(crate) fn from_bytes(key_id: Uuid, bytes: &[u8]) -> Result<Self> {
        if bytes.len() != DEK_LEN {
            return Err(VaultError::Crypto);
        }
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| VaultError::Crypto)?;
        Ok(Dek {
            key_id,
            key: LessSafeKey::new(unbound),
        })
    }
}

fn push_lp(aad: &mut Vec<u8>, part: &[u8]) {
    // Length prefixes keep ("ab","c") and ("a","bc") apart. Lengths over u32 are impossible
    // for identifiers; saturate rather than panic.
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(part);
}

fn aad(version: u8, workspace: &str, key_id: &Uuid, record_id: &str, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(
        AAD_DOMAIN.len() + 1 + 12 + KEY_ID_LEN + workspace.len() + record_id.len() + field.len(),
    );
    aad.extend_from_slice(AAD_DOMAIN);
    aad.push(version);
    push_lp(&mut aad, workspace.as_bytes());
    aad.extend_from_slice(key_id.as_bytes());
    push_lp(&mut aad, record_id.as_bytes());
    push_lp(&mut aad, field.as_bytes());
    aad
}

/// Reads the subject key id a sealed value was made under, without opening it.
pub fn sealed_key_id(sealed: &[u8]) -> Result<Uuid> {
    let (&version, rest) = sealed
        .split_first()
        .ok_or(VaultError::MalformedCiphertext)?;
    if version != FORMAT_V1 {
        return Err(VaultError::UnsupportedFormat(version));
    }
    if sealed.len() < SEAL_OVERHEAD {
        return Err(VaultError::MalformedCiphertext);
    }
    let (id, _) = rest
        .split_first_chunk::<KEY_ID_LEN>()
        .ok_or(VaultError::MalformedCiphertext)?;
    Ok(Uuid::from_bytes(*id))
}

/// A subject's data key bound to its workspace: seals and opens synchronously, for batch work
/// (get it once with [`crate::Vault::subject_key`], then seal every field of a record).
/// Keep it short-lived: a handle keeps its unwrapped key usable even after a `forget`, so drop
/// it when the batch is done.
#[derive(Clone)]
pub struct SubjectKey {
    pub(crate) workspace: Arc<str>,
    pub(crate) dek: Arc<Dek>,
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKey")
            .field("key_id", &self.dek.key_id)
            .finish_non_exhaustive()
    }
}

impl SubjectKey {
    /// The subject key id (also written into every sealed value).
    pub fn key_id(&self) -> Uuid {
        self.dek.key_id
    }

    /// Seals `plaintext` for `field` of `record_id`.
    pub fn seal(&self, record_id: &str, field: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let (mut out, nonce) = self.sealed_header(plaintext.len())?;
        out.extend_from_slice(plaintext);
        self.seal_in_place(record_id, field, nonce, out)
    }

    /// Seals `value` serialized as JSON, exactly as [`SubjectKey::seal`] seals those bytes,
    /// without a plaintext buffer of its own: the JSON is written into the sealed value's
    /// buffer and encrypted in place. The buffer starts with room for `size_hint` bytes of
    /// JSON; when it must grow, the old allocation is zeroed before it is freed. (Serializing
    /// with `serde_json::to_vec` first left a copy of part of the plaintext in freed memory
    /// at every doubling, and copied the whole of it once more to seal it.)
    pub fn seal_json<T: serde::Serialize + ?Sized>(
        &self,
        record_id: &str,
        field: &str,
        value: &T,
        size_hint: usize,
    ) -> Result<Vec<u8>> {
        let (mut out, nonce) = self.sealed_header(size_hint)?;
        if serde_json::to_writer(PlaintextWriter { out: &mut out }, value).is_err() {
            out.zeroize();
            return Err(VaultError::Unserializable);
        }
        self.seal_in_place(record_id, field, nonce, out)
    }

    /// A sealed value's buffer with its header (format, key id, a fresh nonce) written and
    /// room for `plaintext_len` bytes of plaintext and the tag.
    fn sealed_header(&self, plaintext_len: usize) -> Result<(Vec<u8>, [u8; NONCE_LEN])> {
        let nonce = crate::nonce::next()?;
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext_len);
        out.push(FORMAT_V1);
        out.extend_from_slice(self.dek.key_id.as_bytes());
        out.extend_from_slice(&nonce);
        Ok((out, nonce))
    }

    /// Encrypts the plaintext after the header of `out` and appends the tag. On failure the
    /// plaintext is zeroed, not returned.
    fn seal_in_place(
        &self,
        record_id: &str,
        field: &str,
        nonce: [u8; NONCE_LEN],
        mut out: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let aad = aad(
            FORMAT_V1,
            &self.workspace,
            &self.dek.key_id,
            record_id,
            field,
        );
        let sealed = self.dek.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut out[HEADER_LEN..],
        );
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(out)
            }
            Err(_) => {
                out.zeroize();
                Err(VaultError::Crypto)
            }
        }
    }

    /// Opens a value sealed for `field` of `record_id`. Plaintext is zeroized on drop.
    pub fn open(&self, record_id: &str, field: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let key_id = sealed_key_id(sealed)?;
        if key_id != self.dek.key_id {
            return Err(VaultError::KeyMismatch);
        }
        let nonce: [u8; NONCE_LEN] = sealed
            .get(1 + KEY_ID_LEN..HEADER_LEN)
            .and_then(|n| n.try_into().ok())
            .ok_or(VaultError::MalformedCiphertext)?;
        let body = sealed
            .get(HEADER_LEN..)
            .ok_or(VaultError::MalformedCiphertext)?;
        let aad = aad(FORMAT_V1, &self.workspace, &key_id, record_id, field);
        let mut buf = Zeroizing::new(body.to_vec());
        let len = self
            .dek
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut buf,
            )
            .map_err(|_| VaultError::OpenFailed)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Appends plaintext to a sealed value's buffer (see [`SubjectKey::seal_json`]). Grows it
/// by hand so that the allocation it leaves is zeroed first, and keeps room for the tag.
struct PlaintextWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl PlaintextWriter<'_> {
    #[cold]
    fn grow(&mut self, needed: usize) {
        let mut bigger = Vec::with_capacity(needed.max(2 * self.out.capacity()));
        bigger.extend_from_slice(self.out);
        // Zeroes the whole allocation, spare capacity included, then empties it.
        self.out.zeroize();
        *self.out = bigger;
    }
}

impl std::io::Write for PlaintextWriter<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    // Inlined into the serializer, as `Vec`'s own is: it runs for every quote and comma.
    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let needed = self.out.len() + buf.len() + TAG_LEN;
        if needed > self.out.capacity() {
            self.grow(needed);
        }
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(id: u128, byte: u8) -> SubjectKey {
        SubjectKey {
            workspace: Arc::from("ws"),
            dek: Arc::new(Dek::from_bytes(Uuid::from_u128(id), &[byte; 32]).unwrap()),
        }
    }

    #[test]
    fn format_layout() {
        let k = key(42, 1);
        let sealed = k.seal("r", "f", b"hello").unwrap();
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(sealed[0], FORMAT_V1);
        assert_eq!(sealed_key_id(&sealed).unwrap(), Uuid::from_u128(42));
        assert_ne!(&sealed[HEADER_LEN..HEADER_LEN + 5], b"hello");
        // Two seals of the same value differ (random nonce).
        assert_ne!(sealed, k.seal("r", "f", b"hello").unwrap());
    }

    #[test]
    fn unknown_version_and_short_inputs_are_rejected() {
        let k = key(1, 1);
        let mut sealed = k.seal("r", "f", b"x").unwrap();
        sealed[0] = 2;
        assert!(matches!(
            k.open("r", "f", &sealed),
            Err(VaultError::UnsupportedFormat(2))
        ));
        for len in 0..SEAL_OVERHEAD {
            let mut v = vec![FORMAT_V1; len];
            v.resize(len, 0);
            assert!(k.open("r", "f", &v).is_err());
        }
    }

    #[test]
    fn json_sealed_in_place_opens_to_what_to_vec_serializes_whatever_the_size_hint() {
        let k = key(7, 3);
        let long = "é\"x".repeat(400);
        let value = serde_json::json!({"a": 1, "b": [true, null, 2.5], "s": long});
        let expected = serde_json::to_vec(&value).unwrap();
        for hint in [
            0,
            1,
            16,
            expected.len() - 1,
            expected.len(),
            10 * expected.len(),
        ] {
            let sealed = k.seal_json("r", "body", &value, hint).unwrap();
            assert_eq!(sealed.len(), expected.len() + SEAL_OVERHEAD, "hint {hint}");
            assert_eq!(
                *k.open("r", "body", &sealed).unwrap(),
                expected,
                "hint {hint}"
            );
            assert!(k.open("r", "traits", &sealed).is_err());
            assert!(k.open("r2", "body", &sealed).is_err());
        }
    }

    #[test]
    fn a_value_that_cannot_be_serialized_is_refused() {
        let mut map = std::collections::BTreeMap::new();
        map.insert(vec![1u8], "a map key JSON cannot hold");
        assert!(matches!(
            key(1, 1).seal_json("r", "f", &map, 8),
            Err(VaultError::Unserializable)
        ));
    }

    #[test]
    fn a_growing_plaintext_buffer_keeps_room_for_the_tag() {
        let mut out = Vec::with_capacity(4);
        let mut writer = PlaintextWriter { out: &mut out };
        for chunk in [&b"abc"[..], b"defgh", &[b'x'; 100]] {
            std::io::Write::write_all(&mut writer, chunk).unwrap();
            assert!(writer.out.capacity() >= writer.out.len() + TAG_LEN);
        }
        assert_eq!(out.len(), 108);
        assert_eq!(&out[..8], b"abcdefgh");
    }

    #[test]
    fn aad_is_unambiguous() {
        let id = Uuid::from_u128(1);
        assert_ne!(aad(1, "w", &id, "ab", "c"), aad(1, "w", &id, "a", "bc"));
    }

    proptest! {
        #[test]
        fn open_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let k = key(1, 1);
            prop_assert!(k.open("r", "f", &bytes).is_err());
        }

        #[test]
        fn round_trip_any_plaintext(pt in proptest::collection::vec(any::<u8>(), 0..256), rec in ".{0,20}", field in "[a-z_]{1,12}") {
            let k = key(7, 3);
            let sealed = k.seal(&rec, &field, &pt).unwrap();
            let opened = k.open(&rec, &field, &sealed).unwrap();
            prop_assert_eq!(opened.as_slice(), pt.as_slice());
        }
    }
}
