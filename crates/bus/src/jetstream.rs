//! The NATS JetStream bus: the relay publishes outbox rows with `Nats-Msg-Id` = event id
//! (JetStream drops a re-publish within the stream's duplicate window) and deletes them
//! only after the publish ack (JetStream holds the copy from then on); consumers are
//! durable pull consumers with explicit acks, sent after the effect committed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use meridian_store::Store;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::bus::{Bus, BusKind};
use crate::consume::{
    Attempt, ConsumeStats, EventHandler, Outcome, Source, Subscription, apply_all,
    requested_replays,
};
use crate::error::BusError;
use crate::event::{EventFamily, OutboxEvent};
use crate::outbox::{StoredEvent, Tx, take_unsent_pg, unsent_sqlite};

/// How event families map to JetStream streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamLayout {
    /// One stream per family, `<prefix>_<FAMILY>` on `meridian.*.<family>` (the default).
    PerFamily { prefix: String },
    /// One stream for everything on `meridian.>` (what `k8s/…/streams/meridian.json` creates).
    Single { name: String },
}

/// JetStream settings: a typed part of the service configuration.
#[derive(Debug, Clone)]
pub struct JetStreamSettings {
    pub layout: StreamLayout,
    /// First token of every subject, `<root>.<workspace>.<family>` (default `meridian`):
    /// environments sharing one NATS cluster (staging next to production, parallel test
    /// runs) each take their own root, so their streams and consumers never meet.
    pub subject_root: String,
    /// Create missing streams with the settings below (an existing stream is used as is).
    pub create_streams: bool,
    pub replicas: usize,
    pub max_age: Duration,
    /// Window in which a re-published event id is dropped as a duplicate.
    pub duplicate_window: Duration,
    /// How long a delivered, unacknowledged message waits before redelivery.
    pub ack_wait: Duration,
    /// How long one consume round waits for messages.
    pub fetch_wait: Duration,
}

impl Default for JetStreamSettings {
    fn default() -> Self {
        Self {
            layout: StreamLayout::PerFamily {
                prefix: "MERIDIAN".into(),
            },
            subject_root: "meridian".into(),
            create_streams: true,
            replicas: 1,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            fetch_wait: Duration::from_millis(500),
        }
    }
}

impl JetStreamSettings {
    /// The stream that holds `family`'s events.
    pub fn stream_name(&self, family: &EventFamily) -> String {
        match &self.layout {
            StreamLayout::PerFamily { prefix } => format!(
                "{prefix}_{}",
                family.as_str().to_ascii_uppercase().replace('-', "_")
            ),
            StreamLayout::Single { name } => name.clone(),
        }
    }

    fn stream_subjects(&self, family: &EventFamily) -> Vec<String> {
        match &self.layout {
            StreamLayout::PerFamily { .. } => vec![self.family_filter(family)],
            StreamLayout::Single { .. } => vec![format!("{}.>", self.subject_root)],
        }
    }

    /// `<root>.*.<family>`: every workspace's events of one family.
    fn family_filter(&self, family: &EventFamily) -> String {
        format!("{}.*.{family}", self.subject_root)
    }

    /// `<root>.<workspace>.<family>`.
    fn subject_of(&self, event: &OutboxEvent) -> String {
        format!(
            "{}.{}.{}",
            self.subject_root, event.workspace_id, event.family
        )
    }
}

/// The durable consumer name: unique per consumer and family, also in a single stream.
fn durable_name(subscription: &Subscription) -> String {
    format!("{}_{}", subscription.consumer, subscription.family)
}

const HEADER_MSG_ID: &str = "Nats-Msg-Id";
const HEADER_EVENT_ID: &str = "Meridian-Event-Id";
const HEADER_WORKSPACE: &str = "Meridian-Workspace";
const HEADER_FAMILY: &str = "Meridian-Family";
const HEADER_KEY: &str = "Meridian-Key";
const HEADER_OCCURRED_AT: &str = "Meridian-Occurred-At";

