//! The ingestion room through the real binary: the official Segment Node SDK against the
//! Segment-compatible HTTP API, the plaintext scan (1,000 generated identities over gRPC and
//! HTTP, then every table and the log), and kill -9 during a load (every acknowledged
//! message id stored exactly once after restart).

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use meridian_proto::JsonObject;
use meridian_proto::v1::*;
use meridian_vault::testing::{dump_postgres, dump_sqlite, find_plaintext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Backend, Environment, authorized};

/// Runs each test body once per backend.
macro_rules! per_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $test() {
                super::$test(crate::harness::Backend::Sqlite).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $test() {
                super::$test(crate::harness::Backend::Postgres).await;
            })*
        }
    };
}

per_backend!(
    segment_sdk_events_are_stored,
    no_identity_rests_in_plaintext_after_grpc_and_http,
    acknowledged_events_survive_kill_9_exactly_once,
);

/// A generated shopper. Every field is personal data that must never rest in plaintext.
#[derive(Clone)]
struct Shopper {
    email: String,
    name: String,
    user_id: String,
    anonymous_id: String,
    phone: String,
}

const FIRST: [&str; 8] = [
    "Ana", "Bruno", "Chloe", "Dmitri", "Elif", "Farah", "Goran", "Hana",
];
const LAST: [&str; 8] = [
    "Lima", "Okafor", "Moreau", "Ivanov", "Yilmaz", "Haddad", "Novak", "Sato",
];

fn shopper(seed: &str, i: usize) -> Shopper {
    let first = FIRST[i % FIRST.len()];
    let last = LAST[(i / FIRST.len()) % LAST.len()];
    Shopper {
        email: format!(
            "{}.{}{seed}{i:04}@example.net",
            first.to_lowercase(),
            last.to_lowercase()
        ),
        name: format!("{first} {last}{seed}{i:04}"),
        user_id: format!("cust{seed}{i:06}x"),
        anonymous_id: format!("anon{seed}{i:06}z"),
        phone: format!("+49 1512 9{i:06}"),
    }
}

fn needles(shoppers: &[Shopper]) -> Vec<String> {
    shoppers
        .iter()
        .flat_map(|s| {
            [
                s.email.clone(),
                s.name.clone(),
                s.user_id.clone(),
                s.anonymous_id.clone(),
                s.phone.replace(' ', ""),
            ]
        })
        .collect()
}

/// Rows of `ingest_events` per message id, read straight from the database.
async fn stored_message_ids(env: &Environment) -> HashMap<String, i64> {
    let sql = "SELECT message_id, COUNT(*) FROM ingest_events GROUP BY message_id";
    let rows: Vec<(String, i64)> = match &env.database {
        Some(db) => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        }
        None => {
            let pool = sqlx::SqlitePool::connect(&format!(
                "sqlite://{}",
                env.data_dir.path().join("meridian.db").display()
            ))
            .await
            .unwrap();
            let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        }
    };
    rows.into_iter().collect()
}

async fn dump(env: &Environment) -> String {
    match &env.database {
        Some(db) => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let text = dump_postgres(&pool).await.unwrap().text;
            pool.close().await;
            text
        }
        None => {
            let pool = sqlx::SqlitePool::connect(&format!(
                "sqlite://{}",
                env.data_dir.path().join("meridian.db").display()
            ))
            .await
            .unwrap();
            let text = dump_sqlite(&pool).await.unwrap().text;
            pool.close().await;
            text
        }
    }
}

/// POSTs JSON over a plain HTTP/1.1 connection: (status, body).
async fn post_json(addr: &str, path: &str, write_key: &str, body: &str) -> (u16, String) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn json_object(value: serde_json::Value) -> JsonObject {
    JsonObject::try_from(value).expect("a JSON object")
}

/// An identify over gRPC carrying every personal field of the shopper.
fn grpc_identify(s: &Shopper, message_id: &str) -> Event {
    Event {
        message_id: message_id.into(),
        r#type: EventType::Identify as i32,
        user_id: s.user_id.clone(),
        anonymous_id: s.anonymous_id.clone(),
        identifiers: vec![
            Identifier {
                r#type: IdentifierType::Email as i32,
                value: s.email.clone(),
                ..Default::default()
            },
            Identifier {
                r#type: IdentifierType::Phone as i32,
                value: s.phone.clone(),
                ..Default::default()
            },
        ],
        traits: Some(json_object(
            serde_json::json!({"name": s.name, "email": s.email}),
        )),
        properties: Some(json_object(
            serde_json::json!({"note": format!("deliver to {}", s.name)}),
        )),
        jurisdiction: "US-CA".into(),
        ..Default::default()
    }
}

