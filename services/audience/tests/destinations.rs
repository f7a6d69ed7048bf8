//! Destinations, syncs and the destination membership ledger, the same on PostgreSQL and
//! SQLite: the store round-trips every row; a sync through the room sends to the Meta fake
//! only the members the policy allows (exclusions counted by rule), a repeated sync sends
//! nothing, a withdrawal takes back exactly the identifiers that were sent, the erasure
//! step removes everywhere and reports the subjects to shred, and nothing sent is stored
//! in clear.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{Duration, Utc};
use meridian_audience::AudienceRoom;
use meridian_audience::connectors::MemberIdentifier;
use meridian_audience::destination::{Credentials, DestinationInput, PlatformKind};
use meridian_audience::error::AudienceError;
use meridian_audience::ledger::{HeldMember, HeldStatus, LedgerEntry, SyncRow, SyncState};
use meridian_audience::profiles::SourceError;
use meridian_audience::segment::parse;
use meridian_audience::store::{AudienceStore, ProfileRow, WriteVia};
use meridian_audience::sync::{
    ConsentLookup, ConsentWithdrawals, DestinationDeps, MemberContact, MemberDirectory,
    PurposeConsent, SubjectConsent,
};
use meridian_destinations::transport::{RetryPolicy, Transport};
use meridian_destinations::{Field, Platform, hash_field};
use meridian_policy::{ConsentState, PolicyEngine};
use meridian_proto::bus::v1::ConsentChanged;
use meridian_store::Store;
use meridian_test_support::platforms::meta::MetaFake;
use meridian_vault::testing::{dump_postgres, dump_sqlite, find_plaintext};
use meridian_vault::{KeyRing, PgKeyStore, SqliteKeyStore, Vault};
use sqlx::{PgPool, SqlitePool};

const WS: &str = "ws_destinations";
const PURPOSE: &str = "marketing.advertising.third_party.targeted";
const TOKEN: &str = "meta-test-token";

// ---- store conformance ------------------------------------------------------------------

