-- Transactional outbox and the event bus (meridian-bus). See the PostgreSQL migration
-- for the design; here instants are RFC 3339 UTC text with microseconds (fixed width,
-- so they compare as text), event ids hyphenated UUID text.

CREATE TABLE outbox_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    workspace_id TEXT NOT NULL,
    family       TEXT NOT NULL,
    event_key    TEXT NOT NULL,
    payload      BLOB NOT NULL,
    occurred_at  TEXT NOT NULL,
    enqueued_at  TEXT NOT NULL,
    sent_at      TEXT,
    -- In-process bus only: SQLite serializes writers, so seq order is commit order and
    -- the relay sets stream_seq = seq.
    stream_seq   INTEGER UNIQUE
);
CREATE INDEX outbox_events_unsent ON outbox_events (seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_events_family_stream ON outbox_events (family, stream_seq) WHERE stream_seq IS NOT NULL;
CREATE INDEX outbox_events_workspace ON outbox_events (workspace_id);

CREATE TABLE bus_processed (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX bus_processed_workspace ON bus_processed (workspace_id);

-- Positions span workspaces: the one bus table without a workspace_id (no tenant data).
CREATE TABLE bus_consumer_offsets (
    consumer   TEXT NOT NULL,
    family     TEXT NOT NULL,
    position   INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (consumer, family)
);

CREATE TABLE bus_retries (
    consumer        TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    workspace_id    TEXT NOT NULL,
    family          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX bus_retries_due ON bus_retries (consumer, family, next_attempt_at);

CREATE TABLE bus_dead_letters (
    dead_letter_id      TEXT NOT NULL UNIQUE,
    consumer            TEXT NOT NULL,
    event_id            TEXT NOT NULL,
    workspace_id        TEXT NOT NULL,
    family              TEXT NOT NULL,
    event_key           TEXT NOT NULL,
    payload             BLOB NOT NULL,
    occurred_at         TEXT NOT NULL,
    attempts            INTEGER NOT NULL,
    last_error          TEXT NOT NULL,
    dead_at             TEXT NOT NULL,
    replay_requested_at TEXT,
    resolved_at         TEXT,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX bus_dead_letters_workspace ON bus_dead_letters (workspace_id);
CREATE INDEX bus_dead_letters_replay ON bus_dead_letters (consumer, family) WHERE replay_requested_at IS NOT NULL;
