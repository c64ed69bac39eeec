-- Lanes (migration 0019, docs/internals.md#lanes): slices of the headroom of a
-- set of pools, counted in the pools' held amounts, that a reservation of that
-- set holds against without locking the pools.
--
-- The rules that keep every decision what it would be without lanes:
-- * a grant is carved only by an admission that holds the pools' locks, from
--   the headroom below every limit's 80 % alert line (enforced and shadow
--   limits alike), and is counted in each pool's held amount: a reservation a
--   lane admits breaks no limit, reaches no alert line and takes headroom that
--   nobody else could take;
-- * a limit check that would refuse, name a shadow limit or raise an alert with
--   unused grants counted gives them back (_lanes_reclaim) and checks again, so
--   that what it decides is decided on the holds alone;
-- * whatever adds spend beyond a hold (an overage, a late commit, an adjustment,
--   a spend report, a repair) gives back the grants of its pools (_pool_add_spend),
--   and a change of what an org's limits are (budgets, user groups, settings)
--   bumps its lane_epoch: a lane of an older epoch admits nothing until carved anew.
--
-- Lock order (docs/internals.md#lock-order): a lane is taken without waiting
-- (SKIP LOCKED) by a caller that holds no pool lock and then waits for nothing
-- else; everyone else locks lanes only after the pools of their sets, and
-- several lanes in (org_id, pool_ids, lane) order.

-- Internal (reserve): hold p_micros / p_tokens on a lane of the call's set of
-- pools that can take them and is not locked; its number, or null (no lane of
-- the current epoch with room is free: the caller locks the pools).
create or replace function costwarden._lane_take(
    p_org_id text, p_pool_ids bigint[], p_micros bigint, p_tokens bigint
)
returns smallint
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
declare
    v_lane smallint;
begin
    -- each backend starts at its own lane, so that concurrent callers rarely skip
    update costwarden._lanes as l
    set held_micros = l.held_micros + p_micros, held_tokens = l.held_tokens + p_tokens
    where (l.org_id, l.pool_ids, l.lane) = (
        select f.org_id, f.pool_ids, f.lane
        from costwarden._lanes as f
        where f.org_id = p_org_id and f.pool_ids = p_pool_ids
          and f.epoch = (select o.lane_epoch from costwarden._orgs as o where o.org_id = p_org_id)
          and f.cap_micros - f.held_micros >= p_micros and f.cap_tokens - f.held_tokens >= p_tokens
        order by (f.lane + pg_backend_pid()) % 16
        limit 1
        for update skip locked)
    returning l.lane into v_lane;
    return v_lane;
end
$$;

-- Internal: take a reservation's hold off its lane (commit, release, expiry,
-- and a tick, which moves the hold onto the pools). The grants shrink by the
-- hold as well, so each pool's held amount, which counts the grants, loses
-- the hold in the caller's own pool update (or keeps it, for a tick). The
-- caller holds the pools' locks.
create or replace function costwarden._lane_unhold(
    p_org_id text, p_pool_ids bigint[], p_lane smallint, p_micros bigint, p_tokens bigint
)
returns void
language plpgsql
as $$
begin
    update costwarden._lanes as l
    set held_micros = l.held_micros - p_micros, held_tokens = l.held_tokens - p_tokens,
        grant_micros = array(select g - p_micros from unnest(l.grant_micros) with ordinality as u (g, i) order by u.i),
        grant_tokens = array(select g - p_tokens from unnest(l.grant_tokens) with ordinality as u (g, i) order by u.i),
        cap_micros = l.cap_micros - p_micros, cap_tokens = l.cap_tokens - p_tokens
    where l.org_id = p_org_id and l.pool_ids = p_pool_ids and l.lane = p_lane;
end
$$;

-- Internal: give back the unused grants that lanes of the org hold on any of
-- p_pool_ids (each such grant set to what the lane holds; the pool's held
-- amount loses the difference). The caller holds the locks of p_pool_ids; the
-- lanes are locked in key order. Returns whether anything was given back.
create or replace function costwarden._lanes_reclaim(p_org_id text, p_pool_ids bigint[])
returns boolean
language plpgsql
as $$
declare
    v_back record;
    v_any boolean := false;
