//! The erasure saga (issue 11): on an erasure request the room records a ledger entry, then
//! a worker drives durable steps — locate the subject in the other rooms, remove it from
//! every destination that received it, storefront deletion, identity graph and profile,
//! events, the consent room's own links, and crypto-shredding LAST — each retried with
//! exponential backoff and jitter until it succeeds, then signs a receipt listing every step.
//!
//! The other rooms are reached through small traits this room owns ([`SubjectLocator`],
//! [`ErasureTarget`], [`AccessSource`]); the binary implements them over the identity,
//! ingest, audience and vault rooms. Targets must be idempotent: a step's success is
//! written after its effect, so a step cut short by a crash runs again, and must then have
//! no further effect.

pub mod store;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::Utc;
use meridian_vault::BlindIndex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tracing::Instrument as _;

use crate::error::ConsentError;
use crate::ledger::{self, Actor, Decision, LawfulBasis, Notice, PurposeDecision, Source};
use crate::room::{ConsentRoom, Decided, Subject, public_key_b64};
use crate::signals::{self, SourceDecisions};
use store::{ClaimedSaga, Completion, StepRow};

/// Everything that names an erased (or accessed) subject in the other rooms. No plaintext:
/// profile ids, blind indexes of identifiers, vault subjects.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureSubject {
    pub request_id: String,
    /// The consent room's subject (a vault subject: it seals the pseudonymous ledger ref).
    pub consent_subject: String,
    /// The subject's pseudonymous ledger ref.
    pub subject_ref: String,
    pub profile_ids: Vec<String>,
    #[serde(with = "hex_indexes")]
    pub blind_indexes: Vec<BlindIndex>,
    /// Vault subjects whose keys seal the subject's data (crypto-shredded last).
    pub vault_subjects: Vec<String>,
}

impl std::fmt::Debug for ErasureSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasureSubject")
            .field("request_id", &self.request_id)
            .field("profiles", &self.profile_ids.len())
            .field("blind_indexes", &self.blind_indexes.len())
            .field("vault_subjects", &self.vault_subjects.len())
            .finish()
    }
}

impl ErasureSubject {
    /// Adds what a step found (a union: nothing is ever dropped).
    pub fn absorb(&mut self, found: &Found) {
        for p in &found.profile_ids {
            if !self.profile_ids.contains(p) {
                self.profile_ids.push(p.clone());
            }
        }
        for b in &found.blind_indexes {
            if !self.blind_indexes.contains(b) {
                self.blind_indexes.push(*b);
            }
        }
        for v in &found.vault_subjects {
            if !self.vault_subjects.contains(v) {
                self.vault_subjects.push(v.clone());
            }
        }
    }
}

mod hex_indexes {
    use meridian_vault::BlindIndex;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[BlindIndex], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| b.to_hex()))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<BlindIndex>, D::Error> {
        let hexes = Vec::<String>::deserialize(d)?;
        hexes
            .iter()
            .map(|h| {
                hex::decode(h)
                    .ok()
                    .and_then(|b| BlindIndex::from_slice(&b))
                    .ok_or_else(|| serde::de::Error::custom("not a 32-byte hex blind index"))
            })
            .collect()
    }
}

/// What a lookup or a step found out about the subject (merged into the saga's subject and
/// persisted with the step's success, so later steps see it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub profile_ids: Vec<String>,
    pub blind_indexes: Vec<BlindIndex>,
    pub vault_subjects: Vec<String>,
}

impl std::fmt::Debug for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Found")
            .field("profiles", &self.profile_ids.len())
            .field("blind_indexes", &self.blind_indexes.len())
            .field("vault_subjects", &self.vault_subjects.len())
            .finish()
    }
}

/// What a step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// Counts for the receipt (`{"removed": 3}`); never identifiers or personal data.
    pub summary: serde_json::Value,
    /// Subject data discovered by the step (e.g. the identity room's erase returns the
    /// blind indexes and vault subjects of the profile it removed).
    pub found: Found,
}

impl StepReport {
    pub fn counts(summary: serde_json::Value) -> Self {
        StepReport {
            summary,
            found: Found::default(),
        }
    }
}

