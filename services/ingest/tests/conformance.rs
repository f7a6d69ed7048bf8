//! The ingest conformance suite: the same checks, through [`IngestRoom`] and the gRPC
//! handler, against PostgreSQL (a fresh database per test) and SQLite.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::{Duration, Utc};
use meridian_bus::{EventHandler, OutboxEvent, Tx};
use meridian_ingest::store::EventRow;
use meridian_ingest::{
    ConsentInvalidation, ConsentLookup, ConsentSnapshot, EVENT_FAMILY, IngestConfig, IngestError,
    IngestGrpc, IngestRoom, NoRecordedConsent, SubjectIdentifier,
};
use meridian_policy::{ConsentState, PolicyEngine};
use meridian_proto::bus::v1 as bus;
use meridian_proto::v1::ingest_service_server::IngestService;
use meridian_proto::{JsonObject, v1};
use meridian_store::Store;
use meridian_store::sqlx::{self, PgPool, SqlitePool};
use meridian_vault::testing::{TableDump, dump_postgres, dump_sqlite, find_plaintext};
use meridian_vault::{KeyRing, PgKeyStore, SqliteKeyStore, Vault};
use prost::Message;

const WS: &str = "acme";

/// A consent lookup answering a fixed snapshot and counting its calls.
#[derive(Default)]
struct FixedConsent {
    calls: AtomicUsize,
    snapshot: std::sync::Mutex<ConsentSnapshot>,
}

#[async_trait]
impl ConsentLookup for FixedConsent {
    async fn current(
        &self,
        _workspace: &str,
        subjects: &[Vec<SubjectIdentifier>],
    ) -> Result<Vec<ConsentSnapshot>, IngestError> {
        self.calls.fetch_add(subjects.len(), Ordering::SeqCst);
        let snap = self.snapshot.lock().unwrap().clone();
        Ok(vec![snap; subjects.len()])
    }
}

struct Harness {
    store: Store,
    vault: Arc<Vault>,
    policies: Arc<PolicyEngine>,
}

impl Harness {
    fn room(&self, consent: Arc<dyn ConsentLookup>) -> IngestRoom {
        self.room_with(consent, IngestConfig::default())
    }

    fn room_with(&self, consent: Arc<dyn ConsentLookup>, config: IngestConfig) -> IngestRoom {
        IngestRoom::new(
            &self.store,
            self.vault.clone(),
            self.policies.clone(),
            consent,
            config,
        )
        .unwrap()
    }

