-- Money correctness under faults: the replay of operations a client spooled
-- while the database was unreachable (exactly once, priced at call time), and
-- the reconciliation of the pools' counters against the reservations and the
-- ledger (fn_reconcile, fn_reconcile_repair). Tables: migration 0013.
--
-- lock order: docs/internals.md#lock-order (the replayed-operation row is taken
-- before the reservation row or the spend source row)

-- Internal: the first instant the reconciliation compares spend from: 31 days
-- back (every window reaches at most 30 days and one slot back), aligned to
-- 12 hours, a boundary of every slot of the spend marks (06_budgets.sql).
create or replace function costwarden._reconcile_since()
returns timestamptz
language sql
stable
as $$
    select date_bin(interval '12 hours', now() - interval '31 days', timestamptz '2000-01-01 00:00:00+00')
$$;

-- Internal: the spend the ledger says each pool received from p_since on, per
-- minute, as _pool_add_spend booked it: an entry counts toward the pools it
-- was booked into (a charge: its reservation's pools; a spend report: the
-- pools of its workspace, key and user; an adjustment: the org's and the
-- workspace's) in the minute of its created_at (the transaction's now(), the
-- p_at of its booking). (Pools are created with the org, workspace, user or
-- key they belong to, so they exist before any entry that names them.)
-- first_in_slot: the mark is the first of its slot (_mark_slot), one
-- fn_maintenance keeps.
create or replace function costwarden._ledger_marks(p_org_id text, p_since timestamptz)
returns table (pool_id bigint, mark_at timestamptz, micros bigint, tokens bigint, first_in_slot boolean)
language sql
stable
as $$
    select g.pool_id, g.mark_at, g.micros, g.tokens,
           coalesce(lag(g.mark_at) over (partition by g.pool_id order by g.mark_at)
                    < date_bin(costwarden._mark_slot(g.mark_at, now()), g.mark_at,
                               timestamptz '2000-01-01 00:00:00+00'), true)
    from (
        select a.pool_id, a.mark_at, sum(a.amount_micros)::bigint as micros, sum(a.tokens)::bigint as tokens
        from (
            select p.pool_id, e.amount_micros, e.tokens,
                   date_bin(interval '1 minute', e.created_at, timestamptz '2000-01-01 00:00:00+00') as mark_at
            from (
                select l.created_at, l.amount_micros, l.tokens,
                       case when l.entry_type = 'charge' then r.pool_ids
                            when l.entry_type = 'adjustment' then costwarden._context_pool_ids(l.org_id, l.workspace_id)
                            else costwarden._context_pool_ids(l.org_id, l.workspace_id, l.key_id, l.user_id)
                       end as pool_ids
                from costwarden._ledger as l
                left join costwarden._reservations as r
                  on l.entry_type = 'charge' and r.reservation_id = l.reservation_id
                where (p_org_id is null or l.org_id = p_org_id)
                  and l.created_at >= p_since
                  and (l.amount_micros <> 0 or l.tokens <> 0)
            ) as e
            cross join lateral unnest(e.pool_ids) as p (pool_id)
        ) as a
        group by a.pool_id, a.mark_at
    ) as g
$$;

