//! The NATS JetStream bus: the relay publishes outbox rows with `Nats-Msg-Id` = event id
//! (JetStream drops a re-publish within the stream's duplicate window) and deletes them
//! only after the publish ack (JetStream holds the copy from then on); consumers are
//! durable pull consumers with explicit acks, sent after the effect committed.
//!
//! Consecutive rows of one workspace and family go out as one message, a *pack*
//! ([`crate::pack`]), with `Nats-Msg-Id` = its first event id and its size; consumers
//! unpack it and apply, retry and dead-letter each event on its own. A message is acked
//! once none of its events waits for a retry, and negatively acked otherwise (its applied
//! events are then skipped as duplicates on redelivery).

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
use crate::pack;

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
    /// Largest pack the relay publishes, in bytes of its events (ids, keys, payloads),
    /// also bounded by the server's `max_payload`. 0 publishes every event as a message of
    /// its own, which replicas of versions before packs can read: set it during a rolling
    /// upgrade from one, until every consumer runs this version.
    pub pack_max_bytes: usize,
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
            pack_max_bytes: pack::MAX_BYTES,
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
/// On a pack: the format version ([`pack::PACK_VERSION`]).
const HEADER_PACK: &str = "Meridian-Pack";
/// On a pack: how many events it holds (checked against what it decodes to).
const HEADER_PACK_EVENTS: &str = "Meridian-Pack-Events";

/// Room left in a message for its headers when a pack is sized by the server's limit.
const PACK_HEADER_ROOM: usize = 4 * 1024;
/// Least a consume round may fetch, in bytes (packs make messages large; the round's
/// fetch is bounded by bytes as well as by messages).
const FETCH_MIN_BYTES: usize = 4 * 1024 * 1024;
/// How long a pull request may take to end beyond the wait it asked for (async-nats gives
/// one with `expires` the same 5 s): a reply is a round trip away, and up to a fetch's
/// bytes. See [`drain`].
const FETCH_REPLY_LIMIT: Duration = Duration::from_secs(5);
/// When a pack of a format this version cannot read is offered again.
const UNKNOWN_FORMAT_RETRY: Duration = Duration::from_secs(30);

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

    /// Publishes every event, packed where consecutive events share a workspace and
    /// family, and waits for every ack. Publishes are pipelined.
    async fn publish_all(&self, events: &[StoredEvent]) -> Result<(), BusError> {
        self.ensure_streams(events).await?;
        let max_payload = self.context.client().server_info().max_payload;
        let pack_bytes = self
            .settings
            .pack_max_bytes
            .min(max_payload.saturating_sub(PACK_HEADER_ROOM));
        let messages = messages(events, pack_bytes)?;
        let mut pending = Vec::with_capacity(messages.len());
        for (first, headers, payload) in messages {
            let ack = self
                .context
                .publish_with_headers(self.settings.subject_of(&first), headers, payload.into())
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

    /// Applies `attempts` (and, `with_replays`, the dead letters whose replay was
    /// requested) in one transaction; the outcomes of each, in order.
    async fn apply_in_transaction(
        &self,
        subscription: &Subscription,
        handler: &dyn EventHandler,
        attempts: &[Attempt],
        with_replays: bool,
    ) -> Result<(Vec<Outcome>, Vec<Outcome>), BusError> {
        match &self.store {
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let mut db = Tx::Postgres(&mut tx);
                let outcomes =
                    apply_both(&mut db, subscription, handler, attempts, with_replays).await?;
                tx.commit().await?;
                Ok(outcomes)
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let mut db = Tx::Sqlite(&mut tx);
                let outcomes =
                    apply_both(&mut db, subscription, handler, attempts, with_replays).await?;
                tx.commit().await?;
                Ok(outcomes)
            }
        }
    }
}

