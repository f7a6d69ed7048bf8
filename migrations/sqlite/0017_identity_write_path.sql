-- Identity, part 3 (meridian-identity): PostgreSQL drops the per-row foreign keys of the
-- identity tables to workspaces (see migrations/postgres/0017_identity_write_path.sql).
-- The embedded store keeps them: SQLite checks a foreign key with one index probe in
-- process, and dropping one would mean rebuilding each table. Nothing to change here; the
-- file keeps both backends' migration numbers in step.
SELECT 1;
