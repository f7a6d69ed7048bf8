//! Key-store conformance suite: the same test bodies run against PostgreSQL, SQLite and the
//! in-memory store. PostgreSQL needs `DATABASE_URL` (a missing database fails the tests).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use meridian_vault::{
    IdentifierKind, KeyProvider, KeyRing, KeyStore, LocalKeyFileProvider, MemoryKeyStore,
    PgKeyStore, SqliteKeyStore, SubjectKeyState, Vault, VaultConfig, VaultError, verify,
};

const WS: &str = "ws-a";
const WS_B: &str = "ws-b";
const SETUP: &str = "INSERT INTO workspaces (workspace_id, home_region, time_zone) \
                     VALUES ('ws-a', 'eu', 'Europe/Paris'), ('ws-b', 'us', 'America/New_York')";

fn ring(version: u32, byte: u8) -> Arc<KeyRing> {
    Arc::new(KeyRing::new(version, &[byte; 32]).unwrap())
}

fn vault(provider: Arc<KeyRing>, store: &Arc<dyn KeyStore>) -> Vault {
    Vault::new(provider, store.clone())
}

mod suite {
    use super::*;

    pub(super) async fn round_trip(store: Arc<dyn KeyStore>) {
        let v = vault(ring(1, 1), &store);
        let sealed = v
            .seal(WS, "subj-1", "profile:1", "email", b"ana@example.com")
            .await
            .unwrap();
        assert!(!sealed.windows(15).any(|w| w == b"ana@example.com"));
        let opened = v
            .open(WS, "subj-1", "profile:1", "email", &sealed)
            .await
            .unwrap();
        assert_eq!(opened.as_slice(), b"ana@example.com");
        // A fresh vault (another replica, empty cache) reads the key from the store.
        let other = vault(ring(1, 1), &store);
        assert_eq!(
            other
                .open(WS, "subj-1", "profile:1", "email", &sealed)
                .await
                .unwrap()
                .as_slice(),
            b"ana@example.com"
        );
        // Empty plaintext and large plaintext.
        let empty = v.seal(WS, "subj-1", "r", "f", b"").await.unwrap();
        assert!(
            v.open(WS, "subj-1", "r", "f", &empty)
                .await
                .unwrap()
                .is_empty()
        );
        let big = vec![7u8; 100_000];
        let sealed_big = v.seal(WS, "subj-1", "r", "f", &big).await.unwrap();
        assert_eq!(
            v.open(WS, "subj-1", "r", "f", &sealed_big)
                .await
                .unwrap()
                .as_slice(),
            big.as_slice()
        );
        // Exactly one key per subject in the store, wrapped (not the raw key).
        match store.subject_key(WS, "subj-1").await.unwrap() {
            SubjectKeyState::Active(key) => {
                assert_eq!(key.wrapped.kek_version, 1);
                assert_eq!(key.wrapped.bytes.len(), 12 + 32 + 16);
                assert_eq!(
                    meridian_vault::seal::sealed_key_id(&sealed).unwrap(),
                    key.key_id
                );
            }
            other => panic!("expected an active key, got {other:?}"),
        }
        // Opening for a subject that never had a key.
        assert!(matches!(
            v.open(WS, "nobody", "profile:1", "email", &sealed).await,
            Err(VaultError::NoSubjectKey)
        ));
    }

    pub(super) async fn wrong_aad_fails(store: Arc<dyn KeyStore>) {
        let v = vault(ring(1, 1), &store);
        let sealed = v
            .seal(WS, "subj-1", "profile:1", "email", b"secret")
            .await
            .unwrap();
        assert!(matches!(
            v.open(WS, "subj-1", "profile:2", "email", &sealed).await,
            Err(VaultError::OpenFailed)
        ));
        assert!(matches!(
            v.open(WS, "subj-1", "profile:1", "phone", &sealed).await,
            Err(VaultError::OpenFailed)
        ));
        assert!(matches!(
            v.open(WS, "subj-1", "profile:1", "email ", &sealed).await,
            Err(VaultError::OpenFailed)
        ));
        // Same subject id in another workspace has another key.
        v.seal(WS_B, "subj-1", "x", "y", b"z").await.unwrap();
        assert!(matches!(
            v.open(WS_B, "subj-1", "profile:1", "email", &sealed).await,
            Err(VaultError::KeyMismatch)
        ));
        assert_eq!(
            v.open(WS, "subj-1", "profile:1", "email", &sealed)
                .await
                .unwrap()
                .as_slice(),
            b"secret"
        );
    }

