//! The erasure saga, opt-out, expiry and access bundles against both backends, with fakes of
//! the other rooms that fail on demand and count the effects they apply.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use meridian_consent::ledger::{Actor, Decision, LawfulBasis, Notice};
use meridian_consent::signals::{Choice, Signals};
use meridian_consent::{
    AccessSource, ConsentRoom, ErasurePlan, ErasureSubject, ErasureTarget, Found, IdKind,
    RecordRequest, RequestKind, RequestStatus, SagaSettings, StepError, StepReport, SubjectId,
    SubjectLocator, SubjectQuery, SubmitRequest, verify_receipt,
};
use meridian_policy::PolicyEngine;
use meridian_proto::bus::v1 as bus;
use meridian_store::Store;
use meridian_store::sqlx::{self, PgPool, Row, SqlitePool};
use meridian_vault::{
    BlindIndex, IdentifierKind, KeyRing, KeyStore, PgKeyStore, SqliteKeyStore, Vault, VaultError,
};
use prost::Message as _;

const WS: &str = "acme";

/// The identity room as the saga sees it: knows one profile per subject, with an extra
/// identifier and a vault subject of its own.
struct FakeIdentity {
    profile_vault_subject: String,
}

#[async_trait]
impl SubjectLocator for FakeIdentity {
    async fn locate(&self, _ws: &str, indexes: &[BlindIndex]) -> Result<Found, StepError> {
        assert!(
            !indexes.is_empty(),
            "the locator gets the subject's blind indexes"
        );
        Ok(Found {
            profile_ids: vec!["prof-1".into()],
            blind_indexes: vec![BlindIndex([7; 32])],
            vault_subjects: vec![self.profile_vault_subject.clone()],
        })
    }
}

/// A room's target: fails the first `fail_first` calls (like a destination answering 503),
/// or applies its effect and then reports a failure once (a crash after the effect).
#[derive(Default)]
struct FakeTarget {
    name: &'static str,
    fail_first: u32,
    fail_after_effect_once: bool,
    calls: AtomicU32,
    /// Profiles whose removal took effect, in order (a second removal has no effect).
    removed: Mutex<Vec<String>>,
    saw: Mutex<Option<ErasureSubject>>,
}

#[async_trait]
impl ErasureTarget for FakeTarget {
    fn name(&self) -> &str {
        self.name
    }
    async fn erase(&self, _ws: &str, subject: &ErasureSubject) -> Result<StepReport, StepError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        *self.saw.lock().unwrap() = Some(subject.clone());
        if call <= self.fail_first {
            return Err(StepError::new("destination answered 503"));
        }
        let mut removed = self.removed.lock().unwrap();
        let mut newly = 0;
        for p in &subject.profile_ids {
            if !removed.contains(p) {
                removed.push(p.clone());
                newly += 1;
            }
        }
        if self.fail_after_effect_once && call == self.fail_first + 1 {
            return Err(StepError::new("connection reset after the call"));
        }
        Ok(StepReport::counts(serde_json::json!({ "removed": newly })))
    }
}

