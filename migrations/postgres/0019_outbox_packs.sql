-- Outbox packs (meridian-bus, issue #8): a row may hold several events of one workspace
-- and family (`packed_events` of them, in the pack format of `crates/bus/src/pack.rs`),
-- written by `enqueue_packed`: one row per ingest call instead of one per event. The
-- JetStream relay publishes such a row as one message; the in-process relay replaces it by
-- its events, each a row with its own stream position, so the bus's log, retries and
-- erasure see single events as before. NULL: one event.
ALTER TABLE outbox_events ADD COLUMN packed_events INTEGER CHECK (packed_events > 1);
-- Packs are only ever unsent rows: the relays and erasure find them through this.
CREATE INDEX outbox_events_unsent_packs ON outbox_events (seq)
    WHERE sent_at IS NULL AND packed_events IS NOT NULL;
-- A pack (hundreds of KiB) is stored out of line. Without this PostgreSQL first tried to
-- compress it (pglz): 4.5 ms per 180 KiB pack of ingest events in `bench ingest`, about
-- 9 µs per event, for payloads that are mostly ciphertext and hashes. Stored as is, the
-- same row took 0.7 ms in a scratch-table test.
ALTER TABLE outbox_events ALTER COLUMN payload SET STORAGE EXTERNAL;
