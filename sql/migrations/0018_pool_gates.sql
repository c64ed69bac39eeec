-- 0018: a gate row per pool, locked before the pool itself
-- (docs/internals.md#lock-order; docs/performance.md, row 21).
--
-- A pool's row lock makes the decisions of its scope sequential, and every
-- reserve, tick, commit and release also updates that row (its holds, its
-- spend). An UPDATE writes a new version of the row, so the reservers queued
-- behind the lock holder wait on a version that is already dead when it
-- commits: PostgreSQL wakes them, each finds the row updated, follows it to the
-- new version and queues there again, racing the others for the tuple lock.
-- On one hot workspace at 32 clients a third of the waiters sat on transaction
-- locks at any moment and a sixth on the lock manager's own locks, all of it
-- inside the scope's serial section.
--
-- A gate is a row that is never updated: _lock_pools locks the gates of its
-- pools (ascending pool_id) before the pools themselves. Waiters then queue on
-- one row whose version never changes, in arrival order, one of them on the
-- holder's transaction and the rest on the tuple lock; the pool rows behind
-- the gates are locked as before (the pool's row lock stays the correctness
-- guarantee: a gate is how the waiters queue, not what they check).
--
-- Every pool has its gate: _pool_ensure (the only writer of _pools) creates
-- both in one statement, and this migration adds the gates of the pools that
-- exist.

create table costwarden._pool_gates (
    pool_id bigint primary key references costwarden._pools (pool_id)
);

comment on table costwarden._pool_gates is
'One never-updated row per pool; _lock_pools locks it before the pool row, so that waiters queue on a stable row.';

insert into costwarden._pool_gates (pool_id)
select p.pool_id from costwarden._pools as p
order by p.pool_id;
