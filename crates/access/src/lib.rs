//! Who may call Meridian: workspaces (tenants with a home region and time
//! zone) and the API keys that act in them.
//!
//! An API key reads `mk_<key id>_<secret>`. Only the key id and a peppered
//! HMAC-SHA256 of the secret are stored, so a copy of the database does not
//! let anyone call the API. [`Authenticator`] turns a presented key into a
//! [`Principal`]: one workspace and a set of scopes.

mod key;
mod pepper;
mod store;

pub use key::{ApiKey, ApiKeyError};
pub use pepper::{ApiKeyPepper, PEPPER_FILE, PepperError};
pub use store::{AccessStore, ApiKeyRecord, StoreAccess, Workspace, access_store};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_domain::{Region, Scope, Scopes, TimeZone, WorkspaceId};
use tokio::sync::RwLock;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("workspace {0} does not exist")]
    UnknownWorkspace(WorkspaceId),
    #[error("workspace {0} already exists with home region {1}")]
    WorkspaceExists(WorkspaceId, Region),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] meridian_store::StoreError),
}

impl From<meridian_store::sqlx::Error> for AccessError {
    fn from(err: meridian_store::sqlx::Error) -> Self {
        AccessError::Store(err.into())
    }
}

/// Why a caller could not be authenticated. Callers are told only that
/// authentication failed; the variant is for logs and tests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthenticationError {
    #[error("no API key was presented")]
    Missing,
    #[error("the API key is malformed")]
    Malformed,
    #[error("the API key is unknown or revoked")]
    Unknown,
    #[error("the key store could not be read")]
    Unavailable,
}

/// An authenticated caller: the workspace its key belongs to and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub workspace_id: WorkspaceId,
    pub scopes: Scopes,
}

/// Why an authenticated caller may not do what it asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessDenied {
    #[error("the API key lacks the '{0}' scope")]
    MissingScope(Scope),
    #[error("the API key belongs to another workspace")]
    OtherWorkspace,
}

impl Principal {
    /// Checks that this caller may act with `scope` in `requested` (empty means
    /// the key's own workspace) and returns the workspace to act in.
    pub fn authorize(&self, scope: Scope, requested: &str) -> Result<&WorkspaceId, AccessDenied> {
        self.authorize_scope(scope)?;
        self.authorize_workspace(requested)
    }

    pub fn authorize_scope(&self, scope: Scope) -> Result<(), AccessDenied> {
        if self.scopes.allows(scope) {
            Ok(())
        } else {
            Err(AccessDenied::MissingScope(scope))
        }
    }

    /// The workspace to act in: `requested`, which must be the key's own, or
    /// the key's own when `requested` is empty.
    pub fn authorize_workspace(&self, requested: &str) -> Result<&WorkspaceId, AccessDenied> {
        if !requested.is_empty() && requested != self.workspace_id.as_str() {
            return Err(AccessDenied::OtherWorkspace);
        }
        Ok(&self.workspace_id)
    }
}

/// How long a verified key is trusted without asking the store again; a
/// revocation takes effect within this time on every replica.
const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_CAPACITY: usize = 10_000;

struct CachedKey {
    record: ApiKeyRecord,
    fetched_at: Instant,
}

/// Verifies presented API keys against the store, with a short-lived cache so
/// that the hot path of ingestion does not query the database per request.
pub struct Authenticator {
    store: Arc<dyn AccessStore>,
    pepper: ApiKeyPepper,
    cache: RwLock<HashMap<String, CachedKey>>,
}

impl Authenticator {
    pub fn new(store: Arc<dyn AccessStore>, pepper: ApiKeyPepper) -> Self {
        Self {
            store,
            pepper,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Authenticates the value of an `authorization: Bearer <key>` header.
    pub async fn authenticate_bearer(
        &self,
        header: Option<&str>,
    ) -> Result<Principal, AuthenticationError> {
        let header = header.ok_or(AuthenticationError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(AuthenticationError::Malformed)?;
        self.authenticate(token.trim()).await
    }

    /// Authenticates a bare API key.
    pub async fn authenticate(&self, presented: &str) -> Result<Principal, AuthenticationError> {
        let key = ApiKey::parse(presented).map_err(|_| AuthenticationError::Malformed)?;
        let record = self.record(key.key_id()).await?;
        if !self.pepper.verify(key.secret(), &record.secret_hash) {
            return Err(AuthenticationError::Unknown);
        }
        Ok(Principal {
            key_id: record.key_id,
            workspace_id: record.workspace_id,
            scopes: record.scopes,
        })
    }

    async fn record(&self, key_id: &str) -> Result<ApiKeyRecord, AuthenticationError> {
        if let Some(cached) = self.cache.read().await.get(key_id)
            && cached.fetched_at.elapsed() < CACHE_TTL
        {
            return Ok(cached.record.clone());
        }
        let record = self
            .store
            .find_api_key(key_id)
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "api key lookup failed");
                AuthenticationError::Unavailable
            })?
            .ok_or(AuthenticationError::Unknown)?;
        let mut cache = self.cache.write().await;
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, cached| cached.fetched_at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(
            key_id.to_owned(),
            CachedKey {
                record: record.clone(),
                fetched_at: Instant::now(),
            },
        );
        Ok(record)
    }
}

/// Creates a workspace, or returns the existing one when its home region matches.
pub async fn ensure_workspace(
    store: &dyn AccessStore,
    workspace_id: &WorkspaceId,
    home_region: &Region,
    time_zone: TimeZone,
) -> Result<Workspace, AccessError> {
    if let Some(existing) = store.get_workspace(workspace_id).await? {
        if &existing.home_region != home_region {
            return Err(AccessError::WorkspaceExists(
                existing.workspace_id,
                existing.home_region,
            ));
        }
        return Ok(existing);
    }
    let workspace = Workspace {
        workspace_id: workspace_id.clone(),
        home_region: home_region.clone(),
        time_zone,
    };
    store.create_workspace(&workspace).await?;
    Ok(workspace)
}

/// Issues a new API key for an existing workspace. The returned key is shown
/// once; only its hash is kept.
pub async fn create_api_key(
    store: &dyn AccessStore,
    pepper: &ApiKeyPepper,
    workspace_id: &WorkspaceId,
    scopes: Scopes,
) -> Result<ApiKey, AccessError> {
    if store.get_workspace(workspace_id).await?.is_none() {
        return Err(AccessError::UnknownWorkspace(workspace_id.clone()));
    }
    let key = ApiKey::generate();
    store
        .insert_api_key(&ApiKeyRecord {
            key_id: key.key_id().to_owned(),
            workspace_id: workspace_id.clone(),
            secret_hash: pepper.hash(key.secret()),
            scopes,
        })
        .await?;
    Ok(key)
}
