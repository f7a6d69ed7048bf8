-- The identity graph (meridian-identity). Identifiers are stored only as blind indexes
-- (HMAC under the workspace key, see meridian-vault) plus a copy sealed under the vault
-- subject named in sealed_subject, for display and access requests. No plaintext.

-- Profiles: connected components of the graph. A profile absorbed by a merge keeps its row
-- with merged_into set, so old ids still resolve.
CREATE TABLE identity_profiles (
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    profile_id   UUID NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    merged_into  UUID,
    PRIMARY KEY (workspace_id, profile_id)
);

-- Graph nodes: one row per identifier (type + blind index) and the profile holding it.
CREATE TABLE identity_identifiers (
    workspace_id   TEXT NOT NULL REFERENCES workspaces (workspace_id),
    kind           SMALLINT NOT NULL,
    blind_index    BYTEA NOT NULL CHECK (length(blind_index) = 32),
    profile_id     UUID NOT NULL,
    -- The issuing system of a storefront customer id (`shopify`); not personal data.
    source         TEXT NOT NULL DEFAULT '',
    sealed_subject TEXT,
    sealed_value   BYTEA,
    first_seen_at  TIMESTAMPTZ NOT NULL,
    -- Seen with too many distinct user ids: never linked again.
    shared         BOOLEAN NOT NULL DEFAULT FALSE,
    -- Blind indexes (32 bytes each, concatenated) of the user ids the value was seen with.
    seen_user_ids  BYTEA NOT NULL DEFAULT '\x',
    PRIMARY KEY (workspace_id, kind, blind_index)
);
CREATE INDEX identity_identifiers_profile ON identity_identifiers (workspace_id, profile_id);

-- Applied links: every edge records the event, the rule and the time. Both ends are always
-- in the same profile, so the `from` end finds a profile's edges.
CREATE TABLE identity_edges (
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    seq          BIGINT NOT NULL,
    from_kind    SMALLINT NOT NULL,
    from_index   BYTEA NOT NULL,
    to_kind      SMALLINT NOT NULL,
    to_index     BYTEA NOT NULL,
    rule         TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    linked_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workspace_id, seq)
);
CREATE INDEX identity_edges_from ON identity_edges (workspace_id, from_kind, from_index);

-- Refused links (merge protection, limits, blocked and shared values), recorded and reported.
CREATE TABLE identity_conflicts (
    conflict_id  BIGSERIAL PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    from_kind    SMALLINT NOT NULL,
    from_index   BYTEA NOT NULL,
    to_kind      SMALLINT NOT NULL,
    to_index     BYTEA NOT NULL,
    rule         TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    seen_at      TIMESTAMPTZ NOT NULL,
    reason       TEXT NOT NULL
);
CREATE INDEX identity_conflicts_from ON identity_conflicts (workspace_id, from_kind, from_index);
CREATE INDEX identity_conflicts_to ON identity_conflicts (workspace_id, to_kind, to_index);
