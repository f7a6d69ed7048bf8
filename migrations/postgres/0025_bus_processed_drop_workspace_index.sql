-- no-transaction
-- Step 2 of 2 (see 0024): pruning now has the BRIN index; the unused B-tree on
-- workspace_id goes.
DROP INDEX CONCURRENTLY IF EXISTS bus_processed_workspace;
