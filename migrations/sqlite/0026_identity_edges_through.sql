-- The highest identity_edges.seq the committed graph holds (see the PostgreSQL migration
-- of the same number). Here every edge is written in the delivery's own transaction, so
-- no edge is ever above it; the column keeps the reads the same on both stores.
ALTER TABLE identity_graph_versions ADD COLUMN edges_through BIGINT;
UPDATE identity_graph_versions
   SET edges_through = (SELECT max(e.seq) FROM identity_edges e
                         WHERE e.workspace_id = identity_graph_versions.workspace_id);
