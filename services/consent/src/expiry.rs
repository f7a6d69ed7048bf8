//! Consent expires per the regime's validity period: a sweep writes an EXPIRED entry to the
//! ledger for every given consent whose validity ended (recorded at the instant it lapsed,
//! so as-of answers stay exact), updates the projection and publishes `ConsentChanged`
//! (restricted) in the same transaction.
//!
//! The `ConsentChanged` of an expiry names the subject by its pseudonymous ref and carries
//! no blind indexes: the projection does not link refs to identifiers (that link is sealed
//! under the subject's key), so the sweep cannot name them without weakening erasure.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::error::ConsentError;
use crate::ledger::{
    self, Actor, Decision, EntryBody, LawfulBasis, NewEntry, PurposeDecision, Source,
};
use crate::room::{ConsentRoom, VaultSigner};
use crate::store::{AppendOutcome, ChangeNotice, StateRow, StateUpdate};

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpirySweep {
    /// EXPIRED entries appended.
    pub entries: u64,
    /// Subjects whose consent changed.
    pub subjects: u64,
}

impl ConsentRoom {
    /// Appends EXPIRED entries for up to `limit` consents whose validity ended at or before
    /// `now`; one append (one signature, one `ConsentChanged`) per subject.
    pub async fn expire_lapsed(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<ExpirySweep, ConsentError> {
        let due = self
            .store
            .due_expiries(now.timestamp_micros(), limit)
            .await?;
        let mut by_subject: BTreeMap<(String, String), Vec<StateRow>> = BTreeMap::new();
        for (workspace, subject_ref, state) in due {
            by_subject
                .entry((workspace, subject_ref))
                .or_default()
                .push(state);
        }
        let mut sweep = ExpirySweep::default();
        for ((workspace, subject_ref), states) in by_subject {
            let mut batch = Vec::new();
            let mut updates = Vec::new();
            let mut purposes = Vec::new();
            for state in states {
                let Some(expires_at) = state.expires_at else {
                    continue;
                };
                let original = self
                    .store
                    .entries_between(&workspace, state.sequence, state.sequence)
                    .await?
                    .into_iter()
                    .next()
                    .and_then(|e| EntryBody::from_canonical(&e.body));
                let Some(original) = original else {
                    return Err(ConsentError::Corrupt(format!(
                        "the entry behind consent state {} is missing or unreadable",
                        state.entry_id
                    )));
                };
                let lawful_basis =
                    LawfulBasis::parse(&state.lawful_basis).unwrap_or(LawfulBasis::Consent);
                let body = EntryBody {
                    schema_version: ledger::SCHEMA_VERSION.into(),
                    controller: workspace.clone(),
                    notice: original.notice,
                    purposes: vec![PurposeDecision {
                        purpose: state.purpose.clone(),
                        decision: Decision::Expired,
                        lawful_basis,
                    }],
                    jurisdiction: original.jurisdiction,
                    source: Source::ValidityPeriod,
                    raw_signal: format!("validity period of entry {} ended", state.entry_id),
                    collection_point: original.collection_point,
                    actor: Actor::Controller,
                    policy_version: self.policies.policy_version().to_owned(),
                    time_zone: state.time_zone.clone(),
                };
                updates.push(StateUpdate {
                    entry_index: batch.len(),
                    subject_ref: subject_ref.clone(),
                    purpose: state.purpose.clone(),
                    decision: Decision::Expired.as_str().into(),
                    lawful_basis: state.lawful_basis.clone(),
                    decided_at: expires_at,
                    expires_at: None,
                    time_zone: state.time_zone.clone(),
                });
                purposes.push(state.purpose.clone());
                batch.push(NewEntry {
                    entry_id: uuid::Uuid::now_v7().to_string(),
                    subject_ref: subject_ref.clone(),
                    recorded_at: expires_at,
                    body: body.to_canonical(),
                });
            }
            if batch.is_empty() {
                continue;
            }
            let n = batch.len() as u64;
            let change = ChangeNotice {
                subject_ref: subject_ref.clone(),
                blind_indexes: Vec::new(),
                purposes,
                restricted: true,
            };
            // Keyed by the consents they expire: two sweepers racing append once.
            let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
            for u in &updates {
                digest.update(u.purpose.as_bytes());
                digest.update(&u.decided_at.to_be_bytes());
            }
            let key = format!(
                "expiry:{subject_ref}:{}",
                hex::encode(digest.finish().as_ref())
            );
            let outcome = self
                .store
                .append(
                    &workspace,
                    batch,
                    updates,
                    Some(&key),
                    &VaultSigner(&self.vault),
                    Some(&change),
                )
                .await?;
            if let AppendOutcome::Appended(_) = outcome {
                sweep.entries += n;
                sweep.subjects += 1;
            }
        }
        if sweep.entries > 0 {
            tracing::info!(
                entries = sweep.entries,
                subjects = sweep.subjects,
                "lapsed consents recorded as expired"
            );
        }
        Ok(sweep)
    }

    /// Sweeps every `interval` until `shutdown` turns true.
    pub async fn run_expiry_sweeper(
        &self,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            loop {
                match self.expire_lapsed(Utc::now(), 500).await {
                    Ok(s) if s.entries >= 500 => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "expiry sweep failed; retrying later");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}
