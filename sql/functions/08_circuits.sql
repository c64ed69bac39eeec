-- Provider circuit breakers (SPEC §6): admission of a reservation (reserve
-- asks _circuit_admit last), provider reports, status, history and reset.
-- Every transition is also announced on channel 'costwarden_alerts' (ids and
-- levels only; docs/alerts.md); a notification is delivered when its transaction commits.
--
-- lock order: docs/internals.md#lock-order

select costwarden._append_only('costwarden._circuit_events', '_circuit_events_no_update_delete', 'update or delete');

-- Internal: record a circuit event and announce it on costwarden_alerts.
-- p_error_org: the actor org of the caller whose report carried p_error (migration 0027).
drop function if exists costwarden._circuit_event(text, text, text, text, integer, text);
create or replace function costwarden._circuit_event(
    p_provider text, p_from text, p_to text, p_reason text, p_failures integer, p_error text,
    p_error_org text default null
)
returns void
language plpgsql
as $$
begin
    insert into costwarden._circuit_events (provider, from_state, to_state, reason, consecutive_failures, error, error_org)
    values (p_provider, p_from, p_to, p_reason, p_failures, p_error, p_error_org);
    perform costwarden._alert_emit('circuit',
        case p_to when 'open' then 'critical' when 'half_open' then 'warning' else 'info' end, null,
        jsonb_build_object(
        'kind', 'circuit', 'provider', p_provider, 'from_state', p_from, 'to_state', p_to,
        'reason', p_reason, 'consecutive_failures', p_failures, 'error', p_error, 'error_org', p_error_org,
        'at', now()));
end
$$;

-- Internal: may the caller read a provider's error text reported by a caller of
-- p_error_org (null: one with no actor)? A caller confined to an org (_tenant_guard)
-- reads only its own org's; a caller with no actor reads every one.
create or replace function costwarden._error_readable(p_error_org text, p_reader_org text)
returns boolean
language sql immutable parallel safe
as $$
    select p_reader_org is null or p_error_org = p_reader_org
$$;

-- Internal: a provider's circuit row, created (closed) when absent, locked
-- until commit (lock order: docs/internals.md#lock-order).
create or replace function costwarden._circuit_lock(p_provider text)
returns costwarden._circuits
language plpgsql
as $$
declare
    v_c costwarden._circuits;
begin
    insert into costwarden._circuits (provider) values (p_provider) on conflict (provider) do nothing;
    select * into v_c from costwarden._circuits as c where c.provider = p_provider for update;
    return v_c;
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
create or replace function costwarden._circuit_admit(p_provider text)
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

create or replace function costwarden.fn_provider_report(p_provider text, p_ok boolean, p_error text default null)
returns text
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_c costwarden._circuits;
    v_error text := left(p_error, 1000);
    v_error_org text;                       -- the reporter's actor org (migration 0027)
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
    v_c := costwarden._circuit_lock(p_provider);
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
    v_error_org := (costwarden._actor()).org_id;
    update costwarden._circuits as c
    set consecutive_failures = v_failures, last_error = v_error, last_error_org = v_error_org,
        last_failure_at = now(), updated_at = now()
    where c.provider = p_provider;
    if v_c.state = 'closed' and v_failures >= v_threshold then
        update costwarden._circuits as c
        set state = 'open', opened_at = now(), probe_at = null
        where c.provider = p_provider;
        perform costwarden._circuit_event(p_provider, 'closed', 'open', 'failure_threshold', v_failures, v_error,
                                          v_error_org);
        return 'open';
    end if;
    if v_c.state = 'half_open' then
        update costwarden._circuits as c
        set state = 'open', opened_at = now(), probe_at = null
        where c.provider = p_provider;
        perform costwarden._circuit_event(p_provider, 'half_open', 'open', 'probe_failed', v_failures, v_error,
                                          v_error_org);
        return 'open';
    end if;
    return v_c.state;                       -- closed below the threshold, or open (no effect)
end
$$;

-- Every provider of the catalogue (and any with a circuit row) with its circuit.
create or replace function costwarden.fn_circuit_status()
returns table (
    provider text, state text, consecutive_failures integer, failure_threshold bigint,
    opened_at timestamptz, probe_at timestamptz, next_probe_at timestamptz,
    last_error text, last_failure_at timestamptz, updated_at timestamptz
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_cooldown interval := (costwarden._setting('circuit_cooldown') #>> '{}')::interval;
    v_threshold bigint := (costwarden._setting('circuit_failure_threshold'))::text::numeric::bigint;
    v_org text := (costwarden._actor()).org_id;
begin
    return query
    select p.provider, coalesce(c.state, 'closed'), coalesce(c.consecutive_failures, 0), v_threshold,
           c.opened_at, c.probe_at,
           case c.state when 'open' then c.opened_at + v_cooldown
                        when 'half_open' then c.probe_at + v_cooldown end,
           case when costwarden._error_readable(c.last_error_org, v_org) then c.last_error end,
           c.last_failure_at, c.updated_at
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
create or replace function costwarden.fn_circuit_history(p_provider text default null, p_limit integer default 100)
returns table (
    event_id bigint, provider text, at timestamptz, from_state text, to_state text, reason text,
    consecutive_failures integer, error text
)
language plpgsql stable security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_org text := (costwarden._actor()).org_id;
begin
    if p_provider is not null then
        perform costwarden._require_provider(p_provider);
    end if;
    perform costwarden._require_limit(p_limit);
    return query
    select e.event_id, e.provider, e.at, e.from_state, e.to_state, e.reason, e.consecutive_failures,
           case when costwarden._error_readable(e.error_org, v_org) then e.error end
    from costwarden._circuit_events as e
    where p_provider is null or e.provider = p_provider
    order by e.event_id desc
    limit p_limit;
end
$$;

-- Close a provider's circuit by hand (admin; audited). Returns 'closed'.
create or replace function costwarden.fn_circuit_reset(p_provider text)
returns text
language plpgsql security definer set search_path = pg_catalog, pg_temp
as $$
declare
    v_c costwarden._circuits;
begin
    perform costwarden._shared_guard();
    perform costwarden._require_provider(p_provider);
    v_c := costwarden._circuit_lock(p_provider);
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

grant execute on function
    costwarden.fn_provider_report(text, boolean, text),
    costwarden.fn_circuit_status()
to costwarden_service;
grant execute on function
    costwarden.fn_circuit_status(),
    costwarden.fn_circuit_history(text, integer),
    costwarden.fn_circuit_reset(text)
to costwarden_admin;
