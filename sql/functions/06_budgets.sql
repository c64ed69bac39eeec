-- Budgets over hourly / daily / weekly / monthly windows (SPEC §2): windows,
-- spend totals and marks, effective user limits, the limit check of the saga,
-- the tenant guard, fn_budget_set / fn_budget_status and housekeeping. The
-- tables are described in sql/migrations/0006_budgets.sql and 0015_spend_marks.sql.
--
-- lock order: docs/internals.md#lock-order

-- Start of the window of a period at p_at: rolling = p_at minus the period
-- length; calendar = the top of the hour / midnight / Monday / the 1st in
-- the org's time zone.
create or replace function costwarden._window_start(p_period text, p_window text, p_tz text, p_at timestamptz)
returns timestamptz
language sql stable parallel safe
as $$
    select case
        when p_window = 'rolling' then p_at - case p_period
            when 'hour' then interval '1 hour' when 'day' then interval '24 hours'
            when 'week' then interval '7 days' when 'month' then interval '30 days' end
        else date_trunc(p_period, p_at at time zone p_tz) at time zone p_tz
    end
$$;

-- Internal: the end of the window of a period at p_at. Rolling windows end at
-- p_at; calendar windows at the start of the next hour / day / week / month in
-- the org's time zone.
create or replace function costwarden._window_end(p_period text, p_window text, p_tz text, p_at timestamptz)
returns timestamptz
language sql stable parallel safe
as $$
    select case
        when p_window = 'rolling' then p_at
        else (date_trunc(p_period, p_at at time zone p_tz) + ('1 ' || p_period)::interval) at time zone p_tz
    end
$$;

-- The spend marks (migration 0015): _pools.spent_* are all-time totals and
-- _spend_marks holds a pool's totals just before the first spend of each
-- minute it received spend in, thinned with age by fn_maintenance to the first
-- mark of each slot. The slot of an instant p_t seen at p_now: its age <= 2 h:
-- 1 minute; <= 26 h: 20 minutes; <= 32 days: 1 hour; older: 12 hours. Every
-- slot is at most 1/60 of the periods whose windows start at that age (an
-- hour window starts 1 h back, a day window <= 24 h, a week <= 7 d, a month
-- <= 31 d), and the slots nest (one grid, epoch 2000-01-01 UTC).
create or replace function costwarden._mark_slot(p_t timestamptz, p_now timestamptz)
returns interval
language sql stable parallel safe  -- (timestamptz - interval is stable: declared so, it is inlined)
as $$
    select case when p_t >= p_now - interval '2 hours' then interval '1 minute'
                when p_t >= p_now - interval '26 hours' then interval '20 minutes'
                when p_t >= p_now - interval '32 days' then interval '1 hour'
                else interval '12 hours' end
$$;

-- The slot a window of a period is read at: hour 1 minute, day 20 minutes,
-- week and month 1 hour. The start of a window of now is never older than
-- these slots' tier (a rolling or calendar hour <= 1 h, day <= 24 h, week
-- <= 7 d, month <= 31 d), so the limit check floors its start to the
-- period's slot alone (inlined, no call); every reader uses the larger of the
-- two, so every reader sees the figure the limit check sees.
create or replace function costwarden._period_slot(p_period text)
returns interval
language sql immutable parallel safe
as $$
    select case p_period when 'hour' then interval '1 minute' when 'day' then interval '20 minutes'
                         else interval '1 hour' end
$$;

-- Internal: where the totals "before p_t" are read: p_t floored to its slot,
-- the larger of the slot of its age and p_min (p_ceil: rounded up to it, for
-- the end of a window that ended in the past). Every mark kept at or after
-- that instant starts a slot, so the first of them holds the pool's total
-- before every spend booked from that instant on.
create or replace function costwarden._mark_probe(
    p_t timestamptz, p_now timestamptz, p_ceil boolean default false, p_min interval default interval '1 minute'
)
returns timestamptz
language plpgsql stable parallel safe
as $$
declare
    -- (PL/pgSQL: a SQL body naming p_t more than once would not be inlined
    -- when p_t is an expression, and would be planned on every call)
    v_slot interval := greatest(costwarden._mark_slot(p_t, p_now), p_min);
    v_floor timestamptz := date_bin(v_slot, p_t, timestamptz '2000-01-01 00:00:00+00');
