-- The highest identity_edges.seq the committed graph holds. A consumer delivery's new
-- edges are copied on a second connection and committed just before the delivery's own
-- transaction, which raises this column: PostgreSQL then writes both at once, on two
-- backends (bench identity: +7 % links/s, median of 10 alternated pairs). An edge above
-- it belongs to a delivery that has not committed, or never will: no read returns it,
-- and the next write of the workspace's edges (or removal of identifiers) deletes it.
ALTER TABLE identity_graph_versions ADD COLUMN edges_through BIGINT;
UPDATE identity_graph_versions v
   SET edges_through = (SELECT max(e.seq) FROM identity_edges e WHERE e.workspace_id = v.workspace_id);
