-- Outbox packs (see the PostgreSQL migration): SQLite never writes them (`enqueue_packed`
-- writes one row per event there), the column keeps both schemas alike.
ALTER TABLE outbox_events ADD COLUMN packed_events INTEGER CHECK (packed_events > 1);