begin
    return case when p_ceil and v_floor < p_t then v_floor + v_slot else v_floor end;
end
$$;

-- Internal: a pool's committed totals before p_t (floored to its slot; p_ceil:
-- rounded up): the first mark at or after that instant, else the pool's
-- totals (nothing was booked since). One index probe.
create or replace function costwarden._pool_total_before(
    p_pool_id bigint, p_t timestamptz, p_ceil boolean, p_min interval,
    out micros bigint, out tokens bigint
)
language sql stable parallel safe
as $$
    select coalesce(m.micros_before, p.spent_micros), coalesce(m.tokens_before, p.spent_tokens)
    from costwarden._pools as p
    left join lateral (
        select k.micros_before, k.tokens_before
        from costwarden._spend_marks as k
        where k.pool_id = p.pool_id and k.mark_at >= costwarden._mark_probe(p_t, now(), p_ceil, p_min)
        order by k.mark_at
        limit 1
    ) as m on true
    where p.pool_id = p_pool_id
$$;

-- Committed spend of a pool in the window of a period that contains p_at
-- (rolling: up to p_at; calendar: up to the end of the period).
create or replace function costwarden._pool_spent(
    p_pool_id bigint, p_period text, p_window text, p_tz text, p_at timestamptz,
    out micros bigint, out tokens bigint
)
language sql stable parallel safe
as $$
    select e.micros - s.micros, e.tokens - s.tokens
    from costwarden._pool_total_before(
             p_pool_id, costwarden._window_start(p_period, p_window, p_tz, p_at), false,
             costwarden._period_slot(p_period)) as s
    cross join costwarden._pool_total_before(
             p_pool_id,
             case when p_window = 'rolling' then p_at + interval '1 microsecond'
                  else costwarden._window_end(p_period, p_window, p_tz, p_at) end,
             true, costwarden._period_slot(p_period)) as e
$$;

-- Internal: the start of the calendar month of p_at in the org's time zone
-- (the month of _pools.month_start, migration 0016). PL/pgSQL: its plan cached.
create or replace function costwarden._org_month_start(p_org_id text, p_at timestamptz)
returns timestamptz
language plpgsql stable
as $$
declare
    v_tz text := coalesce((select o.settings ->> 'timezone' from costwarden._orgs as o where o.org_id = p_org_id), 'UTC');
begin
    return date_trunc('month', p_at at time zone v_tz) at time zone v_tz;
end
$$;

