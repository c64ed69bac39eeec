-- Spend visibility and limit listings (SPEC §11), the decision on quarantined
-- spend reports (SPEC §6 "Outlier reports"), and workspace readiness: what
-- would make every reserve of a workspace refuse (docs/budgets.md,
-- docs/guardrails.md, docs/byok.md).

-- (_window_end, the end of a period's window, is in 06_budgets.sql.)

-- Spend, holds, calls and the enforced limits of one scope, or of every scope
-- of a kind, in the window of (p_period, p_window) at p_at.
--   spent: the difference of the pool's totals before the window's end and
--          before its start, read from the spend marks as the limit check reads
--          them (06_budgets.sql): one index probe per scope (two for a window
--          that ended in the past) whatever the size of the ledger;
--   held:  the scope's live holds (now);
--   calls / denied: the reservations created in the window, counted from the
--          reservations through an index per scope kind (0011), never the ledger.
create or replace function costwarden.fn_spend_summary(
    p_org_id text,
    p_scope_kind text default 'org',
    p_scope_id text default null,
    p_period text default 'month',
    p_window text default 'calendar',
    p_at timestamptz default now()
)
returns table (
    scope_kind text, scope_id text, period text, window_kind text,
    window_start timestamptz, window_end timestamptz,
    spent_micros bigint, held_micros bigint, spent_tokens bigint, held_tokens bigint,
    calls bigint, denied bigint,
    limit_micros bigint, limit_tokens bigint,
    remaining_micros bigint, remaining_tokens bigint
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_scope_id text;
    v_tz text;
    v_start timestamptz;
    v_end timestamptz;
    v_probe_start timestamptz;
    v_probe_end timestamptz;
    v_rolling boolean;
    v_month boolean;
    v_calls bigint;
    v_denied bigint;
    v_listed jsonb;
begin
    -- 1. validate (read-only: nothing to undo on error)
    if p_scope_kind is null or p_scope_kind not in ('org', 'workspace', 'user', 'key') then
        perform costwarden._raise('CW004', 'p_scope_kind must be org, workspace, user or key');
    end if;
    if p_scope_kind = 'org' then
        if p_scope_id is not null then
            perform costwarden._raise('CW004', 'p_scope_id must be null for scope kind org');
        end if;
        v_scope_id := '';
    elsif p_scope_id is not null then
        v_scope_id := costwarden._require_text(p_scope_id, 'p_scope_id');
    end if;
    perform costwarden._require_period_window(p_period, p_window);
    if p_at is null or not isfinite(p_at) then
        perform costwarden._raise('CW004', 'p_at must be a finite timestamp');
    end if;

    -- 2. who may read it: the tenant guard first (a tenant learns nothing about
    --    other orgs); a tenant reads its own user scope and the keys it owns, no
    --    org, workspace or listing of other users' scopes (SPEC §11)
    perform costwarden._tenant_guard(p_org_id, p_scope_kind, v_scope_id);
    if p_scope_kind in ('org', 'workspace') and not costwarden._caller_is_privileged() then
        perform costwarden._raise('CW005', format(
            'p_scope_kind: a tenant may read only its own user scope and its own keys, not %s', p_scope_kind));
    end if;
    perform costwarden._require_org(p_org_id);
    if p_scope_kind <> 'org' and v_scope_id is not null and not exists (
        select from costwarden._pools as p
        where p.org_id = p_org_id and p.kind = p_scope_kind and p.scope_id = v_scope_id
    ) then
        perform costwarden._raise('CW002', format('p_scope_id: unknown %s %L in org %L', p_scope_kind, v_scope_id, p_org_id));
    end if;

    v_tz := costwarden._org_tz(p_org_id);
    v_start := costwarden._window_start(p_period, p_window, v_tz, p_at);
    v_end := costwarden._window_end(p_period, p_window, v_tz, p_at);
    v_rolling := p_window = 'rolling';
    -- the calendar month now running: spent from the pools' month base (v_start
    -- then equals a pool's month_start when its latest booking is of this month)
    v_month := p_period = 'month' and not v_rolling and v_end > now();
    -- where the marks are read: the start floored to its slot, the end (rolling:
    -- p_at inclusive; calendar: exclusive) rounded up to its slot (_mark_probe)
    v_probe_start := costwarden._mark_probe(v_start, now(), false, costwarden._period_slot(p_period));
    v_probe_end := costwarden._mark_probe(
        case when v_rolling then v_end + interval '1 microsecond' else v_end end, now(), true,
        costwarden._period_slot(p_period));

    -- 3. calls of one scope: one index range (rolling: (start, p_at]; calendar: [start, end))
    if v_scope_id is not null then
        select count(*), count(*) filter (where r.status = 'denied') into v_calls, v_denied
        from costwarden._reservations as r
        where r.org_id = p_org_id
          and (p_scope_kind = 'org'
               or (p_scope_kind = 'workspace' and r.workspace_id = v_scope_id)
               or (p_scope_kind = 'user' and r.user_id = v_scope_id)
               or (p_scope_kind = 'key' and r.key_id = v_scope_id))
          and r.created_at >= v_start and r.created_at <= v_end
          and (not v_rolling or r.created_at > v_start)
          and (v_rolling or r.created_at < v_end);
    else
        -- the listing: every reservation of the org in the window, once, by
        -- scope, as {scope_id: [calls, denied]} (a separate statement: joined
        -- to the scopes, a generic plan of one statement nested-loops over both)
        select coalesce(jsonb_object_agg(c.scope_id, jsonb_build_array(c.calls, c.denied)), '{}')
        into v_listed
        from (
            select case p_scope_kind when 'workspace' then r.workspace_id when 'user' then r.user_id
                                     else r.key_id end as scope_id,
                   count(*) as calls, count(*) filter (where r.status = 'denied') as denied
            from costwarden._reservations as r
            where r.org_id = p_org_id
              and r.created_at >= v_start and r.created_at <= v_end
              and (not v_rolling or r.created_at > v_start)
              and (v_rolling or r.created_at < v_end)
            group by 1
        ) as c
        where c.scope_id is not null;
    end if;

    return query
    with scopes as (
        -- held: without the lanes' unused grants (docs/internals.md#lanes)
        select p.pool_id, p.scope_id, (p.held_micros - g.unused_micros)::bigint as held_micros,
               (p.held_tokens - g.unused_tokens)::bigint as held_tokens, p.spent_micros, p.spent_tokens,
               -- the current calendar month: the pool's own base (migration 0016), no probe
               v_month and p.month_start = v_start as at_base, p.month_base_micros, p.month_base_tokens
        from costwarden._pools as p
        cross join lateral costwarden._pool_lane_grants(p.pool_id) as g
        where p.org_id = p_org_id and p.kind = p_scope_kind
          and (v_scope_id is null or p.scope_id = v_scope_id)
    ),
    figures as (
        select s.scope_id, s.held_micros, s.held_tokens, sp.micros, sp.tokens, lim.lim_micros, lim.lim_tokens,
               coalesce(case when v_scope_id is null then (v_listed -> s.scope_id ->> 0)::bigint
                             else v_calls end, 0) as n_calls,
               coalesce(case when v_scope_id is null then (v_listed -> s.scope_id ->> 1)::bigint
                             else v_denied end, 0) as n_denied
        from scopes as s
        -- spent: the pool's total before the window's end minus its total
        -- before its start, one probe of _spend_marks each (06_budgets.sql)
        left join lateral (
            select k.micros_before, k.tokens_before
            from costwarden._spend_marks as k
            where not s.at_base  -- a gating filter: no index probe for the month's base
              and k.pool_id = s.pool_id and k.mark_at >= v_probe_start
            order by k.mark_at
            limit 1
        ) as ms on true
        left join lateral (
            select k.micros_before, k.tokens_before
            from costwarden._spend_marks as k
            where v_probe_end <= now()  -- a window that ends later has no mark after it yet
              and k.pool_id = s.pool_id and k.mark_at >= v_probe_end
            order by k.mark_at
            limit 1
        ) as me on true
        cross join lateral (
            select coalesce(me.micros_before, s.spent_micros)
                   - case when s.at_base then s.month_base_micros else coalesce(ms.micros_before, s.spent_micros) end
                   as micros,
                   coalesce(me.tokens_before, s.spent_tokens)
                   - case when s.at_base then s.month_base_tokens else coalesce(ms.tokens_before, s.spent_tokens) end
                   as tokens
        ) as sp
        cross join lateral (
            select max(l.limit_value) filter (where l.metric = 'cost') as lim_micros,
                   max(l.limit_value) filter (where l.metric = 'tokens') as lim_tokens
            from (
                select b.metric, b.limit_value
                from costwarden._budgets as b
                where p_scope_kind <> 'user'
                  and b.org_id = p_org_id and b.scope_kind = p_scope_kind and b.scope_id = s.scope_id
                  and b.period = p_period and b.window_kind = p_window and b.mode = 'enforce'
                union all
                select e.metric, e.limit_value
                from costwarden._user_effective_limits(p_org_id, s.scope_id) as e
                where p_scope_kind = 'user'
                  and e.period = p_period and e.window_kind = p_window and e.mode = 'enforce'
            ) as l
        ) as lim
    )
    select p_scope_kind, nullif(r.scope_id, ''), p_period, p_window, v_start, v_end,
           r.micros, r.held_micros, r.tokens, r.held_tokens, r.n_calls, r.n_denied,
           r.lim_micros, r.lim_tokens,
           case when r.lim_micros is not null then greatest(r.lim_micros - r.micros - r.held_micros, 0) end,
           case when r.lim_tokens is not null then greatest(r.lim_tokens - r.tokens - r.held_tokens, 0) end
    from figures as r
    where v_scope_id is not null
       or r.micros <> 0 or r.tokens <> 0 or r.held_micros <> 0 or r.held_tokens <> 0
       or r.lim_micros is not null or r.lim_tokens is not null
    order by r.micros desc, r.scope_id;
end
$$;

-- Every limit configured in the org: pools, per-user overrides, group limits
-- and the user default (admin, service).
create or replace function costwarden.fn_budget_list(p_org_id text, p_scope_kind text default null)
returns table (
    scope_kind text, scope_id text, period text, metric text, window_kind text,
    limit_value bigint, mode text, updated_at timestamptz
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_kinds constant text[] := array['org', 'workspace', 'key', 'user', 'group', 'user_default'];
begin
    if p_scope_kind is not null and not p_scope_kind = any (v_kinds) then
        perform costwarden._raise('CW004', 'p_scope_kind must be null, org, workspace, key, user, group or user_default');
    end if;
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._require_org(p_org_id);
    return query
    select b.scope_kind, nullif(b.scope_id, ''), b.period, b.metric, b.window_kind, b.limit_value, b.mode,
           b.updated_at
    from costwarden._budgets as b
    where b.org_id = p_org_id and (p_scope_kind is null or b.scope_kind = p_scope_kind)
    order by array_position(v_kinds, b.scope_kind), b.scope_id,
             array_position(array['hour', 'day', 'week', 'month'], b.period), b.metric, b.window_kind;
end
$$;

-- The quarantined spend reports of an org that no admin has decided yet.
create or replace function costwarden.fn_spend_reports_quarantined(p_org_id text)
returns table (
    report_id bigint, org_id text, workspace_id text, source text, delta_micros bigint,
    reported_at timestamptz
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._tenant_guard(p_org_id);
    perform costwarden._require_org(p_org_id);
    return query
    select q.report_id, q.org_id, q.workspace_id, q.source, q.delta_micros, q.reported_at
    from costwarden._spend_report_quarantine as q
    where q.org_id = p_org_id and q.accepted is null
    order by q.report_id;
end
$$;

-- Decide a quarantined report, once: accept books its delta now (a spend_report
-- ledger entry, counted in the windows from now on); reject books nothing.
-- Either way its outlier anomaly is acknowledged (a freeze it caused is lifted).
-- Returns the micros booked. Audited.
-- lock order: the source row, the report row, pools, ledger head.
create or replace function costwarden.fn_spend_report_resolve(p_report_id bigint, p_accept boolean)
returns bigint
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_q costwarden._spend_report_quarantine;
    v_s costwarden._spend_sources;
    v_by text;
    v_seq bigint;
    v_booked bigint := 0;
begin
    if p_report_id is null then
        perform costwarden._raise('CW004', 'p_report_id is required');
    end if;
    if p_accept is null then
        perform costwarden._raise('CW004', 'p_accept must be true (book the delta) or false (book nothing)');
    end if;
    select * into v_q from costwarden._spend_report_quarantine as q where q.report_id = p_report_id;
    if not found then
        perform costwarden._raise('CW002', format('p_report_id: unknown quarantined spend report %s', p_report_id));
    end if;
    perform costwarden._tenant_guard(v_q.org_id, p_arg => 'p_report_id');
    select * into v_s from costwarden._spend_sources as s
    where s.org_id = v_q.org_id and s.workspace_id = v_q.workspace_id and s.source = v_q.source
    for update;
    select * into v_q from costwarden._spend_report_quarantine as q where q.report_id = p_report_id for update;
    if v_q.accepted is not null then
        perform costwarden._raise('CW003', format('p_report_id: spend report %s was already %s at %s',
            p_report_id, case when v_q.accepted then 'accepted' else 'rejected' end, v_q.decided_at));
    end if;
    v_by := coalesce((select a.user_id from costwarden._actor() as a), session_user::text);
    if p_accept then
        v_seq := costwarden._spend_report_book(v_s, v_q.delta_micros);
        v_booked := v_q.delta_micros;
        update costwarden._spend_sources as s
        set booked_micros = s.booked_micros + v_booked
        where s.org_id = v_q.org_id and s.workspace_id = v_q.workspace_id and s.source = v_q.source;
    end if;
    update costwarden._spend_report_quarantine as q
    set accepted = p_accept, decided_at = now(), decided_by = v_by, booked_micros = v_booked, ledger_seq = v_seq
    where q.report_id = p_report_id;
    update costwarden._anomalies as a
    set acked_at = now(), acked_by = v_by
    where a.anomaly_id = v_q.anomaly_id and a.acked_at is null;
    perform costwarden._audit(
        'spend_report_resolve', v_q.org_id,
        jsonb_build_object('report_id', p_report_id, 'workspace_id', v_q.workspace_id, 'source', v_q.source,
                           'delta_micros', v_q.delta_micros),
        jsonb_build_object('accepted', null),
        jsonb_build_object('accepted', p_accept, 'booked_micros', v_booked, 'ledger_seq', v_seq,
                           'anomaly_id', v_q.anomaly_id)
    );
    return v_booked;
end
$$;

-- Internal: what would refuse every reserve of a workspace, as (problem,
-- detail); problem is the reason code the reserve would record. No row: ready.
create or replace function costwarden._workspace_readiness(p_ws costwarden._workspaces)
returns table (problem text, detail text)
language plpgsql stable
as $$
declare
    v_mode record;
    v_provider text;
begin
    v_mode := costwarden._billing_mode(p_ws);
    select m.provider into v_provider from costwarden._models as m where m.model = p_ws.model;
    if v_mode.billing_mode = 'disabled' then
        problem := 'billing_disabled';
        detail := format('workspace %s/%s: billing mode is disabled (%s): every reserve is refused',
                         p_ws.org_id, p_ws.workspace_id, v_mode.source);
        return next;
    elsif v_mode.billing_mode = 'byok' and v_provider is not null
          and not costwarden._byok_usable(p_ws.org_id, p_ws.workspace_id, v_provider) then
        problem := 'byok_credential_missing';
        detail := format('workspace %s/%s bills byok (%s) but has no %s key: every reserve is refused '
                         '(byok_credential_missing) until one is stored with fn_byok_key_put',
                         p_ws.org_id, p_ws.workspace_id, v_mode.source, v_provider);
        return next;
    elsif v_mode.billing_mode = 'byok' and v_provider is null and not exists (
        select from costwarden._byok_keys as k
        where k.org_id = p_ws.org_id and k.workspace_id = p_ws.workspace_id and k.revoked_at is null
    ) then
        problem := 'byok_credential_missing';
        detail := format('workspace %s/%s bills byok (%s) and has no model and no key: every reserve is refused '
                         '(byok_credential_missing) until a key for the model''s provider is stored',
                         p_ws.org_id, p_ws.workspace_id, v_mode.source);
        return next;
    end if;
    if p_ws.model is not null and costwarden._setting('unpriced_policy') = '"reject"' and not exists (
        select from costwarden._pricing_snapshots as ps where ps.model = p_ws.model and ps.effective_from <= now()
    ) then
        problem := 'unpriced_model';
        detail := format('workspace %s/%s: model %s has no pricing snapshot in force: reserves are denied '
                         '(unpriced_model) until fn_pricing_set loads one', p_ws.org_id, p_ws.workspace_id, p_ws.model);
        return next;
    end if;
    if costwarden._workspace_frozen(p_ws.org_id, p_ws.workspace_id) then
        problem := 'anomaly_freeze';
        detail := format('workspace %s/%s is frozen by an unacknowledged anomaly (fn_anomaly_ack lifts it)',
                         p_ws.org_id, p_ws.workspace_id);
        return next;
    end if;
end
$$;

-- The companion check of fn_workspace_upsert / fn_workspace_billing_mode: what
-- would refuse every reserve of the workspace (admin, service).
create or replace function costwarden.fn_workspace_readiness(p_org_id text, p_workspace_id text)
returns table (problem text, detail text)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._tenant_guard(p_org_id);
    return query
    select r.problem, r.detail
    from costwarden._workspace_readiness(costwarden._require_workspace(p_org_id, p_workspace_id)) as r;
end
$$;

-- Internal: a workspace left in byok without a live key for its provider is
-- reported at once: a WARNING with SQLSTATE 01CW0 that psql prints and the
-- Python client turns into a costwarden.ReadinessWarning (the CLI prints it).
-- Reserve still refuses (byok_credential_missing): the warning changes nothing.
-- Sent when its model or billing override changes (fn_workspace_upsert,
-- fn_workspace_seed_model) and when its key is revoked (fn_byok_key_revoke; not
-- a key replaced by fn_byok_key_put): the two triggers below.
create or replace function costwarden._byok_readiness_warning(p_ws costwarden._workspaces)
returns void
language plpgsql
as $$
declare
    v_r record;
begin
    for v_r in
        select r.detail from costwarden._workspace_readiness(p_ws) as r where r.problem = 'byok_credential_missing'
    loop
        raise warning '%', v_r.detail using
            errcode = '01CW0',
            hint = 'store a key (costwarden keys put) or choose another billing mode; '
                   'fn_workspace_readiness lists what refuses reserves';
    end loop;
end
$$;

create or replace function costwarden._workspaces_byok_warning()
returns trigger
language plpgsql
as $$
begin
    if tg_op = 'UPDATE' and old.model is not distinct from new.model
       and old.billing_override is not distinct from new.billing_override then
        return null;
    end if;
    perform costwarden._byok_readiness_warning(new);
    return null;
end
$$;

create or replace trigger _workspaces_byok_warning
after insert or update of model, billing_override on costwarden._workspaces
for each row execute function costwarden._workspaces_byok_warning();

create or replace function costwarden._byok_keys_revoke_warning()
returns trigger
language plpgsql
as $$
begin
    perform costwarden._byok_readiness_warning(w)
    from costwarden._workspaces as w
    where w.org_id = new.org_id and w.workspace_id = new.workspace_id;
    return null;
end
$$;

create or replace trigger _byok_keys_revoke_warning
after update of revoked_at on costwarden._byok_keys
for each row
when (old.revoked_at is null and new.revoked_at is not null and new.revoke_reason = 'revoked')
execute function costwarden._byok_keys_revoke_warning();

grant execute on function
    costwarden.fn_spend_summary(text, text, text, text, text, timestamptz)
to costwarden_admin, costwarden_service, costwarden_tenant;
grant execute on function
    costwarden.fn_budget_list(text, text),
    costwarden.fn_workspace_readiness(text, text)
to costwarden_admin, costwarden_service;
grant execute on function
    costwarden.fn_spend_reports_quarantined(text),
    costwarden.fn_spend_report_resolve(bigint, boolean)
to costwarden_admin;
