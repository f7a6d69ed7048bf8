//! Thin gRPC handlers: decode → validate into domain types → call the room → map the typed
//! error to a `Status` (one `From` impl).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use meridian_edge::status::{FieldViolation, internal, invalid_arguments};
use meridian_proto::v1 as pb;
use meridian_proto::v1::{consent_service_server, dsr_service_server};
use tonic::{Request, Response, Status};

use crate::dsr::{self, ListFilter, RequestKind, RequestStatus, SubmitRequest};
use crate::error::ConsentError;
use crate::ledger::{Actor, Decision, LawfulBasis, Notice, Source};
use crate::room::{
    ConsentRoom, Entry, IdKind, PurposeState, RecordRequest, SubjectId, SubjectQuery,
};
use crate::signals::{Choice, Signals};

impl From<ConsentError> for Status {
    fn from(e: ConsentError) -> Self {
        match e {
            ConsentError::Invalid(v) => invalid_arguments(
                v.into_iter()
                    .map(|(f, d)| FieldViolation::new(f, d))
                    .collect(),
            ),
            ConsentError::NotFound(what) => Status::not_found(format!("{what} not found")),
            ConsentError::Conflict(why) => Status::failed_precondition(why),
            e @ ConsentError::SubjectErased => Status::failed_precondition(e.to_string()),
            other => internal(&other),
        }
    }
}

/// Collects field violations while decoding a request.
#[derive(Default)]
struct Violations(Vec<(String, String)>);

impl Violations {
    fn add(&mut self, field: impl Into<String>, why: impl Into<String>) {
        self.0.push((field.into(), why.into()));
    }
    fn finish(self) -> Result<(), ConsentError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConsentError::Invalid(self.0))
        }
    }
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn from_ts(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
    DateTime::from_timestamp(t.seconds, nanos)
}

fn zoned(t: DateTime<Utc>, tz: &str) -> pb::ZonedTime {
    pb::ZonedTime {
        time: Some(ts(t)),
        time_zone: tz.to_owned(),
    }
}

fn subject(v: &mut Violations, field: &str, s: Option<&pb::SubjectRef>) -> SubjectQuery {
    let Some(s) = s else {
        v.add(field, "required");
        return SubjectQuery::default();
    };
    let mut out = SubjectQuery::default();
    for (i, id) in s.identifiers.iter().enumerate() {
        let f = format!("{field}.identifiers[{i}]");
        let scoped = |name: &str| IdKind::Scoped(name.to_owned());
        let kind = match pb::IdentifierType::try_from(id.r#type) {
            Ok(pb::IdentifierType::Email) => IdKind::Email,
            Ok(pb::IdentifierType::Phone) => IdKind::Phone,
            Ok(
                pb::IdentifierType::Idfa | pb::IdentifierType::Gaid | pb::IdentifierType::DeviceId,
            ) => IdKind::DeviceId,
            Ok(pb::IdentifierType::AnonymousId) => scoped("anonymous_id"),
            Ok(pb::IdentifierType::UserId) => scoped("user_id"),
            Ok(pb::IdentifierType::Fbclid) => scoped("fbclid"),
            Ok(pb::IdentifierType::Gclid) => scoped("gclid"),
            Ok(pb::IdentifierType::Ttclid) => scoped("ttclid"),
            Ok(pb::IdentifierType::StorefrontCustomerId) => {
                if id.source.trim().is_empty() {
                    v.add(
                        format!("{f}.source"),
                        "required for a storefront customer id",
                    );
                    continue;
                }
                scoped(&format!("storefront.{}", id.source.trim()))
            }
            Ok(pb::IdentifierType::Unspecified) | Err(_) => {
                v.add(
                    format!("{f}.type"),
                    "unspecified or unknown identifier type",
                );
                continue;
            }
        };
        if id.value.trim().is_empty() {
            v.add(format!("{f}.value"), "required");
            continue;
        }
        out.identifiers.push(SubjectId {
            kind,
            value: id.value.clone(),
            default_region: Some(id.default_region.clone()).filter(|r| !r.trim().is_empty()),
        });
    }
    if !s.profile_id.trim().is_empty() {
        out.identifiers.push(SubjectId {
            kind: IdKind::Scoped("meridian_profile".into()),
            value: s.profile_id.clone(),
            default_region: None,
        });
    }
    if s.identifiers.is_empty() && s.profile_id.trim().is_empty() {
        v.add(
            field,
            "name the subject by at least one identifier or a profile id",
        );
    }
    out
}

