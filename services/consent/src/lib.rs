//! The consent room: the tamper-evident consent ledger (`ConsentService`) and
//! data-subject requests (`DsrService`).
//!
//! - [`ledger`]: the canonical encoding, hash chain per workspace and signature checks (pure).
//! - [`store`]: [`ConsentStore`], one trait with PostgreSQL and SQLite implementations
//!   ([`SqlConsentStore`]); PostgreSQL refuses UPDATE/DELETE/TRUNCATE on the ledger itself.
//! - [`ConsentRoom`]: the domain (subjects, RecordConsent, state now and as of T, history,
//!   receipts, verification, DSRs); [`verify_ledger`] for `meridian ledger verify`.
//! - [`signals`]: TCF / GPP / GPC → purposes through the policy taxonomy.
//! - [`bench::run`] for `meridian bench ledger --json`.
//! - gRPC: `ConsentRoom::consent_api()` / `dsr_api()` give [`ConsentGrpc`] / [`DsrGrpc`], each
//!   with `into_server()`.
//!
//! Subjects: until the identity room exists, an identifier maps to a consent subject through
//! its blind index in `consent_subjects` (the seam the identity room replaces). The ledger
//! names a subject only by a random pseudonymous ref kept sealed under the subject's data
//! key, so `Vault::forget` unlinks the entries (they stay, as proof of consent).
//!
//! The unit structs [`ConsentApi`] and [`DsrApi`] are the old stubs answering UNIMPLEMENTED,
//! kept until the binary wires `ConsentRoom::new(store, vault, policies)`.

pub mod bench;
pub mod dsr;
pub mod error;
mod grpc;
pub mod ledger;
mod room;
pub mod signals;
pub mod store;

pub use dsr::{DataSubjectRequest, ListFilter, RequestKind, RequestStatus, SubmitRequest};
pub use error::ConsentError;
pub use grpc::{ConsentGrpc, DsrGrpc, record_request};
pub use ledger::{BadEntry, VerifyReport};
pub use room::{
    ConsentRoom, Entry, HistoryPage, IdKind, PurposeState, Receipt, RecordRequest, Subject,
    SubjectId, SubjectQuery, VaultSigner, public_key_b64, verify_ledger, verify_receipt,
    verify_with,
};
pub use store::{ConsentStore, SqlConsentStore};

use meridian_edge::not_served_yet;
use meridian_proto::v1::*;
use tonic::{Request, Response, Status};

/// `meridian.v1.ConsentService`.
#[derive(Debug, Default, Clone)]
pub struct ConsentApi;

impl ConsentApi {
    pub fn into_server(self) -> consent_service_server::ConsentServiceServer<Self> {
        consent_service_server::ConsentServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl consent_service_server::ConsentService for ConsentApi {
    async fn record_consent(
        &self,
        request: Request<RecordConsentRequest>,
    ) -> Result<Response<RecordConsentResponse>, Status> {
        not_served_yet(&request, "ConsentService.RecordConsent")
    }

    async fn get_consent(
        &self,
        request: Request<GetConsentRequest>,
    ) -> Result<Response<GetConsentResponse>, Status> {
        not_served_yet(&request, "ConsentService.GetConsent")
    }

    async fn get_consent_as_of(
        &self,
        request: Request<GetConsentAsOfRequest>,
    ) -> Result<Response<GetConsentAsOfResponse>, Status> {
        not_served_yet(&request, "ConsentService.GetConsentAsOf")
    }

    async fn list_consent_history(
        &self,
        request: Request<ListConsentHistoryRequest>,
    ) -> Result<Response<ListConsentHistoryResponse>, Status> {
        not_served_yet(&request, "ConsentService.ListConsentHistory")
    }

    async fn verify_ledger(
        &self,
        request: Request<VerifyLedgerRequest>,
    ) -> Result<Response<VerifyLedgerResponse>, Status> {
        not_served_yet(&request, "ConsentService.VerifyLedger")
    }

    async fn get_receipt(
        &self,
        request: Request<GetReceiptRequest>,
    ) -> Result<Response<GetReceiptResponse>, Status> {
        not_served_yet(&request, "ConsentService.GetReceipt")
    }
}

/// `meridian.v1.DsrService`.
#[derive(Debug, Default, Clone)]
pub struct DsrApi;

impl DsrApi {
    pub fn into_server(self) -> dsr_service_server::DsrServiceServer<Self> {
        dsr_service_server::DsrServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl dsr_service_server::DsrService for DsrApi {
    async fn submit_request(
        &self,
        request: Request<SubmitRequestRequest>,
    ) -> Result<Response<SubmitRequestResponse>, Status> {
        not_served_yet(&request, "DsrService.SubmitRequest")
    }

    async fn get_request(
        &self,
        request: Request<GetRequestRequest>,
    ) -> Result<Response<GetRequestResponse>, Status> {
        not_served_yet(&request, "DsrService.GetRequest")
    }

    async fn list_requests(
        &self,
        request: Request<ListRequestsRequest>,
    ) -> Result<Response<ListRequestsResponse>, Status> {
        not_served_yet(&request, "DsrService.ListRequests")
    }
}
