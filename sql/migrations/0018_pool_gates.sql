-- 0018: a gate row per pool, where the callers of a busy pool queue
-- (docs/internals.md#pool-gates; docs/performance.md, row 21).
--
-- A pool's row lock makes the decisions of its scope sequential, and every
-- reserve, tick, commit and release also updates that row (its holds, its
-- spend). An UPDATE writes a new version of the row, so the callers queued
-- behind the lock holder waited on a version that was already dead when the
-- holder committed: PostgreSQL woke them, each found the row updated, followed
-- it to the new version and queued there again, racing the others for the
-- tuple lock. On one hot workspace at 32 clients a third of the waiters sat on
-- transaction locks at any moment and a sixth on the lock manager's own locks,
-- all of it inside the scope's serial section, and the order in which they had
-- arrived was lost.
--
-- A gate is a row that is never updated: _lock_pools locks the gates of its
-- pools (ascending pool_id) before the pool rows. Waiters queue on one row
-- version, one of them on the holder's transaction and the rest on the tuple
-- lock, and are woken one at a time in arrival order; the pool rows behind the
-- gates are locked as before and nobody waits for them. Every writer of a
-- pool's holds, spend and marks holds the pool's gate (tested: a trigger that
-- checks it on every pool update, tests/python/test_concurrency.py).
--
-- Every pool has its gate: _pool_ensure (the only writer of new pools) creates
-- both in one statement, and this migration adds the gates of the pools that
-- exist.

create table costwarden._pool_gates (
    pool_id bigint primary key references costwarden._pools (pool_id)
);

comment on table costwarden._pool_gates is
'One never-updated row per pool, locked before the pool row (_lock_pools): where the callers of a busy pool queue.';

insert into costwarden._pool_gates (pool_id)
select p.pool_id from costwarden._pools as p
order by p.pool_id;