async fn store_round_trips(store: AudienceStore, _vault: Arc<Vault>) {
    let policies = PolicyEngine::builtin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meta-token"), "secret\n").unwrap();
    let credentials = Credentials::new(Some(dir.path().to_owned()));
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let mut rows = Vec::new();
    for i in 0..3 {
        let row = meridian_audience::destination::validate(
            DestinationInput {
                name: format!("meta {i}"),
                platform: Some(PlatformKind::Meta),
                region: String::new(),
                transfer_mechanism: "dpf".into(),
                settings: BTreeMap::from([("audience_id".into(), format!("2385000{i}"))]),
                credentials: BTreeMap::from([("access_token".into(), "meta-token".into())]),
                min_audience_size: 0,
            },
            &policies,
            &credentials,
            now,
        )
        .unwrap();
        store.insert_destination(WS, &row).await.unwrap();
        rows.push(row);
    }
    let first = &rows[0];
    assert_eq!(
        first.region, "US",
        "the platform's region from destinations.toml"
    );
    assert_eq!(first.min_audience_size, 100, "Meta's minimum");
    assert_eq!(first.settings["api_version"], "v21.0");
    let got = store
        .destination(WS, &first.destination_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.settings, first.settings);
    assert_eq!(got.credential_names, first.credential_names);
    assert_eq!(got.platform, PlatformKind::Meta);
    assert!(
        store
            .destination("other", &first.destination_id)
            .await
            .unwrap()
            .is_none()
    );
    let page = store.destinations(WS, "", 2).await.unwrap();
    assert_eq!(page.len(), 2);
    let rest = store
        .destinations(WS, &page[1].destination_id, 2)
        .await
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].destination_id, rows[2].destination_id);

    let mut sync = SyncRow {
        sync_id: "sync-1".into(),
        segment_id: "seg".into(),
        destination_id: first.destination_id.clone(),
        state: SyncState::Running,
        members_sent: 0,
        members_removed: 0,
        members_failed: 0,
        excluded: BTreeMap::new(),
        policy_version: "pv".into(),
        started_at: now,
        finished_at: None,
        last_error: String::new(),
    };
    store.put_sync(WS, &sync).await.unwrap();
    sync.state = SyncState::PartiallyFailed;
    sync.members_sent = 7;
    sync.members_failed = 1;
    sync.excluded = BTreeMap::from([("gdpr.art21.objection".into(), 2)]);
    sync.finished_at = Some(now + Duration::seconds(1));
    store.put_sync(WS, &sync).await.unwrap();
    let got = store.sync(WS, "sync-1").await.unwrap().unwrap();
    assert_eq!(got.state, SyncState::PartiallyFailed);
    assert_eq!((got.members_sent, got.members_failed), (7, 1));
    assert_eq!(got.excluded, sync.excluded);
    assert!(got.finished_at.is_some());

    // One running sync per segment × destination; a stale one is taken over.
    let running = |id: &str, started_at| SyncRow {
        sync_id: id.into(),
        segment_id: "seg-2".into(),
        state: SyncState::Running,
        started_at,
        finished_at: None,
        ..sync.clone()
    };
    let cutoff = now - Duration::minutes(30);
    assert!(
        store
            .start_sync(WS, &running("r1", now), cutoff)
            .await
            .unwrap()
    );
    assert!(
        !store
            .start_sync(WS, &running("r2", now), cutoff)
            .await
            .unwrap()
    );
    assert!(store.sync(WS, "r2").await.unwrap().is_none());
    let mut done = store.sync(WS, "r1").await.unwrap().unwrap();
    assert_eq!(done.state, SyncState::Running);
    done.state = SyncState::Succeeded;
    store.put_sync(WS, &done).await.unwrap();
    assert!(
        store
            .start_sync(WS, &running("r3", now), cutoff)
            .await
            .unwrap()
    );
    let later = now + Duration::minutes(31);
    assert!(
        store
            .start_sync(WS, &running("r4", later), later - Duration::minutes(30))
            .await
            .unwrap(),
        "r3 was abandoned"
    );
    let abandoned = store.sync(WS, "r3").await.unwrap().unwrap();
    assert_eq!(
        (abandoned.state, abandoned.last_error.as_str()),
        (SyncState::Failed, "abandoned")
    );

    let mut held = HeldMember {
        destination_id: first.destination_id.clone(),
        segment_id: "seg".into(),
        profile_id: "p1".into(),
        status: HeldStatus::Sent,
        purpose: PURPOSE.into(),
        vault_subject: "p1".into(),
        sealed_identifiers: Some(vec![1, 2, 3, 0, 255]),
        consent_entry_id: "entry-1".into(),
        policy_version: "pv".into(),
        last_sync_id: "sync-1".into(),
        last_error: String::new(),
        sent_at: Some(now),
        removed_at: None,
        updated_at: now,
    };
    let entry = |id: &str, action| LedgerEntry {
        entry_id: id.into(),
        destination_id: first.destination_id.clone(),
        segment_id: "seg".into(),
        profile_id: "p1".into(),
        action,
        cause: "sync".into(),
        sync_id: "sync-1".into(),
        consent_entry_id: "entry-1".into(),
        policy_version: "pv".into(),
        detail: String::new(),
        recorded_at: now,
    };
    store
        .record_member(WS, &held, &entry("l1", HeldStatus::Sent))
        .await
        .unwrap();
    held.status = HeldStatus::Removed;
    held.removed_at = Some(now + Duration::seconds(5));
    held.updated_at = now + Duration::seconds(5);
    let mut removal = entry("l2", HeldStatus::Removed);
    removal.cause = "consent_withdrawn".into();
    removal.recorded_at = now + Duration::seconds(5);
    store.record_member(WS, &held, &removal).await.unwrap();
    let rows = store.held(WS, &first.destination_id, "seg").await.unwrap();
    assert_eq!(rows, vec![held.clone()]);
    assert_eq!(
        store.held_by_profile(WS, "p1").await.unwrap(),
        vec![held.clone()]
    );
    assert!(store.held_by_profile(WS, "p2").await.unwrap().is_empty());
    let ledger = store.ledger_of(WS, "p1").await.unwrap();
    assert_eq!(
        ledger.iter().map(|l| l.action).collect::<Vec<_>>(),
        vec![HeldStatus::Sent, HeldStatus::Removed]
    );
    assert_eq!(ledger[1].cause, "consent_withdrawn");
    // A duplicate ledger id is refused, and the member row stays as it was.
    held.status = HeldStatus::Failed;
    assert!(store.record_member(WS, &held, &removal).await.is_err());
    assert_eq!(
        store.held_by_profile(WS, "p1").await.unwrap()[0].status,
        HeldStatus::Removed
    );
}

