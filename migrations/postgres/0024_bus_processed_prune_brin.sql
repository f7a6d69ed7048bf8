-- no-transaction
-- The bus's processed-event records (meridian-bus), step 1 of 2: an index for what reads
-- them by time, in place of one nothing reads.
--
-- `bus_processed` is read by (consumer, event_id), its primary key, and by `outbox prune`
-- (`DELETE … WHERE processed_at < cutoff`), which had no index and read the whole table.
-- Rows arrive in processed_at order, so a BRIN index serves that range for almost nothing
-- on insert (as 0020 did for ingest's message-id claims). 0025 drops
-- `bus_processed_workspace`, a B-tree on workspace_id that every consumer's insert paid
-- for (one per applied event) and that no query of the service used.
--
-- CONCURRENTLY, outside a transaction and one statement per file: consumers keep writing
-- while the index builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS bus_processed_processed_at_brin
    ON bus_processed USING brin (processed_at);
