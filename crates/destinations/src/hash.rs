//! SHA-256 as the platforms want it: lowercase hex of the UTF-8 bytes of the normal form.

use ring::digest::{SHA256, digest};

use crate::normalize::{Field, Platform, normalize};

/// 64 lowercase hex digits of a SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hex([u8; 64]);

impl Sha256Hex {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let d = digest(&SHA256, bytes);
        let mut out = [0u8; 64];
        for (i, b) in d.as_ref().iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        Sha256Hex(out)
    }

    /// Parses 64 lowercase hex digits (what the platforms accept).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; 64] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            .then_some(Sha256Hex(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }
}

/// Hashes are personal data (they identify a person on the platform): keep them out of logs.
impl std::fmt::Debug for Sha256Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256Hex(..)")
    }
}

/// Normalizes `value` for `platform` and hashes it; `None` when the platform would reject it.
pub fn hash_field(
    platform: Platform,
    field: Field,
    value: &str,
    default_region: Option<&str>,
) -> Option<Sha256Hex> {
    normalize(platform, field, value, default_region).map(|n| Sha256Hex::of(n.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            Sha256Hex::of(b"abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(Sha256Hex::parse(Sha256Hex::of(b"x").as_str()).is_some());
        assert!(Sha256Hex::parse("ABC").is_none());
        assert!(Sha256Hex::parse(&"G".repeat(64)).is_none());
    }
}