async fn destinations_are_validated(store: AudienceStore, vault: Arc<Vault>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meta-token"), "secret").unwrap();
    let room = room(
        store,
        vault,
        dir.path(),
        Directory::default(),
        Consents::default(),
    );
    let base = || DestinationInput {
        name: "meta".into(),
        platform: Some(PlatformKind::Meta),
        region: "US".into(),
        transfer_mechanism: String::new(),
        settings: BTreeMap::from([("audience_id".into(), "123".into())]),
        credentials: BTreeMap::from([("access_token".into(), "meta-token".into())]),
        min_audience_size: 0,
    };
    let field_of = |e: AudienceError| match e {
        AudienceError::Invalid { field, .. } => field,
        other => panic!("expected invalid, got {other}"),
    };
    let cases: Vec<(DestinationInput, &str)> = vec![
        (
            DestinationInput {
                name: " ".into(),
                ..base()
            },
            "name",
        ),
        (
            DestinationInput {
                platform: None,
                ..base()
            },
            "platform",
        ),
        (
            DestinationInput {
                region: "usa".into(),
                ..base()
            },
            "region",
        ),
        (
            DestinationInput {
                transfer_mechanism: "handshake".into(),
                ..base()
            },
            "transfer_mechanism",
        ),
        (
            DestinationInput {
                settings: BTreeMap::new(),
                ..base()
            },
            "settings.audience_id",
        ),
        (
            DestinationInput {
                settings: BTreeMap::from([
                    ("audience_id".into(), "123".into()),
                    ("base_url".into(), "not a url".into()),
                ]),
                ..base()
            },
            "settings.base_url",
        ),
        (
            DestinationInput {
                settings: BTreeMap::from([
                    ("audience_id".into(), "123".into()),
                    ("colour".into(), "blue".into()),
                ]),
                ..base()
            },
            "settings.colour",
        ),
        (
            DestinationInput {
                credentials: BTreeMap::new(),
                ..base()
            },
            "credentials.access_token",
        ),
        (
            DestinationInput {
                credentials: BTreeMap::from([("access_token".into(), "EAAB secret".into())]),
                ..base()
            },
            "credentials.access_token",
        ),
        (
            DestinationInput {
                credentials: BTreeMap::from([("access_token".into(), "missing-file".into())]),
                ..base()
            },
            "credentials.access_token",
        ),
    ];
    for (input, field) in cases {
        let err = room.create_destination(WS, input).await.unwrap_err();
        assert_eq!(field_of(err), field);
    }
    let created = room.create_destination(WS, base()).await.unwrap();
    let (listed, next) = room.list_destinations(WS, 0, "").await.unwrap();
    assert_eq!(listed, vec![created]);
    assert!(next.is_empty());
}

// ---- the room's sync against the Meta fake ------------------------------------------------

#[derive(Default, Clone)]
struct Directory(Arc<Mutex<HashMap<String, Vec<MemberIdentifier>>>>);

