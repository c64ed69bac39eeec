-- What `costwarden serve` (SPEC §13, docs/http.md) reads beyond the RPCs of
-- §1-§11: the Prometheus figures of /metrics and `costwarden metrics`, and the
-- schema state /healthz compares with the files it ships. Both read private
-- tables, so they are SECURITY DEFINER like every RPC; neither writes.

-- The figures of /metrics, one row per sample (docs/http.md#metrics):
--   costwarden_reservations_held                  live holds, all orgs
--   costwarden_reservations_last_hour{org,status}  reservations created in the last hour
--   costwarden_denials_last_hour{org,reason}       refusing reasons of the denied ones
--   costwarden_limit_spent_ratio{...}              spent / limit of each enforced limit
--   costwarden_limit_held_ratio{...}               held / limit of each enforced limit
--   costwarden_circuit_state{provider,state}       1 for the provider's current state
-- The ratios come from fn_budget_status (the figures the limit check uses); a limit
-- of 0 has no ratio. Cost: one index range per org for the last hour, one budget
-- status per limited scope; nothing grows with the ledger.
create or replace function costwarden.fn_metrics()
returns table (metric text, labels jsonb, value numeric)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    -- a caller confined to one org (its actor, _tenant_guard) sees that org's samples
    v_org text := (costwarden._actor()).org_id;
begin
    return query
    select 'costwarden_reservations_held'::text, '{}'::jsonb, count(*)::numeric
    from costwarden._reservations as r
    where r.status = 'held' and (v_org is null or r.org_id = v_org);

    return query
    select 'costwarden_reservations_last_hour'::text,
           jsonb_build_object('org', o.org_id, 'status', c.status), c.n::numeric
    from costwarden._orgs as o
    cross join lateral (
        select r.status, count(*) as n
        from costwarden._reservations as r
        where r.org_id = o.org_id and r.created_at > now() - interval '1 hour'
        group by r.status
    ) as c
    where v_org is null or o.org_id = v_org
    order by o.org_id, c.status;

    return query
    select 'costwarden_denials_last_hour'::text,
           jsonb_build_object('org', o.org_id, 'reason', d.code), d.n::numeric
    from costwarden._orgs as o
    cross join lateral (
        select e ->> 'code' as code, count(*) as n
        from costwarden._reservations as r
        cross join lateral jsonb_array_elements(r.reasons) as e
        where r.org_id = o.org_id and r.created_at > now() - interval '1 hour'
          and r.status = 'denied' and (e ->> 'enforced')::boolean is not false
        group by 1
    ) as d
    where v_org is null or o.org_id = v_org
    order by o.org_id, d.code;

    return query
    with scopes as (
        select distinct b.org_id, b.scope_kind, nullif(b.scope_id, '') as scope_id
        from costwarden._budgets as b
        where b.mode = 'enforce' and b.scope_kind in ('org', 'workspace', 'key', 'user')
          and (v_org is null or b.org_id = v_org)
    ),
    limits as (
        select s.org_id, s.scope_kind, s.scope_id, st.period, st.metric, st.window_kind,
               st.limit_value, st.spent, st.held
        from scopes as s
        cross join lateral costwarden.fn_budget_status(s.org_id, s.scope_kind, s.scope_id) as st
        where st.mode = 'enforce' and st.limit_value > 0
          and (s.scope_kind <> 'user' or st.source = 'user')
    )
    select m.metric,
           jsonb_build_object('org', l.org_id, 'scope_kind', l.scope_kind,
                              'scope_id', coalesce(l.scope_id, ''), 'period', l.period,
                              'metric', l.metric, 'window', l.window_kind),
           round(case m.metric when 'costwarden_limit_spent_ratio' then l.spent else l.held end::numeric
                 / l.limit_value, 6)
    from limits as l
    cross join (values ('costwarden_limit_spent_ratio'), ('costwarden_limit_held_ratio')) as m (metric)
    order by m.metric, l.org_id, l.scope_kind, l.scope_id, l.period, l.metric, l.window_kind;

    return query
    select 'costwarden_circuit_state'::text,
           jsonb_build_object('provider', c.provider, 'state', s.state),
           (c.state = s.state)::integer::numeric
    from costwarden.fn_circuit_status() as c
    cross join (values ('closed'), ('open'), ('half_open')) as s (state)
    order by c.provider, s.state;
end
$$;

comment on function costwarden.fn_metrics() is
'Prometheus samples of /metrics and costwarden metrics: holds, reservations and denials '
'of the last hour, enforced limit ratios, circuit states (docs/http.md).';

-- The applied migrations and function files, as the runner recorded them: /healthz
-- compares them with the files the running costwarden ships (schema up to date).
create or replace function costwarden.fn_schema_state()
returns table (kind text, version integer, name text, checksum text)
language sql stable security definer set search_path = pg_catalog, pg_temp
as $$
    select 'migration'::text, m.version, m.name, m.checksum
    from costwarden._migrations as m
    union all
    select 'function'::text, null::integer, f.name, f.checksum
    from costwarden._repeatables as f
    order by 1 desc, 2, 3
$$;

comment on function costwarden.fn_schema_state() is
'The migrations and function files applied, with their checksums (for /healthz).';

grant execute on function costwarden.fn_metrics(), costwarden.fn_schema_state()
to costwarden_admin, costwarden_service;

-- One reservation by id (GET /v1/reservations/{id}), in the columns of
-- fn_get_my_cost_reservations (admin, service; a tenant reads its own through
-- fn_get_my_cost_reservations). A caller with an actor sees only its org's
-- reservations (the guard of §9); unknown is CW002.
create or replace function costwarden.fn_reservation_get(p_reservation_id uuid)
returns table (
    reservation_id uuid, org_id text, workspace_id text, user_id text, key_id text, model text,
    status text, amount_micros bigint, metered_micros bigint, charged_micros bigint,
    created_at timestamptz, expires_at timestamptz, reasons jsonb
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_row costwarden._reservations;
begin
    if p_reservation_id is null then
        perform costwarden._raise('CW004', 'p_reservation_id is required');
    end if;
    select * into v_row from costwarden._reservations as r where r.reservation_id = p_reservation_id;
    if not found then
        perform costwarden._raise('CW002', format('p_reservation_id: unknown reservation %s', p_reservation_id));
    end if;
    perform costwarden._tenant_guard(v_row.org_id, 'user', v_row.user_id, 'p_reservation_id');
    -- amount_micros is the quoted amount, as in the reservation listings (_reservations_page)
    return query
    select v_row.reservation_id, v_row.org_id, v_row.workspace_id, v_row.user_id, v_row.key_id, v_row.model,
           v_row.status::text, v_row.quoted_micros, v_row.metered_micros::bigint, v_row.charged_micros::bigint,
           v_row.created_at, v_row.expires_at, v_row.reasons || coalesce(v_row.tick_reasons, '[]'::jsonb);
end
$$;

comment on function costwarden.fn_reservation_get(uuid) is
'One reservation by id; a caller with an actor only its org''s (CW005).';

grant execute on function costwarden.fn_reservation_get(uuid)
to costwarden_admin, costwarden_service;

-- The caller's allocations (GET /v1/me/allocations, the seeds' allocation card):
-- each API key the actor owns (fn_key_upsert's p_user_id), with its cap and what it
-- used in the window (this calendar month by default), from fn_spend_summary --
-- the figures the limit check uses. A key that never spent shows zeros.
create or replace function costwarden.fn_my_allocations(
    p_period text default 'month', p_window text default 'calendar'
)
returns table (
    key_id text, workspace_id text, period text, window_kind text,
    window_start timestamptz, window_end timestamptz,
    spent_micros bigint, held_micros bigint, limit_micros bigint, remaining_micros bigint
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_actor record;
    v_key record;
    v_row record;
    v_tz text;
begin
    perform costwarden._require_period_window(p_period, p_window);
    select * into v_actor from costwarden._actor();
    if v_actor.org_id is null or v_actor.user_id is null then
        perform costwarden._raise('CW005', 'no actor: a token with org_id and sub (or costwarden.actor_org / actor_user)');
    end if;
    for v_key in
        select k.key_id, k.workspace_id,
               exists (select from costwarden._pools as p
                       where p.org_id = k.org_id and p.kind = 'key' and p.scope_id = k.key_id) as has_pool
        from costwarden._keys as k
        where k.org_id = v_actor.org_id and k.user_id = v_actor.user_id
        order by k.key_id
    loop
        if v_key.has_pool then
            select * into v_row
            from costwarden.fn_spend_summary(v_actor.org_id, 'key', v_key.key_id, p_period, p_window) as s;
            return query select v_key.key_id, v_key.workspace_id, v_row.period, v_row.window_kind,
                                v_row.window_start, v_row.window_end, v_row.spent_micros, v_row.held_micros,
                                v_row.limit_micros, v_row.remaining_micros;
        else
            v_tz := costwarden._org_tz(v_actor.org_id);
            return query select v_key.key_id, v_key.workspace_id, p_period, p_window,
                                costwarden._window_start(p_period, p_window, v_tz, now()),
                                costwarden._window_end(p_period, p_window, v_tz, now()),
                                0::bigint, 0::bigint, null::bigint, null::bigint;
        end if;
    end loop;
end
$$;

comment on function costwarden.fn_my_allocations(text, text) is
'The actor''s own keys with their cap and spend in the window (GET /v1/me/allocations).';

grant execute on function costwarden.fn_my_allocations(text, text)
to costwarden_admin, costwarden_service, costwarden_tenant;