struct FakeSection(&'static str);

#[async_trait]
impl AccessSource for FakeSection {
    fn section(&self) -> &str {
        self.0
    }
    async fn collect(&self, _ws: &str, s: &ErasureSubject) -> Result<serde_json::Value, StepError> {
        Ok(serde_json::json!({ "profiles": s.profile_ids, "identifiers": s.blind_indexes.len() }))
    }
}

struct Harness {
    room: ConsentRoom,
    vault: Arc<Vault>,
    store: Store,
    destinations: Arc<FakeTarget>,
    events: Arc<FakeTarget>,
    profile_vault_subject: String,
}

impl Harness {
    async fn new(store: Store, destinations: FakeTarget) -> Self {
        let keys: Arc<dyn KeyStore> = match &store {
            Store::Postgres(p) => Arc::new(PgKeyStore::new(p.clone())),
            Store::Sqlite(p) => Arc::new(SqliteKeyStore::new(p.clone())),
        };
        let vault = Arc::new(Vault::new(Arc::new(KeyRing::generate(1).unwrap()), keys));
        let destinations = Arc::new(destinations);
        let events = Arc::new(FakeTarget {
            name: "purge_events",
            ..FakeTarget::default()
        });
        let profile_vault_subject = uuid::Uuid::new_v4().to_string();
        let plan = ErasurePlan {
            locator: Some(Arc::new(FakeIdentity {
                profile_vault_subject: profile_vault_subject.clone(),
            })),
            targets: vec![destinations.clone(), events.clone()],
            shredder: None,
        };
        let settings = SagaSettings {
            backoff_base: Duration::ZERO,
            backoff_max: Duration::ZERO,
            ..SagaSettings::default()
        };
        let room = ConsentRoom::new(
            store.clone(),
            vault.clone(),
            Arc::new(PolicyEngine::builtin().unwrap()),
        )
        .with_erasure_plan(plan, settings)
        .with_access_sources(vec![
            Arc::new(FakeSection("profile")),
            Arc::new(FakeSection("identifiers")),
        ]);
        let h = Harness {
            room,
            vault,
            store,
            destinations,
            events,
            profile_vault_subject,
        };
        h.exec("INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ('acme', 'eu', 'Europe/Paris')")
            .await;
        h
    }

    async fn exec(&self, sql: &str) {
        match &self.store {
            Store::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
            Store::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(drop),
        }
        .unwrap();
    }

    async fn count(&self, sql: &str) -> i64 {
        match &self.store {
            Store::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }

    /// Payloads of the outbox events of a family, oldest first.
    async fn outbox(&self, family: &str) -> Vec<Vec<u8>> {
        let sql =
            "SELECT payload FROM outbox_events WHERE family = $1 ORDER BY occurred_at, event_id";
        match &self.store {
            Store::Postgres(p) => sqlx::query(sql)
                .bind(family)
                .fetch_all(p)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
            Store::Sqlite(p) => sqlx::query(sql)
                .bind(family)
                .fetch_all(p)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
        }
    }

    /// Runs due sagas until the request completes (bounded: every retry is due at once).
    async fn drive_to_completion(&self, request_id: &str) -> usize {
        for rounds in 1..=50 {
            self.room.run_due_sagas().await.unwrap();
            let r = self.room.get_request(WS, request_id).await.unwrap();
            if r.status == RequestStatus::Completed {
                return rounds;
            }
        }
        panic!("the saga did not complete in 50 rounds");
    }
}

fn shopper() -> SubjectQuery {
    SubjectQuery {
        identifiers: vec![
            SubjectId {
                kind: IdKind::Email,
                value: "Ana.Lima@Example.com".into(),
                default_region: None,
            },
            SubjectId {
                kind: IdKind::Phone,
                value: "+33 6 12 34 56 78".into(),
                default_region: None,
            },
            SubjectId {
                kind: IdKind::Scoped("storefront.shopify".into()),
                value: "7001".into(),
                default_region: None,
            },
        ],
    }
}

fn consent(subject: SubjectQuery, purpose: &str, decision: Decision) -> RecordRequest {
    RecordRequest {
        subject,
        jurisdiction: "EU-FR".into(),
        signals: Signals {
            choices: vec![Choice {
                purpose: purpose.into(),
                decision,
                lawful_basis: LawfulBasis::Consent,
            }],
            ..Signals::default()
        },
        notice: Notice::default(),
        collection_point: "checkout".into(),
        actor: Actor::Subject,
        time_zone: Some(chrono_tz::Europe::Paris),
        collected_at: None,
        idempotency_key: None,
    }
}

fn erasure() -> SubmitRequest {
    SubmitRequest {
        kind: RequestKind::Erasure,
        subject: shopper(),
        jurisdiction: "EU-FR".into(),
        corrections: None,
        idempotency_key: None,
    }
}

async fn the_saga_erases_everywhere_and_signs_a_receipt(h: Harness) {
    h.room
        .record(
            WS,
            consent(
                shopper(),
                "marketing.advertising.third_party.targeted",
                Decision::Given,
            ),
        )
        .await
        .unwrap();
    let subject = h
        .room
        .resolve_subject(WS, &shopper(), false)
        .await
        .unwrap()
        .unwrap();
    let sealed_profile = h
        .vault
        .seal(
            WS,
            &h.profile_vault_subject,
            "rec",
            "traits",
            b"{\"name\":\"Ana\"}",
        )
        .await
        .unwrap();
    let sealed_ref = h
        .vault
        .seal(WS, &subject.subject_id, "rec", "x", b"Ana")
        .await
        .unwrap();
    // what ingest seals an event under: the vault subject of the event's identifier
    let email_index = h
        .vault
        .blind_indexer(WS)
        .await
        .unwrap()
        .index(IdentifierKind::Email, "ana.lima@example.com", None)
        .unwrap();
    let event_subject = h
        .vault
        .identifier_subjects(WS, &[email_index])
        .await
        .unwrap()
        .remove(0);
    let sealed_event = h
        .vault
        .seal(
            WS,
            &event_subject,
            "evt-1",
            "properties",
            b"{\"city\":\"Lyon\"}",
        )
        .await
        .unwrap();

    let submitted = h
        .room
        .submit_request(WS, erasure(), Utc::now())
        .await
        .unwrap();
    assert_eq!(submitted.status, RequestStatus::InProgress);
    let names: Vec<&str> = submitted.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "record_in_ledger",
            "locate_subject",
            "remove_from_destinations",
            "purge_events",
            "unlink_consent_subject",
            "crypto_shred"
        ]
    );
    assert!(submitted.receipt.is_none());

    h.drive_to_completion(&submitted.request_id).await;
    let done = h.room.get_request(WS, &submitted.request_id).await.unwrap();
    assert!(
        done.steps
            .iter()
            .all(|s| s.finished_at.is_some() && s.attempts == 1),
        "{:?}",
        done.steps
    );
    // the targets saw what the locator found plus the consent room's identifiers
    let saw = h.destinations.saw.lock().unwrap().clone().unwrap();
    assert_eq!(saw.profile_ids, ["prof-1"]);
    assert_eq!(
        saw.blind_indexes.len(),
        4,
        "3 identifiers known to consent + 1 found"
    );
    assert_eq!(*h.destinations.removed.lock().unwrap(), ["prof-1"]);
    assert_eq!(h.events.calls.load(Ordering::SeqCst), 1);

    // the receipt lists every step and verifies with the published key
    let (json, signature) = done.receipt.clone().unwrap();
    let public = meridian_consent::public_key_b64(&h.vault.signing_public_key(WS).await.unwrap());
    assert!(verify_receipt(&json, &signature, &public));
    assert!(!verify_receipt(
        &json.replace("crypto_shred", "crypto_shrex"),
        &signature,
        &public
    ));
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let steps: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, names);
    assert!(
        doc["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| !s["finished_at"].as_str().unwrap().is_empty())
    );
    assert!(!json.contains("prof-1") && !json.to_lowercase().contains("ana"));

    // keys are gone: sealed data cannot be opened
    let e = h
        .vault
        .open(
            WS,
            &h.profile_vault_subject,
            "rec",
            "traits",
            &sealed_profile,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::SubjectForgotten), "{e}");
    let e = h
        .vault
        .open(WS, &subject.subject_id, "rec", "x", &sealed_ref)
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::SubjectForgotten), "{e}");
    let e = h
        .vault
        .open(WS, &event_subject, "evt-1", "properties", &sealed_event)
        .await
        .unwrap_err();
    assert!(matches!(e, VaultError::SubjectForgotten), "{e}");
    // no consent-room row names the subject any more; the ledger keeps its proof
    assert_eq!(h.count("SELECT COUNT(*) FROM consent_subjects").await, 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM consent_state").await, 0);
    assert_eq!(
        h.count("SELECT COUNT(*) FROM erasure_sagas WHERE subject IS NOT NULL")
            .await,
        0
    );
    assert!(
        h.room
            .resolve_subject(WS, &shopper(), false)
            .await
            .unwrap()
            .is_none()
    );
    let report = h.room.verify(WS).await.unwrap();
    assert!(report.valid, "{report:?}");
    let entries = h.room.store().scan(WS, 0, 100).await.unwrap();
    assert!(entries.len() >= 2);
    assert!(
        entries[1..]
            .iter()
            .all(|e| e.body.contains("\"withdrawn\"") && e.subject_ref == subject.subject_ref)
    );

    // ConsentChanged went out with both appends (the erasure's with the subject's blind
    // indexes), and left the outbox when the subject was unlinked: no copy names it now.
    // SubjectErased went out with the shredding, without blind indexes.
    assert!(h.outbox("consent").await.is_empty());
    let erased: Vec<bus::SubjectErased> = h
        .outbox("erasure")
        .await
        .iter()
        .map(|p| bus::SubjectErased::decode(p.as_slice()).unwrap())
        .collect();
    assert_eq!(erased.len(), 1);
    assert_eq!(erased[0].profile_ids, ["prof-1"]);
    assert_eq!(erased[0].vault_subjects.len(), 2);

    // a second run finds nothing to do
    assert_eq!(h.room.run_due_sagas().await.unwrap(), 0);
}