impl Directory {
    fn add(&self, profile: &str, email: &str, phone: &str) {
        self.0.lock().unwrap().insert(
            profile.into(),
            vec![
                MemberIdentifier {
                    kind: "email".into(),
                    source: String::new(),
                    value: email.into(),
                },
                MemberIdentifier {
                    kind: "phone".into(),
                    source: String::new(),
                    value: phone.into(),
                },
            ],
        );
    }
}

#[async_trait]
impl MemberDirectory for Directory {
    async fn contact(
        &self,
        _workspace: &str,
        profile_id: &str,
    ) -> Result<Option<MemberContact>, SourceError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(profile_id)
            .map(|ids| MemberContact {
                identifiers: ids.clone(),
            }))
    }

    /// The tests' "blind index" is the profile id's bytes.
    async fn profile_of(
        &self,
        _workspace: &str,
        blind_index: &[u8],
    ) -> Result<Option<String>, SourceError> {
        let id = String::from_utf8_lossy(blind_index).into_owned();
        Ok(self.0.lock().unwrap().contains_key(&id).then_some(id))
    }
}

/// A recorded decision: state, ledger entry id, jurisdiction.
type Recorded = (ConsentState, String, String);

/// Consent per email address.
#[derive(Default, Clone)]
struct Consents(Arc<Mutex<HashMap<String, Recorded>>>);

impl Consents {
    fn set(&self, email: &str, state: ConsentState, entry: &str, jurisdiction: &str) {
        self.0.lock().unwrap().insert(
            email.into(),
            (state, entry.to_owned(), jurisdiction.to_owned()),
        );
    }
}

#[async_trait]
impl ConsentLookup for Consents {
    async fn consent(
        &self,
        _workspace: &str,
        identifiers: &[MemberIdentifier],
    ) -> Result<SubjectConsent, SourceError> {
        let map = self.0.lock().unwrap();
        let found = identifiers.iter().find_map(|i| map.get(&i.value)).cloned();
        Ok(match found {
            None => SubjectConsent::default(),
            Some((state, entry_id, jurisdiction)) => SubjectConsent {
                purposes: vec![PurposeConsent {
                    purpose: "marketing.advertising".into(),
                    state,
                    entry_id,
                    jurisdiction: jurisdiction.clone(),
                }],
                jurisdiction,
            },
        })
    }
}

fn room(
    store: AudienceStore,
    vault: Arc<Vault>,
    credentials: &std::path::Path,
    directory: Directory,
    consents: Consents,
) -> AudienceRoom {
    AudienceRoom::new(store).with_destinations(DestinationDeps {
        policies: Arc::new(PolicyEngine::builtin().unwrap()),
        vault,
        credentials: Credentials::new(Some(credentials.to_owned())),
        directory: Arc::new(directory),
        consent: Arc::new(consents),
        transport: Arc::new(Transport::new(
            RetryPolicy {
                max_attempts: 2,
                initial_backoff: std::time::Duration::from_millis(10),
                ..RetryPolicy::default()
            },
            0,
        )),
    })
}

fn meta_row(email: &str, phone: &str) -> Vec<String> {
    vec![
        hash_field(Platform::Meta, Field::Email, email, None)
            .unwrap()
            .as_str()
            .to_owned(),
        hash_field(Platform::Meta, Field::Phone, phone, None)
            .unwrap()
            .as_str()
            .to_owned(),
    ]
}

