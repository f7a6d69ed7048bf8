-- no-transaction
-- Step 2 of 2 (see 0020): retention now has the BRIN index; the B-tree goes.
DROP INDEX CONCURRENTLY IF EXISTS ingest_message_ids_received;