fn jurisdiction(v: &mut Violations, field: &str, j: &str) -> String {
    if j.trim().is_empty() {
        v.add(field, "required (e.g. EU-DE, GB, US-CA, BR)");
    } else if let Err(e) = meridian_policy::Jurisdiction::parse(j) {
        v.add(field, e.to_string());
    }
    j.trim().to_owned()
}

fn time_zone(v: &mut Violations, field: &str, tz: &str) -> Option<Tz> {
    if tz.trim().is_empty() {
        return None;
    }
    match tz.trim().parse::<Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            v.add(field, "not an IANA time zone (e.g. Europe/Paris)");
            None
        }
    }
}

fn idempotency(v: &mut Violations, key: &str) -> Option<String> {
    if key.len() > 200 {
        v.add("idempotency_key", "longer than 200 bytes");
    }
    Some(key.to_owned()).filter(|k| !k.is_empty())
}

fn decision_to_pb(d: Decision) -> i32 {
    (match d {
        Decision::Given => pb::ConsentDecision::Given,
        Decision::Refused => pb::ConsentDecision::Refused,
        Decision::Withdrawn => pb::ConsentDecision::Withdrawn,
        Decision::Expired => pb::ConsentDecision::Expired,
    }) as i32
}

fn basis_to_pb(b: LawfulBasis) -> i32 {
    (match b {
        LawfulBasis::Consent => pb::LawfulBasis::Consent,
        LawfulBasis::Contract => pb::LawfulBasis::Contract,
        LawfulBasis::LegalObligation => pb::LawfulBasis::LegalObligation,
        LawfulBasis::VitalInterests => pb::LawfulBasis::VitalInterests,
        LawfulBasis::PublicTask => pb::LawfulBasis::PublicTask,
        LawfulBasis::LegitimateInterests => pb::LawfulBasis::LegitimateInterests,
    }) as i32
}

fn basis_from_pb(b: i32) -> Option<LawfulBasis> {
    Some(match pb::LawfulBasis::try_from(b).ok()? {
        pb::LawfulBasis::Unspecified | pb::LawfulBasis::Consent => LawfulBasis::Consent,
        pb::LawfulBasis::Contract => LawfulBasis::Contract,
        pb::LawfulBasis::LegalObligation => LawfulBasis::LegalObligation,
        pb::LawfulBasis::VitalInterests => LawfulBasis::VitalInterests,
        pb::LawfulBasis::PublicTask => LawfulBasis::PublicTask,
        pb::LawfulBasis::LegitimateInterests => LawfulBasis::LegitimateInterests,
    })
}

