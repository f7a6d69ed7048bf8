-- Field-level encryption keys (meridian-vault). Every key here is wrapped by the KEK
-- (kek_version names which one); nothing in these tables opens data without it.

-- One row per subject: an active data key, or a tombstone once the subject was forgotten
-- (forgotten_at set, key columns NULL). A tombstoned subject never gets a new key.
CREATE TABLE vault_subject_keys (
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    subject_id   TEXT NOT NULL,
    key_id       BLOB,
    kek_version  INTEGER,
    wrapped_key  BLOB,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    forgotten_at TEXT,
    PRIMARY KEY (workspace_id, subject_id),
    CONSTRAINT vault_subject_keys_active_or_forgotten CHECK (
        (forgotten_at IS NULL AND key_id IS NOT NULL AND kek_version IS NOT NULL AND wrapped_key IS NOT NULL)
        OR (forgotten_at IS NOT NULL AND key_id IS NULL AND kek_version IS NULL AND wrapped_key IS NULL)
    )
);
CREATE UNIQUE INDEX vault_subject_keys_key_id ON vault_subject_keys (key_id);
-- Rotation looks for keys not yet under the current KEK version.
CREATE INDEX vault_subject_keys_kek_version ON vault_subject_keys (kek_version) WHERE kek_version IS NOT NULL;

-- Per-workspace keys: the blind-index HMAC key and the ledger signing key (Ed25519 PKCS#8,
-- public half in clear so the ledger verifies without the KEK). Never touched by forget.
CREATE TABLE vault_workspace_keys (
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    purpose      TEXT NOT NULL CHECK (purpose IN ('blind_index', 'ledger_signing')),
    key_version  INTEGER NOT NULL CHECK (key_version >= 1),
    kek_version  INTEGER NOT NULL,
    wrapped_key  BLOB NOT NULL,
    public_key   BLOB,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (workspace_id, purpose, key_version)
);