pub struct JetStreamBus {
    store: Store,
    context: jetstream::Context,
    settings: JetStreamSettings,
    streams: Mutex<HashSet<String>>,
    consumers: Mutex<HashMap<String, PullConsumer>>,
}

impl JetStreamBus {
    /// Connects to `url` (`NATS_URL`). Fails when the server cannot be reached; once
    /// connected, the client reconnects by itself.
    pub async fn connect(
        url: &str,
        store: Store,
        settings: JetStreamSettings,
    ) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|err| BusError::Connect(err.kind().to_string()))?;
        Ok(Self::with_client(client, store, settings))
    }

    pub fn with_client(
        client: async_nats::Client,
        store: Store,
        settings: JetStreamSettings,
    ) -> Self {
        Self {
            store,
            context: jetstream::new(client),
            settings,
            streams: Mutex::new(HashSet::new()),
            consumers: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &JetStreamSettings {
        &self.settings
    }

    /// The JetStream context, e.g. for operators' tooling.
    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }

    /// Deletes the stream of `family` (tests and benchmarks clean up with this).
    pub async fn delete_stream(&self, family: &EventFamily) -> Result<(), BusError> {
        let name = self.settings.stream_name(family);
        self.context
            .delete_stream(&name)
            .await
            .map_err(|err| BusError::jetstream("delete stream", err))?;
        self.streams.lock().await.remove(&name);
        Ok(())
    }

    async fn ensure_stream(
        &self,
        family: &EventFamily,
    ) -> Result<jetstream::stream::Stream, BusError> {
        let name = self.settings.stream_name(family);
        if !self.settings.create_streams {
            let stream = self
                .context
                .get_stream(&name)
                .await
                .map_err(|err| BusError::jetstream("get stream", err))?;
            self.streams.lock().await.insert(name);
            return Ok(stream);
        }
        let stream = self
            .context
            .get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: self.settings.stream_subjects(family),
                storage: jetstream::stream::StorageType::File,
                retention: jetstream::stream::RetentionPolicy::Limits,
                num_replicas: self.settings.replicas,
                max_age: self.settings.max_age,
                duplicate_window: self.settings.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|err| {
                let message = err.to_string();
                if message.contains("overlap") {
                    // Typically the single `MERIDIAN` stream on `meridian.>` (k8s manifests)
                    // already exists while this replica is set to one stream per family.
                    BusError::JetStream {
                        operation: "create stream",
                        message: format!(
                            "{message}: another stream already holds these subjects; \
                             configure the JetStream stream layout to match it \
                             (one stream `MERIDIAN` on `meridian.>`, or one per family)"
                        ),
                    }
                } else {
                    BusError::jetstream("create stream", err)
                }
            })?;
        self.streams.lock().await.insert(name);
        Ok(stream)
    }

    async fn ensure_streams(&self, events: &[StoredEvent]) -> Result<(), BusError> {
        let mut families: Vec<&EventFamily> = events.iter().map(|e| &e.event.family).collect();
        families.sort();
        families.dedup();
        for family in families {
            let known = self
                .streams
                .lock()
                .await
                .contains(&self.settings.stream_name(family));
            if !known {
                self.ensure_stream(family).await?;
            }
        }
        Ok(())
    }

    async fn consumer(&self, subscription: &Subscription) -> Result<PullConsumer, BusError> {
        let name = durable_name(subscription);
        if let Some(consumer) = self.consumers.lock().await.get(&name) {
            return Ok(consumer.clone());
        }
        let stream = self.ensure_stream(&subscription.family).await?;
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                &name,
                jetstream::consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: self.settings.family_filter(&subscription.family),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ack_wait: self.settings.ack_wait,
                    // Attempts are counted here, not by the server: nothing is dropped
                    // silently; exhausted events go to the dead letters.
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| BusError::jetstream("create consumer", err))?;
        self.consumers.lock().await.insert(name, consumer.clone());
        Ok(consumer)
    }

    /// Publishes every event and waits for every ack. Publishes are pipelined.
    async fn publish_all(&self, events: &[StoredEvent]) -> Result<(), BusError> {
        self.ensure_streams(events).await?;
        let mut pending = Vec::with_capacity(events.len());
        for stored in events {
            let event = &stored.event;
            let ack = self
                .context
                .publish_with_headers(
                    self.settings.subject_of(event),
                    headers(event),
                    event.payload.clone().into(),
                )
                .await
                .map_err(|err| BusError::jetstream("publish", err))?;
            pending.push(ack);
        }
        // Await the acks together: awaited one by one, acks lost with a crashed server
        // would time out one after another and hold the claimed rows for minutes.
        let acks = futures::future::try_join_all(
            pending
                .into_iter()
                .map(std::future::IntoFuture::into_future),
        )
        .await
        .map_err(|err| BusError::jetstream("publish ack", err))?;
        let duplicates = acks.iter().filter(|ack| ack.duplicate).count();
        if duplicates > 0 {
            tracing::debug!(duplicates, "JetStream dropped re-published events");
        }
        Ok(())
    }
}