fn entry_to_pb(e: Entry) -> pb::ConsentEntry {
    let source = match e.body.source {
        Source::Explicit => pb::SignalSource::Explicit,
        Source::Tcf => pb::SignalSource::Tcf,
        Source::Gpp => pb::SignalSource::Gpp,
        Source::Gpc => pb::SignalSource::Gpc,
        Source::ValidityPeriod => pb::SignalSource::ValidityPeriod,
    } as i32;
    let actor = match e.body.actor {
        Actor::Subject => pb::Actor::Subject,
        Actor::Guardian => pb::Actor::Guardian,
        Actor::Agent => pb::Actor::Agent,
        Actor::Controller => pb::Actor::Controller,
    } as i32;
    let recorded_at = e.stored.recorded_at_utc();
    pb::ConsentEntry {
        entry_id: e.stored.entry_id,
        schema_version: e.body.schema_version,
        subject_ref: e.stored.subject_ref,
        controller: e.body.controller,
        notice: Some(pb::Notice {
            url: e.body.notice.url,
            version: e.body.notice.version,
            hash: e.body.notice.hash,
            language: e.body.notice.language,
        }),
        purposes: e
            .body
            .purposes
            .into_iter()
            .map(|p| pb::PurposeChoice {
                purpose: p.purpose,
                decision: decision_to_pb(p.decision),
                lawful_basis: basis_to_pb(p.lawful_basis),
            })
            .collect(),
        jurisdiction: e.body.jurisdiction,
        source,
        raw_signal: e.body.raw_signal,
        collection_point: e.body.collection_point,
        actor,
        policy_version: e.body.policy_version,
        recorded_at: Some(zoned(recorded_at, &e.body.time_zone)),
        sequence: e.stored.sequence,
        prev_hash: hex::encode(&e.stored.prev_hash),
        hash: hex::encode(&e.stored.hash),
        signature: e
            .stored
            .signature
            .map(|s| B64.encode(s.bytes))
            .unwrap_or_default(),
    }
}

fn state_to_pb(s: PurposeState) -> pb::PurposeConsentState {
    pb::PurposeConsentState {
        purpose: s.purpose,
        decision: decision_to_pb(s.decision),
        lawful_basis: basis_to_pb(s.lawful_basis),
        entry_id: s.entry_id,
        decided_at: Some(ts(s.decided_at)),
        expires_at: s.expires_at.map(|t| zoned(t, &s.time_zone)),
    }
}

/// Decodes a RecordConsentRequest into the domain request, naming every field at fault.
pub fn record_request(r: &pb::RecordConsentRequest) -> Result<RecordRequest, ConsentError> {
    let mut v = Violations::default();
    let subject = subject(&mut v, "subject", r.subject.as_ref());
    let jurisdiction = jurisdiction(&mut v, "jurisdiction", &r.jurisdiction);
    let mut signals = Signals::default();
    match &r.signals {
        None => v.add("signals", "required"),
        Some(s) => {
            for (i, c) in s.choices.iter().enumerate() {
                let f = format!("signals.choices[{i}]");
                if c.purpose.trim().is_empty() {
                    v.add(format!("{f}.purpose"), "required");
                }
                let decision = match pb::ConsentDecision::try_from(c.decision) {
                    Ok(pb::ConsentDecision::Given) => Some(Decision::Given),
                    Ok(pb::ConsentDecision::Refused) => Some(Decision::Refused),
                    Ok(pb::ConsentDecision::Withdrawn) => Some(Decision::Withdrawn),
                    Ok(pb::ConsentDecision::Expired) => {
                        v.add(
                            format!("{f}.decision"),
                            "EXPIRED is derived from the validity period, not recorded",
                        );
                        None
                    }
                    _ => {
                        v.add(
                            format!("{f}.decision"),
                            "must be GIVEN, REFUSED or WITHDRAWN",
                        );
                        None
                    }
                };
                let basis = basis_from_pb(c.lawful_basis);
                if basis.is_none() {
                    v.add(format!("{f}.lawful_basis"), "unknown lawful basis");
                }
                if let (Some(decision), Some(lawful_basis)) = (decision, basis) {
                    signals.choices.push(Choice {
                        purpose: c.purpose.trim().to_owned(),
                        decision,
                        lawful_basis,
                    });
                }
            }
            signals.tc_string = Some(s.tc_string.clone()).filter(|t| !t.trim().is_empty());
            signals.gpp_string = Some(s.gpp_string.clone()).filter(|t| !t.trim().is_empty());
            signals.gpc = s.gpc;
        }
    }
    let notice = r.notice.clone().unwrap_or_default();
    let hex64 = notice.hash.len() == 64 && notice.hash.bytes().all(|b| b.is_ascii_hexdigit());
    if !notice.hash.is_empty() && !hex64 {
        v.add(
            "notice.hash",
            "must be the hex SHA-256 of the notice text (64 hex digits)",
        );
    }
    if r.collection_point.trim().is_empty() {
        v.add(
            "collection_point",
            "required (e.g. checkout, cookie-banner)",
        );
    }
    let actor = match pb::Actor::try_from(r.actor) {
        Ok(pb::Actor::Unspecified | pb::Actor::Subject) => Actor::Subject,
        Ok(pb::Actor::Guardian) => Actor::Guardian,
        Ok(pb::Actor::Agent) => Actor::Agent,
        Ok(pb::Actor::Controller) => {
            v.add(
                "actor",
                "CONTROLLER is recorded by the service itself (expiry)",
            );
            Actor::Subject
        }
        Err(_) => {
            v.add("actor", "unknown actor");
            Actor::Subject
        }
    };
    let tz = time_zone(&mut v, "time_zone", &r.time_zone);
    let collected_at = match &r.collected_at {
        None => None,
        Some(t) => {
            let parsed = from_ts(t);
            if parsed.is_none() {
                v.add("collected_at", "not a valid timestamp");
            }
            parsed
        }
    };
    let idempotency_key = idempotency(&mut v, &r.idempotency_key);
    v.finish()?;
    Ok(RecordRequest {
        subject,
        jurisdiction,
        signals,
        notice: Notice {
            url: notice.url,
            version: notice.version,
            hash: notice.hash.to_ascii_lowercase(),
            language: notice.language,
        },
        collection_point: r.collection_point.trim().to_owned(),
        actor,
        time_zone: tz,
        collected_at,
        idempotency_key,
    })
}

