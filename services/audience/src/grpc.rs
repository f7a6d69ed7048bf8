//! Thin gRPC handlers: decode → validate into domain types → call the room → map the typed
//! error to a `Status` (one `From` impl).

use chrono::{DateTime, Utc};
use meridian_edge::status::{internal, invalid_argument};
use meridian_edge::{not_served_yet, workspace};
use meridian_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::error::AudienceError;
use crate::room::{AudienceRoom, PreviewTarget, SegmentInput};
use crate::store::{ProfileRow, SegmentRow};

impl From<AudienceError> for Status {
    fn from(e: AudienceError) -> Self {
        match e {
            AudienceError::Invalid { field, reason } => invalid_argument(field, reason),
            AudienceError::NotFound(what) => Status::not_found(format!("{what} not found")),
            AudienceError::Conflict(what) => {
                Status::aborted(format!("{what} was changed concurrently; read it again"))
            }
            other => internal(&other),
        }
    }
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn segment(row: SegmentRow) -> Segment {
    Segment {
        segment_id: row.segment_id,
        name: row.name,
        definition: row.definition,
        purpose: row.purpose,
        recompute_schedule: row.recompute_schedule,
        version: row.version,
        created_at: Some(ts(row.created_at)),
        updated_at: Some(ts(row.updated_at)),
    }
}

fn member(profile: ProfileRow, joined_at: Option<DateTime<Utc>>) -> SegmentMember {
    SegmentMember {
        profile_id: profile.profile_id,
        home_region: profile.home_region,
        jurisdiction: profile.jurisdiction,
        joined_at: joined_at.map(ts),
    }
}

/// `meridian.v1.AudienceService` over an [`AudienceRoom`].
#[derive(Debug, Clone)]
pub struct AudienceApi {
    room: AudienceRoom,
}

impl AudienceApi {
    pub fn new(room: AudienceRoom) -> Self {
        AudienceApi { room }
    }

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
        let ws = workspace(&request)?;
        let r = request.into_inner();
        let row = self
            .room
            .create_segment(
                ws.as_str(),
                SegmentInput {
                    name: r.name,
                    definition: r.definition,
                    purpose: r.purpose,
                    recompute_schedule: r.recompute_schedule,
                },
            )
            .await?;
        Ok(Response::new(CreateSegmentResponse {
            segment: Some(segment(row)),
        }))
    }

    async fn update_segment(
        &self,
        request: Request<UpdateSegmentRequest>,
    ) -> Result<Response<UpdateSegmentResponse>, Status> {
        let ws = workspace(&request)?;
        let r = request.into_inner();
        if r.segment_id.is_empty() {
            return Err(invalid_argument("segment_id", "is required"));
        }
        let row = self
            .room
            .update_segment(
                ws.as_str(),
                &r.segment_id,
                SegmentInput {
                    name: r.name,
                    definition: r.definition,
                    purpose: r.purpose,
                    recompute_schedule: r.recompute_schedule,
                },
            )
            .await?;
        Ok(Response::new(UpdateSegmentResponse {
            segment: Some(segment(row)),
        }))
    }

    async fn preview_segment(
        &self,
        request: Request<PreviewSegmentRequest>,
    ) -> Result<Response<PreviewSegmentResponse>, Status> {
        let ws = workspace(&request)?;
        let r = request.into_inner();
        let target = match r.target {
            Some(preview_segment_request::Target::SegmentId(id)) if !id.is_empty() => {
                PreviewTarget::Segment(id)
            }
            Some(preview_segment_request::Target::Definition(d)) => PreviewTarget::Definition(d),
            _ => {
                return Err(invalid_argument(
                    "target",
                    "give a segment_id or a definition",
                ));
            }
        };
        let preview = self
            .room
            .preview_segment(ws.as_str(), target, r.sample_size)
            .await?;
        Ok(Response::new(PreviewSegmentResponse {
            count: preview.count,
            sample: preview
                .sample
                .into_iter()
                .map(|p| member(p, None))
                .collect(),
            count_by_region: preview.count_by_region.into_iter().collect(),
        }))
    }

    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let ws = workspace(&request)?;
        let r = request.into_inner();
        let (members, next) = self
            .room
            .list_members(ws.as_str(), &r.segment_id, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(ListMembersResponse {
            members: members
                .into_iter()
                .map(|m| member(m.profile, m.joined_at))
                .collect(),
            next_page_token: next,
        }))
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
