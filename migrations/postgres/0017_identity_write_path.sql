-- Identity, part 3 (meridian-identity): the identity tables stop checking their workspace
-- row by row.
--
-- Every transaction that writes the graph bumps identity_graph_versions, and that table
-- keeps its foreign key to workspaces: the workspace is checked there, once. The checks on
-- every other row (a consumer delivery writes thousands: identifiers, edges, applied-event
-- records, profiles, activity) repeated the same lookup and row lock per row, a large share
-- of the write's time. A workspace with a graph has its version row, so it still cannot be
-- deleted from under it; and a consumed event's workspace is resolved by the vault (its
-- blind-index key) before anything of it is written.
ALTER TABLE identity_profiles DROP CONSTRAINT identity_profiles_workspace_id_fkey;
ALTER TABLE identity_identifiers DROP CONSTRAINT identity_identifiers_workspace_id_fkey;
ALTER TABLE identity_edges DROP CONSTRAINT identity_edges_workspace_id_fkey;
ALTER TABLE identity_conflicts DROP CONSTRAINT identity_conflicts_workspace_id_fkey;
ALTER TABLE identity_applied_events DROP CONSTRAINT identity_applied_events_workspace_id_fkey;
ALTER TABLE identity_trait_payloads DROP CONSTRAINT identity_trait_payloads_workspace_id_fkey;
ALTER TABLE identity_activity DROP CONSTRAINT identity_activity_workspace_id_fkey;
ALTER TABLE identity_computed_traits DROP CONSTRAINT identity_computed_traits_workspace_id_fkey;
ALTER TABLE identity_rfm DROP CONSTRAINT identity_rfm_workspace_id_fkey;
ALTER TABLE identity_rfm_boundaries DROP CONSTRAINT identity_rfm_boundaries_workspace_id_fkey;
