//! Data-subject requests: submission with the legal deadline of the jurisdiction's regime
//! (counted in its time zone by the policy crate, with chrono-tz), statuses with an
//! append-only audit trail, extensions with a reason, and the work each kind needs.
//!
//! Opt-out of sale/sharing becomes ledger entries at once (`ConsentChanged` restricted goes
//! out with them; the request completes). Erasure starts the saga (`crate::erasure`), whose
//! steps and receipt `GetRequest` shows. Access/portability bundles are built when read, one
//! step per section. Rectification and restriction are recorded as PENDING steps until the
//! identity room applies them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ConsentError;
use crate::ledger::{self, Actor, Notice};
use crate::room::{ConsentRoom, Decided, Subject, SubjectQuery};
use crate::signals::{self, Choice, Signals};
use crate::store::{DsrFilter, DsrHistoryRow, DsrRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    Access,
    Portability,
    Erasure,
    Rectification,
    OptOutSaleSharing,
    Restriction,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Access => "access",
            RequestKind::Portability => "portability",
            RequestKind::Erasure => "erasure",
            RequestKind::Rectification => "rectification",
            RequestKind::OptOutSaleSharing => "opt_out_sale_sharing",
            RequestKind::Restriction => "restriction",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            RequestKind::Access,
            RequestKind::Portability,
            RequestKind::Erasure,
            RequestKind::Rectification,
            RequestKind::OptOutSaleSharing,
            RequestKind::Restriction,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Received,
    InProgress,
    Completed,
    Rejected,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Received => "received",
            RequestStatus::InProgress => "in_progress",
            RequestStatus::Completed => "completed",
            RequestStatus::Rejected => "rejected",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            RequestStatus::Received,
            RequestStatus::InProgress,
            RequestStatus::Completed,
            RequestStatus::Rejected,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
    fn is_final(self) -> bool {
        matches!(self, RequestStatus::Completed | RequestStatus::Rejected)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// One step of the work a request needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub state: StepState,
    pub attempts: u32,
    pub last_error: String,
    pub finished_at: Option<i64>,
}

/// A deadline extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    pub new_deadline: i64,
    pub reason: String,
    pub extended_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Detail {
    extensions: Vec<Extension>,
    steps: Vec<Step>,
    confirm_receipt_by: Option<i64>,
    articles: Vec<String>,
}

/// A status change in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub status: RequestStatus,
    pub reason: String,
    pub changed_at: DateTime<Utc>,
}

/// A data-subject request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSubjectRequest {
    pub request_id: String,
    pub kind: RequestKind,
    pub status: RequestStatus,
    pub jurisdiction: String,
    pub regime: String,
    /// The zone the deadline was counted in (the jurisdiction's).
    pub time_zone: String,
    pub submitted_at: DateTime<Utc>,
    /// The deadline in force (extended if an extension was recorded).
    pub deadline: DateTime<Utc>,
    /// Receipt confirmation due (CCPA), if the regime requires it.
    pub confirm_receipt_by: Option<DateTime<Utc>>,
    pub extensions: Vec<Extension>,
    pub steps: Vec<Step>,
    pub history: Vec<StatusChange>,
    /// Access/portability: what can be gathered today (the consent room's part), built at
    /// read time; sections of rooms that do not exist yet are listed under `pending`.
    pub access_bundle: Option<serde_json::Value>,
    /// Erasure: the signed receipt (canonical JSON, base64 Ed25519 signature) once the saga
    /// completed.
    pub receipt: Option<(String, String)>,
}

/// A SubmitRequest, validated.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    pub kind: RequestKind,
    pub subject: SubjectQuery,
    pub jurisdiction: String,
    /// Rectification: corrected traits (sealed under the subject's key at rest).
    pub corrections: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
}

/// Filters for listing.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub statuses: Vec<RequestStatus>,
    pub deadline_before: Option<DateTime<Utc>>,
    pub page_size: u32,
    pub page_token: String,
}

const WAITING: &str =
    "waiting: needs the identity and ingest rooms, which do not exist yet (consent room issue 7)";
const NOT_WIRED: &str = "no source for this section is wired in this process";
/// The sections an access bundle is made of besides consents.
pub const ACCESS_SECTIONS: [&str; 5] = [
    "profile",
    "identifiers",
    "events",
    "audience_memberships",
    "destinations",
];
const CORRECTIONS_FIELD: &str = "dsr.corrections";

fn step(name: &str, state: StepState, last_error: &str, finished_at: Option<i64>) -> Step {
    Step {
        name: name.into(),
        state,
        attempts: u32::from(finished_at.is_some()),
        last_error: last_error.into(),
        finished_at,
    }
}

