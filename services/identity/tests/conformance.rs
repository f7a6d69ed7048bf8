//! The identity-store conformance suite: the same checks, through [`IdentityRoom`] and the
//! gRPC handlers, against PostgreSQL (a fresh database per test) and SQLite.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use chrono::{DateTime, Utc};
use meridian_identity::{
    IdentifierObservation, IdentifierType, IdentityError, IdentityRoom, IdentityStore, LinkRule,
    MergeTree, RawIdentifier, Rules, StoreIdentity,
};
use meridian_proto::v1;
use meridian_proto::v1::identity_service_server::IdentityService;
use meridian_store::sqlx::{self, PgPool, SqlitePool};
use meridian_vault::testing::{TableDump, dump_postgres, dump_sqlite, find_plaintext};
use meridian_vault::{KeyRing, PgKeyStore, SqliteKeyStore, Vault};

const WS: &str = "acme";

struct Harness {
    room: IdentityRoom,
    store: Arc<dyn IdentityStore>,
    vault: Arc<Vault>,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Harness {
    async fn dump(&self) -> TableDump {
        match &self.backend {
            Backend::Postgres(p) => dump_postgres(p).await.unwrap(),
            Backend::Sqlite(p) => dump_sqlite(p).await.unwrap(),
        }
    }

    /// A second room over the same store and vault, with a cold graph cache.
    fn fresh_room(&self) -> IdentityRoom {
        IdentityRoom::new(
            self.store.clone(),
            self.vault.clone(),
            Rules::default().validate().unwrap(),
        )
    }

    async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        match &self.backend {
            Backend::Postgres(p) => sqlx::query_scalar(&sql).fetch_one(p).await.unwrap(),
            Backend::Sqlite(p) => sqlx::query_scalar(&sql).fetch_one(p).await.unwrap(),
        }
    }
}

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600 + s, 0).unwrap()
}

fn id(kind: IdentifierType, value: &str) -> RawIdentifier {
    RawIdentifier::new(kind, value)
}

