-- The audience room (meridian-audience): read models of profiles built from bus events,
-- segments and their members, destinations, syncs and the destination membership ledger.
-- No plaintext personal data: identifier presence only, computed (non-personal) traits,
-- event counts and order values per local day; what was sent to a destination is sealed.

-- One row per profile the room has heard of (family `profile`).
CREATE TABLE audience_profiles (
    workspace_id TEXT NOT NULL,
    profile_id   TEXT NOT NULL,
    home_region  TEXT NOT NULL DEFAULT '',
    jurisdiction TEXT NOT NULL DEFAULT '',
    age_band     TEXT NOT NULL DEFAULT '',
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (workspace_id, profile_id)
);

-- Traits segments may test: computed traits (RFM, AIPL stage, ...) and traits the policy
-- classifies as not personal. Text or number.
CREATE TABLE audience_profile_traits (
    workspace_id TEXT NOT NULL,
    profile_id   TEXT NOT NULL,
    name         TEXT NOT NULL,
    text_value   TEXT,
    number_value DOUBLE PRECISION,
    PRIMARY KEY (workspace_id, profile_id, name)
);

-- Which identifier types a profile has (email, phone, ...): presence, never values.
CREATE TABLE audience_profile_identifiers (
    workspace_id    TEXT NOT NULL,
    profile_id      TEXT NOT NULL,
    identifier_type TEXT NOT NULL,
    PRIMARY KEY (workspace_id, profile_id, identifier_type)
);

-- Event aggregates per profile, event name and local day (days since 1970-01-01 in the
-- workspace's time zone), with order value per currency in minor units (family
-- `ingest-event`).
CREATE TABLE audience_event_days (
    workspace_id  TEXT NOT NULL,
    profile_id    TEXT NOT NULL,
    event_name    TEXT NOT NULL,
    local_day     BIGINT NOT NULL,
    currency      TEXT NOT NULL DEFAULT '',
    event_count   BIGINT NOT NULL DEFAULT 0,
    revenue_minor BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, profile_id, event_name, local_day, currency)
);
CREATE INDEX audience_event_days_window ON audience_event_days (workspace_id, event_name, local_day);

CREATE TABLE audience_segments (
    workspace_id       TEXT NOT NULL,
    segment_id         TEXT NOT NULL,
    name               TEXT NOT NULL,
    definition         TEXT NOT NULL,
    purpose            TEXT NOT NULL,
    recompute_schedule TEXT NOT NULL DEFAULT '',
    version            BIGINT NOT NULL,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    PRIMARY KEY (workspace_id, segment_id)
);

CREATE TABLE audience_segment_members (
    workspace_id TEXT NOT NULL,
    segment_id   TEXT NOT NULL,
    profile_id   TEXT NOT NULL,
    joined_at    TEXT NOT NULL,
    PRIMARY KEY (workspace_id, segment_id, profile_id)
);
CREATE INDEX audience_segment_members_profile ON audience_segment_members (workspace_id, profile_id);

-- Accepted events already counted into audience_event_days: a redelivered event is not
-- counted twice.
CREATE TABLE audience_events_applied (
    workspace_id TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    PRIMARY KEY (workspace_id, event_id)
);
