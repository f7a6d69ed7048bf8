-- no-transaction
-- Cheaper message-id claims (meridian-ingest, issue #8), step 1 of 2.
--
-- Only retention reads ingest_message_ids by received_at (`DELETE … WHERE received_at <
-- cutoff`), and rows arrive in received_at order: a BRIN index serves that range almost
-- for free on insert, where the B-tree `ingest_message_ids_received` cost about 1.5 µs of
-- PostgreSQL time per accepted event. Space that retention frees is reused by newer rows,
-- so some block ranges come to span old and new instants; retention then reads those
-- ranges too, which a periodic job can afford.
--
-- CONCURRENTLY, outside a transaction and one statement per file: ingest keeps writing
-- while the index builds. 0021 drops the B-tree.
CREATE INDEX CONCURRENTLY IF NOT EXISTS ingest_message_ids_received_brin
    ON ingest_message_ids USING brin (received_at);
