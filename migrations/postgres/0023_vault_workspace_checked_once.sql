-- The vault's per-subject tables stop checking their workspace row by row (meridian-vault,
-- issue #8), as ingest's and identity's tables did in 0016 and 0017.
--
-- Ingest creates a subject key and identifier subjects for every new shopper. The foreign
-- key ran a trigger per row, a lookup of the workspace and a shared lock on its row, which
-- several ingest calls at once turn into multixacts (pg_stat_slru counted their traffic
-- in a `bench ingest` run before this change and none after). Without both, PostgreSQL's
-- CPU per ingested event fell from 2.19 to 1.99 times the CPU per row of `bench ingest`'s
-- COPY baseline (medians of 6 alternated pairs of `--runs 3`).
--
-- The key store now checks the workspace itself, once per workspace and process, before
-- its first write to these tables (`PgKeyStore::check_workspace`): a key for a workspace
-- that does not exist is still refused with `UnknownWorkspace`. Workspaces are never
-- deleted, and vault_workspace_keys keeps its foreign key. SQLite keeps both (one index
-- probe in process, and dropping one would mean rebuilding the table).
ALTER TABLE vault_subject_keys DROP CONSTRAINT IF EXISTS vault_subject_keys_workspace_id_fkey;
ALTER TABLE vault_identifier_subjects DROP CONSTRAINT IF EXISTS vault_identifier_subjects_workspace_id_fkey;