-- Internal: add committed spend booked at p_at to pools: their totals and
-- marks (_mark_slot), and take p_held_micros / p_held_tokens (a commit's hold)
-- off them in the same row update. Callers hold the pools' row locks. The usual
-- case is one statement: the pool's total grows and, in a minute new to the
-- pool, a mark with the total before it is opened. Spend booked in a minute
-- before the pool's latest mark (a transaction that started earlier commits
-- after one that started later, or a backdated booking) is put in its own
-- minute too: a mark is opened there if needed and every later mark grows by
-- the amount, so the marks always say what the ledger's created_at say.
-- Spend beyond a hold (p_micros > p_held_micros, or tokens) may leave a lane's
-- grant above an alert line or a limit: the caller then runs _spend_alerts,
-- which gives the grants on the pools back when a limit of theirs reaches its
-- alert line, or _lanes_retire (docs/internals.md#lanes).
-- Generic plans, as the pool helpers of 00_core.sql (its statements on
-- `pool_id = any (array)` were otherwise planned on every call).
drop function if exists costwarden._pool_add_spend(bigint[], bigint, bigint, timestamptz);
drop function if exists costwarden._pool_add_spend(bigint[], bigint, bigint, timestamptz, bigint, bigint);
create or replace function costwarden._pool_add_spend(
    p_pool_ids bigint[], p_micros bigint, p_tokens bigint, p_at timestamptz,
    p_held_micros bigint default 0, p_held_tokens bigint default 0, p_org_id text default null
)
returns void
language plpgsql
set plan_cache_mode = force_generic_plan
as $$
declare
    v_minute timestamptz := date_bin(interval '1 minute', p_at, timestamptz '2000-01-01 00:00:00+00');
    v_month timestamptz;
    v_month_probe timestamptz;   -- where a probe of the marks reads the month's base
    v_n integer;
begin
    if p_micros = 0 and p_tokens = 0 then
        update costwarden._pools as p
        set held_micros = p.held_micros - p_held_micros, held_tokens = p.held_tokens - p_held_tokens
        where p.pool_id = any (p_pool_ids) and (p_held_micros <> 0 or p_held_tokens <> 0);
        return;
    end if;
    -- the pools of one call are of one org (p_org_id, when the caller knows it):
    -- its calendar month of p_at
    if p_org_id is null then
        select p.org_id into p_org_id from costwarden._pools as p where p.pool_id = p_pool_ids[1];
    end if;
    v_month := costwarden._org_month_start(p_org_id, p_at);
    v_month_probe := date_bin(interval '1 hour', v_month, timestamptz '2000-01-01 00:00:00+00');
    -- one statement: the marks of a new minute read the totals before this spend
    -- (a data-modifying CTE sees the rows as they were when the statement began;
    -- the callers hold the rows' locks, so that is their latest version)
    with opened as (
        insert into costwarden._spend_marks (pool_id, mark_at, micros_before, tokens_before)
        select p.pool_id, v_minute, p.spent_micros, p.spent_tokens
        from costwarden._pools as p
        where p.pool_id = any (p_pool_ids) and (p.last_mark_at is null or p.last_mark_at < v_minute)
    )
    update costwarden._pools as p
    set held_micros = p.held_micros - p_held_micros,
        held_tokens = p.held_tokens - p_held_tokens,
        spent_micros = p.spent_micros + p_micros,
        spent_tokens = p.spent_tokens + p_tokens,
        month_base_micros = case when p.month_start is null or p.month_start < v_month
            then coalesce((select k.micros_before from costwarden._spend_marks as k
                           where k.pool_id = p.pool_id and k.mark_at >= v_month_probe
                           order by k.mark_at limit 1), p.spent_micros)
            when date_bin(interval '1 hour', p.month_start, timestamptz '2000-01-01 00:00:00+00')
                 > v_minute
            then p.month_base_micros + p_micros  -- booked before the month the base stands for
            else p.month_base_micros end,
        month_base_tokens = case when p.month_start is null or p.month_start < v_month
            then coalesce((select k.tokens_before from costwarden._spend_marks as k
                           where k.pool_id = p.pool_id and k.mark_at >= v_month_probe
                           order by k.mark_at limit 1), p.spent_tokens)
            when date_bin(interval '1 hour', p.month_start, timestamptz '2000-01-01 00:00:00+00')
                 > v_minute
            then p.month_base_tokens + p_tokens  -- booked before the month the base stands for
            else p.month_base_tokens end,
        month_start = greatest(p.month_start, v_month),
        last_mark_at = v_minute
    where p.pool_id = any (p_pool_ids) and (p.last_mark_at is null or p.last_mark_at <= v_minute);
    get diagnostics v_n = row_count;
    if v_n = cardinality(p_pool_ids) then
        return;
    end if;
    -- spend in the past of some pools: a mark in its minute (the total before
    -- it is the next mark's), then every later mark and the total grow
    insert into costwarden._spend_marks (pool_id, mark_at, micros_before, tokens_before)
    select p.pool_id, v_minute, n.micros_before, n.tokens_before
    from costwarden._pools as p
    cross join lateral (
        select k.micros_before, k.tokens_before
        from costwarden._spend_marks as k
        where k.pool_id = p.pool_id and k.mark_at > v_minute
        order by k.mark_at
        limit 1
    ) as n
    where p.pool_id = any (p_pool_ids) and p.last_mark_at > v_minute
    on conflict (pool_id, mark_at) do nothing;
    update costwarden._spend_marks as k
    set micros_before = k.micros_before + p_micros, tokens_before = k.tokens_before + p_tokens
    from costwarden._pools as p
    where p.pool_id = any (p_pool_ids) and p.last_mark_at > v_minute
      and k.pool_id = p.pool_id and k.mark_at > v_minute;
    update costwarden._pools as p
    set held_micros = p.held_micros - p_held_micros,
        held_tokens = p.held_tokens - p_held_tokens,
        spent_micros = p.spent_micros + p_micros, spent_tokens = p.spent_tokens + p_tokens,
        -- spend before the month the base stands for is part of the base
        month_base_micros = p.month_base_micros + case
            when date_bin(interval '1 hour', p.month_start, timestamptz '2000-01-01 00:00:00+00') > v_minute
            then p_micros else 0 end,
        month_base_tokens = p.month_base_tokens + case
            when date_bin(interval '1 hour', p.month_start, timestamptz '2000-01-01 00:00:00+00') > v_minute
            then p_tokens else 0 end
    where p.pool_id = any (p_pool_ids) and p.last_mark_at > v_minute;
end
$$;

-- Internal: the org's time zone for calendar windows.
create or replace function costwarden._org_tz(p_org_id text)
returns text
language plpgsql stable
as $$
begin
    -- PL/pgSQL so that the plan is cached (a sub-select keeps a SQL function from being inlined)
    return coalesce((select o.settings ->> 'timezone' from costwarden._orgs as o where o.org_id = p_org_id), 'UTC');
end
$$;

-- Internal: a user's effective limits, one per (period, metric, window), with
-- their source: the user's override; else min (or max, per the org's
-- group_resolution) of the user's groups; else the org's user_default.
-- Enforced and shadow limits are resolved separately, so a shadow limit
-- never replaces (and so never switches off) an enforced one. None applies
-- while the org's setting user_limits_enabled is false.
-- PL/pgSQL with its own generic plan, not an inlined SQL function: inlined into
-- the limit check's query, its union, DISTINCT ON and sub-plans made that
-- generic plan large, and a large plan costs its executor start-up on every
-- reserve, user or not (~60 us: docs/performance.md); as a function scan it
-- runs only when a user is given.
create or replace function costwarden._user_effective_limits(p_org_id text, p_user_id text)
returns table (period text, metric text, window_kind text, limit_value bigint, mode text, source text)
language plpgsql stable
set plan_cache_mode = force_generic_plan
as $$
begin
    return query
    select distinct on (c.period, c.metric, c.window_kind, c.mode)
        c.period, c.metric, c.window_kind, c.limit_value, c.mode, c.source
    from (
        select 1 as prio, b.period, b.metric, b.window_kind, b.limit_value, b.mode, 'user' as source
        from costwarden._budgets as b
        where b.org_id = p_org_id and b.scope_kind = 'user' and b.scope_id = p_user_id
        union all
        -- from the user's groups to their limits, a probe per group (a join would
        -- let a generic plan read every group limit of the org; docs/performance.md,
        -- row 38; `offset 0` keeps the subquery a lateral probe)
        select 2, b.period, b.metric, b.window_kind, b.limit_value, b.mode, 'group:' || b.scope_id
        from costwarden._user_groups as ug
        cross join lateral (
            select g.scope_id, g.period, g.metric, g.window_kind, g.limit_value, g.mode
            from costwarden._budgets as g
            where g.org_id = p_org_id and g.scope_kind = 'group' and g.scope_id = ug.group_id
            offset 0
        ) as b
        where ug.org_id = p_org_id and ug.user_id = p_user_id
        union all
        select 3, b.period, b.metric, b.window_kind, b.limit_value, b.mode, 'user_default'
        from costwarden._budgets as b
        where b.org_id = p_org_id and b.scope_kind = 'user_default'
    ) as c
    -- the org's switch (setting user_limits_enabled, default true): off, no user
    -- limit applies, and the overrides, group limits and default stay configured
    where not exists (select from costwarden._orgs as o
                      where o.org_id = p_org_id and o.settings -> 'user_limits_enabled' = 'false')
    order by c.period, c.metric, c.window_kind, c.mode, c.prio,
        case when (select o.settings ->> 'group_resolution' from costwarden._orgs as o where o.org_id = p_org_id) = 'max'
             then -c.limit_value else c.limit_value end,
        c.source;
end
$$;

-- Internal: evaluate every applicable limit of a context for a request of
-- p_micros / p_tokens. The caller holds the pools' locks. One row per limit;
-- fails = the request would not fit. (plpgsql so that its one query is
-- planned once per session; _org_tz is read first, _user_effective_limits
-- is a function scan that runs only when a user is given. Its custom plans
-- look cheaper than the generic one, so without force_generic_plan it would be
-- planned afresh on every call: ~430 us of a reserve's ~1,200 us of server CPU,
-- docs/performance.md; the generic plan is index scans throughout.)
drop function if exists costwarden._check_limits(text, text, text, text, bigint, bigint);
create or replace function costwarden._check_limits(
    p_org_id text, p_workspace_id text, p_key_id text, p_user_id text,
    p_micros bigint, p_tokens bigint
)
returns table (
    scope_kind text, scope_id text, period text, metric text, window_kind text,
    limit_value bigint, mode text, source text, spent bigint, held bigint, requested bigint, fails boolean
)
language plpgsql stable
set plan_cache_mode = force_generic_plan
as $$
declare
    v_tz text := costwarden._org_tz(p_org_id);
    v_now timestamptz := now();
begin
    return query
    -- one index range per scope (as _context_pool_ids, docs/performance.md, row 38)
    with lim as (
        select b.scope_kind, b.scope_id, b.period, b.metric, b.window_kind, b.limit_value, b.mode,
               b.scope_kind as source
        from costwarden._budgets as b
        where b.org_id = p_org_id and b.scope_kind = 'org' and b.scope_id = ''
        union all
        select b.scope_kind, b.scope_id, b.period, b.metric, b.window_kind, b.limit_value, b.mode,
               b.scope_kind as source
        from costwarden._budgets as b
        where b.org_id = p_org_id and b.scope_kind = 'workspace' and b.scope_id = p_workspace_id
        union all
        select b.scope_kind, b.scope_id, b.period, b.metric, b.window_kind, b.limit_value, b.mode,
               b.scope_kind as source
        from costwarden._budgets as b
        where b.org_id = p_org_id and b.scope_kind = 'key' and b.scope_id = p_key_id
        union all
        select 'user', p_user_id, e.period, e.metric, e.window_kind, e.limit_value, e.mode, e.source
        from costwarden._user_effective_limits(p_org_id, p_user_id) as e
        where p_user_id is not null
    )
    select l.scope_kind, l.scope_id, l.period, l.metric, l.window_kind, l.limit_value, l.mode, l.source,
           v.spent, v.held, v.requested,
           l.limit_value = 0 or v.spent::numeric + v.held + v.requested > l.limit_value
    from lim as l
    -- each limit's pool by its unique key (a lateral probe: a join would let a
    -- generic plan hash every pool of the org; docs/performance.md, row 38)
    cross join lateral (
        select p.pool_id, p.spent_micros, p.spent_tokens, p.held_micros, p.held_tokens
        from costwarden._pools as p
        where p.org_id = p_org_id and p.kind = l.scope_kind
          and p.scope_id = case when l.scope_kind = 'org' then '' else l.scope_id end
        limit 1
    ) as p
    -- the window's spend: the pool's total minus its total before the window's
    -- start floored to the period's slot (one probe of _spend_marks; no mark
    -- since then: nothing spent)
    left join lateral (
        select case when l.metric = 'cost' then mk.micros_before else mk.tokens_before end as before
        from costwarden._spend_marks as mk
        where mk.pool_id = p.pool_id
          and mk.mark_at >= date_bin(costwarden._period_slot(l.period),
                                     costwarden._window_start(l.period, l.window_kind, v_tz, v_now),
                                     timestamptz '2000-01-01 00:00:00+00')
        order by mk.mark_at
        limit 1
    ) as sp on true
    cross join lateral (
        select case when l.metric = 'cost' then p.spent_micros - coalesce(sp.before, p.spent_micros)
                    else p.spent_tokens - coalesce(sp.before, p.spent_tokens) end as spent,
               case when l.metric = 'cost' then p.held_micros::bigint else p.held_tokens::bigint end as held,
               case when l.metric = 'cost' then p_micros else p_tokens end as requested
    ) as v;
