//! The consent room in this process: its erasure plan, its background work (erasure
//! worker, expiry sweep, deadline watch) and Shopify's privacy webhooks on the HTTP
//! listener.
//!
//! The erasure plan reaches the other rooms through `crate::adapters`: identity locates the
//! subject's profile, audience removes it from every destination that holds it, identity
//! erases it, ingest purges its events; the saga's last step forgets
//! every identifier's vault subject and every subject the other rooms reported. Access
//! requests collect the profile and events sections the same way.

use std::sync::Arc;

use axum::Router;
use meridian_consent::{ConsentRoom, ErasurePlan, SagaSettings};
use meridian_policy::PolicyEngine;
use meridian_store::Store;
use meridian_vault::Vault;

use crate::adapters::{
    DestinationRemoval, DestinationsAccess, EventPurge, EventsAccess, IdentifiersAccess,
    IdentityErasure, MembershipsAccess, ProfileAccess, ProfileLocator,
};
use crate::config::Config;
use meridian_identity::IdentityRoom;
use meridian_ingest::IngestRoom;

/// The rooms the consent room's sagas and access requests reach.
pub(crate) struct OtherRooms {
    pub(crate) identity: IdentityRoom,
    pub(crate) ingest: IngestRoom,
    pub(crate) audience: meridian_audience::AudienceRoom,
}

pub(crate) fn consent_room(
    config: &Config,
    store: &Store,
    vault: Arc<Vault>,
    policies: Arc<PolicyEngine>,
    rooms: &OtherRooms,
) -> ConsentRoom {
    let settings = SagaSettings {
        lease: config.erasure_lease,
        ..SagaSettings::default()
    };
    let plan = ErasurePlan {
        locator: Some(Arc::new(ProfileLocator(rooms.identity.clone()))),
        // Destinations first: their removals need the identifiers exactly as sent, opened
        // from the membership ledger before any key is shredded, and they go before the
        // events and the graph so a failing platform holds the saga with nothing deleted yet.
        targets: vec![
            Arc::new(DestinationRemoval(rooms.audience.clone())),
            Arc::new(IdentityErasure(rooms.identity.clone())),
            Arc::new(EventPurge(rooms.ingest.clone())),
        ],
        shredder: None,
    };
    ConsentRoom::new(store.clone(), vault, policies)
        .with_erasure_plan(plan, settings)
        .with_access_sources(vec![
            Arc::new(ProfileAccess(rooms.identity.clone())),
            Arc::new(IdentifiersAccess(rooms.identity.clone())),
            Arc::new(EventsAccess(rooms.ingest.clone())),
            Arc::new(MembershipsAccess(rooms.audience.clone())),
            Arc::new(DestinationsAccess(rooms.audience.clone())),
        ])
}

/// The Shopify privacy webhook routes, when configured.
pub(crate) fn http_routes(config: &Config, room: &ConsentRoom) -> Router {
    match &config.shopify {
        Some(shopify) => meridian_consent::shopify::ShopifyPrivacyWebhooks::new(
            room.clone(),
            shopify.app_secret.as_bytes(),
            shopify.shops.clone(),
        )
        .router(),
        None => Router::new(),
    }
}