async fn sync_sends_only_what_the_policy_allows_and_takes_it_back_exactly(
    store: AudienceStore,
    vault: Arc<Vault>,
) {
    let fake = MetaFake::new(TOKEN, true);
    let running = fake.start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meta-token"), format!("{TOKEN}\n")).unwrap();
    let directory = Directory::default();
    let consents = Consents::default();
    let people = [
        ("p1", "ana.lima@example.com", "+4915112345671", "EU-DE"),
        ("p2", "ben.okafor@example.com", "+4915112345672", "EU-DE"),
        ("p3", "chloe.martin@example.com", "+33612345673", "EU-FR"),
        ("p4", "dev.refused@example.com", "+4915112345674", "EU-DE"),
        ("p5", "eve.unknown@example.com", "+4915112345675", ""),
    ];
    let now = Utc::now();
    for (i, (profile, email, phone, jurisdiction)) in people.iter().enumerate() {
        directory.add(profile, email, phone);
        let state = if *profile == "p4" {
            ConsentState::Refused
        } else {
            ConsentState::Given
        };
        if !jurisdiction.is_empty() {
            consents.set(email, state, &format!("entry-{i}"), jurisdiction);
        }
        store
            .put_profile(
                WriteVia::Pool,
                WS,
                &ProfileRow {
                    profile_id: (*profile).into(),
                    home_region: "DE".into(),
                    jurisdiction: String::new(),
                    age_band: "adult".into(),
                },
                &[],
                &["email".to_owned()],
                now,
            )
            .await
            .unwrap();
    }
    let room = room(
        store.clone(),
        vault.clone(),
        dir.path(),
        directory.clone(),
        consents.clone(),
    );
    let segment = room
        .create_segment(
            WS,
            meridian_audience::room::SegmentInput {
                name: "has email".into(),
                definition: r#"{"has_identifier": "email"}"#.into(),
                purpose: PURPOSE.into(),
                recompute_schedule: String::new(),
            },
        )
        .await
        .unwrap();
    parse(&segment.definition).unwrap();
    let destination = room
        .create_destination(
            WS,
            DestinationInput {
                name: "meta retargeting".into(),
                platform: Some(PlatformKind::Meta),
                region: "US".into(),
                transfer_mechanism: "dpf".into(),
                settings: BTreeMap::from([
                    ("base_url".into(), running.base_url()),
                    ("audience_id".into(), "23850001".into()),
                ]),
                credentials: BTreeMap::from([("access_token".into(), "meta-token".into())]),
                min_audience_size: 2,
            },
        )
        .await
        .unwrap();

    let first = room
        .sync_now(WS, &segment.segment_id, &destination.destination_id)
        .await
        .unwrap();
    assert_eq!(first.state, SyncState::Succeeded, "{first:?}");
    assert_eq!(first.members_sent, 3);
    assert_eq!(first.members_removed, 0);
    assert_eq!(
        first.excluded.get("gdpr.art6_1_a.consent_required"),
        Some(&1),
        "{first:?}"
    );
    assert_eq!(first.excluded.get("jurisdiction_unknown"), Some(&1));
    let expected: std::collections::HashSet<Vec<String>> = people[..3]
        .iter()
        .map(|(_, e, p, _)| meta_row(e, p))
        .collect();
    assert_eq!(fake.members("23850001"), expected);
    assert_eq!(
        room.sync_status(WS, &first.sync_id).await.unwrap(),
        first,
        "GetSyncStatus reads back what SyncNow returned"
    );

    // Nothing new: nothing sent.
    let batches = fake.batches().len();
    let again = room
        .sync_now(WS, &segment.segment_id, &destination.destination_id)
        .await
        .unwrap();
    assert_eq!((again.members_sent, again.members_removed), (0, 0));
    assert_eq!(again.state, SyncState::Succeeded);
    assert_eq!(
        fake.batches().len(),
        batches,
        "a repeated sync sends nothing"
    );

    // p2's phone changes in the identity room: the sent hashes are what gets removed.
    directory.add("p2", "ben.okafor@example.com", "+4915112349999");
    consents.set(
        "ben.okafor@example.com",
        ConsentState::Refused,
        "entry-w",
        "EU-DE",
    );
    let removed = ConsentWithdrawals { room: room.clone() }
        .apply(
            &ConsentChanged {
                workspace_id: WS.into(),
                blind_indexes: vec![b"p2".to_vec()],
                restricted: true,
                ..Default::default()
            },
            WS,
        )
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let mut without_p2 = expected.clone();
    assert!(without_p2.remove(&meta_row(people[1].1, people[1].2)));
    assert_eq!(fake.members("23850001"), without_p2);
    let last = fake.batches().pop().unwrap();
    assert!(last.removal && last.rows == 1);
    // A change that restricts nothing removes nothing.
    let none = ConsentWithdrawals { room: room.clone() }
        .apply(
            &ConsentChanged {
                workspace_id: WS.into(),
                blind_indexes: vec![b"p1".to_vec()],
                restricted: false,
                ..Default::default()
            },
            WS,
        )
        .await
        .unwrap();
    assert_eq!(none, 0);

    // The next sync does not send p2 again and counts the objection.
    let third = room
        .sync_now(WS, &segment.segment_id, &destination.destination_id)
        .await
        .unwrap();
    assert_eq!((third.members_sent, third.members_removed), (0, 0));
    assert_eq!(
        third.excluded.get("gdpr.art6_1_a.consent_required"),
        Some(&2)
    );

    // The ledger says why p1 was sent, then.
    let (held, ledger) = room.destinations_of(WS, "p1").await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].consent_entry_id, "entry-0");
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].sync_id, first.sync_id);
    let (_, p2_ledger) = room.destinations_of(WS, "p2").await.unwrap();
    assert_eq!(
        p2_ledger
            .iter()
            .map(|l| (l.action, l.cause.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (HeldStatus::Sent, "sync"),
            (HeldStatus::Removed, "consent_withdrawn")
        ]
    );

    // Erasure: removed everywhere, and its subject reported for shredding.
    let (n, subjects) = room.remove_everywhere(WS, "p1").await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(subjects, vec!["p1".to_owned()]);
    let mut only_p3 = without_p2;
    assert!(only_p3.remove(&meta_row(people[0].1, people[0].2)));
    assert_eq!(fake.members("23850001"), only_p3);
    let (n, _) = room.remove_everywhere(WS, "p1").await.unwrap();
    assert_eq!(n, 0, "erasure is idempotent");

    // The segment falls under the destination's minimum: no adds, still no error on
    // removals; a member who left the segment is removed.
    directory.add("p6", "fay.new@example.com", "+4915112345676");
    let too_small = room
        .create_destination(
            WS,
            DestinationInput {
                name: "meta big".into(),
                platform: Some(PlatformKind::Meta),
                region: "US".into(),
                transfer_mechanism: String::new(),
                settings: BTreeMap::from([
                    ("base_url".into(), running.base_url()),
                    ("audience_id".into(), "23850002".into()),
                ]),
                credentials: BTreeMap::from([("access_token".into(), "meta-token".into())]),
                min_audience_size: 50,
            },
        )
        .await
        .unwrap();
    let refused = room
        .sync_now(WS, &segment.segment_id, &too_small.destination_id)
        .await
        .unwrap();
    assert_eq!(refused.state, SyncState::Failed);
    assert_eq!(refused.last_error, "audience_below_minimum");
    assert_eq!(refused.members_sent, 0);
    assert!(fake.members("23850002").is_empty());

    // Nothing sent is at rest in clear: not the addresses, not their hashes.
    let dump = match store.backend() {
        Store::Postgres(pool) => dump_postgres(pool).await.unwrap(),
        Store::Sqlite(pool) => dump_sqlite(pool).await.unwrap(),
    };
    let mut needles: Vec<String> = Vec::new();
    for (_, email, phone, _) in &people {
        needles.push((*email).to_owned());
        needles.extend(meta_row(email, phone));
    }
    let found = find_plaintext(&dump.text, needles.iter().map(String::as_str));
    assert!(found.is_empty(), "plaintext at rest: {found:?}");
    drop(running);
}

