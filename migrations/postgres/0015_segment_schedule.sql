-- Scheduled full recomputes of segments (meridian-audience): when the next run of a
-- segment's `recompute_schedule` is due (RFC 3339 UTC, micros). NULL until the scheduler
-- first sees the segment (or after its schedule changed). Replicas claim a slot by moving
-- it forward with a conditional UPDATE, so a slot runs once across restarts and replicas.
ALTER TABLE audience_segments ADD COLUMN next_recompute_at TEXT;
