//! The [`Vault`] handle: sealing, blind indexes, forgetting, signing and KEK rotation.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::Ed25519KeyPair;
use serde::Serialize;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::blind::{BlindIndex, BlindIndexer, IdentifierKind};
use crate::cache::{BlindIndexHashing, DekCache, IdentifierSubjectCache};
use crate::error::{Result, VaultError};
use crate::kek::{KekVersion, KeyProvider};
use crate::seal::{DEK_LEN, Dek, SubjectKey};
use crate::signing::{LedgerSignature, SigningPublicKey, WorkspaceSigner};
use crate::store::{
    KeyStore, StoredSubjectKey, StoredWorkspaceKey, SubjectKeyState, WorkspaceKeyPurpose,
};

/// A subject's data key, if the cache held it (or the store had it).
type CachedDek = Option<Arc<Dek>>;

/// The keys of `keys` whose lookup `found` (one per key) missed, sorted and distinct: the
/// store is asked for them in one batch.
fn misses<K: Ord, V>(keys: impl Iterator<Item = K>, found: &[Option<V>]) -> Vec<K> {
    let mut missing: Vec<K> = keys
        .zip(found)
        .filter(|(_, hit)| hit.is_none())
        .map(|(key, _)| key)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    missing
}

/// Fills the misses of `found` (one per key of `keys`) with what `loaded` holds for them.
fn fill_misses<K, V: Clone>(
    keys: impl Iterator<Item = K>,
    found: &mut [Option<V>],
    loaded: impl Fn(K) -> Option<V>,
) {
    for (key, hit) in keys.zip(found.iter_mut()) {
        if hit.is_none() {
            *hit = loaded(key);
        }
    }
}

/// Key handles for a batch's data keys, sharing one workspace name.
fn handles(workspace: &str, deks: Vec<CachedDek>) -> Vec<Option<SubjectKey>> {
    let workspace: Arc<str> = Arc::from(workspace);
    deks.into_iter()
        .map(|dek| {
            dek.map(|dek| SubjectKey {
                workspace: workspace.clone(),
                dek,
            })
        })
        .collect()
}

/// Tuning of a [`Vault`].
#[derive(Debug, Clone)]
pub struct VaultConfig {
    /// Most data keys kept unwrapped in memory; as many identifiers' subjects are kept too.
    pub dek_cache_capacity: usize,
    /// How long an unwrapped data key, or an identifier's subject, is served from memory
    /// before it is re-read from the key store. This bounds how long a `forget` done by
    /// another replica can go unnoticed here. Zero disables both caches.
    pub dek_cache_ttl: Duration,
    /// Keys re-wrapped per page during [`Vault::rotate_kek`].
    pub rotation_batch: u32,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            dek_cache_capacity: 65_536,
            dek_cache_ttl: Duration::from_secs(10),
            rotation_batch: 500,
        }
    }
}

/// What [`Vault::forget`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ForgetReceipt {
    /// Wrapped data keys destroyed by this call (0 or 1).
    pub keys_destroyed: u64,
    /// The subject had already been forgotten.
    pub already_forgotten: bool,
}

/// What [`Vault::rotate_kek`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RotationReport {
    /// The KEK version keys were re-wrapped under.
    pub to_version: KekVersion,
    /// Subject data keys re-wrapped.
    pub subject_keys_rewrapped: u64,
    /// Workspace keys (blind index, signing) re-wrapped.
    pub workspace_keys_rewrapped: u64,
    /// Keys that changed while being re-wrapped (forgotten, or re-wrapped elsewhere).
    pub skipped_concurrent: u64,
    /// Keys that could not be unwrapped (their KEK version is unavailable or they are corrupt).
    pub failed: u64,
    /// Wrapped keys per KEK version after the rotation.
    pub versions_in_use: BTreeMap<KekVersion, u64>,
}

impl RotationReport {
    /// Every key is now under `to_version`; older versions can be retired.
    pub fn is_complete(&self) -> bool {
        self.failed == 0 && self.versions_in_use.keys().all(|v| *v == self.to_version)
    }
}

fn push_lp(out: &mut Vec<u8>, part: &[u8]) {
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(part);
}

