-- The vault subject of each identifier (meridian-vault). Rooms seal what they hold about an
-- identifier (events, sealed copies) under this subject, so erasing a person forgets the subject
-- of each of their identifiers. The row is deleted once its subject is forgotten: an identifier
-- seen again after erasure gets a new subject (the tombstone stays in vault_subject_keys).
CREATE TABLE vault_identifier_subjects (
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    blind_index  BLOB NOT NULL CHECK (length(blind_index) = 32),
    subject_id   TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (workspace_id, blind_index)
);
