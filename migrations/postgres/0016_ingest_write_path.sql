-- Cheaper writes on the ingest path (issue #8, measured with `meridian bench ingest`).
--
-- The foreign key from ingest_message_ids to workspaces ran a trigger and a lookup per
-- accepted event (about a tenth of PostgreSQL's CPU under load). Ingest only writes for
-- the workspace of an authenticated API key, which exists, and workspaces are never
-- deleted while their events are kept; ingest_events and outbox_events never had one.
ALTER TABLE ingest_message_ids DROP CONSTRAINT IF EXISTS ingest_message_ids_workspace_id_fkey;

-- stream_seq is set only by the in-process relay; rows the JetStream relay carries keep it
-- NULL, and every one of them still paid for an entry in the unique index. Only rows with
-- a position need it.
CREATE UNIQUE INDEX outbox_events_stream_seq ON outbox_events (stream_seq) WHERE stream_seq IS NOT NULL;
ALTER TABLE outbox_events DROP CONSTRAINT IF EXISTS outbox_events_stream_seq_key;
