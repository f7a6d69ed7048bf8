//! The public gRPC contract, `meridian.v1`, compiled from `proto/` with protox.
//!
//! Exposes the generated messages, clients and server traits under [`v1`], the bus
//! event payloads under [`bus::v1`], and
//! [`FILE_DESCRIPTOR_SET`] for gRPC reflection. Messages that carry personal
//! data have a redacting `Debug` (see `redact.rs`). `google.protobuf.Struct` fields are
//! [`JsonObject`]s, decoded straight into JSON.

#[allow(clippy::all, unreachable_pub, missing_docs)]
pub mod v1 {
    tonic::include_proto!("meridian.v1");
}

/// Payloads of the events rooms publish on the bus (`proto/meridian/bus/v1`).
/// They carry blind indexes and sealed values only, never plaintext identities.
pub mod bus {
    #[allow(clippy::all, unreachable_pub, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("meridian.bus.v1");
    }
}

mod json;
mod redact;

pub use json::JsonObject;

/// The encoded descriptor set of every `meridian.v1` file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/meridian_descriptor.bin"));

/// The fully qualified names of the services in the contract.
pub const SERVICE_NAMES: [&str; 5] = [
    "meridian.v1.IngestService",
    "meridian.v1.IdentityService",
    "meridian.v1.ConsentService",
    "meridian.v1.DsrService",
    "meridian.v1.AudienceService",
];

/// A request that names the workspace it acts in (field 1 of every request).
pub trait WorkspaceScoped {
    /// The requested workspace; empty means the caller's own.
    fn workspace_id(&self) -> &str;
}

macro_rules! workspace_scoped {
    ($($request:ident),* $(,)?) => {
        $(impl WorkspaceScoped for v1::$request {
            fn workspace_id(&self) -> &str {
                &self.workspace_id
            }
        })*
    };
}

workspace_scoped!(
    IngestRequest,
    GetProfileRequest,
    LookupProfileRequest,
    ExplainProfileRequest,
    ListProfileEventsRequest,
    RecordConsentRequest,
    GetConsentRequest,
    GetConsentAsOfRequest,
    ListConsentHistoryRequest,
    VerifyLedgerRequest,
    GetReceiptRequest,
    SubmitRequestRequest,
    GetRequestRequest,
    ListRequestsRequest,
    CreateSegmentRequest,
    UpdateSegmentRequest,
    PreviewSegmentRequest,
    ListMembersRequest,
    CreateDestinationRequest,
    ListDestinationsRequest,
    SyncNowRequest,
    GetSyncStatusRequest,
);
