-- Identity, part 4 (meridian-identity): how many profiles each workspace and currency has
-- in identity_rfm, kept by every write of RFM rows.
--
-- Whether the quintile cut points are stale depends on that number (a quarter of growth or
-- shrinkage since `population`). Each consumer delivery counted it with COUNT(*) over the
-- workspace's rows in that currency: a cost that grows with the workspace, paid on every
-- delivery. A write now adds what it inserted and subtracts what it deleted; a rescore sets
-- it to the population it scored. NULL (rows from before this migration) is counted once.
ALTER TABLE identity_rfm_boundaries ADD COLUMN members BIGINT;