/// A failed attempt; the saga retries it. The message is shown in `GetRequest`: it must not
/// carry personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StepError(pub String);

impl StepError {
    pub fn new(message: impl Into<String>) -> Self {
        StepError(message.into())
    }
}

/// One room's part of an erasure. `erase` must be idempotent: the saga calls it again after
/// a crash or a failure, and a second call must have no further effect.
#[async_trait]
pub trait ErasureTarget: Send + Sync {
    /// The step's name as shown in `GetRequest` and the receipt (`remove_from_destinations`).
    fn name(&self) -> &str;
    async fn erase(
        &self,
        workspace: &str,
        subject: &ErasureSubject,
    ) -> Result<StepReport, StepError>;
}

/// Finds the subject in the other rooms from the blind indexes of its known identifiers.
#[async_trait]
pub trait SubjectLocator: Send + Sync {
    async fn locate(
        &self,
        workspace: &str,
        blind_indexes: &[BlindIndex],
    ) -> Result<Found, StepError>;
}

/// One section of an access/portability bundle (`profile`, `identifiers`, `events`,
/// `audience_memberships`, `destinations`), decrypted.
#[async_trait]
pub trait AccessSource: Send + Sync {
    fn section(&self) -> &str;
    async fn collect(
        &self,
        workspace: &str,
        subject: &ErasureSubject,
    ) -> Result<serde_json::Value, StepError>;
}

/// How sagas are driven.
#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// First retry delay; doubles per attempt up to `backoff_max` (with jitter: 50–100 %).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long one attempt of a step may take.
    pub step_timeout: Duration,
    /// A worker's hold on a saga; a killed worker's sagas are taken over after it.
    pub lease: Duration,
    /// Polling when no wake-up arrives (another replica's requests, retries coming due).
    pub poll_interval: Duration,
    /// Sagas one worker drives at once.
    pub concurrency: u32,
}

impl Default for SagaSettings {
    fn default() -> Self {
        SagaSettings {
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(300),
            step_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(45),
            poll_interval: Duration::from_millis(500),
            concurrency: 32,
        }
    }
}

/// The steps of an erasure and who performs them.
#[derive(Clone, Default)]
pub struct ErasurePlan {
    /// Finds profiles, identifiers and vault subjects in the other rooms (none: only what
    /// the consent room knows).
    pub locator: Option<Arc<dyn SubjectLocator>>,
    /// In order, between locating the subject and the consent room's own unlinking:
    /// destinations, storefront, identity, events.
    pub targets: Vec<Arc<dyn ErasureTarget>>,
    /// Runs first inside the final `crypto_shred` step (anything else to destroy); the step
    /// then forgets every blind index's identifier subject (`Vault::forget_identifier`),
    /// every vault subject found, and the consent subject.
    pub shredder: Option<Arc<dyn ErasureTarget>>,
}

impl std::fmt::Debug for ErasurePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasurePlan")
            .field("steps", &self.step_names())
            .finish()
    }
}

pub const STEP_LEDGER: &str = "record_in_ledger";
pub const STEP_LOCATE: &str = "locate_subject";
pub const STEP_UNLINK: &str = "unlink_consent_subject";
pub const STEP_SHRED: &str = "crypto_shred";

impl ErasurePlan {
    /// The saga's steps, in order.
    pub fn step_names(&self) -> Vec<String> {
        let mut out = vec![STEP_LEDGER.to_owned(), STEP_LOCATE.to_owned()];
        out.extend(self.targets.iter().map(|t| t.name().to_owned()));
        out.push(STEP_UNLINK.to_owned());
        out.push(STEP_SHRED.to_owned());
        out
    }
}

/// The room's erasure machinery: plan, settings, access sources, wake-ups.
#[derive(Clone, Default)]
pub struct Erasure {
    pub(crate) plan: ErasurePlan,
    pub(crate) settings: SagaSettings,
    pub(crate) access: Vec<Arc<dyn AccessSource>>,
    pub(crate) wake: Arc<Notify>,
    /// Notified (all waiters) whenever a saga completes.
    pub(crate) completed: Arc<Notify>,
}