async fn a_failing_destination_is_retried_until_it_recovers(h: Harness) {
    let id = h
        .room
        .submit_request(WS, erasure(), Utc::now())
        .await
        .unwrap()
        .request_id;
    // one round: the destination fails; the step shows attempts and the error
    h.room.run_due_sagas().await.unwrap();
    let r = h.room.get_request(WS, &id).await.unwrap();
    let step = r
        .steps
        .iter()
        .find(|s| s.name == "remove_from_destinations")
        .unwrap();
    assert_eq!(step.attempts, 1);
    assert_eq!(step.last_error, "destination answered 503");
    assert!(step.finished_at.is_none());
    assert_eq!(r.status, RequestStatus::InProgress);
    // nothing after it ran: crypto-shredding stays last
    let shred = r.steps.iter().find(|s| s.name == "crypto_shred").unwrap();
    assert_eq!(shred.attempts, 0);

    h.drive_to_completion(&id).await;
    let r = h.room.get_request(WS, &id).await.unwrap();
    let step = r
        .steps
        .iter()
        .find(|s| s.name == "remove_from_destinations")
        .unwrap();
    assert_eq!(step.attempts, 4, "three 503s, then success");
    assert!(step.last_error.is_empty());
    assert_eq!(*h.destinations.removed.lock().unwrap(), ["prof-1"]);
}

