//! The identity room: joins identifiers into profiles by deterministic,
//! explainable rules, and serves profiles and their events.
//!
//! Exposes the gRPC service implementations; RPCs not built yet answer
//! UNIMPLEMENTED after the caller's workspace is checked.

use meridian_edge::not_served_yet;
use meridian_proto::v1::*;
use tonic::{Request, Response, Status};

/// `meridian.v1.IdentityService`.
#[derive(Debug, Default, Clone)]
pub struct IdentityApi;

impl IdentityApi {
    pub fn into_server(self) -> identity_service_server::IdentityServiceServer<Self> {
        identity_service_server::IdentityServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl identity_service_server::IdentityService for IdentityApi {
    async fn get_profile(
        &self,
        request: Request<GetProfileRequest>,
    ) -> Result<Response<GetProfileResponse>, Status> {
        not_served_yet(&request, "IdentityService.GetProfile")
    }

    async fn lookup_profile(
        &self,
        request: Request<LookupProfileRequest>,
    ) -> Result<Response<LookupProfileResponse>, Status> {
        not_served_yet(&request, "IdentityService.LookupProfile")
    }

    async fn explain_profile(
        &self,
        request: Request<ExplainProfileRequest>,
    ) -> Result<Response<ExplainProfileResponse>, Status> {
        not_served_yet(&request, "IdentityService.ExplainProfile")
    }

    async fn list_profile_events(
        &self,
        request: Request<ListProfileEventsRequest>,
    ) -> Result<Response<ListProfileEventsResponse>, Status> {
        not_served_yet(&request, "IdentityService.ListProfileEvents")
    }
}
