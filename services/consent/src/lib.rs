//! The consent room: the tamper-evident consent ledger (`ConsentService`) and
//! data-subject requests (`DsrService`).
//!
//! Exposes the gRPC service implementations; RPCs not built yet answer
//! UNIMPLEMENTED after the caller's workspace is checked.

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
