-- The erasure saga of the consent room (meridian-consent, issue 11). Instants are
-- microseconds since the Unix epoch (UTC), as in 0004_consent.sql.

-- One saga per erasure request. `subject` is the JSON of what the saga erases
-- (profile ids, blind indexes, vault subjects: no plaintext); it is cleared when
-- the saga completes, so nothing here names the subject afterwards. A worker
-- claims a due saga by taking a lease (`lease_token`, `lease_until`) with
-- FOR UPDATE SKIP LOCKED; a lease that runs out (a killed worker) is taken over.
CREATE TABLE erasure_sagas (
    workspace_id      TEXT NOT NULL,
    request_id        TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('running', 'completed')),
    subject           TEXT,
    next_attempt_at   BIGINT NOT NULL,
    lease_token       TEXT,
    lease_until       BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    finished_at       BIGINT,
    receipt_json      TEXT,
    receipt_signature TEXT,
    PRIMARY KEY (workspace_id, request_id),
    FOREIGN KEY (workspace_id, request_id) REFERENCES dsr_requests (workspace_id, request_id)
);
CREATE INDEX erasure_sagas_due ON erasure_sagas (next_attempt_at) WHERE state = 'running';

-- The saga's steps in order; a step's state is written only after its target
-- succeeded (targets are idempotent, so a step cut short by a crash runs again
-- without effect twice). `report` is JSON of counts, never identifiers.
CREATE TABLE erasure_saga_steps (
    workspace_id TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    position     BIGINT NOT NULL,
    name         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
    attempts     BIGINT NOT NULL DEFAULT 0,
    last_error   TEXT NOT NULL DEFAULT '',
    started_at   BIGINT,
    finished_at  BIGINT,
    report       TEXT,
    PRIMARY KEY (workspace_id, request_id, position),
    FOREIGN KEY (workspace_id, request_id) REFERENCES erasure_sagas (workspace_id, request_id)
);

-- Consent that lapsed (the regime's validity period) is written to the ledger as
-- EXPIRED entries by a sweeper; this index finds the given consents due.
CREATE INDEX consent_state_expiry ON consent_state (expires_at) WHERE decision = 'given';
