//! The `ingest-event` consumer, traits, computed traits, `ProfileChanged`, erasure and
//! `ListProfileEvents`, through the real in-process bus (outbox → relay → consumer) on
//! PostgreSQL (a fresh database per test) and SQLite. Payloads are built the way ingest
//! builds them: this crate's `normalize` + `blind_index`, sealed under the vault subject of
//! the event's highest-priority identifier.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use meridian_bus::{Bus, EventHandler, LocalBus, OutboxEvent, Tx};
use meridian_identity::identifier::{blind_index, normalize};
use meridian_identity::{
    AiplRules, AiplStage, ErasedProfile, IdentifierObservation, IdentifierType, IdentityError,
    IdentityRoom, IdentityStore, IngestConsumer, LinkRule, ProfileEvent, ProfileEventPage,
    ProfileEventSource, ProfileRules, RawIdentifier, Rules, StoreIdentity, SubjectRef, TraitRules,
};
use meridian_proto::bus::v1::{EventAccepted, Money, ProfileChanged, SealedIdentifier};
use meridian_proto::v1;
use meridian_proto::v1::identity_service_server::IdentityService;
use meridian_store::Store;
use meridian_store::sqlx::{self, PgPool, SqlitePool};
use meridian_vault::testing::{dump_postgres, dump_sqlite, find_plaintext};
use meridian_vault::{BlindIndex, KeyRing, PgKeyStore, SqliteKeyStore, Vault};
use prost::Message;
use serde_json::json;

const WS: &str = "acme";
/// The workspace deliveries in [`WS`] are compared with ([`Harness::feed_in_place`]).
const IN_PLACE_WS: &str = "acme-in-place";

struct Harness {
    room: IdentityRoom,
    vault: Arc<Vault>,
    key_store: Arc<dyn meridian_vault::KeyStore>,
    store: Store,
    bus: LocalBus,
    events: Arc<MemoryEvents>,
}

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600 + s, 0).unwrap()
}