fn pending(names: &[&str]) -> Vec<Step> {
    names
        .iter()
        .map(|n| step(n, StepState::Pending, WAITING, None))
        .collect()
}

fn from_row(row: DsrRow, history: Vec<DsrHistoryRow>) -> Result<DataSubjectRequest, ConsentError> {
    let corrupt = |what: &str| ConsentError::Corrupt(format!("request {}: {what}", row.request_id));
    let detail: Detail = serde_json::from_str(&row.detail).map_err(|_| corrupt("detail"))?;
    let history = history
        .into_iter()
        .map(|h| {
            Ok(StatusChange {
                status: RequestStatus::parse(&h.status).ok_or_else(|| corrupt("history status"))?,
                reason: h.reason,
                changed_at: ledger::from_micros(h.changed_at),
            })
        })
        .collect::<Result<Vec<_>, ConsentError>>()?;
    Ok(DataSubjectRequest {
        kind: RequestKind::parse(&row.kind).ok_or_else(|| corrupt("kind"))?,
        status: RequestStatus::parse(&row.status).ok_or_else(|| corrupt("status"))?,
        request_id: row.request_id,
        jurisdiction: row.jurisdiction,
        regime: row.regime,
        time_zone: row.time_zone,
        submitted_at: ledger::from_micros(row.submitted_at),
        deadline: ledger::from_micros(row.due_at),
        confirm_receipt_by: detail.confirm_receipt_by.map(ledger::from_micros),
        extensions: detail.extensions,
        steps: detail.steps,
        history,
        access_bundle: None,
        receipt: None,
    })
}

fn detail_json(d: &Detail) -> String {
    serde_json::to_string(d).unwrap_or_default()
}

impl ConsentRoom {
    /// Records a request with its legal deadline; opt-outs are applied at once.
    pub async fn submit_request(
        &self,
        workspace: &str,
        req: SubmitRequest,
        now: DateTime<Utc>,
    ) -> Result<DataSubjectRequest, ConsentError> {
        // a bad jurisdiction is refused before any subject is created
        self.policies
            .dsr_deadline(&req.jurisdiction, now)
            .map_err(|_| {
                ConsentError::invalid("jurisdiction", "not a jurisdiction of the policies")
            })?;
        // A retry (a redelivered webhook) returns the request it made, before the subject is
        // resolved: resolving links identifiers, which must not happen while an erasure of
        // that subject runs.
        let earlier = match &req.idempotency_key {
            Some(key) => {
                self.store
                    .request_by_idempotency_key(workspace, key)
                    .await?
            }
            None => None,
        };
        if let Some(existing) = earlier {
            if existing.kind != req.kind.as_str() {
                return Err(ConsentError::Conflict(
                    "idempotency_key was used for another request".into(),
                ));
            }
            return self.get_request(workspace, &existing.request_id).await;
        }
        let subject = self
            .resolve_subject(workspace, &req.subject, true)
            .await?
            .ok_or_else(|| ConsentError::NotFound("subject".into()))?;
        self.submit_for_subject(workspace, req, subject, now).await
    }

