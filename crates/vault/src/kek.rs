//! The key-encryption key (KEK): where it comes from and how it wraps data keys.
//!
//! [`KeyProvider`] is the seam: the local key file and the environment are two
//! implementations over an in-memory [`KeyRing`]; a KMS (Vault Transit, AWS KMS, GCP KMS)
//! is one more implementation whose `wrap_key`/`unwrap_key` call the service (Transit's
//! `encrypt`/`decrypt` with `context`, KMS `Encrypt`/`Decrypt` with an encryption context)
//! and never reveals the KEK itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::KeyProviderError;

/// Version of a KEK. Every wrapped key is stored with the version that wrapped it.
pub type KekVersion = u32;

/// A boxed, sendable future (keeps the traits object-safe without extra crates).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Environment variable holding the KEK (base64 of 32 bytes).
pub const ENV_KEK: &str = "MERIDIAN_KEK";
/// Environment variable holding the KEK version (integer ≥ 1).
pub const ENV_KEK_VERSION: &str = "MERIDIAN_KEK_VERSION";
/// Optional: the previous KEK, kept only while `rotate-kek` re-wraps keys.
pub const ENV_KEK_PREVIOUS: &str = "MERIDIAN_KEK_PREVIOUS";
/// Optional: the previous KEK's version.
pub const ENV_KEK_PREVIOUS_VERSION: &str = "MERIDIAN_KEK_PREVIOUS_VERSION";

const KEK_LEN: usize = 32;

/// A key wrapped by a KEK, with the version that wrapped it.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// KEK version that wrapped `bytes`.
    pub kek_version: KekVersion,
    /// Opaque wrapped bytes (for local KEKs: nonce ‖ AES-256-GCM ciphertext ‖ tag).
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedKey")
            .field("kek_version", &self.kek_version)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Source of the key-encryption key. Async so that a remote KMS is one more implementation.
///
/// `context` is bound to the wrapped key as associated data (the owner of the key:
/// workspace, subject, key id or purpose), so a wrapped key copied to another row fails to unwrap.
pub trait KeyProvider: Send + Sync {
    /// A short name for logs (`local-file`, `env`, `memory`, `vault-transit`, ...).
    fn name(&self) -> &'static str;
    /// The version new keys are wrapped under.
    fn current_version(&self) -> KekVersion;
    /// Wraps `key` under the current KEK version.
    fn wrap_key<'a>(
        &'a self,
        key: &'a [u8],
        context: &'a [u8],
    ) -> BoxFuture<'a, Result<WrappedKey, KeyProviderError>>;
    /// Unwraps `wrapped`, which was wrapped under `version` with the same `context`.
    fn unwrap_key<'a>(
        &'a self,
        version: KekVersion,
        wrapped: &'a [u8],
        context: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KeyProviderError>>;
    /// Destroys (or forgets) an old KEK version. The vault only calls this once no key is
    /// wrapped under `version` any more.
    fn retire<'a>(&'a self, version: KekVersion) -> BoxFuture<'a, Result<(), KeyProviderError>> {
        let _ = version;
        Box::pin(async { Err(KeyProviderError::Unsupported("retire")) })
    }
}

/// One KEK held in memory. ring does not zeroize its expanded key schedule; the raw bytes
/// we read or generate are held in `Zeroizing` buffers and dropped right after expansion.
struct Kek {
    key: LessSafeKey,
}

impl Kek {
    fn from_bytes(bytes: &[u8]) -> Result<Self, KeyProviderError> {
        if bytes.len() != KEK_LEN {
            return Err(KeyProviderError::Config(format!(
                "a KEK must be exactly {KEK_LEN} bytes"
            )));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| KeyProviderError::Crypto)?;
        Ok(Kek {
            key: LessSafeKey::new(unbound),
        })
    }

