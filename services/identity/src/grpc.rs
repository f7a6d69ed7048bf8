//! `meridian.v1.IdentityService` over [`IdentityRoom`]: decode → validate into domain types →
//! call the room → map the typed error (one `From` impl below).

use meridian_edge::{status, workspace};
use meridian_proto::{JsonObject, v1};
use prost_types::Timestamp;
use tonic::{Request, Response, Status};

use crate::computed::AiplStage;
use crate::error::IdentityError;
use crate::explain::MergeTree;
use crate::graph::{Conflict, Edge, ProfileId};
use crate::identifier::{IdentifierType, NodeKey, RawIdentifier};
use crate::room::{Explanation, IdentityRoom, ProfileView};

impl From<IdentityError> for Status {
    fn from(err: IdentityError) -> Status {
        match &err {
            IdentityError::InvalidIdentifier { kind, reason } => {
                status::invalid_argument("identifier.value", format!("invalid {kind}: {reason}"))
            }
            IdentityError::InvalidArgument { field, reason } => {
                status::invalid_argument(*field, *reason)
            }
            IdentityError::ProfileNotFound => Status::not_found("profile not found"),
            IdentityError::NotConfigured(what) => {
                Status::failed_precondition(format!("{what} is not configured on this server"))
            }
            IdentityError::StaleGraph => Status::unavailable("the identity graph moved; retry"),
            IdentityError::Bus(_)
            | IdentityError::InvalidRules(_)
            | IdentityError::Setup(_)
            | IdentityError::Corrupt(_)
            | IdentityError::Collaborator(_)
            | IdentityError::Vault(_)
            | IdentityError::Database(_) => status::internal(&err),
        }
    }
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn profile_id(raw: &str) -> Result<ProfileId, IdentityError> {
    if raw.is_empty() {
        return Err(IdentityError::InvalidArgument {
            field: "profile_id",
            reason: "must not be empty",
        });
    }
    raw.parse().map_err(|_| IdentityError::InvalidArgument {
        field: "profile_id",
        reason: "not a profile id",
    })
}

fn raw_identifier(id: Option<&v1::Identifier>) -> Result<RawIdentifier, IdentityError> {
    let id = id.ok_or(IdentityError::InvalidArgument {
        field: "identifier",
        reason: "required",
    })?;
    let kind = IdentifierType::from_code(id.r#type).ok_or(IdentityError::InvalidArgument {
        field: "identifier.type",
        reason: "must name an identifier type",
    })?;
    Ok(RawIdentifier {
        kind,
        value: id.value.clone(),
        source: id.source.clone(),
        default_region: id.default_region.clone(),
    })
}

/// A profile identifier: opened when it belongs to the profile, type only otherwise.
fn identifier(
    ex: Option<&Explanation>,
    view: Option<&ProfileView>,
    key: &NodeKey,
) -> v1::ProfileIdentifier {
    let found = view
        .or(ex.map(|e| &e.profile))
        .and_then(|p| p.identifiers.iter().find(|i| i.key == *key));
    match found {
        Some(i) => v1::ProfileIdentifier {
            r#type: i32::from(i.key.kind.code()),
            value: i.value.as_str().to_owned(),
            source: i.source.clone(),
            first_seen_at: Some(timestamp(i.first_seen)),
        },
        None => v1::ProfileIdentifier {
            r#type: i32::from(key.kind.code()),
            ..Default::default()
        },
    }
}

fn profile(view: &ProfileView) -> v1::Profile {
    v1::Profile {
        profile_id: view.profile.profile.to_string(),
        identifiers: view
            .identifiers
            .iter()
            .map(|i| identifier(None, Some(view), &i.key))
            .collect(),
        created_at: Some(timestamp(view.profile.created_at)),
        updated_at: Some(timestamp(view.profile.updated_at)),
        traits: (!view.traits.0.is_empty()).then(|| JsonObject(view.traits.0.clone())),
        computed_traits: view.computed.as_ref().map(computed_traits),
        ..Default::default()
    }
}

fn computed_traits(c: &crate::store::ComputedRow) -> v1::ComputedTraits {
    let stage = match c.stage {
        AiplStage::None => v1::AiplStage::Unspecified,
        AiplStage::Awareness => v1::AiplStage::Awareness,
        AiplStage::Interest => v1::AiplStage::Interest,
        AiplStage::Purchase => v1::AiplStage::Purchase,
        AiplStage::Loyalty => v1::AiplStage::Loyalty,
    };
    // The currency the profile ordered most in (rows come ordered that way).
    let rfm = c.rfm.first().map(|r| v1::Rfm {
        recency_score: u32::from(r.recency_score),
        frequency_score: u32::from(r.frequency_score),
        monetary_score: u32::from(r.monetary_score),
        currency: r.figures.currency.clone(),
        orders: r.figures.orders,
        monetary_minor_units: r.figures.monetary_minor,
        last_order_at: chrono::DateTime::from_timestamp_micros(r.figures.last_order_micros)
            .map(timestamp),
    });
    v1::ComputedTraits {
        rfm,
        aipl_stage: stage as i32,
    }
}

