//! Thin gRPC handlers: decode → validate into domain types → call the room → map the typed
//! error to a `Status` (one `From` impl).

use chrono::{DateTime, Utc};
use meridian_edge::status::{internal, invalid_argument};
use meridian_edge::workspace;
use meridian_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::destination::{DestinationInput, DestinationRow, PlatformKind};
use crate::error::AudienceError;
use crate::ledger::{SyncRow, SyncState as StoredSyncState};
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
            AudienceError::Busy(what) => Status::aborted(what),
            AudienceError::NotConfigured(what) => {
                Status::unimplemented(format!("{what} are not served by this process"))
            }
            AudienceError::Credential(reason) => {
                Status::failed_precondition(format!("destination credential: {reason}"))
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

fn platform_kind(platform: DestinationPlatform) -> Option<PlatformKind> {
    match platform {
        DestinationPlatform::Unspecified => None,
        DestinationPlatform::Meta => Some(PlatformKind::Meta),
        DestinationPlatform::GoogleAds => Some(PlatformKind::GoogleAds),
        DestinationPlatform::Tiktok => Some(PlatformKind::TikTok),
        DestinationPlatform::Shopify => Some(PlatformKind::Shopify),
        DestinationPlatform::Webhook => Some(PlatformKind::Webhook),
        DestinationPlatform::File => Some(PlatformKind::File),
    }
}

fn platform_enum(kind: PlatformKind) -> DestinationPlatform {
    match kind {
        PlatformKind::Meta => DestinationPlatform::Meta,
        PlatformKind::GoogleAds => DestinationPlatform::GoogleAds,
        PlatformKind::TikTok => DestinationPlatform::Tiktok,
        PlatformKind::Shopify => DestinationPlatform::Shopify,
        PlatformKind::Webhook => DestinationPlatform::Webhook,
        PlatformKind::File => DestinationPlatform::File,
    }
}

fn destination(row: DestinationRow) -> Destination {
    Destination {
        destination_id: row.destination_id,
        name: row.name,
        platform: platform_enum(row.platform) as i32,
        region: row.region,
        transfer_mechanism: row.transfer_mechanism,
        settings: row.settings.into_iter().collect(),
        credential_names: row.credential_names.into_values().collect(),
        min_audience_size: row.min_audience_size,
        created_at: Some(ts(row.created_at)),
    }
}

fn sync_status(row: SyncRow) -> SyncStatus {
    let state = match row.state {
        StoredSyncState::Running => SyncState::Running,
        StoredSyncState::Succeeded => SyncState::Succeeded,
        StoredSyncState::PartiallyFailed => SyncState::PartiallyFailed,
        StoredSyncState::Failed => SyncState::Failed,
    };
    SyncStatus {
        sync_id: row.sync_id,
        segment_id: row.segment_id,
        destination_id: row.destination_id,
        state: state as i32,
        members_sent: row.members_sent,
        members_removed: row.members_removed,
        members_failed: row.members_failed,
        excluded_by_reason: row.excluded.into_iter().collect(),
        policy_version: row.policy_version,
        started_at: Some(ts(row.started_at)),
        finished_at: row.finished_at.map(ts),
        last_error: row.last_error,
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
        let ws = workspace(&request)?;
        let r = request.into_inner();
        let platform = DestinationPlatform::try_from(r.platform)
            .ok()
            .and_then(platform_kind);
        let row = self
            .room
            .create_destination(
                ws.as_str(),
                DestinationInput {
                    name: r.name,
                    platform,
                    region: r.region,
                    transfer_mechanism: r.transfer_mechanism,
                    settings: r.settings.into_iter().collect(),
                    credentials: r.credentials.into_iter().collect(),
                    min_audience_size: r.min_audience_size,
                },
            )
            .await?;
        Ok(Response::new(CreateDestinationResponse {
            destination: Some(destination(row)),
        }))
    }

    async fn list_destinations(
        &self,
        request: Request<ListDestinationsRequest>,
    ) -> Result<Response<ListDestinationsResponse>, Status> {
        let ws = workspace(&request)?;
        let r = request.into_inner();
        let (rows, next) = self
            .room
            .list_destinations(ws.as_str(), r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(ListDestinationsResponse {
            destinations: rows.into_iter().map(destination).collect(),
            next_page_token: next,
        }))
    }

    async fn sync_now(
        &self,
        request: Request<SyncNowRequest>,
    ) -> Result<Response<SyncNowResponse>, Status> {
        let ws = workspace(&request)?;
        let r = request.into_inner();
        let row = self
            .room
            .sync_now(ws.as_str(), &r.segment_id, &r.destination_id)
            .await?;
        Ok(Response::new(SyncNowResponse {
            status: Some(sync_status(row)),
        }))
    }

    async fn get_sync_status(
        &self,
        request: Request<GetSyncStatusRequest>,
    ) -> Result<Response<GetSyncStatusResponse>, Status> {
        let ws = workspace(&request)?;
        let r = request.into_inner();
        let row = self.room.sync_status(ws.as_str(), &r.sync_id).await?;
        Ok(Response::new(GetSyncStatusResponse {
            status: Some(sync_status(row)),
        }))
    }
}
