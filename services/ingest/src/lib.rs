//! The ingestion room: accepts batches of events from storefront backends,
//! validates them, applies the collection policy and stores them durably.
//!
//! Exposes the gRPC service implementations; RPCs not built yet answer
//! UNIMPLEMENTED after the caller's workspace is checked.

use meridian_edge::not_served_yet;
use meridian_proto::v1::*;
use tonic::{Request, Response, Status};

/// `meridian.v1.IngestService`.
#[derive(Debug, Default, Clone)]
pub struct IngestApi;

impl IngestApi {
    pub fn into_server(self) -> ingest_service_server::IngestServiceServer<Self> {
        ingest_service_server::IngestServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl ingest_service_server::IngestService for IngestApi {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        not_served_yet(&request, "IngestService.Ingest")
    }
}