fn obs(event: &str, s: i64, ids: Vec<RawIdentifier>) -> IdentifierObservation {
    IdentifierObservation {
        event_id: event.into(),
        at: t(s),
        rule: LinkRule::SameEvent,
        identifiers: ids,
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

fn email(v: &str) -> RawIdentifier {
    id(IdentifierType::Email, v)
}
fn anon(v: &str) -> RawIdentifier {
    id(IdentifierType::AnonymousId, v)
}
fn user(v: &str) -> RawIdentifier {
    id(IdentifierType::UserId, v)
}

async fn identifiers_rest_as_blind_indexes_and_open_for_display(h: Harness) {
    let report = h
        .room
        .ingest(
            WS,
            &[
                obs(
                    "evt-1",
                    0,
                    vec![anon("anon-7f3c9e51"), email("Ana.Lima7731@Example.com")],
                ),
                obs(
                    "evt-2",
                    5,
                    vec![
                        user("user-b71d2a90"),
                        anon("anon-7f3c9e51"),
                        id(IdentifierType::StorefrontCustomerId, "shopify:88123401"),
                        id(IdentifierType::Phone, "06 12 34 56 78"),
                    ],
                ),
            ],
        )
        .await
        .unwrap();
    // The phone has no region: invalid, dropped and counted.
    assert_eq!(report.invalid, 1);
    assert_eq!(report.links, 3);
    let view = h
        .room
        .lookup(WS, &email(" ana.lima7731@EXAMPLE.com"))
        .await
        .unwrap();
    let mut values: Vec<(IdentifierType, String)> = view
        .identifiers
        .iter()
        .map(|i| (i.key.kind, i.value.to_string()))
        .collect();
    values.sort();
    assert_eq!(
        values,
        vec![
            (IdentifierType::AnonymousId, "anon-7f3c9e51".into()),
            (IdentifierType::UserId, "user-b71d2a90".into()),
            (IdentifierType::Email, "ana.lima7731@example.com".into()),
            (
                IdentifierType::StorefrontCustomerId,
                "shopify:88123401".into()
            ),
        ]
    );
    let shop = view
        .identifiers
        .iter()
        .find(|i| i.key.kind == IdentifierType::StorefrontCustomerId)
        .unwrap();
    assert_eq!(shop.source, "shopify");
    // Nothing of the plaintext rests in any table.
    let dump = h.dump().await;
    assert_eq!(dump.rows_in("identity_identifiers"), Some(4));
    let found = find_plaintext(
        &dump.text,
        ["anon-7f3c9e51", "ana.lima7731", "user-b71d2a90", "88123401"],
    );
    assert!(found.is_empty(), "plaintext at rest: {found:?}");
    // The gRPC lookup answers the same profile; an unknown identifier is NOT_FOUND.
    let got = h
        .room
        .lookup_profile(request(v1::LookupProfileRequest {
            workspace_id: String::new(),
            identifier: Some(v1::Identifier {
                r#type: v1::IdentifierType::UserId as i32,
                value: "user-b71d2a90".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(got.profile_id, view.profile.profile.to_string());
    assert_eq!(got.identifiers.len(), 4);
    let err = h
        .room
        .lookup_profile(request(v1::LookupProfileRequest {
            workspace_id: String::new(),
            identifier: Some(v1::Identifier {
                r#type: v1::IdentifierType::Email as i32,
                value: "nobody@example.com".into(),
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = h
        .room
        .lookup_profile(request(v1::LookupProfileRequest {
            workspace_id: String::new(),
            identifier: Some(v1::Identifier::default()),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = h
        .room
        .get_profile(request(v1::GetProfileRequest {
            workspace_id: "other".into(),
            profile_id: got.profile_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

async fn merge_protection_conflicts_are_stored_and_explained(h: Harness) {
    h.room
        .ingest(
            WS,
            &[
                obs("a", 0, vec![user("user-1"), email("one@example.com")]),
                obs("b", 1, vec![user("user-2"), email("two@example.com")]),
                obs(
                    "c",
                    2,
                    vec![email("one@example.com"), email("two@example.com")],
                ),
            ],
        )
        .await
        .unwrap();
    let one = h.room.lookup(WS, &email("one@example.com")).await.unwrap();
    let two = h.room.lookup(WS, &email("two@example.com")).await.unwrap();
    assert_ne!(one.profile.profile, two.profile.profile);
    let res = h
        .room
        .explain_profile(request(v1::ExplainProfileRequest {
            workspace_id: WS.into(),
            profile_id: one.profile.profile.to_string(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.conflicts.len(), 1);
    let c = &res.conflicts[0];
    assert_eq!(c.message_id, "c");
    assert!(c.reason.starts_with("different_user_ids"), "{}", c.reason);
    assert_eq!(c.from.as_ref().unwrap().value, "one@example.com");
    // The other profile's identifier is named by type only.
    let to = c.to.as_ref().unwrap();
    assert_eq!(to.r#type, v1::IdentifierType::Email as i32);
    assert!(to.value.is_empty());
    // The other profile sees the same refusal.
    let ex = h.room.explain(WS, two.profile.profile).await.unwrap();
    assert_eq!(ex.conflicts.len(), 1);
}

async fn explain_returns_the_merge_tree_with_a_reason_per_edge(h: Harness) {
    h.room
        .ingest(
            WS,
            &[
                obs("e1", 0, vec![anon("a1"), email("ana@example.com")]),
                obs(
                    "e2",
                    1,
                    vec![
                        anon("a2"),
                        id(IdentifierType::Gaid, "6f1c2a2e-0000-4000-8000-000000000001"),
                    ],
                ),
            ],
        )
        .await
        .unwrap();
    h.room
        .ingest(
            WS,
            &[obs("e3", 2, vec![email("ana@example.com"), anon("a2")])],
        )
        .await
        .unwrap();
    let view = h.room.lookup(WS, &anon("a1")).await.unwrap();
    let ex = h.room.explain(WS, view.profile.profile).await.unwrap();
    assert_eq!(ex.edges.len(), 3);
    assert_eq!(ex.trees.len(), 1);
    assert_eq!(ex.trees[0].joins(), 3);
    let MergeTree::Join { edge, .. } = &ex.trees[0] else {
        panic!("root is a join")
    };
    assert_eq!(edge.event_id, "e3");
    let res = meridian_identity::grpc::explain_response(&ex);
    assert_eq!(res.profile_id, view.profile.profile.to_string());
    assert_eq!(res.edges.len(), 3);
    for e in &res.edges {
        assert_eq!(e.rule, "same_event");
        assert!(e.reason.contains(&e.message_id), "{}", e.reason);
        assert!(e.linked_at.is_some());
        assert!(!e.from.as_ref().unwrap().value.is_empty());
    }
    let Some(v1::merge_tree::Node::Join(root)) = res.tree.unwrap().node else {
        panic!("root is a join")
    };
    assert_eq!(root.edge.unwrap().message_id, "e3");
    // GetProfile with a malformed id is INVALID_ARGUMENT naming the field.
    let err = h
        .room
        .get_profile(request(v1::GetProfileRequest {
            workspace_id: String::new(),
            profile_id: "not-a-uuid".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("profile_id"));
}

async fn removing_the_only_bridge_splits_the_stored_profile(h: Harness) {
    h.room
        .ingest(
            WS,
            &[
                obs("1", 0, vec![anon("a1"), email("bridge@example.com")]),
                obs("2", 1, vec![email("bridge@example.com"), anon("a2")]),
                obs(
                    "3",
                    2,
                    vec![anon("a2"), id(IdentifierType::DeviceId, "dev-1")],
                ),
            ],
        )
        .await
        .unwrap();
    let before = h.room.lookup(WS, &anon("a1")).await.unwrap();
    assert_eq!(before.identifiers.len(), 4);
    let parts = h
        .room
        .remove_identifier(WS, &email("bridge@example.com"), t(10))
        .await
        .unwrap();
    assert_eq!(parts.len(), 2);
    let a1 = h.room.lookup(WS, &anon("a1")).await.unwrap();
    let a2 = h.room.lookup(WS, &anon("a2")).await.unwrap();
    assert_eq!(a1.profile.profile, before.profile.profile);
    assert_ne!(a2.profile.profile, a1.profile.profile);
    assert_eq!(a2.identifiers.len(), 2);
    assert!(matches!(
        h.room.lookup(WS, &email("bridge@example.com")).await,
        Err(IdentityError::ProfileNotFound)
    ));
    assert_eq!(h.count("identity_edges").await, 1);
    assert_eq!(h.count("identity_identifiers").await, 3);
    // A cold room sees the same split graph and continues the edge sequence.
    let cold = h.fresh_room();
    cold.ingest(WS, &[obs("4", 20, vec![anon("a1"), anon("a2")])])
        .await
        .unwrap();
    let joined = cold.lookup(WS, &anon("a2")).await.unwrap();
    assert_eq!(joined.identifiers.len(), 3);
    assert_eq!(h.count("identity_edges").await, 2);
}

async fn merged_profile_ids_resolve_to_the_survivor(h: Harness) {
    h.room
        .ingest(WS, &[obs("1", 0, vec![anon("a1"), email("m@example.com")])])
        .await
        .unwrap();
    h.room
        .ingest(
            WS,
            &[obs(
                "2",
                1,
                vec![anon("a2"), id(IdentifierType::Fbclid, "IwAR0abc")],
            )],
        )
        .await
        .unwrap();
    let p1 = h
        .room
        .lookup(WS, &anon("a1"))
        .await
        .unwrap()
        .profile
        .profile;
    let p2 = h
        .room
        .lookup(WS, &anon("a2"))
        .await
        .unwrap()
        .profile
        .profile;
    assert_ne!(p1, p2);
    h.room
        .ingest(WS, &[obs("3", 2, vec![email("m@example.com"), anon("a2")])])
        .await
        .unwrap();
    let a = h.room.profile(WS, p1).await.unwrap();
    let b = h.room.profile(WS, p2).await.unwrap();
    assert_eq!(a.profile.profile, b.profile.profile);
    assert_eq!(a.identifiers.len(), 4);
    let got = h
        .room
        .get_profile(request(v1::GetProfileRequest {
            workspace_id: String::new(),
            profile_id: p1.to_string(),
        }))
        .await
        .unwrap()
        .into_inner()
        .profile
        .unwrap();
    assert_eq!(got.profile_id, a.profile.profile.to_string());
    assert_eq!(got.identifiers.len(), 4);
}

async fn blocked_values_and_limits_are_recorded_not_linked(h: Harness) {
    let mut events = vec![obs(
        "junk",
        0,
        vec![
            anon("a1"),
            email("TEST@test.com"),
            id(IdentifierType::Idfa, "00000000-0000-0000-0000-000000000000"),
        ],
    )];
    for i in 0..6 {
        events.push(obs(
            &format!("e{i}"),
            1 + i,
            vec![anon("a1"), email(&format!("e{i}@example.com"))],
        ));
    }
    let report = h.room.ingest(WS, &events).await.unwrap();
    assert_eq!(report.conflicts, 3);
    assert!(matches!(
        h.room.lookup(WS, &email("test@test.com")).await,
        Err(IdentityError::ProfileNotFound)
    ));
    let view = h.room.lookup(WS, &anon("a1")).await.unwrap();
    assert_eq!(
        view.identifiers.len(),
        6,
        "one anonymous id and five emails"
    );
    let ex = h.room.explain(WS, view.profile.profile).await.unwrap();
    let reasons: Vec<String> = ex.conflicts.iter().map(|c| c.reason.to_stored()).collect();
    assert_eq!(
        reasons,
        vec!["blocked_value", "blocked_value", "limit_exceeded:email"]
    );
}

async fn shared_devices_are_detached_in_the_store(h: Harness) {
    let tablet = || id(IdentifierType::Gaid, "a1b2c3d4-0000-4000-8000-00000000beef");
    h.room
        .ingest(WS, &[obs("1", 0, vec![user("mum"), tablet()])])
        .await
        .unwrap();
    assert_eq!(
        h.room
            .lookup(WS, &user("mum"))
            .await
            .unwrap()
            .identifiers
            .len(),
        2
    );
    h.room
        .ingest(WS, &[obs("2", 1, vec![user("kid"), tablet()])])
        .await
        .unwrap();
    let mum = h.room.lookup(WS, &user("mum")).await.unwrap();
    assert_eq!(mum.identifiers.len(), 1);
    let tab = h.room.lookup(WS, &tablet()).await.unwrap();
    assert_eq!(tab.identifiers.len(), 1);
    // A cold room keeps the tablet shared: it never links again.
    let cold = h.fresh_room();
    cold.ingest(WS, &[obs("3", 2, vec![email("kid@example.com"), tablet()])])
        .await
        .unwrap();
    assert_eq!(
        cold.lookup(WS, &tablet()).await.unwrap().identifiers.len(),
        1
    );
}

async fn two_replicas_writing_one_workspace_stay_consistent(h: Harness) {
    let other = h.fresh_room();
    h.room
        .ingest(
            WS,
            &[obs("r1", 1, vec![anon("anon-r1"), email("r1@example.com")])],
        )
        .await
        .unwrap();
    // The other replica loads the graph and links a user id to the email.
    other
        .ingest(
            WS,
            &[obs("r2", 2, vec![email("r1@example.com"), user("user-r1")])],
        )
        .await
        .unwrap();
    // The first replica's cached graph is behind: its write reloads, then links on top.
    h.room
        .ingest(WS, &[obs("r3", 3, vec![user("user-r1"), anon("anon-r3")])])
        .await
        .unwrap();
    let p = h.room.lookup(WS, &anon("anon-r3")).await.unwrap();
    assert_eq!(p.identifiers.len(), 4);
    assert_eq!(
        other
            .lookup(WS, &anon("anon-r1"))
            .await
            .unwrap()
            .profile
            .profile,
        p.profile.profile
    );
    assert_eq!(h.count("identity_edges").await, 3);
    assert_eq!(h.count("identity_identifiers").await, 4);
    // A pipelined bulk load on a stale replica is refused rather than applied on a stale
    // graph; the next write reloads and succeeds.
    other
        .ingest(WS, &[obs("r4", 4, vec![anon("anon-r4")])])
        .await
        .unwrap();
    let batch = [obs("r5", 5, vec![anon("anon-r4"), user("user-r1")])];
    assert!(matches!(
        h.room.ingest_pipelined(WS, &[&batch[..]]).await,
        Err(IdentityError::StaleGraph)
    ));
    h.room.ingest_pipelined(WS, &[&batch[..]]).await.unwrap();
    assert_eq!(
        h.room
            .lookup(WS, &anon("anon-r4"))
            .await
            .unwrap()
            .profile
            .profile,
        p.profile.profile
    );
}

async fn pg(pool: PgPool) -> Harness {
    sqlx::query("INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')")
        .bind(WS)
        .execute(&pool)
        .await
        .unwrap();
    let vault = Arc::new(Vault::new(
        Arc::new(KeyRing::generate(1).unwrap()),
        Arc::new(PgKeyStore::new(pool.clone())),
    ));
    let store: Arc<dyn IdentityStore> = Arc::new(StoreIdentity::Postgres(pool.clone()));
    Harness {
        room: IdentityRoom::new(
            store.clone(),
            vault.clone(),
            Rules::default().validate().unwrap(),
        ),
        store,
        vault,
        backend: Backend::Postgres(pool),
    }
}

async fn lite(pool: SqlitePool) -> Harness {
    sqlx::query("INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')")
        .bind(WS)
        .execute(&pool)
        .await
        .unwrap();
    let vault = Arc::new(Vault::new(
        Arc::new(KeyRing::generate(1).unwrap()),
        Arc::new(SqliteKeyStore::new(pool.clone())),
    ));
    let store: Arc<dyn IdentityStore> = Arc::new(StoreIdentity::Sqlite(pool.clone()));
    Harness {
        room: IdentityRoom::new(
            store.clone(),
            vault.clone(),
            Rules::default().validate().unwrap(),
        ),
        store,
        vault,
        backend: Backend::Sqlite(pool),
    }
}

/// A write whose call is dropped half-way (a client cancelling its RPC) leaves nothing
/// behind: its graph pass had run on the cached graph, but the next write starts from
/// what is stored.
async fn a_write_dropped_half_way_leaves_no_trace_in_the_next(h: Harness) {
    // The graph is loaded and the workspace's index key cached: the dropped call gets
    // through its graph pass before it first waits (on the vault, sealing new values).
    h.room
        .ingest(WS, &[obs("w-0", 0, vec![anon("warm-anon")])])
        .await
        .unwrap();
    let dropped = obs(
        "w-1",
        1,
        vec![anon("dropped-anon"), email("shared@example.com")],
    );
    let write = h.room.ingest(WS, std::slice::from_ref(&dropped));
    assert!(
        tokio::time::timeout(std::time::Duration::ZERO, write)
            .await
            .is_err()
    );
    h.room
        .ingest(
            WS,
            &[obs(
                "w-2",
                2,
                vec![email("shared@example.com"), user("kept")],
            )],
        )
        .await
        .unwrap();
    let view = h
        .room
        .lookup(WS, &email("shared@example.com"))
        .await
        .unwrap();
    let values: std::collections::BTreeSet<String> = view
        .identifiers
        .iter()
        .map(|i| i.value.to_string())
        .collect();
    assert_eq!(
        values,
        ["kept", "shared@example.com"].map(String::from).into()
    );
    assert!(h.room.lookup(WS, &anon("dropped-anon")).await.is_err());
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
    identifiers_rest_as_blind_indexes_and_open_for_display,
    merge_protection_conflicts_are_stored_and_explained,
    explain_returns_the_merge_tree_with_a_reason_per_edge,
    removing_the_only_bridge_splits_the_stored_profile,
    merged_profile_ids_resolve_to_the_survivor,
    blocked_values_and_limits_are_recorded_not_linked,
    shared_devices_are_detached_in_the_store,
    two_replicas_writing_one_workspace_stay_consistent,
    a_write_dropped_half_way_leaves_no_trace_in_the_next,
);