/// Associated data binding a wrapped data key to its owner.
fn dek_context(workspace: &str, subject: &str, key_id: &Uuid) -> Vec<u8> {
    let mut ctx = b"meridian.vault.dek.v1".to_vec();
    push_lp(&mut ctx, workspace.as_bytes());
    push_lp(&mut ctx, subject.as_bytes());
    ctx.extend_from_slice(key_id.as_bytes());
    ctx
}

/// Associated data binding a wrapped workspace key to its owner and purpose.
fn workspace_context(workspace: &str, purpose: WorkspaceKeyPurpose, key_version: u32) -> Vec<u8> {
    let mut ctx = b"meridian.vault.wsk.v1".to_vec();
    push_lp(&mut ctx, workspace.as_bytes());
    push_lp(&mut ctx, purpose.as_str().as_bytes());
    ctx.extend_from_slice(&key_version.to_be_bytes());
    ctx
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(VaultError::InvalidIdentifier {
            kind: "id",
            reason: "workspace and subject ids must not be empty",
        });
    }
    Ok(())
}

/// Field-level encryption for one process: a [`KeyProvider`] (the KEK) and a [`KeyStore`]
/// (wrapped keys). Cheap to share (`Arc<Vault>`); all methods take `&self`.
pub struct Vault {
    provider: Arc<dyn KeyProvider>,
    store: Arc<dyn KeyStore>,
    config: VaultConfig,
    cache: DekCache,
    /// The subject of each identifier seen lately: every ingest call asks for its anchors'
    /// subjects, and a subject only changes when it is forgotten.
    identifiers: IdentifierSubjectCache,
    indexers: RwLock<HashMap<String, BlindIndexer>>,
    signers: RwLock<HashMap<String, Arc<WorkspaceSigner>>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("provider", &self.provider.name())
            .field("kek_version", &self.provider.current_version())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A vault with the default [`VaultConfig`].
    pub fn new(provider: Arc<dyn KeyProvider>, store: Arc<dyn KeyStore>) -> Self {
        Self::with_config(provider, store, VaultConfig::default())
    }

    /// A vault with explicit tuning.
    pub fn with_config(
        provider: Arc<dyn KeyProvider>,
        store: Arc<dyn KeyStore>,
        config: VaultConfig,
    ) -> Self {
        Vault {
            cache: DekCache::new(config.dek_cache_capacity, config.dek_cache_ttl),
            identifiers: IdentifierSubjectCache::new(
                config.dek_cache_capacity,
                config.dek_cache_ttl,
            ),
            provider,
            store,
            config,
            indexers: RwLock::new(HashMap::new()),
            signers: RwLock::new(HashMap::new()),
            rng: SystemRandom::new(),
        }
    }

    /// The key provider.
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    // ---- sealing -------------------------------------------------------------------------

    /// Seals `plaintext` as `field` of `record_id` for `subject`, creating the subject's data
    /// key on first use. Fails with [`VaultError::SubjectForgotten`] for a forgotten subject.
    pub async fn seal(
        &self,
        workspace: &str,
        subject: &str,
        record_id: &str,
        field: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        self.subject_key(workspace, subject)
            .await?
            .seal(record_id, field, plaintext)
    }

    /// Opens a value sealed by [`Vault::seal`] with the same workspace, subject, record and field.
    pub async fn open(
        &self,
        workspace: &str,
        subject: &str,
        record_id: &str,
        field: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.load_key(workspace, subject, false)
            .await?
            .open(record_id, field, sealed)
    }

    /// The subject's data key for batch sealing/opening (created on first use).
    pub async fn subject_key(&self, workspace: &str, subject: &str) -> Result<SubjectKey> {
        self.load_key(workspace, subject, true).await
    }

    async fn load_key(&self, workspace: &str, subject: &str, create: bool) -> Result<SubjectKey> {
        check_id(workspace)?;
        check_id(subject)?;
        let started = Instant::now();
        if let Some(dek) = self.cache.get(workspace, subject, started) {
            return Ok(self.handle(workspace, dek));
        }
        let generation = self.cache.generation();
        let dek = match self.store.subject_key(workspace, subject).await? {
            SubjectKeyState::Absent if create => self.create_dek(workspace, subject).await?,
            state => self.dek_from_state(workspace, subject, state).await?,
        };
        let dek = Arc::new(dek);
        self.cache.insert(
            workspace,
            subject.to_owned(),
            dek.clone(),
            started,
            generation,
        );
        Ok(self.handle(workspace, dek))
    }

