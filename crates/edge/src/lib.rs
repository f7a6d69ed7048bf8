//! The gRPC edge every service stands behind.
//!
//! [`EdgeLayer`] wraps the whole gRPC router: it opens a span per RPC (joined
//! to the caller's W3C trace), authenticates `authorization: Bearer <key>`,
//! checks the key's scope for the service, records request metrics, and hands
//! the [`Principal`] to handlers. Handlers call [`workspace`] to check the
//! requested workspace, and map their typed errors with the helpers in
//! [`status`]. Health and reflection stay open so probes and tools work.

mod layer;
pub mod status;

pub use layer::{EdgeLayer, EdgeService, scope_for_service};

use meridian_access::{AccessDenied, Principal};
use meridian_domain::WorkspaceId;
use meridian_proto::WorkspaceScoped;
use tonic::{Request, Status};

/// The workspace a request acts in, after checking the caller may act there.
///
/// The scope was checked by [`EdgeLayer`]; this checks the `workspace_id` the
/// request names (empty means the key's own workspace).
pub fn workspace<T: WorkspaceScoped>(request: &Request<T>) -> Result<WorkspaceId, Status> {
    let principal = request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("missing or invalid API key"))?;
    let requested = request.get_ref().workspace_id();
    match principal.authorize_workspace(requested) {
        Ok(workspace) => {
            tracing::Span::current().record("workspace", workspace.as_str());
            Ok(workspace.clone())
        }
        Err(AccessDenied::OtherWorkspace) => Err(Status::permission_denied(
            "the API key does not belong to the requested workspace",
        )),
        Err(denied) => Err(Status::permission_denied(denied.to_string())),
    }
}

/// The answer of an RPC that is in the contract but not served yet: the
/// caller's workspace is still checked, so authorization behaves as it will.
pub fn not_served_yet<T: WorkspaceScoped, R>(
    request: &Request<T>,
    rpc: &str,
) -> Result<tonic::Response<R>, Status> {
    workspace(request)?;
    Err(status::unimplemented(rpc))
}