/// `meridian.v1.ConsentService` on a [`ConsentRoom`].
#[derive(Debug, Clone)]
pub struct ConsentGrpc {
    room: ConsentRoom,
}

impl ConsentGrpc {
    pub fn new(room: ConsentRoom) -> Self {
        ConsentGrpc { room }
    }
    pub fn into_server(self) -> consent_service_server::ConsentServiceServer<Self> {
        consent_service_server::ConsentServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl consent_service_server::ConsentService for ConsentGrpc {
    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        let ws = meridian_edge::workspace(&request)?;
        let req = record_request(request.get_ref())?;
        let entries = self.room.record(ws.as_str(), req).await?;
        Ok(Response::new(pb::RecordConsentResponse {
            entries: entries.into_iter().map(entry_to_pb).collect(),
        }))
    }

    async fn get_consent(
        &self,
        request: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::GetConsentResponse>, Status> {
        let ws = meridian_edge::workspace(&request)?;
        let r = request.get_ref();
        let mut v = Violations::default();
        let q = subject(&mut v, "subject", r.subject.as_ref());
        v.finish()?;
        let states = self
            .room
            .current(ws.as_str(), &q, &r.purposes, Utc::now())
            .await?;
        Ok(Response::new(pb::GetConsentResponse {
            states: states.into_iter().map(state_to_pb).collect(),
        }))
    }

    async fn get_consent_as_of(
        &self,
        request: Request<pb::GetConsentAsOfRequest>,
    ) -> Result<Response<pb::GetConsentAsOfResponse>, Status> {
        let ws = meridian_edge::workspace(&request)?;
        let r = request.get_ref();
        let mut v = Violations::default();
        let q = subject(&mut v, "subject", r.subject.as_ref());
        let as_of = match &r.as_of {
            None => {
                v.add("as_of", "required");
                None
            }
            Some(t) => {
                let p = from_ts(t);
                if p.is_none() {
                    v.add("as_of", "not a valid timestamp");
                }
                p
            }
        };
        v.finish()?;
        let as_of = as_of.unwrap_or_else(Utc::now);
        let states = self.room.as_of(ws.as_str(), &q, &r.purposes, as_of).await?;
        Ok(Response::new(pb::GetConsentAsOfResponse {
            states: states.into_iter().map(state_to_pb).collect(),
        }))
    }

    async fn list_consent_history(
        &self,
        request: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        let ws = meridian_edge::workspace(&request)?;
        let r = request.get_ref();
        let mut v = Violations::default();
        let q = subject(&mut v, "subject", r.subject.as_ref());
        v.finish()?;
        let page = self
            .room
            .history(ws.as_str(), &q, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListConsentHistoryResponse {
            entries: page.entries.into_iter().map(entry_to_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn verify_ledger(
        &self,
        request: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        let ws = meridian_edge::workspace(&request)?;
        let report = self.room.verify(ws.as_str()).await?;
        let bad = report.first_bad.clone().unwrap_or(crate::ledger::BadEntry {
            sequence: 0,
            entry_id: String::new(),
            reason: String::new(),
        });
        Ok(Response::new(pb::VerifyLedgerResponse {
            valid: report.valid,
            entries_checked: report.entries_checked,
            first_bad_entry_id: bad.entry_id,
            first_bad_sequence: bad.sequence,
            reason: bad.reason,
            public_key: hex::decode(&report.public_key_hex)
                .map(|b| B64.encode(b))
                .unwrap_or_default(),
            head_sequence: report.head_sequence,
            head_hash: report.head_hash_hex,
        }))
    }

    async fn get_receipt(
        &self,
        request: Request<pb::GetReceiptRequest>,
    ) -> Result<Response<pb::GetReceiptResponse>, Status> {
        let ws = meridian_edge::workspace(&request)?;
        let r = request.get_ref();
        let mut v = Violations::default();
        let q = subject(&mut v, "subject", r.subject.as_ref());
        v.finish()?;
        let receipt = self.room.receipt(ws.as_str(), &q).await?;
        Ok(Response::new(pb::GetReceiptResponse {
            receipt_json: receipt.json,
            signature: receipt.signature,
            public_key: receipt.public_key,
        }))
    }
}

// ---- DSR ------------------------------------------------------------------------------

fn kind_from_pb(k: i32) -> Option<RequestKind> {
    Some(match pb::RequestKind::try_from(k).ok()? {
        pb::RequestKind::Access => RequestKind::Access,
        pb::RequestKind::Portability => RequestKind::Portability,
        pb::RequestKind::Erasure => RequestKind::Erasure,
        pb::RequestKind::Rectification => RequestKind::Rectification,
        pb::RequestKind::OptOutSaleSharing => RequestKind::OptOutSaleSharing,
        pb::RequestKind::Restriction => RequestKind::Restriction,
        pb::RequestKind::Unspecified => return None,
    })
}

fn kind_to_pb(k: RequestKind) -> i32 {
    (match k {
        RequestKind::Access => pb::RequestKind::Access,
        RequestKind::Portability => pb::RequestKind::Portability,
        RequestKind::Erasure => pb::RequestKind::Erasure,
        RequestKind::Rectification => pb::RequestKind::Rectification,
        RequestKind::OptOutSaleSharing => pb::RequestKind::OptOutSaleSharing,
        RequestKind::Restriction => pb::RequestKind::Restriction,
    }) as i32
}

fn status_to_pb(s: RequestStatus) -> i32 {
    (match s {
        RequestStatus::Received => pb::RequestStatus::Received,
        RequestStatus::InProgress => pb::RequestStatus::InProgress,
        RequestStatus::Completed => pb::RequestStatus::Completed,
        RequestStatus::Rejected => pb::RequestStatus::Rejected,
    }) as i32
}

fn status_from_pb(s: i32) -> Option<RequestStatus> {
    Some(match pb::RequestStatus::try_from(s).ok()? {
        pb::RequestStatus::Received => RequestStatus::Received,
        pb::RequestStatus::InProgress => RequestStatus::InProgress,
        pb::RequestStatus::Completed => RequestStatus::Completed,
        pb::RequestStatus::Rejected => RequestStatus::Rejected,
        pb::RequestStatus::Unspecified => return None,
    })
}

fn request_to_pb(r: dsr::DataSubjectRequest) -> pb::DataSubjectRequest {
    let tz = r.time_zone.clone();
    pb::DataSubjectRequest {
        request_id: r.request_id,
        kind: kind_to_pb(r.kind),
        status: status_to_pb(r.status),
        jurisdiction: r.jurisdiction,
        regime: r.regime,
        submitted_at: Some(ts(r.submitted_at)),
        deadline: Some(zoned(r.deadline, &tz)),
        extensions: r
            .extensions
            .into_iter()
            .map(|e| pb::DeadlineExtension {
                new_deadline: Some(zoned(crate::ledger::from_micros(e.new_deadline), &tz)),
                reason: e.reason,
                extended_at: Some(ts(crate::ledger::from_micros(e.extended_at))),
            })
            .collect(),
        steps: r
            .steps
            .into_iter()
            .map(|s| pb::RequestStep {
                name: s.name,
                state: (match s.state {
                    dsr::StepState::Pending => pb::StepState::Pending,
                    dsr::StepState::Running => pb::StepState::Running,
                    dsr::StepState::Succeeded => pb::StepState::Succeeded,
                    dsr::StepState::Failed => pb::StepState::Failed,
                }) as i32,
                attempts: s.attempts,
                last_error: s.last_error,
                finished_at: s.finished_at.map(|t| ts(crate::ledger::from_micros(t))),
            })
            .collect(),
        history: r
            .history
            .into_iter()
            .map(|h| pb::StatusChange {
                status: status_to_pb(h.status),
                reason: h.reason,
                changed_at: Some(ts(h.changed_at)),
            })
            .collect(),
        access_bundle_json: r
            .access_bundle
            .map(|b| b.to_string().into_bytes())
            .unwrap_or_default(),
        receipt_json: r
            .receipt
            .as_ref()
            .map(|(j, _)| j.clone())
            .unwrap_or_default(),
        receipt_signature: r.receipt.map(|(_, s)| s).unwrap_or_default(),
    }
}

/// `meridian.v1.DsrService` on a [`ConsentRoom`].
#[derive(Debug, Clone)]
pub struct DsrGrpc {
    room: ConsentRoom,
}

impl DsrGrpc {
    pub fn new(room: ConsentRoom) -> Self {
        DsrGrpc { room }
    }
    pub fn into_server(self) -> dsr_service_server::DsrServiceServer<Self> {
        dsr_service_server::DsrServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl dsr_service_server::DsrService for DsrGrpc {
    async fn submit_request(
        &self,
        request: Request<pb::SubmitRequestRequest>,
    ) -> Result<Response<pb::SubmitRequestResponse>, Status> {
        let ws = meridian_edge::workspace(&request)?;
        let r = request.get_ref();
        let mut v = Violations::default();
        let kind = kind_from_pb(r.kind);
        if kind.is_none() {
            v.add("kind", "unspecified or unknown request kind");
        }
        let q = subject(&mut v, "subject", r.subject.as_ref());
        let j = jurisdiction(&mut v, "jurisdiction", &r.jurisdiction);
        // the deadline is counted in the jurisdiction's zone; a given zone must still be valid
        let _ = time_zone(&mut v, "time_zone", &r.time_zone);
        let corrections = r
            .corrections
            .as_ref()
            .map(|c| serde_json::Value::Object(c.0.clone()));
        if kind == Some(RequestKind::Rectification) && corrections.is_none() {
            v.add("corrections", "required for a rectification");
        }
        let idempotency_key = idempotency(&mut v, &r.idempotency_key);
        v.finish()?;
        let Some(kind) = kind else {
            return Err(Status::invalid_argument("kind"));
        };
        let req = SubmitRequest {
            kind,
            subject: q,
            jurisdiction: j,
            corrections,
            idempotency_key,
        };
        let out = self
            .room
            .submit_request(ws.as_str(), req, Utc::now())
            .await?;
        Ok(Response::new(pb::SubmitRequestResponse {
            request: Some(request_to_pb(out)),
        }))
    }

    async fn get_request(
        &self,
        request: Request<pb::GetRequestRequest>,
    ) -> Result<Response<pb::GetRequestResponse>, Status> {
        let ws = meridian_edge::workspace(&request)?;
        let id = request.get_ref().request_id.trim();
        if id.is_empty() {
            return Err(ConsentError::invalid("request_id", "required").into());
        }
        let out = self.room.get_request(ws.as_str(), id).await?;
        Ok(Response::new(pb::GetRequestResponse {
            request: Some(request_to_pb(out)),
        }))
    }

    async fn list_requests(
        &self,
        request: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        let ws = meridian_edge::workspace(&request)?;
        let r = request.get_ref();
        let mut v = Violations::default();
        let mut statuses = Vec::new();
        for (i, s) in r.statuses.iter().enumerate() {
            match status_from_pb(*s) {
                Some(s) => statuses.push(s),
                None => v.add(format!("statuses[{i}]"), "unspecified or unknown status"),
            }
        }
        let deadline_before = match &r.deadline_before {
            None => None,
            Some(t) => {
                let p = from_ts(t);
                if p.is_none() {
                    v.add("deadline_before", "not a valid timestamp");
                }
                p
            }
        };
        v.finish()?;
        let (requests, next_page_token) = self
            .room
            .list_requests(
                ws.as_str(),
                &ListFilter {
                    statuses,
                    deadline_before,
                    page_size: r.page_size,
                    page_token: r.page_token.clone(),
                },
            )
            .await?;
        Ok(Response::new(pb::ListRequestsResponse {
            requests: requests.into_iter().map(request_to_pb).collect(),
            next_page_token,
        }))
    }
}

impl ConsentRoom {
    /// The gRPC `ConsentService` of this room.
    pub fn consent_api(&self) -> ConsentGrpc {
        ConsentGrpc::new(self.clone())
    }
    /// The gRPC `DsrService` of this room.
    pub fn dsr_api(&self) -> DsrGrpc {
        DsrGrpc::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_field_is_named() {
        let r = pb::RecordConsentRequest {
            subject: Some(pb::SubjectRef {
                identifiers: vec![pb::Identifier {
                    r#type: 0,
                    value: "x".into(),
                    ..Default::default()
                }],
                profile_id: String::new(),
            }),
            jurisdiction: "not a place".into(),
            signals: Some(pb::ConsentSignals {
                choices: vec![pb::PurposeChoice {
                    purpose: "analytics".into(),
                    decision: pb::ConsentDecision::Expired as i32,
                    lawful_basis: 0,
                }],
                ..Default::default()
            }),
            notice: Some(pb::Notice {
                hash: "xyz".into(),
                ..Default::default()
            }),
            time_zone: "Mars/Olympus".into(),
            ..Default::default()
        };
        let Err(ConsentError::Invalid(v)) = record_request(&r) else {
            panic!("accepted")
        };
        let fields: Vec<&str> = v.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "subject.identifiers[0].type",
                "jurisdiction",
                "signals.choices[0].decision",
                "notice.hash",
                "collection_point",
                "time_zone"
            ]
        );
        let status = Status::from(ConsentError::Invalid(v));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("notice.hash"));
    }

    #[test]
    fn timestamps_out_of_range_are_refused_not_panicking() {
        assert!(
            from_ts(&prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_none()
        );
        assert!(
            from_ts(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_none()
        );
        assert!(
            from_ts(&prost_types::Timestamp {
                seconds: 0,
                nanos: 5
            })
            .is_some()
        );
    }
}
