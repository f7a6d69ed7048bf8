-- The identity consumer's only idempotency record is now the bus's: it records each
-- accepted event in bus_processed under the ingested event's id (the consumer's
-- idempotency key) rather than also in identity_applied_events, which grew by one row per
-- ingested event, forever. The ids recorded so far move over, so an event applied before
-- this migration is still skipped if it is delivered again; they are kept from now for
-- the whole prune window of bus_processed. Ingest writes ids as lower-case hyphenated
-- UUIDs, the form the bus binds keys in.
INSERT INTO bus_processed (consumer, event_id, workspace_id, processed_at)
SELECT 'identity', event_id, workspace_id, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
FROM identity_applied_events
WHERE length(event_id) = 36
  AND event_id GLOB '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-*-*-*-*'
ON CONFLICT DO NOTHING;

DROP TABLE identity_applied_events;