    fn handle(&self, workspace: &str, dek: Arc<Dek>) -> SubjectKey {
        SubjectKey {
            workspace: Arc::from(workspace),
            dek,
        }
    }

    async fn unwrap_dek(
        &self,
        workspace: &str,
        subject: &str,
        stored: &StoredSubjectKey,
    ) -> Result<Dek> {
        let ctx = dek_context(workspace, subject, &stored.key_id);
        let bytes = self
            .provider
            .unwrap_key(stored.wrapped.kek_version, &stored.wrapped.bytes, &ctx)
            .await?;
        Dek::from_bytes(stored.key_id, &bytes)
    }

    /// A fresh data key for `subject`, and its wrapped form to store.
    async fn generate_dek(
        &self,
        workspace: &str,
        subject: &str,
    ) -> Result<(StoredSubjectKey, Dek)> {
        let mut bytes = Zeroizing::new([0u8; DEK_LEN]);
        self.rng
            .fill(bytes.as_mut_slice())
            .map_err(|_| VaultError::Crypto)?;
        let key_id = Uuid::new_v4();
        let ctx = dek_context(workspace, subject, &key_id);
        let wrapped = self.provider.wrap_key(bytes.as_slice(), &ctx).await?;
        let dek = Dek::from_bytes(key_id, bytes.as_slice())?;
        Ok((StoredSubjectKey { key_id, wrapped }, dek))
    }

    async fn create_dek(&self, workspace: &str, subject: &str) -> Result<Dek> {
        let (ours, dek) = self.generate_dek(workspace, subject).await?;
        match self
            .store
            .insert_subject_key(workspace, subject, &ours)
            .await?
        {
            SubjectKeyState::Active(stored) if stored.key_id == ours.key_id => {
                tracing::debug!(workspace, key_id = %ours.key_id, kek_version = ours.wrapped.kek_version, "created subject data key");
                Ok(dek)
            }
            // Another replica created the subject's key first: use theirs.
            SubjectKeyState::Active(stored) => self.unwrap_dek(workspace, subject, &stored).await,
            SubjectKeyState::Forgotten => Err(VaultError::SubjectForgotten),
            SubjectKeyState::Absent => {
                Err(crate::error::StoreError::Corrupt("subject key vanished after insert").into())
            }
        }
    }

    /// The data key the cache holds for each of `subjects` (in order), and the distinct
    /// subjects it holds none for (sorted: the store is asked for them in one batch).
    fn cached_deks<'s>(
        &self,
        workspace: &str,
        subjects: &[&'s str],
        now: Instant,
    ) -> Result<(Vec<CachedDek>, Vec<&'s str>)> {
        for subject in subjects {
            check_id(subject)?;
        }
        let found = self
            .cache
            .get_many(workspace, subjects.iter().copied(), now);
        let missing = misses(subjects.iter().copied(), &found);
        Ok((found, missing))
    }

    /// Fills the gaps of `found` (one per subject of `subjects`) from `loaded`, and caches
    /// what was loaded.
    fn cache_loaded(
        &self,
        workspace: &str,
        subjects: &[&str],
        found: &mut [CachedDek],
        loaded: HashMap<&str, Arc<Dek>>,
        started: Instant,
        generation: u64,
    ) {
        fill_misses(subjects.iter(), found, |s| loaded.get(s).cloned());
        self.cache.insert_many(
            workspace,
            loaded.into_iter().map(|(s, dek)| (s.to_owned(), dek)),
            started,
            generation,
        );
    }