    pub(super) async fn wrong_subject_fails(store: Arc<dyn KeyStore>) {
        let v = vault(ring(1, 1), &store);
        let a = v.seal(WS, "subj-a", "r", "f", b"for a").await.unwrap();
        let b = v.seal(WS, "subj-b", "r", "f", b"for b").await.unwrap();
        assert!(matches!(
            v.open(WS, "subj-b", "r", "f", &a).await,
            Err(VaultError::KeyMismatch)
        ));
        assert!(matches!(
            v.open(WS, "subj-a", "r", "f", &b).await,
            Err(VaultError::KeyMismatch)
        ));
        // Even with the key id rewritten to b's, a's ciphertext does not open under b's key.
        let mut forged = a.clone();
        forged[1..17].copy_from_slice(&b[1..17]);
        assert!(matches!(
            v.open(WS, "subj-b", "r", "f", &forged).await,
            Err(VaultError::OpenFailed)
        ));
    }

    pub(super) async fn flipped_bit_fails(store: Arc<dyn KeyStore>) {
        let v = vault(ring(1, 1), &store);
        let sealed = v
            .seal(WS, "subj-1", "r", "f", b"hello world")
            .await
            .unwrap();
        for byte in 0..sealed.len() {
            for bit in 0..8 {
                let mut tampered = sealed.clone();
                tampered[byte] ^= 1 << bit;
                assert!(
                    v.open(WS, "subj-1", "r", "f", &tampered).await.is_err(),
                    "byte {byte} bit {bit}"
                );
            }
        }
        assert!(
            v.open(WS, "subj-1", "r", "f", &sealed[..sealed.len() - 1])
                .await
                .is_err()
        );
        assert_eq!(
            v.open(WS, "subj-1", "r", "f", &sealed)
                .await
                .unwrap()
                .as_slice(),
            b"hello world"
        );
    }

    pub(super) async fn shredded_subject_unreadable(store: Arc<dyn KeyStore>) {
        let v = vault(ring(1, 1), &store);
        let sealed = v.seal(WS, "subj-1", "r", "f", b"gone soon").await.unwrap();
        let kept = v.seal(WS, "subj-2", "r", "f", b"stays").await.unwrap();
        let receipt = v.forget(WS, "subj-1").await.unwrap();
        assert_eq!(
            (receipt.keys_destroyed, receipt.already_forgotten),
            (1, false)
        );
        // This replica's cache dropped the key.
        assert!(matches!(
            v.open(WS, "subj-1", "r", "f", &sealed).await,
            Err(VaultError::SubjectForgotten)
        ));
        // A fresh replica cannot read it either, and no new key is issued.
        let fresh = vault(ring(1, 1), &store);
        assert!(matches!(
            fresh.open(WS, "subj-1", "r", "f", &sealed).await,
            Err(VaultError::SubjectForgotten)
        ));
        assert!(matches!(
            fresh.seal(WS, "subj-1", "r", "f", b"again").await,
            Err(VaultError::SubjectForgotten)
        ));
        assert_eq!(
            store.subject_key(WS, "subj-1").await.unwrap(),
            SubjectKeyState::Forgotten
        );
        // Forget is idempotent, and works for a subject that never had a key.
        let again = v.forget(WS, "subj-1").await.unwrap();
        assert_eq!((again.keys_destroyed, again.already_forgotten), (0, true));
        let never = v.forget(WS, "subj-never").await.unwrap();
        assert_eq!((never.keys_destroyed, never.already_forgotten), (0, false));
        assert!(matches!(
            v.seal(WS, "subj-never", "r", "f", b"x").await,
            Err(VaultError::SubjectForgotten)
        ));
        // Other subjects are unaffected; the forgotten key is not counted as in use.
        assert_eq!(
            fresh
                .open(WS, "subj-2", "r", "f", &kept)
                .await
                .unwrap()
                .as_slice(),
            b"stays"
        );
        assert_eq!(v.kek_versions_in_use().await.unwrap().get(&1), Some(&1));
    }

    pub(super) async fn forget_reaches_other_replicas(store: Arc<dyn KeyStore>) {
        let a = vault(ring(1, 1), &store);
        let b = vault(ring(1, 1), &store);
        let no_cache = Vault::with_config(
            ring(1, 1),
            store.clone(),
            VaultConfig {
                dek_cache_ttl: Duration::ZERO,
                ..VaultConfig::default()
            },
        );
        let sealed = a.seal(WS, "subj-1", "r", "f", b"x").await.unwrap();
        b.open(WS, "subj-1", "r", "f", &sealed).await.unwrap();
        no_cache
            .open(WS, "subj-1", "r", "f", &sealed)
            .await
            .unwrap();
        a.forget(WS, "subj-1").await.unwrap();
        // Without a cache the forget is seen at once; with one, after the TTL or on eviction.
        assert!(matches!(
            no_cache.open(WS, "subj-1", "r", "f", &sealed).await,
            Err(VaultError::SubjectForgotten)
        ));
        assert!(
            b.open(WS, "subj-1", "r", "f", &sealed).await.is_ok(),
            "b still serves its cached key within the TTL"
        );
        b.evict_subject(WS, "subj-1");
        assert!(matches!(
            b.open(WS, "subj-1", "r", "f", &sealed).await,
            Err(VaultError::SubjectForgotten)
        ));
    }

