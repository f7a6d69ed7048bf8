//! Ed25519 signing keys per workspace, for the consent ledger.
//!
//! The private key (PKCS#8 v2 document from ring) is stored wrapped by the KEK; the public key
//! is stored beside it in clear so the ledger can be verified without the KEK. Signing keys
//! are per workspace and untouched by `forget`.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::error::{Result, VaultError};

/// A workspace's ledger public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SigningPublicKey {
    /// Version of the workspace signing key.
    pub key_version: u32,
    /// The 32-byte Ed25519 public key.
    pub bytes: [u8; 32],
}

impl SigningPublicKey {
    /// Lowercase hex of the key bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }
}

impl std::fmt::Debug for SigningPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningPublicKey(v{}, {})",
            self.key_version,
            self.to_hex()
        )
    }
}

/// An Ed25519 signature with the version of the key that made it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LedgerSignature {
    /// Version of the workspace signing key.
    pub key_version: u32,
    /// The 64-byte signature.
    pub bytes: [u8; 64],
}

impl LedgerSignature {
    /// Lowercase hex of the signature bytes.
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }
    /// From stored bytes.
    pub fn from_slice(key_version: u32, bytes: &[u8]) -> Option<Self> {
        <[u8; 64]>::try_from(bytes)
            .ok()
            .map(|bytes| LedgerSignature { key_version, bytes })
    }
}

impl std::fmt::Debug for LedgerSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LedgerSignature(v{}, {})",
            self.key_version,
            self.to_hex()
        )
    }
}

/// Verifies `signature` over `message` with `public_key` (no KEK or store needed).
pub fn verify(
    public_key: &SigningPublicKey,
    message: &[u8],
    signature: &LedgerSignature,
) -> Result<()> {
    if public_key.key_version != signature.key_version {
        return Err(VaultError::BadSignature);
    }
    UnparsedPublicKey::new(&ED25519, &public_key.bytes)
        .verify(message, &signature.bytes)
        .map_err(|_| VaultError::BadSignature)
}

pub(crate) struct WorkspaceSigner {
    pub(crate) public: SigningPublicKey,
    pair: Ed25519KeyPair,
}

impl WorkspaceSigner {
    pub(crate) fn from_pkcs8(key_version: u32, pkcs8: &[u8]) -> Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| VaultError::Crypto)?;
        let mut bytes = [0u8; 32];
        let public = pair.public_key().as_ref();
        if public.len() != 32 {
            return Err(VaultError::Crypto);
        }
        bytes.copy_from_slice(public);
        Ok(WorkspaceSigner {
            public: SigningPublicKey { key_version, bytes },
            pair,
        })
    }

    pub(crate) fn sign(&self, message: &[u8]) -> LedgerSignature {
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(self.pair.sign(message).as_ref());
        LedgerSignature {
            key_version: self.public.key_version,
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn sign_and_verify() {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let signer = WorkspaceSigner::from_pkcs8(1, doc.as_ref()).unwrap();
        let sig = signer.sign(b"entry");
        verify(&signer.public, b"entry", &sig).unwrap();
        assert!(verify(&signer.public, b"entrY", &sig).is_err());
        let mut bad = sig;
        bad.bytes[0] ^= 1;
        assert!(verify(&signer.public, b"entry", &bad).is_err());
        let other = WorkspaceSigner::from_pkcs8(
            1,
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .unwrap()
                .as_ref(),
        )
        .unwrap();
        assert!(verify(&other.public, b"entry", &sig).is_err());
        assert!(WorkspaceSigner::from_pkcs8(1, b"garbage").is_err());
    }
}
