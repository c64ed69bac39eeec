-- 0019: lanes, headroom of a set of pools granted in slices that reservations
-- take without waiting for the pools (docs/internals.md#lanes; docs/performance.md,
-- row 25).
--
-- Every admission used to lock the call's pools and evaluate their limits, so
-- the reservations of one scope were serial for the whole of their transactions,
-- their WAL flush included. A lane is one of 32 rows per (org, set of pools): an
-- admission that had to lock the pools grants each lane a slice of the headroom
-- the limits leave, counted in the pools' held amounts as if it were held; later
-- reservations of the same set hold against a lane they can lock at once
-- (SKIP LOCKED) and leave the pools alone. Grants are carved only below every
-- limit's 80 % alert line, so what a lane admits the limits would have admitted
-- without an alert, a shadow reason or a refusal, and the pools stay the
-- source of truth: a grant is headroom that nobody else may take.
--
-- lane_epoch: bumped by every change of what the limits of an org are (its
-- budgets, its user groups, its settings); a lane carved under an older epoch
-- is not used again until an admission carves it anew.

alter table costwarden._orgs add column lane_epoch bigint not null default 0;

create table costwarden._lanes (
    org_id text not null references costwarden._orgs (org_id),
    pool_ids bigint[] not null,          -- the set of pools, ascending (as on _reservations)
    lane smallint not null,              -- 0 .. _lane_count() - 1
    epoch bigint not null,               -- _orgs.lane_epoch when last carved
    grant_micros bigint[] not null,      -- per pool of pool_ids: headroom granted to this lane,
    grant_tokens bigint[] not null,      -- of which used_* is gone with the holds that ended on it
    used_micros bigint not null default 0,
    used_tokens bigint not null default 0,
    cap_micros bigint not null,          -- least(grant_micros) - used_micros: what the lane can hold
    cap_tokens bigint not null,
    held_micros bigint not null default 0,   -- the holds of its reservations
    held_tokens bigint not null default 0,
    primary key (org_id, pool_ids, lane)
) with (fillfactor = 50);

comment on table costwarden._lanes is
'Slices of the headroom of a set of pools, counted in the pools'' held amounts, '
'that reservations hold against without locking the pools (docs/internals.md#lanes).';

alter table costwarden._reservations add column lane smallint;

comment on column costwarden._reservations.lane is
'The lane of (org_id, pool_ids) the hold is on (null: on the pools directly).';