    fn wrap(
        &self,
        rng: &SystemRandom,
        key: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, KeyProviderError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| KeyProviderError::Crypto)?;
        let mut out = Vec::with_capacity(NONCE_LEN + key.len() + AES_256_GCM.tag_len());
        out.extend_from_slice(&nonce);
        let mut body = Zeroizing::new(key.to_vec());
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body,
            )
            .map_err(|_| KeyProviderError::Crypto)?;
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    fn unwrap(
        &self,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyProviderError> {
        let (nonce, body) = wrapped
            .split_first_chunk::<NONCE_LEN>()
            .ok_or(KeyProviderError::UnwrapFailed)?;
        let mut buf = Zeroizing::new(body.to_vec());
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(context),
                &mut buf,
            )
            .map_err(|_| KeyProviderError::UnwrapFailed)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

struct RingState {
    current: KekVersion,
    keks: BTreeMap<KekVersion, Arc<Kek>>,
}

/// KEK versions held in memory; the building block of the local and environment providers,
/// and a provider on its own for tests and benchmarks.
pub struct KeyRing {
    state: RwLock<RingState>,
    rng: SystemRandom,
}

impl KeyRing {
    /// A ring holding one KEK version, which is current.
    pub fn new(version: KekVersion, kek: &[u8]) -> Result<Self, KeyProviderError> {
        let kek = Arc::new(Kek::from_bytes(kek)?);
        Ok(KeyRing {
            state: RwLock::new(RingState {
                current: version,
                keks: BTreeMap::from([(version, kek)]),
            }),
            rng: SystemRandom::new(),
        })
    }

    /// A ring with one freshly generated KEK (tests, benchmarks, ephemeral use).
    pub fn generate(version: KekVersion) -> Result<Self, KeyProviderError> {
        let bytes = random_kek(&SystemRandom::new())?;
        Self::new(version, bytes.as_slice())
    }

    /// Adds a KEK version and makes it current (the first step of a rotation).
    pub fn add_current(&self, version: KekVersion, kek: &[u8]) -> Result<(), KeyProviderError> {
        let kek = Arc::new(Kek::from_bytes(kek)?);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.keks.insert(version, kek);
        state.current = version;
        Ok(())
    }

    /// Adds a freshly generated KEK as `current + 1` and returns its version.
    pub fn rotate_generated(&self) -> Result<KekVersion, KeyProviderError> {
        let bytes = random_kek(&self.rng)?;
        let next = self.current_version().saturating_add(1);
        self.add_current(next, bytes.as_slice())?;
        Ok(next)
    }

    /// Adds a non-current KEK version (for example the previous one during a rotation).
    pub fn add_previous(&self, version: KekVersion, kek: &[u8]) -> Result<(), KeyProviderError> {
        let kek = Arc::new(Kek::from_bytes(kek)?);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if version == state.current {
            return Err(KeyProviderError::Config(
                "previous KEK version equals the current one".into(),
            ));
        }
        state.keks.insert(version, kek);
        Ok(())
    }

    /// Drops a non-current KEK version from memory.
    pub fn remove(&self, version: KekVersion) -> Result<(), KeyProviderError> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if version == state.current {
            return Err(KeyProviderError::Config(
                "cannot remove the current KEK version".into(),
            ));
        }
        state.keks.remove(&version);
        Ok(())
    }

    /// Versions held, oldest first.
    pub fn versions(&self) -> Vec<KekVersion> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.keks.keys().copied().collect()
    }

    fn get(&self, version: KekVersion) -> Result<Arc<Kek>, KeyProviderError> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state
            .keks
            .get(&version)
            .cloned()
            .ok_or(KeyProviderError::VersionUnavailable(version))
    }

    fn current(&self) -> Result<(KekVersion, Arc<Kek>), KeyProviderError> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let kek = state
            .keks
            .get(&state.current)
            .cloned()
            .ok_or(KeyProviderError::VersionUnavailable(state.current))?;
        Ok((state.current, kek))
    }

    fn wrap_now(&self, key: &[u8], context: &[u8]) -> Result<WrappedKey, KeyProviderError> {
        let (version, kek) = self.current()?;
        Ok(WrappedKey {
            kek_version: version,
            bytes: kek.wrap(&self.rng, key, context)?,
        })
    }

    fn unwrap_now(
        &self,
        version: KekVersion,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyProviderError> {
        self.get(version)?.unwrap(wrapped, context)
    }
}

