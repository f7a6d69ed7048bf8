//! The consent room against both backends (a fresh PostgreSQL database per test, and
//! SQLite): the ledger (append-only, chained, signed, tamper detection), RecordConsent,
//! state now / as of T, history, receipts, erasure, and data-subject requests.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use meridian_consent::ledger::{Actor, Decision, LawfulBasis, Notice};
use meridian_consent::signals::{Choice, Signals};
use meridian_consent::{
    ConsentError, ConsentRoom, IdKind, ListFilter, RecordRequest, RequestKind, RequestStatus,
    SubjectId, SubjectQuery, SubmitRequest, verify_receipt,
};
use meridian_policy::PolicyEngine;
use meridian_store::Store;
use meridian_store::sqlx::{self, PgPool, SqlitePool};
use meridian_vault::{KeyRing, KeyStore, PgKeyStore, SqliteKeyStore, Vault};

const WS: &str = "acme";

struct Harness {
    room: ConsentRoom,
    vault: Arc<Vault>,
    store: Store,
}

impl Harness {
    async fn new(store: Store) -> Self {
        let keys: Arc<dyn KeyStore> = match &store {
            Store::Postgres(p) => Arc::new(PgKeyStore::new(p.clone())),
            Store::Sqlite(p) => Arc::new(SqliteKeyStore::new(p.clone())),
        };
        let vault = Arc::new(Vault::new(Arc::new(KeyRing::generate(1).unwrap()), keys));
        let h = Harness {
            room: ConsentRoom::new(
                store.clone(),
                vault.clone(),
                Arc::new(PolicyEngine::builtin().unwrap()),
            ),
            vault,
            store,
        };
        h.exec("INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ('acme', 'eu', 'Europe/Paris')")
            .await
            .unwrap();
        h
    }

    async fn exec(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match &self.store {
            Store::Postgres(p) => sqlx::raw_sql(sql)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Store::Sqlite(p) => sqlx::raw_sql(sql)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
    }

    /// What an attacker with database access does first.
    async fn disable_append_only(&self) {
        match &self.store {
            Store::Postgres(_) => {
                self.exec("ALTER TABLE consent_ledger DISABLE TRIGGER USER")
                    .await
            }
            Store::Sqlite(_) => {
                self.exec(
                    "DROP TRIGGER consent_ledger_no_update; DROP TRIGGER consent_ledger_no_delete",
                )
                .await
            }
        }
        .unwrap();
    }
}

fn email(e: &str) -> SubjectQuery {
    SubjectQuery {
        identifiers: vec![SubjectId {
            kind: IdKind::Email,
            value: e.into(),
            default_region: None,
        }],
    }
}

fn choice(purpose: &str, decision: Decision) -> Choice {
    Choice {
        purpose: purpose.into(),
        decision,
        lawful_basis: LawfulBasis::Consent,
    }
}

fn request(
    subject: SubjectQuery,
    choices: Vec<Choice>,
    at: Option<DateTime<Utc>>,
) -> RecordRequest {
    RecordRequest {
        subject,
        jurisdiction: "EU-FR".into(),
        signals: Signals {
            choices,
            ..Signals::default()
        },
        notice: Notice {
            url: "https://acme.example/privacy".into(),
            version: "3".into(),
            hash: "ab".repeat(32),
            language: "fr".into(),
        },
        collection_point: "cookie-banner".into(),
        actor: Actor::Subject,
        time_zone: Some(chrono_tz::Europe::Paris),
        collected_at: at,
        idempotency_key: None,
    }
}

/// Three RecordConsent calls: entries 1-2, 3-4, 5-6 (each batch's last entry signed).
async fn three_batches(h: &Harness) {
    for who in ["ana@example.com", "bo@example.com", "cy@example.com"] {
        h.room
            .record(
                WS,
                request(
                    email(who),
                    vec![
                        choice("analytics", Decision::Given),
                        choice("marketing.advertising", Decision::Refused),
                    ],
                    None,
                ),
            )
            .await
            .unwrap();
    }
    let report = h.room.verify(WS).await.unwrap();
    assert!(report.valid, "{report:?}");
    assert_eq!(report.entries_checked, 6);
}

async fn entry_id_at(h: &Harness, sequence: u64) -> String {
    h.room
        .store()
        .entries_between(WS, sequence, sequence)
        .await
        .unwrap()
        .pop()
        .unwrap()
        .entry_id
}

// ---- the ledger ----------------------------------------------------------------------

async fn the_database_refuses_updates_and_deletes(h: Harness) {
    three_batches(&h).await;
    let err = h
        .exec("UPDATE consent_ledger SET body = '{}' WHERE sequence = 2")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = h
        .exec("DELETE FROM consent_ledger WHERE sequence = 6")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    if let Store::Postgres(_) = h.store {
        let err = h.exec("TRUNCATE consent_ledger").await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
    assert!(h.room.verify(WS).await.unwrap().valid);
    // what `meridian ledger verify [--workspace W]` runs
    let all = meridian_consent::verify_ledger(&h.store, &h.vault, None)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].valid && all[0].workspace == WS && all[0].entries_checked == 6);
    let one = meridian_consent::verify_ledger(&h.store, &h.vault, Some(WS))
        .await
        .unwrap();
    assert_eq!(one, all);
}

