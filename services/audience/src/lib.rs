//! The audience room: segments of profiles and their consent-checked sync to
//! destinations.
//!
//! Exposes the gRPC service implementations; RPCs not built yet answer
//! UNIMPLEMENTED after the caller's workspace is checked.

use meridian_edge::not_served_yet;
use meridian_proto::v1::*;
use tonic::{Request, Response, Status};

/// `meridian.v1.AudienceService`.
#[derive(Debug, Default, Clone)]
pub struct AudienceApi;

impl AudienceApi {
    pub fn into_server(self) -> audience_service_server::AudienceServiceServer<Self> {
        audience_service_server::AudienceServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl audience_service_server::AudienceService for AudienceApi {
    async fn create_segment(
        &self,
        request: Request<CreateSegmentRequest>,
    ) -> Result<Response<CreateSegmentResponse>, Status> {
        not_served_yet(&request, "AudienceService.CreateSegment")
    }

    async fn update_segment(
        &self,
        request: Request<UpdateSegmentRequest>,
    ) -> Result<Response<UpdateSegmentResponse>, Status> {
        not_served_yet(&request, "AudienceService.UpdateSegment")
    }

    async fn preview_segment(
        &self,
        request: Request<PreviewSegmentRequest>,
    ) -> Result<Response<PreviewSegmentResponse>, Status> {
        not_served_yet(&request, "AudienceService.PreviewSegment")
    }

    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        not_served_yet(&request, "AudienceService.ListMembers")
    }

    async fn create_destination(
        &self,
        request: Request<CreateDestinationRequest>,
    ) -> Result<Response<CreateDestinationResponse>, Status> {
        not_served_yet(&request, "AudienceService.CreateDestination")
    }

    async fn list_destinations(
        &self,
        request: Request<ListDestinationsRequest>,
    ) -> Result<Response<ListDestinationsResponse>, Status> {
        not_served_yet(&request, "AudienceService.ListDestinations")
    }

    async fn sync_now(
        &self,
        request: Request<SyncNowRequest>,
    ) -> Result<Response<SyncNowResponse>, Status> {
        not_served_yet(&request, "AudienceService.SyncNow")
    }

    async fn get_sync_status(
        &self,
        request: Request<GetSyncStatusRequest>,
    ) -> Result<Response<GetSyncStatusResponse>, Status> {
        not_served_yet(&request, "AudienceService.GetSyncStatus")
    }
}
