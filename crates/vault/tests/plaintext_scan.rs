//! Plaintext scan: write 1,000 generated identities through the vault (sealed fields and blind
//! indexes in a room-like table, keys in the vault's tables), then dump every table of the
//! database and every captured log line: no email, phone or name appears, in any form.
//! Runs against PostgreSQL and SQLite.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};

use meridian_vault::testing::{LogCapture, TableDump, dump_postgres, dump_sqlite, find_plaintext};
use meridian_vault::{IdentifierKind, KeyRing, KeyStore, PgKeyStore, SqliteKeyStore, Vault};
use sqlx::{PgPool, SqlitePool};

const WS: &str = "ws-scan";
const CANARY: &str = "control.canary@example.org";

fn logs() -> &'static LogCapture {
    static LOGS: OnceLock<LogCapture> = OnceLock::new();
    LOGS.get_or_init(|| {
        let capture = LogCapture::new();
        assert!(
            capture.install_global(),
            "no other subscriber in this test binary"
        );
        capture
    })
}

struct Identity {
    subject: String,
    email: String,
    phone: String,
    region: &'static str,
    name: String,
    /// Every plaintext form that must never appear.
    needles: Vec<String>,
}

const FIRST: [&str; 16] = [
    "Amélie",
    "Bartholomew",
    "Chiara",
    "Dmitri",
    "Élodie",
    "Fernanda",
    "Gunnar",
    "Hiroko",
    "Ingrid",
    "Joaquín",
    "Kasimir",
    "Ludovica",
    "Maximilian",
    "Noémie",
    "Oluwaseun",
    "Perpetua",
];
const LAST: [&str; 16] = [
    "Abernathy",
    "Bergström",
    "Castellanos",
    "Dubrovnik",
    "Eichhorn",
    "Fitzgerald",
    "Gallagher",
    "Hernández",
    "Ivanenko",
    "Jankowski",
    "Kowalczyk",
    "Lindqvist",
    "Montgomery",
    "Nakamura",
    "Oyelaran",
    "Pellegrini",
];

fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'é' | 'É' => 'e',
            'ö' => 'o',
            'í' => 'i',
            c => c,
        })
        .collect()
}

fn identities(n: usize) -> Vec<Identity> {
    (0..n)
        .map(|i| {
            let first = FIRST[i % FIRST.len()];
            let last = LAST[(i / FIRST.len() + i) % LAST.len()];
            let name = format!("{first} {last}");
            let email = format!(
                "{}.{}.{i:04}@Mail-{}.Example.com",
                ascii(first),
                ascii(last),
                i % 7
            );
            let (phone, region, e164) = match i % 3 {
                0 => {
                    let d = format!("{:08}", 12_340_000 + i * 7);
                    (
                        format!("06 {} {} {} {}", &d[0..2], &d[2..4], &d[4..6], &d[6..8]),
                        "FR",
                        format!("+336{d}"),
                    )
                }
                1 => {
                    let d = format!("{:04}", 1000 + i);
                    (format!("(415) 555-{d}"), "US", format!("+1415555{d}"))
                }
                _ => {
                    let d = format!("{:07}", 3_000_000 + i * 3);
                    (format!("+49 30 {d}"), "DE", format!("+4930{d}"))
                }
            };
            let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
            let needles = vec![
                email.clone(),
                email.to_lowercase(),
                email.split('@').next().unwrap().to_owned(),
                phone.clone(),
                e164.clone(),
                digits,
                e164.trim_start_matches('+').to_owned(),
                name.clone(),
                format!("{last}, {first}"),
            ];
            Identity {
                subject: format!("subject-{i:04}"),
                email,
                phone,
                region,
                name,
                needles,
            }
        })
        .collect()
}

enum Db {
    Pg(PgPool),
    Lite(SqlitePool),
}

const SETUP: &str = "INSERT INTO workspaces (workspace_id, home_region, time_zone) VALUES ('ws-scan', 'eu', 'Europe/Paris')";
const PROFILES: &str = "CREATE TABLE scan_profiles (workspace_id TEXT NOT NULL, subject_id TEXT NOT NULL, \
    email_bi BYTEA NOT NULL, phone_bi BYTEA NOT NULL, email_sealed BYTEA NOT NULL, phone_sealed BYTEA NOT NULL, \
    name_sealed BYTEA NOT NULL)";