    pub(super) async fn concurrent_first_seal_converges(store: Arc<dyn KeyStore>) {
        let a = vault(ring(1, 1), &store);
        let b = vault(ring(1, 1), &store);
        for i in 0..10 {
            let subject = format!("race-{i}");
            let (x, y) = tokio::join!(
                a.seal(WS, &subject, "r", "f", b"from a"),
                b.seal(WS, &subject, "r", "f", b"from b")
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            // Whoever won, both replicas use the single stored key.
            assert_eq!(
                b.open(WS, &subject, "r", "f", &x).await.unwrap().as_slice(),
                b"from a"
            );
            assert_eq!(
                a.open(WS, &subject, "r", "f", &y).await.unwrap().as_slice(),
                b"from b"
            );
        }
    }

    pub(super) async fn forget_racing_first_seal_leaves_no_key(store: Arc<dyn KeyStore>) {
        let a = vault(ring(1, 1), &store);
        let b = vault(ring(1, 1), &store);
        for i in 0..20 {
            let subject = format!("race-{i}");
            let (sealed, forgot) =
                tokio::join!(a.seal(WS, &subject, "r", "f", b"x"), b.forget(WS, &subject));
            forgot.unwrap();
            match sealed {
                Ok(_) | Err(VaultError::SubjectForgotten) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
            assert_eq!(
                store.subject_key(WS, &subject).await.unwrap(),
                SubjectKeyState::Forgotten,
                "{subject}"
            );
        }
    }

    pub(super) async fn rotation_keeps_everything_readable(store: Arc<dyn KeyStore>) {
        let provider = ring(1, 1);
        let v = vault(provider.clone(), &store);
        let mut sealed = Vec::new();
        for i in 0..25 {
            let subject = format!("subj-{i:02}");
            let c = v
                .seal(
                    WS,
                    &subject,
                    "r",
                    "email",
                    format!("user{i}@example.com").as_bytes(),
                )
                .await
                .unwrap();
            sealed.push((subject, c));
        }
        let index = v
            .blind_index(WS, IdentifierKind::Email, "Ana@Example.com", None)
            .await
            .unwrap();
        let public = v.signing_public_key(WS).await.unwrap();
        let signature = v.sign(WS, b"ledger entry 1").await.unwrap();
        v.forget(WS, "subj-00").await.unwrap();

        provider.add_current(2, &[2; 32]).unwrap();
        let report = v.rotate_kek().await.unwrap();
        assert_eq!(report.to_version, 2);
        assert_eq!(report.subject_keys_rewrapped, 24);
        assert_eq!(report.workspace_keys_rewrapped, 2);
        assert_eq!(report.failed, 0);
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(
            report.versions_in_use.into_iter().collect::<Vec<_>>(),
            vec![(2, 26)]
        );
        // Re-running finds nothing left to do.
        let again = v.rotate_kek().await.unwrap();
        assert_eq!(
            again.subject_keys_rewrapped + again.workspace_keys_rewrapped,
            0
        );

        // The current version cannot be retired; the old one can, and then only v2 exists.
        assert!(matches!(
            v.retire_kek(2).await,
            Err(VaultError::KekInUse { current: true, .. })
        ));
        v.retire_kek(1).await.unwrap();
        assert_eq!(provider.versions(), vec![2]);

        // A fresh replica with only the new KEK reads everything sealed before the rotation.
        let fresh = vault(ring(2, 2), &store);
        for (subject, c) in &sealed[1..] {
            let i: usize = subject[5..].parse().unwrap();
            assert_eq!(
                fresh
                    .open(WS, subject, "r", "email", c)
                    .await
                    .unwrap()
                    .as_slice(),
                format!("user{i}@example.com").as_bytes()
            );
        }
        assert!(matches!(
            fresh
                .open(WS, &sealed[0].0, "r", "email", &sealed[0].1)
                .await,
            Err(VaultError::SubjectForgotten)
        ));
        assert_eq!(
            fresh
                .blind_index(WS, IdentifierKind::Email, "ana@example.com", None)
                .await
                .unwrap(),
            index
        );
        assert_eq!(fresh.signing_public_key(WS).await.unwrap(), public);
        fresh
            .verify(WS, b"ledger entry 1", &signature)
            .await
            .unwrap();
        // A replica holding only the retired KEK can no longer unwrap anything.
        let stale = vault(ring(1, 1), &store);
        assert!(matches!(
            stale
                .open(WS, &sealed[1].0, "r", "email", &sealed[1].1)
                .await,
            Err(VaultError::KeyProvider(_))
        ));
    }

    pub(super) async fn rotation_reports_unreadable_keys(store: Arc<dyn KeyStore>) {
        let v = vault(ring(1, 1), &store);
        for i in 0..3 {
            v.seal(WS, &format!("s{i}"), "r", "f", b"x").await.unwrap();
        }
        // A provider that lacks v1 cannot re-wrap: the report says so and v1 stays in use.
        let lost = vault(ring(3, 3), &store);
        let report = lost.rotate_kek().await.unwrap();
        assert_eq!((report.subject_keys_rewrapped, report.failed), (0, 3));
        assert!(!report.is_complete());
        assert!(matches!(
            lost.retire_kek(1).await,
            Err(VaultError::KekInUse {
                keys: 3,
                current: false,
                ..
            })
        ));
    }

    pub(super) async fn rotation_pages_through_many_keys(store: Arc<dyn KeyStore>) {
        let provider = ring(1, 1);
        let v = Vault::with_config(
            provider.clone(),
            store.clone(),
            VaultConfig {
                rotation_batch: 7,
                ..VaultConfig::default()
            },
        );
        for ws in [WS, WS_B] {
            for i in 0..30 {
                v.seal(ws, &format!("s{i:03}"), "r", "f", b"x")
                    .await
                    .unwrap();
            }
            v.blind_index(ws, IdentifierKind::DeviceId, "d", None)
                .await
                .unwrap();
        }
        provider.add_current(2, &[2; 32]).unwrap();
        let report = v.rotate_kek().await.unwrap();
        assert_eq!(
            (
                report.subject_keys_rewrapped,
                report.workspace_keys_rewrapped
            ),
            (60, 2)
        );
        assert!(report.is_complete());
    }

    pub(super) async fn local_key_file_rotation_flow(store: Arc<dyn KeyStore>) {
        // What `meridian keys rotate-kek` does in embedded mode.
        let dir = tempfile::tempdir().unwrap();
        let provider = Arc::new(LocalKeyFileProvider::open_or_create(dir.path()).unwrap());
        let v = Vault::new(provider.clone(), store.clone());
        let sealed = v
            .seal(WS, "subj-1", "r", "f", b"kept across rotation")
            .await
            .unwrap();
        let index = v
            .blind_index(WS, IdentifierKind::Email, "a@b.c", None)
            .await
            .unwrap();
        assert_eq!(provider.rotate().unwrap(), 2);
        let report = v.rotate_kek().await.unwrap();
        assert!(report.is_complete(), "{report:?}");
        v.retire_kek(1).await.unwrap();
        assert!(!dir.path().join("keys/kek-v1.key").exists());
        drop(v);
        // After a restart: only kek-v2 on disk, everything readable.
        let reopened = Arc::new(LocalKeyFileProvider::open_or_create(dir.path()).unwrap());
        assert_eq!(reopened.versions(), vec![2]);
        let v = Vault::new(reopened, store.clone());
        assert_eq!(
            v.open(WS, "subj-1", "r", "f", &sealed)
                .await
                .unwrap()
                .as_slice(),
            b"kept across rotation"
        );
        assert_eq!(
            v.blind_index(WS, IdentifierKind::Email, "A@B.C", None)
                .await
                .unwrap(),
            index
        );
    }

    pub(super) async fn replace_wrapping_is_compare_and_swap(store: Arc<dyn KeyStore>) {
        let provider = ring(1, 1);
        let v = vault(provider.clone(), &store);
        v.seal(WS, "s1", "r", "f", b"x").await.unwrap();
        v.seal(WS, "s2", "r", "f", b"x").await.unwrap();
        v.blind_index(WS, IdentifierKind::DeviceId, "d", None)
            .await
            .unwrap();
        let rows = store.subject_keys_to_rewrap(2, ("", ""), 10).await.unwrap();
        assert_eq!(
            rows.iter()
                .map(|r| r.subject_id.as_str())
                .collect::<Vec<_>>(),
            vec!["s1", "s2"]
        );
        let after_first = store
            .subject_keys_to_rewrap(2, (WS, "s1"), 10)
            .await
            .unwrap();
        assert_eq!(after_first.len(), 1, "the cursor is exclusive");
        provider.add_current(2, &[2; 32]).unwrap();
        let new = provider.wrap_key(b"whatever", b"ctx").await.unwrap();
        // s1 is forgotten between listing and replacing: the swap must not resurrect it.
        v.forget(WS, "s1").await.unwrap();
        assert!(
            !store
                .replace_subject_wrapping(&rows[0], &new)
                .await
                .unwrap()
        );
        assert_eq!(
            store.subject_key(WS, "s1").await.unwrap(),
            SubjectKeyState::Forgotten
        );
        assert!(
            store
                .replace_subject_wrapping(&rows[1], &new)
                .await
                .unwrap()
        );
        assert!(
            !store
                .replace_subject_wrapping(&rows[1], &new)
                .await
                .unwrap(),
            "stale row no longer matches"
        );
        let ws_rows = store
            .workspace_keys_to_rewrap(2, ("", "", 0), 10)
            .await
            .unwrap();
        assert_eq!(ws_rows.len(), 1);
        assert!(
            store
                .replace_workspace_wrapping(&ws_rows[0], &new)
                .await
                .unwrap()
        );
        assert!(
            !store
                .replace_workspace_wrapping(&ws_rows[0], &new)
                .await
                .unwrap()
        );
        assert_eq!(
            store
                .kek_versions_in_use()
                .await
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![(2, 2)]
        );
    }

    pub(super) async fn signing_keys_are_per_workspace_and_survive_forget(
        store: Arc<dyn KeyStore>,
    ) {
        let v = vault(ring(1, 1), &store);
        let pk_a = v.signing_public_key(WS).await.unwrap();
        let pk_b = v.signing_public_key(WS_B).await.unwrap();
        assert_ne!(pk_a.bytes, pk_b.bytes);
        let sig = v.sign(WS, b"entry").await.unwrap();
        verify(&pk_a, b"entry", &sig).unwrap();
        assert!(matches!(
            verify(&pk_b, b"entry", &sig),
            Err(VaultError::BadSignature)
        ));
        assert!(matches!(
            verify(&pk_a, b"entry!", &sig),
            Err(VaultError::BadSignature)
        ));
        // The public key is stored in clear beside the wrapped private key.
        let stored = store
            .workspace_key(WS, meridian_vault::WorkspaceKeyPurpose::LedgerSigning)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.public_key.as_deref(), Some(pk_a.bytes.as_slice()));
        v.seal(WS, "subj-1", "r", "f", b"x").await.unwrap();
        v.forget(WS, "subj-1").await.unwrap();
        let fresh = vault(ring(1, 1), &store);
        assert_eq!(fresh.signing_public_key(WS).await.unwrap(), pk_a);
        fresh.verify(WS, b"entry", &sig).await.unwrap();
        verify(&pk_a, b"entry", &fresh.sign(WS, b"entry").await.unwrap()).unwrap();
    }

    pub(super) async fn blind_indexes_are_stable_per_workspace(store: Arc<dyn KeyStore>) {
        let v = vault(ring(1, 1), &store);
        let a = v
            .blind_index(WS, IdentifierKind::Email, " Ana@Example.COM ", None)
            .await
            .unwrap();
        let fresh = vault(ring(1, 1), &store);
        assert_eq!(
            fresh
                .blind_index(WS, IdentifierKind::Email, "ana@example.com", None)
                .await
                .unwrap(),
            a
        );
        assert_ne!(
            v.blind_index(WS_B, IdentifierKind::Email, "ana@example.com", None)
                .await
                .unwrap(),
            a
        );
        let p1 = v
            .blind_index(WS, IdentifierKind::Phone, "06 12 34 56 78", Some("FR"))
            .await
            .unwrap();
        let p2 = fresh
            .blind_index(WS, IdentifierKind::Phone, "+33612345678", Some("US"))
            .await
            .unwrap();
        assert_eq!(p1, p2);
        assert!(matches!(
            v.blind_index(WS, IdentifierKind::Email, "not-an-email", None)
                .await,
            Err(VaultError::InvalidIdentifier { kind: "email", .. })
        ));
    }

    pub(super) async fn batch_keys_match_single_keys(store: Arc<dyn KeyStore>) {
        let a = vault(ring(1, 1), &store);
        // One subject known before, the rest new; duplicates in the request; more than one
        // statement's worth of subjects.
        let before = a.seal(WS, "batch-0", "r", "f", b"before").await.unwrap();
        let names: Vec<String> = (0..1_203).map(|i| format!("batch-{}", i % 1_201)).collect();
        let subjects: Vec<&str> = names.iter().map(String::as_str).collect();
        let keys = a.subject_keys(WS, &subjects).await.unwrap();
        assert_eq!(keys.len(), subjects.len());
        assert_eq!(
            keys[0].open("r", "f", &before).unwrap().as_slice(),
            b"before",
            "an existing subject keeps its key"
        );
        // Every key is the stored one: another replica (empty cache) opens what each sealed.
        let b = vault(ring(1, 1), &store);
        for (i, key) in keys.iter().enumerate().step_by(97) {
            let sealed = key.seal("r", "f", subjects[i].as_bytes()).unwrap();
            assert_eq!(
                b.open(WS, subjects[i], "r", "f", &sealed)
                    .await
                    .unwrap()
                    .as_slice(),
                subjects[i].as_bytes()
            );
        }
        // Asking again creates nothing new: the same keys open the same values.
        let again = b.subject_keys(WS, &subjects[..5]).await.unwrap();
        let sealed = keys[3].seal("r", "f", b"x").unwrap();
        assert_eq!(again[3].open("r", "f", &sealed).unwrap().as_slice(), b"x");
        // A forgotten subject fails the batch.
        a.forget(WS, "batch-7").await.unwrap();
        let fresh = vault(ring(1, 1), &store);
        assert!(matches!(
            fresh.subject_keys(WS, &["batch-6", "batch-7"]).await,
            Err(VaultError::SubjectForgotten)
        ));
    }

    pub(super) async fn concurrent_batch_keys_converge(store: Arc<dyn KeyStore>) {
        let a = vault(ring(1, 1), &store);
        let b = vault(ring(1, 1), &store);
        let names: Vec<String> = (0..50).map(|i| format!("cbatch-{i}")).collect();
        let subjects: Vec<&str> = names.iter().map(String::as_str).collect();
        let (x, y) = tokio::join!(
            a.subject_keys(WS, &subjects),
            b.subject_keys(WS, &subjects[10..])
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        for (i, key) in y.iter().enumerate() {
            let sealed = key.seal("r", "f", b"from b").unwrap();
            assert_eq!(
                x[i + 10].open("r", "f", &sealed).unwrap().as_slice(),
                b"from b",
                "both replicas hold the one stored key of {}",
                subjects[i + 10]
            );
        }
    }

    pub(super) async fn identifier_subjects_are_stable_and_renewed_after_forget(
        store: Arc<dyn KeyStore>,
    ) {
        let a = vault(ring(1, 1), &store);
        let email = a
            .blind_index(WS, IdentifierKind::Email, "ana@example.com", None)
            .await
            .unwrap();
        let phone = a
            .blind_index(WS, IdentifierKind::Phone, "+33612345678", None)
            .await
            .unwrap();
        let first = a
            .identifier_subjects(WS, &[email, phone, email])
            .await
            .unwrap();
        assert_eq!(first[0], first[2]);
        assert_ne!(first[0], first[1]);
        // Stable across replicas and workspaces are separate.
        let b = vault(ring(1, 1), &store);
        assert_eq!(
            b.identifier_subjects(WS, &[phone]).await.unwrap()[0],
            first[1]
        );
        let other_ws = b.identifier_subjects(WS_B, &[email]).await.unwrap();
        assert_ne!(other_ws[0], first[0]);
        // Sealed under the identifier's subject, then the identifier is forgotten.
        let sealed = a
            .seal(WS, &first[0], "event:1", "properties", b"secret")
            .await
            .unwrap();
        let receipt = b.forget_identifier(WS, &email).await.unwrap();
        assert_eq!(receipt.keys_destroyed, 1);
        assert!(matches!(
            b.open(WS, &first[0], "event:1", "properties", &sealed)
                .await,
            Err(VaultError::SubjectForgotten)
        ));
        // Idempotent; the other identifier is untouched.
        assert!(
            b.forget_identifier(WS, &email)
                .await
                .unwrap()
                .already_forgotten
        );
        assert_eq!(
            b.identifier_subjects(WS, &[phone]).await.unwrap()[0],
            first[1]
        );
        // Seen again after erasure: a new subject, usable.
        let renewed = b.identifier_subjects(WS, &[email]).await.unwrap();
        assert_ne!(renewed[0], first[0]);
        let keys = b.subject_keys(WS, &[renewed[0].as_str()]).await.unwrap();
        let again = keys[0].seal("event:2", "properties", b"new").unwrap();
        assert_eq!(
            a.open(WS, &renewed[0], "event:2", "properties", &again)
                .await
                .unwrap()
                .as_slice(),
            b"new"
        );
    }

    /// Identifier subjects are cached like data keys: served from memory within the TTL,
    /// dropped at once by a forget on this replica or by `evict_subject`, and renewed by
    /// `identifier_subject_keys` when another replica forgot them meanwhile.
    pub(super) async fn identifier_subjects_are_cached_until_forgotten(store: Arc<dyn KeyStore>) {
        let a = vault(ring(1, 1), &store);
        let b = vault(ring(1, 1), &store);
        let index = |n: u32| {
            let a = &a;
            async move {
                a.blind_index(
                    WS,
                    IdentifierKind::Email,
                    &format!("c{n}@example.com"),
                    None,
                )
                .await
                .unwrap()
            }
        };
        let (cached, shredded, local, evicted) = (
            index(1).await,
            index(2).await,
            index(3).await,
            index(4).await,
        );

        // Served from memory: the record is gone from the store behind `a`'s back (only a
        // forget does that, and a forget elsewhere is seen within the TTL), `a` still
        // answers with the subject it read, while a replica without the cache allocates a
        // new one. With the cache off, `a` would see the store.
        let first = a.identifier_subjects(WS, &[cached]).await.unwrap()[0].clone();
        assert!(
            store
                .delete_identifier_subject(WS, &cached.0, &first)
                .await
                .unwrap()
        );
        assert_eq!(
            a.identifier_subjects(WS, &[cached]).await.unwrap()[0],
            first
        );
        let uncached = Vault::with_config(
            ring(1, 1),
            store.clone(),
            VaultConfig {
                dek_cache_ttl: Duration::ZERO,
                ..VaultConfig::default()
            },
        );
        let fresh = uncached.identifier_subjects(WS, &[cached]).await.unwrap()[0].clone();
        assert_ne!(fresh, first);
        assert_eq!(
            uncached.identifier_subjects(WS, &[cached]).await.unwrap()[0],
            fresh
        );

        // Forgotten on another replica while `a` had the subject cached (but not its key):
        // `identifier_subject_keys` finds the key destroyed, asks again, and gets a new,
        // usable subject.
        let old = a.identifier_subjects(WS, &[shredded]).await.unwrap()[0].clone();
        b.forget_identifier(WS, &shredded).await.unwrap();
        let renewed = a
            .identifier_subject_keys(WS, &[shredded, shredded])
            .await
            .unwrap();
        assert_ne!(renewed[0].0, old);
        assert_eq!(renewed[0].0, renewed[1].0);
        assert_eq!(
            b.identifier_subjects(WS, &[shredded]).await.unwrap()[0],
            renewed[0].0
        );
        let sealed = renewed[0]
            .1
            .seal("event:1", "body", b"after erasure")
            .unwrap();
        assert_eq!(
            b.open(WS, &renewed[0].0, "event:1", "body", &sealed)
                .await
                .unwrap()
                .as_slice(),
            b"after erasure"
        );

        // Forgotten on this replica: the next lookup allocates a new subject at once.
        let mine = a.identifier_subject_keys(WS, &[local]).await.unwrap()[0]
            .0
            .clone();
        a.forget_identifier(WS, &local).await.unwrap();
        let after = a.identifier_subjects(WS, &[local]).await.unwrap()[0].clone();
        assert_ne!(after, mine);

        // Key and subject both cached here, forgotten elsewhere: the erasure event's
        // `evict_subject` closes the window at once.
        let held = a.identifier_subject_keys(WS, &[evicted]).await.unwrap()[0]
            .0
            .clone();
        b.forget_identifier(WS, &evicted).await.unwrap();
        a.evict_subject(WS, &held);
        let next = a.identifier_subject_keys(WS, &[evicted]).await.unwrap();
        assert_ne!(next[0].0, held);
        assert_eq!(
            b.identifier_subjects(WS, &[evicted]).await.unwrap()[0],
            next[0].0
        );
    }

    pub(super) async fn concurrent_identifier_subjects_converge(store: Arc<dyn KeyStore>) {
        let a = vault(ring(1, 1), &store);
        let b = vault(ring(1, 1), &store);
        let mut indexes = Vec::new();
        for i in 0..40 {
            indexes.push(
                a.blind_index(
                    WS,
                    IdentifierKind::Email,
                    &format!("u{i}@example.com"),
                    None,
                )
                .await
                .unwrap(),
            );
        }
        let (x, y) = tokio::join!(
            a.identifier_subjects(WS, &indexes),
            b.identifier_subjects(WS, &indexes[20..])
        );
        assert_eq!(&x.unwrap()[20..], &y.unwrap()[..]);
    }
}

async fn pg(pool: sqlx::PgPool) -> Arc<dyn KeyStore> {
    sqlx::query(SETUP).execute(&pool).await.unwrap();
    Arc::new(PgKeyStore::new(pool))
}

async fn lite(pool: sqlx::SqlitePool) -> Arc<dyn KeyStore> {
    sqlx::query(SETUP).execute(&pool).await.unwrap();
    Arc::new(SqliteKeyStore::new(pool))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/postgres")]
                async fn $name(pool: sqlx::PgPool) {
                    suite::$name(pg(pool).await).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[sqlx::test(migrations = "../../migrations/sqlite")]
                async fn $name(pool: sqlx::SqlitePool) {
                    suite::$name(lite(pool).await).await;
                }
            )*
        }
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    suite::$name(Arc::new(MemoryKeyStore::new())).await;
                }
            )*
        }
    };
}

