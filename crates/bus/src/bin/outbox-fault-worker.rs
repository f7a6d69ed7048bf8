//! Test-only worker for the kill -9 fault test (`tests/fault.rs`): commits orders, each
//! with its outbox event in the same transaction, while a relay publishes and a consumer
//! applies each event as a row in `fault_effects` (no uniqueness: a double application
//! would show). Resumes after a crash; exits 0 once every order's effect is there.
//!
//! Configured by environment: `FAULT_DATABASE_URL` (PostgreSQL) or `FAULT_DATA_DIR`
//! (embedded SQLite); `FAULT_NATS_URL` for JetStream (else in-process);
//! `FAULT_FAMILY`, `FAULT_EVENTS`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meridian_bus::{
    EventFamily, EventHandler, HandlerError, JetStreamSettings, LoopSettings, OutboxEvent,
    StreamLayout, Subscription, Tx, enqueue, open_bus, run_consumer, run_relay,
};
use meridian_store::{Store, StoreLocation};

type Error = Box<dyn std::error::Error + Send + Sync>;

struct ApplyOrder;

#[async_trait]
impl EventHandler for ApplyOrder {
    async fn handle(&self, tx: &mut Tx<'_>, event: &OutboxEvent) -> Result<(), HandlerError> {
        let order_no = String::from_utf8_lossy(&event.payload).into_owned();
        let sql =
            "INSERT INTO fault_effects (workspace_id, event_id, order_no) VALUES ($1, $2, $3)";
        match tx {
            Tx::Postgres(conn) => {
                sqlx::query(sql)
                    .bind(event.workspace_id.as_str())
                    .bind(event.event_id.to_string())
                    .bind(order_no)
                    .execute(&mut **conn)
                    .await?;
            }
            Tx::Sqlite(conn) => {
                sqlx::query(sql)
                    .bind(event.workspace_id.as_str())
                    .bind(event.event_id.to_string())
                    .bind(order_no)
                    .execute(&mut **conn)
                    .await?;
            }
        }
        Ok(())
    }
}

const TABLES: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS fault_orders (workspace_id TEXT NOT NULL, order_no TEXT NOT NULL, \
     event_id TEXT NOT NULL, PRIMARY KEY (workspace_id, order_no))",
    "CREATE TABLE IF NOT EXISTS fault_effects (workspace_id TEXT NOT NULL, event_id TEXT NOT NULL, \
     order_no TEXT NOT NULL)",
];

async fn execute(store: &Store, sql: &str) -> Result<(), Error> {
    match store {
        Store::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop)?,
        Store::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop)?,
    }
    Ok(())
}

async fn count(store: &Store, sql: &str) -> Result<i64, Error> {
    Ok(match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
    })
}

async fn commit_order(store: &Store, family: &EventFamily, order_no: i64) -> Result<(), Error> {
    let event = OutboxEvent::new(
        "acme".parse()?,
        family.clone(),
        format!("order-{order_no}"),
        order_no.to_string().into_bytes(),
    );
    let sql = "INSERT INTO fault_orders (workspace_id, order_no, event_id) VALUES ('acme', $1, $2)";
    match store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query(sql)
                .bind(order_no.to_string())
                .bind(event.event_id.to_string())
                .execute(&mut *tx)
                .await?;
            enqueue(&mut tx, &event).await?;
            tx.commit().await?;
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query(sql)
                .bind(order_no.to_string())
                .bind(event.event_id.to_string())
                .execute(&mut *tx)
                .await?;
            enqueue(&mut tx, &event).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let var = |name: &str| std::env::var(name).ok();
    let location = match (var("FAULT_DATABASE_URL"), var("FAULT_DATA_DIR")) {
        (Some(url), _) => StoreLocation::Postgres {
            url,
            max_connections: 8,
        },
        (None, Some(dir)) => StoreLocation::Embedded {
            data_dir: dir.into(),
        },
        (None, None) => return Err("set FAULT_DATABASE_URL or FAULT_DATA_DIR".into()),
    };
    let family: EventFamily = var("FAULT_FAMILY").ok_or("set FAULT_FAMILY")?.parse()?;
    let total: i64 = var("FAULT_EVENTS").ok_or("set FAULT_EVENTS")?.parse()?;

    let store = Store::connect(&location).await?;
    store.migrate().await?;
    for sql in TABLES {
        execute(&store, sql).await?;
    }
    let settings = JetStreamSettings {
        layout: StreamLayout::PerFamily {
            prefix: "FAULT".into(),
        },
        ack_wait: Duration::from_secs(2),
        fetch_wait: Duration::from_millis(100),
        ..Default::default()
    };
    let bus = open_bus(store.clone(), var("FAULT_NATS_URL").as_deref(), settings).await?;
    let loops = LoopSettings {
        relay_batch: 32,
        idle: Duration::from_millis(5),
        ..Default::default()
    };
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(run_relay(bus.clone(), loops, shutdown.clone()));
    tokio::spawn(run_consumer(
        bus.clone(),
        Subscription {
            batch_size: 16,
            ..Subscription::new("fault-consumer".parse()?, family.clone())
        },
        Arc::new(ApplyOrder),
        loops,
        shutdown,
    ));

    // Resume where the last run's committed orders end.
    let next = count(&store, "SELECT COUNT(*) FROM fault_orders").await?;
    for order_no in next..total {
        commit_order(&store, &family, order_no).await?;
    }
    loop {
        let applied = count(&store, "SELECT COUNT(DISTINCT event_id) FROM fault_effects").await?;
        if applied >= total {
            println!("done: {applied} events applied");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