/// The messages for `rows`, in order: each run of single events packed up to `pack_bytes`,
/// each stored pack as it is if it fits (every event alone when packing is off, for
/// consumers that cannot read packs). Each with its first event, for the subject.
fn messages(
    rows: &[StoredEvent],
    pack_bytes: usize,
) -> Result<Vec<(OutboxEvent, HeaderMap, Vec<u8>)>, BusError> {
    let mut out = Vec::new();
    // A stored pack larger than this relay may send (a server with a small `max_payload`,
    // or packing off: 0) is split: its events join the single ones, which `pack::runs`
    // then sends alone when packing is off.
    let split: Vec<Option<Vec<OutboxEvent>>> = rows
        .iter()
        .map(|row| match row.packed_events {
            Some(_) if row.event.payload.len() > pack_bytes => row.events().map(Some),
            _ => Ok(None),
        })
        .collect::<Result<_, _>>()?;
    let mut singles: Vec<&OutboxEvent> = Vec::new();
    let flush = |singles: &mut Vec<&OutboxEvent>, out: &mut Vec<_>| {
        for run in pack::runs(singles.drain(..), pack_bytes, pack::MAX_EVENTS) {
            match run.as_slice() {
                [event] => out.push(((*event).clone(), headers(event), event.payload.clone())),
                [first, ..] => out.push((
                    (*first).clone(),
                    pack_headers(first, run.len()),
                    pack::encode(&run),
                )),
                [] => {}
            }
        }
    };
    for (row, split) in rows.iter().zip(&split) {
        match (row.packed_events, split) {
            (_, Some(events)) => singles.extend(events),
            (None, None) => singles.push(&row.event),
            (Some(count), None) => {
                flush(&mut singles, &mut out);
                let count = usize::try_from(count).unwrap_or(0);
                out.push((
                    row.event.clone(),
                    pack_headers(&row.event, count),
                    row.event.payload.clone(),
                ));
            }
        }
    }
    flush(&mut singles, &mut out);
    Ok(out)
}

/// The messages of one pull request, and the error that ended it early, if any; given up
/// after `limit`.
///
/// The limit is what ends a pull request whose reply never comes. A no-wait fetch has no
/// `expires`, and async-nats times out a pull request only when it has one: when the
/// server was killed after taking the request, the request died with it, and the open
/// batch waited on its inbox for ever. The consumer then never fetched again after a NATS
/// restart (`nats_restart.rs` under load, 1 run in 4).
async fn drain<M, E: std::fmt::Display>(
    batch: Result<
        impl futures::Stream<Item = Result<M, E>> + Unpin,
        jetstream::consumer::pull::BatchError,
    >,
    limit: Duration,
) -> (Vec<M>, Option<BusError>) {
    let mut batch = match batch {
        Ok(batch) => batch,
        Err(err) => return (Vec::new(), Some(BusError::jetstream("fetch", err))),
    };
    let deadline = tokio::time::Instant::now() + limit;
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, batch.next()).await {
            Ok(Some(Ok(message))) => messages.push(message),
            Ok(Some(Err(err))) => return (messages, Some(BusError::jetstream("fetch", err))),
            Ok(None) => return (messages, None),
            // What came is kept: it is applied and acked like any delivery.
            Err(_) => {
                let err = format!("no end of the pull request within {limit:?}");
                return (messages, Some(BusError::jetstream("fetch", err)));
            }
        }
    }
}

/// Events in `rows`, a pack's counted one by one.
fn event_count(rows: &[StoredEvent]) -> usize {
    rows.iter()
        .map(|row| {
            row.packed_events
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(1)
        })
        .sum()
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

/// The headers of a pack of `events` events starting with `first`. The message id is
/// stable for the same run of rows: a relay that publishes them again after a crash
/// usually forms the same pack, which JetStream then drops as a duplicate (otherwise the
/// consumers skip the events they applied).
fn pack_headers(first: &OutboxEvent, events: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        HEADER_MSG_ID,
        format!("{}+{events}", first.event_id).as_str(),
    );
    headers.insert(HEADER_PACK, pack::PACK_VERSION);
    headers.insert(HEADER_PACK_EVENTS, events.to_string().as_str());
    headers.insert(HEADER_WORKSPACE, first.workspace_id.as_str());
    headers.insert(HEADER_FAMILY, first.family.as_str());
    headers
}