impl KeyProvider for KeyRing {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn current_version(&self) -> KekVersion {
        self.state.read().unwrap_or_else(|e| e.into_inner()).current
    }
    fn wrap_key<'a>(
        &'a self,
        key: &'a [u8],
        context: &'a [u8],
    ) -> BoxFuture<'a, Result<WrappedKey, KeyProviderError>> {
        Box::pin(async move { self.wrap_now(key, context) })
    }
    fn unwrap_key<'a>(
        &'a self,
        version: KekVersion,
        wrapped: &'a [u8],
        context: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KeyProviderError>> {
        Box::pin(async move { self.unwrap_now(version, wrapped, context) })
    }
    fn retire<'a>(&'a self, version: KekVersion) -> BoxFuture<'a, Result<(), KeyProviderError>> {
        Box::pin(async move { self.remove(version) })
    }
}

fn random_kek(rng: &SystemRandom) -> Result<Zeroizing<[u8; KEK_LEN]>, KeyProviderError> {
    let mut bytes = Zeroizing::new([0u8; KEK_LEN]);
    rng.fill(bytes.as_mut_slice())
        .map_err(|_| KeyProviderError::Crypto)?;
    Ok(bytes)
}

fn decode_kek(name: &str, text: &str) -> Result<Zeroizing<Vec<u8>>, KeyProviderError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyProviderError::Config(format!("{name} is not valid base64")))?,
    );
    if bytes.len() != KEK_LEN {
        return Err(KeyProviderError::Config(format!(
            "{name} must decode to exactly {KEK_LEN} bytes"
        )));
    }
    Ok(bytes)
}

fn parse_version(name: &str, text: &str) -> Result<KekVersion, KeyProviderError> {
    match text.trim().parse::<KekVersion>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(KeyProviderError::Config(format!(
            "{name} must be an integer >= 1"
        ))),
    }
}

/// KEK from the environment: `MERIDIAN_KEK` (base64 of 32 bytes) and `MERIDIAN_KEK_VERSION`.
/// During a rotation, `MERIDIAN_KEK_PREVIOUS` and `MERIDIAN_KEK_PREVIOUS_VERSION` carry the
/// old key so existing wrapped keys stay readable until `rotate-kek` has re-wrapped them.
pub struct EnvKeyProvider {
    ring: KeyRing,
}

