-- The audience room's destinations (meridian-audience): where segments are sent, each
-- sync and its counts, and the destination membership ledger: which destination holds
-- which member, with the identifiers actually sent (sealed under the member's vault
-- subject: hashes identify a person on the platform), the consent entry and policy
-- version that allowed it. Credentials are never stored: only the names of the files
-- that hold them (MERIDIAN_DESTINATION_CREDENTIALS_DIR).

CREATE TABLE audience_destinations (
    workspace_id       TEXT NOT NULL,
    destination_id     TEXT NOT NULL,
    name               TEXT NOT NULL,
    platform           TEXT NOT NULL,
    region             TEXT NOT NULL,
    transfer_mechanism TEXT NOT NULL DEFAULT '',
    -- JSON object of platform settings (base URL, API version, audience ids).
    settings           TEXT NOT NULL,
    -- JSON object: credential role (`access_token`) -> credential file name.
    credential_names   TEXT NOT NULL,
    min_audience_size  BIGINT NOT NULL,
    created_at         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, destination_id)
);

CREATE TABLE audience_syncs (
    workspace_id    TEXT NOT NULL,
    sync_id         TEXT NOT NULL,
    segment_id      TEXT NOT NULL,
    destination_id  TEXT NOT NULL,
    -- `running`, `succeeded`, `partially_failed`, `failed`.
    state           TEXT NOT NULL,
    members_sent    BIGINT NOT NULL DEFAULT 0,
    members_removed BIGINT NOT NULL DEFAULT 0,
    members_failed  BIGINT NOT NULL DEFAULT 0,
    -- JSON object: policy rule id -> members excluded by it.
    excluded        TEXT NOT NULL DEFAULT '{}',
    policy_version  TEXT NOT NULL DEFAULT '',
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    last_error      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (workspace_id, sync_id)
);
CREATE INDEX audience_syncs_pair ON audience_syncs (workspace_id, segment_id, destination_id, started_at);
-- At most one running sync per segment and destination, across replicas: two at once
-- would both send the same adds.
CREATE UNIQUE INDEX audience_syncs_one_running ON audience_syncs (workspace_id, segment_id, destination_id)
    WHERE state = 'running';

-- What each destination holds now, per segment and profile. `status`: `sent` (held by
-- the platform), `removed` (taken back), `failed` (never accepted). A removal sends
-- exactly `sealed_identifiers`.
CREATE TABLE audience_destination_members (
    workspace_id       TEXT NOT NULL,
    destination_id     TEXT NOT NULL,
    segment_id         TEXT NOT NULL,
    profile_id         TEXT NOT NULL,
    status             TEXT NOT NULL,
    purpose            TEXT NOT NULL,
    vault_subject      TEXT NOT NULL,
    sealed_identifiers BLOB,
    consent_entry_id   TEXT NOT NULL DEFAULT '',
    policy_version     TEXT NOT NULL DEFAULT '',
    last_sync_id       TEXT NOT NULL DEFAULT '',
    last_error         TEXT NOT NULL DEFAULT '',
    sent_at            TEXT,
    removed_at         TEXT,
    updated_at         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, destination_id, segment_id, profile_id)
);
CREATE INDEX audience_destination_members_profile ON audience_destination_members (workspace_id, profile_id);

-- Append-only history of every send and removal: "why was this person sent there, then".
CREATE TABLE audience_destination_ledger (
    workspace_id     TEXT NOT NULL,
    entry_id         TEXT NOT NULL,
    destination_id   TEXT NOT NULL,
    segment_id       TEXT NOT NULL,
    profile_id       TEXT NOT NULL,
    -- `sent`, `removed`, `failed`.
    action           TEXT NOT NULL,
    -- `sync`, `consent_withdrawn`, `erasure`.
    cause            TEXT NOT NULL,
    sync_id          TEXT NOT NULL DEFAULT '',
    consent_entry_id TEXT NOT NULL DEFAULT '',
    policy_version   TEXT NOT NULL DEFAULT '',
    detail           TEXT NOT NULL DEFAULT '',
    recorded_at      TEXT NOT NULL,
    PRIMARY KEY (workspace_id, entry_id)
);
CREATE INDEX audience_destination_ledger_profile ON audience_destination_ledger (workspace_id, profile_id, recorded_at);