    /// Data keys for many subjects at once, in the order given, created where absent. The
    /// subjects not in this replica's cache cost one lookup round trip, the new ones one
    /// insert (and a re-read only when another replica raced us). Fails with
    /// [`VaultError::SubjectForgotten`] if any subject was forgotten.
    pub async fn subject_keys(
        &self,
        workspace: &str,
        subjects: &[&str],
    ) -> Result<Vec<SubjectKey>> {
        check_id(workspace)?;
        let started = Instant::now();
        let (mut found, missing) = self.cached_deks(workspace, subjects, started)?;
        if !missing.is_empty() {
            let generation = self.cache.generation();
            let mut loaded: HashMap<String, Dek> = HashMap::with_capacity(missing.len());
            for (subject, state) in self.store.subject_keys(workspace, &missing).await? {
                let dek = self.dek_from_state(workspace, &subject, state).await?;
                loaded.insert(subject, dek);
            }
            let absent: Vec<&str> = missing
                .iter()
                .copied()
                .filter(|s| !loaded.contains_key(*s))
                .collect();
            if !absent.is_empty() {
                let mut ours = Vec::with_capacity(absent.len());
                let mut fresh = HashMap::with_capacity(absent.len());
                for subject in &absent {
                    let (stored, dek) = self.generate_dek(workspace, subject).await?;
                    fresh.insert(*subject, (stored.key_id, dek));
                    ours.push((*subject, stored));
                }
                let stored = self.store.insert_subject_keys(workspace, &ours).await?;
                if usize::try_from(stored).ok() == Some(ours.len()) {
                    for (subject, (_, dek)) in fresh {
                        loaded.insert(subject.to_owned(), dek);
                    }
                } else {
                    // Another replica created some of these keys first: theirs win.
                    for (subject, state) in self.store.subject_keys(workspace, &absent).await? {
                        let dek = match (&state, fresh.remove(subject.as_str())) {
                            (SubjectKeyState::Active(s), Some((key_id, dek)))
                                if s.key_id == key_id =>
                            {
                                dek
                            }
                            _ => self.dek_from_state(workspace, &subject, state).await?,
                        };
                        loaded.insert(subject, dek);
                    }
                }
                tracing::debug!(workspace, created = stored, "created subject data keys");
            }
            let mut by_subject: HashMap<&str, Arc<Dek>> = HashMap::with_capacity(missing.len());
            for subject in &missing {
                let dek = loaded.remove(*subject).ok_or(VaultError::Store(
                    crate::error::StoreError::Corrupt("subject key vanished after insert"),
                ))?;
                by_subject.insert(subject, Arc::new(dek));
            }
            self.cache_loaded(
                workspace, subjects, &mut found, by_subject, started, generation,
            );
        }
        handles(workspace, found)
            .into_iter()
            .map(|key| key.ok_or(VaultError::NoSubjectKey))
            .collect()
    }

    /// Existing data keys for many subjects at once, in the order given, for opening: `None`
    /// where the subject was forgotten or never had a key (nothing is created). The subjects
    /// not in this replica's cache cost one lookup round trip in all, where
    /// [`Vault::open`] costs one per subject.
    pub async fn existing_subject_keys(
        &self,
        workspace: &str,
        subjects: &[&str],
    ) -> Result<Vec<Option<SubjectKey>>> {
        check_id(workspace)?;
        let started = Instant::now();
        let (mut found, missing) = self.cached_deks(workspace, subjects, started)?;
        if !missing.is_empty() {
            let generation = self.cache.generation();
            let mut by_subject: HashMap<&str, Arc<Dek>> = HashMap::with_capacity(missing.len());
            for (subject, state) in self.store.subject_keys(workspace, &missing).await? {
                let SubjectKeyState::Active(stored) = state else {
                    continue;
                };
                // `missing` is sorted: the borrowed name outlives this loop.
                let Ok(at) = missing.binary_search(&subject.as_str()) else {
                    continue;
                };
                let name = missing[at];
                let dek = Arc::new(self.unwrap_dek(workspace, name, &stored).await?);
                by_subject.insert(name, dek);
            }
            self.cache_loaded(
                workspace, subjects, &mut found, by_subject, started, generation,
            );
        }
        Ok(handles(workspace, found))
    }

    async fn dek_from_state(
        &self,
        workspace: &str,
        subject: &str,
        state: SubjectKeyState,
    ) -> Result<Dek> {
        match state {
            SubjectKeyState::Active(stored) => self.unwrap_dek(workspace, subject, &stored).await,
            SubjectKeyState::Forgotten => Err(VaultError::SubjectForgotten),
            SubjectKeyState::Absent => Err(VaultError::NoSubjectKey),
        }
    }