    /// Records a request for a resolved subject (`req.subject` is not read again).
    pub(crate) async fn submit_for_subject(
        &self,
        workspace: &str,
        req: SubmitRequest,
        subject: Subject,
        now: DateTime<Utc>,
    ) -> Result<DataSubjectRequest, ConsentError> {
        let deadline = self
            .policies
            .dsr_deadline(&req.jurisdiction, now)
            .map_err(|_| {
                ConsentError::invalid("jurisdiction", "not a jurisdiction of the policies")
            })?;
        let jurisdiction = self
            .policies
            .jurisdiction(&req.jurisdiction)
            .map(|j| j.code.clone())
            .unwrap_or_else(|| req.jurisdiction.clone());
        let request_id = uuid::Uuid::now_v7().to_string();
        let now_us = now.timestamp_micros();
        let steps = match req.kind {
            // built at read time, one step per section (see `access_bundle`)
            RequestKind::Access | RequestKind::Portability => Vec::new(),
            // the saga's steps live in its own tables (see `erasure`)
            RequestKind::Erasure => Vec::new(),
            RequestKind::Rectification => pending(&["apply_corrections"]),
            RequestKind::Restriction => pending(&["restrict_processing"]),
            RequestKind::OptOutSaleSharing => {
                vec![step("ledger_opt_out", StepState::Pending, "", None)]
            }
        };
        let sealed_corrections = match &req.corrections {
            Some(c) => Some(
                self.vault
                    .seal(
                        workspace,
                        &subject.subject_id,
                        &request_id,
                        CORRECTIONS_FIELD,
                        c.to_string().as_bytes(),
                    )
                    .await?,
            ),
            None => None,
        };
        let mut row = DsrRow {
            request_id,
            kind: req.kind.as_str().into(),
            status: RequestStatus::Received.as_str().into(),
            jurisdiction: jurisdiction.clone(),
            regime: deadline.regime.to_ascii_lowercase(),
            time_zone: deadline.time_zone.clone(),
            subject_id: subject.subject_id.clone(),
            submitted_at: now_us,
            due_at: deadline.due.timestamp_micros(),
            idempotency_key: req.idempotency_key.clone(),
            detail: detail_json(&Detail {
                extensions: Vec::new(),
                steps,
                confirm_receipt_by: deadline.confirm_receipt_by.map(|t| t.timestamp_micros()),
                articles: deadline.articles.clone(),
            }),
            sealed_corrections,
        };
        let first = DsrHistoryRow {
            status: RequestStatus::Received.as_str().into(),
            reason: "submitted".into(),
            changed_at: now_us,
        };
        if let Some(existing) = self.store.insert_request(workspace, &row, &first).await? {
            if existing.subject_id != subject.subject_id || existing.kind != row.kind {
                return Err(ConsentError::Conflict(
                    "idempotency_key was used for another request".into(),
                ));
            }
            return self.get_request(workspace, &existing.request_id).await;
        }
        tracing::info!(
            workspace,
            kind = req.kind.as_str(),
            "data-subject request received"
        );
        if matches!(req.kind, RequestKind::Access | RequestKind::Portability) {
            let (bundle, _) = self
                .access_bundle(workspace, &row.request_id, &subject.subject_id)
                .await?;
            if bundle.get("complete") == Some(&serde_json::Value::Bool(true)) {
                row.status = RequestStatus::Completed.as_str().into();
                let change = DsrHistoryRow {
                    status: row.status.clone(),
                    reason: "every section of the bundle was collected".into(),
                    changed_at: Utc::now().timestamp_micros(),
                };
                self.store
                    .update_request(workspace, &row, Some(&change))
                    .await?;
            }
        }
        if req.kind == RequestKind::Erasure {
            // In progress before the saga exists: a saga can finish within milliseconds, and
            // its `completed` must not be overwritten by this older status.
            row.status = RequestStatus::InProgress.as_str().into();
            let change = DsrHistoryRow {
                status: row.status.clone(),
                reason: "erasure saga started".into(),
                changed_at: Utc::now().timestamp_micros(),
            };
            self.store
                .update_request(workspace, &row, Some(&change))
                .await?;
            self.start_erasure(workspace, &row.request_id, &subject)
                .await?;
        }
        if req.kind == RequestKind::OptOutSaleSharing {
            let choices = signals::gpc_purposes(self.policies.taxonomy())
                .into_iter()
                .map(|purpose| Choice {
                    purpose,
                    decision: ledger::Decision::Refused,
                    lawful_basis: ledger::LawfulBasis::Consent,
                })
                .collect();
            let (jurisdiction, tz) = self.time_zone_for(&jurisdiction, None)?;
            let decided = signals::decide(
                self.policies.taxonomy(),
                &Signals {
                    choices,
                    ..Signals::default()
                },
            )?;
            let recorded = self
                .append_decisions(
                    workspace,
                    &subject,
                    Decided {
                        jurisdiction,
                        tz,
                        sources: decided,
                        notice: Notice::default(),
                        collection_point: format!("dsr:{}", row.request_id),
                        actor: Actor::Subject,
                        at: now,
                        idempotency_key: Some(format!("dsr:{}", row.request_id)),
                    },
                )
                .await?;
            let mut detail: Detail = serde_json::from_str(&row.detail).unwrap_or_default();
            detail.steps = vec![step(
                "ledger_opt_out",
                StepState::Succeeded,
                "",
                Some(Utc::now().timestamp_micros()),
            )];
            row.detail = detail_json(&detail);
            row.status = RequestStatus::Completed.as_str().into();
            let change = DsrHistoryRow {
                status: row.status.clone(),
                reason: format!(
                    "{} opt-out entries appended to the consent ledger",
                    recorded.len()
                ),
                changed_at: Utc::now().timestamp_micros(),
            };
            self.store
                .update_request(workspace, &row, Some(&change))
                .await?;
        }
        self.get_request(workspace, &row.request_id).await
    }

