-- The consent room (meridian-consent): the consent ledger, its projection, and
-- data-subject requests. Instants are microseconds since the Unix epoch (UTC),
-- the same integers the ledger hashes, on both backends.

-- Identifier → consent subject. THE SEAM the identity room will replace: until it
-- exists, a subject is found by the blind index of any of its identifiers. The
-- subject's pseudonymous ledger ref is kept only sealed under the subject's data
-- key, so the link from identifiers to ledger entries dies with `forget`.
CREATE TABLE consent_subjects (
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    blind_index  BYTEA NOT NULL,
    subject_id   TEXT NOT NULL,
    sealed_ref   BYTEA NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, blind_index)
);
CREATE INDEX consent_subjects_subject ON consent_subjects (workspace_id, subject_id);

-- The ledger: append-only, hash-chained per workspace (sequence 1, 2, ...), each
-- batch's last entry signed with the workspace's Ed25519 key (see ledger.rs for
-- the canonical encoding). `body` holds the canonical JSON of the entry content.
CREATE TABLE consent_ledger (
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    sequence     BIGINT NOT NULL CHECK (sequence >= 1),
    entry_id     TEXT NOT NULL,
    subject_ref  TEXT NOT NULL,
    recorded_at  BIGINT NOT NULL,
    body         TEXT NOT NULL,
    prev_hash    BYTEA NOT NULL,
    hash         BYTEA NOT NULL,
    key_version  BIGINT,
    signature    BYTEA,
    PRIMARY KEY (workspace_id, sequence)
);
CREATE INDEX consent_ledger_subject ON consent_ledger (workspace_id, subject_ref, recorded_at, sequence);

-- The database itself refuses to change or remove ledger entries.
CREATE FUNCTION consent_ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consent_ledger is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER consent_ledger_append_only BEFORE UPDATE OR DELETE ON consent_ledger
    FOR EACH ROW EXECUTE FUNCTION consent_ledger_refuse_change();
CREATE TRIGGER consent_ledger_no_truncate BEFORE TRUNCATE ON consent_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION consent_ledger_refuse_change();

-- The chain head per workspace: the append lock and a cross-check for verify.
CREATE TABLE consent_ledger_heads (
    workspace_id TEXT PRIMARY KEY REFERENCES workspaces (workspace_id),
    sequence     BIGINT NOT NULL,
    hash         BYTEA NOT NULL
);

-- RecordConsent retries: the entries a key already appended.
CREATE TABLE consent_idempotency (
    workspace_id    TEXT NOT NULL REFERENCES workspaces (workspace_id),
    idempotency_key TEXT NOT NULL,
    first_sequence  BIGINT NOT NULL,
    last_sequence   BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, idempotency_key)
);

-- Projection: the latest decision per subject × purpose (rebuildable from the ledger).
CREATE TABLE consent_state (
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    subject_ref  TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    decision     TEXT NOT NULL,
    lawful_basis TEXT NOT NULL,
    entry_id     TEXT NOT NULL,
    sequence     BIGINT NOT NULL,
    decided_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    time_zone    TEXT NOT NULL,
    PRIMARY KEY (workspace_id, subject_ref, purpose)
);

-- Data-subject requests. `detail` is JSON: deadline extensions and work steps.
CREATE TABLE dsr_requests (
    workspace_id       TEXT NOT NULL REFERENCES workspaces (workspace_id),
    request_id         TEXT NOT NULL,
    kind               TEXT NOT NULL,
    status             TEXT NOT NULL,
    jurisdiction       TEXT NOT NULL,
    regime             TEXT NOT NULL,
    time_zone          TEXT NOT NULL,
    subject_id         TEXT NOT NULL,
    submitted_at       BIGINT NOT NULL,
    due_at             BIGINT NOT NULL,
    idempotency_key    TEXT,
    detail             TEXT NOT NULL,
    sealed_corrections BYTEA,
    PRIMARY KEY (workspace_id, request_id)
);
CREATE UNIQUE INDEX dsr_requests_idempotency ON dsr_requests (workspace_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX dsr_requests_due ON dsr_requests (workspace_id, due_at, request_id);

-- The audit trail of status changes: append-only as well.
CREATE TABLE dsr_request_history (
    workspace_id TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    position     INTEGER NOT NULL,
    status       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    changed_at   BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, request_id, position),
    FOREIGN KEY (workspace_id, request_id) REFERENCES dsr_requests (workspace_id, request_id)
);
CREATE TRIGGER dsr_request_history_append_only BEFORE UPDATE OR DELETE ON dsr_request_history
    FOR EACH ROW EXECUTE FUNCTION consent_ledger_refuse_change();
