-- Tenancy and access: workspaces and the API keys that act in them.
CREATE TABLE workspaces (
    workspace_id TEXT PRIMARY KEY,
    home_region  TEXT NOT NULL,
    time_zone    TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- API keys are stored only as a peppered hash; key_id is the public half of the key.
CREATE TABLE api_keys (
    key_id       TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    secret_hash  BLOB NOT NULL,
    scopes       TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    revoked_at   TEXT
);
CREATE INDEX api_keys_workspace ON api_keys (workspace_id);
