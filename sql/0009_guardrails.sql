-- 0009: guardrails wired into the reserve decision (SPEC §6): provider
-- circuit breakers and anomaly freezes.

create table costwarden._circuits (
    provider text primary key,
    state text not null default 'closed',   -- closed | open | half_open (one probe admitted)
    consecutive_failures integer not null default 0,
    opened_at timestamptz,                  -- when it last opened
    probe_at timestamptz,                   -- when the half-open probe was admitted
    last_error text,
    updated_at timestamptz not null default now(),
    constraint circuits_state_check check (state in ('closed', 'open', 'half_open'))
);

-- Internal (reserve): may a reservation for this provider go ahead?
-- Closed: yes. Open and cooling down: no. Open and cooled down: this caller
-- becomes the one probe (half_open) -- the row lock makes it exactly one even
-- under concurrent reservers. Half-open: no, until the probe reports.
create function costwarden._circuit_admit(p_provider text)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_state text;
    v_opened timestamptz;
begin
    select c.state into v_state from costwarden._circuits as c where c.provider = p_provider;
    if not found or v_state = 'closed' then
        return true;
    end if;
    select c.state, c.opened_at into v_state, v_opened
    from costwarden._circuits as c where c.provider = p_provider for update;
    if v_state = 'closed' then
        return true;
    end if;
    if v_state = 'open'
       and now() >= v_opened + (costwarden._setting('circuit_cooldown') #>> '{}')::interval then
        update costwarden._circuits
        set state = 'half_open', probe_at = now(), updated_at = now()
        where provider = p_provider;
        return true;
    end if;
    return false;
end
$$;

create table costwarden._anomalies (
    anomaly_id bigint generated always as identity primary key,
    org_id text not null,
    workspace_id text not null,
    hour_start timestamptz not null,        -- the hour whose spend was anomalous
    spent_micros bigint not null,
    mean_micros numeric not null,
    stddev_micros numeric not null,
    threshold_micros numeric not null,
    frozen boolean not null,                -- anomaly_freeze was on: the workspace is frozen
    detected_at timestamptz not null default now(),
    acked_at timestamptz,
    acked_by text,
    unique (org_id, workspace_id, hour_start),
    foreign key (org_id, workspace_id) references costwarden._workspaces (org_id, workspace_id)
);

create index _anomalies_open_freeze on costwarden._anomalies (org_id, workspace_id)
where frozen and acked_at is null;

-- Internal (reserve, hot path): is the workspace frozen by an unacknowledged anomaly?
create function costwarden._workspace_frozen(p_org_id text, p_workspace_id text)
returns boolean
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select exists (
        select from costwarden._anomalies as a
        where a.org_id = p_org_id and a.workspace_id = p_workspace_id and a.frozen and a.acked_at is null
    )
$$;

-- Budget alerts: when a scope's level (spent + held, plus the request when it
-- is admitted) reaches 80% or 100% of a limit, costwarden sends one NOTIFY on
-- channel 'costwarden_alerts' with a JSON payload -- once per threshold, limit
-- and window (a calendar window's start; for rolling windows, the period-long
-- epoch slot). Delivered when the reserving transaction commits.
create table costwarden._alerts_sent (
    org_id text not null,
    scope_kind text not null,
    scope_id text not null,
    period text not null,
    metric text not null,
    window_kind text not null,
    window_slot timestamptz not null,
    threshold integer not null,             -- 80 | 100 (percent of the limit)
    level bigint not null,
    limit_value bigint not null,
    sent_at timestamptz not null default now(),
    primary key (org_id, scope_kind, scope_id, period, metric, window_kind, window_slot, threshold)
);

create function costwarden._budget_alert(
    p_org_id text, p_scope_kind text, p_scope_id text, p_period text, p_metric text, p_window text,
    p_limit bigint, p_before bigint, p_after bigint, p_refused boolean
)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_level bigint := case when p_refused then p_before else p_after end;
    v_slot timestamptz;
    v_threshold integer;
begin
    if p_limit <= 0 then
        return;
    end if;
    v_slot := case when p_window = 'calendar'
        then costwarden._window_start(p_period, 'calendar', costwarden._org_tz(p_org_id), now())
        else date_bin(case p_period when 'hour' then interval '1 hour' when 'day' then interval '1 day'
                                    when 'week' then interval '7 days' else interval '30 days' end,
                      now(), timestamptz '2000-01-03 00:00:00+00')
    end;
    foreach v_threshold in array array[80, 100] loop
        continue when v_level * 100 < p_limit * v_threshold;
        insert into costwarden._alerts_sent
            (org_id, scope_kind, scope_id, period, metric, window_kind, window_slot, threshold, level, limit_value)
        values (p_org_id, p_scope_kind, coalesce(p_scope_id, ''), p_period, p_metric, p_window, v_slot,
                v_threshold, v_level, p_limit)
        on conflict do nothing;
        if found then
            perform pg_notify('costwarden_alerts', jsonb_build_object(
                'org_id', p_org_id, 'scope_kind', p_scope_kind, 'scope_id', nullif(p_scope_id, ''),
                'period', p_period, 'metric', p_metric, 'window', p_window, 'window_slot', v_slot,
                'threshold_percent', v_threshold, 'level', v_level, 'limit', p_limit,
                'refused', p_refused, 'at', now())::text);
        end if;
    end loop;
end
$$;