fn headers(event: &OutboxEvent) -> HeaderMap {
    let id = event.event_id.to_string();
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MSG_ID, id.as_str());
    headers.insert(HEADER_EVENT_ID, id.as_str());
    headers.insert(HEADER_WORKSPACE, event.workspace_id.as_str());
    headers.insert(HEADER_FAMILY, event.family.as_str());
    headers.insert(HEADER_KEY, event.key.as_str());
    headers.insert(
        HEADER_OCCURRED_AT,
        event
            .occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    );
    headers
}

/// Reads an event back from a JetStream message; `None` names the missing or bad header.
fn decode(message: &async_nats::Message) -> Result<OutboxEvent, &'static str> {
    let headers = message.headers.as_ref().ok_or("headers")?;
    let get = |name: &'static str| {
        headers
            .get(name)
            .map(|value| value.as_str().to_owned())
            .ok_or(name)
    };
    Ok(OutboxEvent {
        event_id: Uuid::parse_str(&get(HEADER_EVENT_ID)?).map_err(|_| HEADER_EVENT_ID)?,
        workspace_id: get(HEADER_WORKSPACE)?
            .parse()
            .map_err(|_| HEADER_WORKSPACE)?,
        family: get(HEADER_FAMILY)?.parse().map_err(|_| HEADER_FAMILY)?,
        key: get(HEADER_KEY)?,
        payload: message.payload.to_vec(),
        occurred_at: DateTime::parse_from_rfc3339(&get(HEADER_OCCURRED_AT)?)
            .map_err(|_| HEADER_OCCURRED_AT)?
            .with_timezone(&Utc),
    })
}

#[async_trait]
impl Bus for JetStreamBus {
    fn kind(&self) -> BusKind {
        BusKind::JetStream
    }