    pub async fn get_request(
        &self,
        workspace: &str,
        request_id: &str,
    ) -> Result<DataSubjectRequest, ConsentError> {
        let (row, history) = self
            .store
            .get_request(workspace, request_id)
            .await?
            .ok_or_else(|| ConsentError::NotFound("request".into()))?;
        let subject_id = row.subject_id.clone();
        let mut request = from_row(row, history)?;
        match request.kind {
            RequestKind::Access | RequestKind::Portability => {
                let (bundle, steps) = self
                    .access_bundle(workspace, &request.request_id, &subject_id)
                    .await?;
                request.access_bundle = Some(bundle);
                request.steps = steps;
            }
            RequestKind::Erasure => {
                if let Some((steps, receipt)) =
                    self.erasure_saga(workspace, &request.request_id).await?
                {
                    request.steps = steps
                        .into_iter()
                        .map(|s| Step {
                            name: s.name,
                            state: match s.state.as_str() {
                                "running" => StepState::Running,
                                "succeeded" => StepState::Succeeded,
                                "failed" => StepState::Failed,
                                _ => StepState::Pending,
                            },
                            attempts: s.attempts,
                            last_error: s.last_error,
                            finished_at: s.finished_at,
                        })
                        .collect();
                    request.receipt = receipt;
                }
            }
            _ => {}
        }
        Ok(request)
    }

    /// Moves a request to `status` with a reason (the audit trail keeps every change).
    pub async fn set_request_status(
        &self,
        workspace: &str,
        request_id: &str,
        status: RequestStatus,
        reason: &str,
    ) -> Result<DataSubjectRequest, ConsentError> {
        if reason.trim().is_empty() {
            return Err(ConsentError::invalid("reason", "required"));
        }
        let (mut row, _) = self
            .store
            .get_request(workspace, request_id)
            .await?
            .ok_or_else(|| ConsentError::NotFound("request".into()))?;
        let current = RequestStatus::parse(&row.status)
            .ok_or_else(|| ConsentError::Corrupt("request status".into()))?;
        if current.is_final() || status == RequestStatus::Received || status == current {
            return Err(ConsentError::Conflict(format!(
                "a {} request cannot become {}",
                current.as_str(),
                status.as_str()
            )));
        }
        row.status = status.as_str().into();
        let change = DsrHistoryRow {
            status: row.status.clone(),
            reason: reason.into(),
            changed_at: Utc::now().timestamp_micros(),
        };
        self.store
            .update_request(workspace, &row, Some(&change))
            .await?;
        self.get_request(workspace, request_id).await
    }

