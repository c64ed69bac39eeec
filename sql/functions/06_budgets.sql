-- Budgets over hourly / daily / weekly / monthly windows (SPEC §2): windows,
-- spend buckets, effective user limits, the limit check of the saga, the
-- tenant guard, fn_budget_set / fn_budget_status and housekeeping. The
-- tables and the bucket sizes are described in sql/migrations/0006_budgets.sql.
--
-- lock order: docs/internals.md#lock-order

-- Bucket length (seconds) used for a period.
create or replace function costwarden._period_bucket(p_period text)
returns integer
language sql immutable parallel safe
as $$
    select case p_period when 'hour' then 60 when 'day' then 1200 when 'week' then 7200 when 'month' then 43200 end
$$;

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

-- Committed spend of a pool in a window: sum of overlapping buckets.
create or replace function costwarden._pool_spent(
    p_pool_id bigint, p_period text, p_window text, p_tz text, p_at timestamptz,
    out micros bigint, out tokens bigint
)
language sql stable parallel safe
as $$
    select coalesce(sum(b.micros), 0)::bigint, coalesce(sum(b.tokens), 0)::bigint
    from costwarden._spend_buckets as b
    where b.pool_id = p_pool_id
      and b.res = costwarden._period_bucket(p_period)
      and b.bucket_start > costwarden._window_start(p_period, p_window, p_tz, p_at)
          - make_interval(secs => costwarden._period_bucket(p_period))
$$;

-- Internal: add committed spend to pools' buckets (all four resolutions).
-- Callers hold the pools' row locks.
create or replace function costwarden._pool_add_spend(p_pool_ids bigint[], p_micros bigint, p_tokens bigint, p_at timestamptz)
returns void
language plpgsql
as $$
begin
    insert into costwarden._spend_buckets as b (pool_id, res, bucket_start, micros, tokens)
        select p.pool_id, r.res,
               date_bin(make_interval(secs => r.res), p_at, timestamptz '2000-01-01 00:00:00+00'),
               p_micros, p_tokens
        from unnest(p_pool_ids) as p (pool_id)
        cross join (values (60), (1200), (7200), (43200)) as r (res)
        where p_micros <> 0 or p_tokens <> 0
        on conflict (pool_id, res, bucket_start) do update
        set micros = b.micros + excluded.micros, tokens = b.tokens + excluded.tokens;
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
        select 2, b.period, b.metric, b.window_kind, b.limit_value, b.mode, 'group:' || b.scope_id
        from costwarden._budgets as b
        join costwarden._user_groups as ug
          on ug.org_id = b.org_id and ug.group_id = b.scope_id
        where b.org_id = p_org_id and b.scope_kind = 'group' and ug.user_id = p_user_id
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
    with lim as (
        select b.scope_kind, b.scope_id, b.period, b.metric, b.window_kind, b.limit_value, b.mode,
               b.scope_kind as source
        from costwarden._budgets as b
        where b.org_id = p_org_id
          and ((b.scope_kind = 'org' and b.scope_id = '')
               or (b.scope_kind = 'workspace' and b.scope_id = p_workspace_id)
               or (b.scope_kind = 'key' and b.scope_id = p_key_id))
        union all
        select 'user', p_user_id, e.period, e.metric, e.window_kind, e.limit_value, e.mode, e.source
        from costwarden._user_effective_limits(p_org_id, p_user_id) as e
        where p_user_id is not null
    )
    select l.scope_kind, l.scope_id, l.period, l.metric, l.window_kind, l.limit_value, l.mode, l.source,
           v.spent, v.held, v.requested,
           l.limit_value = 0 or v.spent::numeric + v.held + v.requested > l.limit_value
    from lim as l
    join costwarden._pools as p
      on p.org_id = p_org_id and p.kind = l.scope_kind
     and p.scope_id = case when l.scope_kind = 'org' then '' else l.scope_id end
    cross join lateral (
        select coalesce(sum(case when l.metric = 'cost' then bk.micros else bk.tokens end), 0)::bigint as s
        from costwarden._spend_buckets as bk
        where bk.pool_id = p.pool_id
          and bk.res = costwarden._period_bucket(l.period)
          and bk.bucket_start > costwarden._window_start(l.period, l.window_kind, v_tz, v_now)
              - make_interval(secs => costwarden._period_bucket(l.period))
    ) as sp
    cross join lateral (
        select sp.s as spent,
               case when l.metric = 'cost' then p.held_micros else p.held_tokens end as held,
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
    -- Serialise with the admission decisions of the scope's pool.
    if p_scope_kind in ('org', 'workspace', 'key', 'user') then
        perform 1 from costwarden._pools
        where org_id = p_org_id and kind = p_scope_kind and scope_id = v_scope_id
        for update;
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

-- Internal: a tenant caller may only read its own org, its own user scope and
-- its own keys (SPEC §9). Privileged callers (service, admin) without an
-- actor are not restricted; with an actor set they are held to its org.
create or replace function costwarden._tenant_guard(p_org_id text, p_scope_kind text default null, p_scope_id text default null)
returns void
language plpgsql stable
as $$
declare
    v_actor record;
    v_privileged boolean := costwarden._caller_is_privileged();
begin
    select * into v_actor from costwarden._actor();
    if v_actor.org_id is null and v_privileged then
        return;
    end if;
    if v_actor.org_id is null then
        perform costwarden._raise('CW005', 'no actor: a costwarden_authenticator session sets request.jwt.claims or costwarden.actor_org / actor_user; another login needs a binding (fn_tenant_login_bind)');
    end if;
    if p_org_id is distinct from v_actor.org_id then
        perform costwarden._raise('CW005', 'p_org_id: the actor belongs to another org');
    end if;
    if v_privileged or p_scope_kind not in ('user', 'key') then
        return;
    end if;
    if v_actor.user_id is null then
        perform costwarden._raise('CW005', 'a tenant actor needs a user (JWT sub or costwarden.actor_user)');
    end if;
    if p_scope_kind = 'user' and p_scope_id is distinct from v_actor.user_id then
        perform costwarden._raise('CW005', 'p_scope_id: a tenant may only read its own user scope');
    end if;
    if p_scope_kind = 'key' and not exists (
        select from costwarden._keys as k
        where k.org_id = p_org_id and k.key_id = p_scope_id and k.user_id = v_actor.user_id
    ) then
        perform costwarden._raise('CW005', 'p_scope_id: a tenant may only read its own keys');
    end if;
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
    cross join lateral (
        select case when l.metric = 'cost' then s.micros else s.tokens end as spent,
               case when l.metric = 'cost' then p.held_micros else p.held_tokens end as held
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
-- drop spend buckets that no window can reach any more (older than 32 days)
-- and alert de-duplication rows of long-past windows; returns the buckets dropped.
-- The ledger keeps the full history; buckets are only the windows' counters.
create or replace function costwarden.fn_maintenance()
returns integer
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_n integer;
begin
    delete from costwarden._spend_buckets where bucket_start < now() - interval '32 days';
    get diagnostics v_n = row_count;
    -- alert de-duplication rows of windows long past (09_alerts.sql)
    delete from costwarden._alerts_sent where window_slot < now() - interval '62 days';
    return v_n;
end
$$;

grant execute on function costwarden.fn_maintenance() to costwarden_admin, costwarden_service;
