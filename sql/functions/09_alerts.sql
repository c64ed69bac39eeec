-- Budget alerts (SPEC §6, docs/alerts.md): when a scope's level (spent +
-- held, plus the request when it is admitted) reaches 80% or 100% of a
-- limit, one NOTIFY on channel 'costwarden_alerts' -- once per threshold,
-- limit and window (the de-duplication rows are costwarden._alerts_sent).
--
-- Any role can LISTEN on a channel, so a notification carries only
-- {"kind", "alert_id", "level"} (SPEC §12); the alert itself is a row of
-- _alert_events (written by _alert_emit, 00_core.sql), read through
-- fn_alert_get by the roles allowed to see it.

-- One alert announced on costwarden_alerts, for admins and the service role
-- (a circuit alert may quote a provider's error text).
create or replace function costwarden.fn_alert_get(p_alert_id bigint)
returns table (alert_id bigint, at timestamptz, kind text, level text, org_id text, payload jsonb)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_a costwarden._alert_events;
begin
    if p_alert_id is null then
        perform costwarden._raise('CW004', 'p_alert_id is required');
    end if;
    select * into v_a from costwarden._alert_events as e where e.alert_id = p_alert_id;
    if not found then
        perform costwarden._raise('CW002', format('p_alert_id: unknown alert %s', p_alert_id));
    end if;
    if v_a.org_id is not null then
        perform costwarden._tenant_guard(v_a.org_id, p_arg => 'p_alert_id');
    elsif v_a.payload ? 'error'
          and not costwarden._error_readable(v_a.payload ->> 'error_org', (costwarden._actor()).org_id) then
        v_a.payload := v_a.payload || jsonb_build_object('error', null);  -- another org's text
    end if;
    return query select v_a.alert_id, v_a.at, v_a.kind, v_a.level, v_a.org_id, v_a.payload;
end
$$;

comment on function costwarden.fn_alert_get(bigint) is
'The alert behind a costwarden_alerts notification (its alert_id): kind, level, org and the full payload.';

grant execute on function costwarden.fn_alert_get(bigint) to costwarden_service;

-- Internal: alert on a limit if the level crossed 80% / 100% (see above).
-- p_refused: the request was refused, so the level stays at p_before;
-- otherwise it is p_after.
create or replace function costwarden._budget_alert(
    p_org_id text, p_scope_kind text, p_scope_id text, p_period text, p_metric text, p_window text,
    p_limit bigint, p_before bigint, p_after bigint, p_refused boolean
)
returns void
language plpgsql
as $$
declare
    v_level bigint := case when p_refused then p_before else p_after end;
    v_slot timestamptz;
    v_threshold integer;
begin
    if p_limit is null or p_limit <= 0 or v_level is null then
        return;
    end if;
    v_slot := case when p_window = 'calendar'
        then costwarden._window_start(p_period, 'calendar', costwarden._org_tz(p_org_id), now())
        else date_bin(case p_period when 'hour' then interval '1 hour' when 'day' then interval '1 day'
                                    when 'week' then interval '7 days' else interval '30 days' end,
                      now(), timestamptz '2000-01-03 00:00:00+00')
    end;
    foreach v_threshold in array array[80, 100] loop
        continue when v_level::numeric * 100 < p_limit::numeric * v_threshold;
        insert into costwarden._alerts_sent
            (org_id, scope_kind, scope_id, period, metric, window_kind, window_slot, threshold, level, limit_value)
        values (p_org_id, p_scope_kind, coalesce(p_scope_id, ''), p_period, p_metric, p_window, v_slot,
                v_threshold, v_level, p_limit)
        on conflict do nothing;
        if found then
            perform costwarden._alert_emit('budget', case when v_threshold >= 100 then 'critical' else 'warning' end,
                p_org_id, jsonb_build_object(
                'kind', 'budget', 'org_id', p_org_id, 'scope_kind', p_scope_kind,
                'scope_id', nullif(p_scope_id, ''), 'period', p_period, 'metric', p_metric,
                'window', p_window, 'window_slot', v_slot, 'threshold_percent', v_threshold,
                'level', v_level, 'limit', p_limit, 'refused', p_refused, 'at', now()));
        end if;
    end loop;
end
$$;

-- Internal (reserve): announce the limits a reservation brought to >= 80%,
-- once its decision is known. p_candidates: one array per such limit,
-- [scope_kind, scope_id, period, metric, window, limit, level before, level
-- after]. A denied reservation leaves every level where it was (before); a
-- held one -- shadow failures included -- takes every level to after.
create or replace function costwarden._budget_alerts(p_org_id text, p_candidates jsonb, p_denied boolean)
returns void
language plpgsql
as $$
declare
    v_a jsonb;
begin
    for v_a in select * from jsonb_array_elements(p_candidates) loop
        perform costwarden._budget_alert(p_org_id, v_a ->> 0, v_a ->> 1, v_a ->> 2, v_a ->> 3, v_a ->> 4,
            (v_a ->> 5)::bigint, (v_a ->> 6)::bigint, (v_a ->> 7)::bigint, p_denied);
    end loop;
end
$$;

-- Internal: after spend was booked beyond a hold (a charge with overage, a
-- late commit, a spend report, a repair), alert on every limit of the context
-- the new level crossed. The caller holds the locks of p_pool_ids, the
-- context's pools. This is also what keeps the lanes' grants on those pools
-- safe (docs/internals.md#lanes): a grant is headroom below every alert line,
-- counted in the pool's held amount, so while spent + held (the grants
-- counted) stays below the line of every limit of the context, whatever the
-- lanes admit reaches no line and breaks no limit, and they go on admitting;
-- once a limit is at or past its line (a zero limit always is), the grants on
-- the pools are given back, and those lanes admit nothing until carved again.
drop function if exists costwarden._spend_alerts(text, text, text, text);
create or replace function costwarden._spend_alerts(
    p_org_id text, p_workspace_id text, p_key_id text, p_user_id text, p_pool_ids bigint[]
)
returns void
language plpgsql
as $$
declare
    v_c record;
begin
    -- below every line with the lanes' unused grants counted: below it without them too
    if not exists (select from costwarden._check_limits(p_org_id, p_workspace_id, p_key_id, p_user_id, 0, 0) as l
                   where (l.spent + l.held)::numeric * 5 >= l.limit_value::numeric * 4) then
        return;
    end if;
    -- a line seen with the grants counted is checked again without them
    perform costwarden._lanes_reclaim(p_pool_ids);
    for v_c in
        select * from costwarden._check_limits(p_org_id, p_workspace_id, p_key_id, p_user_id, 0, 0) as l
        where l.limit_value > 0 and (l.spent + l.held)::numeric * 5 >= l.limit_value::numeric * 4
    loop
        perform costwarden._budget_alert(p_org_id, v_c.scope_kind, v_c.scope_id, v_c.period, v_c.metric,
            v_c.window_kind, v_c.limit_value, v_c.spent + v_c.held, v_c.spent + v_c.held, false);
    end loop;
end
$$;
