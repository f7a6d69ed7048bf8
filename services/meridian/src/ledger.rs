//! `meridian ledger …`: the consent ledger.

use crate::config::Config;

/// `meridian ledger verify`: one JSON report per workspace; non-zero exit on any bad entry.
pub(crate) async fn verify(config: &Config, workspace: Option<&str>) -> anyhow::Result<()> {
    let store = config.open_store().await?;
    let vault = config.vault(&store)?;
    let reports = meridian_consent::verify_ledger(&store, &vault, workspace).await?;
    store.close().await;
    let mut bad = Vec::new();
    for report in &reports {
        println!("{}", serde_json::to_string(report)?);
        if let Some(entry) = &report.first_bad {
            bad.push(format!(
                "workspace {}: entry {} (sequence {}): {}",
                report.workspace, entry.entry_id, entry.sequence, entry.reason
            ));
        }
    }
    if bad.is_empty() {
        eprintln!("{} ledgers verified", reports.len());
        Ok(())
    } else {
        anyhow::bail!("ledger verification failed: {}", bad.join("; "))
    }
}
