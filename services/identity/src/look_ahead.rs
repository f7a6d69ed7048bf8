//! The next delivery, prepared ahead for the `ingest-event` consumer.
//!
//! The bus names the events it will deliver next, with their payloads
//! ([`meridian_bus::EventHandler::look_ahead`]); ingest keys each accepted event by its
//! sealed subject. The room notes them and, once the current delivery's graph pass is done
//! and its store write begins (or when the hint arrives during that write), loads their
//! data keys into the vault's cache and decodes them ([`crate::accepted::decode_ahead`]:
//! the payload, opening the sealed identifiers, matching blocked values): the consumer
//! waits on the database then, so this uses a core that would otherwise idle. The next
//! delivery takes what was prepared for each of its events (by outbox event id) instead of
//! decoding it again. Started earlier (when the hint arrives), the loading competed with
//! the graph pass for the cores and saved nothing in `bench identity`.
//!
//! Once prepared, the next delivery of the workspace being written is also **stitched
//! ahead** ([`StitchedAhead`]): its graph pass runs on the cached graph as the current
//! delivery left it, still during that delivery's store write, and the next delivery
//! takes the pass instead of running it. Only the delivery of exactly the events named
//! takes it, on the graph it was made on; anything else (another delivery, a write
//! through the API, a rollback, an erasure since) reloads the graph from the store.
//!
//! A hint is only a hint: an event prepared and not delivered next is decoded again if it
//! comes later. What was prepared is used only while the workspace's blocked values are
//! the ones it was matched against and this replica forgot no data key since its keys
//! were read ([`meridian_vault::Vault::forget_generation`]): an erasure between the
//! preparing and the delivery makes the delivery decode again, and skip what the erasure
//! took. Anything else a delivery decodes and applies exactly as without the look-ahead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use meridian_bus::UpcomingEvent;
use meridian_proto::bus::v1::EventAccepted;
use tokio::task::JoinHandle;

use crate::accepted::Decoded;
use crate::identifier::NodeKey;
use crate::room::{GraphPass, IdentityRoom};
use uuid::Uuid;

/// Events noted for the next delivery, the preparing in flight, what it prepared, and
/// the next delivery of one workspace stitched ahead.
#[derive(Default)]
pub(crate) struct LookAhead {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The latest hint not yet started on, by workspace.
    noted: BTreeMap<String, Vec<UpcomingEvent>>,
    /// Whether a delivery's store write runs: a hint arriving then is started on at once
    /// (the bus may name the next delivery only once it has read it, on a connection of
    /// its own, while the current one is applied).
    writing: bool,
    /// At most one preparing runs, however slow the key store.
    preparing: Option<JoinHandle<Prepared>>,
    /// What the last finished preparing made, until taken or replaced.
    prepared: Prepared,
    /// The last delivery stitched ahead, until taken or replaced.
    stitched: Option<StitchedAhead>,
}

/// Events decoded ahead, by workspace.
pub(crate) type Prepared = HashMap<String, PreparedEvents>;

/// One workspace's events decoded ahead of their delivery.
pub(crate) struct PreparedEvents {
    /// The outbox ids the hint named in this workspace, in delivery order (also those whose
    /// payload could not be decoded ahead).
    pub(crate) named: Vec<Uuid>,
    /// [`meridian_vault::Vault::forget_generation`] before their data keys were read.
    pub(crate) forget_generation: u64,
    /// The blocked values they were matched against.
    pub(crate) blocked: Arc<HashSet<NodeKey>>,
    /// By outbox event id (an outbox row's payload never changes): the payload decoded,
    /// and what decoding made of it (`None`: its subject was forgotten, the event is
    /// skipped).
    pub(crate) events: HashMap<Uuid, (EventAccepted, Option<Decoded>)>,
}

impl PreparedEvents {
    /// Whether every event named was decoded ahead.
    fn complete(&self) -> bool {
        self.named.iter().all(|id| self.events.contains_key(id))
    }
}

/// The next delivery of one workspace, stitched ahead: its events decoded ahead and run
/// through the cached graph while the current delivery's store write ran
/// (`IdentityRoom::stitch_ahead`). The cached graph then
/// holds this pass beyond the stored version, marked with `token`: only the delivery of
/// exactly the events named, in that order, takes the graph as it is; anything else reloads
/// the graph from the store.
pub(crate) struct StitchedAhead {
    pub(crate) workspace: String,
    pub(crate) token: u64,
    /// As [`PreparedEvents::forget_generation`] and [`PreparedEvents::blocked`].
    pub(crate) forget_generation: u64,
    pub(crate) blocked: Arc<HashSet<NodeKey>>,
    /// The outbox ids stitched, in delivery order, and their payloads.
    pub(crate) outbox_ids: Vec<Uuid>,
    pub(crate) payloads: Vec<EventAccepted>,
    pub(crate) pass: GraphPass,
}

