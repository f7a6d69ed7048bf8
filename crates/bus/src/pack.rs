//! Several events of one workspace and family in one JetStream message.
//!
//! The relay published one message per event, and every publish costs a round of work in
//! the relay (headers, an ack future), in the NATS server (a stored message, a `PubAck`)
//! and in each consumer (a delivery, an ack). `bench ingest` put that at about 10 µs of the
//! server's CPU per event, a third of it. So consecutive outbox rows of one workspace and
//! family go out as one *pack*: the workspace and family in headers, the events in the
//! payload. Consumers unpack and apply each event as before: idempotency, retries and dead
//! letters stay per event.
//!
//! The payload is a sequence of entries, each:
//!
//! ```text
//! event id      16 bytes (UUID)
//! occurred_at    8 bytes (microseconds since the Unix epoch, i64 big-endian: the
//!                outbox's precision)
//! key length     4 bytes (u32 big-endian), then the key (UTF-8)
//! payload length 4 bytes (u32 big-endian), then the payload
//! ```

use chrono::{DateTime, Utc};
use meridian_domain::WorkspaceId;
use uuid::Uuid;

use crate::event::{EventFamily, OutboxEvent};

/// Format version, sent in the `Meridian-Pack` header.
pub(crate) const PACK_VERSION: &str = "1";

/// Most bytes of entries an outbox pack row holds (a JetStream pack is also bounded by the
/// server's `max_payload` and the relay's setting).
pub(crate) const MAX_BYTES: usize = 256 * 1024;
/// Most events in one pack.
pub(crate) const MAX_EVENTS: usize = 1_000;

/// Bytes an entry takes besides its key and payload.
const ENTRY_OVERHEAD: usize = 16 + 8 + 4 + 4;

/// The encoded size of `event`'s entry.
pub(crate) fn entry_len(event: &OutboxEvent) -> usize {
    ENTRY_OVERHEAD + event.key.len() + event.payload.len()
}

/// Why a pack could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PackError {
    #[error("pack entry {entry} is truncated")]
    Truncated { entry: usize },
    #[error("pack entry {entry} has a key that is not UTF-8")]
    Key { entry: usize },
    #[error("pack entry {entry} has an instant out of range")]
    Instant { entry: usize },
    #[error("pack holds no event")]
    Empty,
    #[error("pack holds {found} events where {expected} were announced")]
    Count { expected: usize, found: usize },
}