async fn platform_failures_are_recorded_per_member_and_retried(
    store: AudienceStore,
    vault: Arc<Vault>,
) {
    let fake = MetaFake::new(TOKEN, true);
    let running = fake.start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meta-token"), TOKEN).unwrap();
    let directory = Directory::default();
    let consents = Consents::default();
    let now = Utc::now();
    for i in 1..=3 {
        let profile = format!("q{i}");
        let email = format!("shopper{i}@example.org");
        directory.add(&profile, &email, &format!("+3361234567{i}"));
        consents.set(&email, ConsentState::Given, &format!("e{i}"), "EU-FR");
        store
            .put_profile(
                WriteVia::Pool,
                WS,
                &ProfileRow {
                    profile_id: profile,
                    ..ProfileRow::default()
                },
                &[],
                &["email".to_owned()],
                now,
            )
            .await
            .unwrap();
    }
    let room = room(store.clone(), vault, dir.path(), directory, consents);
    let segment = room
        .create_segment(
            WS,
            meridian_audience::room::SegmentInput {
                name: "all".into(),
                definition: r#"{"has_identifier": "email"}"#.into(),
                purpose: PURPOSE.into(),
                recompute_schedule: String::new(),
            },
        )
        .await
        .unwrap();
    let destination = room
        .create_destination(
            WS,
            DestinationInput {
                name: "meta".into(),
                platform: Some(PlatformKind::Meta),
                region: "US".into(),
                transfer_mechanism: "dpf".into(),
                settings: BTreeMap::from([
                    ("base_url".into(), running.base_url()),
                    ("audience_id".into(), "777".into()),
                ]),
                credentials: BTreeMap::from([("access_token".into(), "meta-token".into())]),
                min_audience_size: 1,
            },
        )
        .await
        .unwrap();
    // Meta is down for longer than the retries last: every member is recorded as failed.
    fake.fail_next(meridian_test_support::platforms::Failure::Unavailable, 2);
    let failed = room
        .sync_now(WS, &segment.segment_id, &destination.destination_id)
        .await
        .unwrap();
    assert_eq!(failed.state, SyncState::Failed, "{failed:?}");
    assert_eq!((failed.members_sent, failed.members_failed), (0, 3));
    assert!(fake.members("777").is_empty());
    let held = store
        .held(WS, &destination.destination_id, &segment.segment_id)
        .await
        .unwrap();
    assert_eq!(held.len(), 3);
    assert!(held.iter().all(|h| h.status == HeldStatus::Failed
        && h.sealed_identifiers.is_none()
        && h.last_error.starts_with("meta:")));
    // The next sync sends them.
    let retried = room
        .sync_now(WS, &segment.segment_id, &destination.destination_id)
        .await
        .unwrap();
    assert_eq!(retried.state, SyncState::Succeeded, "{retried:?}");
    assert_eq!(retried.members_sent, 3);
    assert_eq!(fake.members("777").len(), 3);
    let (_, ledger) = room.destinations_of(WS, "q1").await.unwrap();
    assert_eq!(
        ledger.iter().map(|l| l.action).collect::<Vec<_>>(),
        vec![HeldStatus::Failed, HeldStatus::Sent]
    );
    // An unreadable credential fails the sync as a whole and frees the pair for the next.
    std::fs::remove_file(dir.path().join("meta-token")).unwrap();
    let unusable = room
        .sync_now(WS, &segment.segment_id, &destination.destination_id)
        .await
        .unwrap();
    assert_eq!(
        (unusable.state, unusable.last_error.as_str()),
        (SyncState::Failed, "connector_unusable")
    );
    std::fs::write(dir.path().join("meta-token"), TOKEN).unwrap();
    let again = room
        .sync_now(WS, &segment.segment_id, &destination.destination_id)
        .await
        .unwrap();
    assert_eq!((again.state, again.members_sent), (SyncState::Succeeded, 0));
    drop(running);
}

