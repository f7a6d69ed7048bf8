-- Accepted events (meridian-ingest). No plaintext personal data: identifiers are stored only
-- as blind indexes, and every personal field (properties, traits, context, names, the
-- identifiers' normalized values) is sealed into `body` under the vault subject named in
-- `sealed_subject` (the subject of the event's anchor identifier).

-- Idempotency: one row per (workspace, message_id) ever accepted. Kept apart from the
-- events because a unique index on a partitioned table must include the partition key.
-- Written in the same transaction as the event and its outbox row.
CREATE TABLE ingest_message_ids (
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    message_id   TEXT NOT NULL,
    event_id     UUID NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workspace_id, message_id)
);
CREATE INDEX ingest_message_ids_received ON ingest_message_ids (received_at);

-- The events, range-partitioned by month of `received_at`. The room creates partitions
-- ahead (`ingest_events_yYYYYmMM`) and retention drops whole partitions; the default
-- partition only catches rows no partition was made for.
CREATE TABLE ingest_events (
    workspace_id   TEXT NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL,
    event_id       UUID NOT NULL,
    message_id     TEXT NOT NULL,
    kind           SMALLINT NOT NULL,
    -- Track: the event name (`Order Completed`); not personal data.
    event_name     TEXT NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    jurisdiction   TEXT NOT NULL,
    anchor_kind    SMALLINT NOT NULL,
    anchor_index   BYTEA NOT NULL CHECK (length(anchor_index) = 32),
    sealed_subject TEXT NOT NULL,
    -- Every identifier of the event: (kind: 1 byte ‖ blind index: 32 bytes) each.
    identifiers    BYTEA NOT NULL,
    -- The sealed JSON body (record `event_id`, field `body`).
    body           BYTEA NOT NULL,
    -- Purposes the consent gate found a basis for, comma-separated.
    purposes       TEXT NOT NULL,
    PRIMARY KEY (workspace_id, received_at, event_id)
) PARTITION BY RANGE (received_at);
CREATE TABLE ingest_events_default PARTITION OF ingest_events DEFAULT;
CREATE INDEX ingest_events_anchor ON ingest_events (workspace_id, anchor_index, received_at);