    async fn relay_batch(&self, limit: usize) -> Result<usize, BusError> {
        match &self.store {
            Store::Postgres(pool) => {
                // The rows are deleted in a transaction that commits only once the acks are
                // in; a crash in between rolls back, and the rows are published again
                // (JetStream drops the duplicates within its window, consumers skip the rest).
                let mut tx = pool.begin().await?;
                let events = take_unsent_pg(&mut tx, limit).await?;
                if events.is_empty() {
                    return Ok(0);
                }
                self.publish_all(&events).await?;
                tx.commit().await?;
                Ok(events.len())
            }
            Store::Sqlite(pool) => {
                // SQLite has a single writer: holding it across network round trips would
                // stall every room, so read, publish, then delete. Two relays on one file may
                // publish a row twice; the duplicate window and idempotent consumers absorb it.
                let mut conn = pool.acquire().await?;
                let events = unsent_sqlite(&mut conn, limit).await?;
                drop(conn);
                if events.is_empty() {
                    return Ok(0);
                }
                self.publish_all(&events).await?;
                // Deleted once JetStream holds them, as on PostgreSQL.
                let mut builder = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "DELETE FROM outbox_events WHERE seq IN (",
                );
                let mut list = builder.separated(", ");
                for event in &events {
                    list.push_bind(event.seq);
                }
                builder.push(")");
                builder.build().execute(pool).await?;
                Ok(events.len())
            }
        }
    }

    async fn consume_batch(
        &self,
        subscription: &Subscription,
        handler: &dyn EventHandler,
    ) -> Result<ConsumeStats, BusError> {
        let consumer = self.consumer(subscription).await?;
        let mut batch = consumer
            .batch()
            .max_messages(subscription.batch_size.max(1))
            .expires(self.settings.fetch_wait)
            .messages()
            .await
            .map_err(|err| BusError::jetstream("fetch", err))?;
        let mut messages = Vec::new();
        let mut fetch_error = None;
        while let Some(next) = batch.next().await {
            match next {
                Ok(message) => messages.push(message),
                Err(err) => {
                    fetch_error = Some(BusError::jetstream("fetch", err));
                    break;
                }
            }
        }

        let mut attempts = Vec::with_capacity(messages.len());
        let mut delivered = Vec::with_capacity(messages.len());
        for message in messages {
            match decode(&message.message) {
                Ok(event) => {
                    let attempt = message
                        .info()
                        .map(|info| u32::try_from(info.delivered).unwrap_or(1).max(1))
                        .unwrap_or(1);
                    attempts.push(Attempt {
                        event,
                        attempt,
                        source: Source::Bus,
                    });
                    delivered.push(message);
                }
                Err(header) => {
                    // Not one of ours: it can never be applied, do not redeliver it.
                    tracing::warn!(
                        subject = %message.subject,
                        header,
                        "dropping a JetStream message without a valid Meridian header"
                    );
                    message
                        .ack_with(AckKind::Term)
                        .await
                        .map_err(|err| BusError::jetstream("term", err))?;
                }
            }
        }

        let outcomes = match &self.store {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let mut db = Tx::Postgres(&mut tx);
                let replays = requested_replays(&mut db, subscription).await?;
                let (outcomes, replay_outcomes) =
                    apply_both(&mut db, subscription, handler, &attempts, &replays).await?;
                tx.commit().await?;
                (outcomes, replay_outcomes)
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let mut db = Tx::Sqlite(&mut tx);
                let replays = requested_replays(&mut db, subscription).await?;
                let (outcomes, replay_outcomes) =
                    apply_both(&mut db, subscription, handler, &attempts, &replays).await?;
                tx.commit().await?;
                (outcomes, replay_outcomes)
            }
        };
        let (outcomes, replay_outcomes) = outcomes;

        let mut stats = ConsumeStats::default();
        for outcome in &replay_outcomes {
            stats.count(outcome);
        }
        for (message, outcome) in delivered.iter().zip(&outcomes) {
            stats.count(outcome);
            let kind = match outcome {
                Outcome::Applied | Outcome::Duplicate | Outcome::DeadLettered => AckKind::Ack,
                Outcome::Retry { delay, .. } => AckKind::Nak(Some(*delay)),
            };
            // A lost ack means a redelivery, which the processed-events table absorbs.
            if let Err(err) = message.ack_with(kind).await {
                tracing::warn!(error = %err, "JetStream ack failed; the event will be redelivered");
            }
        }
        match fetch_error {
            Some(err) if stats.is_idle() => Err(err),
            _ => Ok(stats),
        }
    }

    async fn wait_for_events(&self, _max: Duration) {}
}

async fn apply_both(
    tx: &mut Tx<'_>,
    subscription: &Subscription,
    handler: &dyn EventHandler,
    attempts: &[Attempt],
    replays: &[Attempt],
) -> Result<(Vec<Outcome>, Vec<Outcome>), BusError> {
    let outcomes = apply_all(tx, subscription, handler, attempts).await?;
    let replay_outcomes = apply_all(tx, subscription, handler, replays).await?;
    Ok((outcomes, replay_outcomes))
}