async fn a_step_cut_short_runs_again_without_a_second_effect(h: Harness) {
    let id = h
        .room
        .submit_request(WS, erasure(), Utc::now())
        .await
        .unwrap()
        .request_id;
    // A worker takes the lease and dies (its lease has run out by the time we look).
    let now = Utc::now().timestamp_micros();
    let dead = h
        .room
        .saga_store()
        .claim_due(now, now - 1, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    h.drive_to_completion(&id).await;
    // the dead worker's late writes are refused
    assert!(
        !h.room
            .saga_store()
            .begin_step(&dead[0], 0, now + 1_000_000, now)
            .await
            .unwrap()
    );
    let r = h.room.get_request(WS, &id).await.unwrap();
    let step = r
        .steps
        .iter()
        .find(|s| s.name == "remove_from_destinations")
        .unwrap();
    assert_eq!(
        step.attempts, 2,
        "the first attempt's effect happened, its success was not recorded"
    );
    assert_eq!(
        *h.destinations.removed.lock().unwrap(),
        ["prof-1"],
        "removed once in effect"
    );
    assert_eq!(h.outbox("erasure").await.len(), 1);
    // the ledger entry of the erasure was appended once, whatever the retries
    let withdrawn = h.room.store().scan(WS, 0, 100).await.unwrap();
    assert!(withdrawn.iter().all(|e| e.body.contains("erasure request")));
    assert_eq!(
        withdrawn.iter().filter(|e| e.signature.is_some()).count(),
        1,
        "one append"
    );
    let again = h
        .room
        .submit_request(
            WS,
            SubmitRequest {
                idempotency_key: Some("k".into()),
                ..erasure()
            },
            Utc::now(),
        )
        .await;
    // the subject is gone: a new request for the same identifiers is a new subject
    assert!(again.is_ok());
}

async fn opt_out_publishes_a_restricting_consent_change(h: Harness) {
    h.room
        .record(WS, consent(shopper(), "analytics", Decision::Given))
        .await
        .unwrap();
    let r = h
        .room
        .submit_request(
            WS,
            SubmitRequest {
                kind: RequestKind::OptOutSaleSharing,
                jurisdiction: "US-CA".into(),
                ..erasure()
            },
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, RequestStatus::Completed);
    let changes: Vec<bus::ConsentChanged> = h
        .outbox("consent")
        .await
        .iter()
        .map(|p| bus::ConsentChanged::decode(p.as_slice()).unwrap())
        .collect();
    assert_eq!(changes.len(), 2);
    let opt_out = &changes[1];
    assert!(opt_out.restricted);
    assert_eq!(
        opt_out.blind_indexes.len(),
        3,
        "every identifier linked to the subject"
    );
    assert!(
        opt_out
            .purposes
            .iter()
            .any(|p| p.starts_with("marketing.advertising"))
    );
    // nothing else was erased
    assert_eq!(h.count("SELECT COUNT(*) FROM consent_subjects").await, 3);
    assert_eq!(h.destinations.calls.load(Ordering::SeqCst), 0);
}

async fn lapsed_consent_becomes_expired_entries(h: Harness) {
    let long_ago = Utc.with_ymd_and_hms(2020, 1, 15, 10, 0, 0).unwrap();
    let mut req = consent(shopper(), "analytics", Decision::Given);
    req.collected_at = Some(long_ago);
    h.room.record(WS, req).await.unwrap();
    let mut fresh = consent(shopper(), "functional", Decision::Given);
    fresh.collected_at = None;
    h.room.record(WS, fresh).await.unwrap();

    let sweep = h.room.expire_lapsed(Utc::now(), 100).await.unwrap();
    assert_eq!((sweep.entries, sweep.subjects), (1, 1));
    // again: nothing more
    assert_eq!(
        h.room.expire_lapsed(Utc::now(), 100).await.unwrap().entries,
        0
    );
    let history = h.room.history(WS, &shopper(), 10, "").await.unwrap();
    let expired: Vec<_> = history
        .entries
        .iter()
        .filter(|e| e.body.purposes[0].decision == Decision::Expired)
        .collect();
    assert_eq!(expired.len(), 1);
    let e = expired[0];
    assert_eq!(e.body.purposes[0].purpose, "analytics");
    assert_eq!(e.body.actor, Actor::Controller);
    // recorded at the instant it lapsed (the regime's validity, in the subject's zone)
    let lapsed = h
        .room
        .expiry("EU-FR", Decision::Given, long_ago, chrono_tz::Europe::Paris)
        .unwrap();
    assert!(lapsed > Utc.with_ymd_and_hms(2021, 1, 1, 0, 0, 0).unwrap());
    assert_eq!(e.stored.recorded_at_utc(), lapsed);
    let now = h
        .room
        .current(WS, &shopper(), &[], Utc::now())
        .await
        .unwrap();
    let analytics = now.iter().find(|s| s.purpose == "analytics").unwrap();
    assert_eq!(analytics.decision, Decision::Expired);
    assert_eq!(
        now.iter()
            .find(|s| s.purpose == "functional")
            .unwrap()
            .decision,
        Decision::Given
    );
    let changes = h.outbox("consent").await;
    let last = bus::ConsentChanged::decode(changes.last().unwrap().as_slice()).unwrap();
    assert!(last.restricted);
    assert_eq!(last.purposes, ["analytics"]);
    assert!(h.room.verify(WS).await.unwrap().valid);
}

async fn access_bundles_gather_every_section(h: Harness) {
    h.room
        .record(WS, consent(shopper(), "analytics", Decision::Given))
        .await
        .unwrap();
    let r = h
        .room
        .submit_request(
            WS,
            SubmitRequest {
                kind: RequestKind::Access,
                ..erasure()
            },
            Utc::now(),
        )
        .await
        .unwrap();
    let bundle = r.access_bundle.unwrap();
    assert_eq!(bundle["profile"]["profiles"], serde_json::json!(["prof-1"]));
    assert_eq!(bundle["identifiers"]["identifiers"], 4);
    assert_eq!(bundle["consents"]["current"][0]["purpose"], "analytics");
    // events, memberships and destinations have no source here: named, not faked
    assert_eq!(bundle["complete"], false);
    let unavailable: BTreeSet<&str> = bundle["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        unavailable,
        BTreeSet::from(["events", "audience_memberships", "destinations"])
    );
    assert_eq!(r.status, RequestStatus::Received);
    let steps: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert!(steps.contains(&"collect_profile") && steps.contains(&"collect_events"));
}

async fn deadlines_are_watched(h: Harness) {
    let now = Utc::now();
    h.room.submit_request(WS, erasure(), now).await.unwrap();
    let w = h
        .room
        .watch_deadlines(now, chrono::Duration::days(7))
        .await
        .unwrap();
    assert_eq!((w.open, w.nearing, w.overdue), (1, 0, 0));
    let w = h
        .room
        .watch_deadlines(now + chrono::Duration::days(28), chrono::Duration::days(7))
        .await
        .unwrap();
    assert_eq!((w.open, w.nearing, w.overdue), (1, 1, 0));
    let w = h
        .room
        .watch_deadlines(now + chrono::Duration::days(40), chrono::Duration::days(7))
        .await
        .unwrap();
    assert_eq!((w.open, w.nearing, w.overdue), (1, 0, 1));
}

fn destinations() -> FakeTarget {
    FakeTarget {
        name: "remove_from_destinations",
        ..FakeTarget::default()
    }
}

macro_rules! both_backends {
    ($($check:ident => $target:expr),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $check(pool: PgPool) {
                    super::$check(Harness::new(Store::Postgres(pool), $target).await).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $check(pool: SqlitePool) {
                    super::$check(Harness::new(Store::Sqlite(pool), $target).await).await;
                }
            )*
        }
    };
}

both_backends!(
    the_saga_erases_everywhere_and_signs_a_receipt => destinations(),
    a_failing_destination_is_retried_until_it_recovers => FakeTarget { fail_first: 3, ..destinations() },
    a_step_cut_short_runs_again_without_a_second_effect => FakeTarget { fail_after_effect_once: true, ..destinations() },
    opt_out_publishes_a_restricting_consent_change => destinations(),
    lapsed_consent_becomes_expired_entries => destinations(),
    access_bundles_gather_every_section => destinations(),
    deadlines_are_watched => destinations(),
);