    // ---- identifier subjects ---------------------------------------------------------------

    /// The vault subject of each identifier (by blind index), in the order given, allocated on
    /// first sight. Rooms seal what they hold about an identifier under its subject, so
    /// [`Vault::forget_identifier`] on each identifier of a person makes all of it unreadable.
    /// Identifiers seen within `dek_cache_ttl` are answered from memory; the rest cost one
    /// lookup round trip, and one insert when some are new.
    ///
    /// A subject forgotten by another replica may still be answered from memory until then,
    /// as its data key may: [`Vault::identifier_subject_keys`] notices and asks again.
    pub async fn identifier_subjects(
        &self,
        workspace: &str,
        indexes: &[BlindIndex],
    ) -> Result<Vec<String>> {
        let subjects = self.shared_identifier_subjects(workspace, indexes).await?;
        Ok(subjects.iter().map(|s| s.to_string()).collect())
    }

    /// [`Vault::identifier_subjects`] as the cache holds them: no copy of each name.
    async fn shared_identifier_subjects(
        &self,
        workspace: &str,
        indexes: &[BlindIndex],
    ) -> Result<Vec<Arc<str>>> {
        check_id(workspace)?;
        let started = Instant::now();
        let mut found = self
            .identifiers
            .get_many(workspace, indexes.iter().map(|i| &i.0), started);
        let missing = misses(indexes.iter().map(|i| i.0), &found);
        if !missing.is_empty() {
            let generation = self.identifiers.generation();
            let mut loaded: HashMap<[u8; 32], String, BlindIndexHashing> = self
                .store
                .identifier_subjects(workspace, &missing)
                .await?
                .into_iter()
                .collect();
            let new: Vec<([u8; 32], String)> = missing
                .iter()
                .filter(|i| !loaded.contains_key(*i))
                .map(|i| (*i, format!("idn-{}", Uuid::new_v4().simple())))
                .collect();
            if !new.is_empty() {
                let stored = self
                    .store
                    .insert_identifier_subjects(workspace, &new)
                    .await?;
                if usize::try_from(stored).ok() == Some(new.len()) {
                    loaded.extend(new);
                } else {
                    // Another replica recorded some first: re-read the winners.
                    let new_indexes: Vec<[u8; 32]> = new.into_iter().map(|(i, _)| i).collect();
                    loaded.extend(
                        self.store
                            .identifier_subjects(workspace, &new_indexes)
                            .await?,
                    );
                }
            }
            let loaded: HashMap<[u8; 32], Arc<str>, BlindIndexHashing> = loaded
                .into_iter()
                .map(|(index, subject)| (index, Arc::from(subject)))
                .collect();
            fill_misses(indexes.iter(), &mut found, |i| loaded.get(&i.0).cloned());
            self.identifiers
                .insert_many(workspace, loaded, started, generation);
        }
        found
            .into_iter()
            .map(|subject| {
                subject.ok_or(VaultError::Store(crate::error::StoreError::Corrupt(
                    "identifier subject vanished after insert",
                )))
            })
            .collect()
    }

