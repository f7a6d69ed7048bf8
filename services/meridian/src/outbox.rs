//! `meridian outbox …` and the bus settings a server runs with.

use meridian_bus::{DeadLetterFilter, JetStreamSettings, StreamLayout};

use crate::config::Config;

pub(crate) fn jetstream_settings(config: &Config) -> JetStreamSettings {
    let mut settings = JetStreamSettings {
        subject_root: config.nats_subject_root.clone(),
        pack_max_bytes: config.nats_pack_max_bytes,
        ..JetStreamSettings::default()
    };
    if let Some(name) = &config.nats_stream {
        settings.layout = StreamLayout::Single { name: name.clone() };
    }
    settings
}

pub(crate) async fn dead_letters(
    config: &Config,
    workspace: Option<String>,
    consumer: Option<String>,
    include_resolved: bool,
    limit: usize,
) -> anyhow::Result<()> {
    let store = config.open_store().await?;
    let filter = DeadLetterFilter {
        workspace_id: workspace,
        consumer,
        include_resolved,
        limit,
    };
    let letters = meridian_bus::list_dead_letters(&store, &filter).await?;
    for letter in &letters {
        println!("{}", serde_json::to_string(letter)?);
    }
    eprintln!("{} dead letters", letters.len());
    store.close().await;
    Ok(())
}

pub(crate) async fn replay(config: &Config, id: &str) -> anyhow::Result<()> {
    let id = id
        .parse()
        .map_err(|_| anyhow::anyhow!("'{id}' is not a dead-letter id (a UUID)"))?;
    let store = config.open_store().await?;
    let letter = meridian_bus::replay_dead_letter(&store, id).await?;
    println!("{}", serde_json::to_string(&letter)?);
    eprintln!("replay requested; the running consumer applies it on its next round");
    store.close().await;
    Ok(())
}
