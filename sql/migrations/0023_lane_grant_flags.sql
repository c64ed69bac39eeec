-- 0023: lanes in an org of many sets of pools (docs/performance.md, row 39).
--
-- An org's lanes are 32 per set of pools its calls hold against, and with a
-- pool per user or key that is 32 per active user or key. Two statements read
-- every lane of the org: the give-back of unused grants (_lanes_reclaim), which
-- every admission under the pools' locks runs once a limit, a shadow limit or an
-- alert line is near -- and again on each call while it stays near, finding
-- nothing -- and the retirement check after spend beyond a hold (_lanes_retire).
--
-- lanes_unused: whether some lane may hold an unused grant on the pool. Set when
-- lanes are carved on it, cleared when _lanes_reclaim has given every grant on it
-- back (both under the pool's lock); a grant that has been given back stays used
-- up until the next carve. False: no lane needs reading. Existing pools start
-- true (their lanes may have grants), new ones false.
alter table costwarden._pools add column lanes_unused boolean not null default true;
alter table costwarden._pools alter column lanes_unused set default false;

comment on column costwarden._pools.lanes_unused is
'Some lane may hold an unused grant on this pool (set by _lanes_carve, cleared by _lanes_reclaim).';

-- the retirement check reads the lanes of the org's current epoch only
create index _lanes_org_epoch on costwarden._lanes (org_id, epoch);

-- the give-back finds the lanes that hold grants on given pools: a pool is in
-- the sets of its scope only (the org's pool in all of them). pool_ids never
-- changes, so the index leaves the lanes' updates HOT.
create index _lanes_pool_ids on costwarden._lanes using gin (pool_ids);