async fn file_destinations_get_adds_and_exact_removals(store: AudienceStore, vault: Arc<Vault>) {
    let secrets = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let directory = Directory::default();
    let consents = Consents::default();
    let now = Utc::now();
    for (profile, email) in [("f1", "one@example.net"), ("f2", "two@example.net")] {
        directory.add(profile, email, "");
        consents.set(email, ConsentState::Given, "e", "GB");
        store
            .put_profile(
                WriteVia::Pool,
                WS,
                &ProfileRow {
                    profile_id: profile.into(),
                    ..ProfileRow::default()
                },
                &[],
                &["email".to_owned()],
                now,
            )
            .await
            .unwrap();
    }
    let room = room(
        store.clone(),
        vault,
        secrets.path(),
        directory,
        consents.clone(),
    );
    let segment = room
        .create_segment(
            WS,
            meridian_audience::room::SegmentInput {
                name: "all".into(),
                definition: r#"{"has_identifier": "email"}"#.into(),
                purpose: PURPOSE.into(),
                recompute_schedule: String::new(),
            },
        )
        .await
        .unwrap();
    let destination = room
        .create_destination(
            WS,
            DestinationInput {
                name: "exports".into(),
                platform: Some(PlatformKind::File),
                region: "GB".into(),
                transfer_mechanism: String::new(),
                settings: BTreeMap::from([(
                    "directory".into(),
                    out.path().to_str().unwrap().to_owned(),
                )]),
                credentials: BTreeMap::new(),
                min_audience_size: 0,
            },
        )
        .await
        .unwrap();
    let sync = room
        .sync_now(WS, &segment.segment_id, &destination.destination_id)
        .await
        .unwrap();
    assert_eq!(sync.members_sent, 2, "{sync:?}");
    let read = |direction: &str| -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(out.path()).unwrap() {
            let path = entry.unwrap().path();
            if path
                .to_str()
                .unwrap()
                .ends_with(&format!("-{direction}.csv"))
            {
                text.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
        text
    };
    let one = hash_field(Platform::Meta, Field::Email, "one@example.net", None).unwrap();
    let two = hash_field(Platform::Meta, Field::Email, "two@example.net", None).unwrap();
    let added = read("add");
    assert!(
        added.starts_with("member,email_sha256,phone_sha256\n"),
        "{added}"
    );
    assert!(added.contains(&format!("f1,{},", one.as_str())), "{added}");
    assert!(added.contains(&format!("f2,{},", two.as_str())), "{added}");
    assert!(!added.contains("example.net"));
    consents.set("two@example.net", ConsentState::Refused, "w", "GB");
    let removed = room.remove_no_longer_allowed(WS, "f2").await.unwrap();
    assert_eq!(removed, 1);
    assert_eq!(
        read("remove"),
        format!("member,email_sha256,phone_sha256\nf2,{},\n", two.as_str())
    );
}

// ---- harness --------------------------------------------------------------------------------

async fn pg(pool: PgPool) -> (AudienceStore, Arc<Vault>) {
    sqlx::query("INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')")
        .bind(WS)
        .execute(&pool)
        .await
        .unwrap();
    let vault = Arc::new(Vault::new(
        Arc::new(KeyRing::generate(1).unwrap()),
        Arc::new(PgKeyStore::new(pool.clone())),
    ));
    (AudienceStore::new(Store::Postgres(pool)), vault)
}

async fn lite(pool: SqlitePool) -> (AudienceStore, Arc<Vault>) {
    sqlx::query("INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ($1, 'eu', 'Europe/Paris')")
        .bind(WS)
        .execute(&pool)
        .await
        .unwrap();
    let vault = Arc::new(Vault::new(
        Arc::new(KeyRing::generate(1).unwrap()),
        Arc::new(SqliteKeyStore::new(pool.clone())),
    ));
    (AudienceStore::new(Store::Sqlite(pool)), vault)
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $check(pool: PgPool) {
                    let (store, vault) = pg(pool).await;
                    super::$check(store, vault).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $check(pool: SqlitePool) {
                    let (store, vault) = lite(pool).await;
                    super::$check(store, vault).await;
                }
            )*
        }
    };
}

conformance!(
    store_round_trips,
    destinations_are_validated,
    sync_sends_only_what_the_policy_allows_and_takes_it_back_exactly,
    platform_failures_are_recorded_per_member_and_retried,
    file_destinations_get_adds_and_exact_removals,
);