/// Encodes `events` (all of one workspace and family) as a pack payload. Keys and payloads
/// longer than `u32::MAX` bytes cannot reach here: NATS refuses messages far smaller.
pub(crate) fn encode(events: &[&OutboxEvent]) -> Vec<u8> {
    let mut out = Vec::with_capacity(events.iter().map(|e| entry_len(e)).sum());
    for event in events {
        out.extend_from_slice(event.event_id.as_bytes());
        out.extend_from_slice(&event.occurred_at.timestamp_micros().to_be_bytes());
        put_bytes(&mut out, event.key.as_bytes());
        put_bytes(&mut out, &event.payload);
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads the events of a pack of `workspace`'s `family`, in the order they were packed;
/// `expected` is the count its row or message announced.
pub(crate) fn decode(
    workspace: &WorkspaceId,
    family: &EventFamily,
    mut data: &[u8],
    expected: usize,
) -> Result<Vec<OutboxEvent>, PackError> {
    let mut events = Vec::new();
    while !data.is_empty() {
        let entry = events.len();
        let truncated = PackError::Truncated { entry };
        let (id, rest) = data.split_first_chunk::<16>().ok_or(truncated.clone())?;
        let (micros, rest) = rest.split_first_chunk::<8>().ok_or(truncated.clone())?;
        let (key, rest) = take_bytes(rest).ok_or(truncated.clone())?;
        let (payload, rest) = take_bytes(rest).ok_or(truncated)?;
        data = rest;
        let occurred_at = DateTime::<Utc>::from_timestamp_micros(i64::from_be_bytes(*micros))
            .ok_or(PackError::Instant { entry })?;
        let key = std::str::from_utf8(key).map_err(|_| PackError::Key { entry })?;
        events.push(OutboxEvent {
            event_id: Uuid::from_bytes(*id),
            workspace_id: workspace.clone(),
            family: family.clone(),
            key: key.to_owned(),
            payload: payload.to_vec(),
            occurred_at,
        });
    }
    if events.is_empty() {
        return Err(PackError::Empty);
    }
    if events.len() != expected {
        return Err(PackError::Count {
            expected,
            found: events.len(),
        });
    }
    Ok(events)
}

fn take_bytes(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Splits `events` into runs to publish as one message each: consecutive events of one
/// workspace and family whose entries fit in `max_bytes` together, at most `max_events`.
/// Order is kept. An event too large for a pack is a run of its own.
pub(crate) fn runs<'a>(
    events: impl IntoIterator<Item = &'a OutboxEvent>,
    max_bytes: usize,
    max_events: usize,
) -> Vec<Vec<&'a OutboxEvent>> {
    let mut runs: Vec<Vec<&OutboxEvent>> = Vec::new();
    let mut bytes = 0;
    for event in events {
        let len = entry_len(event);
        let joins = runs.last().is_some_and(|run| {
            run.first().is_some_and(|first| {
                first.workspace_id == event.workspace_id && first.family == event.family
            }) && run.len() < max_events
                && bytes + len <= max_bytes
        });
        if joins {
            bytes += len;
            if let Some(run) = runs.last_mut() {
                run.push(event);
            }
        } else {
            bytes = len;
            runs.push(vec![event]);
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(workspace: &str, family: &str, key: &str, payload: &[u8]) -> OutboxEvent {
        OutboxEvent::new(
            workspace.parse().unwrap(),
            family.parse().unwrap(),
            key,
            payload.to_vec(),
        )
    }

    #[test]
    fn a_pack_reads_back_as_the_events_it_was_made_of() {
        let mut events = vec![
            event("acme", "profile", "p-1", b"first"),
            event("acme", "profile", "", b""),
            event("acme", "profile", "p-\u{e9}", &[0u8; 300]),
        ];
        // Instants keep their microseconds (what the outbox stores) and may predate 1970.
        events[0].occurred_at = DateTime::from_timestamp_micros(1_765_000_000_000_001).unwrap();
        events[1].occurred_at = DateTime::from_timestamp_micros(-1_234_567).unwrap();
        events[2].occurred_at = DateTime::from_timestamp_micros(1_765_000_000_123_456).unwrap();
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let data = encode(&refs);
        assert_eq!(data.len(), events.iter().map(entry_len).sum::<usize>());
        let back = decode(&events[0].workspace_id, &events[0].family, &data, 3).unwrap();
        assert_eq!(back, events);
        assert_eq!(
            decode(&events[0].workspace_id, &events[0].family, &data, 4),
            Err(PackError::Count {
                expected: 4,
                found: 3
            })
        );
    }

    #[test]
    fn a_damaged_pack_is_refused_with_the_entry_at_fault() {
        let events = [
            event("acme", "profile", "p-1", b"first"),
            event("acme", "profile", "p-2", b"second"),
        ];
        let refs: Vec<&OutboxEvent> = events.iter().collect();
        let data = encode(&refs);
        let (ws, family) = (&events[0].workspace_id, &events[0].family);
        // Every cut inside the second entry names it; none panics.
        let first = entry_len(&events[0]);
        for cut in first + 1..data.len() {
            assert_eq!(
                decode(ws, family, &data[..cut], 2),
                Err(PackError::Truncated { entry: 1 }),
                "cut at {cut}"
            );
        }
        assert_eq!(decode(ws, family, &[], 0), Err(PackError::Empty));
        // A length word larger than what follows.
        let mut long = data.clone();
        long[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode(ws, family, &long, 2),
            Err(PackError::Truncated { entry: 0 })
        );
        let mut bad_key = data.clone();
        bad_key[28] = 0xff;
        assert_eq!(
            decode(ws, family, &bad_key, 2),
            Err(PackError::Key { entry: 0 })
        );
        let mut bad_instant = data;
        bad_instant[16..24].copy_from_slice(&i64::MAX.to_be_bytes());
        assert_eq!(
            decode(ws, family, &bad_instant, 2),
            Err(PackError::Instant { entry: 0 })
        );
    }

    #[test]
    fn runs_keep_order_and_break_at_workspace_family_size_and_count() {
        let small = |ws: &str, family: &str| event(ws, family, "k", &[1u8; 100]);
        let events = vec![
            small("acme", "profile"),
            small("acme", "profile"),
            small("acme", "consent"),   // another family
            small("globex", "consent"), // another workspace
            small("globex", "consent"),
            small("globex", "consent"),
            event("globex", "consent", "k", &[2u8; 1_000]), // too large for any pack
            small("globex", "consent"),
        ];
        let entry = entry_len(&events[0]);
        let lens = |runs: &[Vec<&OutboxEvent>]| runs.iter().map(Vec::len).collect::<Vec<_>>();
        let runs = runs(&events, 2 * entry, 10);
        assert_eq!(lens(&runs), vec![2, 1, 2, 1, 1, 1]);
        let flat: Vec<Uuid> = runs.iter().flatten().map(|e| e.event_id).collect();
        let order: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(flat, order);
        assert_eq!(
            lens(&super::runs(&events, usize::MAX, 2)),
            vec![2, 1, 2, 2, 1]
        );
        assert_eq!(lens(&super::runs(&events, usize::MAX, 1)), vec![1; 8]);
        assert!(super::runs(&[], 1_000, 10).is_empty());
    }
}