end
$$;

-- Internal: the reason for a limit a request would break (SPEC §3):
-- budget_exceeded for a cost limit, token_quota_exceeded for a token limit
-- (reserve's admission and meter ticks).
create or replace function costwarden._limit_reason(
    p_metric text, p_scope_kind text, p_scope_id text, p_period text, p_window text,
    p_limit bigint, p_spent bigint, p_held bigint, p_requested bigint, p_enforced boolean
)
returns jsonb
language sql immutable parallel safe
as $$
    select costwarden._reason(
        case when p_metric = 'cost' then 'budget_exceeded' else 'token_quota_exceeded' end,
        p_scope_kind, nullif(p_scope_id, ''), p_period, p_metric, p_window,
        p_limit, p_spent, p_held, p_requested, p_enforced)
$$;

-- Internal: a budget scope (fn_budget_set, fn_budget_status): CW004 unless
-- p_scope_kind is a scope kind and p_scope_id fits it; returns the stored
-- scope id ('' for org and user_default, which take none).
create or replace function costwarden._budget_scope_id(p_scope_kind text, p_scope_id text)
returns text
language plpgsql immutable
as $$
begin
    if p_scope_kind is null or p_scope_kind not in ('org', 'workspace', 'key', 'user', 'group', 'user_default') then
        perform costwarden._raise('CW004', 'p_scope_kind must be org, workspace, key, user, group or user_default');
    end if;
    if p_scope_kind in ('org', 'user_default') then
        if p_scope_id is not null then
            perform costwarden._raise('CW004', format('p_scope_id must be null for scope kind %s', p_scope_kind));
        end if;
        return '';
    end if;
    return costwarden._require_text(p_scope_id, 'p_scope_id');
end
$$;

-- Internal: CW004 unless p_period and p_window name a period and a window kind
-- (fn_budget_set, fn_spend_summary, fn_my_allocations).
create or replace function costwarden._require_period_window(p_period text, p_window text)
returns void
language plpgsql immutable
as $$
begin
    if p_period is null or p_period not in ('hour', 'day', 'week', 'month') then
        perform costwarden._raise('CW004', 'p_period must be hour, day, week or month');
    end if;
    if p_window is null or p_window not in ('rolling', 'calendar') then
        perform costwarden._raise('CW004', 'p_window must be rolling or calendar');
    end if;
end
$$;

create or replace function costwarden.fn_budget_set(
    p_org_id text,
    p_scope_kind text,
    p_scope_id text,
    p_period text,
    p_limit bigint,
    p_metric text default 'cost',
    p_window text default 'rolling',
    p_mode text default 'enforce'
)
returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_scope_id text;
    v_before costwarden._budgets;
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._require_org(p_org_id);
    v_scope_id := costwarden._budget_scope_id(p_scope_kind, p_scope_id);
    perform costwarden._require_period_window(p_period, p_window);
    if p_metric is null or p_metric not in ('cost', 'tokens') then
        perform costwarden._raise('CW004', 'p_metric must be cost or tokens');
    end if;
    if p_mode is null or p_mode not in ('enforce', 'shadow') then
        perform costwarden._raise('CW004', 'p_mode must be enforce or shadow');
    end if;
    if p_limit < 0 then
        perform costwarden._raise('CW004', 'p_limit must be >= 0 (0 blocks everything; null removes the limit)');
    end if;
    case p_scope_kind
    when 'workspace' then
        if not exists (select from costwarden._workspaces where org_id = p_org_id and workspace_id = v_scope_id) then
            perform costwarden._raise('CW002', format('p_scope_id: unknown workspace %L in org %L', v_scope_id, p_org_id));
        end if;
    when 'key' then
        if not exists (select from costwarden._keys where org_id = p_org_id and key_id = v_scope_id) then
            perform costwarden._raise('CW002', format('p_scope_id: unknown key %L in org %L', v_scope_id, p_org_id));
        end if;
    when 'user' then
        if not exists (select from costwarden._users where org_id = p_org_id and user_id = v_scope_id) then
            perform costwarden._raise('CW002', format('p_scope_id: unknown user %L in org %L', v_scope_id, p_org_id));
        end if;
    else
        null;
    end case;
    -- Serialise with the admission decisions of the scope's pool (its gate, then its row).
    if p_scope_kind in ('org', 'workspace', 'key', 'user') then
        perform costwarden._lock_pools(array(
            select p.pool_id from costwarden._pools as p
            where p.org_id = p_org_id and p.kind = p_scope_kind and p.scope_id = v_scope_id));
    end if;
    select * into v_before from costwarden._budgets
    where org_id = p_org_id and scope_kind = p_scope_kind and scope_id = v_scope_id
      and period = p_period and metric = p_metric and window_kind = p_window
    for update;
    if p_limit is null then
        delete from costwarden._budgets
        where org_id = p_org_id and scope_kind = p_scope_kind and scope_id = v_scope_id
          and period = p_period and metric = p_metric and window_kind = p_window;
    else
        insert into costwarden._budgets as b
            (org_id, scope_kind, scope_id, period, metric, window_kind, limit_value, mode)
        values (p_org_id, p_scope_kind, v_scope_id, p_period, p_metric, p_window, p_limit, p_mode)
        on conflict (org_id, scope_kind, scope_id, period, metric, window_kind) do update
        set limit_value = excluded.limit_value, mode = excluded.mode, updated_at = now();
    end if;
    perform costwarden._audit(
        'budget_set', p_org_id,
        jsonb_build_object('scope_kind', p_scope_kind, 'scope_id', p_scope_id, 'period', p_period,
                           'metric', p_metric, 'window', p_window),
        case when v_before.org_id is not null then
            jsonb_build_object('limit', v_before.limit_value, 'mode', v_before.mode) end,
        case when p_limit is not null then jsonb_build_object('limit', p_limit, 'mode', p_mode) end
    );
end
$$;

create or replace function costwarden.fn_budget_status(p_org_id text, p_scope_kind text, p_scope_id text default null)
returns table (
    period text, metric text, window_kind text, limit_value bigint, spent bigint, held bigint,
    remaining bigint, mode text, source text
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_scope_id text;
    v_tz text;
begin
    v_scope_id := costwarden._budget_scope_id(p_scope_kind, p_scope_id);
    -- the tenant guard first: a tenant learns nothing about other orgs
    perform costwarden._tenant_guard(p_org_id, p_scope_kind, v_scope_id);
    perform costwarden._require_org(p_org_id);
    if p_scope_kind in ('workspace', 'key', 'user') and not exists (
        select from costwarden._pools as p
        where p.org_id = p_org_id and p.kind = p_scope_kind and p.scope_id = v_scope_id
    ) then
        perform costwarden._raise('CW002', format('p_scope_id: unknown %s %L in org %L', p_scope_kind, v_scope_id, p_org_id));
    end if;
    v_tz := costwarden._org_tz(p_org_id);

    if p_scope_kind in ('group', 'user_default') then
        return query
        select b.period, b.metric, b.window_kind, b.limit_value, null::bigint, null::bigint, null::bigint,
               b.mode, case when p_scope_kind = 'group' then 'group:' || b.scope_id else 'user_default' end
        from costwarden._budgets as b
        where b.org_id = p_org_id and b.scope_kind = p_scope_kind and b.scope_id = v_scope_id
        order by 1, 2, 3;
        return;
    end if;

    return query
    with lim as (
        select b.period, b.metric, b.window_kind, b.limit_value, b.mode, b.scope_kind as source
        from costwarden._budgets as b
        where p_scope_kind <> 'user'
          and b.org_id = p_org_id and b.scope_kind = p_scope_kind and b.scope_id = v_scope_id
        union all
        select e.period, e.metric, e.window_kind, e.limit_value, e.mode, e.source
        from costwarden._user_effective_limits(p_org_id, v_scope_id) as e
        where p_scope_kind = 'user'
    )
    select l.period, l.metric, l.window_kind, l.limit_value, v.spent, v.held,
           greatest(l.limit_value - v.spent - v.held, 0), l.mode, l.source
    from lim as l
    join costwarden._pools as p
      on p.org_id = p_org_id and p.kind = p_scope_kind and p.scope_id = v_scope_id
    cross join lateral costwarden._pool_spent(p.pool_id, l.period, l.window_kind, v_tz, now()) as s
    -- held: the pool's holds, without its lanes' unused grants (docs/internals.md#lanes)
    cross join lateral costwarden._pool_lane_grants(p.pool_id) as g
    cross join lateral (
        select case when l.metric = 'cost' then s.micros else s.tokens end as spent,
               case when l.metric = 'cost' then p.held_micros - g.unused_micros
                    else p.held_tokens - g.unused_tokens end as held
    ) as v
    order by 1, 2, 3;
end
$$;

grant execute on function
    costwarden.fn_budget_set(text, text, text, text, bigint, text, text, text)
to costwarden_admin;
grant execute on function costwarden.fn_budget_status(text, text, text)
to costwarden_admin, costwarden_service, costwarden_tenant;

-- Housekeeping (pg_cron job costwarden-maintenance, or `costwarden worker`):
-- thin the spend marks to the slots of their age (_mark_slot): of the marks
-- of a pool in one slot, only the first is kept (it holds the total before
-- every spend of the slot); a slot is thinned once it is entirely older than
-- its tier (2 h: 20 minutes, 26 h: 1 hour, 32 days: 12 hours, kept forever).
-- Also drops alert de-duplication rows of long-past windows. Returns the
-- marks dropped. The ledger keeps the full history.
create or replace function costwarden.fn_maintenance()
returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_now timestamptz := now();
    v_n integer;
begin
    with tier (slot, older_than) as (
        values (interval '20 minutes', interval '2 hours'), (interval '1 hour', interval '26 hours'),
               (interval '12 hours', interval '32 days')
    ),
    doomed as (
        select m.pool_id, m.mark_at
        from tier as t
        join costwarden._spend_marks as m
          on m.mark_at < date_bin(t.slot, v_now - t.older_than, timestamptz '2000-01-01 00:00:00+00')
         and m.mark_at <> date_bin(t.slot, m.mark_at, timestamptz '2000-01-01 00:00:00+00')
        where exists (
            select from costwarden._spend_marks as e
            where e.pool_id = m.pool_id
              and e.mark_at >= date_bin(t.slot, m.mark_at, timestamptz '2000-01-01 00:00:00+00')
              and e.mark_at < m.mark_at)
    )
    delete from costwarden._spend_marks as m
    using (select distinct d.pool_id, d.mark_at from doomed as d) as d
    where m.pool_id = d.pool_id and m.mark_at = d.mark_at;
    get diagnostics v_n = row_count;
    -- alert de-duplication rows of windows long past (09_alerts.sql)
    delete from costwarden._alerts_sent where window_slot < now() - interval '62 days';
    return v_n;
end
$$;

grant execute on function costwarden.fn_maintenance() to costwarden_admin, costwarden_service;