const INSERT: &str = "INSERT INTO scan_profiles VALUES ($1, $2, $3, $4, $5, $6, $7)";
const CONTROL: &str = "CREATE TABLE scan_control (note TEXT, data BYTEA)";
const INSERT_CONTROL: &str = "INSERT INTO scan_control VALUES ($1, $2)";

impl Db {
    async fn exec(&self, sql: &str) {
        match self {
            Db::Pg(p) => {
                sqlx::query(sql).execute(p).await.unwrap();
            }
            Db::Lite(p) => {
                sqlx::query(&sql.replace("BYTEA", "BLOB"))
                    .execute(p)
                    .await
                    .unwrap();
            }
        }
    }

    async fn insert(&self, sql: &str, texts: &[&str], blobs: &[&[u8]]) {
        match self {
            Db::Pg(p) => {
                let mut q = sqlx::query(sql);
                for t in texts {
                    q = q.bind(*t);
                }
                for b in blobs {
                    q = q.bind(*b);
                }
                q.execute(p).await.unwrap();
            }
            Db::Lite(p) => {
                let sql = sql.replace('$', "?");
                let mut q = sqlx::query(&sql);
                for t in texts {
                    q = q.bind(*t);
                }
                for b in blobs {
                    q = q.bind(*b);
                }
                q.execute(p).await.unwrap();
            }
        }
    }

    fn store(&self) -> Arc<dyn KeyStore> {
        match self {
            Db::Pg(p) => Arc::new(PgKeyStore::new(p.clone())),
            Db::Lite(p) => Arc::new(SqliteKeyStore::new(p.clone())),
        }
    }

    async fn dump(&self) -> TableDump {
        match self {
            Db::Pg(p) => dump_postgres(p).await.unwrap(),
            Db::Lite(p) => dump_sqlite(p).await.unwrap(),
        }
    }
}

async fn scan(db: Db) {
    let logs = logs();
    db.exec(SETUP).await;
    db.exec(PROFILES).await;
    let vault = Vault::new(Arc::new(KeyRing::generate(1).unwrap()), db.store());
    let people = identities(1000);

    for person in &people {
        let key = vault.subject_key(WS, &person.subject).await.unwrap();
        let record = format!("profile:{}", person.subject);
        let email_bi = vault
            .blind_index(WS, IdentifierKind::Email, &person.email, None)
            .await
            .unwrap();
        let phone_bi = vault
            .blind_index(
                WS,
                IdentifierKind::Phone,
                &person.phone,
                Some(person.region),
            )
            .await
            .unwrap();
        let email = key.seal(&record, "email", person.email.as_bytes()).unwrap();
        let phone = key.seal(&record, "phone", person.phone.as_bytes()).unwrap();
        let name = key.seal(&record, "name", person.name.as_bytes()).unwrap();
        db.insert(
            INSERT,
            &[WS, &person.subject],
            &[
                email_bi.as_bytes(),
                phone_bi.as_bytes(),
                &email,
                &phone,
                &name,
            ],
        )
        .await;
        // Errors about bad input are logged the way a service would; they must not echo it.
        if let Err(error) = vault
            .blind_index(
                WS,
                IdentifierKind::Email,
                &format!("{} x", person.email),
                None,
            )
            .await
        {
            tracing::warn!(%error, ?error, "rejected identifier");
        } else {
            panic!("an email with a space must be rejected");
        }
    }
    // Sanity: what was written opens again.
    let first = &people[0];
    let sealed: Vec<u8> = match &db {
        Db::Pg(p) => {
            sqlx::query_scalar("SELECT name_sealed FROM scan_profiles WHERE subject_id = $1")
                .bind(&first.subject)
                .fetch_one(p)
                .await
                .unwrap()
        }
        Db::Lite(p) => {
            sqlx::query_scalar("SELECT name_sealed FROM scan_profiles WHERE subject_id = ?1")
                .bind(&first.subject)
                .fetch_one(p)
                .await
                .unwrap()
        }
    };
    let opened = vault
        .open(
            WS,
            &first.subject,
            &format!("profile:{}", first.subject),
            "name",
            &sealed,
        )
        .await
        .unwrap();
    assert_eq!(opened.as_slice(), first.name.as_bytes());
    for person in &people[..10] {
        vault.forget(WS, &person.subject).await.unwrap();
    }
    vault.sign(WS, b"ledger entry").await.unwrap();

    let needles: Vec<&str> = people
        .iter()
        .flat_map(|p| p.needles.iter().map(String::as_str))
        .collect();
    let dump = db.dump().await;
    assert_eq!(dump.rows_in("scan_profiles"), Some(1000));
    assert_eq!(dump.rows_in("vault_subject_keys"), Some(1000));
    assert_eq!(dump.rows_in("vault_workspace_keys"), Some(2));
    assert!(
        dump.rows_in("workspaces").is_some() && dump.rows_in("api_keys").is_some(),
        "every table is dumped"
    );
    assert!(
        dump.text.contains("subject-0999"),
        "the dump holds the rows' text"
    );
    let found = find_plaintext(&dump.text, needles.iter().copied());
    assert!(
        found.is_empty(),
        "plaintext at rest: {} needles, e.g. {:?}",
        found.len(),
        &found[..found.len().min(5)]
    );

    let log_text = logs.contents();
    assert!(
        log_text.contains("created subject data key"),
        "the log capture sees the vault's events"
    );
    assert!(log_text.contains("rejected identifier"));
    let found = find_plaintext(&log_text, needles.iter().copied());
    assert!(
        found.is_empty(),
        "plaintext in logs: {:?}",
        &found[..found.len().min(5)]
    );

    // Positive controls: the dump and the log capture do catch plaintext when it is there.
    db.exec(CONTROL).await;
    db.insert(INSERT_CONTROL, &["control"], &[people[5].phone.as_bytes()])
        .await;
    let dump = db.dump().await;
    assert_eq!(
        find_plaintext(
            &dump.text,
            [people[5].phone.as_str(), people[6].phone.as_str()]
        ),
        vec![people[5].phone.as_str()]
    );
    tracing::info!(canary = CANARY, "control event");
    assert_eq!(find_plaintext(&logs.contents(), [CANARY]), vec![CANARY]);
}