impl EnvKeyProvider {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, KeyProviderError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (testable without touching the process environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, KeyProviderError> {
        let kek = lookup(ENV_KEK).map(Zeroizing::new);
        let version = lookup(ENV_KEK_VERSION);
        let (kek, version) = match (kek, version) {
            (Some(k), Some(v)) => (k, v),
            (Some(_), None) => {
                return Err(KeyProviderError::Config(format!(
                    "{ENV_KEK} is set but {ENV_KEK_VERSION} is not"
                )));
            }
            (None, _) => return Err(KeyProviderError::Config(format!("{ENV_KEK} is not set"))),
        };
        let version = parse_version(ENV_KEK_VERSION, &version)?;
        let ring = KeyRing::new(version, &decode_kek(ENV_KEK, &kek)?)?;
        match (
            lookup(ENV_KEK_PREVIOUS).map(Zeroizing::new),
            lookup(ENV_KEK_PREVIOUS_VERSION),
        ) {
            (None, None) => {}
            (Some(prev), Some(prev_version)) => {
                let prev_version = parse_version(ENV_KEK_PREVIOUS_VERSION, &prev_version)?;
                ring.add_previous(prev_version, &decode_kek(ENV_KEK_PREVIOUS, &prev)?)?;
            }
            _ => {
                return Err(KeyProviderError::Config(format!(
                    "{ENV_KEK_PREVIOUS} and {ENV_KEK_PREVIOUS_VERSION} must be set together"
                )));
            }
        }
        Ok(EnvKeyProvider { ring })
    }

    /// Whether the environment provides a KEK at all (used to choose the provider).
    pub fn is_configured(lookup: impl Fn(&str) -> Option<String>) -> bool {
        lookup(ENV_KEK).is_some()
    }
}

impl KeyProvider for EnvKeyProvider {
    fn name(&self) -> &'static str {
        "env"
    }
    fn current_version(&self) -> KekVersion {
        self.ring.current_version()
    }
    fn wrap_key<'a>(
        &'a self,
        key: &'a [u8],
        context: &'a [u8],
    ) -> BoxFuture<'a, Result<WrappedKey, KeyProviderError>> {
        self.ring.wrap_key(key, context)
    }
    fn unwrap_key<'a>(
        &'a self,
        version: KekVersion,
        wrapped: &'a [u8],
        context: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KeyProviderError>> {
        self.ring.unwrap_key(version, wrapped, context)
    }
    fn retire<'a>(&'a self, version: KekVersion) -> BoxFuture<'a, Result<(), KeyProviderError>> {
        // The key lives in the operator's environment: forget it here; the operator then
        // removes MERIDIAN_KEK_PREVIOUS from the deployment.
        self.ring.retire(version)
    }
}

/// KEK files under `<data-dir>/keys/`: `kek-v<N>.key`, base64 of 32 random bytes, mode 0600,
/// directory mode 0700. The highest version is current. Generated at first start.
pub struct LocalKeyFileProvider {
    dir: PathBuf,
    ring: KeyRing,
}

const KEY_DIR: &str = "keys";

impl LocalKeyFileProvider {
    /// Opens `<data_dir>/keys/`, generating `kek-v1.key` if no KEK exists yet.
    /// Refuses key files readable by group or others.
    pub fn open_or_create(data_dir: &Path) -> Result<Self, KeyProviderError> {
        let dir = data_dir.join(KEY_DIR);
        create_private_dir(&dir)?;
        let mut versions = list_versions(&dir)?;
        if versions.is_empty() {
            let rng = SystemRandom::new();
            let bytes = random_kek(&rng)?;
            match write_key_file(&dir, 1, bytes.as_slice()) {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), version = 1, "generated local KEK file")
                }
                // Another process generated it first: use theirs.
                Err(KeyProviderError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(other) => return Err(other),
            }
            versions.push(1);
        }
        let mut ring: Option<KeyRing> = None;
        for version in &versions {
            let bytes = read_key_file(&dir, *version)?;
            match &ring {
                None => ring = Some(KeyRing::new(*version, &bytes)?),
                Some(r) => r.add_current(*version, &bytes)?,
            }
        }
        let ring = ring.ok_or_else(|| KeyProviderError::Config("no KEK file found".into()))?;
        Ok(LocalKeyFileProvider { dir, ring })
    }

    /// Generates the next KEK version, writes its file (0600) and makes it current.
    /// Follow with [`crate::Vault::rotate_kek`] to re-wrap existing keys under it.
    pub fn rotate(&self) -> Result<KekVersion, KeyProviderError> {
        let next = self.ring.current_version().saturating_add(1);
        let bytes = random_kek(&self.ring.rng)?;
        write_key_file(&self.dir, next, bytes.as_slice())?;
        self.ring.add_current(next, bytes.as_slice())?;
        tracing::info!(version = next, "generated new local KEK version");
        Ok(next)
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Versions present, oldest first.
    pub fn versions(&self) -> Vec<KekVersion> {
        self.ring.versions()
    }

    fn retire_now(&self, version: KekVersion) -> Result<(), KeyProviderError> {
        self.ring.remove(version)?;
        let path = key_path(&self.dir, version);
        if path.exists() {
            // Overwrite before unlinking; on copy-on-write or wear-levelled storage this is
            // best effort, which is why the file never leaves the data dir unencrypted otherwise.
            let len = std::fs::metadata(&path)
                .map_err(|source| io(&path, source))?
                .len();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| io(&path, source))?;
            let zeros = vec![0u8; usize::try_from(len).unwrap_or(0)];
            file.write_all(&zeros)
                .and_then(|_| file.sync_all())
                .map_err(|source| io(&path, source))?;
            drop(file);
            std::fs::remove_file(&path).map_err(|source| io(&path, source))?;
        }
        tracing::info!(version, "retired local KEK version");
        Ok(())
    }
}

