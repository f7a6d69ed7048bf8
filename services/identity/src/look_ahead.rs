//! Data keys loaded ahead for the `ingest-event` consumer.
//!
//! The bus names the events it will deliver next ([`meridian_bus::EventHandler::look_ahead`]);
//! ingest keys each accepted event by its sealed subject. The room notes those subjects and,
//! once the current delivery's graph pass is done and its store write begins, loads their
//! data keys into the vault's cache: the consumer waits on the database then, so the key
//! store's lookups and the unwrapping use a core that would otherwise idle, and the next
//! delivery's decode finds its keys in memory. Started earlier (when the hint arrives), the
//! loading competed with the graph pass for the cores and saved nothing in `bench identity`.
//!
//! Only the cache is touched: a delivery decodes, checks and applies its events exactly as
//! without it, and the cache keeps its own rules (a key forgotten on this replica while it
//! loads is not cached; other replicas' erasures reach it within its lifetime, as always).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use meridian_bus::UpcomingEvent;
use meridian_vault::Vault;
use tokio::task::JoinHandle;

/// Subjects noted for the next delivery and the loading in flight.
#[derive(Debug, Default)]
pub(crate) struct KeyLookAhead {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Subjects by workspace, from the latest hint not yet loaded.
    noted: BTreeMap<String, Vec<String>>,
    /// At most one loading runs, however slow the key store.
    loading: Option<JoinHandle<()>>,
}

impl KeyLookAhead {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes the subjects of `upcoming`, replacing an older hint not yet loaded.
    pub(crate) fn note(&self, upcoming: &[UpcomingEvent]) {
        let mut noted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in upcoming.iter().filter(|e| !e.key.is_empty()) {
            noted
                .entry(e.workspace_id.clone())
                .or_default()
                .push(e.key.clone());
        }
        self.state().noted = noted;
    }

    /// Starts loading the noted subjects' data keys, unless a loading is still running
    /// (the hint then waits for the next call) or nothing is noted.
    pub(crate) fn start(&self, vault: &Arc<Vault>) {
        let mut state = self.state();
        if state.noted.is_empty() || state.loading.as_ref().is_some_and(|l| !l.is_finished()) {
            return;
        }
        let noted = std::mem::take(&mut state.noted);
        let vault = vault.clone();
        state.loading = Some(tokio::spawn(async move {
            for (workspace, mut subjects) in noted {
                subjects.sort_unstable();
                subjects.dedup();
                let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
                if let Err(err) = vault.existing_subject_keys(&workspace, &subjects).await {
                    // The delivery's own decode loads what is missing and reports failures.
                    tracing::debug!(error = %err, "look-ahead data-key loading failed");
                }
            }
        }));
    }

    /// Loads what is noted and waits until no loading runs (one still running when this is
    /// called is waited for first, then the noted subjects are loaded).
    pub(crate) async fn settle(&self, vault: &Arc<Vault>) {
        loop {
            self.start(vault);
            let Some(loading) = self.state().loading.take() else {
                return;
            };
            // A loading that panicked or was cancelled only leaves the cache colder.
            let _ = loading.await;
        }
    }
}