    /// The subject of each identifier and its data key, in the order given, both created on
    /// first sight: [`Vault::identifier_subjects`], then [`Vault::subject_keys`]. Where a
    /// subject turns out to be forgotten (an erasure since the identifier's subject was
    /// cached, here or on another replica), the identifiers are dropped from the cache and
    /// asked again once, so they get new subjects.
    pub async fn identifier_subject_keys(
        &self,
        workspace: &str,
        indexes: &[BlindIndex],
    ) -> Result<Vec<(String, SubjectKey)>> {
        let mut asked_again = false;
        loop {
            let subjects = self.shared_identifier_subjects(workspace, indexes).await?;
            let names: Vec<&str> = subjects.iter().map(|s| &**s).collect();
            match self.subject_keys(workspace, &names).await {
                Ok(keys) => {
                    return Ok(subjects.iter().map(|s| s.to_string()).zip(keys).collect());
                }
                Err(VaultError::SubjectForgotten) if !asked_again => {
                    asked_again = true;
                    for index in indexes {
                        self.identifiers.evict(workspace, &index.0);
                    }
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Crypto-shreds one identifier: forgets its vault subject, then drops the record of it,
    /// so the same identifier seen later gets a new subject. Idempotent: an identifier with no
    /// subject reports `already_forgotten`.
    pub async fn forget_identifier(
        &self,
        workspace: &str,
        index: &BlindIndex,
    ) -> Result<ForgetReceipt> {
        check_id(workspace)?;
        let Some((_, subject)) = self
            .store
            .identifier_subjects(workspace, &[index.0])
            .await?
            .into_iter()
            .next()
        else {
            return Ok(ForgetReceipt {
                keys_destroyed: 0,
                already_forgotten: true,
            });
        };
        // Forget first: a crash in between leaves the record, and a retry forgets again
        // (idempotent) before dropping it.
        let receipt = self.forget(workspace, &subject).await?;
        self.store
            .delete_identifier_subject(workspace, &index.0, &subject)
            .await?;
        // Again after the delete: a lookup between `forget` and the delete read the old
        // record, and cannot cache it now (the eviction bumps the cache generation).
        self.identifiers.evict(workspace, &index.0);
        Ok(receipt)
    }

    // ---- forgetting ----------------------------------------------------------------------

    /// Crypto-shreds a subject: destroys its wrapped data key and leaves a tombstone, so
    /// nothing sealed under the key can be opened again, wherever it was copied, and no new
    /// key is issued for the subject. The key, and the identifiers cached as having this
    /// subject, are dropped from this replica's caches at once;
    /// other replicas stop serving it within `dek_cache_ttl` (or at once if they receive the
    /// erasure event and call [`Vault::evict_subject`]).
    ///
    /// Deleting the subject's rows and blind-index entries is the erasure saga's job, not
    /// this call's. Workspace keys (blind index, ledger signing) are untouched.
    pub async fn forget(&self, workspace: &str, subject: &str) -> Result<ForgetReceipt> {
        check_id(workspace)?;
        check_id(subject)?;
        let outcome = self.store.forget_subject(workspace, subject).await;
        // Evict after the store call (a load that read the key before the delete cannot
        // re-insert it: the eviction bumps the cache generation), and on errors too.
        self.cache.evict(workspace, subject);
        self.identifiers.evict_where(workspace, |s| &**s == subject);
        let outcome = outcome?;
        tracing::info!(
            workspace,
            keys_destroyed = outcome.keys_destroyed,
            already_forgotten = outcome.already_forgotten,
            "subject forgotten"
        );
        Ok(ForgetReceipt {
            keys_destroyed: outcome.keys_destroyed,
            already_forgotten: outcome.already_forgotten,
        })
    }

    /// A number that changes whenever this replica drops a data key from its cache
    /// ([`Vault::forget`], [`Vault::evict_subject`]): what was opened with keys read before
    /// a change may have been opened with a key that is gone since, and is to be opened
    /// again.
    pub fn forget_generation(&self) -> u64 {
        self.cache.generation()
    }

    /// Drops a subject's data key, and the identifiers it is cached as the subject of, from
    /// this replica's caches (call it when another replica's erasure event arrives, to close
    /// the `dek_cache_ttl` window).
    pub fn evict_subject(&self, workspace: &str, subject: &str) {
        self.cache.evict(workspace, subject);
        self.identifiers.evict_where(workspace, |s| &**s == subject);
    }

    // ---- blind indexes -------------------------------------------------------------------

    /// Normalizes `raw` as `kind` and returns its blind index under the workspace's key
    /// (created on first use). `default_region` (ISO 3166 alpha-2) resolves national phones.
    pub async fn blind_index(
        &self,
        workspace: &str,
        kind: IdentifierKind<'_>,
        raw: &str,
        default_region: Option<&str>,
    ) -> Result<BlindIndex> {
        self.blind_indexer(workspace)
            .await?
            .index(kind, raw, default_region)
    }

    /// The workspace's blind indexer, for synchronous batch work.
    pub async fn blind_indexer(&self, workspace: &str) -> Result<BlindIndexer> {
        if let Some(indexer) = self
            .indexers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(workspace)
        {
            return Ok(indexer.clone());
        }
        check_id(workspace)?;
        let stored = self
            .workspace_key(workspace, WorkspaceKeyPurpose::BlindIndex, || {
                let mut bytes = Zeroizing::new(vec![0u8; 32]);
                self.rng
                    .fill(bytes.as_mut_slice())
                    .map_err(|_| VaultError::Crypto)?;
                Ok((bytes, None))
            })
            .await?;
        let indexer = BlindIndexer::from_key_bytes(&stored);
        self.indexers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(workspace.to_owned(), indexer.clone());
        Ok(indexer)
    }

    /// Loads (creating if absent) the workspace key of `purpose` and returns it unwrapped.
    async fn workspace_key(
        &self,
        workspace: &str,
        purpose: WorkspaceKeyPurpose,
        generate: impl FnOnce() -> Result<(Zeroizing<Vec<u8>>, Option<Vec<u8>>)>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let stored = match self.store.workspace_key(workspace, purpose).await? {
            Some(stored) => stored,
            None => {
                let (bytes, public_key) = generate()?;
                let ctx = workspace_context(workspace, purpose, 1);
                let wrapped = self.provider.wrap_key(&bytes, &ctx).await?;
                let ours = StoredWorkspaceKey {
                    key_version: 1,
                    wrapped,
                    public_key,
                };
                let stored = self
                    .store
                    .insert_workspace_key(workspace, purpose, &ours)
                    .await?;
                if stored == ours {
                    tracing::info!(
                        workspace,
                        purpose = purpose.as_str(),
                        "created workspace key"
                    );
                    return Ok(bytes);
                }
                stored
            }
        };
        let ctx = workspace_context(workspace, purpose, stored.key_version);
        Ok(self
            .provider
            .unwrap_key(stored.wrapped.kek_version, &stored.wrapped.bytes, &ctx)
            .await?)
    }

    // ---- ledger signing ------------------------------------------------------------------

    async fn signer(&self, workspace: &str) -> Result<Arc<WorkspaceSigner>> {
        if let Some(signer) = self
            .signers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(workspace)
        {
            return Ok(signer.clone());
        }
        check_id(workspace)?;
        let pkcs8 = self
            .workspace_key(workspace, WorkspaceKeyPurpose::LedgerSigning, || {
                let doc =
                    Ed25519KeyPair::generate_pkcs8(&self.rng).map_err(|_| VaultError::Crypto)?;
                let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
                let public = WorkspaceSigner::from_pkcs8(1, &pkcs8)?
                    .public
                    .bytes
                    .to_vec();
                Ok((pkcs8, Some(public)))
            })
            .await?;
        let signer = Arc::new(WorkspaceSigner::from_pkcs8(1, &pkcs8)?);
        if let Some(stored) = self
            .store
            .workspace_key(workspace, WorkspaceKeyPurpose::LedgerSigning)
            .await?
            && stored
                .public_key
                .as_deref()
                .is_some_and(|p| p != signer.public.bytes.as_slice())
        {
            return Err(crate::error::StoreError::Corrupt(
                "stored ledger public key does not match its private key",
            )
            .into());
        }
        self.signers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(workspace.to_owned(), signer.clone());
        Ok(signer)
    }

    /// The workspace's ledger public key (the key pair is created on first use).
    pub async fn signing_public_key(&self, workspace: &str) -> Result<SigningPublicKey> {
        Ok(self.signer(workspace).await?.public)
    }

    /// Signs `message` (a ledger entry's canonical bytes) with the workspace's Ed25519 key.
    pub async fn sign(&self, workspace: &str, message: &[u8]) -> Result<LedgerSignature> {
        Ok(self.signer(workspace).await?.sign(message))
    }

    /// Verifies a ledger signature against the workspace's current public key.
    pub async fn verify(
        &self,
        workspace: &str,
        message: &[u8],
        signature: &LedgerSignature,
    ) -> Result<()> {
        let public = self.signing_public_key(workspace).await?;
        crate::signing::verify(&public, message, signature)
    }

    // ---- KEK rotation --------------------------------------------------------------------

    /// Re-wraps every key (subject data keys and workspace keys) not yet under the provider's
    /// current KEK version. Sealed data is not touched and stays readable; cached keys stay
    /// valid. Safe to run while replicas serve traffic and to re-run after an interruption.
    /// Make the new version current first (`LocalKeyFileProvider::rotate`, or a new
    /// `MERIDIAN_KEK` with the old one in `MERIDIAN_KEK_PREVIOUS`); when the report
    /// [`RotationReport::is_complete`], retire the old version with [`Vault::retire_kek`].
    pub async fn rotate_kek(&self) -> Result<RotationReport> {
        let current = self.provider.current_version();
        let limit = self.config.rotation_batch.max(1);
        let mut report = RotationReport {
            to_version: current,
            subject_keys_rewrapped: 0,
            workspace_keys_rewrapped: 0,
            skipped_concurrent: 0,
            failed: 0,
            versions_in_use: BTreeMap::new(),
        };
        let (mut ws_cursor, mut subj_cursor) = (String::new(), String::new());
        loop {
            let rows = self
                .store
                .subject_keys_to_rewrap(current, (&ws_cursor, &subj_cursor), limit)
                .await?;
            let Some(last) = rows.last() else { break };
            (ws_cursor, subj_cursor) = (last.workspace_id.clone(), last.subject_id.clone());
            for row in &rows {
                let ctx = dek_context(&row.workspace_id, &row.subject_id, &row.key.key_id);
                let plain = match self
                    .provider
                    .unwrap_key(row.key.wrapped.kek_version, &row.key.wrapped.bytes, &ctx)
                    .await
                {
                    Ok(plain) => plain,
                    Err(error) => {
                        report.failed += 1;
                        tracing::warn!(key_id = %row.key.key_id, kek_version = row.key.wrapped.kek_version, %error, "cannot re-wrap subject key");
                        continue;
                    }
                };
                let new = self.provider.wrap_key(&plain, &ctx).await?;
                if self.store.replace_subject_wrapping(row, &new).await? {
                    report.subject_keys_rewrapped += 1;
                } else {
                    report.skipped_concurrent += 1;
                }
            }
        }
        let mut cursor = (String::new(), String::new(), 0u32);
        loop {
            let rows = self
                .store
                .workspace_keys_to_rewrap(current, (&cursor.0, &cursor.1, cursor.2), limit)
                .await?;
            let Some(last) = rows.last() else { break };
            cursor = (
                last.workspace_id.clone(),
                last.purpose.as_str().to_owned(),
                last.key.key_version,
            );
            for row in &rows {
                let ctx = workspace_context(&row.workspace_id, row.purpose, row.key.key_version);
                let plain = match self
                    .provider
                    .unwrap_key(row.key.wrapped.kek_version, &row.key.wrapped.bytes, &ctx)
                    .await
                {
                    Ok(plain) => plain,
                    Err(error) => {
                        report.failed += 1;
                        tracing::warn!(purpose = row.purpose.as_str(), kek_version = row.key.wrapped.kek_version, %error, "cannot re-wrap workspace key");
                        continue;
                    }
                };
                let new = self.provider.wrap_key(&plain, &ctx).await?;
                if self.store.replace_workspace_wrapping(row, &new).await? {
                    report.workspace_keys_rewrapped += 1;
                } else {
                    report.skipped_concurrent += 1;
                }
            }
        }
        report.versions_in_use = self.store.kek_versions_in_use().await?;
        tracing::info!(
            to_version = current,
            subject_keys = report.subject_keys_rewrapped,
            workspace_keys = report.workspace_keys_rewrapped,
            skipped = report.skipped_concurrent,
            failed = report.failed,
            "KEK rotation finished"
        );
        Ok(report)
    }

    /// Wrapped keys per KEK version.
    pub async fn kek_versions_in_use(&self) -> Result<BTreeMap<KekVersion, u64>> {
        Ok(self.store.kek_versions_in_use().await?)
    }

    /// Retires an old KEK version through the provider (the local provider overwrites and
    /// deletes its file). Refused while it is current or still wraps any key.
    pub async fn retire_kek(&self, version: KekVersion) -> Result<()> {
        let current = self.provider.current_version();
        let keys = self
            .store
            .kek_versions_in_use()
            .await?
            .get(&version)
            .copied()
            .unwrap_or(0);
        if version == current || keys > 0 {
            return Err(VaultError::KekInUse {
                version,
                keys,
                current: version == current,
            });
        }
        self.provider.retire(version).await?;
        Ok(())
    }
}