conformance!(
    round_trip,
    wrong_aad_fails,
    wrong_subject_fails,
    flipped_bit_fails,
    shredded_subject_unreadable,
    forget_reaches_other_replicas,
    concurrent_first_seal_converges,
    forget_racing_first_seal_leaves_no_key,
    rotation_keeps_everything_readable,
    rotation_reports_unreadable_keys,
    rotation_pages_through_many_keys,
    local_key_file_rotation_flow,
    replace_wrapping_is_compare_and_swap,
    signing_keys_are_per_workspace_and_survive_forget,
    blind_indexes_are_stable_per_workspace,
    batch_keys_match_single_keys,
    concurrent_batch_keys_converge,
    identifier_subjects_are_stable_and_renewed_after_forget,
    identifier_subjects_are_cached_until_forgotten,
    concurrent_identifier_subjects_converge,
);

// The relational stores refuse keys for a workspace that does not exist. On PostgreSQL the
// subject key and identifier subject tables have no foreign key to `workspaces` (migration
// 0023): the store checks the workspace before writing there, on every write path.
#[sqlx::test(migrations = "../../migrations/postgres")]
async fn postgres_unknown_workspace(pool: sqlx::PgPool) {
    let v = vault(ring(1, 1), &pg(pool.clone()).await);
    assert!(matches!(
        v.seal("nope", "s", "r", "f", b"x").await,
        Err(VaultError::UnknownWorkspace)
    ));
    assert!(matches!(
        v.subject_keys("nope", &["s1", "s2"]).await,
        Err(VaultError::UnknownWorkspace)
    ));
    assert!(matches!(
        v.blind_index("nope", IdentifierKind::DeviceId, "d", None)
            .await,
        Err(VaultError::UnknownWorkspace)
    ));
    // A blind index made in a real workspace, asked for in the unknown one.
    let index = v
        .blind_index(WS, IdentifierKind::DeviceId, "d", None)
        .await
        .unwrap();
    assert!(matches!(
        v.identifier_subjects("nope", std::slice::from_ref(&index))
            .await,
        Err(VaultError::UnknownWorkspace)
    ));
    assert!(matches!(
        v.forget("nope", "s").await,
        Err(VaultError::UnknownWorkspace)
    ));
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM vault_subject_keys WHERE workspace_id = 'nope') \
              + (SELECT COUNT(*) FROM vault_identifier_subjects WHERE workspace_id = 'nope')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rows, 0, "nothing was written for the unknown workspace");

    // A refusal is not remembered: the workspace, once created, takes keys.
    sqlx::query(
        "INSERT INTO workspaces (workspace_id, home_region, time_zone) \
         VALUES ('nope', 'eu', 'Europe/Paris')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let sealed = v.seal("nope", "s", "r", "f", b"x").await.unwrap();
    let opened = v.open("nope", "s", "r", "f", &sealed).await.unwrap();
    assert_eq!(opened.as_slice(), b"x");
    assert_eq!(
        v.identifier_subjects("nope", &[index]).await.unwrap().len(),
        1
    );
}