impl LookAhead {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes `upcoming`, replacing an older hint not yet started on; starts preparing it
    /// if the current delivery's store write has begun.
    pub(crate) fn note(&self, room: &IdentityRoom, upcoming: &[UpcomingEvent]) {
        let mut noted: BTreeMap<String, Vec<UpcomingEvent>> = BTreeMap::new();
        for e in upcoming {
            noted
                .entry(e.workspace_id.clone())
                .or_default()
                .push(e.clone());
        }
        let mut state = self.state();
        state.noted = noted;
        if state.writing {
            Self::start_noted(&mut state, room);
        }
    }

    /// A delivery's store write begins: starts preparing what is noted.
    pub(crate) fn start(&self, room: &IdentityRoom) {
        let mut state = self.state();
        state.writing = true;
        Self::start_noted(&mut state, room);
    }

    /// The current delivery's store write has ended: a hint arriving from now on waits
    /// for the next one.
    pub(crate) fn stop(&self) {
        self.state().writing = false;
    }

    /// Starts preparing the noted events, unless nothing is noted or a preparing has not
    /// been taken yet (the hint then waits for the next call; a finished preparing's work
    /// is never dropped).
    fn start_noted(state: &mut State, room: &IdentityRoom) {
        if state.noted.is_empty() || state.preparing.is_some() {
            return;
        }
        let noted = std::mem::take(&mut state.noted);
        let room = room.clone();
        state.preparing = Some(tokio::spawn(async move {
            let mut prepared = Prepared::new();
            for (workspace, upcoming) in noted {
                if let Some(events) =
                    crate::accepted::decode_ahead(&room, &workspace, &upcoming).await
                {
                    prepared.insert(workspace, events);
                }
            }
            prepared
        }));
    }

    /// Waits for the preparing in flight, if any, and keeps what it made.
    async fn finish_preparing(&self) {
        let Some(preparing) = self.state().preparing.take() else {
            return;
        };
        // A preparing that panicked or was cancelled only leaves the next delivery to
        // decode everything itself.
        if let Ok(prepared) = preparing.await {
            self.state().prepared = prepared;
        }
    }

    /// What was prepared for the delivery of the outbox events `delivered` (waiting for a
    /// preparing still in flight: the delivery about to be decoded is the one it prepares,
    /// since preparing starts only while a store write runs), taken: each prepared event is
    /// used at most once, and what the delivery does not use is dropped. A hint naming this
    /// very delivery, noted too late to be started on, is dropped too: prepared during this
    /// delivery's store write, it would keep the next hint waiting, and every later
    /// preparing would be a delivery behind.
    /// The delivery stitched ahead, if any, is taken too (the caller checks it is this one).
    pub(crate) async fn take(&self, delivered: &[Uuid]) -> (Prepared, Option<StitchedAhead>) {
        self.finish_preparing().await;
        let mut state = self.state();
        if state
            .noted
            .values()
            .filter_map(|hint| hint.first())
            .any(|first| delivered.contains(&first.event_id))
        {
            state.noted.clear();
        }
        (std::mem::take(&mut state.prepared), state.stitched.take())
    }

    /// The events prepared in `workspace`, taken, if every event the hint named there was
    /// prepared (waiting for a preparing still in flight); otherwise they stay for the
    /// delivery to take.
    pub(crate) async fn take_complete(&self, workspace: &str) -> Option<PreparedEvents> {
        self.finish_preparing().await;
        let mut state = self.state();
        if !state.prepared.get(workspace)?.complete() {
            return None;
        }
        state.prepared.remove(workspace)
    }

    /// Keeps a delivery stitched ahead for [`LookAhead::take`].
    pub(crate) fn keep_stitched(&self, stitched: StitchedAhead) {
        self.state().stitched = Some(stitched);
    }

    /// Prepares what is noted and waits until no preparing runs (one still running when
    /// this is called is waited for first, then the noted events are prepared).
    pub(crate) async fn settle(&self, room: &IdentityRoom) {
        loop {
            Self::start_noted(&mut self.state(), room);
            if self.state().preparing.is_none() {
                return;
            }
            self.finish_preparing().await;
        }
    }
}