    async fn dump(&self) -> TableDump {
        match &self.store {
            Store::Postgres(p) => dump_postgres(p).await.unwrap(),
            Store::Sqlite(p) => dump_sqlite(p).await.unwrap(),
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        match &self.store {
            Store::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }

    /// The announced events (outbox packs unpacked), in order.
    async fn announced(&self) -> Vec<OutboxEvent> {
        let family = EVENT_FAMILY.parse().unwrap();
        meridian_bus::outbox_events_of(&self.store, &family)
            .await
            .unwrap()
    }

    async fn outbox_payloads(&self) -> Vec<Vec<u8>> {
        self.announced()
            .await
            .into_iter()
            .map(|e| e.payload)
            .collect()
    }
}

async fn pg(pool: PgPool) -> Harness {
    sqlx::query("INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')")
        .bind(WS)
        .execute(&pool)
        .await
        .unwrap();
    Harness {
        vault: Arc::new(Vault::new(
            Arc::new(KeyRing::generate(1).unwrap()),
            Arc::new(PgKeyStore::new(pool.clone())),
        )),
        store: Store::Postgres(pool),
        policies: Arc::new(PolicyEngine::builtin().unwrap()),
    }
}

async fn lite(pool: SqlitePool) -> Harness {
    sqlx::query("INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')")
        .bind(WS)
        .execute(&pool)
        .await
        .unwrap();
    Harness {
        vault: Arc::new(Vault::new(
            Arc::new(KeyRing::generate(1).unwrap()),
            Arc::new(SqliteKeyStore::new(pool.clone())),
        )),
        store: Store::Sqlite(pool),
        policies: Arc::new(PolicyEngine::builtin().unwrap()),
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

/// An `Order Completed` by a Californian shopper known by email and anonymous id.
fn order(message_id: &str, email: &str, anon: &str) -> v1::Event {
    v1::Event {
        message_id: message_id.into(),
        r#type: v1::EventType::Track as i32,
        anonymous_id: anon.into(),
        identifiers: vec![v1::Identifier {
            r#type: v1::IdentifierType::Email as i32,
            value: email.into(),
            ..Default::default()
        }],
        event: "Order Completed".into(),
        properties: Some(
            JsonObject::try_from(serde_json::json!({
                "order_id": "o-1", "revenue": 42.5, "currency": "EUR",
                "shipping_name": format!("Ship to {email}"),
            }))
            .unwrap(),
        ),
        context: Some(v1::Context {
            ip: "203.0.113.77".into(),
            storefront: Some(v1::Storefront {
                id: "store-1".into(),
                country: "US-CA".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        jurisdiction: "US-CA".into(),
        ..Default::default()
    }
}

async fn ingest(room: &IngestRoom, events: Vec<v1::Event>) -> v1::IngestResponse {
    grpc_of(room)
        .ingest(request(v1::IngestRequest {
            workspace_id: String::new(),
            events,
            sent_at: None,
        }))
        .await
        .unwrap()
        .into_inner()
}

fn grpc_of(room: &IngestRoom) -> IngestGrpc {
    IngestGrpc::new(room.clone())
}

fn outcome(r: &v1::EventResult) -> v1::EventOutcome {
    v1::EventOutcome::try_from(r.outcome).unwrap()
}

async fn accepted_events_are_sealed_indexed_and_announced(h: Harness) {
    let room = h.room(Arc::new(NoRecordedConsent));
    let emails = ["ana.lima7731@example.com", "bo.chen5512@example.org"];
    let resp = ingest(
        &room,
        vec![
            order("m-1", "Ana.Lima7731@Example.com", "anon-7f3c9e51"),
            order("m-2", emails[1], "anon-2b8d0c44"),
        ],
    )
    .await;
    assert_eq!(resp.summary.unwrap().accepted, 2, "{resp:?}");
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_events").await, 2);
    assert_eq!(h.announced().await.len(), 2);
    // On PostgreSQL a call's events share one outbox row (a pack); SQLite writes one each.
    let rows = match h.store {
        Store::Postgres(_) => 1,
        Store::Sqlite(_) => 2,
    };
    assert_eq!(h.count("SELECT COUNT(*) FROM outbox_events").await, rows);

    // Nothing personal at rest: not the emails, the anonymous ids, the IP or the free text.
    let dump = h.dump().await;
    let needles = [
        emails[0],
        emails[1],
        "anon-7f3c9e51",
        "anon-2b8d0c44",
        "203.0.113.77",
        "Ship to",
    ];
    assert_eq!(find_plaintext(&dump.text, needles), Vec::<&str>::new());

    // The outbox payload: blind indexes, sealed values under the anchor's subject, revenue.
    let payloads = h.outbox_payloads().await;
    let accepted = bus::EventAccepted::decode(payloads[0].as_slice()).unwrap();
    assert_eq!(accepted.event, "Order Completed");
    assert_eq!(accepted.jurisdiction, "US-CA");
    assert_eq!(
        accepted.revenue,
        Some(bus::Money {
            currency: "EUR".into(),
            minor_units: 4250
        })
    );
    assert_eq!(accepted.identifiers.len(), 2);
    // The email outranks the anonymous id (identity's priority): it anchors the event.
    let email_id = accepted
        .identifiers
        .iter()
        .position(|i| i.r#type == v1::IdentifierType::Email as i32)
        .unwrap();
    let indexer = h.vault.blind_indexer(WS).await.unwrap();
    let n = meridian_identity::identifier::normalize(
        meridian_identity::IdentifierType::Email,
        "Ana.Lima7731@Example.com",
        "",
        "",
    )
    .unwrap();
    let key = meridian_identity::identifier::blind_index(&indexer, &n);
    assert_eq!(
        accepted.identifiers[email_id].blind_index,
        key.index.as_bytes().to_vec()
    );
    let subjects = h.vault.identifier_subjects(WS, &[key.index]).await.unwrap();
    assert_eq!(accepted.sealed_subject, subjects[0]);
    let opened = h
        .vault
        .open(
            WS,
            &accepted.sealed_subject,
            &accepted.event_id,
            &format!("identifiers.{email_id}"),
            &accepted.identifiers[email_id].sealed_value,
        )
        .await
        .unwrap();
    assert_eq!(opened.as_slice(), emails[0].as_bytes());

    // Found and opened per identifier.
    let page = room.events_of(WS, &[key.index], "", 10).await.unwrap();
    assert_eq!(page.events.len(), 1);
    let body = page.events[0].body.as_ref().unwrap();
    assert_eq!(body["properties"]["revenue"], serde_json::json!(42.5));
    assert_eq!(body["context"]["ip"], "203.0.113.77");
    assert_eq!(page.events[0].message_id, "m-1");
}

async fn retried_batches_store_nothing_twice(h: Harness) {
    let room = h.room(Arc::new(NoRecordedConsent));
    let batch = vec![
        order("m-1", "a1@example.com", "anon-1"),
        order("m-2", "a2@example.com", "anon-2"),
        order("m-1", "a1@example.com", "anon-1"),
    ];
    let first = ingest(&room, batch.clone()).await;
    let s = first.summary.unwrap();
    assert_eq!((s.accepted, s.duplicate), (2, 1));
    assert_eq!(outcome(&first.results[2]), v1::EventOutcome::Duplicate);
    // A retry of the whole batch, and by a second room (another replica).
    let second = ingest(&h.room(Arc::new(NoRecordedConsent)), batch).await;
    let s = second.summary.unwrap();
    assert_eq!((s.accepted, s.duplicate), (0, 3));
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_events").await, 2);
    assert_eq!(h.announced().await.len(), 2);
    // A batch mixing a stored id with a new one stores and announces only the new one.
    let mixed = ingest(
        &room,
        vec![
            order("m-2", "a2@example.com", "anon-2"),
            order("m-3", "a3@example.com", "anon-3"),
        ],
    )
    .await;
    let s = mixed.summary.unwrap();
    assert_eq!((s.accepted, s.duplicate), (1, 1));
    assert_eq!(outcome(&mixed.results[0]), v1::EventOutcome::Duplicate);
    assert_eq!(outcome(&mixed.results[1]), v1::EventOutcome::Accepted);
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_events").await, 3);
    assert_eq!(h.announced().await.len(), 3);
    // Concurrent retries of the same batch: still one row per message id.
    let batch: Vec<v1::Event> = (0..50)
        .map(|i| {
            order(
                &format!("c-{i}"),
                &format!("c{i}@example.com"),
                &format!("anon-c{i}"),
            )
        })
        .collect();
    let (a, b) = tokio::join!(ingest(&room, batch.clone()), ingest(&room, batch));
    assert_eq!(
        a.summary.unwrap().accepted + b.summary.unwrap().accepted,
        50
    );
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_events").await, 53);
    let counts = room
        .store()
        .count_message_ids(WS, &(0..50).map(|i| format!("c-{i}")).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(counts.len(), 50);
    assert!(counts.iter().all(|(_, n)| *n == 1));
}

/// A batch large enough to be stored in parts (three on PostgreSQL, each its own
/// transaction; one on SQLite) reports every event's outcome at its own index, stores each
/// new message once and announces it once.
async fn a_batch_stored_in_parts_keeps_each_outcome_in_place(h: Harness) {
    let room = h.room_with(
        Arc::new(NoRecordedConsent),
        IngestConfig {
            max_parts_per_batch: 3,
            ..IngestConfig::default()
        },
    );
    let message = |i: usize| format!("p-{i:03}");
    let event = |i: usize| {
        order(
            &message(i),
            &format!("p{i}@example.com"),
            &format!("anon-p{i}"),
        )
    };
    // Stored before: every 50th, spread over the parts.
    let earlier: Vec<usize> = (0..400).step_by(50).collect();
    let s = ingest(&room, earlier.iter().map(|&i| event(i)).collect())
        .await
        .summary
        .unwrap();
    assert_eq!(s.accepted, 8);
    let mut batch: Vec<v1::Event> = (0..400).map(event).collect();
    batch[130] = order(&message(130), "not-an-email", "anon-p130");
    batch[390] = event(7);
    let resp = ingest(&room, batch).await;
    let mut expected_accepted = 0;
    for (i, r) in resp.results.iter().enumerate() {
        let expected = if i == 130 {
            v1::EventOutcome::Rejected
        } else if earlier.contains(&i) || i == 390 {
            v1::EventOutcome::Duplicate
        } else {
            expected_accepted += 1;
            v1::EventOutcome::Accepted
        };
        assert_eq!((r.index as usize, outcome(r)), (i, expected), "{r:?}");
        let id = if i == 390 { message(7) } else { message(i) };
        assert_eq!(r.message_id, id);
    }
    assert_eq!(resp.results[130].field, "events[130].identifiers[0].value");
    let s = resp.summary.unwrap();
    assert_eq!(
        (s.accepted, s.duplicate, s.rejected),
        (expected_accepted, 9, 1)
    );
    let stored = 8 + i64::from(expected_accepted);
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_events").await, stored);
    assert_eq!(
        h.count("SELECT COUNT(DISTINCT message_id) FROM ingest_events")
            .await,
        stored
    );
    assert_eq!(h.announced().await.len() as i64, stored);
    // One outbox pack per transaction on PostgreSQL: the earlier batch's and three parts'.
    if let Store::Postgres(_) = h.store {
        assert_eq!(h.count("SELECT COUNT(*) FROM outbox_events").await, 4);
    }
}

async fn bad_events_are_rejected_alone_with_the_field_at_fault(h: Harness) {
    let room = h.room(Arc::new(NoRecordedConsent));
    let mut no_id = order("m-2", "x@example.com", "");
    no_id.identifiers.clear();
    let mut bad_email = order("m-3", "not-an-email", "anon-3");
    bad_email.event = "Order Completed".into();
    let mut bad_time = order("m-4", "t@example.com", "anon-4");
    bad_time.timestamp = Some(prost_types::Timestamp {
        seconds: 0,
        nanos: -1,
    });
    let mut no_name = order("m-5", "n@example.com", "anon-5");
    no_name.event = String::new();
    let mut placeholder = order("m-6", "p@example.com", "null");
    placeholder.identifiers.clear();
    let resp = ingest(
        &room,
        vec![
            order("m-1", "ok@example.com", "anon-1"),
            no_id,
            bad_email,
            bad_time,
            no_name,
            placeholder,
            v1::Event {
                r#type: 1,
                event: "x".into(),
                anonymous_id: "a".into(),
                ..Default::default()
            },
        ],
    )
    .await;
    let got: Vec<(v1::EventOutcome, &str)> = resp
        .results
        .iter()
        .map(|r| (outcome(r), r.field.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (v1::EventOutcome::Accepted, ""),
            (v1::EventOutcome::Rejected, "events[1].anonymous_id"),
            (v1::EventOutcome::Rejected, "events[2].identifiers[0].value"),
            (v1::EventOutcome::Rejected, "events[3].timestamp"),
            (v1::EventOutcome::Rejected, "events[4].event"),
            (v1::EventOutcome::Rejected, "events[5].anonymous_id"),
            (v1::EventOutcome::Rejected, "events[6].message_id"),
        ]
    );
    assert!(resp.results.iter().skip(1).all(|r| !r.reason.is_empty()));
    assert_eq!(resp.results[3].message_id, "m-4");
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_events").await, 1);
    // Whole-request faults are INVALID_ARGUMENT naming the field.
    let grpc = grpc_of(&room);
    let err = grpc
        .ingest(request(v1::IngestRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("events"));
    let too_many = v1::IngestRequest {
        events: (0..1001)
            .map(|i| order(&format!("b{i}"), "b@example.com", "anon"))
            .collect(),
        ..Default::default()
    };
    assert_eq!(
        grpc.ingest(request(too_many)).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
}

async fn the_consent_gate_drops_without_a_basis_and_counts(h: Harness) {
    let consent = Arc::new(FixedConsent::default());
    let room = h.room(consent.clone());
    let mut eu = order("m-1", "eu@example.com", "anon-eu");
    eu.jurisdiction = "DE".into();
    // GDPR, no consent recorded: analytics, personalisation and marketing are opt-in.
    let resp = ingest(&room, vec![eu.clone()]).await;
    assert_eq!(outcome(&resp.results[0]), v1::EventOutcome::Dropped);
    assert_eq!(resp.results[0].rule, "gdpr.art6_1_a.consent_required");
    assert_eq!(resp.summary.unwrap().dropped, 1);
    // The event carries consent to analytics: accepted for that purpose only.
    eu.message_id = "m-2".into();
    eu.consent = Some(v1::ConsentSignals {
        choices: vec![v1::PurposeChoice {
            purpose: "analytics".into(),
            decision: v1::ConsentDecision::Given as i32,
            ..Default::default()
        }],
        ..Default::default()
    });
    let resp = ingest(&room, vec![eu.clone()]).await;
    assert_eq!(
        outcome(&resp.results[0]),
        v1::EventOutcome::Accepted,
        "{resp:?}"
    );
    let purposes: String = match &h.store {
        Store::Postgres(p) => sqlx::query_scalar("SELECT purposes FROM ingest_events")
            .fetch_one(p)
            .await
            .unwrap(),
        Store::Sqlite(p) => sqlx::query_scalar("SELECT purposes FROM ingest_events")
            .fetch_one(p)
            .await
            .unwrap(),
    };
    assert_eq!(purposes, "analytics.reporting");
    // Unknown jurisdiction: judged by every regime at once, so GDPR's opt-in applies.
    let mut unknown = order("m-3", "u@example.com", "anon-u");
    unknown.jurisdiction = String::new();
    unknown.context = None;
    let resp = ingest(&room, vec![unknown]).await;
    assert_eq!(outcome(&resp.results[0]), v1::EventOutcome::Dropped);
    // California with GPC: no sale/sharing purpose, analytics still allowed.
    let mut gpc = order("m-4", "g@example.com", "anon-g");
    gpc.consent = Some(v1::ConsentSignals {
        gpc: true,
        ..Default::default()
    });
    let resp = ingest(&room, vec![gpc]).await;
    assert_eq!(outcome(&resp.results[0]), v1::EventOutcome::Accepted);
    // The subject refused everything in the consent room: dropped even in California.
    *consent.snapshot.lock().unwrap() = ConsentSnapshot {
        purposes: vec![
            ("analytics".into(), ConsentState::Refused),
            ("personalize".into(), ConsentState::Refused),
            ("marketing".into(), ConsentState::Refused),
        ],
    };
    let resp = ingest(&room, vec![order("m-5", "r@example.com", "anon-r")]).await;
    assert_eq!(outcome(&resp.results[0]), v1::EventOutcome::Dropped);
    assert_eq!(resp.results[0].rule, "ccpa.1798_120.opted_out");
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_events").await, 2);
}

async fn consent_changes_invalidate_the_cache(h: Harness) {
    let consent = Arc::new(FixedConsent::default());
    let room = h.room(consent.clone());
    ingest(&room, vec![order("m-1", "c@example.com", "anon-c")]).await;
    ingest(&room, vec![order("m-2", "c@example.com", "anon-c")]).await;
    assert_eq!(
        consent.calls.load(Ordering::SeqCst),
        1,
        "the second lookup is cached"
    );
    *consent.snapshot.lock().unwrap() = ConsentSnapshot {
        purposes: vec![
            ("analytics".into(), ConsentState::Refused),
            ("personalize".into(), ConsentState::Refused),
            ("marketing".into(), ConsentState::Refused),
        ],
    };
    // Still cached: the refusal is not seen yet.
    let resp = ingest(&room, vec![order("m-3", "c@example.com", "anon-c")]).await;
    assert_eq!(outcome(&resp.results[0]), v1::EventOutcome::Accepted);
    // The consent room announces the change on the bus; the handler retires the cache.
    let changed = bus::ConsentChanged {
        workspace_id: WS.into(),
        subject_ref: "sr_1".into(),
        purposes: vec!["analytics".into()],
        restricted: true,
        ..Default::default()
    };
    let event = OutboxEvent::new(
        WS.parse().unwrap(),
        "consent".parse().unwrap(),
        "sr_1",
        changed.encode_to_vec(),
    );
    let handler = ConsentInvalidation::new(room.consent_cache());
    match &h.store {
        Store::Postgres(p) => {
            let mut conn = p.acquire().await.unwrap();
            handler
                .handle(&mut Tx::Postgres(&mut conn), &event)
                .await
                .unwrap();
        }
        Store::Sqlite(p) => {
            let mut conn = p.acquire().await.unwrap();
            handler
                .handle(&mut Tx::Sqlite(&mut conn), &event)
                .await
                .unwrap();
        }
    }
    let resp = ingest(&room, vec![order("m-4", "c@example.com", "anon-c")]).await;
    assert_eq!(outcome(&resp.results[0]), v1::EventOutcome::Dropped);
    assert_eq!(consent.calls.load(Ordering::SeqCst), 2);
}

async fn events_are_paged_per_identifier_and_purged(h: Harness) {
    let room = h.room(Arc::new(NoRecordedConsent));
    let events: Vec<v1::Event> = (0..5)
        .map(|i| order(&format!("p-{i}"), "pat@example.com", &format!("anon-p{i}")))
        .chain([order("q-1", "quinn@example.com", "anon-q")])
        .collect();
    ingest(&room, events).await;
    let indexer = h.vault.blind_indexer(WS).await.unwrap();
    let idx = |e: &str| {
        let n = meridian_identity::identifier::normalize(
            meridian_identity::IdentifierType::Email,
            e,
            "",
            "",
        )
        .unwrap();
        meridian_identity::identifier::blind_index(&indexer, &n).index
    };
    let pat = idx("pat@example.com");
    let first = room.events_of(WS, &[pat], "", 2).await.unwrap();
    assert_eq!(first.events.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = room
        .events_of(WS, &[pat], &first.next_page_token, 2)
        .await
        .unwrap();
    let third = room
        .events_of(WS, &[pat], &second.next_page_token, 2)
        .await
        .unwrap();
    let mut ids: Vec<String> = [first, second, third]
        .into_iter()
        .flat_map(|p| p.events.into_iter().map(|e| e.message_id))
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["p-0", "p-1", "p-2", "p-3", "p-4"]);
    assert!(room.events_of(WS, &[pat], "garbage", 2).await.is_err());
    let before = h.announced().await.len();
    assert_eq!(room.purge(WS, &[pat]).await.unwrap(), 5);
    // their outbox copies (which carry the same blind indexes) went with them
    assert_eq!(h.announced().await.len(), before - 5);
    assert_eq!(room.purge(WS, &[pat]).await.unwrap(), 0, "idempotent");
    assert_eq!(
        room.events_of(WS, &[pat], "", 10)
            .await
            .unwrap()
            .events
            .len(),
        0
    );
    assert_eq!(
        room.events_of(WS, &[idx("quinn@example.com")], "", 10)
            .await
            .unwrap()
            .events
            .len(),
        1
    );
}

async fn retention_drops_expired_events(h: Harness) {
    let room = h.room(Arc::new(NoRecordedConsent));
    ingest(&room, vec![order("new", "n@example.com", "anon-n")]).await;
    let now = Utc::now();
    let old = now - Duration::days(3 * 365);
    room.store().ensure_partitions(&[old]).await.unwrap();
    let row = |m: &str| EventRow {
        event_id: uuid::Uuid::now_v7(),
        message_id: m.into(),
        kind: 1,
        event_name: "Old".into(),
        occurred_at: old,
        received_at: old,
        jurisdiction: "US-CA".into(),
        anchor_kind: 3,
        anchor_index: meridian_vault::BlindIndex([7; 32]),
        sealed_subject: "s".into(),
        identifiers: vec![],
        body: vec![1, 2, 3],
        purposes: "analytics.reporting".into(),
    };
    let outbox = |_| {
        OutboxEvent::new(
            WS.parse().unwrap(),
            "ingest-event".parse().unwrap(),
            "s",
            vec![0],
        )
    };
    room.store()
        .insert(WS, &[row("old-1"), row("old-2")], &[outbox(1), outbox(2)])
        .await
        .unwrap();
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_events").await, 3);
    let report = room.apply_retention(now).await.unwrap();
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_events").await, 1);
    match &h.store {
        Store::Postgres(_) => {
            let (name, _, _) = meridian_ingest::store::partition_for(old);
            assert_eq!(report.partitions_dropped, vec![name]);
        }
        Store::Sqlite(_) => assert_eq!(report.rows_deleted, 2),
    }
}

/// The stored rows are the rows given, column for column, whatever the batch size (the
/// PostgreSQL store writes events with binary `COPY`, and large outbox batches too).
async fn stored_rows_read_back_as_written(h: Harness) {
    let room = h.room(Arc::new(NoRecordedConsent));
    let now = Utc::now();
    room.prepare_partitions(now).await.unwrap();
    // Whole microseconds: what both stores keep.
    let at = |offset: i64| {
        chrono::DateTime::from_timestamp_micros(now.timestamp_micros() + offset).unwrap()
    };
    let rows: Vec<EventRow> = (0..70u8)
        .map(|i| EventRow {
            event_id: uuid::Uuid::now_v7(),
            message_id: format!("copy-{i:02}-é"),
            kind: i16::from(i % 4),
            event_name: if i % 5 == 0 {
                String::new()
            } else {
                format!("Event \"{i}\"\ttab")
            },
            // Before the Unix and PostgreSQL epochs, and now.
            occurred_at: match i % 3 {
                0 => chrono::DateTime::from_timestamp_micros(-86_400_000_123).unwrap(),
                1 => chrono::DateTime::from_timestamp_micros(946_684_799_999_999).unwrap(),
                _ => at(-i64::from(i)),
            },
            received_at: at(i64::from(i)),
            jurisdiction: if i % 2 == 0 { "US-CA" } else { "unknown" }.into(),
            anchor_kind: i16::from(i % 11),
            anchor_index: meridian_vault::BlindIndex([i; 32]),
            sealed_subject: format!("subject-{}", i % 7),
            identifiers: (0..usize::from(i % 4) * 33)
                .map(|b| (b % 256) as u8)
                .collect(),
            body: (0..usize::from(i) * 13)
                .map(|b| (b * 7 % 256) as u8)
                .collect(),
            purposes: if i % 6 == 0 {
                String::new()
            } else {
                "analytics.reporting,personalize".into()
            },
        })
        .collect();
    let outbox: Vec<OutboxEvent> = rows
        .iter()
        .map(|r| {
            OutboxEvent::new(
                WS.parse().unwrap(),
                "ingest-event".parse().unwrap(),
                r.sealed_subject.as_str(),
                r.body.clone(),
            )
        })
        .collect();
    // One small batch, then a large one that repeats one of its message ids.
    let written = room
        .store()
        .insert(WS, &rows[..3], &outbox[..3])
        .await
        .unwrap();
    assert_eq!(written, vec![true; 3]);
    let mut again = rows[2..].to_vec();
    again[0].event_id = uuid::Uuid::now_v7();
    let written = room.store().insert(WS, &again, &outbox[2..]).await.unwrap();
    let mut expected = vec![true; again.len()];
    expected[0] = false;
    assert_eq!(written, expected);

    let indexes: Vec<_> = rows.iter().map(|r| r.anchor_index).collect();
    let mut stored = room
        .store()
        .events_of(WS, &indexes, None, 1000)
        .await
        .unwrap();
    stored.sort_by_key(|r| r.event_id);
    let mut expected = rows.clone();
    expected.sort_by_key(|r| r.event_id);
    assert!(
        stored == expected,
        "the stored rows differ from the rows given"
    );
    let payloads = h.outbox_payloads().await;
    // Each announced once, the repeated message id's by the first batch.
    let given: Vec<Vec<u8>> = outbox.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads, given);
}

/// Instantiates each conformance check once per backend.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $check(pool: PgPool) {
                    super::$check(pg(pool).await).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $check(pool: SqlitePool) {
                    super::$check(lite(pool).await).await;
                }
            )*
        }
    };
}

conformance!(
    accepted_events_are_sealed_indexed_and_announced,
    retried_batches_store_nothing_twice,
    a_batch_stored_in_parts_keeps_each_outcome_in_place,
    bad_events_are_rejected_alone_with_the_field_at_fault,
    the_consent_gate_drops_without_a_basis_and_counts,
    consent_changes_invalidate_the_cache,
    events_are_paged_per_identifier_and_purged,
    retention_drops_expired_events,
    stored_rows_read_back_as_written,
);

/// Another batch (a client's retry racing its first try) holds the claim of one message id
/// uncommitted: the batch's claim waits on it, and once it commits the batch reports that
/// event as a duplicate and stores every other one once.
#[sqlx::test(migrations = "../../migrations/postgres")]
async fn postgres_a_claim_racing_another_batch_stores_each_message_once(pool: PgPool) {
    let h = pg(pool.clone()).await;
    let room = h.room(Arc::new(NoRecordedConsent));
    let batch = || -> Vec<v1::Event> {
        (0..40)
            .map(|i| {
                order(
                    &format!("r-{i}"),
                    &format!("r{i}@example.com"),
                    &format!("anon-r{i}"),
                )
            })
            .collect()
    };
    let mut other_batch = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO ingest_message_ids (workspace_id, message_id, event_id, received_at) \
         VALUES ($1, 'r-7', gen_random_uuid(), now())",
    )
    .bind(WS)
    .execute(&mut *other_batch)
    .await
    .unwrap();
    let commit_once_waited_on = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while h
            .count(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE '%ingest_message_ids (%'",
            )
            .await
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the claim never waited on the other batch's"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        other_batch.commit().await.unwrap();
    };
    let (response, ()) = tokio::join!(ingest(&room, batch()), commit_once_waited_on);
    let s = response.summary.unwrap();
    assert_eq!((s.accepted, s.duplicate), (39, 1));
    assert_eq!(outcome(&response.results[7]), v1::EventOutcome::Duplicate);
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_events").await, 39);
    assert_eq!(h.announced().await.len(), 39);
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_message_ids").await, 40);
    // A retry of the whole batch claims nothing and stores nothing more.
    let s = ingest(&room, batch()).await.summary.unwrap();
    assert_eq!((s.accepted, s.duplicate), (0, 40));
    assert_eq!(h.count("SELECT COUNT(*) FROM ingest_events").await, 39);
}
