//! The identity room through the real binary: accepted events enqueued in the outbox
//! (as ingest publishes them) are consumed by the serving process, which stitches them
//! into a profile with traits and computed traits served over gRPC.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_identity::IdentifierType;
use meridian_identity::identifier::{blind_index, normalize};
use meridian_proto::bus::v1::{EventAccepted, Money, SealedIdentifier};
use meridian_proto::v1::*;
use meridian_store::{Store, StoreLocation};
use meridian_vault::{LocalKeyFileProvider, Vault};
use prost::Message;

use crate::harness::{Backend, Environment, authorized};

const WS: &str = "acme";

fn ts(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

/// One accepted event to publish.
struct Event<'a> {
    event_id: &'a str,
    kind: EventType,
    event: &'a str,
    at: i64,
    identifiers: &'a [(IdentifierType, &'a str)],
    traits: Option<serde_json::Value>,
    revenue: Option<Money>,
}

/// Seals and enqueues one accepted event the way ingest does.
async fn publish(store: &Store, vault: &Vault, e: Event<'_>) {
    let Event {
        event_id,
        kind,
        event,
        at,
        identifiers,
        traits,
        revenue,
    } = e;
    let indexer = vault.blind_indexer(WS).await.unwrap();
    let normalized: Vec<_> = identifiers
        .iter()
        .map(|(k, v)| {
            let n = normalize(*k, v, "", "").unwrap();
            let key = blind_index(&indexer, &n);
            (n, key)
        })
        .collect();
    let subject = vault
        .identifier_subjects(WS, &[normalized[0].1.index])
        .await
        .unwrap()
        .remove(0);
    let data_key = vault.subject_key(WS, &subject).await.unwrap();
    let payload = EventAccepted {
        workspace_id: WS.into(),
        event_id: event_id.into(),
        message_id: format!("m-{event_id}"),
        r#type: kind as i32,
        event: event.into(),
        timestamp: Some(ts(at)),
        received_at: Some(ts(at)),
        sealed_subject: subject.clone(),
        identifiers: normalized
            .iter()
            .enumerate()
            .map(|(i, (n, key))| SealedIdentifier {
                r#type: i32::from(key.kind.code()),
                source: n.source.clone(),
                blind_index: key.index.0.to_vec(),
                sealed_value: data_key
                    .seal(event_id, &format!("identifiers.{i}"), n.value.as_bytes())
                    .unwrap(),
            })
            .collect(),
        sealed_traits: traits
            .map(|t| {
                data_key
                    .seal(event_id, "traits", t.to_string().as_bytes())
                    .unwrap()
            })
            .unwrap_or_default(),
        revenue,
        storefront_id: "web".into(),
        ..Default::default()
    };
    let outbox = meridian_bus::OutboxEvent::new(
        WS.parse().unwrap(),
        "ingest-event".parse().unwrap(),
        event_id,
        payload.encode_to_vec(),
    );
    match store {
        Store::Postgres(p) => {
            let mut tx = p.begin().await.unwrap();
            meridian_bus::enqueue(&mut tx, &outbox).await.unwrap();
            tx.commit().await.unwrap();
        }
        Store::Sqlite(p) => {
            let mut tx = p.begin().await.unwrap();
            meridian_bus::enqueue(&mut tx, &outbox).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
}

#[tokio::test]
async fn accepted_events_become_a_profile_with_traits_and_computed_traits() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let env = Environment::new(backend).await;
        let key = env.api_key(WS, "admin").await;
        let server = env.serve(&[]).await;
        let location = match &env.database {
            Some(db) => StoreLocation::Postgres {
                url: db.url.clone(),
                max_connections: 2,
            },
            None => StoreLocation::Embedded {
                data_dir: env.data_dir.path().to_path_buf(),
            },
        };
        let store = Store::connect(&location).await.unwrap();
        // The same key file and key store as the server: what ingest seals, it opens.
        let vault = Vault::new(
            Arc::new(LocalKeyFileProvider::open_or_create(env.data_dir.path()).unwrap()),
            meridian_vault::key_store_for(&store),
        );
        use IdentifierType::{AnonymousId, Email, UserId};
        publish(
            &store,
            &vault,
            Event {
                event_id: "e1",
                kind: EventType::Page,
                event: "",
                at: 1_767_225_600,
                identifiers: &[(AnonymousId, "anon-e2e-1")],
                traits: None,
                revenue: None,
            },
        )
        .await;
        publish(
            &store,
            &vault,
            Event {
                event_id: "e2",
                kind: EventType::Identify,
                event: "",
                at: 1_767_225_610,
                identifiers: &[
                    (UserId, "user-e2e-1"),
                    (AnonymousId, "anon-e2e-1"),
                    (Email, "dora.e2e@example.com"),
                ],
                traits: Some(serde_json::json!({"first_name": "Dora", "plan": "gold"})),
                revenue: None,
            },
        )
        .await;
        publish(
            &store,
            &vault,
            Event {
                event_id: "e3",
                kind: EventType::Track,
                event: "Order Completed",
                at: 1_767_225_620,
                identifiers: &[(AnonymousId, "anon-e2e-1")],
                traits: None,
                revenue: Some(Money {
                    currency: "EUR".into(),
                    minor_units: 12_900,
                }),
            },
        )
        .await;

        let mut identity =
            identity_service_client::IdentityServiceClient::new(server.channel.clone());
        let lookup = || LookupProfileRequest {
            workspace_id: WS.into(),
            identifier: Some(Identifier {
                r#type: IdentifierType::Email as i32,
                value: "Dora.E2E@example.com".into(),
                ..Default::default()
            }),
        };
        // The consumer runs in the server: wait (bounded) until the last event is applied.
        let deadline = Instant::now() + Duration::from_secs(30);
        let profile = loop {
            if let Ok(r) = identity
                .lookup_profile(authorized(lookup(), Some(&key)))
                .await
            {
                let p = r.into_inner().profile.unwrap();
                if p.computed_traits
                    .as_ref()
                    .and_then(|c| c.rfm.as_ref())
                    .is_some()
                {
                    break p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "events not applied: {}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(profile.identifiers.len(), 3, "{backend:?}");
        assert!(
            profile
                .identifiers
                .iter()
                .any(|i| i.value == "dora.e2e@example.com")
        );
        let traits = profile.traits.unwrap();
        assert_eq!(traits.0["plan"], "gold");
        let computed = profile.computed_traits.unwrap();
        assert_eq!(computed.aipl_stage, AiplStage::Purchase as i32);
        assert_eq!(computed.rfm.unwrap().monetary_minor_units, 12_900);

        let explained = identity
            .explain_profile(authorized(
                ExplainProfileRequest {
                    workspace_id: WS.into(),
                    profile_id: profile.profile_id.clone(),
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(explained.edges.len(), 2);
        assert!(explained.edges.iter().all(|e| e.message_id == "e2"));

        // The binary reads profile events from the ingestion room. These events were put on
        // the bus directly, never stored by ingest: the profile has none to list.
        let listed = identity
            .list_profile_events(authorized(
                ListProfileEventsRequest {
                    workspace_id: WS.into(),
                    profile_id: profile.profile_id.clone(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(listed.events.is_empty());
        assert!(listed.next_page_token.is_empty());

        // Nothing personal in the server's log.
        let log = server.log();
        for needle in ["dora.e2e@example.com", "Dora", "user-e2e-1", "anon-e2e-1"] {
            assert!(!log.contains(needle), "{needle} in the log");
        }
        store.close().await;
        server.terminate().await;
    }
}