fn ts(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

const DAY: i64 = 86_400;

/// An accepted event as ingest would publish it.
struct Accepted {
    id: String,
    kind: v1::EventType,
    event: String,
    at: DateTime<Utc>,
    identifiers: Vec<(IdentifierType, String)>,
    traits: Option<serde_json::Value>,
    revenue: Option<(&'static str, i64)>,
    storefront: &'static str,
}

fn ev(id: &str, kind: v1::EventType, at: i64, ids: &[(IdentifierType, &str)]) -> Accepted {
    Accepted {
        id: id.into(),
        kind,
        event: String::new(),
        at: t(at),
        identifiers: ids.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        traits: None,
        revenue: None,
        storefront: "web",
    }
}

fn track(id: &str, name: &str, at: i64, ids: &[(IdentifierType, &str)]) -> Accepted {
    Accepted {
        event: name.into(),
        ..ev(id, v1::EventType::Track, at, ids)
    }
}

fn order(
    id: &str,
    at: i64,
    ids: &[(IdentifierType, &str)],
    cur: &'static str,
    minor: i64,
) -> Accepted {
    Accepted {
        revenue: Some((cur, minor)),
        ..track(id, "Order Completed", at, ids)
    }
}

fn identify(
    id: &str,
    at: i64,
    ids: &[(IdentifierType, &str)],
    source: &'static str,
    traits: serde_json::Value,
) -> Accepted {
    Accepted {
        traits: Some(traits),
        storefront: source,
        ..ev(id, v1::EventType::Identify, at, ids)
    }
}

use IdentifierType::{AnonymousId as Anon, Email, UserId as User};

impl Harness {
    /// Seals and publishes events through the outbox, then runs the relay and the
    /// consumer until both are idle.
    async fn publish(&self, events: Vec<Accepted>) {
        self.publish_to(WS, events, IngestConsumer::subscription().batch_size)
            .await;
    }

    /// [`Harness::publish`] into workspace `ws`, consumed `batch` events a delivery.
    async fn publish_to(&self, ws: &str, events: Vec<Accepted>, batch: usize) {
        let outbox = self.sealed(ws, events).await;
        self.enqueue(&outbox).await;
        self.drain_with(batch).await;
    }

    /// `events` as ingest publishes them into workspace `ws`: sealed, keyed by the sealed
    /// subject.
    async fn sealed(&self, ws: &str, events: Vec<Accepted>) -> Vec<OutboxEvent> {
        let rules = Rules::default().validate().unwrap();
        let indexer = self.vault.blind_indexer(ws).await.unwrap();
        let mut outbox = Vec::new();
        for a in events {
            let mut ids: Vec<(IdentifierType, BlindIndex, String, String)> = Vec::new();
            for (kind, value) in &a.identifiers {
                let n = normalize(*kind, value, "", "").unwrap();
                let key = blind_index(&indexer, &n);
                ids.push((*kind, key.index, n.value.to_string(), n.source.clone()));
            }
            let anchor = ids
                .iter()
                .min_by_key(|(k, ..)| rules.rank(*k))
                .map(|(_, i, ..)| *i)
                .unwrap();
            let subject = self
                .vault
                .identifier_subjects(ws, &[anchor])
                .await
                .unwrap()
                .remove(0);
            let key = self.vault.subject_key(ws, &subject).await.unwrap();
            let payload = EventAccepted {
                workspace_id: ws.into(),
                event_id: a.id.clone(),
                message_id: format!("m-{}", a.id),
                r#type: a.kind as i32,
                event: a.event.clone(),
                name: String::new(),
                timestamp: Some(ts(a.at)),
                received_at: Some(ts(a.at)),
                jurisdiction: "DE".into(),
                sealed_subject: subject.clone(),
                identifiers: ids
                    .iter()
                    .enumerate()
                    .map(|(i, (kind, index, value, source))| SealedIdentifier {
                        r#type: i32::from(kind.code()),
                        source: source.clone(),
                        blind_index: index.0.to_vec(),
                        sealed_value: key
                            .seal(&a.id, &format!("identifiers.{i}"), value.as_bytes())
                            .unwrap(),
                    })
                    .collect(),
                sealed_traits: a
                    .traits
                    .as_ref()
                    .map(|tr| {
                        key.seal(&a.id, "traits", tr.to_string().as_bytes())
                            .unwrap()
                    })
                    .unwrap_or_default(),
                revenue: a.revenue.map(|(currency, minor_units)| Money {
                    currency: currency.into(),
                    minor_units,
                }),
                storefront_id: a.storefront.into(),
                age_band: 0,
            };
            // Keyed by the sealed subject, as ingest keys them (the consumer's look-ahead
            // loads those subjects' data keys).
            outbox.push(OutboxEvent::new(
                ws.parse().unwrap(),
                "ingest-event".parse().unwrap(),
                subject,
                payload.encode_to_vec(),
            ));
        }
        outbox
    }

    /// Commits `outbox` to the outbox (not yet relayed).
    async fn enqueue(&self, outbox: &[OutboxEvent]) {
        match &self.store {
            Store::Postgres(p) => {
                let mut tx = p.begin().await.unwrap();
                meridian_bus::enqueue_all(&mut tx, outbox).await.unwrap();
                tx.commit().await.unwrap();
            }
            Store::Sqlite(p) => {
                let mut tx = p.begin().await.unwrap();
                meridian_bus::enqueue_all(&mut tx, outbox).await.unwrap();
                tx.commit().await.unwrap();
            }
        }
    }

    /// Commits `outbox` to the outbox and consumes it: one delivery, as the bus would
    /// deliver it.
    async fn deliver(&self, outbox: &[OutboxEvent]) {
        self.enqueue(outbox).await;
        self.drain_with(1_000).await;
    }

    /// Adds workspace [`IN_PLACE_WS`] and feeds it [`bulk_events`] of `shoppers`, one
    /// delivery, nothing named ahead: what other deliveries of the same events are
    /// compared with ([`assert_stored_alike`]).
    async fn feed_in_place(&self, shoppers: usize) {
        add_workspace(&self.store, IN_PLACE_WS).await;
        self.publish_to(IN_PLACE_WS, bulk_events(shoppers), 1_000)
            .await;
    }

    async fn drain_with(&self, batch: usize) {
        let handler = IngestConsumer::new(self.room.clone());
        let mut sub = IngestConsumer::subscription();
        sub.batch_size = batch;
        loop {
            let relayed = self.bus.relay_batch(1_000).await.unwrap();
            let stats = self.bus.consume_batch(&sub, &*handler).await.unwrap();
            assert_eq!(stats.retried + stats.dead_lettered, 0, "{stats:?}");
            if relayed == 0 && stats.is_idle() {
                break;
            }
        }
    }

    async fn profile_of(
        &self,
        kind: IdentifierType,
        value: &str,
    ) -> meridian_identity::ProfileView {
        self.room
            .lookup(WS, &RawIdentifier::new(kind, value))
            .await
            .unwrap()
    }

    async fn scalar(&self, sql: &str) -> i64 {
        match &self.store {
            Store::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }

    /// `ProfileChanged` payloads written to the outbox, oldest first.
    /// Asserts that every workspace and currency's kept member count is the number of its
    /// RFM rows (the count the population check uses instead of counting the table), and
    /// returns how many currencies were checked.
    async fn assert_rfm_members_kept(&self) -> i64 {
        assert_eq!(
            self.scalar(
                "SELECT COUNT(*) FROM identity_rfm_boundaries b WHERE b.members IS NULL \
                 OR b.members <> (SELECT COUNT(*) FROM identity_rfm r \
                 WHERE r.workspace_id = b.workspace_id AND r.currency = b.currency)"
            )
            .await,
            0,
            "a member count differs from the rows"
        );
        self.scalar("SELECT COUNT(*) FROM identity_rfm_boundaries")
            .await
    }

    /// The announced profile changes (outbox packs unpacked), in order.
    async fn profile_changes(&self) -> Vec<ProfileChanged> {
        let family = "profile".parse().unwrap();
        meridian_bus::outbox_events_of(&self.store, &family)
            .await
            .unwrap()
            .iter()
            .map(|e| ProfileChanged::decode(e.payload.as_slice()).unwrap())
            .collect()
    }
}

/// An in-memory [`ProfileEventSource`]: events keyed by the anchor that carried them.
#[derive(Default)]
struct MemoryEvents {
    by_anchor: Mutex<BTreeMap<[u8; 32], Vec<ProfileEvent>>>,
}

#[async_trait]
impl ProfileEventSource for MemoryEvents {
    async fn events(
        &self,
        _workspace: &str,
        anchors: &[BlindIndex],
        page_size: u32,
        page_token: &str,
    ) -> Result<ProfileEventPage, IdentityError> {
        let map = self.by_anchor.lock().unwrap();
        let mut all: Vec<ProfileEvent> = anchors
            .iter()
            .flat_map(|a| map.get(&a.0).cloned().unwrap_or_default())
            .collect();
        all.sort_by_key(|e| e.timestamp);
        let start: usize = page_token.parse().unwrap_or(0);
        let end = (start + page_size as usize).min(all.len());
        Ok(ProfileEventPage {
            events: all[start.min(end)..end].to_vec(),
            next_page_token: if end < all.len() {
                end.to_string()
            } else {
                String::new()
            },
        })
    }
}

fn request<T>(body: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(body);
    r.extensions_mut().insert(meridian_access::Principal {
        key_id: "key".into(),
        workspace_id: WS.parse().unwrap(),
        scopes: meridian_domain::Scopes::new(vec![meridian_domain::Scope::Admin]),
    });
    r
}

fn rules() -> ProfileRules {
    ProfileRules {
        traits: TraitRules {
            source_priority: BTreeMap::from([("shopify-eu".into(), 10)]),
        },
        aipl: AiplRules::default(),
    }
    .validate()
    .unwrap()
}

// ---- checks ---------------------------------------------------------------------------

async fn events_stitch_and_build_traits_and_computed_traits(h: Harness) {
    h.publish(vec![
        ev("e1", v1::EventType::Page, 0, &[(Anon, "a-1")]),
        identify(
            "e2",
            10,
            &[
                (Anon, "a-1"),
                (User, "u-1"),
                (Email, "Ana.Silva@Example.com"),
            ],
            "web",
            json!({"name": "Ana Silva", "plan": "free"}),
        ),
        track("e3", "Product Viewed", 20, &[(Anon, "a-1")]),
    ])
    .await;
    let p = h.profile_of(User, "u-1").await;
    assert_eq!(p.identifiers.len(), 3);
    assert_eq!(
        h.profile_of(Anon, "a-1").await.profile.profile,
        p.profile.profile
    );
    let email = p.identifiers.iter().find(|i| i.key.kind == Email).unwrap();
    assert_eq!(
        email.value.as_str(),
        "ana.silva@example.com",
        "ingest's copy opens"
    );
    assert_eq!(p.traits.0["name"], json!("Ana Silva"));
    assert_eq!(p.computed.as_ref().unwrap().stage, AiplStage::Interest);

    // Traits: a later event of the same source wins; a lower-priority source does not beat
    // the higher one; the alias links a second anonymous id with rule `alias`.
    h.publish(vec![
        identify(
            "e4",
            30,
            &[(User, "u-1")],
            "shopify-eu",
            json!({"name": "Ana M. Silva"}),
        ),
        identify(
            "e5",
            40,
            &[(User, "u-1")],
            "web",
            json!({"name": "ana", "plan": "pro"}),
        ),
        Accepted {
            event: String::new(),
            ..ev(
                "e6",
                v1::EventType::Alias,
                50,
                &[(Anon, "a-2"), (User, "u-1")],
            )
        },
        order("e7", 60, &[(Anon, "a-2")], "EUR", 4_500),
    ])
    .await;
    let p = h.profile_of(Anon, "a-2").await;
    assert_eq!(p.traits.0["name"], json!("Ana M. Silva"));
    assert_eq!(p.traits.0["plan"], json!("pro"));
    let c = p.computed.clone().unwrap();
    assert_eq!(c.stage, AiplStage::Purchase);
    assert_eq!(c.orders, 1);
    assert_eq!(c.rfm[0].figures.currency, "EUR");
    assert_eq!(c.rfm[0].figures.monetary_minor, 4_500);
    let ex = h.room.explain(WS, p.profile.profile).await.unwrap();
    assert!(
        ex.edges
            .iter()
            .any(|e| e.rule.as_str() == "alias" && e.event_id == "e6")
    );

    // Served over gRPC: traits as a Struct, computed traits with RFM.
    let got = h
        .room
        .get_profile(request(v1::GetProfileRequest {
            workspace_id: WS.into(),
            profile_id: p.profile.profile.to_string(),
        }))
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    let traits = got.traits.unwrap();
    assert_eq!(traits.0["plan"], "pro");
    let computed = got.computed_traits.unwrap();
    assert_eq!(computed.aipl_stage, v1::AiplStage::Purchase as i32);
    let rfm = computed.rfm.unwrap();
    assert_eq!((rfm.orders, rfm.monetary_minor_units), (1, 4_500));
    assert!((1..=5).contains(&rfm.recency_score));

    // A repeat order within 90 days: loyalty. The same event delivered again (a new outbox
    // row with the same ingest event id) is not counted twice.
    h.publish(vec![order(
        "e8",
        60 + 30 * DAY,
        &[(User, "u-1")],
        "EUR",
        500,
    )])
    .await;
    h.publish(vec![order(
        "e8",
        60 + 30 * DAY,
        &[(User, "u-1")],
        "EUR",
        500,
    )])
    .await;
    let c = h.profile_of(User, "u-1").await.computed.unwrap();
    assert_eq!(c.stage, AiplStage::Loyalty);
    assert_eq!(c.orders, 2);
    assert_eq!(c.rfm[0].figures.monetary_minor, 5_000);

    // Blocked values are recorded, not linked.
    h.publish(vec![ev(
        "e9",
        v1::EventType::Track,
        70,
        &[(User, "u-1"), (Email, "test@test.com")],
    )])
    .await;
    let p = h.profile_of(User, "u-1").await;
    assert_eq!(p.identifiers.len(), 4);
    let ex = h.room.explain(WS, p.profile.profile).await.unwrap();
    assert!(
        ex.conflicts
            .iter()
            .any(|c| c.event_id == "e9" && c.reason.code() == "blocked_value")
    );

    // ProfileChanged went out with the changes.
    let changes = h.profile_changes().await;
    let mine: Vec<&ProfileChanged> = changes
        .iter()
        .filter(|c| c.profile_id == p.profile.profile.to_string())
        .collect();
    assert!(
        mine.iter()
            .any(|c| c.changed.contains(&"traits".to_owned()))
    );
    assert!(
        mine.iter()
            .any(|c| c.changed.contains(&"computed_traits".to_owned()))
    );
    assert!(
        mine.iter()
            .any(|c| c.changed.contains(&"identifiers".to_owned()))
    );

    // Nothing personal at rest: the dump holds no email, name or trait value.
    let dump = match &h.store {
        Store::Postgres(p) => dump_postgres(p).await.unwrap(),
        Store::Sqlite(p) => dump_sqlite(p).await.unwrap(),
    };
    let found = find_plaintext(
        &dump.text,
        ["ana.silva@example.com", "Ana Silva", "Ana M. Silva"],
    );
    assert!(found.is_empty(), "{found:?}");
}

async fn merges_fold_and_splits_rehome_computed_traits(h: Harness) {
    // Two anonymous shoppers, one order each, 10 days apart.
    h.publish(vec![
        order("o1", 0, &[(Anon, "a-1")], "GBP", 1_000),
        order("o2", 10 * DAY, &[(Anon, "a-2")], "GBP", 3_000),
    ])
    .await;
    let a1 = h.profile_of(Anon, "a-1").await.profile.profile;
    let a2 = h.profile_of(Anon, "a-2").await.profile.profile;
    assert_ne!(a1, a2);
    assert_eq!(
        h.profile_of(Anon, "a-1").await.computed.unwrap().stage,
        AiplStage::Purchase
    );
    // An email seen with both: one profile with both orders (a repeat within 90 days).
    h.publish(vec![
        ev(
            "i1",
            v1::EventType::Identify,
            20 * DAY,
            &[(Anon, "a-1"), (Email, "bo@example.com")],
        ),
        ev(
            "i2",
            v1::EventType::Identify,
            21 * DAY,
            &[(Anon, "a-2"), (Email, "bo@example.com")],
        ),
    ])
    .await;
    let merged = h.profile_of(Email, "bo@example.com").await;
    let c = merged.computed.unwrap();
    assert_eq!(c.orders, 2);
    assert_eq!(c.rfm[0].figures.monetary_minor, 4_000);
    assert_eq!(c.stage, AiplStage::Loyalty);
    // Two GBP rows became one: the kept count followed.
    assert_eq!(h.assert_rfm_members_kept().await, 1);
    let absorbed = if merged.profile.profile == a1 { a2 } else { a1 };
    assert!(
        h.profile_changes()
            .await
            .iter()
            .any(|pc| pc.profile_id == merged.profile.profile.to_string()
                && pc.merged_profile_ids.contains(&absorbed.to_string()))
    );
    // Only live profiles have computed traits (the audience read model).
    assert_eq!(
        h.scalar("SELECT COUNT(*) FROM identity_computed_traits")
            .await,
        1
    );
    // Removing the bridge splits the profile; each part takes its own order back.
    let parts = h
        .room
        .remove_identifier(
            WS,
            &RawIdentifier::new(Email, "bo@example.com"),
            t(22 * DAY),
        )
        .await
        .unwrap();
    assert_eq!(parts.len(), 2);
    for (anon, minor) in [("a-1", 1_000), ("a-2", 3_000)] {
        let c = h.profile_of(Anon, anon).await.computed.unwrap();
        assert_eq!((c.orders, c.stage), (1, AiplStage::Purchase), "{anon}");
        assert_eq!(c.rfm[0].figures.monetary_minor, minor);
    }
    assert_eq!(h.assert_rfm_members_kept().await, 1);
    assert!(
        h.profile_changes()
            .await
            .iter()
            .any(|pc| !pc.split_profile_ids.is_empty())
    );
}

async fn rfm_scores_are_quintiles_per_workspace_and_currency(h: Harness) {
    // Ten shoppers, one order each: amounts 100..1000 EUR, later orders for bigger spenders.
    let mut events = Vec::new();
    for i in 1..=10 {
        events.push(order(
            &format!("o{i}"),
            i * DAY,
            &[(User, &format!("u-{i}"))],
            "EUR",
            i * 10_000,
        ));
    }
    // Another currency is scored on its own.
    events.push(order("usd", 0, &[(User, "u-usd")], "USD", 1));
    h.publish(events).await;
    let mut monetary = Vec::new();
    for i in 1..=10 {
        let c = h
            .profile_of(User, &format!("u-{i}"))
            .await
            .computed
            .unwrap();
        let r = &c.rfm[0];
        assert_eq!(r.recency_score, r.monetary_score, "u-{i}");
        monetary.push(r.monetary_score);
    }
    assert_eq!(monetary, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
    let usd = h.profile_of(User, "u-usd").await.computed.unwrap();
    assert_eq!(usd.rfm[0].figures.currency, "USD");
    assert_eq!(usd.rfm[0].monetary_score, 1);
    assert_eq!(h.assert_rfm_members_kept().await, 2, "EUR and USD");
    // The read model answers a segment query in plain SQL.
    assert_eq!(
        h.scalar(
            "SELECT COUNT(*) FROM identity_rfm WHERE workspace_id = 'acme' AND currency = 'EUR' \
             AND monetary_score >= 4"
        )
        .await,
        4
    );
}

async fn erasing_a_profile_deletes_its_rows_and_reports_what_to_forget(h: Harness) {
    h.publish(vec![
        identify(
            "e1",
            0,
            &[(User, "u-9"), (Email, "cy@example.com")],
            "web",
            json!({"name": "Cy"}),
        ),
        order("e2", 10, &[(User, "u-9")], "EUR", 100),
        ev("e3", v1::EventType::Page, 5, &[(Anon, "other")]),
    ])
    .await;
    let view = h
        .room
        .subject_profile(
            WS,
            &SubjectRef::Identifiers(vec![RawIdentifier::new(Email, "cy@example.com")]),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.traits.0["name"], json!("Cy"));
    let by_index = h
        .room
        .subject_profile(
            WS,
            &SubjectRef::BlindIndexes(vec![view.identifiers[0].key.index]),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_index.profile.profile, view.profile.profile);

    let erased = h
        .room
        .erase_profile(WS, view.profile.profile)
        .await
        .unwrap();
    assert_eq!(erased.identifiers.len(), 2);
    assert!(!erased.vault_subjects.is_empty());
    assert_eq!(erased.profile_ids, vec![view.profile.profile]);
    // Only the other shopper's rows remain.
    assert_eq!(
        h.scalar("SELECT COUNT(*) FROM identity_identifiers").await,
        1
    );
    assert_eq!(
        h.scalar("SELECT COUNT(*) FROM identity_trait_payloads")
            .await,
        0
    );
    assert_eq!(
        h.scalar("SELECT COUNT(*) FROM identity_activity").await,
        1,
        "the page view of `other`"
    );
    assert_eq!(h.scalar("SELECT COUNT(*) FROM identity_rfm").await, 0);
    // The erased order's currency is down to no members.
    assert_eq!(h.assert_rfm_members_kept().await, 1);
    assert_eq!(h.scalar("SELECT COUNT(*) FROM identity_edges").await, 0);
    assert!(matches!(
        h.room.profile(WS, view.profile.profile).await,
        Err(IdentityError::ProfileNotFound)
    ));
    // Idempotent.
    assert_eq!(
        h.room
            .erase_profile(WS, view.profile.profile)
            .await
            .unwrap(),
        ErasedProfile::default()
    );
    assert!(
        h.room
            .subject_profile(
                WS,
                &SubjectRef::Identifiers(vec![RawIdentifier::new(Email, "cy@example.com")])
            )
            .await
            .unwrap()
            .is_none()
    );
    // The saga forgets last; the vault no longer opens anything of them afterwards.
    for s in &erased.vault_subjects {
        h.vault.forget(WS, s).await.unwrap();
    }
}

async fn list_profile_events_reads_through_the_source(h: Harness) {
    h.publish(vec![ev(
        "e1",
        v1::EventType::Identify,
        0,
        &[(User, "u-5"), (Anon, "a-5")],
    )])
    .await;
    let p = h.profile_of(User, "u-5").await;
    // Without a source: FAILED_PRECONDITION, not UNIMPLEMENTED.
    let err = h
        .room
        .list_profile_events(request(v1::ListProfileEventsRequest {
            workspace_id: WS.into(),
            profile_id: p.profile.profile.to_string(),
            page_size: 0,
            page_token: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    let room = h.room.clone().with_event_source(h.events.clone());
    {
        let mut map = h.events.by_anchor.lock().unwrap();
        for (i, id) in p.identifiers.iter().enumerate() {
            for j in 0..3 {
                map.entry(id.key.index.0).or_default().push(ProfileEvent {
                    message_id: format!("m-{i}-{j}"),
                    event_type: "track".into(),
                    event: "Product Viewed".into(),
                    name: String::new(),
                    properties: serde_json::Map::from_iter([("sku".to_owned(), json!(j))]),
                    timestamp: t(i64::try_from(i * 10 + j).unwrap()),
                    received_at: t(100),
                });
            }
        }
        map.entry([9; 32]).or_default().push(ProfileEvent {
            message_id: "someone-else".into(),
            event_type: "track".into(),
            event: String::new(),
            name: String::new(),
            properties: Default::default(),
            timestamp: t(1),
            received_at: t(1),
        });
    }
    let page = |token: String, size: u32| v1::ListProfileEventsRequest {
        workspace_id: WS.into(),
        profile_id: p.profile.profile.to_string(),
        page_size: size,
        page_token: token,
    };
    let first = room
        .list_profile_events(request(page(String::new(), 4)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.events.len(), 4);
    assert!(!first.next_page_token.is_empty());
    let second = room
        .list_profile_events(request(page(first.next_page_token, 4)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.events.len(), 2);
    assert!(second.next_page_token.is_empty());
    assert!(
        first
            .events
            .iter()
            .chain(&second.events)
            .all(|e| e.message_id != "someone-else")
    );
    assert!(
        first.events[0]
            .properties
            .as_ref()
            .unwrap()
            .0
            .contains_key("sku")
    );
    let err = room
        .list_profile_events(request(page(String::new(), 5_000)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        format!("{:?}", err.details()).contains("page_size") || err.message().contains("page_size")
    );
}

async fn malformed_payloads_are_refused_not_applied(h: Harness) {
    let handler = IngestConsumer::new(h.room.clone());
    let bad = OutboxEvent::new(
        WS.parse().unwrap(),
        "ingest-event".parse().unwrap(),
        "k",
        vec![0xff, 0xff, 0xff],
    );
    let missing_id = OutboxEvent::new(
        WS.parse().unwrap(),
        "ingest-event".parse().unwrap(),
        "k",
        EventAccepted {
            workspace_id: WS.into(),
            r#type: v1::EventType::Track as i32,
            timestamp: Some(ts(t(0))),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    for event in [bad, missing_id] {
        let result = match &h.store {
            Store::Postgres(p) => {
                let mut c = p.acquire().await.unwrap();
                handler.handle(&mut Tx::Postgres(&mut c), &event).await
            }
            Store::Sqlite(p) => {
                let mut c = p.acquire().await.unwrap();
                handler.handle(&mut Tx::Sqlite(&mut c), &event).await
            }
        };
        assert!(result.is_err());
    }
    assert_eq!(
        h.scalar("SELECT COUNT(*) FROM identity_identifiers").await,
        0
    );
}

/// The events of [`one_delivery_stitches_like_one_event_at_a_time`]: joins across events,
/// merge protection, a shared device, a blocked value, an alias, traits, orders, stages,
/// and one event delivered twice.
fn mixed_events() -> Vec<Accepted> {
    const TABLET: &str = "6f1c0a4e-1b2c-4d3e-9f00-1234567890ab";
    let dev = IdentifierType::DeviceId;
    vec![
        ev("e1", v1::EventType::Page, 0, &[(Anon, "a-1")]),
        identify(
            "e2",
            10,
            &[(Anon, "a-1"), (User, "u-1"), (Email, "ana@example.org")],
            "web",
            json!({"name": "Ana"}),
        ),
        track("e3", "Product Viewed", 20, &[(Anon, "a-2")]),
        // a-2 (and its interest) joins Ana through her email.
        ev(
            "e4",
            v1::EventType::Page,
            30,
            &[(Anon, "a-2"), (Email, "ana@example.org")],
        ),
        order("e5", 40, &[(Email, "ana@example.org")], "EUR", 1_000),
        identify(
            "e6",
            50,
            &[(Anon, "a-3"), (User, "u-2")],
            "web",
            json!({"name": "Bo"}),
        ),
        // Merge protection: Bo's anonymous id never joins Ana's profile.
        ev(
            "e7",
            v1::EventType::Page,
            60,
            &[(Anon, "a-3"), (Email, "ana@example.org")],
        ),
        ev(
            "e8",
            v1::EventType::Page,
            70,
            &[(dev, TABLET), (User, "u-1")],
        ),
        // The tablet is seen with a second user id: shared, detached.
        ev(
            "e9",
            v1::EventType::Page,
            80,
            &[(dev, TABLET), (User, "u-2")],
        ),
        ev(
            "e10",
            v1::EventType::Page,
            90,
            &[(Anon, "a-4"), (Email, "test@test.com")],
        ),
        ev(
            "e11",
            v1::EventType::Alias,
            100,
            &[(Anon, "a-5"), (User, "u-2")],
        ),
        order("e12", 110, &[(Anon, "a-5")], "USD", 500),
        // Delivered again: applied once.
        ev(
            "e4",
            v1::EventType::Page,
            30,
            &[(Anon, "a-2"), (Email, "ana@example.org")],
        ),
    ]
}

async fn one_delivery_stitches_like_one_event_at_a_time(h: Harness) {
    const ONE_BY_ONE: &str = "acme-one";
    add_workspace(&h.store, ONE_BY_ONE).await;
    h.publish_to(WS, mixed_events(), 1_000).await;
    h.publish_to(ONE_BY_ONE, mixed_events(), 1).await;
    let ids = [
        (Anon, "a-1"),
        (Anon, "a-2"),
        (Anon, "a-3"),
        (Anon, "a-5"),
        (User, "u-1"),
        (User, "u-2"),
        (Email, "ana@example.org"),
        (
            IdentifierType::DeviceId,
            "6f1c0a4e-1b2c-4d3e-9f00-1234567890ab",
        ),
    ];
    // Per workspace: each identifier's profile, traits, computed stage and orders.
    let mut seen = Vec::new();
    for ws in [WS, ONE_BY_ONE] {
        let mut views = Vec::new();
        for (kind, value) in ids {
            let view = h
                .room
                .lookup(ws, &RawIdentifier::new(kind, value))
                .await
                .unwrap();
            views.push(view);
        }
        seen.push(views);
    }
    let (batched, single) = (&seen[0], &seen[1]);
    for i in 0..ids.len() {
        for j in 0..ids.len() {
            let together = |v: &Vec<meridian_identity::ProfileView>| {
                v[i].profile.profile == v[j].profile.profile
            };
            assert_eq!(
                together(batched),
                together(single),
                "{:?} / {:?}",
                ids[i],
                ids[j]
            );
        }
        assert_eq!(batched[i].traits.0, single[i].traits.0, "{:?}", ids[i]);
        let summary = |v: &meridian_identity::ProfileView| {
            v.computed
                .as_ref()
                .map(|c| (c.stage, c.orders, c.last_order_micros))
        };
        assert_eq!(summary(&batched[i]), summary(&single[i]), "{:?}", ids[i]);
    }
    // The rules did their work (so the comparison is not between two empty graphs).
    let ana = &batched[6];
    assert_eq!(ana.profile.profile, batched[0].profile.profile);
    assert_eq!(ana.profile.profile, batched[1].profile.profile);
    assert_ne!(
        ana.profile.profile, batched[2].profile.profile,
        "merge protection"
    );
    assert_ne!(
        batched[7].profile.profile, batched[4].profile.profile,
        "shared tablet"
    );
    assert_eq!(
        batched[3].profile.profile, batched[5].profile.profile,
        "alias"
    );
    assert_eq!(ana.traits.0["name"], json!("Ana"));
    let computed = ana.computed.as_ref().unwrap();
    assert_eq!((computed.stage, computed.orders), (AiplStage::Purchase, 1));
    for table in [
        "identity_edges",
        "identity_conflicts",
        // The consumer's idempotency record: one per ingested event id.
        "bus_processed",
        "identity_activity",
        "identity_trait_payloads",
    ] {
        let count = |ws: &str| format!("SELECT COUNT(*) FROM {table} WHERE workspace_id = '{ws}'");
        let (b, o) = (
            h.scalar(&count(WS)).await,
            h.scalar(&count(ONE_BY_ONE)).await,
        );
        assert_eq!(b, o, "{table}");
        assert!(b > 0, "{table}");
    }
    assert_eq!(
        h.scalar(
            "SELECT COUNT(*) FROM bus_processed WHERE consumer = 'identity' AND workspace_id = 'acme'"
        )
        .await,
        12,
        "e4 applied once"
    );
    let reasons =
        "SELECT COUNT(DISTINCT reason) FROM identity_conflicts WHERE workspace_id = 'acme'";
    assert_eq!(
        h.scalar(reasons).await,
        3,
        "blocked, shared and merge protection"
    );
}

/// Enough shoppers that one delivery crosses the bulk-write (COPY) threshold for every kind
/// of row: new identifiers, edges, created profiles, and conflicts.
fn bulk_events(shoppers: usize) -> Vec<Accepted> {
    let mut out = Vec::new();
    for n in 0..shoppers {
        let (anon, user, email) = (
            format!("bulk-anon-{n}"),
            format!("bulk-user-{n}"),
            format!("buyer{n}@example.org"),
        );
        let s = i64::try_from(n).unwrap() * 10;
        out.push(ev(
            &format!("bulk-{n}-1"),
            v1::EventType::Page,
            s,
            &[(Anon, &anon), (Email, &email)],
        ));
        out.push(identify(
            &format!("bulk-{n}-2"),
            s + 1,
            &[(Anon, &anon), (User, &user)],
            "web",
            json!({"name": format!("Buyer {n}")}),
        ));
        // A blocked value: recorded as a conflict, never linked.
        out.push(ev(
            &format!("bulk-{n}-3"),
            v1::EventType::Page,
            s + 2,
            &[(User, &user), (Email, "test@test.com")],
        ));
        out.push(order(
            &format!("bulk-{n}-4"),
            s + 3,
            &[(Email, &email)],
            "EUR",
            1_000,
        ));
    }
    out
}

async fn a_bulk_delivery_is_stored_like_one_event_at_a_time(h: Harness) {
    const ONE_BY_ONE: &str = "acme-bulk";
    const SHOPPERS: usize = 60;
    add_workspace(&h.store, ONE_BY_ONE).await;
    h.publish_to(WS, bulk_events(SHOPPERS), 1_000).await;
    h.publish_to(ONE_BY_ONE, bulk_events(SHOPPERS), 1).await;
    // The same ingest events again, as new outbox rows, in one delivery: applied once.
    h.publish_to(WS, bulk_events(SHOPPERS), 1_000).await;
    assert_stored_alike(&h, WS, ONE_BY_ONE, SHOPPERS).await;
}

/// A delivery takes the events decoded ahead of it and stores them as it stores events it
/// decodes itself: the same rows and the same profiles as the same stream where nothing is
/// named ahead.
async fn events_decoded_ahead_are_stored_like_events_decoded_in_place(h: Harness) {
    const SHOPPERS: usize = 40;
    h.room.reset_consumer_timings();
    h.feed_in_place(SHOPPERS).await;
    let in_place = h.room.consumer_timings();
    assert_eq!(in_place.prepared_events, 0, "{in_place:?}");
    // Deliveries of 16, each named ahead and prepared before it comes (as the bus names
    // the next delivery while the current one is written).
    let consumer = IngestConsumer::new(h.room.clone());
    h.room.reset_consumer_timings();
    for delivery in h.sealed(WS, bulk_events(SHOPPERS)).await.chunks(16) {
        consumer.look_ahead(&upcoming(delivery));
        consumer.look_ahead_settled().await;
        h.deliver(delivery).await;
    }
    let ahead = h.room.consumer_timings();
    assert_eq!(ahead.events, 4 * SHOPPERS as u64, "{ahead:?}");
    assert_eq!(ahead.prepared_events, ahead.events, "{ahead:?}");
    assert_stored_alike(&h, WS, IN_PLACE_WS, SHOPPERS).await;
}

/// A delivery stitched ahead (run through the graph while the previous delivery's store
/// write ran, as the bus names the next delivery during the current one) is stored as a
/// delivery stitched in place: the same rows and the same profiles.
async fn events_stitched_ahead_are_stored_like_events_stitched_in_place(h: Harness) {
    const SHOPPERS: usize = 40;
    h.feed_in_place(SHOPPERS).await;
    let consumer = IngestConsumer::new(h.room.clone());
    let outbox = h.sealed(WS, bulk_events(SHOPPERS)).await;
    let deliveries: Vec<&[OutboxEvent]> = outbox.chunks(16).collect();
    h.room.reset_consumer_timings();
    for (k, delivery) in deliveries.iter().enumerate() {
        if let Some(next) = deliveries.get(k + 1) {
            consumer.look_ahead(&upcoming(next));
        }
        h.deliver(delivery).await;
    }
    let timings = h.room.consumer_timings();
    assert_eq!(timings.events, 4 * SHOPPERS as u64, "{timings:?}");
    // Every delivery but the first was stitched ahead.
    assert_eq!(timings.stitched_events, timings.events - 16, "{timings:?}");
    assert_stored_alike(&h, WS, IN_PLACE_WS, SHOPPERS).await;
}

/// A pass stitched ahead is used only by the delivery it was made for: a delivery of other
/// events starts from the stored graph, and nothing of the pass is stored or read unless
/// its delivery comes.
async fn a_delivery_other_than_the_one_stitched_ahead_starts_from_the_store(h: Harness) {
    const SHOPPERS: usize = 12;
    h.feed_in_place(SHOPPERS).await;
    let consumer = IngestConsumer::new(h.room.clone());
    let outbox = h.sealed(WS, bulk_events(SHOPPERS)).await;
    // Four shoppers each: `b` holds shopper 4.
    let [a, b, c] = [&outbox[..16], &outbox[16..32], &outbox[32..]];
    h.room.reset_consumer_timings();
    // `b` is stitched ahead while `a` is written, but `c` comes next.
    consumer.look_ahead(&upcoming(b));
    h.deliver(a).await;
    consumer.look_ahead(&upcoming(b));
    h.deliver(c).await;
    assert_eq!(h.room.consumer_timings().stitched_events, 0);
    // `b`, stitched ahead again while `c` was written, is neither stored nor read.
    let email = RawIdentifier::new(Email, "buyer4@example.org");
    let key = h
        .room
        .keys_of(WS, std::slice::from_ref(&email))
        .await
        .unwrap()[0]
        .unwrap();
    assert!(h.room.lookup(WS, &email).await.is_err());
    assert_eq!(h.room.cached_profile_of(WS, &key).await, None);
    h.deliver(b).await;
    let timings = h.room.consumer_timings();
    assert_eq!(
        (timings.events, timings.stitched_events),
        (48, 16),
        "{timings:?}"
    );
    assert!(h.room.cached_profile_of(WS, &key).await.is_some());
    assert_stored_alike(&h, WS, IN_PLACE_WS, SHOPPERS).await;
}

/// A write through the API while a delivery is stitched ahead starts from the stored
/// graph: it never commits on top of a pass that is not stored, and the delivery is then
/// decoded and stitched again.
async fn a_write_between_stitching_ahead_and_its_delivery_starts_from_the_store(h: Harness) {
    let consumer = IngestConsumer::new(h.room.clone());
    let outbox = h.sealed(WS, bulk_events(8)).await;
    let [a, b] = [&outbox[..16], &outbox[16..]];
    h.room.reset_consumer_timings();
    consumer.look_ahead(&upcoming(b));
    h.deliver(a).await;
    // Shopper 4 (in `b`) is in the graph stitched ahead only; the write links a new
    // identifier to their email.
    let direct = [
        RawIdentifier::new(Anon, "direct-anon"),
        RawIdentifier::new(Email, "buyer4@example.org"),
    ];
    let observation = IdentifierObservation {
        event_id: "direct-1".into(),
        at: t(1),
        rule: LinkRule::SameEvent,
        identifiers: direct.to_vec(),
    };
    h.room.ingest(WS, &[observation]).await.unwrap();
    let view = h.room.lookup(WS, &direct[0]).await.unwrap();
    assert_eq!(view.identifiers.len(), 2, "{view:?}");
    h.deliver(b).await;
    let timings = h.room.consumer_timings();
    assert_eq!(
        (timings.events, timings.stitched_events),
        (32, 0),
        "{timings:?}"
    );
    let view = h.room.lookup(WS, &direct[0]).await.unwrap();
    let values: std::collections::BTreeSet<String> = view
        .identifiers
        .iter()
        .map(|i| i.value.to_string())
        .collect();
    assert_eq!(
        values,
        [
            "bulk-anon-4",
            "bulk-user-4",
            "buyer4@example.org",
            "direct-anon"
        ]
        .map(String::from)
        .into()
    );
    let stored = "SELECT COUNT(*) FROM identity_identifiers WHERE workspace_id = 'acme'";
    assert_eq!(h.scalar(stored).await, 3 * 8 + 1);
}

/// The hint the bus gives for `outbox`'s events.
fn upcoming(outbox: &[OutboxEvent]) -> Vec<meridian_bus::UpcomingEvent> {
    outbox
        .iter()
        .map(|e| meridian_bus::UpcomingEvent {
            event_id: e.event_id,
            workspace_id: e.workspace_id.as_str().into(),
            key: e.key.clone(),
            payload: e.payload.clone(),
        })
        .collect()
}

/// Decoding ahead opens values with the data keys of the time: a subject forgotten between
/// the decoding ahead and the delivery makes the delivery decode again, and the erased
/// shopper's event is skipped, as it is without the look-ahead.
async fn an_erasure_after_decoding_ahead_is_honoured_by_the_delivery(h: Harness) {
    let consumer = IngestConsumer::new(h.room.clone());
    let shoppers = |names: &[&str]| -> Vec<Accepted> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let at = i64::try_from(i).unwrap();
                track(&format!("ahead-{name}"), "Viewed", at, &[(Anon, name)])
            })
            .collect()
    };
    // Nothing forgotten: the delivery takes every event as decoded ahead.
    let outbox = h.sealed(WS, shoppers(&["anon-1", "anon-2"])).await;
    consumer.look_ahead(&upcoming(&outbox));
    consumer.look_ahead_settled().await;
    h.room.reset_consumer_timings();
    h.deliver(&outbox).await;
    assert_eq!(h.room.consumer_timings().prepared_events, 2);
    // The first shopper's subject is forgotten after its event was decoded ahead.
    let outbox = h.sealed(WS, shoppers(&["anon-3", "anon-4"])).await;
    consumer.look_ahead(&upcoming(&outbox));
    consumer.look_ahead_settled().await;
    h.vault.forget(WS, &outbox[0].key).await.unwrap();
    h.room.reset_consumer_timings();
    h.deliver(&outbox).await;
    let timings = h.room.consumer_timings();
    assert_eq!(
        (timings.events, timings.prepared_events),
        (2, 0),
        "{timings:?}"
    );
    for (anon, stored) in [("anon-2", true), ("anon-3", false), ("anon-4", true)] {
        let found = h.room.lookup(WS, &RawIdentifier::new(Anon, anon)).await;
        assert_eq!(found.is_ok(), stored, "{anon}");
    }
}

/// Workspaces `ws` and `other`, each fed [`bulk_events`] of `shoppers`, hold the same rows
/// and the same profiles.
async fn assert_stored_alike(h: &Harness, ws: &str, other: &str, shoppers: usize) {
    for (table, expected) in [
        ("identity_identifiers", Some(3 * shoppers)),
        ("identity_edges", Some(2 * shoppers)),
        ("identity_conflicts", Some(shoppers)),
        ("bus_processed", Some(4 * shoppers)),
        ("identity_trait_payloads", Some(shoppers)),
        ("identity_activity", None),
        ("identity_computed_traits", Some(shoppers)),
    ] {
        let count = |ws: &str| format!("SELECT COUNT(*) FROM {table} WHERE workspace_id = '{ws}'");
        let stored = h.scalar(&count(ws)).await;
        assert_eq!(stored, h.scalar(&count(other)).await, "{table}");
        assert!(stored >= i64::try_from(shoppers).unwrap(), "{table}");
        if let Some(expected) = expected {
            assert_eq!(stored, i64::try_from(expected).unwrap(), "{table}");
        }
    }
    let live =
        "SELECT COUNT(*) FROM identity_profiles WHERE merged_into IS NULL AND workspace_id = ";
    assert_eq!(
        h.scalar(&format!("{live}'{ws}'")).await,
        h.scalar(&format!("{live}'{other}'")).await
    );
    // What was stored reads back: one profile per shopper, its values opened from the
    // sealed copies, its traits, orders, edges and refused links.
    for n in (0..shoppers).step_by(7) {
        let email = format!("buyer{n}@example.org");
        let mut per_workspace = Vec::new();
        for ws in [ws, other] {
            let view = h
                .room
                .lookup(ws, &RawIdentifier::new(Email, &email))
                .await
                .unwrap();
            let values: std::collections::BTreeSet<String> = view
                .identifiers
                .iter()
                .map(|i| i.value.to_string())
                .collect();
            assert_eq!(
                values,
                [
                    format!("bulk-anon-{n}"),
                    format!("bulk-user-{n}"),
                    email.clone()
                ]
                .into(),
                "{ws}"
            );
            assert_eq!(view.traits.0["name"], json!(format!("Buyer {n}")));
            let computed = view.computed.as_ref().unwrap();
            assert_eq!((computed.stage, computed.orders), (AiplStage::Purchase, 1));
            let explained = h.room.explain(ws, view.profile.profile).await.unwrap();
            assert_eq!(explained.edges.len(), 2, "{ws}");
            assert!(
                explained
                    .conflicts
                    .iter()
                    .any(|c| c.reason.code() == "blocked_value")
            );
            per_workspace.push((explained.edges.len(), explained.conflicts.len(), values));
        }
        assert_eq!(per_workspace[0], per_workspace[1]);
    }
}

// ---- harness --------------------------------------------------------------------------

async fn add_workspace(store: &Store, workspace: &str) {
    let sql = "INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')";
    match store {
        Store::Postgres(p) => {
            sqlx::query(sql).bind(workspace).execute(p).await.unwrap();
        }
        Store::Sqlite(p) => {
            sqlx::query(sql).bind(workspace).execute(p).await.unwrap();
        }
    }
}

async fn harness(store: Store, key_store: Arc<dyn meridian_vault::KeyStore>) -> Harness {
    add_workspace(&store, WS).await;
    let vault = Arc::new(Vault::new(
        Arc::new(KeyRing::generate(1).unwrap()),
        key_store.clone(),
    ));
    Harness {
        room: room_on(&store, vault.clone()),
        vault,
        key_store,
        bus: LocalBus::new(store.clone()),
        store,
        events: Arc::new(MemoryEvents::default()),
    }
}

/// An identity room over `store` whose consumer reads keys through `vault`.
fn room_on(store: &Store, vault: Arc<Vault>) -> IdentityRoom {
    let identity: Arc<dyn IdentityStore> = match store {
        Store::Postgres(p) => Arc::new(StoreIdentity::Postgres(p.clone())),
        Store::Sqlite(p) => Arc::new(StoreIdentity::Sqlite(p.clone())),
    };
    IdentityRoom::with_profile_rules(
        identity,
        vault,
        Rules::default().validate().unwrap(),
        rules(),
        None,
    )
}

/// The consumer's look-ahead loads the data keys of the subjects the bus names into its
/// vault's cache, where the next delivery's decode finds them. Seen from outside: once
/// the key store has lost every key, the named subjects' keys are still served (from
/// memory), and a subject that was not named is looked up in the store and found gone.
async fn look_ahead_loads_the_named_subjects_keys_into_the_cache(h: Harness) {
    let indexer = h.vault.blind_indexer(WS).await.unwrap();
    let mut subjects = Vec::new();
    for email in ["a@shop.example", "b@shop.example", "c@shop.example"] {
        let n = normalize(IdentifierType::Email, email, "", "").unwrap();
        let index = blind_index(&indexer, &n).index;
        let subject = h.vault.identifier_subjects(WS, &[index]).await.unwrap()[0].clone();
        h.vault.subject_key(WS, &subject).await.unwrap();
        subjects.push(subject);
    }
    // The consumer runs on another replica: same key store, its own (cold) cache.
    let replica = Arc::new(Vault::new(h.vault.provider().clone(), h.key_store.clone()));
    let consumer = IngestConsumer::new(room_on(&h.store, replica.clone()));
    assert!(consumer.looks_ahead());
    // Hints without payloads: only the keys are loaded.
    let upcoming = |subject: &String| meridian_bus::UpcomingEvent {
        event_id: uuid::Uuid::now_v7(),
        workspace_id: WS.into(),
        key: subject.clone(),
        payload: Vec::new(),
    };
    consumer.look_ahead(&[
        upcoming(&subjects[0]),
        upcoming(&subjects[1]),
        upcoming(&subjects[0]),
    ]);
    consumer.look_ahead_settled().await;
    let lost = match &h.store {
        Store::Postgres(p) => sqlx::query("DELETE FROM vault_subject_keys WHERE workspace_id = $1")
            .bind(WS)
            .execute(p)
            .await
            .unwrap()
            .rows_affected(),
        Store::Sqlite(p) => sqlx::query("DELETE FROM vault_subject_keys WHERE workspace_id = ?1")
            .bind(WS)
            .execute(p)
            .await
            .unwrap()
            .rows_affected(),
    };
    assert_eq!(lost, 3);
    let names: Vec<&str> = subjects.iter().map(String::as_str).collect();
    let keys = replica.existing_subject_keys(WS, &names).await.unwrap();
    let served: Vec<bool> = keys.iter().map(Option::is_some).collect();
    assert_eq!(served, [true, true, false]);
}

macro_rules! on_both {
    ($($check:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $check(pool: PgPool) {
                    let ks = Arc::new(PgKeyStore::new(pool.clone()));
                    super::$check(harness(Store::Postgres(pool), ks).await).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $check(pool: SqlitePool) {
                    let ks = Arc::new(SqliteKeyStore::new(pool.clone()));
                    super::$check(harness(Store::Sqlite(pool), ks).await).await;
                }
            )*
        }
    };
}

on_both!(
    events_stitch_and_build_traits_and_computed_traits,
    merges_fold_and_splits_rehome_computed_traits,
    rfm_scores_are_quintiles_per_workspace_and_currency,
    erasing_a_profile_deletes_its_rows_and_reports_what_to_forget,
    list_profile_events_reads_through_the_source,
    malformed_payloads_are_refused_not_applied,
    one_delivery_stitches_like_one_event_at_a_time,
    a_bulk_delivery_is_stored_like_one_event_at_a_time,
    events_decoded_ahead_are_stored_like_events_decoded_in_place,
    an_erasure_after_decoding_ahead_is_honoured_by_the_delivery,
    events_stitched_ahead_are_stored_like_events_stitched_in_place,
    a_delivery_other_than_the_one_stitched_ahead_starts_from_the_store,
    a_write_between_stitching_ahead_and_its_delivery_starts_from_the_store,
    look_ahead_loads_the_named_subjects_keys_into_the_cache,
);

/// Migration `0022` on PostgreSQL, during a rollout: a pod of the previous release records
/// what it applied in `identity_applied_events`; the migration's trigger records it in
/// `bus_processed` under the consumer's key, so a new pod delivered the same ingested event
/// skips it. What a new pod applies is recorded in `bus_processed` only.
#[sqlx::test(migrations = "../../migrations/postgres")]
async fn an_event_an_old_pod_applied_is_skipped_by_a_new_one(pool: PgPool) {
    let ks = Arc::new(PgKeyStore::new(pool.clone()));
    let h = harness(Store::Postgres(pool.clone()), ks).await;
    let old = uuid::Uuid::now_v7().to_string();
    sqlx::query(
        "INSERT INTO identity_applied_events (workspace_id, event_id, applied_at) \
         VALUES ($1, $2, now())",
    )
    .bind(WS)
    .bind(&old)
    .execute(&pool)
    .await
    .unwrap();
    h.publish(vec![ev(&old, v1::EventType::Page, 0, &[(Anon, "old-pod")])])
        .await;
    let identifiers = "SELECT COUNT(*) FROM identity_identifiers WHERE workspace_id = 'acme'";
    assert_eq!(h.scalar(identifiers).await, 0, "applied by the old pod");

    let new = uuid::Uuid::now_v7().to_string();
    h.publish(vec![ev(&new, v1::EventType::Page, 1, &[(Anon, "new-pod")])])
        .await;
    assert_eq!(h.scalar(identifiers).await, 1);
    let recorded = |id: &str| {
        format!(
            "SELECT COUNT(*) FROM bus_processed WHERE consumer = 'identity' AND event_id = '{id}'"
        )
    };
    assert_eq!(h.scalar(&recorded(&old)).await, 1);
    assert_eq!(h.scalar(&recorded(&new)).await, 1);
    assert_eq!(
        h.scalar("SELECT COUNT(*) FROM identity_applied_events")
            .await,
        1,
        "new pods do not write the old record"
    );
}