begin
    for v_back in
        -- the lanes' latest versions, locked (a row locked after a wait is read again)
        with lanes as (
            select l.*
            from costwarden._lanes as l
            where l.org_id = p_org_id and l.pool_ids && p_pool_ids
              and exists (select from unnest(l.pool_ids, l.grant_micros, l.grant_tokens) as u (pool_id, gm, gt)
                          where u.pool_id = any (p_pool_ids)
                            and (u.gm > l.held_micros or u.gt > l.held_tokens))
            order by l.org_id, l.pool_ids, l.lane
            for update
        ),
        given as (
            update costwarden._lanes as l
            set grant_micros = n.gm, grant_tokens = n.gt,
                cap_micros = (select min(x) from unnest(n.gm) as x),
                cap_tokens = (select min(x) from unnest(n.gt) as x)
            from lanes as o
            cross join lateral (
                select array_agg(case when u.pool_id = any (p_pool_ids) then o.held_micros else u.gm end order by u.i) as gm,
                       array_agg(case when u.pool_id = any (p_pool_ids) then o.held_tokens else u.gt end order by u.i) as gt
                from unnest(o.pool_ids, o.grant_micros, o.grant_tokens) with ordinality as u (pool_id, gm, gt, i)
            ) as n
            where (l.org_id, l.pool_ids, l.lane) = (o.org_id, o.pool_ids, o.lane)
        )
        select u.pool_id, sum(u.gm - o.held_micros)::bigint as micros, sum(u.gt - o.held_tokens)::bigint as tokens
        from lanes as o
        cross join lateral unnest(o.pool_ids, o.grant_micros, o.grant_tokens) as u (pool_id, gm, gt)
        where u.pool_id = any (p_pool_ids)
        group by u.pool_id
    loop
        update costwarden._pools as p
        set held_micros = p.held_micros - v_back.micros, held_tokens = p.held_tokens - v_back.tokens
        where p.pool_id = v_back.pool_id and (v_back.micros <> 0 or v_back.tokens <> 0);
        v_any := true;
    end loop;
    return v_any;
end
$$;

