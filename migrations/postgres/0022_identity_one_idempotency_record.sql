-- The identity consumer's only idempotency record is now the bus's: it records each
-- accepted event in bus_processed under the ingested event's id (the consumer's
-- idempotency key) instead of also in identity_applied_events, which grew by one row per
-- ingested event and was never pruned.
--
-- Backwards compatible for one release (pods of the previous release keep consuming
-- during a rollout and still write identity_applied_events):
-- 1. the ids recorded so far are recorded in bus_processed too, so an event applied
--    before is still skipped when delivered again to a new pod;
-- 2. until the table goes, what an old pod records there is recorded in bus_processed
--    in the same transaction (trigger below).
-- A later release drops the table and the trigger (docs/operations.md).
INSERT INTO bus_processed (consumer, event_id, workspace_id)
SELECT 'identity', event_id::uuid, workspace_id
FROM identity_applied_events
WHERE event_id ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
ON CONFLICT DO NOTHING;

CREATE FUNCTION identity_applied_events_to_bus() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Ingest's ids are hyphenated UUIDs, which the new consumer uses as they are.
    IF NEW.event_id ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' THEN
        INSERT INTO bus_processed (consumer, event_id, workspace_id)
        VALUES ('identity', NEW.event_id::uuid, NEW.workspace_id)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER identity_applied_events_to_bus
AFTER INSERT ON identity_applied_events
FOR EACH ROW EXECUTE FUNCTION identity_applied_events_to_bus();