/// The bus family of completed erasures.
pub const ERASURE_FAMILY: &str = "erasure";

fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The delay before attempt `attempts + 1`: `base · 2^(attempts-1)`, capped, times a random
/// factor in [0.5, 1) so retries of many sagas do not synchronize.
pub fn backoff(settings: &SagaSettings, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let raw = settings
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(settings.backoff_max);
    let mut byte = [0u8; 2];
    let jitter = match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte) {
        Ok(()) => f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX),
        Err(_) => 0.5,
    };
    raw.mul_f64(0.5 + jitter * 0.5)
}

/// A step of the saga as shown in `GetRequest` and the receipt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SagaStep {
    pub name: String,
    pub state: String,
    pub attempts: u32,
    pub last_error: String,
    pub finished_at: Option<i64>,
    pub summary: serde_json::Value,
}

impl From<&StepRow> for SagaStep {
    fn from(r: &StepRow) -> Self {
        SagaStep {
            name: r.name.clone(),
            state: r.state.clone(),
            attempts: r.attempts,
            last_error: r.last_error.clone(),
            finished_at: r.finished_at,
            summary: r
                .report
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(serde_json::Value::Null),
        }
    }
}

impl ConsentRoom {
    /// The room with an erasure plan (the other rooms' targets) and saga settings.
    pub fn with_erasure_plan(mut self, plan: ErasurePlan, settings: SagaSettings) -> Self {
        self.erasure.plan = plan;
        self.erasure.settings = settings;
        self
    }

    /// The room with the sources of access/portability bundles.
    pub fn with_access_sources(mut self, sources: Vec<Arc<dyn AccessSource>>) -> Self {
        self.erasure.access = sources;
        self
    }

    /// Creates the saga of an erasure request (idempotent) and wakes the worker.
    pub(crate) async fn start_erasure(
        &self,
        workspace: &str,
        request_id: &str,
        subject: &Subject,
    ) -> Result<(), ConsentError> {
        let blind_indexes = self
            .store
            .subject_blind_indexes(workspace, &subject.subject_id)
            .await?
            .iter()
            .filter_map(|b| BlindIndex::from_slice(b))
            .collect();
        let es = ErasureSubject {
            request_id: request_id.to_owned(),
            consent_subject: subject.subject_id.clone(),
            subject_ref: subject.subject_ref.clone(),
            profile_ids: Vec::new(),
            blind_indexes,
            vault_subjects: Vec::new(),
        };
        let json = serde_json::to_string(&es).map_err(|e| ConsentError::Storage(Box::new(e)))?;
        self.sagas
            .create_saga(
                workspace,
                request_id,
                &json,
                &self.erasure.plan.step_names(),
                now_us(),
            )
            .await?;
        self.erasure.wake.notify_one();
        Ok(())
    }

    /// Everything located about the subject of a request (for access bundles).
    pub(crate) async fn locate_for_access(
        &self,
        workspace: &str,
        request_id: &str,
        subject: &Subject,
    ) -> Result<ErasureSubject, StepError> {
        let blind_indexes: Vec<BlindIndex> = self
            .store
            .subject_blind_indexes(workspace, &subject.subject_id)
            .await
            .map_err(|_| StepError::new("reading the subject's identifiers failed"))?
            .iter()
            .filter_map(|b| BlindIndex::from_slice(b))
            .collect();
        let mut es = ErasureSubject {
            request_id: request_id.to_owned(),
            consent_subject: subject.subject_id.clone(),
            subject_ref: subject.subject_ref.clone(),
            profile_ids: Vec::new(),
            blind_indexes,
            vault_subjects: Vec::new(),
        };
        if let Some(locator) = &self.erasure.plan.locator {
            let found = locator.locate(workspace, &es.blind_indexes).await?;
            es.absorb(&found);
        }
        Ok(es)
    }

