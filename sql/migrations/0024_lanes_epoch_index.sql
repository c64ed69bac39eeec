-- 0024: the lanes' epoch index led by the epoch (docs/performance.md, row 63).
--
-- The retirement check (_lanes_retire) reads the lanes of an org's current epoch
-- through an index on (org_id, epoch). Every other statement on _lanes names a
-- lane by its key (org_id, pool_ids, lane), and PL/pgSQL runs them on generic
-- plans, which estimate `org_id = $1` from the table's statistics: once a set's
-- lanes are made as its callers need them (most sets have one), an org has few
-- lanes on average, and the planner took the (org_id, epoch) index for `org_id =
-- $1` with the set and the lane as a filter -- reading every lane of the org (all
-- 32 of a busy set, each on its own page, under the pools' gates in a commit)
-- instead of one. Led by the epoch, the index still serves the retirement check
-- (both columns are equal there) and no longer matches a look-up by org alone,
-- which the primary key serves.
drop index costwarden._lanes_org_epoch;
create index _lanes_epoch_org on costwarden._lanes (epoch, org_id);
