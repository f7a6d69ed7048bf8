-- Identity, part 2 (meridian-identity): consumed events, traits, computed traits.

-- Where a sealed identifier copy is bound. NULL: sealed by the identity room itself
-- (record `identity:<kind>:<blind index hex>`, field `value`); otherwise the copy ingest
-- sealed (record = the event id, field `identifiers.<position>`).
ALTER TABLE identity_identifiers ADD COLUMN sealed_record TEXT;
ALTER TABLE identity_identifiers ADD COLUMN sealed_field TEXT;

-- One counter per workspace, bumped by every graph write in its transaction: a replica
-- whose cached graph is not at the version before its write reloads the graph (another
-- replica wrote, or a transaction it wrote in was rolled back).
CREATE TABLE identity_graph_versions (
    workspace_id TEXT PRIMARY KEY REFERENCES workspaces (workspace_id),
    version      INTEGER NOT NULL
);

-- Ingested events applied to the graph (idempotency on the ingest event id).
CREATE TABLE identity_applied_events (
    workspace_id TEXT NOT NULL REFERENCES workspaces (workspace_id),
    event_id     TEXT NOT NULL,
    applied_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, event_id)
);

-- Traits: the sealed traits of identify events, kept as ingest sealed them (subject
-- `sealed_subject`, record = event id, field `traits`). A profile's traits are the merge
-- of its payloads, opened on read: per trait, the higher source priority wins, then the
-- later event. Each payload is anchored at the identifier that carried the event, so
-- merges and splits re-home it with that identifier (and erasing the identifier drops it).
CREATE TABLE identity_trait_payloads (
    workspace_id    TEXT NOT NULL REFERENCES workspaces (workspace_id),
    event_id        TEXT NOT NULL,
    profile_id      BLOB NOT NULL,
    anchor_kind     INTEGER NOT NULL,
    anchor_index    BLOB NOT NULL,
    source          TEXT NOT NULL,
    observed_micros INTEGER NOT NULL,
    sealed_subject  TEXT NOT NULL,
    sealed_traits   BLOB NOT NULL,
    PRIMARY KEY (workspace_id, event_id)
);
CREATE INDEX identity_trait_payloads_profile ON identity_trait_payloads (workspace_id, profile_id);

-- Activity behind the computed traits: every order (`Order Completed`, with its revenue)
-- and the first event of each AIPL stage a profile reached, anchored like the trait
-- payloads. Not personal data (amounts, times, stage numbers).
CREATE TABLE identity_activity (
    workspace_id    TEXT NOT NULL REFERENCES workspaces (workspace_id),
    event_id        TEXT NOT NULL,
    profile_id      BLOB NOT NULL,
    anchor_kind     INTEGER NOT NULL,
    anchor_index    BLOB NOT NULL,
    occurred_micros INTEGER NOT NULL,
    stage           INTEGER NOT NULL,
    is_order        BOOLEAN NOT NULL,
    currency        TEXT NOT NULL,
    minor_units     INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, event_id)
);
CREATE INDEX identity_activity_profile ON identity_activity (workspace_id, profile_id);

-- Computed traits: READ MODEL FOR AUDIENCE. Not identifying, so in clear, one row per
-- live profile, recomputed from identity_activity in the transaction that changes the
-- profile's activity or membership (merge, split, removal); absorbed profiles have none.
-- aipl_stage: 0 none, 1 awareness, 2 interest, 3 purchase, 4 loyalty (never goes down).
-- Order figures count `Order Completed` events over every currency.
CREATE TABLE identity_computed_traits (
    workspace_id          TEXT NOT NULL REFERENCES workspaces (workspace_id),
    profile_id            BLOB NOT NULL,
    aipl_stage            INTEGER NOT NULL,
    orders                INTEGER NOT NULL,
    last_order_micros     INTEGER,
    updated_at            TEXT NOT NULL,
    PRIMARY KEY (workspace_id, profile_id)
);
CREATE INDEX identity_computed_traits_stage ON identity_computed_traits (workspace_id, aipl_stage);

-- RFM per profile and currency: READ MODEL FOR AUDIENCE. Scores are quintiles 1..5 (5
-- best) within the workspace and currency, against identity_rfm_boundaries.
CREATE TABLE identity_rfm (
    workspace_id      TEXT NOT NULL REFERENCES workspaces (workspace_id),
    profile_id        BLOB NOT NULL,
    currency          TEXT NOT NULL,
    orders            INTEGER NOT NULL,
    monetary_minor    INTEGER NOT NULL,
    last_order_micros INTEGER NOT NULL,
    recency_score     INTEGER NOT NULL,
    frequency_score   INTEGER NOT NULL,
    monetary_score    INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, profile_id, currency)
);
CREATE INDEX identity_rfm_scores ON identity_rfm (workspace_id, currency, recency_score, frequency_score, monetary_score);

-- Quintile cut points per workspace and currency (4 per measure, comma-separated), and
-- the population they were computed over: recomputed when the population has grown by a
-- quarter (or is under 100 and changed), or an hour has passed.
CREATE TABLE identity_rfm_boundaries (
    workspace_id  TEXT NOT NULL REFERENCES workspaces (workspace_id),
    currency      TEXT NOT NULL,
    recency_cuts  TEXT NOT NULL,
    frequency_cuts TEXT NOT NULL,
    monetary_cuts TEXT NOT NULL,
    population    INTEGER NOT NULL,
    computed_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, currency)
);