fn edge(ex: &Explanation, e: &Edge) -> v1::MergeEdge {
    v1::MergeEdge {
        from: Some(identifier(Some(ex), None, &e.from)),
        to: Some(identifier(Some(ex), None, &e.to)),
        rule: e.rule.as_str().to_owned(),
        message_id: e.event_id.clone(),
        linked_at: Some(timestamp(e.at)),
        reason: e.reason(),
    }
}

fn conflict(ex: &Explanation, c: &Conflict) -> v1::MergeConflict {
    v1::MergeConflict {
        from: Some(identifier(Some(ex), None, &c.from)),
        to: Some(identifier(Some(ex), None, &c.to)),
        rule: c.rule.as_str().to_owned(),
        message_id: c.event_id.clone(),
        seen_at: Some(timestamp(c.at)),
        reason: format!("{}: {}", c.reason.code(), c.reason.describe()),
    }
}

fn tree(ex: &Explanation, t: &MergeTree) -> v1::MergeTree {
    let node = match t {
        MergeTree::Leaf(k) => v1::merge_tree::Node::Leaf(identifier(Some(ex), None, k)),
        MergeTree::Join {
            left,
            right,
            edge: e,
        } => v1::merge_tree::Node::Join(Box::new(v1::MergeJoin {
            left: Some(Box::new(tree(ex, left))),
            right: Some(Box::new(tree(ex, right))),
            edge: Some(edge(ex, e)),
        })),
    };
    v1::MergeTree { node: Some(node) }
}

/// The `ExplainProfileResponse` of an explanation.
pub fn explain_response(ex: &Explanation) -> v1::ExplainProfileResponse {
    v1::ExplainProfileResponse {
        profile_id: ex.profile.profile.profile.to_string(),
        tree: ex.trees.first().map(|t| tree(ex, t)),
        edges: ex.edges.iter().map(|e| edge(ex, e)).collect(),
        conflicts: ex.conflicts.iter().map(|c| conflict(ex, c)).collect(),
    }
}

impl IdentityRoom {
    pub fn into_server(self) -> v1::identity_service_server::IdentityServiceServer<Self> {
        v1::identity_service_server::IdentityServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl v1::identity_service_server::IdentityService for IdentityRoom {
    #[tracing::instrument(skip_all, name = "IdentityService.GetProfile")]
    async fn get_profile(
        &self,
        request: Request<v1::GetProfileRequest>,
    ) -> Result<Response<v1::GetProfileResponse>, Status> {
        let ws = workspace(&request)?;
        let id = profile_id(&request.get_ref().profile_id)?;
        let view = self.profile(ws.as_str(), id).await?;
        Ok(Response::new(v1::GetProfileResponse {
            profile: Some(profile(&view)),
        }))
    }

    #[tracing::instrument(skip_all, name = "IdentityService.LookupProfile")]
    async fn lookup_profile(
        &self,
        request: Request<v1::LookupProfileRequest>,
    ) -> Result<Response<v1::LookupProfileResponse>, Status> {
        let ws = workspace(&request)?;
        let raw = raw_identifier(request.get_ref().identifier.as_ref())?;
        let view = self.lookup(ws.as_str(), &raw).await?;
        Ok(Response::new(v1::LookupProfileResponse {
            profile: Some(profile(&view)),
        }))
    }

    #[tracing::instrument(skip_all, name = "IdentityService.ExplainProfile")]
    async fn explain_profile(
        &self,
        request: Request<v1::ExplainProfileRequest>,
    ) -> Result<Response<v1::ExplainProfileResponse>, Status> {
        let ws = workspace(&request)?;
        let id = profile_id(&request.get_ref().profile_id)?;
        let ex = self.explain(ws.as_str(), id).await?;
        Ok(Response::new(explain_response(&ex)))
    }

    #[tracing::instrument(skip_all, name = "IdentityService.ListProfileEvents")]
    async fn list_profile_events(
        &self,
        request: Request<v1::ListProfileEventsRequest>,
    ) -> Result<Response<v1::ListProfileEventsResponse>, Status> {
        let ws = workspace(&request)?;
        let body = request.get_ref();
        let id = profile_id(&body.profile_id)?;
        let page = self
            .profile_events(ws.as_str(), id, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(v1::ListProfileEventsResponse {
            events: page
                .events
                .iter()
                .map(|e| v1::ProfileEvent {
                    message_id: e.message_id.clone(),
                    r#type: e.event_type.clone(),
                    event: e.event.clone(),
                    name: e.name.clone(),
                    properties: Some(JsonObject(e.properties.clone())),
                    timestamp: Some(timestamp(e.timestamp)),
                    received_at: Some(timestamp(e.received_at)),
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
