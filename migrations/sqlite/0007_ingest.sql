-- Accepted events (meridian-ingest). No plaintext personal data: identifiers are stored only
-- as blind indexes, and every personal field (properties, traits, context, names, the
-- identifiers' normalized values) is sealed into `body` under the vault subject named in
-- `sealed_subject` (the subject of the event's anchor identifier). PostgreSQL partitions
-- the events by month; the embedded store keeps one table.

CREATE TABLE ingest_message_ids (
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    message_id   TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    PRIMARY KEY (workspace_id, message_id)
);
CREATE INDEX ingest_message_ids_received ON ingest_message_ids (received_at);

CREATE TABLE ingest_events (
    workspace_id   TEXT NOT NULL,
    received_at    TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    kind           INTEGER NOT NULL,
    event_name     TEXT NOT NULL,
    occurred_at    TEXT NOT NULL,
    jurisdiction   TEXT NOT NULL,
    anchor_kind    INTEGER NOT NULL,
    anchor_index   BLOB NOT NULL CHECK (length(anchor_index) = 32),
    sealed_subject TEXT NOT NULL,
    identifiers    BLOB NOT NULL,
    body           BLOB NOT NULL,
    purposes       TEXT NOT NULL,
    PRIMARY KEY (workspace_id, event_id)
);
CREATE INDEX ingest_events_anchor ON ingest_events (workspace_id, anchor_index, received_at);
CREATE INDEX ingest_events_received ON ingest_events (received_at);