#[sqlx::test(migrations = "../../migrations/postgres")]
async fn postgres_tables_and_logs_hold_no_plaintext(pool: PgPool) {
    scan(Db::Pg(pool)).await;
}

#[sqlx::test(migrations = "../../migrations/sqlite")]
async fn sqlite_tables_and_logs_hold_no_plaintext(pool: SqlitePool) {
    scan(Db::Lite(pool)).await;
}

#[test]
fn generated_identities_normalize() {
    let people = identities(1000);
    let mut emails = std::collections::HashSet::new();
    for p in &people {
        meridian_vault::normalize(IdentifierKind::Phone, &p.phone, Some(p.region)).unwrap();
        assert!(
            emails.insert(
                meridian_vault::normalize(IdentifierKind::Email, &p.email, None)
                    .unwrap()
                    .to_string()
            )
        );
    }
}

#[test]
fn digit_needles_match_whole_numbers_only() {
    let phone = "4155551550";
    // Inside a millisecond timestamp, raw or as the hex of its text: not a phone number.
    let timestamp = "1764155551550";
    assert!(find_plaintext(&format!("created_at={timestamp} |"), [phone]).is_empty());
    let timestamp_hex = hex::encode(timestamp);
    assert!(find_plaintext(&format!("(hex {timestamp_hex})"), [phone]).is_empty());
    // On its own, next to letters or punctuation, raw or hex-encoded: found.
    for hay in [
        format!("phone={phone} |"),
        format!("tel:{phone}x"),
        phone.to_owned(),
        format!("(hex 7b{}7d)", hex::encode(phone)),
    ] {
        assert_eq!(find_plaintext(&hay, [phone]), vec![phone], "{hay}");
    }
    // Inside the hex rendering of a binary value (ciphertext that happens to hold the digits):
    // not plaintext. The same digits in the value's UTF-8 rendering are.
    assert!(find_plaintext(&format!("sealed=\u{fffd}x (hex 9f{phone}ab) |"), [phone]).is_empty());
    assert_eq!(
        find_plaintext(
            &format!("sealed=x{phone}y (hex 78{}79) |", hex::encode(phone)),
            [phone]
        ),
        vec![phone]
    );
    // Needles with other characters still match anywhere.
    assert_eq!(
        find_plaintext("x+14155551550y", ["+14155551550"]),
        vec!["+14155551550"]
    );
}