impl KeyProvider for LocalKeyFileProvider {
    fn name(&self) -> &'static str {
        "local-file"
    }
    fn current_version(&self) -> KekVersion {
        self.ring.current_version()
    }
    fn wrap_key<'a>(
        &'a self,
        key: &'a [u8],
        context: &'a [u8],
    ) -> BoxFuture<'a, Result<WrappedKey, KeyProviderError>> {
        self.ring.wrap_key(key, context)
    }
    fn unwrap_key<'a>(
        &'a self,
        version: KekVersion,
        wrapped: &'a [u8],
        context: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, KeyProviderError>> {
        self.ring.unwrap_key(version, wrapped, context)
    }
    fn retire<'a>(&'a self, version: KekVersion) -> BoxFuture<'a, Result<(), KeyProviderError>> {
        Box::pin(async move { self.retire_now(version) })
    }
}

/// Chooses the provider the way the binary does: the environment (`MERIDIAN_KEK`) when set,
/// otherwise the local key file under `data_dir`.
pub fn provider_from_env_or_data_dir(
    data_dir: &Path,
) -> Result<Arc<dyn KeyProvider>, KeyProviderError> {
    if EnvKeyProvider::is_configured(|name| std::env::var(name).ok()) {
        Ok(Arc::new(EnvKeyProvider::from_env()?))
    } else {
        Ok(Arc::new(LocalKeyFileProvider::open_or_create(data_dir)?))
    }
}

fn io(path: &Path, source: std::io::Error) -> KeyProviderError {
    KeyProviderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn key_path(dir: &Path, version: KekVersion) -> PathBuf {
    dir.join(format!("kek-v{version}.key"))
}

fn create_private_dir(dir: &Path) -> Result<(), KeyProviderError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| io(dir, source))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| io(dir, source))?;
    }
    Ok(())
}

fn list_versions(dir: &Path) -> Result<Vec<KekVersion>, KeyProviderError> {
    let mut versions = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|source| io(dir, source))? {
        let entry = entry.map_err(|source| io(dir, source))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(v) = name
            .strip_prefix("kek-v")
            .and_then(|rest| rest.strip_suffix(".key"))
            && let Ok(v) = v.parse::<KekVersion>()
            && v >= 1
        {
            versions.push(v);
        }
    }
    versions.sort_unstable();
    Ok(versions)
}

fn write_key_file(dir: &Path, version: KekVersion, kek: &[u8]) -> Result<(), KeyProviderError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = key_path(dir, version);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| io(&path, source))?;
    let mut text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(kek));
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|source| io(&path, source))?;
    Ok(())
}