// PostgreSQL inserts a batch of new subjects through one statement text whatever its size:
// a statement per size was parsed and planned again each time, and crowded the connection's
// statement cache.
#[sqlx::test(migrations = "../../migrations/postgres")]
async fn postgres_batch_inserts_are_one_statement_whatever_the_size(pool: sqlx::PgPool) {
    // One connection, so that every statement is prepared on the backend asked below.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap();
    let store = pg(one.clone()).await;
    let v = vault(ring(1, 1), &store);
    let mut created = 0;
    for size in [1, 2, 3, 5, 8] {
        let names: Vec<String> = (0..size).map(|i| format!("size-{size}-{i}")).collect();
        let subjects: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(v.subject_keys(WS, &subjects).await.unwrap().len(), size);
        let mut indexes = Vec::new();
        for name in &names {
            indexes.push(
                v.blind_index(WS, IdentifierKind::DeviceId, name, None)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            v.identifier_subjects(WS, &indexes).await.unwrap().len(),
            size
        );
        created += size;
    }
    let stored: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM vault_identifier_subjects) \
         + (SELECT COUNT(*) FROM vault_subject_keys WHERE subject_id LIKE 'size-%')",
    )
    .fetch_one(&one)
    .await
    .unwrap();
    // Every identifier got a subject of its own: as many again as the named subjects.
    assert_eq!(stored, 2 * i64::try_from(created).unwrap());
    let prepared: Vec<String> = sqlx::query_scalar(
        "SELECT statement FROM pg_prepared_statements \
         WHERE statement LIKE 'INSERT INTO vault_subject_keys%' \
            OR statement LIKE 'INSERT INTO vault_identifier_subjects%' ORDER BY statement",
    )
    .fetch_all(&one)
    .await
    .unwrap();
    assert_eq!(
        prepared.len(),
        2,
        "one insert statement per table, whatever the batch size: {prepared:#?}"
    );
}

#[sqlx::test(migrations = "../../migrations/sqlite")]
async fn sqlite_unknown_workspace(pool: sqlx::SqlitePool) {
    let v = vault(ring(1, 1), &lite(pool).await);
    assert!(matches!(
        v.seal("nope", "s", "r", "f", b"x").await,
        Err(VaultError::UnknownWorkspace)
    ));
    assert!(matches!(
        v.blind_index("nope", IdentifierKind::DeviceId, "d", None)
            .await,
        Err(VaultError::UnknownWorkspace)
    ));
    assert!(matches!(
        v.forget("nope", "s").await,
        Err(VaultError::UnknownWorkspace)
    ));
}

// The key provider is a trait object: the vault works with any implementation.
#[test]
fn provider_is_object_safe() {
    let p: Arc<dyn KeyProvider> = ring(4, 4);
    assert_eq!(p.current_version(), 4);
}