    /// Extends the deadline by the regime's extension (once), recording the reason.
    pub async fn extend_request(
        &self,
        workspace: &str,
        request_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<DataSubjectRequest, ConsentError> {
        if reason.trim().is_empty() {
            return Err(ConsentError::invalid("reason", "an extension must say why"));
        }
        let (mut row, _) = self
            .store
            .get_request(workspace, request_id)
            .await?
            .ok_or_else(|| ConsentError::NotFound("request".into()))?;
        let mut detail: Detail = serde_json::from_str(&row.detail)
            .map_err(|_| ConsentError::Corrupt("request detail".into()))?;
        if !detail.extensions.is_empty() {
            return Err(ConsentError::Conflict(
                "the deadline was already extended".into(),
            ));
        }
        let deadline = self
            .policies
            .dsr_deadline(&row.jurisdiction, ledger::from_micros(row.submitted_at))
            .map_err(|e| ConsentError::Policy(e.to_string()))?;
        let extended = deadline.extended_due.ok_or_else(|| {
            ConsentError::Conflict(format!("{} allows no extension", deadline.regime))
        })?;
        detail.extensions.push(Extension {
            new_deadline: extended.timestamp_micros(),
            reason: reason.into(),
            extended_at: now.timestamp_micros(),
        });
        row.due_at = extended.timestamp_micros();
        row.detail = detail_json(&detail);
        self.store.update_request(workspace, &row, None).await?;
        self.get_request(workspace, request_id).await
    }

    /// The access/portability bundle of a request's subject, decrypted, built now from the
    /// consent room and every [`AccessSource`](crate::AccessSource); one step per section.
    async fn access_bundle(
        &self,
        workspace: &str,
        request_id: &str,
        subject_id: &str,
    ) -> Result<(serde_json::Value, Vec<Step>), ConsentError> {
        let now_us = Utc::now().timestamp_micros();
        let mut steps = Vec::new();
        let mut bundle = serde_json::Map::new();
        bundle.insert("format".into(), "meridian.access-bundle/1".into());
        bundle.insert("request_id".into(), request_id.into());
        bundle.insert("generated_at".into(), serde_json::json!(Utc::now()));
        let subject = match self.store.subject_by_id(workspace, subject_id).await? {
            Some(row) => match self.open_ref(workspace, &row).await {
                Ok(s) => Some(s),
                Err(ConsentError::SubjectErased) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let Some(subject) = subject else {
            bundle.insert("erased".into(), true.into());
            bundle.insert("complete".into(), true.into());
            return Ok((serde_json::Value::Object(bundle), steps));
        };
        bundle.insert(
            "consents".into(),
            self.consent_bundle(workspace, subject_id).await?,
        );
        steps.push(step(
            "collect_consents",
            StepState::Succeeded,
            "",
            Some(now_us),
        ));
        let mut complete = true;
        let located = self
            .locate_for_access(workspace, request_id, &subject)
            .await;
        let mut wired = Vec::new();
        for source in &self.erasure.access {
            let name = format!("collect_{}", source.section());
            wired.push(source.section().to_owned());
            let result = match &located {
                Ok(es) => source.collect(workspace, es).await,
                Err(e) => Err(e.clone()),
            };
            match result {
                Ok(section) => {
                    bundle.insert(source.section().to_owned(), section);
                    steps.push(step(&name, StepState::Succeeded, "", Some(now_us)));
                }
                Err(e) => {
                    complete = false;
                    steps.push(step(&name, StepState::Failed, &e.0, None));
                }
            }
        }
        let missing: Vec<&str> = ACCESS_SECTIONS
            .iter()
            .copied()
            .filter(|s| !wired.iter().any(|w| w == s))
            .collect();
        for m in &missing {
            complete = false;
            steps.push(step(
                &format!("collect_{m}"),
                StepState::Pending,
                NOT_WIRED,
                None,
            ));
        }
        if !missing.is_empty() {
            bundle.insert("unavailable".into(), serde_json::json!(missing));
            bundle.insert("unavailable_reason".into(), NOT_WIRED.into());
        }
        bundle.insert("complete".into(), complete.into());
        Ok((serde_json::Value::Object(bundle), steps))
    }

    /// Starts an erasure of every subject the room knows in the workspace (Shopify's
    /// `shop/redact`); idempotent per `key_prefix` and subject. Returns the requests made.
    pub async fn erase_every_subject(
        &self,
        workspace: &str,
        jurisdiction: &str,
        key_prefix: &str,
    ) -> Result<u64, ConsentError> {
        let mut started = 0;
        for subject_id in self.store.workspace_subject_ids(workspace).await? {
            let Some(row) = self.store.subject_by_id(workspace, &subject_id).await? else {
                continue;
            };
            let subject = match self.open_ref(workspace, &row).await {
                Ok(s) => s,
                Err(ConsentError::SubjectErased) => continue,
                Err(e) => return Err(e),
            };
            let req = SubmitRequest {
                kind: RequestKind::Erasure,
                subject: SubjectQuery::default(),
                jurisdiction: jurisdiction.to_owned(),
                corrections: None,
                idempotency_key: Some(format!("{key_prefix}:{subject_id}")),
            };
            self.submit_for_subject(workspace, req, subject, Utc::now())
                .await?;
            started += 1;
        }
        Ok(started)
    }

    /// Requests by status and deadline, soonest deadline first.
    pub async fn list_requests(
        &self,
        workspace: &str,
        filter: &ListFilter,
    ) -> Result<(Vec<DataSubjectRequest>, String), ConsentError> {
        let after = if filter.page_token.is_empty() {
            None
        } else {
            let parsed = filter
                .page_token
                .split_once(':')
                .and_then(|(t, id)| Some((t.parse::<i64>().ok()?, id.to_owned())));
            Some(parsed.ok_or_else(|| {
                ConsentError::invalid("page_token", "not a token this service issued")
            })?)
        };
        let size = match filter.page_size {
            0 => 50,
            n => n.min(500),
        };
        let rows = self
            .store
            .list_requests(
                workspace,
                &DsrFilter {
                    statuses: filter
                        .statuses
                        .iter()
                        .map(|s| s.as_str().to_owned())
                        .collect(),
                    due_before: filter.deadline_before.map(|t| t.timestamp_micros()),
                    after,
                    limit: size + 1,
                },
            )
            .await?;
        let more = rows.len() > size as usize;
        let mut out = Vec::new();
        let mut token = String::new();
        for (row, history) in rows.into_iter().take(size as usize) {
            if more {
                token = format!("{}:{}", row.due_at, row.request_id);
            }
            out.push(from_row(row, history)?);
        }
        Ok((out, token))
    }
}