fn read_key_file(dir: &Path, version: KekVersion) -> Result<Zeroizing<Vec<u8>>, KeyProviderError> {
    use std::os::unix::fs::PermissionsExt;
    let path = key_path(dir, version);
    let meta = std::fs::metadata(&path).map_err(|source| io(&path, source))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyProviderError::Config(format!(
            "{} is accessible by group or others; run chmod 600 on it",
            path.display()
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|source| io(&path, source))?);
    decode_kek("the KEK file", &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn local_file_is_created_private_and_reopened() {
        let tmp = tempfile::tempdir().unwrap();
        let p = LocalKeyFileProvider::open_or_create(tmp.path()).unwrap();
        assert_eq!(p.current_version(), 1);
        let file = tmp.path().join("keys/kek-v1.key");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(tmp.path().join("keys"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let wrapped = block_on(p.wrap_key(b"0123456789abcdef0123456789abcdef", b"ctx")).unwrap();
        drop(p);
        let again = LocalKeyFileProvider::open_or_create(tmp.path()).unwrap();
        let key = block_on(again.unwrap_key(1, &wrapped.bytes, b"ctx")).unwrap();
        assert_eq!(key.as_slice(), b"0123456789abcdef0123456789abcdef");
        assert!(matches!(
            block_on(again.unwrap_key(1, &wrapped.bytes, b"other")),
            Err(KeyProviderError::UnwrapFailed)
        ));
    }

    #[test]
    fn local_file_refuses_group_readable_key() {
        let tmp = tempfile::tempdir().unwrap();
        drop(LocalKeyFileProvider::open_or_create(tmp.path()).unwrap());
        let file = tmp.path().join("keys/kek-v1.key");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            LocalKeyFileProvider::open_or_create(tmp.path()),
            Err(KeyProviderError::Config(_))
        ));
    }

    #[test]
    fn local_rotation_and_retirement() {
        let tmp = tempfile::tempdir().unwrap();
        let p = LocalKeyFileProvider::open_or_create(tmp.path()).unwrap();
        let old = block_on(p.wrap_key(b"k", b"c")).unwrap();
        assert_eq!(p.rotate().unwrap(), 2);
        let new = block_on(p.wrap_key(b"k", b"c")).unwrap();
        assert_eq!((old.kek_version, new.kek_version), (1, 2));
        assert_eq!(
            block_on(p.unwrap_key(1, &old.bytes, b"c"))
                .unwrap()
                .as_slice(),
            b"k"
        );
        assert!(
            block_on(p.retire(2)).is_err(),
            "current version cannot be retired"
        );
        block_on(p.retire(1)).unwrap();
        assert!(!tmp.path().join("keys/kek-v1.key").exists());
        assert!(matches!(
            block_on(p.unwrap_key(1, &old.bytes, b"c")),
            Err(KeyProviderError::VersionUnavailable(1))
        ));
        let reopened = LocalKeyFileProvider::open_or_create(tmp.path()).unwrap();
        assert_eq!(reopened.versions(), vec![2]);
    }

    #[test]
    fn env_provider_parses_and_validates() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let prev = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let env = |pairs: &[(&str, &str)]| {
            let map: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |name: &str| map.get(name).cloned()
        };
        let p =
            EnvKeyProvider::from_lookup(env(&[(ENV_KEK, &key), (ENV_KEK_VERSION, "3")])).unwrap();
        assert_eq!(p.current_version(), 3);
        let p = EnvKeyProvider::from_lookup(env(&[
            (ENV_KEK, &key),
            (ENV_KEK_VERSION, "3"),
            (ENV_KEK_PREVIOUS, &prev),
            (ENV_KEK_PREVIOUS_VERSION, "2"),
        ]))
        .unwrap();
        assert_eq!(p.ring.versions(), vec![2, 3]);
        for bad in [
            env(&[(ENV_KEK, &key)]),
            env(&[(ENV_KEK, "not base64!"), (ENV_KEK_VERSION, "1")]),
            env(&[(ENV_KEK, "AAAA"), (ENV_KEK_VERSION, "1")]),
            env(&[(ENV_KEK, &key), (ENV_KEK_VERSION, "0")]),
            env(&[
                (ENV_KEK, &key),
                (ENV_KEK_VERSION, "1"),
                (ENV_KEK_PREVIOUS, &prev),
            ]),
            env(&[]),
        ] {
            let err = EnvKeyProvider::from_lookup(bad).err().unwrap();
            assert!(matches!(err, KeyProviderError::Config(_)));
            assert!(
                !err.to_string().contains(&key),
                "errors never echo key material"
            );
        }
    }
}
