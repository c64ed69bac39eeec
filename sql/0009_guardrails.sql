-- 0009: guardrails (SPEC §6): provider circuit breakers, cumulative spend
-- reports, spend anomalies and workspace freezes, budget alerts, and the
-- shadow report. docs/guardrails.md and docs/alerts.md explain the rules;
-- docs/reference/fn_*.md document each function.
--
-- Lock order (extends the saga's, see 0010):
--   1. the reservation row, or the spend source row (_spend_sources)
--   2. pools, ascending pool_id (costwarden._lock_pools)
--   3. the provider's circuit row (_circuits)
--   4. ledger heads (costwarden._ledger_append)
-- fn_provider_report, fn_circuit_reset and _circuit_admit take only the
-- circuit row; fn_anomaly_ack only the anomaly row; fn_detect_spend_anomalies
-- takes a transaction advisory lock and no row locks.
--
-- Every event below (circuit transition, anomaly, budget threshold) is also
-- sent with pg_notify on channel 'costwarden_alerts' (docs/alerts.md); a
-- notification is delivered when the transaction that raised it commits.

-- ---------------------------------------------------------------------------
-- Circuit breakers
-- ---------------------------------------------------------------------------

create table costwarden._circuits (
    provider text primary key,
    -- closed: reserves go ahead; open: reserves are refused (circuit_open)
    -- until circuit_cooldown has passed since opened_at; half_open: one probe
    -- was admitted at probe_at and its report decides (another probe is
    -- admitted if no report arrives within circuit_cooldown)
    state text not null default 'closed',
    consecutive_failures integer not null default 0,
    opened_at timestamptz,                  -- when it last opened
    probe_at timestamptz,                   -- when the current half-open probe was admitted
    last_error text,                        -- p_error of the last failure report
    last_failure_at timestamptz,
    updated_at timestamptz not null default now(),
    constraint circuits_state_check check (state in ('closed', 'open', 'half_open')),
    constraint circuits_failures_nonnegative check (consecutive_failures >= 0)
);

comment on table costwarden._circuits is
'Per-provider circuit breaker state (SPEC §6). Providers without a row are closed.';

-- Every state change of a circuit, and every probe admission: the history
-- shown by fn_circuit_history / `costwarden circuits history`.
create table costwarden._circuit_events (
    event_id bigint generated always as identity primary key,
    provider text not null,
    at timestamptz not null default now(),
    from_state text not null,
    to_state text not null,
    -- failure_threshold: closed -> open after circuit_failure_threshold consecutive failures
    -- probe_admitted:    open -> half_open, a reservation was admitted as the probe
    -- probe_retry:       half_open -> half_open, no report within circuit_cooldown of the
    --                    probe: the next reservation is admitted as a new probe
    -- probe_succeeded:   half_open -> closed on a success report
    -- probe_failed:      half_open -> open on a failure report
    -- reset:             an admin closed it (fn_circuit_reset)
    reason text not null,
    consecutive_failures integer not null,
    error text,
    constraint circuit_events_reason_check check (reason in (
        'failure_threshold', 'probe_admitted', 'probe_retry', 'probe_succeeded', 'probe_failed', 'reset'))
);

create index _circuit_events_provider_at on costwarden._circuit_events (provider, event_id desc);

create trigger _circuit_events_no_update_delete
before update or delete on costwarden._circuit_events
for each row execute function costwarden._forbid_mutation();

create trigger _circuit_events_no_truncate
before truncate on costwarden._circuit_events
for each statement execute function costwarden._forbid_mutation();

-- Internal: CW004/CW002 unless p_provider names a provider of the catalogue.
create function costwarden._require_provider(p_provider text)
returns text
language plpgsql
stable
as $$
begin
    if p_provider is null then
        perform costwarden._raise('CW004', 'p_provider is required');
    end if;
    if not exists (select from costwarden._models as m where m.provider = p_provider) then
        perform costwarden._raise('CW002', format(
            'p_provider: unknown provider %L (no model of it in the catalogue)', p_provider));
    end if;
    return p_provider;
end
$$;

-- Internal: record a circuit event and announce it on costwarden_alerts.
create function costwarden._circuit_event(
    p_provider text, p_from text, p_to text, p_reason text, p_failures integer, p_error text
)
returns void
language plpgsql
as $$
begin
    insert into costwarden._circuit_events (provider, from_state, to_state, reason, consecutive_failures, error)
    values (p_provider, p_from, p_to, p_reason, p_failures, p_error);
    perform pg_notify('costwarden_alerts', jsonb_build_object(
        'kind', 'circuit', 'provider', p_provider, 'from_state', p_from, 'to_state', p_to,
        'reason', p_reason, 'consecutive_failures', p_failures, 'error', p_error, 'at', now())::text);
end
$$;

-- Internal (reserve, after every other check passed): may a reservation for
-- this provider go ahead? Closed: yes. Open and cooling down: no. Open and
-- cooled down: this caller becomes the one probe (half_open). Half-open: no,
-- unless the probe has gone circuit_cooldown without a report (its call
-- crashed, was released or expired): then this caller is the new probe.
-- The common cases read the row without locking it; becoming the probe takes
-- the row lock and re-checks, so that exactly one of any number of
-- concurrent reservers is admitted.
create function costwarden._circuit_admit(p_provider text)
returns boolean
language plpgsql
as $$
declare
    v_c costwarden._circuits;
    v_cooldown interval;
begin
    select * into v_c from costwarden._circuits as c where c.provider = p_provider;
    if not found or v_c.state = 'closed' then
        return true;
    end if;
    v_cooldown := (costwarden._setting('circuit_cooldown') #>> '{}')::interval;
    if (v_c.state = 'open' and now() < v_c.opened_at + v_cooldown)
       or (v_c.state = 'half_open' and now() < v_c.probe_at + v_cooldown) then
        return false;
    end if;
    select * into v_c from costwarden._circuits as c where c.provider = p_provider for update;
    if v_c.state = 'closed' then
        return true;
    end if;
    if v_c.state = 'open' and now() >= v_c.opened_at + v_cooldown then
        update costwarden._circuits as c
        set state = 'half_open', probe_at = now(), updated_at = now()
        where c.provider = p_provider;
        perform costwarden._circuit_event(p_provider, 'open', 'half_open', 'probe_admitted',
                                          v_c.consecutive_failures, null);
        return true;
    end if;
    if v_c.state = 'half_open' and now() >= v_c.probe_at + v_cooldown then
        update costwarden._circuits as c
        set probe_at = now(), updated_at = now()
        where c.provider = p_provider;
        perform costwarden._circuit_event(p_provider, 'half_open', 'half_open', 'probe_retry',
                                          v_c.consecutive_failures, null);
        return true;
    end if;
    return false;
end
$$;

create function costwarden.fn_provider_report(p_provider text, p_ok boolean, p_error text default null)
returns text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_c costwarden._circuits;
    v_error text := left(p_error, 1000);
    v_threshold numeric;
    v_failures integer;
begin
    perform costwarden._require_provider(p_provider);
    if p_ok is null then
        perform costwarden._raise('CW004', 'p_ok is required (true: the call succeeded, false: it failed)');
    end if;
    -- hot path: a success on a healthy circuit writes nothing
    select * into v_c from costwarden._circuits as c where c.provider = p_provider;
    if p_ok and (not found or (v_c.state = 'closed' and v_c.consecutive_failures = 0)) then
        return 'closed';
    end if;
    if p_ok and v_c.state = 'open' then
        return 'open';                      -- a call admitted before it opened: no effect
    end if;
    insert into costwarden._circuits (provider) values (p_provider) on conflict (provider) do nothing;
    select * into v_c from costwarden._circuits as c where c.provider = p_provider for update;
    if p_ok then
        update costwarden._circuits as c
        set state = 'closed', consecutive_failures = 0, opened_at = null, probe_at = null, updated_at = now()
        where c.provider = p_provider;
        if v_c.state = 'half_open' then
            perform costwarden._circuit_event(p_provider, 'half_open', 'closed', 'probe_succeeded', 0, null);
        end if;
        return 'closed';
    end if;

    v_failures := least(v_c.consecutive_failures, 2147483646) + 1;
    v_threshold := (costwarden._setting('circuit_failure_threshold'))::text::numeric;
    update costwarden._circuits as c
    set consecutive_failures = v_failures, last_error = v_error, last_failure_at = now(), updated_at = now()
    where c.provider = p_provider;
    if v_c.state = 'closed' and v_failures >= v_threshold then
        update costwarden._circuits as c
        set state = 'open', opened_at = now(), probe_at = null
        where c.provider = p_provider;
        perform costwarden._circuit_event(p_provider, 'closed', 'open', 'failure_threshold', v_failures, v_error);
        return 'open';
    end if;
    if v_c.state = 'half_open' then
        update costwarden._circuits as c
        set state = 'open', opened_at = now(), probe_at = null
        where c.provider = p_provider;
        perform costwarden._circuit_event(p_provider, 'half_open', 'open', 'probe_failed', v_failures, v_error);
        return 'open';
    end if;
    return v_c.state;                       -- closed below the threshold, or open (no effect)
end
$$;

-- Every provider of the catalogue (and any with a circuit row) with its circuit.
create function costwarden.fn_circuit_status()
returns table (
    provider text, state text, consecutive_failures integer, failure_threshold bigint,
    opened_at timestamptz, probe_at timestamptz, next_probe_at timestamptz,
    last_error text, last_failure_at timestamptz, updated_at timestamptz
)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_cooldown interval := (costwarden._setting('circuit_cooldown') #>> '{}')::interval;
    v_threshold bigint := (costwarden._setting('circuit_failure_threshold'))::text::numeric::bigint;
begin
    return query
    select p.provider, coalesce(c.state, 'closed'), coalesce(c.consecutive_failures, 0), v_threshold,
           c.opened_at, c.probe_at,
           case c.state when 'open' then c.opened_at + v_cooldown
                        when 'half_open' then c.probe_at + v_cooldown end,
           c.last_error, c.last_failure_at, c.updated_at
    from (
        select m.provider from costwarden._models as m
        union
        select c0.provider from costwarden._circuits as c0
    ) as p
    left join costwarden._circuits as c on c.provider = p.provider
    order by p.provider;
end
$$;

-- The circuit events (transitions and probe admissions), newest first.
create function costwarden.fn_circuit_history(p_provider text default null, p_limit integer default 100)
returns table (
    event_id bigint, provider text, at timestamptz, from_state text, to_state text, reason text,
    consecutive_failures integer, error text
)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_provider is not null then
        perform costwarden._require_provider(p_provider);
    end if;
    perform costwarden._require_limit(p_limit);
    return query
    select e.event_id, e.provider, e.at, e.from_state, e.to_state, e.reason, e.consecutive_failures, e.error
    from costwarden._circuit_events as e
    where p_provider is null or e.provider = p_provider
    order by e.event_id desc
    limit p_limit;
end
$$;

-- Close a provider's circuit by hand (admin; audited). Returns 'closed'.
create function costwarden.fn_circuit_reset(p_provider text)
returns text
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_c costwarden._circuits;
begin
    perform costwarden._require_provider(p_provider);
    insert into costwarden._circuits (provider) values (p_provider) on conflict (provider) do nothing;
    select * into v_c from costwarden._circuits as c where c.provider = p_provider for update;
    update costwarden._circuits as c
    set state = 'closed', consecutive_failures = 0, opened_at = null, probe_at = null, updated_at = now()
    where c.provider = p_provider;
    perform costwarden._circuit_event(p_provider, v_c.state, 'closed', 'reset', 0, null);
    perform costwarden._audit(
        'circuit_reset', null, jsonb_build_object('provider', p_provider),
        jsonb_build_object('state', v_c.state, 'consecutive_failures', v_c.consecutive_failures),
        jsonb_build_object('state', 'closed', 'consecutive_failures', 0)
    );
    return 'closed';
end
$$;

-- ---------------------------------------------------------------------------
-- Budget alerts
-- ---------------------------------------------------------------------------

-- When a scope's level (spent + held, plus the request when it is admitted)
-- reaches 80% or 100% of a limit, costwarden sends one NOTIFY on channel
-- 'costwarden_alerts' with a JSON payload (docs/alerts.md) -- once per
-- threshold, limit and window (a calendar window's start; for rolling
-- windows, the period-long slot since 2000-01-03, a Monday).
create table costwarden._alerts_sent (
    org_id text not null,
    scope_kind text not null,
    scope_id text not null,                 -- '' for the org
    period text not null,
    metric text not null,
    window_kind text not null,
    window_slot timestamptz not null,
    threshold integer not null,             -- 80 | 100 (percent of the limit)
    level bigint not null,                  -- the level that crossed it
    limit_value bigint not null,
    sent_at timestamptz not null default now(),
    primary key (org_id, scope_kind, scope_id, period, metric, window_kind, window_slot, threshold)
);

-- Internal: alert on a limit if the level crossed 80% / 100% (see above).
-- p_refused: the request was refused, so the level stays at p_before;
-- otherwise it is p_after.
create function costwarden._budget_alert(
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
            perform pg_notify('costwarden_alerts', jsonb_build_object(
                'kind', 'budget', 'org_id', p_org_id, 'scope_kind', p_scope_kind,
                'scope_id', nullif(p_scope_id, ''), 'period', p_period, 'metric', p_metric,
                'window', p_window, 'window_slot', v_slot, 'threshold_percent', v_threshold,
                'level', v_level, 'limit', p_limit, 'refused', p_refused, 'at', now())::text);
        end if;
    end loop;
end
$$;

-- Internal (reserve): announce the limits a reservation brought to >= 80%,
-- once its decision is known. p_candidates: one array per such limit,
-- [scope_kind, scope_id, period, metric, window, limit, level before, level
-- after]. A denied reservation leaves every level where it was (before); a
-- held one -- shadow failures included -- takes every level to after.
create function costwarden._budget_alerts(p_org_id text, p_candidates jsonb, p_denied boolean)
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

-- Internal: after spend was booked (a charge with overage, a late commit, a
-- spend report), alert on every limit of the context the new level crossed.
-- The caller holds the context's pool locks.
create function costwarden._spend_alerts(p_org_id text, p_workspace_id text, p_key_id text, p_user_id text)
returns void
language plpgsql
as $$
declare
    v_c record;
begin
    for v_c in
        select * from costwarden._check_limits(p_org_id, p_workspace_id, p_key_id, p_user_id, 0, 0) as l
        where l.limit_value > 0 and (l.spent + l.held)::numeric * 5 >= l.limit_value::numeric * 4
    loop
        perform costwarden._budget_alert(p_org_id, v_c.scope_kind, v_c.scope_id, v_c.period, v_c.metric,
            v_c.window_kind, v_c.limit_value, v_c.spent + v_c.held, v_c.spent + v_c.held, false);
    end loop;
end
$$;

-- ---------------------------------------------------------------------------
-- Cumulative spend reports
-- ---------------------------------------------------------------------------

-- One row per (workspace, source) that reports a cumulative spend counter.
-- The row is created by the first report, or beforehand by fn_spend_source_set,
-- which binds the source to a key and/or user: its deltas then count toward
-- that key's and user's windows too. The row lock serialises the reports of
-- one source, so concurrent reports never book the same delta twice.
create table costwarden._spend_sources (
    org_id text not null,
    workspace_id text not null,
    source text not null,
    key_id text,                            -- spend counts toward this key's pool too
    user_id text,                           -- ... and this user's (a key's user applies when null)
    last_cumulative_micros bigint,          -- the counter at the last report (null: none yet)
    reports bigint not null default 0,
    resets bigint not null default 0,       -- reports whose counter went down
    booked_micros bigint not null default 0,    -- sum of the deltas booked
    last_reported_at timestamptz,
    created_at timestamptz not null default now(),
    primary key (org_id, workspace_id, source),
    foreign key (org_id, workspace_id) references costwarden._workspaces (org_id, workspace_id),
    foreign key (org_id, key_id) references costwarden._keys (org_id, key_id),
    foreign key (org_id, user_id) references costwarden._users (org_id, user_id),
    constraint spend_sources_counter_nonnegative check (last_cumulative_micros >= 0)
);

comment on table costwarden._spend_sources is
'Sources of cumulative spend reports (SPEC §6): last counter per (workspace, source), optional key/user context.';

-- Bind a spend source to a key and/or user (admin; audited). Later reports of
-- the source count toward those scopes' windows as well.
create function costwarden.fn_spend_source_set(
    p_org_id text, p_workspace_id text, p_source text,
    p_key_id text default null, p_user_id text default null
)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_before costwarden._spend_sources;
begin
    perform costwarden._require_workspace(p_org_id, p_workspace_id);
    perform costwarden._require_text(p_source, 'p_source');
    perform costwarden._context_user(p_org_id, p_workspace_id, p_user_id, p_key_id);
    insert into costwarden._spend_sources (org_id, workspace_id, source)
    values (p_org_id, p_workspace_id, p_source)
    on conflict (org_id, workspace_id, source) do nothing;
    select * into v_before from costwarden._spend_sources as s
    where s.org_id = p_org_id and s.workspace_id = p_workspace_id and s.source = p_source
    for update;
    update costwarden._spend_sources as s
    set key_id = p_key_id, user_id = p_user_id
    where s.org_id = p_org_id and s.workspace_id = p_workspace_id and s.source = p_source;
    perform costwarden._audit(
        'spend_source_set', p_org_id,
        jsonb_build_object('workspace_id', p_workspace_id, 'source', p_source),
        case when v_before.reports > 0 or v_before.key_id is not null or v_before.user_id is not null
             then jsonb_build_object('key_id', v_before.key_id, 'user_id', v_before.user_id) end,
        jsonb_build_object('key_id', p_key_id, 'user_id', p_user_id)
    );
end
$$;

create function costwarden.fn_spend_report_cumulative(
    p_org_id text, p_workspace_id text, p_source text, p_cumulative_micros bigint
)
returns bigint
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_s costwarden._spend_sources;
    v_user_id text;
    v_delta bigint;
    v_reset boolean;
    v_pool_ids bigint[];
begin
    perform costwarden._require_workspace(p_org_id, p_workspace_id);
    perform costwarden._require_text(p_source, 'p_source');
    if p_cumulative_micros is null then
        perform costwarden._raise('CW004', 'p_cumulative_micros is required');
    end if;
    if p_cumulative_micros < 0 then
        perform costwarden._raise('CW004', format('p_cumulative_micros must not be negative, got %s',
                                                  p_cumulative_micros));
    end if;

    -- 1. the source's row lock: reports of one source are serialised
    insert into costwarden._spend_sources (org_id, workspace_id, source)
    values (p_org_id, p_workspace_id, p_source)
    on conflict (org_id, workspace_id, source) do nothing;
    select * into v_s from costwarden._spend_sources as s
    where s.org_id = p_org_id and s.workspace_id = p_workspace_id and s.source = p_source
    for update;

    -- 2. the delta: against the previous counter; a counter that went down was reset
    v_reset := p_cumulative_micros < coalesce(v_s.last_cumulative_micros, 0);
    v_delta := case when v_reset then p_cumulative_micros
                    else p_cumulative_micros - coalesce(v_s.last_cumulative_micros, 0) end;

    -- 3. book it: pools (ascending) -> spend buckets -> ledger head
    if v_delta > 0 then
        v_user_id := coalesce(v_s.user_id,
            (select k.user_id from costwarden._keys as k where k.org_id = p_org_id and k.key_id = v_s.key_id));
        select coalesce(array_agg(p.pool_id order by p.pool_id), '{}') into v_pool_ids
        from costwarden._pools as p
        where p.org_id = p_org_id
          and ((p.kind = 'org' and p.scope_id = '')
               or (p.kind = 'workspace' and p.scope_id = p_workspace_id)
               or (p.kind = 'key' and p.scope_id = v_s.key_id)
               or (p.kind = 'user' and p.scope_id = v_user_id));
        perform costwarden._lock_pools(v_pool_ids);
        perform costwarden._pool_add_spend(v_pool_ids, v_delta, 0, now());
        perform costwarden._ledger_append(
            p_org_id => p_org_id, p_entry_type => 'spend_report', p_amount_micros => v_delta,
            p_workspace_id => p_workspace_id, p_user_id => v_user_id, p_key_id => v_s.key_id,
            p_billing_mode => (costwarden._billing_mode(
                costwarden._require_workspace(p_org_id, p_workspace_id))).billing_mode,
            p_source => p_source);
        perform costwarden._spend_alerts(p_org_id, p_workspace_id, v_s.key_id, v_user_id);
    end if;

    update costwarden._spend_sources as s
    set last_cumulative_micros = p_cumulative_micros, reports = s.reports + 1,
        resets = s.resets + case when v_reset then 1 else 0 end,
        booked_micros = s.booked_micros + v_delta, last_reported_at = now()
    where s.org_id = p_org_id and s.workspace_id = p_workspace_id and s.source = p_source;
    return v_delta;
end
$$;

-- The spend sources and their counters (admin).
create function costwarden.fn_spend_sources_list(p_org_id text default null)
returns table (
    org_id text, workspace_id text, source text, key_id text, user_id text,
    last_cumulative_micros bigint, reports bigint, resets bigint, booked_micros bigint,
    last_reported_at timestamptz, created_at timestamptz
)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_org_id is not null then
        perform costwarden._require_org(p_org_id);
    end if;
    return query
    select s.org_id, s.workspace_id, s.source, s.key_id, s.user_id, s.last_cumulative_micros, s.reports,
           s.resets, s.booked_micros, s.last_reported_at, s.created_at
    from costwarden._spend_sources as s
    where p_org_id is null or s.org_id = p_org_id
    order by s.org_id, s.workspace_id, s.source;
end
$$;

-- ---------------------------------------------------------------------------
-- Spend anomalies and workspace freezes
-- ---------------------------------------------------------------------------

create table costwarden._anomalies (
    anomaly_id bigint generated always as identity primary key,
    org_id text not null,
    workspace_id text not null,
    hour_start timestamptz not null,        -- the clock hour of detection: one anomaly per workspace and hour
    window_start timestamptz not null,      -- the 60 minutes whose spend was judged
    window_end timestamptz not null,
    spent_micros bigint not null,           -- spend in that window
    mean_micros numeric not null,           -- hourly mean of the 168 baseline hours
    stddev_micros numeric not null,         -- their (population) standard deviation
    sigma numeric not null,                 -- anomaly_sigma at detection
    threshold_micros numeric not null,      -- greatest(mean + sigma * stddev, anomaly_min_micros)
    frozen boolean not null,                -- anomaly_freeze was on: the workspace is frozen until acked
    detected_at timestamptz not null default now(),
    acked_at timestamptz,
    acked_by text,                          -- the actor user, else the login role
    unique (org_id, workspace_id, hour_start),
    foreign key (org_id, workspace_id) references costwarden._workspaces (org_id, workspace_id)
);

comment on table costwarden._anomalies is
'Spend anomalies found by fn_detect_spend_anomalies; frozen and not acked = reserves denied (anomaly_freeze).';

create index _anomalies_open_freeze on costwarden._anomalies (org_id, workspace_id)
where frozen and acked_at is null;

create index _anomalies_workspace_detected on costwarden._anomalies (org_id, workspace_id, detected_at desc);

-- Internal (reserve, hot path): is the workspace frozen by an unacknowledged anomaly?
-- (No SET clause, so that it is inlined into fn_cost_reserve, which pins
-- search_path; it is granted to nobody.)
create function costwarden._workspace_frozen(p_org_id text, p_workspace_id text)
returns boolean
language sql
stable
as $$
    select exists (
        select from costwarden._anomalies as a
        where a.org_id = p_org_id and a.workspace_id = p_workspace_id and a.frozen and a.acked_at is null
    )
$$;

-- Per workspace: the spend of the last 60 minutes (the 1-minute buckets
-- starting at or after the top of the minute 59 minutes ago, the current
-- minute included) against the 168 clock hours before the hour in which
-- that window starts (hourly sums of the 20-minute buckets, which are aligned
-- to the hour; an hour without spend counts as 0). It is an anomaly when
--   spent > mean + anomaly_sigma * stddev   and   spent >= anomaly_min_micros.
-- A workspace with an anomaly detected in the last hour is skipped (the same
-- spike is not reported twice, an acknowledged one does not re-freeze at
-- once), and at most one anomaly is recorded per workspace and clock hour.
-- Overlapping runs: the second returns 0 at once (advisory lock).
create function costwarden.fn_detect_spend_anomalies()
returns integer
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_now timestamptz := now();
    v_window_start timestamptz := date_trunc('minute', now()) - interval '59 minutes';
    v_base_end timestamptz := date_trunc('hour', date_trunc('minute', now()) - interval '59 minutes');
    v_sigma numeric := (costwarden._setting('anomaly_sigma'))::text::numeric;
    v_min bigint := (costwarden._setting('anomaly_min_micros'))::text::numeric::bigint;
    v_freeze boolean := (costwarden._setting('anomaly_freeze'))::boolean;
    v_c record;
    v_id bigint;
    v_n integer := 0;
begin
    if not pg_try_advisory_xact_lock(hashtextextended('costwarden.fn_detect_spend_anomalies', 0)) then
        return 0;
    end if;
    for v_c in
        with active as (
            select p.pool_id, p.org_id, p.scope_id as workspace_id, w.spent
            from costwarden._pools as p
            cross join lateral (
                select coalesce(sum(b.micros), 0)::bigint as spent
                from costwarden._spend_buckets as b
                where b.pool_id = p.pool_id and b.res = 60 and b.bucket_start >= v_window_start
            ) as w
            where p.kind = 'workspace' and w.spent > 0 and w.spent >= v_min
              and not exists (
                  select from costwarden._anomalies as a
                  where a.org_id = p.org_id and a.workspace_id = p.scope_id
                    and a.detected_at > v_now - interval '1 hour')
        )
        select a.org_id, a.workspace_id, a.spent, s.mean, s.stddev,
               s.mean + v_sigma * s.stddev as bar
        from active as a
        cross join lateral (
            select coalesce(sum(h.x), 0) / 168 as mean,
                   sqrt(greatest(coalesce(sum(h.x * h.x), 0) / 168 - power(coalesce(sum(h.x), 0) / 168, 2), 0))
                       as stddev
            from (
                select sum(b.micros)::numeric as x
                from costwarden._spend_buckets as b
                where b.pool_id = a.pool_id and b.res = 1200
                  and b.bucket_start >= v_base_end - interval '168 hours' and b.bucket_start < v_base_end
                group by date_trunc('hour', b.bucket_start)
            ) as h
        ) as s
        order by a.org_id, a.workspace_id
    loop
        continue when v_c.spent <= v_c.bar;
        insert into costwarden._anomalies (
            org_id, workspace_id, hour_start, window_start, window_end, spent_micros, mean_micros,
            stddev_micros, sigma, threshold_micros, frozen, detected_at
        ) values (
            v_c.org_id, v_c.workspace_id, date_trunc('hour', v_now), v_window_start, v_now, v_c.spent,
            round(v_c.mean, 3), round(v_c.stddev, 3), v_sigma, round(greatest(v_c.bar, v_min), 3),
            v_freeze, v_now
        )
        on conflict (org_id, workspace_id, hour_start) do nothing
        returning anomaly_id into v_id;
        continue when v_id is null;
        v_n := v_n + 1;
        perform pg_notify('costwarden_alerts', jsonb_build_object(
            'kind', 'anomaly', 'anomaly_id', v_id, 'org_id', v_c.org_id, 'workspace_id', v_c.workspace_id,
            'spent_micros', v_c.spent, 'mean_micros', round(v_c.mean, 3),
            'stddev_micros', round(v_c.stddev, 3), 'threshold_micros', round(greatest(v_c.bar, v_min), 3),
            'frozen', v_freeze, 'at', v_now)::text);
        v_id := null;
    end loop;
    return v_n;
end
$$;

create function costwarden.fn_anomaly_ack(p_anomaly_id bigint)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_a costwarden._anomalies;
    v_by text;
begin
    if p_anomaly_id is null then
        perform costwarden._raise('CW004', 'p_anomaly_id is required');
    end if;
    select * into v_a from costwarden._anomalies as a where a.anomaly_id = p_anomaly_id for update;
    if not found then
        perform costwarden._raise('CW002', format('p_anomaly_id: unknown anomaly %s', p_anomaly_id));
    end if;
    if v_a.acked_at is not null then
        return;                             -- already acknowledged: nothing to do, nothing written
    end if;
    v_by := coalesce((select a.user_id from costwarden._actor() as a), session_user::text);
    update costwarden._anomalies as a
    set acked_at = now(), acked_by = v_by
    where a.anomaly_id = p_anomaly_id;
    perform costwarden._audit(
        'anomaly_ack', v_a.org_id,
        jsonb_build_object('anomaly_id', p_anomaly_id, 'workspace_id', v_a.workspace_id),
        jsonb_build_object('acked_at', null, 'frozen', v_a.frozen),
        jsonb_build_object('acked_at', now(), 'acked_by', v_by, 'frozen', false)
    );
end
$$;

-- Anomalies, newest first (admin). p_open_only: only unacknowledged ones.
create function costwarden.fn_anomalies_list(
    p_org_id text default null, p_open_only boolean default false, p_limit integer default 100
)
returns table (
    anomaly_id bigint, org_id text, workspace_id text, hour_start timestamptz, window_start timestamptz,
    window_end timestamptz, spent_micros bigint, mean_micros numeric, stddev_micros numeric,
    threshold_micros numeric, frozen boolean, detected_at timestamptz, acked_at timestamptz, acked_by text
)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if p_org_id is not null then
        perform costwarden._require_org(p_org_id);
    end if;
    if p_open_only is null then
        perform costwarden._raise('CW004', 'p_open_only must be true or false');
    end if;
    perform costwarden._require_limit(p_limit);
    return query
    select a.anomaly_id, a.org_id, a.workspace_id, a.hour_start, a.window_start, a.window_end, a.spent_micros,
           a.mean_micros, a.stddev_micros, a.threshold_micros, a.frozen, a.detected_at, a.acked_at, a.acked_by
    from costwarden._anomalies as a
    where (p_org_id is null or a.org_id = p_org_id)
      and (not p_open_only or a.acked_at is null)
    order by a.anomaly_id desc
    limit p_limit;
end
$$;

-- ---------------------------------------------------------------------------
-- Shadow report
-- ---------------------------------------------------------------------------

-- What shadow mode (or billing_enforce = false) let through that an enforced
-- limit would have refused, per scope and limit, over reservations created
-- in [p_from, p_to): from the reasons with "enforced": false kept on the
-- reservation rows (by reserve, and by meter ticks that extended a hold).
--   refusals          reservations that would have been refused
--   requested         sum of the refused requests, in the limit's metric
--                     (micro-USD for cost limits, tokens for token limits)
--   requested_micros  sum of those reservations' quoted amounts (micro-USD)
create function costwarden.fn_shadow_report(
    p_org_id text, p_from timestamptz default now() - interval '30 days', p_to timestamptz default now()
)
returns table (
    scope_kind text, scope_id text, period text, metric text, window_kind text, limit_value bigint,
    code text, refusals bigint, requested numeric, requested_micros numeric,
    first_seen timestamptz, last_seen timestamptz
)
language plpgsql
stable
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    perform costwarden._require_org(p_org_id);
    if p_from is null or p_to is null then
        perform costwarden._raise('CW004', 'p_from and p_to are required');
    end if;
    if p_from > p_to then
        perform costwarden._raise('CW004', 'p_from must not be after p_to');
    end if;
    return query
    with per_reservation as (
        select e ->> 'scope_kind' as scope_kind, e ->> 'scope_id' as scope_id, e ->> 'period' as period,
               e ->> 'metric' as metric, e ->> 'window' as window_kind, (e ->> 'limit')::bigint as limit_value,
               e ->> 'code' as code, r.reservation_id,
               sum((e ->> 'requested')::numeric) as requested,
               max(r.quoted_micros) as quoted_micros, min(r.created_at) as created_at
        from costwarden._reservations as r
        cross join lateral jsonb_array_elements(r.reasons) as e
        where r.org_id = p_org_id and r.created_at >= p_from and r.created_at < p_to
          and e ->> 'enforced' = 'false'
          and e ->> 'code' in ('budget_exceeded', 'token_quota_exceeded')
        group by 1, 2, 3, 4, 5, 6, 7, 8
    )
    select pr.scope_kind, pr.scope_id, pr.period, pr.metric, pr.window_kind, pr.limit_value, pr.code,
           count(*), sum(pr.requested), sum(pr.quoted_micros), min(pr.created_at), max(pr.created_at)
    from per_reservation as pr
    group by 1, 2, 3, 4, 5, 6, 7
    order by 1, 2 nulls first, 3, 4, 5, 6, 7;
end
$$;

grant execute on function
    costwarden.fn_provider_report(text, boolean, text),
    costwarden.fn_spend_report_cumulative(text, text, text, bigint),
    costwarden.fn_detect_spend_anomalies(),
    costwarden.fn_circuit_status()
to costwarden_service;
grant execute on function
    costwarden.fn_circuit_status(),
    costwarden.fn_circuit_history(text, integer),
    costwarden.fn_circuit_reset(text),
    costwarden.fn_spend_source_set(text, text, text, text, text),
    costwarden.fn_spend_sources_list(text),
    costwarden.fn_anomaly_ack(bigint),
    costwarden.fn_anomalies_list(text, boolean, integer),
    costwarden.fn_shadow_report(text, timestamptz, timestamptz)
to costwarden_admin;