    /// The saga of an erasure request: steps, and the signed receipt once completed.
    pub async fn erasure_saga(
        &self,
        workspace: &str,
        request_id: &str,
    ) -> Result<Option<(Vec<SagaStep>, Option<(String, String)>)>, ConsentError> {
        let Some((saga, steps)) = self.sagas.saga(workspace, request_id).await? else {
            return Ok(None);
        };
        let receipt = saga.receipt_json.zip(saga.receipt_signature);
        Ok(Some((steps.iter().map(SagaStep::from).collect(), receipt)))
    }

    /// Drives erasure sagas until `shutdown` turns true: claims due sagas (a lease), runs
    /// their steps in order, retries failures with backoff, completes them with a receipt.
    /// Run one per process; replicas share the work through the leases.
    pub async fn run_erasure_worker(&self, mut shutdown: watch::Receiver<bool>) {
        let settings = self.erasure.settings.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(settings.concurrency.max(1)).unwrap_or(1),
        ));
        loop {
            if *shutdown.borrow() {
                return;
            }
            let free = slots.available_permits();
            let mut claimed_all = false;
            if free > 0 {
                let now = now_us();
                match self
                    .sagas
                    .claim_due(
                        now,
                        now + micros(settings.lease),
                        u32::try_from(free).unwrap_or(u32::MAX),
                    )
                    .await
                {
                    Ok(sagas) => {
                        claimed_all = sagas.len() == free;
                        for s in sagas {
                            let Ok(permit) = slots.clone().acquire_owned().await else {
                                return;
                            };
                            let room = self.clone();
                            let span = tracing::info_span!(
                                "erasure_saga",
                                workspace = %s.saga.workspace,
                                request_id = %s.saga.request_id
                            );
                            tokio::spawn(
                                async move {
                                    room.drive(s).await;
                                    drop(permit);
                                    // a slot is free: look for more work
                                    room.erasure.wake.notify_one();
                                }
                                .instrument(span),
                            );
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "erasure worker: claiming sagas failed"),
                }
            }
            if claimed_all {
                continue;
            }
            tokio::select! {
                _ = self.erasure.wake.notified() => {}
                _ = tokio::time::sleep(settings.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Claims the sagas due now and drives each as far as it goes (to completion, or to a
    /// failed step that is retried later). Returns how many were claimed.
    pub async fn run_due_sagas(&self) -> Result<usize, ConsentError> {
        let settings = &self.erasure.settings;
        let now = now_us();
        let sagas = self
            .sagas
            .claim_due(now, now + micros(settings.lease), settings.concurrency)
            .await?;
        let n = sagas.len();
        let runs = sagas.into_iter().map(|s| {
            let room = self.clone();
            let span = tracing::info_span!(
                "erasure_saga",
                workspace = %s.saga.workspace,
                request_id = %s.saga.request_id
            );
            async move { room.drive(s).await }.instrument(span)
        });
        futures::future::join_all(runs).await;
        Ok(n)
    }

    /// Waits until some saga completes (or `timeout` passes); callers re-check their request.
    pub async fn wait_for_a_completion(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.erasure.completed.notified()).await;
    }

    /// The saga store (tests and operators: claim, inspect).
    pub fn saga_store(&self) -> &Arc<dyn store::SagaStore> {
        &self.sagas
    }

    /// Runs one claimed saga's remaining steps; stops at the first failure (retried later).
    async fn drive(&self, mut claimed: ClaimedSaga) {
        let workspace = claimed.saga.workspace.clone();
        let request_id = claimed.saga.request_id.clone();
        let Some(subject_json) = claimed.saga.subject.clone() else {
            tracing::error!(%workspace, %request_id, "erasure saga without a subject");
            return;
        };
        let mut subject: ErasureSubject = match serde_json::from_str(&subject_json) {
            Ok(s) => s,
            Err(_) => {
                tracing::error!(%workspace, %request_id, "erasure saga subject is unreadable");
                return;
            }
        };
        let settings = self.erasure.settings.clone();
        let steps = claimed.steps.clone();
        for step in &steps {
            if step.state == "succeeded" {
                continue;
            }
            let now = now_us();
            match self
                .sagas
                .begin_step(&claimed, step.position, now + micros(settings.lease), now)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(%workspace, %request_id, step = %step.name, "erasure saga lease lost");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%workspace, %request_id, error = %e, "erasure saga: renewing the lease failed");
                    return;
                }
            }
            let attempts = step.attempts + 1;
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(
                settings.step_timeout,
                self.run_step(&step.name, &workspace, &subject),
            )
            .await
            .unwrap_or_else(|_| Err(StepError::new("timed out")));
            match outcome {
                Ok((report, events)) => {
                    let before = subject.clone();
                    subject.absorb(&report.found);
                    let subject_json = (subject != before)
                        .then(|| serde_json::to_string(&subject).ok())
                        .flatten();
                    let summary = report.summary.to_string();
                    match self
                        .sagas
                        .step_succeeded(
                            &claimed,
                            step.position,
                            attempts,
                            now_us(),
                            &summary,
                            subject_json.as_deref(),
                            &events,
                        )
                        .await
                    {
                        Ok(true) => {
                            tracing::info!(
                                %workspace, %request_id, step = %step.name, attempts,
                                seconds = started.elapsed().as_secs_f64(),
                                "erasure step succeeded"
                            );
                        }
                        Ok(false) => return,
                        Err(e) => {
                            tracing::warn!(%workspace, %request_id, step = %step.name, error = %e, "erasure step: recording success failed; it will run again");
                            return;
                        }
                    }
                }
                Err(e) => {
                    let delay = backoff(&settings, attempts);
                    tracing::warn!(
                        %workspace, %request_id, step = %step.name, attempts, error = %e,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        "erasure step failed; retrying"
                    );
                    if let Err(e) = self
                        .sagas
                        .step_failed(
                            &claimed,
                            step.position,
                            attempts,
                            &e.0,
                            now_us() + micros(delay),
                        )
                        .await
                    {
                        tracing::warn!(%workspace, %request_id, error = %e, "erasure step: recording the failure failed");
                    }
                    return;
                }
            }
        }
        if let Err(e) = self.complete(&mut claimed).await {
            tracing::warn!(%workspace, %request_id, error = %e, "erasure saga: completing failed; retrying");
            let _ = self
                .sagas
                .step_failed(
                    &claimed,
                    u32::MAX,
                    0,
                    "",
                    now_us() + micros(settings.backoff_base),
                )
                .await;
        }
    }

    /// One attempt of one step: its report and the events to publish with its success.
    async fn run_step(
        &self,
        name: &str,
        workspace: &str,
        subject: &ErasureSubject,
    ) -> Result<(StepReport, Vec<meridian_bus::OutboxEvent>), StepError> {
        let plan = &self.erasure.plan;
        let none = Vec::new();
        match name {
            STEP_LEDGER => Ok((self.erasure_ledger_entry(workspace, subject).await?, none)),
            STEP_LOCATE => {
                let found = match &plan.locator {
                    Some(locator) => locator.locate(workspace, &subject.blind_indexes).await?,
                    None => Found::default(),
                };
                let summary = serde_json::json!({
                    "profiles": found.profile_ids.len(),
                    "identifiers": found.blind_indexes.len().max(subject.blind_indexes.len()),
                    "vault_subjects": found.vault_subjects.len(),
                });
                Ok((StepReport { summary, found }, none))
            }
            STEP_UNLINK => {
                let removed = self
                    .store
                    .unlink_subject(workspace, &subject.consent_subject, &subject.subject_ref)
                    .await
                    .map_err(|_| StepError::new("removing the consent room's links failed"))?;
                Ok((
                    StepReport::counts(serde_json::json!({ "rows_removed": removed })),
                    none,
                ))
            }
            STEP_SHRED => {
                let mut summary = serde_json::Map::new();
                if let Some(shredder) = &plan.shredder {
                    let r = shredder.erase(workspace, subject).await?;
                    summary.insert(shredder.name().to_owned(), r.summary);
                }
                let mut destroyed = 0u64;
                // every identifier's own vault subject (what ingest sealed events under)
                for index in &subject.blind_indexes {
                    let receipt = self
                        .vault
                        .forget_identifier(workspace, index)
                        .await
                        .map_err(|_| StepError::new("the vault could not forget an identifier"))?;
                    destroyed += receipt.keys_destroyed;
                }
                summary.insert(
                    "identifiers_forgotten".into(),
                    subject.blind_indexes.len().into(),
                );
                let mut subjects: Vec<&str> =
                    subject.vault_subjects.iter().map(String::as_str).collect();
                subjects.push(&subject.consent_subject);
                for s in &subjects {
                    let receipt =
                        self.vault.forget(workspace, s).await.map_err(|_| {
                            StepError::new("the vault could not forget a subject key")
                        })?;
                    destroyed += receipt.keys_destroyed;
                }
                summary.insert("subjects_forgotten".into(), subjects.len().into());
                summary.insert("keys_destroyed".into(), destroyed.into());
                let erased = meridian_proto::bus::v1::SubjectErased {
                    workspace_id: workspace.to_owned(),
                    request_id: subject.request_id.clone(),
                    vault_subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
                    // Not the blind indexes: the announcement outlives the saga in the
                    // outbox and the stream, and must not name who was erased.
                    profile_ids: subject.profile_ids.clone(),
                };
                let event = crate::store::outbox_event(
                    workspace,
                    ERASURE_FAMILY,
                    &subject.request_id,
                    prost::Message::encode_to_vec(&erased),
                )
                .map_err(|_| StepError::new("building the erasure event failed"))?;
                Ok((
                    StepReport::counts(serde_json::Value::Object(summary)),
                    vec![event],
                ))
            }
            other => match plan.targets.iter().find(|t| t.name() == other) {
                Some(target) => Ok((target.erase(workspace, subject).await?, none)),
                None => Err(StepError::new(format!(
                    "no target for step {other} in this process"
                ))),
            },
        }
    }

    /// The erasure's ledger entry: every purpose the subject had, and the sale/sharing
    /// purposes, withdrawn (idempotent through the request's key). `ConsentChanged` goes
    /// out with it, so ad destinations drop the subject even before the saga reaches them.
    async fn erasure_ledger_entry(
        &self,
        workspace: &str,
        subject: &ErasureSubject,
    ) -> Result<StepReport, StepError> {
        let failed = |_| StepError::new("appending the erasure entry failed");
        let (row, _) = self
            .store
            .get_request(workspace, &subject.request_id)
            .await
            .map_err(failed)?
            .ok_or_else(|| StepError::new("the request is gone"))?;
        let mut purposes: Vec<String> = self
            .store
            .current_states(workspace, &subject.subject_ref)
            .await
            .map_err(failed)?
            .into_iter()
            .map(|s| s.purpose)
            .collect();
        for p in signals::gpc_purposes(self.policies.taxonomy()) {
            if !purposes.contains(&p) {
                purposes.push(p);
            }
        }
        let (jurisdiction, tz) = self
            .time_zone_for(&row.jurisdiction, None)
            .map_err(|_| StepError::new("the request's jurisdiction is not in the policies"))?;
        let entries = self
            .append_decisions(
                workspace,
                &Subject {
                    subject_id: subject.consent_subject.clone(),
                    subject_ref: subject.subject_ref.clone(),
                },
                Decided {
                    jurisdiction,
                    tz,
                    sources: vec![SourceDecisions {
                        source: Source::Explicit,
                        raw_signal: "erasure request".into(),
                        purposes: purposes
                            .into_iter()
                            .map(|purpose| PurposeDecision {
                                purpose,
                                decision: Decision::Withdrawn,
                                lawful_basis: LawfulBasis::Consent,
                            })
                            .collect(),
                    }],
                    notice: Notice::default(),
                    collection_point: format!("dsr:{}", subject.request_id),
                    actor: Actor::Subject,
                    at: ledger::from_micros(row.submitted_at),
                    idempotency_key: Some(format!("erasure:{}", subject.request_id)),
                },
            )
            .await
            .map_err(failed)?;
        let last = entries.last();
        Ok(StepReport::counts(serde_json::json!({
            "entries": entries.len(),
            "ledger_sequence": last.map(|e| e.stored.sequence),
            "ledger_hash": last.map(|e| hex::encode(&e.stored.hash)),
        })))
    }

    /// Signs the receipt and completes the saga and the request.
    async fn complete(&self, claimed: &mut ClaimedSaga) -> Result<(), ConsentError> {
        let workspace = claimed.saga.workspace.clone();
        let request_id = claimed.saga.request_id.clone();
        let (_, steps) = self
            .sagas
            .saga(&workspace, &request_id)
            .await?
            .ok_or_else(|| ConsentError::NotFound("saga".into()))?;
        let (row, _) = self
            .store
            .get_request(&workspace, &request_id)
            .await?
            .ok_or_else(|| ConsentError::NotFound("request".into()))?;
        let finished_at = now_us();
        let public = self.vault.signing_public_key(&workspace).await?;
        let iso =
            |us: i64| ledger::from_micros(us).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        #[derive(Serialize)]
        struct ReceiptStep {
            name: String,
            attempts: u32,
            finished_at: String,
            summary: serde_json::Value,
        }
        #[derive(Serialize)]
        struct ErasureReceipt {
            receipt_version: &'static str,
            receipt_id: String,
            controller: String,
            request_id: String,
            kind: &'static str,
            jurisdiction: String,
            regime: String,
            submitted_at: String,
            deadline: String,
            completed_at: String,
            policy_version: String,
            key_version: u32,
            public_key: String,
            steps: Vec<ReceiptStep>,
        }
        let doc = ErasureReceipt {
            receipt_version: "meridian.erasure-receipt/1",
            receipt_id: uuid::Uuid::now_v7().to_string(),
            controller: workspace.clone(),
            request_id: request_id.clone(),
            kind: "erasure",
            jurisdiction: row.jurisdiction.clone(),
            regime: row.regime.clone(),
            submitted_at: iso(row.submitted_at),
            deadline: iso(row.due_at),
            completed_at: iso(finished_at),
            policy_version: self.policies.policy_version().to_owned(),
            key_version: public.key_version,
            public_key: public_key_b64(&public),
            steps: steps
                .iter()
                .map(|s| ReceiptStep {
                    name: s.name.clone(),
                    attempts: s.attempts,
                    finished_at: s.finished_at.map(iso).unwrap_or_default(),
                    summary: SagaStep::from(s).summary,
                })
                .collect(),
        };
        let json = serde_json::to_string(&doc).map_err(|e| ConsentError::Storage(Box::new(e)))?;
        let signature = self.vault.sign(&workspace, json.as_bytes()).await?;
        let completion = Completion {
            finished_at,
            receipt_json: json,
            receipt_signature: B64.encode(signature.bytes),
            reason: format!("erasure saga completed: {} steps", steps.len()),
        };
        if self.sagas.complete_saga(claimed, &completion).await? {
            self.erasure.completed.notify_waiters();
            let seconds = (finished_at - row.submitted_at) as f64 / 1e6;
            tracing::info!(%workspace, %request_id, seconds, "erasure completed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let s = SagaSettings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..SagaSettings::default()
        };
        let first = backoff(&s, 1);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let fourth = backoff(&s, 4);
        assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
        for attempts in [20, 200, u32::MAX] {
            let d = backoff(&s, attempts);
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_secs(2),
                "{d:?}"
            );
        }
    }

    #[test]
    fn subjects_absorb_findings_as_a_union_and_round_trip() {
        let mut s = ErasureSubject {
            request_id: "r".into(),
            blind_indexes: vec![BlindIndex([1; 32])],
            ..Default::default()
        };
        s.absorb(&Found {
            profile_ids: vec!["p1".into()],
            blind_indexes: vec![BlindIndex([1; 32]), BlindIndex([2; 32])],
            vault_subjects: vec!["v1".into()],
        });
        assert_eq!(s.blind_indexes.len(), 2);
        assert_eq!(s.profile_ids, ["p1"]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ErasureSubject>(&json).unwrap(), s);
        assert!(!format!("{s:?}").contains("0101"));
    }
}
