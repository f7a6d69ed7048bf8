//! `meridian keys …`: workspaces and API keys.

use std::sync::Arc;

use anyhow::Context as _;
use meridian_access::{ApiKeyPepper, access_store, create_api_key, ensure_workspace};
use meridian_domain::{Scopes, WorkspaceId};
use meridian_vault::{EnvKeyProvider, LocalKeyFileProvider, RotationReport, Vault};

use crate::config::Config;

fn workspace_id(text: &str) -> anyhow::Result<WorkspaceId> {
    text.parse()
        .map_err(|err: meridian_domain::InvalidValue| anyhow::anyhow!("--workspace: {err}"))
}

pub(crate) async fn create_workspace(config: &Config, workspace: &str) -> anyhow::Result<()> {
    let workspace = workspace_id(workspace)?;
    let store = config.open_store().await?;
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
    let store = config.open_store().await?;
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
    let store = config.open_store().await?;
    let revoked = access_store(&store).revoke_api_key(key_id).await?;
    store.close().await;
    if revoked {
        eprintln!("revoked API key {key_id}; replicas stop accepting it within 30 s");
        Ok(())
    } else {
        anyhow::bail!("no live API key with id {key_id}")
    }
}

pub(crate) async fn rotate_kek(config: &Config, retire_previous: bool) -> anyhow::Result<()> {
    let store = config.open_store().await?;
    let keys = meridian_vault::key_store_for(&store);
    if EnvKeyProvider::is_configured(|name| std::env::var(name).ok()) {
        // The operator supplies both versions; retiring means removing the old one from the environment.
        let provider = Arc::new(EnvKeyProvider::from_env().context("reading MERIDIAN_KEK")?);
        let vault = Vault::new(provider, keys);
        let report = vault.rotate_kek().await?;
        println!("{}", serde_json::to_string(&report)?);
        if report.is_complete() {
            eprintln!(
                "every key is wrapped under KEK version {}; remove MERIDIAN_KEK_PREVIOUS to retire the old one",
                report.to_version
            );
        }
        store.close().await;
        return check_complete(&report);
    }
    let provider = Arc::new(
        LocalKeyFileProvider::open_or_create(&config.data_dir).context("opening the local KEK")?,
    );
    let previous = provider.versions();
    let next = provider
        .rotate()
        .context("generating the next KEK version")?;
    let vault = Vault::new(provider, keys);
    let report = vault.rotate_kek().await?;
    println!("{}", serde_json::to_string(&report)?);
    check_complete(&report)?;
    if retire_previous {
        for version in previous {
            vault.retire_kek(version).await?;
            eprintln!("retired KEK version {version}");
        }
    } else {
        eprintln!(
            "every key is wrapped under KEK version {next}; retire the old versions with `meridian keys retire-kek --version N`"
        );
    }
    store.close().await;
    Ok(())
}

fn check_complete(report: &RotationReport) -> anyhow::Result<()> {
    if report.is_complete() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} keys could not be re-wrapped; the previous KEK versions are still needed",
            report.failed
        )
    }
}

pub(crate) async fn retire_kek(config: &Config, version: u32) -> anyhow::Result<()> {
    let store = config.open_store().await?;
    let vault = config.vault(&store)?;
    vault.retire_kek(version).await?;
    store.close().await;
    eprintln!("retired KEK version {version}");
    Ok(())
}