async fn an_edited_entry_is_named(h: Harness) {
    three_batches(&h).await;
    let victim = entry_id_at(&h, 3).await;
    h.disable_append_only().await;
    h.exec("UPDATE consent_ledger SET body = replace(body, '\"refused\"', '\"given\"') WHERE sequence = 4")
        .await
        .unwrap();
    let report = h.room.verify(WS).await.unwrap();
    assert!(!report.valid);
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.sequence, 4, "{bad:?}");
    assert!(bad.reason.contains("hash does not match"), "{bad:?}");
    // an edit of a header column (who the entry is about) is caught the same way
    let h2_victim = victim;
    h.exec("UPDATE consent_ledger SET body = replace(body, '\"given\"', '\"refused\"') WHERE sequence = 4")
        .await
        .unwrap();
    h.exec("UPDATE consent_ledger SET subject_ref = 'sr_someone_else' WHERE sequence = 3")
        .await
        .unwrap();
    let bad = h.room.verify(WS).await.unwrap().first_bad.unwrap();
    assert_eq!((bad.sequence, bad.entry_id), (3, h2_victim));
}

async fn a_deleted_entry_is_named(h: Harness) {
    three_batches(&h).await;
    let after = entry_id_at(&h, 4).await;
    h.disable_append_only().await;
    h.exec("DELETE FROM consent_ledger WHERE sequence = 3")
        .await
        .unwrap();
    let bad = h.room.verify(WS).await.unwrap().first_bad.unwrap();
    assert_eq!((bad.sequence, bad.entry_id.as_str()), (4, after.as_str()));
    assert!(bad.reason.contains("missing"), "{bad:?}");
}

async fn a_truncated_tail_is_detected(h: Harness) {
    three_batches(&h).await;
    h.disable_append_only().await;
    h.exec("DELETE FROM consent_ledger WHERE sequence = 6")
        .await
        .unwrap();
    let report = h.room.verify(WS).await.unwrap();
    assert!(!report.valid);
    let bad = report.first_bad.unwrap();
    // entry 5 was signed only through entry 6: the ledger now ends unsigned at 5
    assert_eq!(bad.sequence, 5, "{bad:?}");
    h.exec("DELETE FROM consent_ledger WHERE sequence = 5")
        .await
        .unwrap();
    let bad = h.room.verify(WS).await.unwrap().first_bad.unwrap();
    // a whole batch gone: the recorded head still says 6
    assert_eq!(bad.sequence, 5, "{bad:?}");
    assert!(bad.reason.contains("missing at the end"), "{bad:?}");
}

async fn reordered_entries_are_named(h: Harness) {
    three_batches(&h).await;
    let moved = entry_id_at(&h, 3).await;
    h.disable_append_only().await;
    h.exec("UPDATE consent_ledger SET sequence = sequence + 1000 WHERE sequence IN (2, 3)")
        .await
        .unwrap();
    h.exec("UPDATE consent_ledger SET sequence = 2 WHERE sequence = 1003")
        .await
        .unwrap();
    h.exec("UPDATE consent_ledger SET sequence = 3 WHERE sequence = 1002")
        .await
        .unwrap();
    let bad = h.room.verify(WS).await.unwrap().first_bad.unwrap();
    assert_eq!(
        (bad.sequence, bad.entry_id.as_str()),
        (2, moved.as_str()),
        "{bad:?}"
    );
}