/// Why a message cannot be read as Meridian events.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error("missing or bad header {0}")]
    Header(&'static str),
    #[error(transparent)]
    Pack(#[from] pack::PackError),
    /// A pack format this version does not know: a newer replica's, during an upgrade.
    #[error("pack format {0} is unknown to this version")]
    Version(String),
}

/// Reads the events of a JetStream message: a pack, or a single event.
fn decode(message: &async_nats::Message) -> Result<Vec<OutboxEvent>, Unreadable> {
    let header = Unreadable::Header;
    let headers = message.headers.as_ref().ok_or(header("headers"))?;
    let get = |name: &'static str| {
        headers
            .get(name)
            .map(|value| value.as_str().to_owned())
            .ok_or(header(name))
    };
    let packed = headers.get(HEADER_PACK);
    if let Some(version) = packed
        && version.as_str() != pack::PACK_VERSION
    {
        return Err(Unreadable::Version(version.as_str().to_owned()));
    }
    let workspace = get(HEADER_WORKSPACE)?
        .parse()
        .map_err(|_| header(HEADER_WORKSPACE))?;
    let family = get(HEADER_FAMILY)?
        .parse()
        .map_err(|_| header(HEADER_FAMILY))?;
    if packed.is_some() {
        let count = get(HEADER_PACK_EVENTS)?
            .parse()
            .map_err(|_| header(HEADER_PACK_EVENTS))?;
        return Ok(pack::decode(&workspace, &family, &message.payload, count)?);
    }
    Ok(vec![OutboxEvent {
        event_id: Uuid::parse_str(&get(HEADER_EVENT_ID)?).map_err(|_| header(HEADER_EVENT_ID))?,
        workspace_id: workspace,
        family,
        key: get(HEADER_KEY)?,
        payload: message.payload.to_vec(),
        occurred_at: DateTime::parse_from_rfc3339(&get(HEADER_OCCURRED_AT)?)
            .map_err(|_| header(HEADER_OCCURRED_AT))?
            .with_timezone(&Utc),
    }])
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
                Ok(event_count(&events))
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
                Ok(event_count(&events))
            }
        }
    }

    async fn consume_batch(
        &self,
        subscription: &Subscription,
        handler: &dyn EventHandler,
    ) -> Result<ConsumeStats, BusError> {
        let consumer = self.consumer(subscription).await?;
        // Bounded by bytes too: a round of packs would otherwise hold up to `batch_size`
        // messages of up to `max_payload` each. Twice the largest message always fits one.
        let max_payload = self.context.client().server_info().max_payload;
        let max_bytes = FETCH_MIN_BYTES.max(2 * max_payload);
        let max_messages = subscription.batch_size.max(1);
        // Whatever is there, without waiting for a full batch: with packs a round's messages
        // rarely fill one, and each round would wait out `fetch_wait`. When nothing is
        // there, wait up to `fetch_wait` for a first message, then take what came with it.
        let fetch_now = |max_messages: usize| {
            consumer
                .fetch()
                .max_messages(max_messages)
                .max_bytes(max_bytes)
                .messages()
        };
        let (mut messages, mut fetch_error) =
            drain(fetch_now(max_messages).await, FETCH_REPLY_LIMIT).await;
        if messages.is_empty() && fetch_error.is_none() {
            let first = consumer
                .batch()
                .max_messages(1)
                .max_bytes(max_bytes)
                .expires(self.settings.fetch_wait)
                .messages()
                .await;
            (messages, fetch_error) =
                drain(first, self.settings.fetch_wait + FETCH_REPLY_LIMIT).await;
            if !messages.is_empty() && fetch_error.is_none() && max_messages > 1 {
                let (more, error) =
                    drain(fetch_now(max_messages - 1).await, FETCH_REPLY_LIMIT).await;
                messages.extend(more);
                fetch_error = error;
            }
        }

        // Every event of every message, in order; each message with its event count.
        let mut attempts = Vec::with_capacity(messages.len());
        let mut delivered = Vec::with_capacity(messages.len());
        for message in messages {
            match decode(&message.message) {
                Ok(events) => {
                    let attempt = message
                        .info()
                        .map(|info| u32::try_from(info.delivered).unwrap_or(1).max(1))
                        .unwrap_or(1);
                    delivered.push((message, events.len()));
                    attempts.extend(events.into_iter().map(|event| Attempt {
                        event,
                        attempt,
                        source: Source::Bus,
                    }));
                }
                Err(Unreadable::Version(version)) => {
                    // Written by a newer version: left for a replica that reads it.
                    tracing::warn!(
                        subject = %message.subject,
                        %version,
                        "leaving a JetStream pack of an unknown format for another replica"
                    );
                    message
                        .ack_with(AckKind::Nak(Some(UNKNOWN_FORMAT_RETRY)))
                        .await
                        .map_err(|err| BusError::jetstream("nak", err))?;
                }
                Err(reason) => {
                    // Not one of ours: it can never be applied, do not redeliver it.
                    tracing::warn!(
                        subject = %message.subject,
                        %reason,
                        "dropping a JetStream message that holds no readable Meridian event"
                    );
                    message
                        .ack_with(AckKind::Term)
                        .await
                        .map_err(|err| BusError::jetstream("term", err))?;
                }
            }
        }

        // At most `batch_size` events per transaction, as on the in-process bus: one pack
        // may hold more. The first transaction runs even without messages: it takes the
        // requested replays.
        let mut chunks = attempts.chunks(subscription.batch_size.max(1));
        let first = chunks.next().unwrap_or(&[]);
        let (mut outcomes, replay_outcomes) = self
            .apply_in_transaction(subscription, handler, first, true)
            .await?;
        for chunk in chunks {
            let (applied, _) = self
                .apply_in_transaction(subscription, handler, chunk, false)
                .await?;
            outcomes.extend(applied);
        }

        let mut stats = ConsumeStats::default();
        for outcome in &replay_outcomes {
            stats.count(outcome);
        }
        let mut outcomes = outcomes.iter();
        for (message, events) in &delivered {
            // Redelivered once the longest backoff among its events is over, if any waits.
            let mut retry_after = None;
            for outcome in outcomes.by_ref().take(*events) {
                stats.count(outcome);
                if let Outcome::Retry { delay, .. } = outcome {
                    retry_after = retry_after.max(Some(*delay));
                }
            }
            let kind = match retry_after {
                Some(delay) => AckKind::Nak(Some(delay)),
                None => AckKind::Ack,
            };
            // A lost ack means a redelivery, which the processed-events table absorbs.
            if let Err(err) = message.ack_with(kind).await {
                tracing::warn!(error = %err, "JetStream ack failed; the events will be redelivered");
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
    with_replays: bool,
) -> Result<(Vec<Outcome>, Vec<Outcome>), BusError> {
    let replays = if with_replays {
        requested_replays(tx, subscription).await?
    } else {
        Vec::new()
    };
    let outcomes = apply_all(tx, subscription, handler, attempts).await?;
    let replay_outcomes = apply_all(tx, subscription, handler, &replays).await?;
    Ok((outcomes, replay_outcomes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    type Reply = Result<u32, &'static str>;

    #[tokio::test]
    async fn a_pull_request_without_an_end_is_given_up_keeping_what_came() {
        // Two messages came, then the server went away with the request: nothing more
        // comes, not even the end.
        let batch = stream::iter([Ok(1), Ok(2)]).chain(stream::pending::<Reply>());
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            drain(Ok(batch), Duration::from_millis(50)),
        )
        .await;
        let (messages, error) = ended.expect("the drain gives up at its limit");
        assert_eq!(messages, [1, 2]);
        let error = error.expect("a given-up request is an error").to_string();
        assert!(error.contains("no end of the pull request"), "{error}");
    }

    #[tokio::test]
    async fn a_pull_request_that_ends_is_drained_whole() {
        let batch = stream::iter([Ok(1), Ok(2), Ok(3)]);
        let (messages, error) = drain::<u32, &str>(Ok(batch), Duration::from_secs(5)).await;
        assert_eq!(messages, [1, 2, 3]);
        assert!(error.is_none());
    }

    #[tokio::test]
    async fn an_error_in_a_pull_request_ends_it_keeping_what_came() {
        let batch = stream::iter([Ok(1), Err("status 409"), Ok(3)]);
        let (messages, error) = drain(Ok(batch), Duration::from_secs(5)).await;
        assert_eq!(messages, [1]);
        assert!(error.unwrap().to_string().contains("status 409"));
    }
}
