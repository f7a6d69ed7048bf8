//! Helpers for unit tests.

use std::sync::Arc;

use meridian_vault::{BlindIndexer, KeyRing, MemoryKeyStore, Vault};

/// An in-memory vault with a fresh KEK.
pub(crate) fn vault() -> Vault {
    let ring = KeyRing::generate(1).unwrap_or_else(|e| panic!("key ring: {e}"));
    Vault::new(Arc::new(ring), Arc::new(MemoryKeyStore::new()))
}

/// A blind indexer under a fresh key.
pub(crate) fn indexer() -> BlindIndexer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(vault().blind_indexer("ws"))
        .unwrap_or_else(|e| panic!("indexer: {e}"))
}
