-- The bus's processed-event records (see migrations/postgres/0024 and 0025): pruning reads
-- them by processed_at, and nothing reads them by workspace_id. SQLite has no BRIN index,
-- so the B-tree on workspace_id gives way to one on processed_at (one index per insert, as
-- before).
DROP INDEX IF EXISTS bus_processed_workspace;
CREATE INDEX bus_processed_processed_at ON bus_processed (processed_at);