async fn segment_sdk_events_are_stored(backend: Backend) {
    let env = Environment::new(backend).await;
    let key = env.api_key("acme", "ingest").await;
    let server = env.serve(&["ingest"]).await;
    let shoppers: Vec<Shopper> = (0..10).map(|i| shopper("sdk", i)).collect();
    let job = serde_json::json!({
        "host": format!("http://{}", server.http_addr),
        "writeKey": key,
        "jurisdiction": "US-CA",
        "shoppers": shoppers.iter().enumerate().map(|(i, s)| serde_json::json!({
            "email": s.email, "name": s.name, "userId": s.user_id,
            "anonymousId": s.anonymous_id, "prefix": format!("sdk-{i}"),
        })).collect::<Vec<_>>(),
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/node/segment/send.mjs"
    );
    let mut node = tokio::process::Command::new("node")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is installed (tests/node/segment/setup.sh installs the SDK)");
    node.stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .await
        .unwrap();
    let output = node.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["sent"], 60);
    let sent: HashSet<String> = report["messageIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    let stored = stored_message_ids(&env).await;
    let stored_ids: HashSet<String> = stored.keys().cloned().collect();
    assert_eq!(stored_ids, sent, "every call type is stored once");
    assert!(stored.values().all(|n| *n == 1));

    // The same semantics as gRPC: a bad event is reported, the limits answer 400.
    let (status, body) = post_json(
        &server.http_addr,
        "/v1/track",
        &key,
        r#"{"anonymousId":"a-1","messageId":"bad-1"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"event\""), "{body}");
    let (status, _) = post_json(&server.http_addr, "/v1/track", &key, "{not json").await;
    assert_eq!(status, 400);
    let big = format!(
        r#"{{"anonymousId":"a","event":"E","properties":{{"blob":"{}"}}}}"#,
        "x".repeat(33 * 1024)
    );
    let (status, _) = post_json(&server.http_addr, "/v1/track", &key, &big).await;
    assert_eq!(status, 400);
    let (status, _) = post_json(
        &server.http_addr,
        "/v1/track",
        "mk_nope_nope",
        r#"{"anonymousId":"a","event":"E"}"#,
    )
    .await;
    assert_eq!(status, 401);
    let batch = serde_json::json!({"batch": [
        {"type": "track", "messageId": "b-1", "anonymousId": "a-b1", "event": "Viewed", "context": {"storefront": {"country": "US-CA"}}},
        {"type": "track", "messageId": "b-2", "anonymousId": "a-b2"},
        {"type": "track", "messageId": "b-3", "anonymousId": "a-b3", "event": "Viewed", "jurisdiction": "DE"},
    ]});
    let (status, body) = post_json(&server.http_addr, "/v1/batch", &key, &batch.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["results"][0]["outcome"], "accepted");
    assert_eq!(body["results"][1]["outcome"], "rejected");
    assert_eq!(body["results"][1]["field"], "batch[1].event");
    assert_eq!(body["results"][2]["outcome"], "dropped");
    assert_eq!(body["results"][2]["rule"], "gdpr.art6_1_a.consent_required");
}

async fn no_identity_rests_in_plaintext_after_grpc_and_http(backend: Backend) {
    let env = Environment::new(backend).await;
    let key = env.api_key("acme", "ingest").await;
    let server = env.serve_with_env(&[("MERIDIAN_LOG", "debug")]).await;
    let shoppers: Vec<Shopper> = (0..1000).map(|i| shopper("pt", i)).collect();
    let mut client = ingest_service_client::IngestServiceClient::new(server.channel.clone());
    // 500 over gRPC, in batches of 100.
    for (b, chunk) in shoppers[..500].chunks(100).enumerate() {
        let events = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| grpc_identify(s, &format!("g-{b}-{i}")))
            .collect();
        let resp = client
            .ingest(authorized(
                IngestRequest {
                    events,
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.summary.unwrap().accepted,
            100,
            "{:?}",
            resp.results.first()
        );
    }
    // 500 over HTTP, in batches of 50.
    for (b, chunk) in shoppers[500..].chunks(50).enumerate() {
        let batch: Vec<serde_json::Value> = chunk
            .iter()
            .enumerate()
            .map(|(i, s)| {
                serde_json::json!({
                    "type": "identify", "messageId": format!("h-{b}-{i}"),
                    "userId": s.user_id, "anonymousId": s.anonymous_id,
                    "traits": {"email": s.email, "name": s.name, "phone": s.phone},
                    "context": {"storefront": {"country": "US-CA"}, "ip": "203.0.113.9"},
                })
            })
            .collect();
        let (status, body) = post_json(
            &server.http_addr,
            "/v1/batch",
            &key,
            &serde_json::json!({ "batch": batch }).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["summary"]["accepted"], 50, "{body}");
    }
    assert_eq!(stored_message_ids(&env).await.len(), 1000);
    let log = server.log();
    let status = server.terminate().await;
    assert!(status.success());

    let needles = needles(&shoppers);
    let text = dump(&env).await;
    assert!(text.contains("ingest_events"));
    let found = find_plaintext(&text, needles.iter().map(String::as_str));
    assert!(
        found.is_empty(),
        "plaintext at rest: {:?}",
        &found[..found.len().min(5)]
    );
    assert!(log.contains("ingested batch"), "the debug log was captured");
    let found = find_plaintext(&log, needles.iter().map(String::as_str));
    assert!(
        found.is_empty(),
        "plaintext in the log: {:?}",
        &found[..found.len().min(5)]
    );
}

async fn acknowledged_events_survive_kill_9_exactly_once(backend: Backend) {
    let env = Environment::new(backend).await;
    let key = env.api_key("acme", "ingest").await;
    let mut server = env.serve(&["ingest"]).await;
    let batches: Vec<Vec<Event>> = (0..400)
        .map(|b| {
            (0..25)
                .map(|i| grpc_identify(&shopper("k9", b * 25 + i), &format!("k-{b}-{i}")))
                .collect()
        })
        .collect();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut workers = Vec::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..4 {
        let mut client = ingest_service_client::IngestServiceClient::new(server.channel.clone());
        let (key, batches, acknowledged, next, ack_tx) = (
            key.clone(),
            batches.clone(),
            acknowledged.clone(),
            next.clone(),
            ack_tx.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(events) = batches.get(b) else { return };
                let request = authorized(
                    IngestRequest {
                        events: events.clone(),
                        ..Default::default()
                    },
                    Some(&key),
                );
                match client.ingest(request).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        let mut acked = acknowledged.lock().unwrap();
                        for r in resp.results {
                            if r.outcome == EventOutcome::Accepted as i32 {
                                acked.push(r.message_id);
                            }
                        }
                        let _ = ack_tx.send(());
                    }
                    // The server died under us: stop.
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill -9 once 30 batches are acknowledged, with others in flight.
    for _ in 0..30 {
        ack_rx.recv().await.unwrap();
    }
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let acked: Vec<String> = acknowledged.lock().unwrap().clone();
    assert!(acked.len() >= 30 * 25);
    assert!(acked.len() < 400 * 25, "the load was cut short by the kill");

    // After restart: every acknowledged id is stored exactly once.
    let server = env.serve(&["ingest"]).await;
    let stored = stored_message_ids(&env).await;
    for m in &acked {
        assert_eq!(stored.get(m), Some(&1), "acknowledged {m} is stored once");
    }
    // Retrying everything (as a client that saw errors would) duplicates nothing.
    let mut client = ingest_service_client::IngestServiceClient::new(server.channel.clone());
    for events in batches.iter().take(60) {
        let resp = client
            .ingest(authorized(
                IngestRequest {
                    events: events.clone(),
                    ..Default::default()
                },
                Some(&key),
            ))
            .await
            .unwrap()
            .into_inner();
        let s = resp.summary.unwrap();
        assert_eq!(s.accepted + s.duplicate, 25);
    }
    let stored = stored_message_ids(&env).await;
    assert!(stored.values().all(|n| *n == 1));
    for m in &acked {
        assert_eq!(stored.get(m), Some(&1));
    }
}