async fn inserted_entries_are_named(h: Harness) {
    three_batches(&h).await;
    // a forged entry appended at the end, linked to the real head, without the key
    h.exec(
        "INSERT INTO consent_ledger (workspace_id, sequence, entry_id, subject_ref, recorded_at, body, prev_hash, hash, key_version, signature)
         SELECT workspace_id, 7, 'forged', subject_ref, recorded_at, body, hash, hash, key_version, signature
         FROM consent_ledger WHERE sequence = 6",
    )
    .await
    .unwrap();
    let bad = h.room.verify(WS).await.unwrap().first_bad.unwrap();
    assert_eq!(
        (bad.sequence, bad.entry_id.as_str()),
        (7, "forged"),
        "{bad:?}"
    );
}

/// Verification reads the ledger as several sequence ranges at once: where the ranges are
/// cut must change nothing, for a sound ledger or a tampered one.
async fn segment_boundaries_change_nothing(h: Harness) {
    three_batches(&h).await;
    let by_segment = |segment: u64| {
        let store = h.room.store().clone();
        let vault = h.vault.clone();
        async move {
            meridian_consent::verify_in_segments(store, &vault, WS, segment)
                .await
                .unwrap()
        }
    };
    let whole = h.room.verify(WS).await.unwrap();
    for segment in 1..=7 {
        assert_eq!(by_segment(segment).await, whole, "segments of {segment}");
    }
    // a forged entry far past the end: in the open-ended last range whatever the size
    h.exec(
        "INSERT INTO consent_ledger (workspace_id, sequence, entry_id, subject_ref, recorded_at, body, prev_hash, hash, key_version, signature)
         SELECT workspace_id, 100, 'forged', subject_ref, recorded_at, body, hash, hash, key_version, signature
         FROM consent_ledger WHERE sequence = 6",
    )
    .await
    .unwrap();
    let bad = h.room.verify(WS).await.unwrap().first_bad.unwrap();
    assert_eq!((bad.sequence, bad.entry_id.as_str()), (100, "forged"));
    assert!(bad.reason.contains("7..99"), "{bad:?}");
    for segment in [1, 2, 3, 50, 99, 100, 101] {
        assert_eq!(
            by_segment(segment).await.first_bad,
            Some(bad.clone()),
            "segments of {segment}"
        );
    }
    // a deletion at the start of a range (sequence 3 with ranges of 2)
    let after = entry_id_at(&h, 4).await;
    h.disable_append_only().await;
    h.exec("DELETE FROM consent_ledger WHERE sequence = 3")
        .await
        .unwrap();
    for segment in 1..=7 {
        let bad = by_segment(segment).await.first_bad.unwrap();
        assert_eq!(
            (bad.sequence, bad.entry_id.as_str()),
            (4, after.as_str()),
            "segments of {segment}"
        );
        assert!(bad.reason.contains("missing"), "{bad:?}");
    }
}

async fn a_rehashed_chain_fails_its_signature(h: Harness) {
    three_batches(&h).await;
    let first_of_batch = entry_id_at(&h, 3).await;
    h.disable_append_only().await;
    // rewrite entry 3 and recompute every hash after it: only the signature can tell
    let rows = h.room.store().scan(WS, 0, 100).await.unwrap();
    let mut prev = rows[1].hash.clone();
    for r in rows.iter().skip(2) {
        let body = if r.sequence == 3 {
            r.body.replace("\"given\"", "\"refused\"")
        } else {
            r.body.clone()
        };
        let hash = meridian_consent::ledger::entry_hash(
            WS,
            r.sequence,
            &prev,
            &r.entry_id,
            &r.subject_ref,
            r.recorded_at,
            &body,
        );
        let sql = format!(
            "UPDATE consent_ledger SET body = '{}', prev_hash = {}, hash = {} WHERE sequence = {}",
            body.replace('\'', "''"),
            hex_literal(&h.store, &prev),
            hex_literal(&h.store, &hash),
            r.sequence
        );
        h.exec(&sql).await.unwrap();
        prev = hash.to_vec();
    }
    h.exec(&format!(
        "UPDATE consent_ledger_heads SET hash = {}",
        hex_literal(&h.store, &prev)
    ))
    .await
    .unwrap();
    let bad = h.room.verify(WS).await.unwrap().first_bad.unwrap();
    assert_eq!(
        (bad.sequence, bad.entry_id.as_str()),
        (3, first_of_batch.as_str()),
        "{bad:?}"
    );
    assert!(bad.reason.contains("signature"), "{bad:?}");
}

