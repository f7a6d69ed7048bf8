//! `meridian keys …`: workspaces and API keys.

use anyhow::Context as _;
use meridian_access::{ApiKeyPepper, access_store, create_api_key, ensure_workspace};
use meridian_domain::{Scopes, WorkspaceId};
use meridian_store::Store;

use crate::config::Config;

async fn open(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.store)
        .await
        .context("opening the store")?;
    store
        .migrate()
        .await
        .context("checking the database schema")?;
    Ok(store)
}

fn workspace_id(text: &str) -> anyhow::Result<WorkspaceId> {
    text.parse()
        .map_err(|err: meridian_domain::InvalidValue| anyhow::anyhow!("--workspace: {err}"))
}

pub(crate) async fn create_workspace(config: &Config, workspace: &str) -> anyhow::Result<()> {
    let workspace = workspace_id(workspace)?;
    let store = open(config).await?;
    let created = ensure_workspace(
        &*access_store(&store),
        &workspace,
        &config.region,
        config.time_zone,
    )
    .await?;
    println!("{}", created.workspace_id);
    eprintln!(
        "workspace {} (home region {}, time zone {})",
        created.workspace_id, created.home_region, created.time_zone
    );
    store.close().await;
    Ok(())
}

pub(crate) async fn create_key(
    config: &Config,
    workspace: &str,
    scopes: &str,
) -> anyhow::Result<()> {
    let workspace = workspace_id(workspace)?;
    let scopes: Scopes = scopes
        .parse()
        .map_err(|err: meridian_domain::InvalidValue| anyhow::anyhow!("--scopes: {err}"))?;
    let store = open(config).await?;
    let access = access_store(&store);
    ensure_workspace(&*access, &workspace, &config.region, config.time_zone).await?;
    let pepper = ApiKeyPepper::load(config.api_key_pepper.as_deref(), &config.data_dir)
        .context("loading the API-key pepper")?;
    let key = create_api_key(&*access, &pepper, &workspace, scopes.clone()).await?;
    // The key alone on stdout, for scripts; everything else on stderr.
    println!("{key}");
    eprintln!(
        "created API key {} for workspace {workspace} with scopes {scopes}; it is shown only once",
        key.key_id()
    );
    store.close().await;
    Ok(())
}

pub(crate) async fn revoke_key(config: &Config, key_id: &str) -> anyhow::Result<()> {
    let store = open(config).await?;
    let revoked = access_store(&store).revoke_api_key(key_id).await?;
    store.close().await;
    if revoked {
        eprintln!("revoked API key {key_id}; replicas stop accepting it within 30 s");
        Ok(())
    } else {
        anyhow::bail!("no live API key with id {key_id}")
    }
}