-- Internal (reserve, after an admission under the pools' locks): carve every
-- lane of the set that is free now to hold exactly p_micros / p_tokens more
-- than it holds, under p_epoch (the org's lane_epoch read before the limits
-- were). Each pool's held amount moves by what its grants moved. The caller
-- holds the locks of p_pool_ids and has checked that 16 such slices fit below
-- every alert line of every pool of the set.
create or replace function costwarden._lanes_carve(
    p_org_id text, p_pool_ids bigint[], p_epoch bigint, p_micros bigint, p_tokens bigint
)
returns void
language plpgsql
as $$
declare
    v_moved record;
begin
    if not exists (select from costwarden._lanes as l where l.org_id = p_org_id and l.pool_ids = p_pool_ids) then
        insert into costwarden._lanes (org_id, pool_ids, lane, epoch, grant_micros, grant_tokens, cap_micros, cap_tokens)
        select p_org_id, p_pool_ids, g::smallint, p_epoch,
               array_fill(0::bigint, array[cardinality(p_pool_ids)]),
               array_fill(0::bigint, array[cardinality(p_pool_ids)]), 0, 0
        from generate_series(0, 15) as g
        on conflict do nothing;
    end if;
    for v_moved in
        -- the lanes nobody holds now, their latest versions, locked
        with lanes as (
            select l.*
            from costwarden._lanes as l
            where l.org_id = p_org_id and l.pool_ids = p_pool_ids
            order by l.lane
            for update skip locked
        ),
        carved as (
            update costwarden._lanes as l
            set epoch = p_epoch,
                grant_micros = array_fill(o.held_micros + p_micros, array[cardinality(o.pool_ids)]),
                grant_tokens = array_fill(o.held_tokens + p_tokens, array[cardinality(o.pool_ids)]),
                cap_micros = o.held_micros + p_micros, cap_tokens = o.held_tokens + p_tokens
            from lanes as o
            where (l.org_id, l.pool_ids, l.lane) = (o.org_id, o.pool_ids, o.lane)
        )
        select u.pool_id, sum(o.held_micros + p_micros - u.gm)::bigint as micros,
               sum(o.held_tokens + p_tokens - u.gt)::bigint as tokens
        from lanes as o
        cross join lateral unnest(o.pool_ids, o.grant_micros, o.grant_tokens) as u (pool_id, gm, gt)
        group by u.pool_id
    loop
        update costwarden._pools as p
        set held_micros = p.held_micros + v_moved.micros, held_tokens = p.held_tokens + v_moved.tokens
        where p.pool_id = v_moved.pool_id and (v_moved.micros <> 0 or v_moved.tokens <> 0);
    end loop;
end
$$;

-- Internal: spend beyond a hold was booked on p_pool_ids (_pool_add_spend): a
-- grant carved before it may now reach past an alert line or a limit, so the
-- org's lanes admit nothing more until an admission carves them again under
-- the new totals (their grants stay counted until then). The caller holds the
-- pools' locks; the org row is locked last.
create or replace function costwarden._lanes_retire(p_org_id text, p_pool_ids bigint[])
returns void
language plpgsql
as $$
begin
    if exists (
        select from costwarden._lanes as l
        where l.org_id = p_org_id and l.pool_ids && p_pool_ids
          and l.epoch = (select o.lane_epoch from costwarden._orgs as o where o.org_id = p_org_id)
          and (l.cap_micros > l.held_micros or l.cap_tokens > l.held_tokens)
    ) then
        update costwarden._orgs as o set lane_epoch = o.lane_epoch + 1 where o.org_id = p_org_id;
    end if;
end
$$;

-- Internal (reserve): undo a lane's hold of a reservation that a later step
-- refused (the provider's circuit): the grants stay as they were.
create or replace function costwarden._lane_untake(
    p_org_id text, p_pool_ids bigint[], p_lane smallint, p_micros bigint, p_tokens bigint
)
returns void
language plpgsql
as $$
begin
    update costwarden._lanes as l
    set held_micros = l.held_micros - p_micros, held_tokens = l.held_tokens - p_tokens
    where l.org_id = p_org_id and l.pool_ids = p_pool_ids and l.lane = p_lane;
end
$$;

-- Internal (readers): what the lanes of a pool were granted and hold. A pool's
-- held amount counts its lanes' grants; what is held on it is that amount
-- less the grants' unused part (fn_budget_status, fn_spend_summary, ...).
create or replace function costwarden._pool_lane_grants(p_pool_id bigint)
returns table (granted_micros bigint, granted_tokens bigint, unused_micros bigint, unused_tokens bigint)
language sql stable
as $$
    select coalesce(sum(u.gm), 0)::bigint, coalesce(sum(u.gt), 0)::bigint,
           coalesce(sum(u.gm - l.held_micros), 0)::bigint, coalesce(sum(u.gt - l.held_tokens), 0)::bigint
    from costwarden._pools as p
    join costwarden._lanes as l on l.org_id = p.org_id and p_pool_id = any (l.pool_ids)
    cross join lateral unnest(l.pool_ids, l.grant_micros, l.grant_tokens) as u (pool_id, gm, gt)
    where p.pool_id = p_pool_id and u.pool_id = p_pool_id
$$;

-- A change of what an org's limits are bumps its lane_epoch: the lanes carved
-- before it admit nothing until an admission carves them again under the new
-- limits (their grants stay counted, and are given back as the rules above say).
create or replace function costwarden._lanes_epoch_bump()
returns trigger
language plpgsql
as $$
begin
    if tg_table_name = '_orgs' then
        if new.settings is distinct from old.settings then
            new.lane_epoch := old.lane_epoch + 1;
        end if;
        return new;
    end if;
    update costwarden._orgs as o
    set lane_epoch = o.lane_epoch + 1
    where o.org_id = case when tg_op = 'DELETE' then old.org_id else new.org_id end;
    if tg_op = 'UPDATE' and old.org_id is distinct from new.org_id then
        update costwarden._orgs as o set lane_epoch = o.lane_epoch + 1 where o.org_id = old.org_id;
    end if;
    return null;
end
$$;

create or replace trigger _orgs_lanes_epoch
before update on costwarden._orgs
for each row execute function costwarden._lanes_epoch_bump();

create or replace trigger _budgets_lanes_epoch
after insert or update or delete on costwarden._budgets
for each row execute function costwarden._lanes_epoch_bump();

create or replace trigger _user_groups_lanes_epoch
after insert or update or delete on costwarden._user_groups
for each row execute function costwarden._lanes_epoch_bump();