-- Internal: the drift of every pool of an org (or of all orgs), computed in one
-- statement, so from one snapshot: the counters and the ledger are always
-- written in the same transaction, so a consistent snapshot of a correct
-- install shows no drift.
--   held:  _pools.held_micros / held_tokens against the sum of the holds of the
--          reservations that are 'held' (one row per metric that differs);
--   spent: the spend the pool's totals and marks give from an instant on
--          (total minus the first mark at or after it) against the ledger's
--          replay (_ledger_marks), checked at every mark of the horizon (31
--          days), at every mark the replay says must be kept, and at the
--          start of each window the limits see now. Reported per period and
--          window ('rolling', 'calendar') and for the whole 'horizon' (period
--          null): a row for every window that reaches a mark that differs (its
--          counter and recomputed figures may then still be equal) or whose
--          figures differ.
create or replace function costwarden._reconcile(p_org_id text)
returns table (
    org_id text, pool_id bigint, pool_kind text, scope_id text, measure text, period text,
    window_kind text, metric text, counter bigint, recomputed bigint, drift bigint
)
language sql
stable
as $$
    with since as (
        select costwarden._reconcile_since() as at
    ),
    pools as (
        select p.pool_id, p.org_id, p.kind, p.scope_id, p.spent_micros, p.spent_tokens
        from costwarden._pools as p
        where p_org_id is null or p.org_id = p_org_id
    ),
    led as (
        select * from costwarden._ledger_marks(p_org_id, (select since.at from since))
    ),
    stored as (
        -- the spend from one stored mark to the next (the last: to the total)
        select m.pool_id, m.mark_at,
               lead(m.micros_before, 1, p.spent_micros) over w - m.micros_before as micros,
               lead(m.tokens_before, 1, p.spent_tokens) over w - m.tokens_before as tokens
        from costwarden._spend_marks as m
        join pools as p on p.pool_id = m.pool_id
        where m.mark_at >= (select since.at from since)
        window w as (partition by m.pool_id order by m.mark_at)
    ),
    checks as (
        select p.pool_id, per.period, wk.window_kind,
               costwarden._mark_probe(costwarden._window_start(per.period, wk.window_kind,
                                                               costwarden._org_tz(p.org_id), now()),
                                      now(), false, costwarden._period_slot(per.period)) as at,
               false as missing
        from pools as p
        cross join (values ('hour'), ('day'), ('week'), ('month')) as per (period)
        cross join (values ('rolling'), ('calendar')) as wk (window_kind)
        union all
        select p.pool_id, null, 'horizon', (select since.at from since), false
        from pools as p
        union all
        select s.pool_id, null, 'mark', s.mark_at, false
        from stored as s
        union all
        select l.pool_id, null, 'mark', l.mark_at,
               not exists (select from costwarden._spend_marks as m
                           where m.pool_id = l.pool_id and m.mark_at = l.mark_at)
        from led as l
        where l.first_in_slot
    ),
    events as (
        -- spend rows (ord 0) before the checks (ord 1) at the same instant; summed
        -- from the latest instant down, a check sees all the spend from its instant on
        select s.pool_id, s.mark_at as at, 0 as ord, s.micros as s_micros, s.tokens as s_tokens,
               0::bigint as l_micros, 0::bigint as l_tokens,
               null::text as period, null::text as window_kind, false as missing
        from stored as s
        union all
        select l.pool_id, l.mark_at, 0, 0, 0, l.micros, l.tokens, null, null, false
        from led as l
        union all
        select c.pool_id, c.at, 1, 0, 0, 0, 0, c.period, c.window_kind, c.missing
        from checks as c
    ),
    figures as (
        select e.pool_id, e.at, e.ord, e.period, e.window_kind, e.missing,
               sum(e.s_micros) over w as s_micros, sum(e.s_tokens) over w as s_tokens,
               sum(e.l_micros) over w as l_micros, sum(e.l_tokens) over w as l_tokens
        from events as e
        window w as (partition by e.pool_id order by e.at desc, e.ord rows unbounded preceding)
    ),
    bad_marks as (
        select f.pool_id, max(f.at) filter (where m.metric = 'cost') as last_cost,
               max(f.at) filter (where m.metric = 'tokens') as last_tokens
        from figures as f
        cross join (values ('cost'), ('tokens')) as m (metric)
        where f.ord = 1 and f.window_kind = 'mark'
          and (f.missing or case when m.metric = 'cost' then f.s_micros <> f.l_micros
                                 else f.s_tokens <> f.l_tokens end)
        group by f.pool_id
    ),
    spent as (
        select p.org_id, p.pool_id, p.kind, p.scope_id, f.period, f.window_kind, m.metric,
               case when m.metric = 'cost' then f.s_micros else f.s_tokens end::bigint as counter,
               case when m.metric = 'cost' then f.l_micros else f.l_tokens end::bigint as recomputed,
               coalesce(case when m.metric = 'cost' then b.last_cost else b.last_tokens end >= f.at,
                        false) as reaches
        from figures as f
        join pools as p on p.pool_id = f.pool_id
        left join bad_marks as b on b.pool_id = f.pool_id
        cross join (values ('cost'), ('tokens')) as m (metric)
        where f.ord = 1 and f.window_kind <> 'mark'
    ),
    holds as (
        -- a pool's held amount: the holds on it directly and its lanes' grants (docs/internals.md#lanes)
        select h.pool_id, sum(h.micros)::bigint as micros, sum(h.tokens)::bigint as tokens
        from (
            select u.pool_id, r.amount_micros as micros, r.tokens as tokens
            from costwarden._reservations as r
            cross join lateral unnest(r.pool_ids) as u (pool_id)
            where r.status = 'held' and r.lane is null and (p_org_id is null or r.org_id = p_org_id)
            union all
            select u.pool_id, u.gm - l.used_micros, u.gt - l.used_tokens
            from costwarden._lanes as l
            cross join lateral unnest(l.pool_ids, l.grant_micros, l.grant_tokens) as u (pool_id, gm, gt)
            where p_org_id is null or l.org_id = p_org_id
        ) as h
        group by h.pool_id
    ),
    month_base as (
        -- the pool's total before the calendar month now running (migration 0016),
        -- read by fn_spend_summary instead of a probe: the marks' total there
        select p.org_id, p.pool_id, p.kind, p.scope_id, m.metric,
               case when m.metric = 'cost' then p.month_base_micros else p.month_base_tokens end as counter,
               case when m.metric = 'cost' then t.micros else t.tokens end as recomputed
        from costwarden._pools as p
        cross join lateral costwarden._pool_total_before(p.pool_id, p.month_start, false, interval '1 hour') as t
        cross join (values ('cost'), ('tokens')) as m (metric)
        where (p_org_id is null or p.org_id = p_org_id)
          and p.month_start = costwarden._org_month_start(p.org_id, now())
    ),
    held as (
        select p.org_id, p.pool_id, p.kind, p.scope_id, m.metric,
               case when m.metric = 'cost' then p.held_micros else p.held_tokens end as counter,
               coalesce(case when m.metric = 'cost' then h.micros else h.tokens end, 0) as recomputed
        from costwarden._pools as p
        left join holds as h on h.pool_id = p.pool_id
        cross join (values ('cost'), ('tokens')) as m (metric)
        where p_org_id is null or p.org_id = p_org_id
    )
    select h.org_id, h.pool_id, h.kind, h.scope_id, 'held', null::text, null::text, h.metric,
           h.counter, h.recomputed, h.counter - h.recomputed
    from held as h
    where h.counter <> h.recomputed
    union all
    select b.org_id, b.pool_id, b.kind, b.scope_id, 'month_base', 'month', 'calendar', b.metric,
           b.counter, b.recomputed, b.counter - b.recomputed
    from month_base as b
    where b.counter <> b.recomputed
    union all
    select s.org_id, s.pool_id, s.kind, s.scope_id, 'spent', s.period, s.window_kind, s.metric,
           s.counter, s.recomputed, s.counter - s.recomputed
    from spent as s
    where s.counter <> s.recomputed or s.reaches
    order by 1, 2, 5, 6, 7, 8
$$;

-- Recompute every pool's held and spent (per window) from the
-- reservations and the ledger and report the drift: one row per pool, measure,
-- window and metric that differs; no row: the books balance. Nothing is
-- corrected (fn_reconcile_repair does that, audited); each run is recorded in
-- _reconcile_runs, and a run that finds drift raises a WARNING (the server log,
-- pg_cron's job_run_details). Scheduled daily (migrate.CRON_JOBS) and run by
-- `costwarden worker`; `costwarden books check` runs it with the ledger checks.
create or replace function costwarden.fn_reconcile(p_org_id text default null)
returns table (
    org_id text, pool_id bigint, pool_kind text, scope_id text, measure text, period text,
    window_kind text, metric text, counter bigint, recomputed bigint, drift bigint
)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_rows jsonb;
    v_n integer;
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._optional_org(p_org_id);
    -- one statement: one snapshot of the counters, the reservations and the ledger
    select coalesce(jsonb_agg(to_jsonb(x)), '[]'::jsonb), count(*)::integer into v_rows, v_n
    from costwarden._reconcile(p_org_id) as x;
    insert into costwarden._reconcile_runs (org_id, findings, drift) values (p_org_id, v_n, v_rows);
    if v_n > 0 then
        raise warning 'costwarden reconcile: % finding(s) of drift%', v_n,
            coalesce(' in org ' || p_org_id, '')
            using hint = 'see fn_reconcile; fn_reconcile_repair applies a correction (audited)';
    end if;
    return query
    select x.org_id, x.pool_id, x.pool_kind, x.scope_id, x.measure, x.period, x.window_kind, x.metric,
           x.counter, x.recomputed, x.drift
    from jsonb_to_recordset(v_rows) as x (
        org_id text, pool_id bigint, pool_kind text, scope_id text, measure text, period text,
        window_kind text, metric text, counter bigint, recomputed bigint, drift bigint
    )
    order by x.org_id, x.pool_id, x.measure, x.period, x.window_kind, x.metric;
end
$$;

-- Apply the correction fn_reconcile reports for one pool (admin; audited): under
-- the pool's lock, its holds are set to the sum of its held reservations and
-- its spend marks of the reconciled horizon and its totals are rebuilt from
-- the ledger (on the total before the horizon, which is kept).
-- Returns the drift it corrected (the rows fn_reconcile reported for the pool
-- at that moment); nothing, and no audit record, when there is none.
create or replace function costwarden.fn_reconcile_repair(p_org_id text, p_pool_id bigint, p_reason text)
returns table (
    org_id text, pool_id bigint, pool_kind text, scope_id text, measure text, period text,
    window_kind text, metric text, counter bigint, recomputed bigint, drift bigint
)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_pool costwarden._pools;
    v_unused_micros bigint; -- the unused part of the pool's lanes' grants before the repair
    v_unused_tokens bigint;
    v_rows jsonb;
    v_since timestamptz := costwarden._reconcile_since();
    v_held_micros bigint;
    v_held_tokens bigint;
    v_base_micros bigint;
    v_base_tokens bigint;
    v_spent_micros bigint;
    v_spent_tokens bigint;
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._require_org(p_org_id);
    if p_pool_id is null then
        perform costwarden._raise('CW004', 'p_pool_id is required');
    end if;
    if p_reason is null or btrim(p_reason) = '' then
        perform costwarden._raise('CW004', 'p_reason is required: say why the counters are corrected');
    end if;
    if length(p_reason) > 1000 then
        perform costwarden._raise('CW004', 'p_reason is longer than 1000 characters');
    end if;
    select * into v_pool from costwarden._pools as p where p.pool_id = p_pool_id and p.org_id = p_org_id;
    if not found then
        perform costwarden._raise('CW002', format('p_pool_id: unknown pool %s in org %L', p_pool_id, p_org_id));
    end if;
    -- every writer of the pool's holds, totals and marks holds its row lock
    perform costwarden._lock_pools(array[p_pool_id]);
    select coalesce(jsonb_agg(to_jsonb(x)), '[]'::jsonb) into v_rows
    from costwarden._reconcile(p_org_id) as x
    where x.pool_id = p_pool_id;
    if v_rows = '[]'::jsonb then
        return;
    end if;

    select g.unused_micros, g.unused_tokens into v_unused_micros, v_unused_tokens
    from costwarden._pool_lane_grants(p_pool_id) as g;
    -- the pool's lanes (docs/internals.md#lanes), in key order: each holds what its held
    -- reservations hold, and its grant on the pool is given back
    with lanes as (
        select l.org_id, l.pool_ids, l.lane
        from costwarden._lanes as l
        where l.org_id = p_org_id and p_pool_id = any (l.pool_ids)
        order by l.org_id, l.pool_ids, l.lane
        for update
    ),
    counted as (
        select l.org_id, l.pool_ids, l.lane,
               coalesce(sum(r.amount_micros), 0)::bigint as micros, coalesce(sum(r.tokens), 0)::bigint as tokens
        from lanes as l
        left join costwarden._reservations as r
          on r.org_id = l.org_id and r.pool_ids = l.pool_ids and r.lane = l.lane and r.status = 'held'
        group by l.org_id, l.pool_ids, l.lane
    )
    update costwarden._lanes as l
    set held_micros = c.micros, held_tokens = c.tokens,
        grant_micros = array(select case when u.pool_id = p_pool_id then c.micros
                                         else greatest(u.gm - l.used_micros, c.micros) end
                             from unnest(l.pool_ids, l.grant_micros) with ordinality as u (pool_id, gm, i) order by u.i),
        grant_tokens = array(select case when u.pool_id = p_pool_id then c.tokens
                                         else greatest(u.gt - l.used_tokens, c.tokens) end
                             from unnest(l.pool_ids, l.grant_tokens) with ordinality as u (pool_id, gt, i) order by u.i),
        used_micros = 0, used_tokens = 0, cap_micros = c.micros, cap_tokens = c.tokens
    from counted as c
    where (l.org_id, l.pool_ids, l.lane) = (c.org_id, c.pool_ids, c.lane);
    select coalesce(sum(h.micros), 0)::bigint, coalesce(sum(h.tokens), 0)::bigint
    into v_held_micros, v_held_tokens
    from (
        select r.amount_micros as micros, r.tokens as tokens
        from costwarden._reservations as r
        where r.status = 'held' and r.org_id = p_org_id and p_pool_id = any (r.pool_ids) and r.lane is null
        union all
        select l.held_micros, l.held_tokens
        from costwarden._lanes as l
        where l.org_id = p_org_id and p_pool_id = any (l.pool_ids)
    ) as h;
    update costwarden._pools as p
    set held_micros = v_held_micros, held_tokens = v_held_tokens
    where p.pool_id = p_pool_id;

    -- the spend of the horizon rebuilt from the ledger on the pool's total
    -- before it (the first mark of the horizon, else the total: kept as it is)
    select coalesce(m.micros_before, p.spent_micros), coalesce(m.tokens_before, p.spent_tokens),
           p.spent_micros, p.spent_tokens
    into v_base_micros, v_base_tokens, v_spent_micros, v_spent_tokens
    from costwarden._pools as p
    left join lateral (
        select k.micros_before, k.tokens_before from costwarden._spend_marks as k
        where k.pool_id = p.pool_id and k.mark_at >= v_since
        order by k.mark_at
        limit 1
    ) as m on true
    where p.pool_id = p_pool_id;
    delete from costwarden._spend_marks as m
    where m.pool_id = p_pool_id and m.mark_at >= v_since;
    insert into costwarden._spend_marks (pool_id, mark_at, micros_before, tokens_before)
    select l.pool_id, l.mark_at,
           v_base_micros + coalesce(sum(l.micros) over w, 0), v_base_tokens + coalesce(sum(l.tokens) over w, 0)
    from costwarden._ledger_marks(p_org_id, v_since) as l
    where l.pool_id = p_pool_id
    window w as (order by l.mark_at rows between unbounded preceding and 1 preceding);
    update costwarden._pools as p
    set spent_micros = v_base_micros + coalesce(t.micros, 0), spent_tokens = v_base_tokens + coalesce(t.tokens, 0),
        last_mark_at = (select max(m.mark_at) from costwarden._spend_marks as m where m.pool_id = p_pool_id)
    from (
        select sum(l.micros)::bigint as micros, sum(l.tokens)::bigint as tokens
        from costwarden._ledger_marks(p_org_id, v_since) as l
        where l.pool_id = p_pool_id
    ) as t
    where p.pool_id = p_pool_id;
    -- the month base (migration 0016) from the rebuilt marks
    update costwarden._pools as p
    set month_base_micros = t.micros, month_base_tokens = t.tokens
    from costwarden._pool_total_before(p_pool_id, (select q.month_start from costwarden._pools as q
                                                  where q.pool_id = p_pool_id), false, interval '1 hour') as t
    where p.pool_id = p_pool_id and p.month_start is not null;

    perform costwarden._audit(
        'reconcile_repair', p_org_id,
        jsonb_build_object('pool_id', p_pool_id, 'kind', v_pool.kind, 'scope_id', v_pool.scope_id),
        -- held: what the pool held for reservations (without its lanes' unused grants)
        jsonb_build_object('held_micros', v_pool.held_micros - v_unused_micros,
                           'held_tokens', v_pool.held_tokens - v_unused_tokens,
                           'spent_micros', v_spent_micros, 'spent_tokens', v_spent_tokens),
        jsonb_build_object('held_micros', v_held_micros, 'held_tokens', v_held_tokens,
                           'spent_micros', (select p.spent_micros from costwarden._pools as p where p.pool_id = p_pool_id),
                           'spent_tokens', (select p.spent_tokens from costwarden._pools as p where p.pool_id = p_pool_id),
                           'drift', v_rows, 'reason', p_reason)
    );
    return query
    select x.org_id, x.pool_id, x.pool_kind, x.scope_id, x.measure, x.period, x.window_kind, x.metric,
           x.counter, x.recomputed, x.drift
    from jsonb_to_recordset(v_rows) as x (
        org_id text, pool_id bigint, pool_kind text, scope_id text, measure text, period text,
        window_kind text, metric text, counter bigint, recomputed bigint, drift bigint
    )
    order by x.measure, x.period, x.window_kind, x.metric;
end
$$;

-- Internal: is some unit of p_usage below the same unit of p_floor?
create or replace function costwarden._usage_below(p_usage jsonb, p_floor jsonb)
returns boolean
language sql
immutable
as $$
    select exists (
        select from jsonb_each(coalesce(p_floor, '{}')) as f
        where coalesce((p_usage ->> f.key)::numeric, 0) < (f.value::text)::numeric
    )
$$;

-- Internal (replay): metered usage a client recorded while the database was
-- unreachable, applied to a reservation the database holds, as the meter tick
-- would have been: a held reservation records it (a tick proper while the
-- reservation is live, which may extend the hold; past its expiry, the
-- metered usage only); an expired one is charged what that usage costs beyond
-- what expiry charged, as a late, approximate charge, when p_charge_expired.
-- Usage below what the reservation already metered was superseded by a later
-- tick: nothing to do.
create or replace function costwarden._replay_metered(p_r costwarden._reservations, p_usage jsonb, p_charge_expired boolean)
returns void
language plpgsql
as $$
declare
    v_cost bigint;
    v_tokens bigint;
    v_charge bigint;
    v_charge_tokens bigint;
begin
    if p_usage is null or jsonb_typeof(p_usage) <> 'object' then
        perform costwarden._raise('CW004', 'p_usage must be a JSON object of usage units');
    end if;
    if p_r.status = 'held' then
        if costwarden._usage_below(p_usage, p_r.metered_usage) then
            return;
        end if;
        if p_r.expires_at >= now() then
            perform null from costwarden.fn_cost_meter_tick(p_r.reservation_id, p_usage);
        else
            select p.tokens, p.amount_micros into v_tokens, v_cost
            from costwarden._reservation_price(p_r.pricing_snapshot_id, p_usage) as p;
            update costwarden._reservations as r
            set metered_usage = p_usage, metered_micros = v_cost, metered_tokens = v_tokens
            where r.reservation_id = p_r.reservation_id;
        end if;
    elsif p_r.status = 'expired' and p_charge_expired then
        select p.tokens, p.amount_micros into v_tokens, v_cost
        from costwarden._reservation_price(p_r.pricing_snapshot_id, p_usage) as p;
        v_charge := greatest(v_cost - p_r.charged_micros, 0);
        v_charge_tokens := greatest(v_tokens - p_r.charged_tokens, 0);
        if v_charge > 0 or v_charge_tokens > 0 then
            perform costwarden._lock_pools(p_r.pool_ids);
            perform costwarden._book_charge(
                p_r,
                case when p_r.metered_usage is not null and p_r.charged_micros + p_r.charged_tokens > 0
                     then costwarden._usage_minus(p_usage, p_r.metered_usage) else p_usage end,
                v_charge, v_charge_tokens, true, true);
            update costwarden._reservations as r
            set charged_micros = r.charged_micros + v_charge, charged_tokens = r.charged_tokens + v_charge_tokens,
                metered_usage = p_usage, metered_micros = v_cost, metered_tokens = v_tokens
            where r.reservation_id = p_r.reservation_id;
        end if;
    end if;
end
$$;

-- Replay one operation a client spooled on a reservation the database holds
-- (the client could not reach the database when the call finished): exactly
-- once per p_operation_id (a repeat books nothing and returns applied =
-- false); what it books is what the call would have booked online, priced at
-- the reservation's snapshot (fixed at reserve):
--   meter:   p_usage, the cumulative usage of the last tick the client
--            answered itself (see _replay_metered; an expired reservation is
--            charged for it when expire_action is commit_metered, as expiry
--            would have);
--   commit:  fn_cost_commit(p_usage, p_approximate) (a late commit when the
--            reservation expired meanwhile);
--   release: p_usage, when given, is the metered usage of the call's ticks
--            (recorded first, charged even when the reservation expired
--            meanwhile), then fn_cost_release(p_reason).
create or replace function costwarden.fn_replay_reservation(
    p_operation_id uuid, p_kind text, p_reservation_id uuid, p_usage jsonb default null,
    p_approximate boolean default false, p_reason text default null, p_called_at timestamptz default null
)
returns table (applied boolean, booked_micros bigint, released_micros bigint, status text)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_r costwarden._reservations;
    v_op costwarden._replayed_operations;
    v_released bigint := 0;
    v_booked bigint;
begin
    if p_operation_id is null then
        perform costwarden._raise('CW004', 'p_operation_id is required');
    end if;
    if p_kind is null or p_kind not in ('meter', 'commit', 'release') then
        perform costwarden._raise('CW004', 'p_kind must be meter, commit or release');
    end if;
    if p_kind in ('meter', 'commit') and (p_usage is null or jsonb_typeof(p_usage) <> 'object') then
        perform costwarden._raise('CW004', 'p_usage must be a JSON object of usage units');
    end if;
    if p_usage is not null and jsonb_typeof(p_usage) <> 'object' then
        perform costwarden._raise('CW004', 'p_usage must be a JSON object of usage units');
    end if;
    if p_reservation_id is null then
        perform costwarden._raise('CW004', 'p_reservation_id is required');
    end if;
    select * into v_r from costwarden._reservations as r where r.reservation_id = p_reservation_id;
    if not found then
        perform costwarden._raise('CW002', format('p_reservation_id: unknown reservation %s', p_reservation_id));
    end if;
    perform costwarden._tenant_guard(v_r.org_id, p_arg => 'p_reservation_id');

    -- the operation's row first: a concurrent replay of the same operation waits here
    insert into costwarden._replayed_operations (operation_id, org_id, kind, reservation_id, called_at)
    values (p_operation_id, v_r.org_id, p_kind, p_reservation_id, p_called_at)
    on conflict (operation_id) do nothing;
    if not found then
        select * into v_op from costwarden._replayed_operations as o where o.operation_id = p_operation_id;
        if v_op.reservation_id is distinct from p_reservation_id or v_op.kind <> p_kind then
            perform costwarden._raise('CW007', format(
                'p_operation_id: operation %s was replayed with other arguments', p_operation_id));
        end if;
        return query select false, 0::bigint, 0::bigint, (v_op.result ->> 'status');
        return;
    end if;

    v_r := costwarden._reservation_for_update(p_reservation_id);
    v_booked := v_r.charged_micros;
    if p_kind = 'meter' then
        perform costwarden._replay_metered(v_r, p_usage,
            costwarden._setting('expire_action') = '"commit_metered"');
    elsif p_kind = 'commit' then
        select c.released_micros into v_released
        from costwarden.fn_cost_commit(p_reservation_id, p_usage, coalesce(p_approximate, false)) as c;
    else
        if p_usage is not null then
            perform costwarden._replay_metered(v_r, p_usage, true);
        end if;
        select r.status into v_r.status from costwarden._reservations as r where r.reservation_id = p_reservation_id;
        if v_r.status = 'held' then
            select x.released_micros into v_released from costwarden.fn_cost_release(p_reservation_id, p_reason) as x;
        end if;
    end if;
    select * into v_r from costwarden._reservations as r where r.reservation_id = p_reservation_id;
    v_booked := v_r.charged_micros - v_booked;
    update costwarden._replayed_operations as o
    set booked_micros = greatest(v_booked, 0), last_replayed_at = now(),
        result = jsonb_build_object('status', v_r.status, 'booked_micros', v_booked, 'released_micros', v_released)
    where o.operation_id = p_operation_id;
    return query select true, v_booked, coalesce(v_released, 0), v_r.status::text;
end
$$;

-- Replay the usage of a call a client let through without the database (its
-- reservation never reached it): booked as a spend report of the client's
-- spool source (p_source), with the call's model, usage and tokens, priced by
-- the pricing snapshot in force at p_called_at (when the call was made), into
-- the pools of its (workspace, key, user). Every record of one call carries the
-- call's id (p_operation_id) and its cumulative usage: only what it costs
-- beyond what the call already booked is booked, so a repeat books nothing.
-- p_final = false: a meter tick of a call that has not finished; it is booked
-- only when expire_action is commit_metered (what expiry does with a held
-- reservation's metered usage), so that a call whose process died is charged
-- as a reservation would have been.
create or replace function costwarden.fn_replay_usage(
    p_operation_id uuid, p_org_id text, p_workspace_id text, p_model text, p_usage jsonb,
    p_called_at timestamptz, p_source text,
    p_user_id text default null, p_key_id text default null,
    p_approximate boolean default false, p_final boolean default true
)
returns table (applied boolean, booked_micros bigint, booked_tokens bigint, pricing_snapshot_id bigint)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_op costwarden._replayed_operations;
    v_user_id text;
    v_snapshot bigint;
    v_cost bigint;
    v_tokens bigint;
    v_delta bigint;
    v_delta_tokens bigint;
    v_pool_ids bigint[];
begin
    perform costwarden._tenant_guard(p_org_id);
    if p_operation_id is null then
        perform costwarden._raise('CW004', 'p_operation_id is required');
    end if;
    perform costwarden._require_workspace(p_org_id, p_workspace_id);
    perform costwarden._require_model(p_model);
    if p_usage is null or jsonb_typeof(p_usage) <> 'object' then
        perform costwarden._raise('CW004', 'p_usage must be a JSON object of usage units');
    end if;
    if p_called_at is null or not isfinite(p_called_at) then
        perform costwarden._raise('CW004', 'p_called_at is required: when the call was made');
    end if;
    perform costwarden._require_text(p_source, 'p_source');
    if p_approximate is null or p_final is null then
        perform costwarden._raise('CW004', 'p_approximate and p_final must be true or false');
    end if;
    v_user_id := costwarden._context_user(p_org_id, p_workspace_id, p_user_id, p_key_id);

    -- the call's row (lock order: before the spend source row and the pools)
    insert into costwarden._replayed_operations (operation_id, org_id, kind, called_at)
    values (p_operation_id, p_org_id, 'usage', p_called_at)
    on conflict (operation_id) do nothing;
    select * into v_op from costwarden._replayed_operations as o where o.operation_id = p_operation_id for update;
    if v_op.kind <> 'usage' or v_op.org_id <> p_org_id then
        perform costwarden._raise('CW007', format(
            'p_operation_id: operation %s was replayed with other arguments', p_operation_id));
    end if;

    -- the snapshot in force when the call was made, kept for every later record of the call
    v_snapshot := coalesce(v_op.pricing_snapshot_id, (
        select ps.snapshot_id from costwarden._pricing_snapshots as ps
        where ps.model = p_model and ps.effective_from <= v_op.called_at
        order by ps.effective_from desc
        limit 1));
    if v_snapshot is null then
        perform costwarden._unpriced_check(p_model, null, '{}');  -- CW006 unless unpriced_policy = free
    end if;
    select p.tokens, p.amount_micros into v_tokens, v_cost
    from costwarden._reservation_price(v_snapshot, p_usage) as p;

    if not p_final and costwarden._setting('expire_action') <> '"commit_metered"' then
        v_delta := 0;
        v_delta_tokens := 0;
    else
        v_delta := greatest(v_cost - v_op.booked_micros, 0);
        v_delta_tokens := greatest(v_tokens - v_op.booked_tokens, 0);
    end if;
    if v_delta > 0 or v_delta_tokens > 0 then
        perform costwarden._spend_source_lock(p_org_id, p_workspace_id, p_source);
        v_pool_ids := costwarden._context_pool_ids(p_org_id, p_workspace_id, p_key_id, v_user_id);
        perform costwarden._lock_pools(v_pool_ids);
        perform costwarden._pool_add_spend(v_pool_ids, v_delta, v_delta_tokens, now(), p_org_id => p_org_id);
        perform costwarden._ledger_append(
            p_org_id => p_org_id, p_entry_type => 'spend_report', p_amount_micros => v_delta,
            p_workspace_id => p_workspace_id, p_user_id => v_user_id, p_key_id => p_key_id,
            p_model => p_model,
            p_billing_mode => (costwarden._billing_mode(
                costwarden._require_workspace(p_org_id, p_workspace_id))).billing_mode,
            p_usage => case when v_op.usage is null then p_usage else costwarden._usage_minus(p_usage, v_op.usage) end,
            p_tokens => v_delta_tokens, p_pricing_snapshot_id => v_snapshot,
            p_approximate => p_approximate, p_source => p_source);
        perform costwarden._spend_alerts(p_org_id, p_workspace_id, p_key_id, v_user_id, v_pool_ids);
        update costwarden._spend_sources as s
        set last_cumulative_micros = coalesce(s.last_cumulative_micros, 0) + v_delta, reports = s.reports + 1,
            booked_micros = s.booked_micros + v_delta, last_reported_at = now()
        where s.org_id = p_org_id and s.workspace_id = p_workspace_id and s.source = p_source;
        update costwarden._replayed_operations as o
        set booked_micros = o.booked_micros + v_delta, booked_tokens = o.booked_tokens + v_delta_tokens,
            usage = p_usage
        where o.operation_id = p_operation_id;
    end if;
    update costwarden._replayed_operations as o
    set pricing_snapshot_id = v_snapshot, last_replayed_at = now()
    where o.operation_id = p_operation_id;
    return query select v_delta > 0 or v_delta_tokens > 0, v_delta, v_delta_tokens, v_snapshot;
end
$$;

grant execute on function
    costwarden.fn_replay_reservation(uuid, text, uuid, jsonb, boolean, text, timestamptz),
    costwarden.fn_replay_usage(uuid, text, text, text, jsonb, timestamptz, text, text, text, boolean, boolean)
to costwarden_service;
grant execute on function costwarden.fn_reconcile(text) to costwarden_admin, costwarden_service;
grant execute on function costwarden.fn_reconcile_repair(text, bigint, text) to costwarden_admin;
