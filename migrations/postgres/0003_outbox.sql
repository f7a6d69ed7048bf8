-- Transactional outbox and the event bus (meridian-bus).
--
-- A room writes its state change and an outbox_events row in one transaction; a relay
-- publishes unsent rows (NATS JetStream, or the in-process bus) and marks them sent.
-- Consumers record each event they applied in bus_processed, in the same transaction
-- as the effect, so redeliveries are skipped.

CREATE TABLE outbox_events (
    seq          BIGSERIAL PRIMARY KEY,
    event_id     UUID NOT NULL UNIQUE,
    workspace_id TEXT NOT NULL,
    family       TEXT NOT NULL,
    event_key    TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    enqueued_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at      TIMESTAMPTZ,
    -- In-process bus only: position in the bus's log, assigned by the relay under
    -- pg_advisory_xact_lock so that positions become visible in commit order.
    stream_seq   BIGINT UNIQUE
);
-- The relay's work queue (claimed with FOR UPDATE SKIP LOCKED).
CREATE INDEX outbox_events_unsent ON outbox_events (seq) WHERE sent_at IS NULL;
-- In-process consumers read one family in log order.
CREATE INDEX outbox_events_family_stream ON outbox_events (family, stream_seq) WHERE stream_seq IS NOT NULL;
CREATE INDEX outbox_events_workspace ON outbox_events (workspace_id);
CREATE SEQUENCE outbox_stream_seq;

-- Events a consumer has applied: written in the same transaction as the effect.
CREATE TABLE bus_processed (
    consumer     TEXT NOT NULL,
    event_id     UUID NOT NULL,
    workspace_id TEXT NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX bus_processed_workspace ON bus_processed (workspace_id);

-- In-process bus: how far each durable consumer has read a family's log. Positions span
-- workspaces (like a JetStream consumer's), so this is the one bus table without a
-- workspace_id: it holds no tenant data, only a number.
CREATE TABLE bus_consumer_offsets (
    consumer   TEXT NOT NULL,
    family     TEXT NOT NULL,
    position   BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, family)
);

-- In-process bus: events a consumer failed on, waiting for their next attempt.
CREATE TABLE bus_retries (
    consumer        TEXT NOT NULL,
    event_id        UUID NOT NULL,
    workspace_id    TEXT NOT NULL,
    family          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    last_error      TEXT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX bus_retries_due ON bus_retries (consumer, family, next_attempt_at);

-- Events a consumer gave up on after its attempts ran out: listed by
-- `meridian outbox dead-letters`, re-delivered to that consumer by `meridian outbox replay`.
CREATE TABLE bus_dead_letters (
    dead_letter_id      UUID NOT NULL UNIQUE,
    consumer            TEXT NOT NULL,
    event_id            UUID NOT NULL,
    workspace_id        TEXT NOT NULL,
    family              TEXT NOT NULL,
    event_key           TEXT NOT NULL,
    payload             BYTEA NOT NULL,
    occurred_at         TIMESTAMPTZ NOT NULL,
    attempts            INTEGER NOT NULL,
    last_error          TEXT NOT NULL,
    dead_at             TIMESTAMPTZ NOT NULL,
    replay_requested_at TIMESTAMPTZ,
    resolved_at         TIMESTAMPTZ,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX bus_dead_letters_workspace ON bus_dead_letters (workspace_id);
CREATE INDEX bus_dead_letters_replay ON bus_dead_letters (consumer, family) WHERE replay_requested_at IS NOT NULL;