fn hex_literal(store: &Store, bytes: &[u8]) -> String {
    match store {
        Store::Postgres(_) => format!("'\\x{}'::bytea", hex::encode(bytes)),
        Store::Sqlite(_) => format!("X'{}'", hex::encode(bytes)),
    }
}

async fn concurrent_appends_keep_one_chain(h: Harness) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let room = h.room.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..5 {
                room.record(
                    WS,
                    request(
                        email(&format!("p{i}-{j}@example.com")),
                        vec![
                            choice("analytics", Decision::Given),
                            choice("marketing.advertising", Decision::Refused),
                        ],
                        None,
                    ),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = h.room.verify(WS).await.unwrap();
    assert!(report.valid, "{report:?}");
    assert_eq!((report.entries_checked, report.head_sequence), (80, 80));
}

// ---- RecordConsent and state ---------------------------------------------------------

async fn consent_is_recorded_per_purpose_and_read_back(h: Harness) {
    let entries = h
        .room
        .record(
            WS,
            request(
                email("Ana@Example.com"),
                vec![
                    choice("analytics", Decision::Given),
                    choice("marketing.advertising", Decision::Refused),
                ],
                None,
            ),
        )
        .await
        .unwrap();
    assert_eq!(entries.len(), 2);
    let e = &entries[0];
    assert_eq!(e.body.controller, WS);
    assert_eq!(e.body.jurisdiction, "EU-FR");
    assert_eq!(e.body.time_zone, "Europe/Paris");
    assert_eq!(e.body.notice.language, "fr");
    assert!(e.stored.subject_ref.starts_with("sr_"));
    assert!(!e.stored.subject_ref.contains("ana"));
    assert!(e.stored.signature.is_none() && entries[1].stored.signature.is_some());
    // the same subject, normalized, by another spelling
    let states = h
        .room
        .current(WS, &email(" ana@example.COM"), &[], Utc::now())
        .await
        .unwrap();
    assert_eq!(states.len(), 2);
    let analytics = states.iter().find(|s| s.purpose == "analytics").unwrap();
    assert_eq!(analytics.decision, Decision::Given);
    // GDPR consent validity: 13 months, to the end of the local day in Paris
    let exp = analytics
        .expires_at
        .unwrap()
        .with_timezone(&chrono_tz::Europe::Paris);
    assert_eq!(exp.format("%H:%M").to_string(), "00:00");
    let months = (exp.date_naive() - analytics.decided_at.date_naive()).num_days();
    assert!((394..=400).contains(&months), "{months}");
    let ads = states
        .iter()
        .find(|s| s.purpose == "marketing.advertising")
        .unwrap();
    assert_eq!((ads.decision, ads.expires_at), (Decision::Refused, None));
    // only the asked purposes
    let only = h
        .room
        .current(
            WS,
            &email("ana@example.com"),
            &["analytics".to_owned()],
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    // unknown subjects have no consent (and are not created)
    assert!(
        h.room
            .current(WS, &email("nobody@example.com"), &[], Utc::now())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn consent_expires_and_as_of_answers_the_past(h: Harness) {
    let jan = Utc.with_ymd_and_hms(2024, 1, 31, 12, 0, 0).unwrap();
    let mar = Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap();
    h.room
        .record(
            WS,
            request(
                email("ana@example.com"),
                vec![choice("analytics", Decision::Given)],
                Some(jan),
            ),
        )
        .await
        .unwrap();
    h.room
        .record(
            WS,
            request(
                email("ana@example.com"),
                vec![choice("analytics", Decision::Withdrawn)],
                Some(mar),
            ),
        )
        .await
        .unwrap();
    let at = |t| {
        let room = h.room.clone();
        async move {
            room.as_of(WS, &email("ana@example.com"), &[], t)
                .await
                .unwrap()
        }
    };
    assert!(
        at(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap())
            .await
            .is_empty()
    );
    let feb = at(Utc.with_ymd_and_hms(2024, 2, 15, 0, 0, 0).unwrap()).await;
    assert_eq!(feb[0].decision, Decision::Given);
    // 31 Jan 2024 + 13 months = 29 Feb 2025 clamps to 28 Feb 2025; lapses at midnight Paris
    assert_eq!(
        feb[0].expires_at.unwrap(),
        Utc.with_ymd_and_hms(2025, 2, 28, 23, 0, 0).unwrap()
    );
    assert_eq!(at(mar).await[0].decision, Decision::Withdrawn);
    // the current state: withdrawn (a later decision replaces an earlier one)
    let now = h
        .room
        .current(WS, &email("ana@example.com"), &[], Utc::now())
        .await
        .unwrap();
    assert_eq!(now[0].decision, Decision::Withdrawn);
    // a given consent lapses after its validity
    let old = Utc.with_ymd_and_hms(2023, 1, 10, 9, 0, 0).unwrap();
    h.room
        .record(
            WS,
            request(
                email("bo@example.com"),
                vec![choice("analytics", Decision::Given)],
                Some(old),
            ),
        )
        .await
        .unwrap();
    let bo = h
        .room
        .current(WS, &email("bo@example.com"), &[], Utc::now())
        .await
        .unwrap();
    assert_eq!(bo[0].decision, Decision::Expired);
    let then = h
        .room
        .as_of(
            WS,
            &email("bo@example.com"),
            &[],
            Utc.with_ymd_and_hms(2023, 6, 1, 0, 0, 0).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(then[0].decision, Decision::Given);
}

async fn idempotency_keys_make_retries_safe(h: Harness) {
    let mut req = request(
        email("ana@example.com"),
        vec![choice("analytics", Decision::Given)],
        None,
    );
    req.idempotency_key = Some("k-1".into());
    let first = h.room.record(WS, req.clone()).await.unwrap();
    let again = h.room.record(WS, req.clone()).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(h.room.verify(WS).await.unwrap().entries_checked, 1);
    req.subject = email("bo@example.com");
    let err = h.room.record(WS, req).await.unwrap_err();
    assert!(matches!(err, ConsentError::Conflict(_)), "{err}");
}

async fn signals_become_entries_per_purpose(h: Harness) {
    let mut req = request(email("ana@example.com"), vec![], None);
    req.jurisdiction = "US-CA".into();
    req.time_zone = None;
    req.signals.gpc = true;
    let entries = h.room.record(WS, req).await.unwrap();
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e.body.raw_signal == "Sec-GPC: 1"
        && e.body.time_zone == "America/Los_Angeles"
        && e.body.purposes[0].decision == Decision::Refused));
    let mut bad = request(email("ana@example.com"), vec![], None);
    bad.signals.tc_string = Some("CO-garbage".into());
    let err = h.room.record(WS, bad).await.unwrap_err();
    assert!(err.to_string().contains("signals.tc_string"), "{err}");
    assert_eq!(
        h.room.verify(WS).await.unwrap().entries_checked,
        entries.len() as u64
    );
}

async fn history_pages_through_the_subjects_entries(h: Harness) {
    for i in 0..5 {
        let t = Utc.with_ymd_and_hms(2025, 1, 1 + i, 0, 0, 0).unwrap();
        h.room
            .record(
                WS,
                request(
                    email("ana@example.com"),
                    vec![choice("analytics", Decision::Given)],
                    Some(t),
                ),
            )
            .await
            .unwrap();
        h.room
            .record(
                WS,
                request(
                    email("bo@example.com"),
                    vec![choice("analytics", Decision::Given)],
                    Some(t),
                ),
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .room
            .history(WS, &email("ana@example.com"), 2, &token)
            .await
            .unwrap();
        seen.extend(page.entries.iter().map(|e| e.stored.recorded_at));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let err = h
        .room
        .history(WS, &email("ana@example.com"), 2, "junk")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("page_token"));
}

async fn receipts_verify_with_the_public_key(h: Harness) {
    h.room
        .record(
            WS,
            request(
                email("ana@example.com"),
                vec![choice("analytics", Decision::Given)],
                None,
            ),
        )
        .await
        .unwrap();
    let r = h.room.receipt(WS, &email("ana@example.com")).await.unwrap();
    assert!(verify_receipt(&r.json, &r.signature, &r.public_key));
    assert!(!verify_receipt(
        &r.json.replace("given", "refused"),
        &r.signature,
        &r.public_key
    ));
    let doc: serde_json::Value = serde_json::from_str(&r.json).unwrap();
    assert_eq!(doc["consents"][0]["purpose"], "analytics");
    assert_eq!(doc["consents"][0]["entry_sequence"], 1);
    assert!(!r.json.contains("ana@"));
    let err = h
        .room
        .receipt(WS, &email("nobody@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, ConsentError::NotFound(_)));
}

async fn erasure_unlinks_the_subject_but_keeps_the_proof(h: Harness) {
    let entries = h
        .room
        .record(
            WS,
            request(
                email("ana@example.com"),
                vec![choice("analytics", Decision::Given)],
                None,
            ),
        )
        .await
        .unwrap();
    let subject = h
        .room
        .resolve_subject(WS, &email("ana@example.com"), false)
        .await
        .unwrap()
        .unwrap();
    h.vault.forget(WS, &subject.subject_id).await.unwrap();
    let err = h
        .room
        .current(WS, &email("ana@example.com"), &[], Utc::now())
        .await
        .unwrap_err();
    assert!(matches!(err, ConsentError::SubjectErased), "{err}");
    let report = h.room.verify(WS).await.unwrap();
    assert!(report.valid && report.entries_checked == 1);
    let kept = h.room.store().scan(WS, 0, 10).await.unwrap();
    assert_eq!(kept[0].entry_id, entries[0].stored.entry_id);
}

// ---- data-subject requests -----------------------------------------------------------

fn submit(kind: RequestKind, jurisdiction: &str, who: &str) -> SubmitRequest {
    SubmitRequest {
        kind,
        subject: email(who),
        jurisdiction: jurisdiction.into(),
        corrections: None,
        idempotency_key: None,
    }
}

async fn requests_get_deadlines_statuses_and_an_audit_trail(h: Harness) {
    let jan31 = Utc.with_ymd_and_hms(2024, 1, 31, 10, 0, 0).unwrap();
    let gdpr = h
        .room
        .submit_request(
            WS,
            submit(RequestKind::Access, "DE", "ana@example.com"),
            jan31,
        )
        .await
        .unwrap();
    assert_eq!(
        (gdpr.regime.as_str(), gdpr.status),
        ("gdpr", RequestStatus::Received)
    );
    // one month from 31 Jan 2024 is 29 Feb (leap year); due at the end of that day in Berlin
    assert_eq!(
        gdpr.deadline,
        Utc.with_ymd_and_hms(2024, 2, 29, 23, 0, 0).unwrap()
    );
    // the consent part of an access request is done; sections without a source are named
    for s in &gdpr.steps {
        if s.name == "collect_consents" {
            assert!(s.finished_at.is_some());
        } else {
            assert!(
                s.last_error.contains("no source") && s.finished_at.is_none(),
                "{s:?}"
            );
        }
    }
    assert_eq!(gdpr.steps.len(), 6);
    let ccpa = h
        .room
        .submit_request(
            WS,
            submit(RequestKind::Erasure, "US-CA", "bo@example.com"),
            jan31,
        )
        .await
        .unwrap();
    // 45 days from 31 Jan (Los Angeles) = 16 Mar 2024, ends at midnight PDT (after the DST change)
    assert_eq!(
        ccpa.deadline,
        Utc.with_ymd_and_hms(2024, 3, 17, 7, 0, 0).unwrap()
    );
    // an erasure starts its saga at once; crypto-shredding is its last step
    assert_eq!(ccpa.status, RequestStatus::InProgress);
    assert_eq!(
        ccpa.steps.last().map(|s| s.name.as_str()),
        Some("crypto_shred")
    );
    let lgpd = h
        .room
        .submit_request(
            WS,
            submit(RequestKind::Restriction, "BR", "cy@example.com"),
            jan31,
        )
        .await
        .unwrap();
    assert_eq!(
        lgpd.deadline,
        Utc.with_ymd_and_hms(2024, 2, 16, 3, 0, 0).unwrap()
    );

    // statuses with reasons, in the audit trail
    let moved = h
        .room
        .set_request_status(
            WS,
            &gdpr.request_id,
            RequestStatus::InProgress,
            "identity verified",
        )
        .await
        .unwrap();
    assert_eq!(moved.history.len(), 2);
    assert_eq!(moved.history[1].reason, "identity verified");
    let err = h
        .room
        .set_request_status(WS, &gdpr.request_id, RequestStatus::Received, "back")
        .await
        .unwrap_err();
    assert!(matches!(err, ConsentError::Conflict(_)));
    // an extension, with its reason
    let ext = h
        .room
        .extend_request(WS, &gdpr.request_id, "complex request", Utc::now())
        .await
        .unwrap();
    assert_eq!(ext.extensions.len(), 1);
    assert_eq!(
        ext.deadline,
        Utc.with_ymd_and_hms(2024, 4, 29, 22, 0, 0).unwrap()
    );
    assert!(
        h.room
            .extend_request(WS, &gdpr.request_id, "again", Utc::now())
            .await
            .is_err()
    );

    // list by status and deadline
    let (received, _) = h
        .room
        .list_requests(
            WS,
            &ListFilter {
                statuses: vec![RequestStatus::Received],
                ..ListFilter::default()
            },
        )
        .await
        .unwrap();
    let ids: Vec<&str> = received.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, [lgpd.request_id.as_str()]);
    let (due_soon, _) = h
        .room
        .list_requests(
            WS,
            &ListFilter {
                deadline_before: Some(Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap()),
                ..ListFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(due_soon.len(), 1);
    let (page, token) = h
        .room
        .list_requests(
            WS,
            &ListFilter {
                page_size: 2,
                ..ListFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 2);
    let (rest, end) = h
        .room
        .list_requests(
            WS,
            &ListFilter {
                page_size: 2,
                page_token: token,
                ..ListFilter::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((rest.len(), end.as_str()), (1, ""));
    // the audit trail is append-only in the database
    let err = h.exec("DELETE FROM dsr_request_history").await.unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

async fn deadlines_follow_month_ends_leap_years_and_dst(h: Harness) {
    let utc = |y, m, d, hh, mm| Utc.with_ymd_and_hms(y, m, d, hh, mm, 0).unwrap();
    let cases = [
        // GDPR, non-leap year: 31 Jan + 1 month = 28 Feb, end of day in Berlin (CET)
        ("EU-DE", utc(2025, 1, 31, 10, 0), utc(2025, 2, 28, 23, 0)),
        // 23:30 UTC on 31 Jan is already 1 Feb in Berlin: the period starts there
        ("EU-DE", utc(2025, 1, 31, 23, 30), utc(2025, 3, 1, 23, 0)),
        // 31 Mar + 1 month clamps to 30 Apr; due midnight CEST (the clocks moved on 30 Mar)
        ("EU-DE", utc(2025, 3, 31, 12, 0), utc(2025, 4, 30, 22, 0)),
        // UK GDPR in London across the spring change: 29 Mar (GMT) -> 29 Apr, midnight BST
        ("GB", utc(2025, 3, 29, 12, 0), utc(2025, 4, 29, 23, 0)),
        // CCPA: 45 days from 1 Oct (PDT) = 15 Nov, due midnight PST (the clocks moved on 2 Nov)
        ("US-CA", utc(2025, 10, 1, 17, 0), utc(2025, 11, 16, 8, 0)),
        // LGPD: 15 days from 14 Feb 2024 = 29 Feb (leap day), midnight in Sao Paulo (UTC-3)
        ("BR", utc(2024, 2, 14, 15, 0), utc(2024, 3, 1, 3, 0)),
    ];
    for (i, (jurisdiction, submitted, due)) in cases.into_iter().enumerate() {
        let r = h
            .room
            .submit_request(
                WS,
                submit(
                    RequestKind::Access,
                    jurisdiction,
                    &format!("p{i}@example.com"),
                ),
                submitted,
            )
            .await
            .unwrap();
        assert_eq!(r.deadline, due, "{jurisdiction} submitted {submitted}");
        assert_eq!(r.submitted_at, submitted);
    }
    let ccpa = h
        .room
        .submit_request(
            WS,
            submit(RequestKind::Access, "US-CA", "ca@example.com"),
            utc(2025, 10, 1, 17, 0),
        )
        .await
        .unwrap();
    assert!(ccpa.confirm_receipt_by.is_some());
    // CCPA extends once by 45 more days: 15 Nov + 45 days = 30 Dec, midnight PST
    let ext = h
        .room
        .extend_request(
            WS,
            &ccpa.request_id,
            "needs records from the archive",
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(ext.deadline, utc(2025, 12, 31, 8, 0));
    assert_eq!(ext.extensions[0].reason, "needs records from the archive");
}

async fn opt_out_requests_become_ledger_entries(h: Harness) {
    let mut req = submit(RequestKind::OptOutSaleSharing, "US-CA", "ana@example.com");
    req.idempotency_key = Some("dsr-1".into());
    let done = h
        .room
        .submit_request(WS, req.clone(), Utc::now())
        .await
        .unwrap();
    assert_eq!(done.status, RequestStatus::Completed);
    assert_eq!(done.history.len(), 2);
    let states = h
        .room
        .current(WS, &email("ana@example.com"), &[], Utc::now())
        .await
        .unwrap();
    assert!(
        states
            .iter()
            .any(|s| s.purpose == "third_party_sharing" && s.decision == Decision::Refused)
    );
    let again = h.room.submit_request(WS, req, Utc::now()).await.unwrap();
    assert_eq!(again.request_id, done.request_id);
    // an access request now returns the consent part of the bundle, the rest pending
    let access = h
        .room
        .submit_request(
            WS,
            submit(RequestKind::Access, "US-CA", "ana@example.com"),
            Utc::now(),
        )
        .await
        .unwrap();
    let bundle = access.access_bundle.unwrap();
    assert_eq!(bundle["complete"], false);
    let current = bundle["consents"]["current"].as_array().unwrap();
    assert!(
        current
            .iter()
            .any(|c| c["purpose"] == "third_party_sharing" && c["decision"] == "refused")
    );
    assert_eq!(
        bundle["consents"]["history"].as_array().unwrap().len(),
        states.len()
    );
    assert!(
        bundle["unavailable"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "events")
    );
    assert!(h.room.verify(WS).await.unwrap().valid);
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $check(pool: PgPool) {
                    super::$check(Harness::new(Store::Postgres(pool)).await).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $check(pool: SqlitePool) {
                    super::$check(Harness::new(Store::Sqlite(pool)).await).await;
                }
            )*
        }
    };
}

conformance!(
    the_database_refuses_updates_and_deletes,
    an_edited_entry_is_named,
    a_deleted_entry_is_named,
    a_truncated_tail_is_detected,
    reordered_entries_are_named,
    inserted_entries_are_named,
    a_rehashed_chain_fails_its_signature,
    segment_boundaries_change_nothing,
    concurrent_appends_keep_one_chain,
    consent_is_recorded_per_purpose_and_read_back,
    consent_expires_and_as_of_answers_the_past,
    idempotency_keys_make_retries_safe,
    signals_become_entries_per_purpose,
    history_pages_through_the_subjects_entries,
    receipts_verify_with_the_public_key,
    erasure_unlinks_the_subject_but_keeps_the_proof,
    requests_get_deadlines_statuses_and_an_audit_trail,
    opt_out_requests_become_ledger_entries,
    deadlines_follow_month_ends_leap_years_and_dst,
);
